//! Broker counters and gauges.
//!
//! Plain atomics that the hot path bumps with relaxed ordering; exporting them (Prometheus text,
//! OTLP) is a separate concern that reads a [`Metrics::snapshot`]. This module does not decide
//! what to count or when: the connections and the router do. Nor does it know any export
//! format: `observability` renders the snapshot.
//!
//! Naming: a metric that broker-spec §7.5 / §2.6 lists carries exactly that `aio_broker_*` name
//! (no `_total` suffix, since the AIO names have none), so dashboards written for the AIO broker
//! work unchanged; everything else is `gatehouse_*`. A metric has the same name in OTLP and on
//! `/metrics`. The list, with meanings, is in docs/operations.md.
//!
//! Gauges about stored state (sessions, subscriptions, retained messages, wills) are not kept
//! here: the router computes them when a snapshot is taken (see [`Metrics::set_store_source`]),
//! so no hot path pays for them and they cannot drift from the tables they describe.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use mqtt::ReasonCode;

use crate::auth::AuthOutcome;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up (until the process restarts).
    Counter,
    Gauge,
}

/// One metric: a name, what it means, and one value per label set.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Vec<(&'static str, String)>,
    pub value: i64,
}

/// Everything a snapshot holds, in a fixed order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub families: Vec<Family>,
}

impl Snapshot {
    /// The sum over every label set of the metric `name`, if it exists.
    pub fn value(&self, name: &str) -> Option<i64> {
        self.family(name)
            .map(|f| f.series.iter().map(|s| s.value).sum())
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

/// What the router holds right now; see [`Metrics::set_store_source`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Every session, connected or not (offline persistent sessions included).
    pub sessions: usize,
    /// Subscriptions of every session, shared ones included.
    pub subscriptions: usize,
    pub retained_messages: usize,
    /// Payload bytes of the retained messages.
    pub retained_bytes: usize,
    /// Will messages held for sessions (connected, or waiting for their will delay).
    pub will_messages: usize,
    /// Payload bytes of those wills.
    pub will_bytes: usize,
    /// Bytes of messages queued for subscribers (the memory profile's message buffer).
    pub queued_bytes: usize,
}

type StoreSource = Box<dyn Fn() -> Option<StoreStats> + Send + Sync>;

/// One counter per reason code byte: cheap enough that labelling by code costs nothing.
pub struct ByReasonCode([AtomicU64; 256]);

impl Default for ByReasonCode {
    fn default() -> Self {
        ByReasonCode(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

#[derive(Default)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connected_sessions: AtomicI64,
    pub publishes_received: AtomicU64,
    pub publishes_sent: AtomicU64,
    pub payload_bytes_received: AtomicU64,
    pub payload_bytes_sent: AtomicU64,
    pub qos0_dropped_incoming: AtomicU64,
    pub backpressure_rejected: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub authentication_successes: AtomicU64,
    pub authentication_failures: AtomicU64,
    pub authentication_denials: AtomicU64,
    pub credential_expirations: AtomicU64,
    pub authorization_allowed: AtomicU64,
    pub authorization_denied: AtomicU64,
    pub protocol_violations: AtomicU64,
    /// Server-initiated closes, by the reason code the client was given (or would have been
    /// given: 3.1.1 clients get no DISCONNECT).
    pub server_disconnects: ByReasonCode,
    store: OnceLock<StoreSource>,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// A PUBLISH arrived from a client, whatever happens to it next.
    pub fn publish_received(&self, payload_len: usize) {
        bump(&self.publishes_received, 1);
        bump(&self.payload_bytes_received, payload_len as u64);
    }

    /// A finished authentication exchange (CONNECT or re-authentication); `Continue` steps in
    /// between are not outcomes and are not counted.
    pub fn authentication(&self, outcome: &AuthOutcome) {
        match outcome {
            AuthOutcome::Allow { .. } => bump(&self.authentication_successes, 1),
            // The broker could not reach a decision (the authenticator failed or is away):
            // a failure. Any other refusal is a decision about the credentials: a deny.
            AuthOutcome::Deny { code, .. }
                if matches!(
                    *code,
                    ReasonCode::UNSPECIFIED_ERROR
                        | ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
                        | ReasonCode::SERVER_UNAVAILABLE
                        | ReasonCode::SERVER_BUSY
                ) =>
            {
                bump(&self.authentication_failures, 1)
            }
            AuthOutcome::Deny { .. } => bump(&self.authentication_denials, 1),
            AuthOutcome::Transient { .. } => bump(&self.authentication_failures, 1),
            AuthOutcome::Continue { .. } => {}
        }
    }

    /// A connection closed because its credential expired.
    pub fn credential_expired(&self) {
        bump(&self.credential_expirations, 1);
    }

    /// Count one authorization decision and pass it through, so that a check site changes by
    /// one wrapping call.
    pub fn authorization(&self, allowed: bool) -> bool {
        bump(
            if allowed {
                &self.authorization_allowed
            } else {
                &self.authorization_denied
            },
            1,
        );
        allowed
    }

    pub fn server_disconnect(&self, code: ReasonCode) {
        bump(&self.server_disconnects.0[usize::from(code.0)], 1);
    }

    /// Where the stored-state gauges come from: called once per snapshot, never on a hot
    /// path. Returning `None` (the router is gone) leaves them out. Only the first call
    /// counts: there is one router per process.
    pub fn set_store_source(
        &self,
        source: impl Fn() -> Option<StoreStats> + Send + Sync + 'static,
    ) {
        let _ = self.store.set(Box::new(source));
    }

    /// Every metric with its current value, in a stable order.
    pub fn snapshot(&self) -> Snapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        let plain = |value: i64| {
            vec![Series {
                labels: Vec::new(),
                value,
            }]
        };
        let counter = |name, help, a: &AtomicU64| Family {
            name,
            help,
            kind: Kind::Counter,
            series: plain(r(a)),
        };
        let gauge = |name, help, value: usize| Family {
            name,
            help,
            kind: Kind::Gauge,
            series: plain(value as i64),
        };
        let disconnects = self
            .server_disconnects
            .0
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = r(n);
                let code = ReasonCode(code as u8);
                (n > 0).then(|| Series {
                    labels: vec![
                        ("reason_code", format!("0x{:02X}", code.0)),
                        ("reason", code.name().to_string()),
                    ],
                    value: n,
                })
            })
            .collect();

