//! The frontend's client of the authentication service (`auth.v1.Auth`): a
//! [`GrpcAuthenticator`] per port with an `authenticationRef`, all sharing one [`AuthsvcClient`]
//! (long-lived channels to every replica, one Watch stream per process).
//!
//! **Decisions.** Each CONNECT / AUTH goes to the replica that answered last, then to the others
//! in order. The whole decision has [`CALL_BUDGET`] (3 s), shared out equally among the
//! replicas not tried yet, so one replica that hangs cannot use up the time another needs; a
//! refused connection costs nothing and moves on at once. If no replica answers, the outcome is
//! [`AuthOutcome::Transient`] — the connection turns that into CONNACK 0x88 (3.1.1: 0x03) or,
//! on re-authentication, AUTH 0x18 — and never an allow.
//!
//! **Watch.** Live connections ([`Authenticator::watch`]) are registered on one Watch stream
//! per frontend process (not per connection). A pushed `Disconnect` closes the connection
//! through its `ConnControl::kick`; `PolicyChanged` is logged. When the stream breaks (the
//! replica died or shut down), it is opened again on the next replica, with backoff, and every
//! live connection is registered again, so pushes keep reaching them. A successful
//! re-authentication registers the connection again with its new expiry. Deadlines never
//! depend on this stream: each connection holds its own expiry timer.
//!
//! All RPCs run on a small dedicated tokio runtime ([`AuthRuntime`]), not on the connection
//! workers. The generated `proto::auth::v1` types stay inside this file; the rest of the
//! frontend sees [`AuthRequest`] and [`AuthOutcome`]. This module makes no decisions of its own
//! and holds no policy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use authsvc::grpc::{from_unix_ms, read_certificates_pem, read_private_key_pem, to_unix_ms};
use bytes::Bytes;
use mqtt::{Protocol, ReasonCode};
use parking_lot::Mutex;
use proto::auth::v1 as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use crate::auth::{
    AuthFuture, AuthKind, AuthOutcome, AuthRequest, Authenticator, LiveConnection, Principal,
    WatchGuard,
};
use crate::router::ConnControl;

/// The time one decision may take, over all replicas tried.
pub const CALL_BUDGET: Duration = Duration::from_secs(3);
/// TCP (and TLS) connect to one replica.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long opening the Watch stream on one replica may take.
const WATCH_OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// Between attempts to open the Watch stream: doubling from MIN to MAX, reset once open.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// HTTP/2 pings, so a replica that vanished without a FIN is noticed on idle channels too.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the replicas are and how to reach them.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// `http://HOST:PORT` or `https://HOST:PORT`, tried in this order.
    pub urls: Vec<String>,
    /// CA (PEM) the replicas' server certificates chain to; required for `https://`.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM) presented to the replicas (mTLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--authsvc: no URL given")]
    NoUrl,
    #[error("--authsvc {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{flag} {source}")]
    File {
        flag: &'static str,
        source: authsvc::grpc::PemError,
    },
    #[error("--authsvc-cert and --authsvc-key must be given together")]
    HalfIdentity,
    #[error("the authentication client's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The runtime every RPC (and the embedded service, if any) runs on. Dropping it stops them
/// without waiting, from whatever thread drops it last.
pub struct AuthRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl AuthRuntime {
    pub fn new() -> Result<AuthRuntime, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("authsvc-client")
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(AuthRuntime {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("present until dropped")
            .handle()
    }
}

impl Drop for AuthRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts the authentication service in this process on `127.0.0.1:0` and returns where it
/// listens: the embedded default talks to it over loopback with the same client and service
/// code as a split deployment.
pub fn start_embedded(
    runtime: &AuthRuntime,
    service: authsvc::grpc::AuthService,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    runtime.handle().spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "embedded authentication service cannot listen");
                return;
            }
        };
        if let Err(e) = service
            .serve(listener, None, std::future::pending::<()>())
            .await
        {
            warn!(error = %e, "embedded authentication service stopped");
        }
    });
    Ok(addr)
}

