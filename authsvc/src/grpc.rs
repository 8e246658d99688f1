//! The authentication service's gRPC face (`auth.v1.Auth`, `proto/auth/v1/auth.proto`): the
//! tonic service, its server, and the configuration poller of the standalone binary.
//!
//! - `Authenticate` looks the request's policy up among the compiled [`Policies`], runs its
//!   [`Chain`] and maps the [`Decision`] to the wire. An unknown policy is a denial (0x87), not
//!   an error: the frontend must never read "no answer" into it.
//! - `Watch` is one bidirectional stream per frontend. The frontend says `Hello`, then
//!   `Register`s and `Unregister`s its live connections; this side keeps a [`Registry`] per
//!   stream and pushes `PolicyChanged` when a policy is changed or removed, `Disconnect`
//!   (0x87, [`POLICY_CHANGED`]) for connections of a removed policy, and `Disconnect`
//!   (0x87, [`CREDENTIAL_EXPIRED`]) [`EXPIRY_PUSH_GRACE`] after a credential's expiry. The
//!   frontend holds every deadline itself too, so the pushed expiry is only a safety net; the
//!   grace keeps it from racing the frontend's own timer, whose behaviour (close with or without
//!   DISCONNECT, `spec.expiryAction`) is the one that counts.
//!
//! This is the only place on the service side where the generated `proto::auth::v1` types
//! appear; everything else speaks [`Credentials`] and [`Decision`]. It holds no connection
//! state beyond the registrations a frontend sent on its own stream: when that stream breaks,
//! the frontend re-registers on another replica.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker_config::Config;
use bytes::Bytes;
use proto::auth::v1 as pb;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use crate::chain::Chain;
use crate::policy::{self, PolicyError};
use crate::{Credentials, Decision, Grant, Kind, Principal, Secret, code};