        let mut families = vec![
            counter(
                "gatehouse_connections_accepted",
                "Connections handed to MQTT, after any TLS handshake or WebSocket upgrade.",
                &self.connections_accepted,
            ),
            Family {
                name: "aio_broker_connected_sessions",
                help: "Sessions with a connected client.",
                kind: Kind::Gauge,
                series: plain(self.connected_sessions.load(Ordering::Relaxed).max(0)),
            },
            counter(
                "aio_broker_publishes_received",
                "PUBLISH packets received from clients, including ones then refused.",
                &self.publishes_received,
            ),
            counter(
                "aio_broker_publishes_sent",
                "PUBLISH packets sent to subscribers (first transmissions).",
                &self.publishes_sent,
            ),
            counter(
                "aio_broker_payload_bytes_received",
                "Payload bytes of the PUBLISH packets received from clients.",
                &self.payload_bytes_received,
            ),
            counter(
                "aio_broker_payload_bytes_sent",
                "Payload bytes of the PUBLISH packets sent to subscribers.",
                &self.payload_bytes_sent,
            ),
            Family {
                name: "aio_broker_qos0_messages_dropped",
                help: "QoS 0 PUBLISHes dropped because the message buffer was 75% full.",
                kind: Kind::Counter,
                series: vec![Series {
                    labels: vec![("direction", "incoming".to_string())],
                    value: r(&self.qos0_dropped_incoming),
                }],
            },
            counter(
                "aio_broker_backpressure_packets_rejected",
                "QoS 1/2 PUBLISHes refused with 0x97 Quota exceeded because the message buffer was 75% full.",
                &self.backpressure_rejected,
            ),
            counter(
                "gatehouse_subscriber_queue_dropped",
                "Messages dropped for one subscriber because its queue was full.",
                &self.dropped_queue_full,
            ),
            counter(
                "aio_broker_authentication_successes",
                "Authentication exchanges (CONNECT or re-authentication) that let the client in.",
                &self.authentication_successes,
            ),
            counter(
                "aio_broker_authentication_failures",
                "Authentication exchanges that could not reach a decision (authenticator error or unavailable).",
                &self.authentication_failures,
            ),
            counter(
                "aio_broker_authentication_deny",
                "Authentication exchanges that refused the client's credentials.",
                &self.authentication_denials,
            ),
            counter(
                "gatehouse_credential_expirations",
                "Connections closed because their credential expired.",
                &self.credential_expirations,
            ),
            counter(
                "aio_broker_authorization_allow",
                "PUBLISH topics and SUBSCRIBE filters that authorization allowed.",
                &self.authorization_allowed,
            ),
            counter(
                "aio_broker_authorization_deny",
                "PUBLISH topics and SUBSCRIBE filters that authorization refused.",
                &self.authorization_denied,
            ),
            counter(
                "gatehouse_authorization_cache_hits",
                "PUBLISH authorization decisions answered from the client's decision cache.",
                &crate::authz::CACHE_HITS,
            ),
            counter(
                "gatehouse_authorization_evaluations",
                "PUBLISH authorization decisions that evaluated the client's compiled rules.",
                &crate::authz::RULE_EVALUATIONS,
            ),
            Family {
                name: "gatehouse_server_disconnects",
                help: "Connections the broker closed, by the reason code the client was given.",
                kind: Kind::Counter,
                series: disconnects,
            },
            counter(
                "gatehouse_protocol_violations",
                "Connections closed because the client broke the MQTT protocol.",
                &self.protocol_violations,
            ),
        ];
        if let Some(s) = self.store.get().and_then(|source| source()) {
            families.extend([
                gauge(
                    "aio_broker_total_sessions",
                    "Sessions the broker holds, connected or not.",
                    s.sessions,
                ),
                gauge(
                    "aio_broker_total_subscriptions",
                    "Subscriptions of every session the broker holds.",
                    s.subscriptions,
                ),
                gauge(
                    "aio_broker_store_retained_messages",
                    "Retained messages.",
                    s.retained_messages,
                ),
                gauge(
                    "aio_broker_store_retained_bytes",
                    "Payload bytes of the retained messages.",
                    s.retained_bytes,
                ),
                gauge(
                    "aio_broker_store_will_messages",
                    "Will messages held for sessions.",
                    s.will_messages,
                ),
                gauge(
                    "aio_broker_store_will_bytes",
                    "Payload bytes of the will messages held for sessions.",
                    s.will_bytes,
                ),
                gauge(
                    "gatehouse_queued_message_bytes",
                    "Bytes of messages queued for subscribers; backpressure starts at 75% of the memory profile's buffer.",
                    s.queued_bytes,
                ),
            ]);
        }
        Snapshot { families }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnects_are_labelled_by_code_and_only_codes_seen_appear() {
        let m = Metrics::default();
        m.server_disconnect(ReasonCode::SESSION_TAKEN_OVER);
        m.server_disconnect(ReasonCode::SESSION_TAKEN_OVER);
        m.server_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT);
        let snap = m.snapshot();
        let f = snap.family("gatehouse_server_disconnects").unwrap();
        assert_eq!(f.series.len(), 2);
        assert_eq!(
            f.series[0].labels,
            vec![
                ("reason_code", "0x8D".to_string()),
                ("reason", "Keep Alive timeout".to_string())
            ]
        );
        assert_eq!(f.series[1].value, 2);
        assert_eq!(snap.value("gatehouse_server_disconnects"), Some(3));
    }