/// Channels to every replica and the process's Watch stream. Cheap to clone.
#[derive(Clone)]
pub struct AuthsvcClient {
    runtime: Arc<AuthRuntime>,
    core: Arc<Core>,
}

/// What the RPC tasks share. It does not own the runtime, so no task can end up dropping the
/// runtime it runs on.
struct Core {
    frontend_id: String,
    replicas: Vec<Replica>,
    /// The replica that answered last: tried first.
    preferred: AtomicUsize,
    hub: Hub,
}

struct Replica {
    url: String,
    channel: Channel,
}

impl AuthsvcClient {
    /// Channels to `options.urls` (connected lazily, kept open) and the Watch stream task.
    pub fn connect(
        options: &ClientOptions,
        runtime: Arc<AuthRuntime>,
    ) -> Result<AuthsvcClient, ClientError> {
        if options.urls.is_empty() {
            return Err(ClientError::NoUrl);
        }
        let tls = client_tls(options)?;
        // Lazy channels spawn their connection task on the current runtime: ours.
        let _entered = runtime.handle().enter();
        let mut replicas = Vec::new();
        for url in &options.urls {
            let url = url.trim().to_string();
            let bad = |reason: String| ClientError::Url {
                url: url.clone(),
                reason,
            };
            let https = if url.starts_with("https://") {
                true
            } else if url.starts_with("http://") {
                false
            } else {
                return Err(bad("must start with http:// or https://".into()));
            };
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| bad(e.to_string()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            if https {
                let Some(tls) = &tls else {
                    return Err(bad(
                        "https:// needs --authsvc-ca (the CA of the service's certificate)".into(),
                    ));
                };
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| bad(e.to_string()))?;
            } else if tls.is_some() {
                warn!(
                    %url,
                    "--authsvc-ca/--authsvc-cert apply to https:// URLs only; this one is plain"
                );
            }
            replicas.push(Replica {
                channel: endpoint.connect_lazy(),
                url,
            });
        }
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            frontend_id: frontend_id(),
            replicas,
            preferred: AtomicUsize::new(0),
            hub: Hub {
                live: Mutex::new(HashMap::new()),
                sync: sync_tx,
            },
        });
        runtime.handle().spawn(run_watch(core.clone(), sync_rx));
        Ok(AuthsvcClient { runtime, core })
    }

    /// The authenticator of ports whose `authenticationRef` is `policy`.
    pub fn authenticator(&self, policy: &str) -> GrpcAuthenticator {
        GrpcAuthenticator {
            runtime: self.runtime.clone(),
            core: self.core.clone(),
            policy: policy.to_string(),
        }
    }

    pub fn frontend_id(&self) -> &str {
        &self.core.frontend_id
    }
}

fn client_tls(options: &ClientOptions) -> Result<Option<ClientTlsConfig>, ClientError> {
    let file = |flag: &'static str| move |source| ClientError::File { flag, source };
    let mut config = None;
    if let Some(ca) = &options.ca {
        let pem = read_certificates_pem(ca).map_err(file("--authsvc-ca"))?;
        config = Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)));
    }
    match (&options.cert, &options.key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            let cert = read_certificates_pem(cert).map_err(file("--authsvc-cert"))?;
            let key = read_private_key_pem(key).map_err(file("--authsvc-key"))?;
            config = Some(
                config
                    .unwrap_or_default()
                    .identity(Identity::from_pem(cert, key)),
            );
        }
        _ => return Err(ClientError::HalfIdentity),
    }
    Ok(config)
}

/// Names this process on the service's logs: host, pid and a random suffix (a restarted
/// frontend is a new frontend).
fn frontend_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gatehouse".to_string());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The [`Authenticator`] of one port: its `authenticationRef` policy, decided by the service.
pub struct GrpcAuthenticator {
    runtime: Arc<AuthRuntime>,
    core: Arc<Core>,
    policy: String,
}

