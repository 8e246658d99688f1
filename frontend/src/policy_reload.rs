//! Authorization policy updates without a restart (broker-spec §4.2, scenario 40).
//!
//! Each port with an `authorizationRef` gets a [`PortAuthorizer`]: a swappable handle on the
//! compiled policy. [`watch`] re-reads the configuration (`--config`) every second when its
//! files change, recompiles the `BrokerAuthorization` documents, and for every policy whose spec
//! changed swaps it into the ports that use it and tells those ports' connected clients: by
//! default they are disconnected (v5: DISCONNECT 0x98 Administrative action) and evaluated
//! afresh when they reconnect, as AIO documents; with `spec.onPolicyUpdate:
//! ReevaluateClients` each client instead recompiles its permissions, loses the subscriptions
//! they no longer cover, and is disconnected (0x87) only if it may no longer connect.
//!
//! A configuration that no longer loads or compiles is logged and ignored: the running
//! policies stay. This module reloads authorization only; listeners, TLS material (which has
//! its own watcher) and authentication (the authentication service reloads its own) are not
//! touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use serde_json::Value;
use tracing::{info, warn};

use crate::auth::{Authorizer, Permissions, Principal};
use crate::authz::{AuthzError, Policy};
use crate::connection::Shared;

/// A port's authorizer whose policy can be replaced while clients are connected.
pub struct PortAuthorizer {
    current: RwLock<Arc<dyn Authorizer>>,
}

impl PortAuthorizer {
    pub fn new(initial: Arc<dyn Authorizer>) -> PortAuthorizer {
        PortAuthorizer {
            current: RwLock::new(initial),
        }
    }

    pub fn replace(&self, next: Arc<dyn Authorizer>) {
        *self.current.write() = next;
    }
}

impl Authorizer for PortAuthorizer {
    fn connect(
        &self,
        client_id: &str,
        principal: &Principal,
    ) -> Result<Arc<dyn Permissions>, String> {
        let current = self.current.read().clone();
        current.connect(client_id, principal)
    }
}

/// What happens to connected clients when their port's policy changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUpdate {
    DisconnectClients,
    ReevaluateClients,
}

/// `spec.onPolicyUpdate` (Gatehouse extension) of a `BrokerAuthorization`.
pub fn on_update(name: &str, spec: &Value) -> Result<OnUpdate, AuthzError> {
    match spec.get("onPolicyUpdate").and_then(Value::as_str) {
        None | Some("DisconnectClients") => Ok(OnUpdate::DisconnectClients),
        Some("ReevaluateClients") => Ok(OnUpdate::ReevaluateClients),
        Some(other) => Err(AuthzError {
            policy: name.to_string(),
            field: "spec.onPolicyUpdate".to_string(),
            reason: format!("{other:?}: expected DisconnectClients or ReevaluateClients"),
        }),
    }
}

/// A port whose authorization can be updated.
pub struct Port {
    pub policy: String,
    pub authorizer: Arc<PortAuthorizer>,
    pub shared: Arc<Shared>,
}

/// Files and their modification times and sizes: cheap to take every second, and different
/// whenever an editor or a ConfigMap mount rewrites the configuration.
fn fingerprint(path: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = vec![path.to_path_buf()];
    if path.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        files = entries.flatten().map(|e| e.path()).collect();
        files.sort();
    }
    files
        .into_iter()
        .map(|f| {
            // Follows symlinks, as Kubernetes mounts swap a `..data` link.
            let meta = std::fs::metadata(&f).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (f, modified, len)
        })
        .collect()
}

/// Polls `config_path` and applies authorization policy changes to `ports`. Runs until the
/// task is dropped.
pub async fn watch(config_path: PathBuf, initial: BTreeMap<String, Value>, ports: Vec<Port>) {
    let mut seen = fingerprint(&config_path);
    let mut specs = initial;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = fingerprint(&config_path);
        if now == seen {
            continue;
        }
        seen = now;
        let config = match broker_config::Config::load(&config_path) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "configuration changed but does not load; keeping the running authorization policies");
                continue;
            }
        };
        let mut changed = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, doc) in &config.authorizations {
            let spec = &doc.resource.spec;
            if specs.get(name) == Some(spec) {
                continue;
            }
            match (Policy::compile(name, spec), on_update(name, spec)) {
                (Ok(policy), Ok(mode)) => {
                    changed.insert(name.clone(), (policy, mode, spec.clone()));
                }
                (Err(mut e), _) => errors.append(&mut e),
                (_, Err(e)) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            for e in &errors {
                warn!(error = %e, "authorization policy update rejected; keeping the running policies");
            }
            continue;
        }
        for (name, (policy, mode, spec)) in changed {
            let mut clients = 0;
            for port in ports.iter().filter(|p| p.policy == name) {
                port.authorizer.replace(policy.authorizer());
                clients += port
                    .shared
                    .live
                    .policy_updated(mode == OnUpdate::DisconnectClients);
            }
            info!(policy = %name, ?mode, clients, "authorization policy updated");
            specs.insert(name, spec);
        }
        // A removed BrokerAuthorization that a port still names cannot be applied (the
        // configuration would not validate), so removals need no handling here.
    }
}