    #[test]
    fn authentication_outcomes_split_into_success_deny_and_failure() {
        let m = Metrics::default();
        let deny = |code| AuthOutcome::Deny { code, reason: None };
        m.authentication(&AuthOutcome::Allow {
            principal: Default::default(),
            expiry: None,
            data: None,
            can_reauthenticate: false,
        });
        m.authentication(&deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
        m.authentication(&deny(ReasonCode::NOT_AUTHORIZED));
        m.authentication(&deny(ReasonCode::SERVER_UNAVAILABLE));
        m.authentication(&AuthOutcome::Continue {
            data: None,
            continuation: bytes::Bytes::new(),
        });
        let snap = m.snapshot();
        assert_eq!(snap.value("aio_broker_authentication_successes"), Some(1));
        assert_eq!(snap.value("aio_broker_authentication_deny"), Some(2));
        assert_eq!(snap.value("aio_broker_authentication_failures"), Some(1));
    }

    #[test]
    fn store_gauges_appear_only_with_a_source() {
        let m = Metrics::default();
        assert_eq!(m.snapshot().value("aio_broker_total_sessions"), None);
        m.set_store_source(|| {
            Some(StoreStats {
                sessions: 3,
                retained_bytes: 7,
                ..StoreStats::default()
            })
        });
        let snap = m.snapshot();
        assert_eq!(snap.value("aio_broker_total_sessions"), Some(3));
        assert_eq!(snap.value("aio_broker_store_retained_bytes"), Some(7));
    }

    #[test]
    fn names_are_unique_and_valid_everywhere() {
        let m = Metrics::default();
        m.set_store_source(|| Some(StoreStats::default()));
        let snap = m.snapshot();
        let mut names: Vec<_> = snap.families.iter().map(|f| f.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate metric name");
        for name in names {
            assert!(
                name.starts_with("aio_broker_") || name.starts_with("gatehouse_"),
                "{name}"
            );
            // Valid for both Prometheus and OpenTelemetry instrument names.
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
    }
}