impl Authenticator for GrpcAuthenticator {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        let (core, policy) = (self.core.clone(), self.policy.clone());
        let task = self
            .runtime
            .handle()
            .spawn(async move { core.authenticate(policy, request).await });
        Box::pin(async move {
            task.await.unwrap_or_else(|_| AuthOutcome::Transient {
                reason: "the authentication client stopped".to_string(),
            })
        })
    }

    fn watch(&self, live: LiveConnection) -> Option<WatchGuard> {
        let id = live.connection_id;
        self.core.hub.register(live, &self.policy);
        Some(Box::new(Registration {
            core: self.core.clone(),
            id,
        }))
    }
}

/// Unregisters its connection when dropped.
struct Registration {
    core: Arc<Core>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.core.hub.unregister(self.id);
    }
}

impl Core {
    async fn authenticate(&self, policy: String, request: AuthRequest) -> AuthOutcome {
        let (kind, connection_id) = (request.kind, request.connection_id);
        let message = request_to_proto(&self.frontend_id, policy, request);
        let outcome = match self.call(message).await {
            Ok(response) => outcome_from_proto(response),
            Err(reason) => AuthOutcome::Transient { reason },
        };
        if kind == AuthKind::Reauthenticate
            && let AuthOutcome::Allow {
                principal, expiry, ..
            } = &outcome
        {
            // The service's expiry push must follow the new credential, not the old one.
            self.hub.renewed(connection_id, principal, *expiry);
        }
        outcome
    }

