//! Liveness and readiness as the broker sees them: which ports are serving and which are
//! waiting (for example for a TLS certificate that does not exist yet), and whether the broker
//! is shutting down.
//!
//! Listeners and the shutdown path write it; the `/healthz` and `/readyz` endpoints read it. It
//! holds no policy about what "ready" means beyond "every configured port serves and the broker
//! is not draining".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// One port's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    Serving,
    /// Bound but refusing connections; the string says why (logged once as well).
    Waiting(String),
}

#[derive(Debug, Default)]
pub struct Health {
    /// Keyed by `(listener name, bound port)`: the bound port, so several `port: 0` entries
    /// stay apart and match what the ready file reports.
    ports: Mutex<BTreeMap<(String, u16), PortState>>,
    /// Set once at SIGTERM: from then on the broker refuses new connections and disconnects
    /// the ones it has, so a load balancer should stop sending it any.
    shutting_down: AtomicBool,
}

impl Health {
    pub fn set(&self, listener: &str, port: u16, state: PortState) {
        self.ports
            .lock()
            .insert((listener.to_string(), port), state);
    }

    /// Not ready from now on, whatever the ports say.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Ready when every registered port serves and the broker is not shutting down. Returns
    /// why not otherwise: one line per waiting port, or the shutdown.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(vec!["shutting down".to_string()]);
        }
        let waiting: Vec<String> = self
            .ports
            .lock()
            .iter()
            .filter_map(|((listener, port), state)| match state {
                PortState::Serving => None,
                PortState::Waiting(why) => Some(format!("{listener}:{port}: {why}")),
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }

    pub fn ports(&self) -> Vec<((String, u16), PortState)> {
        self.ports
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
