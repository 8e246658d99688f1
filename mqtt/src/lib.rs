//! # mqtt — the sans-IO core of Gatehouse
//!
//! Everything here is pure protocol: bytes in, packets out; packets in, decisions out. There is
//! no tokio, no actix, no clock and no socket in this crate. Time is passed in as
//! [`std::time::Instant`] values by the caller, which is what makes every protocol decision
//! unit-testable with a fake clock.
//!
//! ## Layout
//! - [`packet`]: the in-memory packet types (a v5 superset; 3.1.1 packets leave v5 fields empty).
//! - [`reason`]: v5 reason codes and their 3.1.1 translations.
//! - [`error`]: protocol violations, each citing its clause and mapping to one reason code.
//! - [`codec`]: incremental decoder and encoder for 3.1.1 and 5.0.
//! - [`topic`]: topic name / filter validation and matching, shared subscription parsing.
//! - [`trie`]: the subscription trie used by the router.
//! - [`session`]: the per-connection state machine (`handle_*` in, `poll_*` out).

pub mod codec;
pub mod error;
pub mod inflight;
pub mod packet;
pub mod reason;
pub mod session;
pub mod topic;
pub mod trie;

pub use error::ProtocolError;
pub use packet::*;
pub use reason::ReasonCode;