    /// One Authenticate call, over the replicas, within [`CALL_BUDGET`].
    async fn call(
        &self,
        message: pb::AuthenticateRequest,
    ) -> Result<pb::AuthenticateResponse, String> {
        let deadline = Instant::now() + CALL_BUDGET;
        let n = self.replicas.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for attempt in 0..n {
            let index = (first + attempt) % n;
            let replica = &self.replicas[index];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let share = remaining / u32::try_from(n - attempt).unwrap_or(u32::MAX);
            let mut client = pb::auth_client::AuthClient::new(replica.channel.clone());
            match tokio::time::timeout(share, client.authenticate(message.clone())).await {
                Ok(Ok(response)) => {
                    if index != first {
                        self.preferred.store(index, Ordering::Relaxed);
                        warn!(
                            failed = %failures.join("; "),
                            now = %replica.url,
                            "authentication service replica unavailable; using another"
                        );
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => {
                    debug!(
                        replica = %replica.url,
                        code = ?status.code(),
                        message = status.message(),
                        "authentication call failed"
                    );
                    failures.push(format!("{}: {}", replica.url, status.message()));
                }
                Err(_) => failures.push(format!("{}: no answer within {share:?}", replica.url)),
            }
        }
        Err(format!(
            "no authentication service replica answered ({})",
            failures.join("; ")
        ))
    }
}

// ---- wire ↔ domain --------------------------------------------------------------------------

fn request_to_proto(frontend_id: &str, policy: String, r: AuthRequest) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        connection_id: r.connection_id.to_string(),
        frontend_id: frontend_id.to_string(),
        listener_port: u32::from(r.listener_port),
        policy,
        protocol_version: match r.protocol {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        },
        kind: match r.kind {
            AuthKind::Connect => pb::Kind::Connect,
            AuthKind::Continue => pb::Kind::AuthContinue,
            AuthKind::Reauthenticate => pb::Kind::Reauth,
        } as i32,
        client_id: r.client_id,
        username: r.username,
        password: r.password.map(|p| p.0.to_vec()),
        auth_method: r.method,
        auth_data: r.data.map(|d| d.0.to_vec()),
        tls_chain_der: r
            .tls_chain
            .map(|chain| chain.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default(),
        peer_addr: r.peer.to_string(),
        continuation: r.continuation.to_vec(),
    }
}

/// A refusal's code: the service's, unless it is not a failure code (which must never read
/// as success), then 0x87.
fn failure_code(code: u32) -> ReasonCode {
    match u8::try_from(code) {
        Ok(c) if c >= 0x80 => ReasonCode(c),
        _ => ReasonCode::NOT_AUTHORIZED,
    }
}

fn outcome_from_proto(r: pb::AuthenticateResponse) -> AuthOutcome {
    match pb::Outcome::try_from(r.outcome) {
        Ok(pb::Outcome::Allow) => {
            let p = r.principal.unwrap_or_default();
            AuthOutcome::Allow {
                principal: Principal {
                    username: p.username,
                    attributes: p.attributes.into_iter().collect(),
                },
                expiry: r.expiry_unix_ms.and_then(from_unix_ms),
                data: r.auth_data.map(Bytes::from),
                can_reauthenticate: r.can_reauthenticate,
            }
        }
        Ok(pb::Outcome::Deny) => AuthOutcome::Deny {
            code: failure_code(r.reason_code),
            reason: (!r.reason.is_empty()).then_some(r.reason),
        },
        Ok(pb::Outcome::Continue) => AuthOutcome::Continue {
            data: r.auth_data.map(Bytes::from),
            continuation: Bytes::from(r.continuation),
        },
        Ok(pb::Outcome::TransientFailure) => AuthOutcome::Transient {
            reason: if r.reason.is_empty() {
                "the authentication service could not decide now".to_string()
            } else {
                r.reason
            },
        },
        // An answer this frontend does not understand is no answer.
        Ok(pb::Outcome::Unspecified) | Err(_) => AuthOutcome::Transient {
            reason: format!("the authentication service answered outcome {}", r.outcome),
        },
    }
}

fn principal_to_proto(p: &Principal) -> pb::Principal {
    pb::Principal {
        username: p.username.clone(),
        attributes: p
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        method: String::new(),
    }
}

// ---- the Watch stream -----------------------------------------------------------------------

/// The live connections of this process, and the queue that tells the stream task which of
/// them to (un)register.
struct Hub {
    live: Mutex<HashMap<u64, LiveEntry>>,
    /// "This connection id changed": the task sends Register if it is live, else Unregister.
    sync: mpsc::UnboundedSender<u64>,
}

struct LiveEntry {
    client_id: String,
    policy: String,
    principal: Principal,
    expiry: Option<SystemTime>,
    control: Arc<dyn ConnControl>,
}

impl Hub {
    fn register(&self, live: LiveConnection, policy: &str) {
        let id = live.connection_id;
        self.live.lock().insert(
            id,
            LiveEntry {
                client_id: live.client_id,
                policy: policy.to_string(),
                principal: live.principal,
                expiry: live.expiry,
                control: live.control,
            },
        );
        let _ = self.sync.send(id);
    }

    fn unregister(&self, id: u64) {
        if self.live.lock().remove(&id).is_some() {
            let _ = self.sync.send(id);
        }
    }

    fn renewed(&self, id: u64, principal: &Principal, expiry: Option<SystemTime>) {
        let mut live = self.live.lock();
        let Some(entry) = live.get_mut(&id) else {
            return;
        };
        entry.principal = principal.clone();
        entry.expiry = expiry;
        drop(live);
        let _ = self.sync.send(id);
    }