/// A safety net for a method that forgets to bound its own waiting: no answer in this time is
/// a transient failure. Frontends give up well before (their budget is a few seconds).
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a registered credential's expiry the service pushes its `Disconnect`.
pub const EXPIRY_PUSH_GRACE: Duration = Duration::from_secs(1);
/// How often the standalone service looks at its `--config` (and `--secrets-dir`).
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Pushes waiting for a slow frontend; past it the stream is dropped (the frontend reconnects
/// and re-registers, and gets the pushes again).
const PUSH_BUFFER: usize = 1024;
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings, so a frontend that vanished without a FIN is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `Disconnect` cause for connections of a removed policy.
pub const POLICY_CHANGED: &str = "authentication policy changed";
/// The `Disconnect` cause for a registered connection whose credential expired.
pub const CREDENTIAL_EXPIRED: &str = "credential expired";

/// Every compiled `BrokerAuthentication`, with the specs they came from, so that a reload can
/// tell which policies changed.
pub struct Policies {
    chains: BTreeMap<String, Arc<Chain>>,
    specs: BTreeMap<String, Value>,
}

/// Policies a reload changed (spec differs) or removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PolicyDiff {
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

impl Policies {
    /// Compiles every `BrokerAuthentication` of `config` (see [`policy::compile`]).
    pub fn compile(config: &Config, secrets_dir: PathBuf) -> Result<Policies, Vec<PolicyError>> {
        let chains = policy::compile(config, secrets_dir)?;
        let specs = config
            .authentications
            .iter()
            .map(|(name, doc)| (name.clone(), doc.resource.spec.clone()))
            .collect();
        Ok(Policies {
            chains: chains
                .into_iter()
                .map(|(name, chain)| (name, Arc::new(chain)))
                .collect(),
            specs,
        })
    }

    /// Already compiled chains, with the specs they came from.
    pub fn from_chains(chains: impl IntoIterator<Item = (Chain, Value)>) -> Policies {
        let mut out = Policies {
            chains: BTreeMap::new(),
            specs: BTreeMap::new(),
        };
        for (chain, spec) in chains {
            out.specs.insert(chain.name.clone(), spec);
            out.chains.insert(chain.name.clone(), Arc::new(chain));
        }
        out
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.chains.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.chains.contains_key(name)
    }

    fn chain(&self, name: &str) -> Option<Arc<Chain>> {
        self.chains.get(name).cloned()
    }

    /// What `new` changed or removed relative to `self`. Only the policy's own spec counts:
    /// a changed Secret or ConfigMap it reads is the method's business.
    pub fn diff(&self, new: &Policies) -> PolicyDiff {
        let mut diff = PolicyDiff::default();
        for (name, spec) in &self.specs {
            match new.specs.get(name) {
                None => diff.removed.push(name.clone()),
                Some(s) if s != spec => diff.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        diff
    }
}

/// The `auth.v1.Auth` service. Cheap to clone; clones share policies and watchers.
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every Watch stream subscribes, so a reload reaches all of them without loss: each
    /// stream diffs the policies it last saw against the current ones.
    policies: watch::Sender<Arc<Policies>>,
    /// Set on shutdown: Watch streams end, so the server's graceful shutdown is not held up by
    /// streams that would otherwise never finish.
    shutdown: watch::Sender<bool>,
}

impl AuthService {
    pub fn new(policies: Policies) -> AuthService {
        AuthService {
            inner: Arc::new(Inner {
                policies: watch::channel(Arc::new(policies)).0,
                shutdown: watch::channel(false).0,
            }),
        }
    }

    pub fn policies(&self) -> Arc<Policies> {
        self.inner.policies.borrow().clone()
    }

    /// Switch to `policies`; every Watch stream pushes what changed. Returns the difference.
    pub fn replace(&self, policies: Policies) -> PolicyDiff {
        let policies = Arc::new(policies);
        let old = self.inner.policies.send_replace(policies.clone());
        old.diff(&policies)
    }

    /// The decision for `credentials` under the policy `policy`.
    pub async fn decide(&self, policy: &str, credentials: &Credentials) -> Decision {
        let Some(chain) = self.policies().chain(policy) else {
            return Decision::not_authorized(format!("unknown authentication policy {policy:?}"));
        };
        match tokio::time::timeout(DECISION_TIMEOUT, chain.authenticate(credentials)).await {
            Ok(decision) => decision,
            Err(_) => Decision::Transient {
                reason: format!("policy {policy:?} did not decide within {DECISION_TIMEOUT:?}"),
            },
        }
    }

    /// Serve gRPC on `listener` (TLS when `tls` is given) until `shutdown` completes, then end
    /// every Watch stream and finish the calls in flight.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<ServerTls>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        if let Some(tls) = tls {
            let mut config = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem.0),
            );
            if let Some(ca) = &tls.client_ca_pem {
                config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder
                .tls_config(config)
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        }
        let inner = self.inner.clone();
        let signal = async move {
            shutdown.await;
            inner.shutdown.send_replace(true);
        };
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        builder
            .add_service(pb::auth_server::AuthServer::new(self))
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .map_err(|e| ServeError::Serve(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// The server's certificate and key, and the CA client certificates must chain to (mTLS).
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Secret,
    client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("key_pem", &self.key_pem)
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// A PEM file that could not be used; `path` is the file, `reason` why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PemError {
    pub path: PathBuf,
    pub reason: String,
}

/// Reads a PEM file holding at least one certificate.
pub fn read_certificates_pem(path: &Path) -> Result<Vec<u8>, PemError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let error = |reason: String| PemError {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| error(format!("not a PEM certificate: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(error("no PEM certificate in it".to_string()));
    }
    Ok(pem)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1). The error never quotes the file.
pub fn read_private_key_pem(path: &Path) -> Result<Vec<u8>, PemError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let error = |reason: String| PemError {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| error("no usable PEM private key".into()))?;
    Ok(pem)
}

impl ServerTls {
    /// Reads and checks the files, so a bad one is reported at start-up, naming it.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, PemError> {
        Ok(ServerTls {
            cert_pem: read_certificates_pem(cert)?,
            key_pem: Secret(Bytes::from(read_private_key_pem(key)?)),
            client_ca_pem: client_ca.map(read_certificates_pem).transpose()?,
        })
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let (policy, frontend_id, credentials) = credentials_from_proto(request.into_inner())?;
        let decision = self.decide(&policy, &credentials).await;
        debug!(
            policy,
            frontend_id,
            client_id = %credentials.client_id,
            kind = ?credentials.kind,
            outcome = outcome_name(&decision),
            "authentication decided"
        );
        Ok(Response::new(decision_to_proto(&decision)))
    }

    type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        tokio::spawn(watch_stream(
            inbound,
            tx,
            self.inner.policies.subscribe(),
            self.inner.shutdown.subscribe(),
            peer,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn outcome_name(decision: &Decision) -> &'static str {
    match decision {
        Decision::NotRelevant => "not relevant",
        Decision::Allow(_) => "allow",
        Decision::Deny { .. } => "deny",
        Decision::Continue { .. } => "continue",
        Decision::Transient { .. } => "transient failure",
    }
}

// ---- Authenticate: wire ↔ domain ------------------------------------------------------------

/// The request's policy, frontend id and credentials. Malformed requests are the frontend's
/// bug: `INVALID_ARGUMENT`, which the frontend treats like an unreachable replica (never an
/// allow).
fn credentials_from_proto(
    r: pb::AuthenticateRequest,
) -> Result<(String, String, Credentials), Status> {
    let kind = match pb::Kind::try_from(r.kind) {
        Ok(pb::Kind::Connect) => Kind::Connect,
        Ok(pb::Kind::AuthContinue) => Kind::Continue,
        Ok(pb::Kind::Reauth) => Kind::Reauthenticate,
        Ok(pb::Kind::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument("kind: required"));
        }
    };
    let protocol_version = match r.protocol_version {
        v @ 3..=5 => v as u8,
        v => {
            return Err(Status::invalid_argument(format!(
                "protocol_version: {v} is not 3, 4 or 5"
            )));
        }
    };
    let listener_port = u16::try_from(r.listener_port).map_err(|_| {
        Status::invalid_argument(format!("listener_port: {} is not a port", r.listener_port))
    })?;
    let credentials = Credentials {
        kind,
        protocol_version,
        client_id: r.client_id,
        username: r.username,
        password: r.password.map(|p| Secret(Bytes::from(p))),
        method: r.auth_method,
        data: r.auth_data.map(|d| Secret(Bytes::from(d))),
        tls_chain: r.tls_chain_der,
        listener_port,
        peer: r.peer_addr.parse::<SocketAddr>().ok(),
        continuation: Bytes::from(r.continuation),
    };
    Ok((r.policy, r.frontend_id, credentials))
}

fn principal_to_proto(p: &Principal) -> pb::Principal {
    pb::Principal {
        username: p.username.clone(),
        attributes: p
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        // The chain does not say which method decided; the frontend does not need it.
        method: String::new(),
    }
}

fn principal_from_proto(p: Option<pb::Principal>) -> Principal {
    let p = p.unwrap_or_default();
    Principal {
        username: p.username,
        attributes: p.attributes.into_iter().collect(),
    }
}

/// Milliseconds since the Unix epoch; truncated, so the deadline can only move earlier.
pub fn to_unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// The instant `ms` milliseconds after the Unix epoch (negative: the epoch, i.e. expired);
/// `None` if the platform cannot represent it (then it is as good as never).
pub fn from_unix_ms(ms: i64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn decision_to_proto(decision: &Decision) -> pb::AuthenticateResponse {
    let mut r = pb::AuthenticateResponse::default();
    match decision {
        Decision::Allow(Grant {
            principal,
            expiry,
            data,
            can_reauthenticate,
        }) => {
            r.outcome = pb::Outcome::Allow as i32;
            r.principal = Some(principal_to_proto(principal));
            r.expiry_unix_ms = expiry.map(to_unix_ms);
            r.auth_data = data.as_ref().map(|d| d.to_vec());
            r.can_reauthenticate = *can_reauthenticate;
        }
        Decision::Deny { code, reason } => {
            r.outcome = pb::Outcome::Deny as i32;
            // A "denial" with a success code must not read as an allow anywhere.
            r.reason_code = u32::from(if *code >= 0x80 {
                *code
            } else {
                code::NOT_AUTHORIZED
            });
            r.reason = reason.clone();
        }
        Decision::Continue { data, continuation } => {
            r.outcome = pb::Outcome::Continue as i32;
            r.reason_code = 0x18;
            r.auth_data = data.as_ref().map(|d| d.to_vec());
            r.continuation = continuation.to_vec();
        }
        Decision::Transient { reason } => {
            r.outcome = pb::Outcome::TransientFailure as i32;
            r.reason_code = u32::from(code::SERVER_UNAVAILABLE);
            r.reason = reason.clone();
        }
        // The chain never returns it; should it leak, it means what an exhausted chain means.
        Decision::NotRelevant => {
            r.outcome = pb::Outcome::Deny as i32;
            r.reason_code = u32::from(code::NOT_AUTHORIZED);
            r.reason = "no authentication method accepted these credentials".to_string();
        }
    }
    r
}

// ---- Watch ----------------------------------------------------------------------------------

/// One registered live connection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Registered {
    client_id: String,
    policy: String,
    principal: Principal,
    expiry: Option<SystemTime>,
}

/// What a frontend said on its Watch stream, as domain values.
#[derive(Debug, PartialEq, Eq)]
enum WatchMsg {
    Hello(String),
    Register(String, Registered),
    Unregister(String),
}

/// What this side pushes.
#[derive(Debug, PartialEq, Eq)]
enum Push {
    Disconnect {
        connection_id: String,
        code: u8,
        cause: &'static str,
    },
    PolicyChanged(String),
}

fn watch_msg_from_proto(r: pb::WatchRequest) -> Option<WatchMsg> {
    use pb::watch_request::Msg;
    Some(match r.msg? {
        Msg::Hello(h) => WatchMsg::Hello(h.frontend_id),
        Msg::Register(r) => WatchMsg::Register(
            r.connection_id,
            Registered {
                client_id: r.client_id,
                policy: r.policy,
                principal: principal_from_proto(r.principal),
                expiry: r.expiry_unix_ms.and_then(from_unix_ms),
            },
        ),
        Msg::Unregister(u) => WatchMsg::Unregister(u.connection_id),
    })
}

fn push_to_proto(p: Push) -> pb::WatchEvent {
    use pb::watch_event::Event;
    pb::WatchEvent {
        event: Some(match p {
            Push::Disconnect {
                connection_id,
                code,
                cause,
            } => Event::Disconnect(pb::Disconnect {
                connection_id,
                reason_code: u32::from(code),
                cause: cause.to_string(),
            }),
            Push::PolicyChanged(policy) => Event::PolicyChanged(pb::PolicyChanged { policy }),
        }),
    }
}

/// The live connections one frontend registered on one stream, and what to push about them.
struct Registry {
    frontend_id: Option<String>,
    policies: Arc<Policies>,
    live: HashMap<String, Registered>,
    /// (push instant, connection id), so the next expiry is found without a scan.
    deadlines: BTreeSet<(SystemTime, String)>,
}

impl Registry {
    fn new(policies: Arc<Policies>) -> Registry {
        Registry {
            frontend_id: None,
            policies,
            live: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    fn remove(&mut self, connection_id: &str) -> Option<Registered> {
        let old = self.live.remove(connection_id)?;
        if let Some(at) = push_at(old.expiry) {
            self.deadlines.remove(&(at, connection_id.to_string()));
        }
        Some(old)
    }

    fn apply(&mut self, msg: WatchMsg) -> Vec<Push> {
        match msg {
            WatchMsg::Hello(id) => {
                if self.frontend_id.is_none() {
                    self.frontend_id = Some(id);
                }
                Vec::new()
            }
            WatchMsg::Register(connection_id, registered) => {
                self.remove(&connection_id);
                if !self.policies.contains(&registered.policy) {
                    // Re-registered after a reload removed its policy (or on a replica that
                    // never had it): the connection lives on nothing this service knows.
                    return vec![Push::Disconnect {
                        connection_id,
                        code: code::NOT_AUTHORIZED,
                        cause: POLICY_CHANGED,
                    }];
                }
                if let Some(at) = push_at(registered.expiry) {
                    self.deadlines.insert((at, connection_id.clone()));
                }
                self.live.insert(connection_id, registered);
                Vec::new()
            }
            WatchMsg::Unregister(connection_id) => {
                self.remove(&connection_id);
                Vec::new()
            }
        }
    }

    fn policies_changed(&mut self, new: Arc<Policies>) -> Vec<Push> {
        let diff = self.policies.diff(&new);
        self.policies = new;
        let mut pushes: Vec<Push> = diff
            .changed
            .iter()
            .chain(&diff.removed)
            .map(|p| Push::PolicyChanged(p.clone()))
            .collect();
        if !diff.removed.is_empty() {
            let mut gone: Vec<String> = self
                .live
                .iter()
                .filter(|(_, r)| diff.removed.contains(&r.policy))
                .map(|(id, _)| id.clone())
                .collect();
            gone.sort();
            for connection_id in gone {
                self.remove(&connection_id);
                pushes.push(Push::Disconnect {
                    connection_id,
                    code: code::NOT_AUTHORIZED,
                    cause: POLICY_CHANGED,
                });
            }
        }
        pushes
    }

    /// Disconnects for every registration whose push instant has come.
    fn expired(&mut self, now: SystemTime) -> Vec<Push> {
        let mut pushes = Vec::new();
        while let Some((at, id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.remove(&id);
            pushes.push(Push::Disconnect {
                connection_id: id,
                code: code::NOT_AUTHORIZED,
                cause: CREDENTIAL_EXPIRED,
            });
        }
        pushes
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        self.deadlines.first().map(|(at, _)| *at)
    }
}

fn push_at(expiry: Option<SystemTime>) -> Option<SystemTime> {
    expiry.and_then(|e| e.checked_add(EXPIRY_PUSH_GRACE))
}

/// One frontend's Watch stream: until it ends, the service shuts down, or pushing stalls.
async fn watch_stream(
    mut inbound: Streaming<pb::WatchRequest>,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
    mut policies: watch::Receiver<Arc<Policies>>,
    mut shutdown: watch::Receiver<bool>,
    peer: Option<SocketAddr>,
) {
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    let mut registry = Registry::new(policies.borrow_and_update().clone());
    debug!(%peer, "watch stream opened");
    let end = loop {
        if *shutdown.borrow() {
            break "service shutting down";
        }
        let wait = registry.next_deadline().map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        let pushes = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => match watch_msg_from_proto(msg) {
                    Some(WatchMsg::Hello(id)) => {
                        info!(%peer, frontend_id = %id, "frontend watch stream open");
                        registry.apply(WatchMsg::Hello(id))
                    }
                    Some(msg) => registry.apply(msg),
                    None => Vec::new(),
                },
                Ok(None) => break "closed by the frontend",
                Err(_) => break "broken",
            },
            changed = policies.changed() => {
                if changed.is_err() {
                    break "service stopped";
                }
                let new = policies.borrow_and_update().clone();
                registry.policies_changed(new)
            }
            _ = tokio::time::sleep(wait.unwrap_or(Duration::ZERO)), if wait.is_some() => {
                registry.expired(SystemTime::now())
            }
            stopped = shutdown.changed() => {
                if stopped.is_err() {
                    break "service stopped";
                }
                continue;
            }
        };
        let mut stalled = false;
        for push in pushes {
            if let Push::Disconnect {
                connection_id,
                cause,
                ..
            } = &push
            {
                info!(
                    frontend_id = %registry.frontend_id.as_deref().unwrap_or(""),
                    connection_id,
                    cause,
                    "pushing disconnect"
                );
            }
            let sent = tokio::time::timeout(PUSH_TIMEOUT, tx.send(Ok(push_to_proto(push)))).await;
            if !matches!(sent, Ok(Ok(()))) {
                stalled = true;
                break;
            }
        }
        if stalled {
            break "frontend not reading";
        }
    };
    info!(
        %peer,
        frontend_id = %registry.frontend_id.as_deref().unwrap_or(""),
        connections = registry.live.len(),
        why = end,
        "watch stream closed"
    );
}

// ---- configuration polling (standalone service) ---------------------------------------------

/// A digest of the configuration file or folder and of the secrets folder (two levels, as
/// Kubernetes mounts `NAME/key`), so the poller recompiles only when something changed.
pub fn config_fingerprint(config: &Path, secrets_dir: &Path) -> u64 {
    fn walk(path: &Path, depth: u8, h: &mut std::hash::DefaultHasher) {
        path.hash(h);
        match std::fs::metadata(path) {
            Err(e) => e.kind().hash(h),
            Ok(m) if m.is_file() => match std::fs::read(path) {
                Ok(bytes) => bytes.hash(h),
                Err(e) => e.kind().hash(h),
            },
            Ok(m) if m.is_dir() && depth > 0 => {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                    .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                    .unwrap_or_default();
                entries.sort();
                for e in entries {
                    walk(&e, depth - 1, h);
                }
            }
            Ok(_) => {}
        }
    }
    let mut h = std::hash::DefaultHasher::new();
    walk(config, 1, &mut h);
    walk(secrets_dir, 2, &mut h);
    h.finish()
}

/// Polls `config` and `secrets_dir` every [`CONFIG_POLL_INTERVAL`]; on a change, loads and
/// compiles again and switches `service` to the result. A configuration that does not load or
/// compile is logged and the previous one kept. `seen` is the fingerprint of what `service`
/// was built from. Runs until dropped.
pub async fn watch_config(service: AuthService, config: PathBuf, secrets_dir: PathBuf, seen: u64) {
    let mut seen = seen;
    let mut tick = tokio::time::interval(CONFIG_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (c, s) = (config.clone(), secrets_dir.clone());
        // File IO and method builders (which may read files) stay off the async workers.
        let result = tokio::task::spawn_blocking(move || {
            let now = config_fingerprint(&c, &s);
            if now == seen {
                return (now, None);
            }
            let compiled = Config::load(&c)
                .map_err(|e| vec![e.to_string()])
                .and_then(|config| {
                    Policies::compile(&config, s)
                        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
                });
            (now, Some(compiled))
        })
        .await;
        let Ok((now, outcome)) = result else { continue };
        seen = now;
        match outcome {
            None => {}
            Some(Ok(policies)) => {
                let diff = service.replace(policies);
                info!(changed = ?diff.changed, removed = ?diff.removed, "configuration reloaded");
            }
            Some(Err(errors)) => {
                for e in errors {
                    error!("configuration rejected, keeping the previous one: {e}");
                }
            }
        }
    }
}

/// Logged once by the binary: which policies it serves.
pub fn log_policies(policies: &Policies) {
    let names: Vec<&str> = policies.names().collect();
    if names.is_empty() {
        warn!("no BrokerAuthentication in the configuration: every request will be denied");
    } else {
        info!(policies = ?names, "serving authentication policies");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Method;

    /// The frontend's reading of a response, reduced to a [`Decision`], to check that the
    /// mapping loses nothing.
    fn decision_from_proto(r: pb::AuthenticateResponse) -> Decision {
        match pb::Outcome::try_from(r.outcome) {
            Ok(pb::Outcome::Allow) => Decision::Allow(Grant {
                principal: principal_from_proto(r.principal),
                expiry: r.expiry_unix_ms.and_then(from_unix_ms),
                data: r.auth_data.map(Bytes::from),
                can_reauthenticate: r.can_reauthenticate,
            }),
            Ok(pb::Outcome::Deny) => Decision::Deny {
                code: u8::try_from(r.reason_code).unwrap(),
                reason: r.reason,
            },
            Ok(pb::Outcome::Continue) => Decision::Continue {
                data: r.auth_data.map(Bytes::from),
                continuation: Bytes::from(r.continuation),
            },
            Ok(pb::Outcome::TransientFailure) => Decision::Transient { reason: r.reason },
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    fn ms(t: SystemTime) -> SystemTime {
        from_unix_ms(to_unix_ms(t)).unwrap()
    }

    #[test]
    fn decisions_survive_the_wire() {
        let expiry = ms(SystemTime::now() + Duration::from_secs(60));
        let decisions = [
            Decision::Allow(Grant {
                principal: Principal {
                    username: Some("smart-lock".into()),
                    attributes: [("group".to_string(), "g1".to_string())].into(),
                },
                expiry: Some(expiry),
                data: Some(Bytes::from_static(b"server-final")),
                can_reauthenticate: false,
            }),
            Decision::Allow(Grant {
                principal: Principal::default(),
                expiry: None,
                data: None,
                can_reauthenticate: true,
            }),
            Decision::deny(0x86, "bad password"),
            Decision::Continue {
                data: Some(Bytes::from_static(b"challenge")),
                continuation: Bytes::from_static(b"\x01state"),
            },
            Decision::Transient {
                reason: "kubernetes API unreachable".into(),
            },
        ];
        for d in decisions {
            assert_eq!(decision_from_proto(decision_to_proto(&d)), d);
        }
        let r = decision_to_proto(&Decision::Transient { reason: "x".into() });
        assert_eq!(r.reason_code, 0x88);
        let r = decision_to_proto(&Decision::Continue {
            data: None,
            continuation: Bytes::new(),
        });
        assert_eq!(r.reason_code, 0x18);
    }

    /// NotRelevant never leaves the chain, and a denial never carries a success code.
    #[test]
    fn not_relevant_and_odd_denials_are_not_authorized() {
        let r = decision_to_proto(&Decision::NotRelevant);
        assert_eq!(r.outcome, pb::Outcome::Deny as i32);
        assert_eq!(r.reason_code, 0x87);
        let r = decision_to_proto(&Decision::deny(0x00, "odd"));
        assert_eq!(r.outcome, pb::Outcome::Deny as i32);
        assert_eq!(r.reason_code, 0x87);
    }

    #[test]
    fn expiry_is_unix_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(to_unix_ms(t), 1_700_000_000_123);
        assert_eq!(
            to_unix_ms(t + Duration::from_micros(999)),
            1_700_000_000_123
        );
        assert_eq!(from_unix_ms(1_700_000_000_123), Some(t));
        assert_eq!(from_unix_ms(-5), Some(UNIX_EPOCH));
    }

    #[test]
    fn requests_become_credentials_and_bad_ones_are_rejected() {
        let request = pb::AuthenticateRequest {
            connection_id: "7".into(),
            frontend_id: "fe".into(),
            listener_port: 8883,
            policy: "p".into(),
            protocol_version: 5,
            kind: pb::Kind::Reauth as i32,
            client_id: "c".into(),
            username: Some("u".into()),
            password: Some(b"pw".to_vec()),
            auth_method: Some("K8S-SAT".into()),
            auth_data: Some(b"token".to_vec()),
            tls_chain_der: vec![vec![1, 2, 3]],
            peer_addr: "127.0.0.1:5000".into(),
            continuation: vec![9],
        };
        let (policy, frontend, c) = credentials_from_proto(request.clone()).unwrap();
        assert_eq!((policy.as_str(), frontend.as_str()), ("p", "fe"));
        assert_eq!(c.kind, Kind::Reauthenticate);
        assert_eq!(c.protocol_version, 5);
        assert_eq!(c.listener_port, 8883);
        assert_eq!(c.password, Some(Secret(Bytes::from_static(b"pw"))));
        assert_eq!(c.data, Some(Secret(Bytes::from_static(b"token"))));
        assert_eq!(c.method.as_deref(), Some("K8S-SAT"));
        assert_eq!(c.tls_chain, vec![vec![1, 2, 3]]);
        assert_eq!(c.peer, Some("127.0.0.1:5000".parse().unwrap()));
        assert_eq!(&c.continuation[..], &[9]);
        // Debug output of the credentials never shows the secrets.
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("token") && !debug.contains("pw\""),
            "{debug}"
        );

        let bad = |f: fn(&mut pb::AuthenticateRequest)| {
            let mut r = request.clone();
            f(&mut r);
            credentials_from_proto(r).unwrap_err().code()
        };
        assert_eq!(bad(|r| r.kind = 0), tonic::Code::InvalidArgument);
        assert_eq!(bad(|r| r.kind = 42), tonic::Code::InvalidArgument);
        assert_eq!(
            bad(|r| r.protocol_version = 6),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            bad(|r| r.listener_port = 70000),
            tonic::Code::InvalidArgument
        );
    }

    fn policies(specs: &[(&str, &str)]) -> Arc<Policies> {
        Arc::new(Policies::from_chains(specs.iter().map(|(name, v)| {
            (
                Chain::new(
                    *name,
                    vec![Box::new(crate::AllowEveryone) as Box<dyn Method>],
                ),
                serde_json::json!({ "v": v }),
            )
        })))
    }

    fn reg(policy: &str, expiry: Option<SystemTime>) -> Registered {
        Registered {
            client_id: "c".into(),
            policy: policy.into(),
            principal: Principal::default(),
            expiry,
        }
    }

    fn disconnect(id: &str, cause: &'static str) -> Push {
        Push::Disconnect {
            connection_id: id.into(),
            code: 0x87,
            cause,
        }
    }

    #[test]
    fn registry_pushes_policy_changes_and_disconnects_connections_of_removed_policies() {
        let mut r = Registry::new(policies(&[("a", "1"), ("b", "1"), ("c", "1")]));
        assert!(r.apply(WatchMsg::Hello("fe".into())).is_empty());
        assert!(
            r.apply(WatchMsg::Register("1".into(), reg("a", None)))
                .is_empty()
        );
        assert!(
            r.apply(WatchMsg::Register("2".into(), reg("b", None)))
                .is_empty()
        );
        assert!(
            r.apply(WatchMsg::Register("3".into(), reg("b", None)))
                .is_empty()
        );
        assert!(
            r.apply(WatchMsg::Register("4".into(), reg("c", None)))
                .is_empty()
        );
        assert!(r.apply(WatchMsg::Unregister("3".into())).is_empty());
        // a changed, b removed, c unchanged, d added.
        let pushes = r.policies_changed(policies(&[("a", "2"), ("c", "1"), ("d", "1")]));
        assert_eq!(
            pushes,
            vec![
                Push::PolicyChanged("a".into()),
                Push::PolicyChanged("b".into()),
                disconnect("2", POLICY_CHANGED),
            ]
        );
        let mut live: Vec<&String> = r.live.keys().collect();
        live.sort();
        assert_eq!(live, ["1", "4"]);
        assert!(
            r.policies_changed(policies(&[("a", "2"), ("c", "1"), ("d", "1")]))
                .is_empty()
        );
        // Registering for a policy the service does not (or no longer) know: disconnected.
        assert_eq!(
            r.apply(WatchMsg::Register("5".into(), reg("b", None))),
            vec![disconnect("5", POLICY_CHANGED)]
        );
        assert!(!r.live.contains_key("5"));
        assert_eq!(r.frontend_id.as_deref(), Some("fe"));
    }

    #[test]
    fn registry_pushes_expiry_a_grace_after_the_deadline_and_forgets_re_registered_ones() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = Registry::new(policies(&[("a", "1")]));
        r.apply(WatchMsg::Register("1".into(), reg("a", Some(t0))));
        r.apply(WatchMsg::Register(
            "2".into(),
            reg("a", Some(t0 + Duration::from_secs(5))),
        ));
        r.apply(WatchMsg::Register("3".into(), reg("a", None)));
        assert_eq!(r.next_deadline(), Some(t0 + EXPIRY_PUSH_GRACE));
        assert!(
            r.expired(t0).is_empty(),
            "the frontend's own timer goes first"
        );
        assert_eq!(
            r.expired(t0 + EXPIRY_PUSH_GRACE),
            vec![disconnect("1", CREDENTIAL_EXPIRED)]
        );
        // Re-authenticated: registered again with a later expiry, the old deadline is gone.
        r.apply(WatchMsg::Register(
            "2".into(),
            reg("a", Some(t0 + Duration::from_secs(60))),
        ));
        assert!(r.expired(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(
            r.next_deadline(),
            Some(t0 + Duration::from_secs(60) + EXPIRY_PUSH_GRACE)
        );
        r.apply(WatchMsg::Unregister("2".into()));
        assert_eq!(r.next_deadline(), None);
        assert!(r.expired(t0 + Duration::from_secs(3600)).is_empty());
        assert_eq!(r.live.len(), 1);
    }

    #[test]
    fn watch_messages_come_off_the_wire() {
        use pb::watch_request::Msg;
        let msg = |m| pb::WatchRequest { msg: Some(m) };
        assert_eq!(
            watch_msg_from_proto(msg(Msg::Hello(pb::Hello {
                frontend_id: "fe".into()
            }))),
            Some(WatchMsg::Hello("fe".into()))
        );
        let expiry = ms(SystemTime::now());
        assert_eq!(
            watch_msg_from_proto(msg(Msg::Register(pb::Register {
                connection_id: "9".into(),
                client_id: "c".into(),
                policy: "a".into(),
                principal: None,
                expiry_unix_ms: Some(to_unix_ms(expiry)),
            }))),
            Some(WatchMsg::Register("9".into(), reg("a", Some(expiry))))
        );
        assert_eq!(watch_msg_from_proto(pb::WatchRequest { msg: None }), None);
    }

    async fn next_event(events: &mut Streaming<pb::WatchEvent>) -> pb::watch_event::Event {
        tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("a push in time")
            .unwrap()
            .unwrap()
            .event
            .unwrap()
    }

    /// The real service on loopback, through the generated client: an unknown policy is a
    /// denial, a known one decides, and a reload that removes a policy reaches the Watch stream.
    #[tokio::test]
    async fn service_on_loopback_answers_and_pushes() {
        let service = AuthService::new(Arc::try_unwrap(policies(&[("a", "1")])).ok().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(service.clone().serve(listener, None, async {
            let _ = stop_rx.await;
        }));
        let mut client = pb::auth_client::AuthClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let request = |policy: &str| pb::AuthenticateRequest {
            policy: policy.into(),
            protocol_version: 5,
            kind: pb::Kind::Connect as i32,
            client_id: "c".into(),
            ..Default::default()
        };
        let r = client
            .authenticate(request("nope"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome, pb::Outcome::Deny as i32);
        assert_eq!(r.reason_code, 0x87);
        assert!(r.reason.contains("nope"), "{}", r.reason);
        let r = client
            .authenticate(request("a"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome, pb::Outcome::Allow as i32);

        let (tx, rx) = mpsc::unbounded_channel();
        use pb::watch_request::Msg;
        tx.send(pb::WatchRequest {
            msg: Some(Msg::Hello(pb::Hello {
                frontend_id: "fe".into(),
            })),
        })
        .unwrap();
        tx.send(pb::WatchRequest {
            msg: Some(Msg::Register(pb::Register {
                connection_id: "1".into(),
                client_id: "c".into(),
                policy: "a".into(),
                principal: None,
                expiry_unix_ms: None,
            })),
        })
        .unwrap();
        let mut events = client
            .watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // Messages are handled in order: once the push answering a registration for an
        // unknown policy arrives, "1" is registered.
        tx.send(pb::WatchRequest {
            msg: Some(Msg::Register(pb::Register {
                connection_id: "marker".into(),
                client_id: "m".into(),
                policy: "unknown".into(),
                principal: None,
                expiry_unix_ms: None,
            })),
        })
        .unwrap();
        use pb::watch_event::Event;
        assert_eq!(
            next_event(&mut events).await,
            Event::Disconnect(pb::Disconnect {
                connection_id: "marker".into(),
                reason_code: 0x87,
                cause: POLICY_CHANGED.into(),
            })
        );
        let diff = service.replace(Arc::try_unwrap(policies(&[])).ok().unwrap());
        assert_eq!(diff.removed, vec!["a".to_string()]);
        assert_eq!(
            next_event(&mut events).await,
            Event::PolicyChanged(pb::PolicyChanged { policy: "a".into() })
        );
        assert_eq!(
            next_event(&mut events).await,
            Event::Disconnect(pb::Disconnect {
                connection_id: "1".into(),
                reason_code: 0x87,
                cause: POLICY_CHANGED.into(),
            })
        );
        // Shutdown ends the stream, so the server stops.
        stop_tx.send(()).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("stream ended in time");
        assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stopped in time")
            .unwrap()
            .unwrap();
    }
}
