//! `gatehouse-bench`, an emqtt-bench-compatible MQTT load generator built on Gatehouse's own
//! codec, as a library so that its pieces can be tested (and reused by the benchmark harness).
//!
//! Layout: [`cli`] parses emqtt-bench's command line; [`run`] starts clients and reports;
//! [`client`] is one connection's task; [`transport`] opens TCP/TLS/WebSocket streams;
//! [`payload`] and [`topic`] build what is published; [`stats`] counts and prints.
//!
//! It is a load generator, not an MQTT client library: it keeps no session state across
//! reconnects, never retransmits, and supports only single-step enhanced authentication.

pub mod cli;
pub mod client;
pub mod payload;
pub mod run;
pub mod stats;
pub mod topic;
pub mod transport;