    /// What to send about `id` now.
    fn message_for(&self, id: u64) -> pb::WatchRequest {
        use pb::watch_request::Msg;
        let msg = match self.live.lock().get(&id) {
            Some(entry) => Msg::Register(register(id, entry)),
            None => Msg::Unregister(pb::Unregister {
                connection_id: id.to_string(),
            }),
        };
        pb::WatchRequest { msg: Some(msg) }
    }
}

fn register(id: u64, e: &LiveEntry) -> pb::Register {
    pb::Register {
        connection_id: id.to_string(),
        client_id: e.client_id.clone(),
        policy: e.policy.clone(),
        principal: Some(principal_to_proto(&e.principal)),
        expiry_unix_ms: e.expiry.map(to_unix_ms),
    }
}

enum Ended {
    /// Every sender is gone: the client was dropped.
    Closed,
    Lost(String),
}

/// Keeps one Watch stream open, on the replicas in turn, for as long as the client exists.
async fn run_watch(core: Arc<Core>, mut sync: mpsc::UnboundedReceiver<u64>) {
    let n = core.replicas.len();
    let mut index = 0;
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let replica = &core.replicas[index % n];
        match core.open_watch(replica, &mut sync).await {
            Ok((tx, mut events, registered)) => {
                info!(
                    replica = %replica.url,
                    frontend_id = %core.frontend_id,
                    connections = registered,
                    "authentication watch stream open; live connections registered"
                );
                backoff = BACKOFF_MIN;
                failures = 0;
                match core.pump(&tx, &mut events, &mut sync).await {
                    Ended::Closed => return,
                    Ended::Lost(reason) => warn!(
                        replica = %replica.url,
                        %reason,
                        "authentication watch stream lost; re-registering live connections \
                         on the next replica"
                    ),
                }
            }
            Err(reason) => {
                // Once per outage at warn; the retries in between at debug.
                if failures == 0 {
                    warn!(
                        replica = %replica.url,
                        %reason,
                        "cannot open the authentication watch stream; retrying"
                    );
                } else {
                    debug!(replica = %replica.url, %reason, "cannot open the authentication watch stream");
                }
                failures = failures.saturating_add(1);
            }
        }
        index = (index + 1) % n;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

type WatchTx = mpsc::UnboundedSender<pb::WatchRequest>;

impl Core {
    /// Opens the stream with Hello and a Register for every live connection.
    async fn open_watch(
        &self,
        replica: &Replica,
        sync: &mut mpsc::UnboundedReceiver<u64>,
    ) -> Result<(WatchTx, tonic::Streaming<pb::WatchEvent>, usize), String> {
        use pb::watch_request::Msg;
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(pb::WatchRequest {
            msg: Some(Msg::Hello(pb::Hello {
                frontend_id: self.frontend_id.clone(),
            })),
        });
        // Whatever was queued is covered by the snapshot below; anything queued after it is
        // sent again, which is harmless (Register replaces, Unregister of nothing is nothing).
        while sync.try_recv().is_ok() {}
        let snapshot: Vec<pb::Register> = self
            .hub
            .live
            .lock()
            .iter()
            .map(|(id, e)| register(*id, e))
            .collect();
        let count = snapshot.len();
        for r in snapshot {
            let _ = tx.send(pb::WatchRequest {
                msg: Some(Msg::Register(r)),
            });
        }
        let mut client = pb::auth_client::AuthClient::new(replica.channel.clone());
        match tokio::time::timeout(
            WATCH_OPEN_TIMEOUT,
            client.watch(UnboundedReceiverStream::new(rx)),
        )
        .await
        {
            Ok(Ok(response)) => Ok((tx, response.into_inner(), count)),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {WATCH_OPEN_TIMEOUT:?}")),
        }
    }

    async fn pump(
        &self,
        tx: &WatchTx,
        events: &mut tonic::Streaming<pb::WatchEvent>,
        sync: &mut mpsc::UnboundedReceiver<u64>,
    ) -> Ended {
        loop {
            tokio::select! {
                event = events.message() => match event {
                    Ok(Some(event)) => self.on_event(event),
                    Ok(None) => return Ended::Lost("closed by the service".to_string()),
                    Err(status) => {
                        return Ended::Lost(format!("{:?}: {}", status.code(), status.message()));
                    }
                },
                id = sync.recv() => match id {
                    None => return Ended::Closed,
                    Some(id) => {
                        if tx.send(self.hub.message_for(id)).is_err() {
                            return Ended::Lost("request stream closed".to_string());
                        }
                    }
                },
            }
        }
    }

    fn on_event(&self, event: pb::WatchEvent) {
        use pb::watch_event::Event;
        match event.event {
            Some(Event::Disconnect(d)) => {
                let target = d.connection_id.parse::<u64>().ok().and_then(|id| {
                    self.hub
                        .live
                        .lock()
                        .get(&id)
                        .map(|e| (e.client_id.clone(), e.control.clone()))
                });
                let cause = if d.cause.is_empty() {
                    "disconnected by the authentication service".to_string()
                } else {
                    d.cause
                };
                match target {
                    Some((client_id, control)) => {
                        info!(%client_id, %cause, "the authentication service disconnects a client");
                        control.kick(failure_code(d.reason_code), cause);
                    }
                    None => {
                        debug!(connection_id = %d.connection_id, %cause, "disconnect for a connection that is gone")
                    }
                }
            }
            Some(Event::PolicyChanged(p)) => info!(
                policy = %p.policy,
                "authentication policy changed on the service; live connections keep their \
                 credentials until they expire or re-authenticate"
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::auth::Secret;

    #[test]
    fn requests_carry_every_credential() {
        let request = AuthRequest {
            kind: AuthKind::Continue,
            protocol: Protocol::V311,
            client_id: "c".into(),
            username: Some("u".into()),
            password: Some(Secret(Bytes::from_static(b"pw"))),
            method: Some("M".into()),
            data: Some(Secret(Bytes::from_static(b"D"))),
            listener_port: 8883,
            peer: "127.0.0.1:4000".parse().unwrap(),
            tls_chain: Some(Arc::from(vec![rustls_pki_types::CertificateDer::from(
                vec![1u8, 2, 3],
            )])),
            connection_id: 42,
            continuation: Bytes::from_static(b"\x00k"),
        };
        let m = request_to_proto("fe", "p".into(), request);
        assert_eq!(m.connection_id, "42");
        assert_eq!(m.frontend_id, "fe");
        assert_eq!(m.policy, "p");
        assert_eq!(m.protocol_version, 4);
        assert_eq!(m.kind, pb::Kind::AuthContinue as i32);
        assert_eq!(m.listener_port, 8883);
        assert_eq!(m.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(m.auth_method.as_deref(), Some("M"));
        assert_eq!(m.auth_data.as_deref(), Some(&b"D"[..]));
        assert_eq!(m.tls_chain_der, vec![vec![1, 2, 3]]);
        assert_eq!(m.peer_addr, "127.0.0.1:4000");
        assert_eq!(m.continuation, b"\x00k");
    }

    #[test]
    fn responses_become_outcomes_and_never_an_accidental_allow() {
        let allow = pb::AuthenticateResponse {
            outcome: pb::Outcome::Allow as i32,
            principal: Some(pb::Principal {
                username: Some("smart-lock".into()),
                attributes: [("group".to_string(), "g1".to_string())].into(),
                method: "X509".into(),
            }),
            expiry_unix_ms: Some(1_700_000_000_000),
            auth_data: Some(b"final".to_vec()),
            can_reauthenticate: true,
            ..Default::default()
        };
        match outcome_from_proto(allow) {
            AuthOutcome::Allow {
                principal,
                expiry,
                data,
                can_reauthenticate,
            } => {
                assert_eq!(principal.username.as_deref(), Some("smart-lock"));
                assert_eq!(
                    principal.attributes,
                    BTreeMap::from([("group".to_string(), "g1".to_string())])
                );
                assert_eq!(expiry.map(to_unix_ms), Some(1_700_000_000_000));
                assert_eq!(data.as_deref(), Some(&b"final"[..]));
                assert!(can_reauthenticate);
            }
            other => panic!("{other:?}"),
        }
        let deny = |code: u32| pb::AuthenticateResponse {
            outcome: pb::Outcome::Deny as i32,
            reason_code: code,
            reason: "no".into(),
            ..Default::default()
        };
        for (wire, expected) in [(0x86, 0x86), (0x87, 0x87), (0x00, 0x87), (0x1_86, 0x87)] {
            match outcome_from_proto(deny(wire)) {
                AuthOutcome::Deny { code, reason } => {
                    assert_eq!(code, ReasonCode(expected), "wire {wire:#x}");
                    assert_eq!(reason.as_deref(), Some("no"));
                }
                other => panic!("{other:?}"),
            }
        }
        let cont = pb::AuthenticateResponse {
            outcome: pb::Outcome::Continue as i32,
            auth_data: Some(b"challenge".to_vec()),
            continuation: b"\x01s".to_vec(),
            ..Default::default()
        };
        assert!(matches!(
            outcome_from_proto(cont),
            AuthOutcome::Continue { data: Some(d), continuation } if &d[..] == b"challenge" && &continuation[..] == b"\x01s"
        ));
        for outcome in [pb::Outcome::TransientFailure as i32, 0, 99] {
            let r = pb::AuthenticateResponse {
                outcome,
                ..Default::default()
            };
            assert!(
                matches!(outcome_from_proto(r), AuthOutcome::Transient { .. }),
                "outcome {outcome}"
            );
        }
    }

    struct Kicks(Mutex<Vec<(ReasonCode, String)>>);
    impl ConnControl for Kicks {
        fn wake(&self) {}
        fn kick(&self, code: ReasonCode, reason: String) {
            self.0.lock().push((code, reason));
        }
    }

    /// No replica listening: CONNECT is a transient failure (→ 0x88), never an allow; the
    /// budget bounds the wait.
    #[test]
    fn no_replica_is_a_transient_failure() {
        let runtime = Arc::new(AuthRuntime::new().unwrap());
        // A port nobody listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = AuthsvcClient::connect(
            &ClientOptions {
                urls: vec![
                    format!("http://127.0.0.1:{port}"),
                    format!("http://127.0.0.1:{port}"),
                ],
                ..Default::default()
            },
            runtime,
        )
        .unwrap();
        let auth = client.authenticator("p");
        let request = AuthRequest {
            kind: AuthKind::Connect,
            protocol: Protocol::V5,
            client_id: "c".into(),
            username: None,
            password: None,
            method: None,
            data: None,
            listener_port: 1883,
            peer: "127.0.0.1:1".parse().unwrap(),
            tls_chain: None,
            connection_id: 1,
            continuation: Bytes::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(async {
            tokio::time::timeout(CALL_BUDGET * 3, auth.authenticate(request))
                .await
                .expect("bounded by the budget")
        });
        assert!(
            matches!(&outcome, AuthOutcome::Transient { reason } if reason.contains("no authentication service replica answered")),
            "{outcome:?}"
        );
        // Registering while no replica is there is fine; dropping the guard unregisters.
        let kicks = Arc::new(Kicks(Mutex::new(Vec::new())));
        let guard = auth.watch(LiveConnection {
            connection_id: 1,
            client_id: "c".into(),
            principal: Principal::default(),
            expiry: None,
            control: kicks.clone(),
        });
        assert_eq!(client.core.hub.live.lock().len(), 1);
        drop(guard);
        assert!(client.core.hub.live.lock().is_empty());
    }

    #[test]
    fn bad_options_name_the_flag() {
        let runtime = Arc::new(AuthRuntime::new().unwrap());
        let connect = |options: ClientOptions| {
            AuthsvcClient::connect(&options, runtime.clone())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(connect(ClientOptions::default()).contains("--authsvc"));
        let url = |u: &str| ClientOptions {
            urls: vec![u.to_string()],
            ..Default::default()
        };
        assert!(connect(url("ftp://x")).contains("http:// or https://"));
        assert!(connect(url("https://127.0.0.1:1")).contains("--authsvc-ca"));
        let half = ClientOptions {
            cert: Some("/nonexistent".into()),
            ..url("http://127.0.0.1:1")
        };
        assert!(connect(half).contains("--authsvc-key"));
        let missing_ca = ClientOptions {
            ca: Some("/nonexistent/ca.pem".into()),
            ..url("https://127.0.0.1:1")
        };
        assert!(connect(missing_ca).starts_with("--authsvc-ca /nonexistent/ca.pem"));
    }
}
