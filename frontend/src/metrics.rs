//! Broker counters and gauges, named after the broker-spec metric list (§7.5) where one fits.
//!
//! Plain atomics that the hot path bumps with relaxed ordering; exporting them (Prometheus text,
//! OTLP) is a separate concern that reads a snapshot. This module does not decide what to count:
//! the router and connections do.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Default, Debug)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connected_sessions: AtomicI64,
    pub publishes_received: AtomicU64,
    pub publishes_sent: AtomicU64,
    pub payload_bytes_received: AtomicU64,
    pub qos0_dropped_incoming: AtomicU64,
    pub backpressure_rejected: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub protocol_violations: AtomicU64,
    pub server_disconnects: AtomicU64,
}

impl Metrics {
    /// `(name, value)` pairs in Prometheus naming, for exporters and tests.
    pub fn snapshot(&self) -> Vec<(&'static str, i64)> {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        vec![
            (
                "gatehouse_connections_accepted_total",
                r(&self.connections_accepted),
            ),
            (
                "gatehouse_connected_sessions",
                self.connected_sessions.load(Ordering::Relaxed),
            ),
            (
                "gatehouse_publishes_received_total",
                r(&self.publishes_received),
            ),
            ("gatehouse_publishes_sent_total", r(&self.publishes_sent)),
            (
                "gatehouse_payload_bytes_received_total",
                r(&self.payload_bytes_received),
            ),
            (
                "gatehouse_qos0_messages_dropped_total",
                r(&self.qos0_dropped_incoming),
            ),
            (
                "gatehouse_backpressure_packets_rejected_total",
                r(&self.backpressure_rejected),
            ),
            (
                "gatehouse_subscriber_queue_dropped_total",
                r(&self.dropped_queue_full),
            ),
            (
                "gatehouse_protocol_violations_total",
                r(&self.protocol_violations),
            ),
            (
                "gatehouse_server_disconnects_total",
                r(&self.server_disconnects),
            ),
        ]
    }
}
