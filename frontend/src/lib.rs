//! # frontend — the Gatehouse broker
//!
//! Listeners accept connections and give each one an actix actor ([`connection`]) that does only
//! IO and timers; the protocol lives in `mqtt::session`. Messages between sessions go through the
//! [`router`], which owns subscriptions, retained messages, offline sessions and wills.

pub mod auth;
pub mod authclient;
pub mod authz;
/// The configuration lives in its own crate so that `authsvc` reads the same documents.
pub use broker_config as config;
pub mod connection;
pub mod eventgrid;
pub mod health;
pub mod metrics;
pub mod observability;
pub mod policy_reload;
pub mod router;
pub mod server;
pub mod store;
pub mod tls;
pub mod tls_stream;
pub mod ws;
