//! Shared helpers for the end-to-end tests: start the real `gatehouse` binary on loopback and
//! drive it with real clients (rumqttc, the mosquitto command-line tools, and a raw-socket
//! client built on the broker's own codec).
//!
//! This crate holds no tests of its own and no broker logic: the tests live in `tests/tests/`,
//! one file per topic, and everything here exists to keep them short and free of hangs (every
//! wait is bounded).

pub mod authsvc;
pub mod broker;
pub mod fake_custom_auth;
pub mod fake_kube;
pub mod mosquitto;
pub mod pki;
pub mod process;
pub mod raw;
mod restartable;
pub mod rumqtt;
pub mod ws;

pub use authsvc::Authsvc;
pub use broker::{Broker, ReadyPort, broker_config, gatehouse_bin};
pub use raw::{RawClient, Recv};

use std::time::Duration;

/// The bound on any single wait for something that should happen promptly (a CONNACK, a
/// delivered message). Generous on purpose: CI machines are slow and shared, and a test that
/// waits this long has failed anyway.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a test watches for something that must NOT happen (a message that should have been
/// suppressed). Only used where no positive signal exists to poll for instead.
pub const QUIET: Duration = Duration::from_millis(700);

/// A client id unique within this test process, so tests sharing a broker never collide.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
