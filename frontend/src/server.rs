//! Listeners and the broker's lifetime: bind every configured port, accept connections, hand
//! each one to a connection actor on one of the worker arbiters, and shut down gracefully.
//!
//! The accept loop only accepts and picks a worker; the TLS handshake and the WebSocket upgrade
//! run on that worker, so a slow or hostile handshake never delays other accepts. A TLS port
//! whose certificate is not there yet is bound (it is in the ready file) but closes every
//! connection at once until [`crate::tls`] has a configuration for it.
//!
//! This module does no MQTT and no certificate handling. It turns a validated [`Config`] into
//! running listeners and reports where they listen (the ready file), so tests and supervisors
//! can find port-0 binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::Arbiter;
use mqtt::session::SessionConfig;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::auth::{AllowAll, Authenticator};
use crate::authclient::{AuthRuntime, AuthsvcClient, ClientOptions};
use crate::config::{ClientLimits, Config, ListenerProtocol};
use crate::connection::{ConnInfo, Connection, Shared};
use crate::health::{Health, PortState};
use crate::metrics::Metrics;
use crate::router::{LocalRouter, QueueStrategy, RouterLimits};
use crate::tls::{self, ConfigSlot, PortTls, TlsEnv};

/// Everything `run` needs besides the configuration.
pub struct RunOptions {
    pub data_dir: PathBuf,
    /// Where Secrets and ConfigMaps that are not documents of the configuration are read from,
    /// one folder per name (`<secrets-dir>/NAME/tls.crt`), the way Kubernetes mounts them.
    pub secrets_dir: PathBuf,
    /// Written once every listener is bound: one JSON object per line,
    /// `{"listener":..,"port":..,"local_addr":..}`.
    pub ready_file: Option<PathBuf>,
    pub workers: usize,
    /// Which ports serve and which wait (for a certificate); `run` keeps it current and the
    /// readiness endpoint reads it.
    pub health: Arc<Health>,
    /// Where the admin endpoint (`/metrics`, `/healthz`, `/readyz`) listens; `None` serves none.
    pub admin_listen: Option<SocketAddr>,
    /// The authentication service replicas (`--authsvc`). Without URLs, ports with an
    /// `authenticationRef` use a service started in this process on loopback.
    pub authsvc: ClientOptions,
    /// `--config`, watched for authorization policy updates; `None` for the embedded default.
    pub config_path: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Authorization(Vec<crate::authz::AuthzError>),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("listener {listener:?} spec.ports[{index}]: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        index: usize,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener:?} spec.ports[{index}].{source}")]
    Tls {
        listener: String,
        index: usize,
        source: tls::SetupError,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin endpoint (prometheusPort / --admin-listen): cannot bind {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem of the `BrokerAuthentication` documents, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<authsvc::policy::PolicyError>),
    #[error(transparent)]
    AuthClient(#[from] crate::authclient::ClientError),
    #[error("embedded authentication service: cannot listen on 127.0.0.1: {0}")]
    EmbeddedAuthsvc(std::io::Error),
}

/// How the ports with an `authenticationRef` authenticate.
struct Authentication {
    /// `None` when no port needs one (no runtime, no channels).
    client: Option<AuthsvcClient>,
    /// Per policy: whether v5 clients get DISCONNECT when their credential expires.
    expiry_disconnect: std::collections::BTreeMap<String, bool>,
}

/// Connects to the authentication service for the ports that need one: the `--authsvc`
/// replicas, or else the service started here on loopback with this configuration's policies
/// (compiled now, so a bad policy stops the broker with the field named).
fn authentication(config: &Config, options: &RunOptions) -> Result<Authentication, ServerError> {
    use authsvc::policy::{ExpiryAction, PolicyError, expiry_action};
    let referenced: std::collections::BTreeSet<&String> = config
        .listeners
        .iter()
        .filter_map(|p| p.authentication_ref.as_ref())
        .collect();
    if referenced.is_empty() {
        return Ok(Authentication {
            client: None,
            expiry_disconnect: Default::default(),
        });
    }
    let runtime = Arc::new(AuthRuntime::new()?);
    let mut client_options = options.authsvc.clone();
    if client_options.urls.is_empty() {
        // Taken before compiling: a change made from here on is seen by the first poll.
        let fingerprint = options
            .config_path
            .as_deref()
            .map(|path| authsvc::grpc::config_fingerprint(path, &options.secrets_dir));
        // Method builders may set up clients that spawn tasks: on the service's runtime.
        let policies = {
            let _entered = runtime.handle().enter();
            authsvc::grpc::Policies::compile(config, options.secrets_dir.clone())
                .map_err(ServerError::Policy)?
        };
        let service = authsvc::grpc::AuthService::new(policies);
        if let (Some(path), Some(seen)) = (options.config_path.clone(), fingerprint) {
            // As the standalone service does: BrokerAuthentication changes (and the secrets
            // they read) apply without a restart; connections of a removed or changed policy
            // are told over Watch like those of a separate authsvc.
            runtime.handle().spawn(authsvc::grpc::watch_config(
                service.clone(),
                path,
                options.secrets_dir.clone(),
                seen,
            ));
        }
        let addr = crate::authclient::start_embedded(&runtime, service)
            .map_err(ServerError::EmbeddedAuthsvc)?;
        info!(%addr, "authentication service running in this process (no --authsvc given)");
        client_options = ClientOptions {
            urls: vec![format!("http://{addr}")],
            ..ClientOptions::default()
        };
    }
    // With --authsvc the policies are compiled by the service; the frontend still applies
    // each referenced policy's expiryAction, so it checks those itself.
    let mut expiry_disconnect = std::collections::BTreeMap::new();
    let mut errors: Vec<PolicyError> = Vec::new();
    for name in referenced {
        // Configuration validation guarantees every reference is defined.
        let Some(doc) = config.authentications.get(name) else {
            continue;
        };
        match expiry_action(name, &doc.resource.spec) {
            Ok(action) => {
                expiry_disconnect.insert(name.clone(), action == ExpiryAction::Disconnect);
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(ServerError::Policy(errors));
    }
    let client = AuthsvcClient::connect(&client_options, runtime)?;
    info!(
        replicas = ?client_options.urls,
        frontend_id = %client.frontend_id(),
        "authenticating through the authentication service"
    );
    Ok(Authentication {
        client: Some(client),
        expiry_disconnect,
    })
}

pub fn session_config(limits: &ClientLimits) -> SessionConfig {
    SessionConfig {
        max_packet_size: limits.max_packet_size,
        receive_maximum: limits.max_receive_maximum,
        topic_alias_maximum: limits.max_topic_aliases,
        // 65535 is the configuration's "no cap"; the session's is 0.
        max_keep_alive: if limits.max_keep_alive_secs == u16::MAX {
            0
        } else {
            limits.max_keep_alive_secs
        },
        max_session_expiry: limits.max_session_expiry_secs,
        max_message_expiry: limits.max_message_expiry_secs,
        max_inflight: limits.max_inflight,
    }
}

pub fn router_limits(limits: &ClientLimits) -> RouterLimits {
    RouterLimits {
        max_queued_messages: limits.max_queued_messages,
        queue_strategy: match limits.subscriber_queue_limit.map(|q| q.strategy) {
            Some(crate::config::QueueStrategy::DropOldest) => QueueStrategy::DropOldest,
            _ => QueueStrategy::DropNewest,
        },
        memory_budget_bytes: limits.memory_budget_bytes,
    }
}

/// The router, on the embedded store unless persistence is disabled. Sessions and retained
/// messages in the store are restored, and their will and expiry timers started, before any
/// listener accepts a connection.
fn open_router(
    config: &Config,
    options: &RunOptions,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<LocalRouter>, Option<Arc<crate::store::Store>>), ServerError> {
    use crate::config::Persistence;
    use crate::store::{Durability, Store};
    let limits = router_limits(&config.broker.limits);
    let durability = match config.broker.persistence {
        Persistence::Disabled => {
            info!("persistence disabled: sessions and retained messages live in memory only");
            return Ok((Arc::new(LocalRouter::new(limits, metrics.clone())), None));
        }
        Persistence::Immediate => Durability::Immediate,
        Persistence::Periodic {
            flush_interval_millis,
        } => Durability::Periodic(Duration::from_millis(u64::from(flush_interval_millis))),
    };
    let (store, loaded) = Store::open(&options.data_dir, durability)?;
    let store = Arc::new(store);
    let router = Arc::new(LocalRouter::with_store(
        limits,
        metrics.clone(),
        store.clone(),
    ));
    for restored in router.restore(loaded, std::time::Instant::now()) {
        let fire = |delay: Duration, what: fn(&LocalRouter, &str, u64)| {
            let router = router.clone();
            let (id, generation) = (restored.client_id.clone(), restored.generation);
            actix_rt::spawn(async move {
                tokio::time::sleep(delay).await;
                what(&router, &id, generation);
            });
        };
        if let Some(delay) = restored.timers.will_after {
            fire(delay, |r, id, g| {
                crate::router::Router::fire_will(r, id, g, std::time::Instant::now())
            });
        }
        if let Some(delay) = restored.timers.expire_after {
            fire(delay, |r, id, g| {
                crate::router::Router::expire_session(r, id, g, std::time::Instant::now())
            });
        }
    }
    Ok((router, Some(store)))
}

/// Run the broker until SIGTERM or Ctrl-C. Must be called inside an actix `System`.
pub async fn run(config: Config, options: RunOptions) -> Result<(), ServerError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| ServerError::DataDir {
        path: options.data_dir.clone(),
        source,
    })?;
    let limits = &config.broker.limits;
    let metrics = Arc::new(Metrics::default());
    let (router, store) = open_router(&config, &options, &metrics)?;
    let policies =
        crate::authz::compile_all(&config.authorizations).map_err(ServerError::Authorization)?;
    let on_update_errors: Vec<_> = config
        .authorizations
        .iter()
        .filter_map(|(name, doc)| crate::policy_reload::on_update(name, &doc.resource.spec).err())
        .collect();
    if !on_update_errors.is_empty() {
        return Err(ServerError::Authorization(on_update_errors));
    }
    let mut reloadable = Vec::new();
    crate::observability::register_metrics(&metrics, &router);
    let workers: Vec<Arbiter> = (0..options.workers.max(1))
        .map(|_| Arbiter::new())
        .collect();
    let workers = Arc::new(workers);

    let authentication = authentication(&config, &options)?;
    let tls_env = TlsEnv::new(options.secrets_dir.clone(), options.data_dir.clone());
    let documents = tls::Documents::from(&config);
    let mut bound = Vec::new();
    for port in &config.listeners {
        let mut port_authorizer = None;
        let addr = port.socket_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                listener: port.listener.clone(),
                index: port.index,
                addr,
                source,
            })?;
        let local = listener.local_addr().expect("bound socket has an address");
        let tls = match &port.tls {
            None => {
                options
                    .health
                    .set(&port.listener, local.port(), PortState::Serving);
                None
            }
            Some(_) => Some(
                PortTls::new(
                    port,
                    local.port(),
                    &documents,
                    &tls_env,
                    options.health.clone(),
                )
                .map_err(|source| ServerError::Tls {
                    listener: port.listener.clone(),
                    index: port.index,
                    source,
                })?,
            ),
        };
        info!(
            listener = %port.listener,
            %local,
            protocol = ?port.protocol,
            tls = tls.is_some(),
            "listening for MQTT"
        );
        // Ports without authenticationRef let everyone in (scenario 19).
        let (authenticator, expiry_disconnect): (Arc<dyn Authenticator>, bool) =
            match (&port.authentication_ref, &authentication.client) {
                (Some(policy), Some(client)) => (
                    Arc::new(client.authenticator(policy)),
                    authentication
                        .expiry_disconnect
                        .get(policy)
                        .copied()
                        .unwrap_or(false),
                ),
                _ => (Arc::new(AllowAll), false),
            };
        let shared = Arc::new(Shared {
            router: router.clone(),
            authenticator,
            // Authorization takes effect only together with authentication (broker-spec §1.2,
            // scenario 28).
            authorizer: match (&port.authentication_ref, &port.authorization_ref) {
                (Some(_), Some(name)) => match policies.get(name) {
                    Some(policy) => {
                        let a = Arc::new(crate::policy_reload::PortAuthorizer::new(
                            policy.authorizer(),
                        ));
                        port_authorizer = Some((name.clone(), a.clone()));
                        a
                    }
                    // Validation guarantees the reference exists.
                    None => Arc::new(AllowAll),
                },
                _ => Arc::new(AllowAll),
            },
            metrics: metrics.clone(),
            session_config: session_config(limits),
            listener_port: local.port(),
            expiry_disconnect,
            live: Default::default(),
        });
        if let Some((policy, authorizer)) = port_authorizer.take() {
            reloadable.push(crate::policy_reload::Port {
                policy,
                authorizer,
                shared: shared.clone(),
            });
        }
        let endpoint = Endpoint {
            protocol: port.protocol,
            tls: tls.as_ref().map(PortTls::slot),
            shared,
        };
        bound.push((
            port.listener.clone(),
            port.port,
            local,
            listener,
            endpoint,
            tls,
        ));
    }

    let admin = match options.admin_listen {
        Some(addr) => Some((
            addr.port(),
            crate::observability::start_admin(addr, metrics.clone(), options.health.clone())
                .await
                .map_err(|source| ServerError::AdminBind { addr, source })?,
        )),
        None => None,
    };

    if let Some(path) = &options.ready_file {
        let mut lines: String = bound
            .iter()
            .map(|(name, port, local, ..)| {
                format!(
                    "{}\n",
                    serde_json::json!({"listener": name, "port": port, "local_addr": local.to_string()})
                )
            })
            .collect();
        // Last, so that the first line stays the first MQTT port.
        if let Some((port, local)) = admin {
            let line = serde_json::json!({"listener": "admin", "port": port, "local_addr": local.to_string()});
            lines.push_str(&format!("{line}\n"));
        }
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, lines)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| ServerError::ReadyFile {
                path: path.clone(),
                source,
            })?;
    }

    let mut tasks = Vec::new();
    for (_, _, _, listener, endpoint, tls) in bound {
        let workers = workers.clone();
        tasks.push(actix_rt::spawn(accept_loop(
            listener,
            Arc::new(endpoint),
            workers,
        )));
        if let Some(tls) = tls {
            tasks.push(actix_rt::spawn(tls.watch()));
        }
    }

    let policy_watch = match (&options.config_path, reloadable.is_empty()) {
        (Some(path), false) => {
            let specs = config
                .authorizations
                .iter()
                .map(|(name, doc)| (name.clone(), doc.resource.spec.clone()))
                .collect();
            Some(actix_rt::spawn(crate::policy_reload::watch(
                path.clone(),
                specs,
                reloadable,
            )))
        }
        _ => None,
    };

    shutdown_signal().await;
    options.health.begin_shutdown();
    if let Some(task) = policy_watch {
        task.abort();
    }
    info!("shutting down: no new connections; telling clients the server is going away");
    for t in &tasks {
        t.abort();
    }
    router.kick_all(mqtt::ReasonCode::SERVER_SHUTTING_DOWN);
    // Give connections a moment to flush their DISCONNECT and detach.
    for _ in 0..50 {
        if metrics.connected_sessions.load(Ordering::Relaxed) <= 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in workers.iter() {
        w.stop();
    }
    if let Some(store) = store {
        // Commit and flush what the last connections left behind before exiting.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
    info!("stopped");
    Ok(())
}

/// What the accept path needs to know about one port.
struct Endpoint {
    protocol: ListenerProtocol,
    /// `Some` on a TLS port; empty while the port waits for its certificate.
    tls: Option<ConfigSlot>,
    shared: Arc<Shared>,
}

async fn accept_loop(listener: TcpListener, endpoint: Arc<Endpoint>, workers: Arc<Vec<Arbiter>>) {
    let mut next = 0usize;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Read once per connection, so a reload applies to the next handshake only.
        let tls = match &endpoint.tls {
            None => None,
            Some(slot) => match slot.current() {
                Some(config) => Some(config),
                None => {
                    // Waiting for a certificate (logged once by the TLS watcher): refuse.
                    debug!(%peer, "closing connection: the port has no server certificate yet");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let endpoint = endpoint.clone();
        let worker = &workers[next % workers.len()];
        next = next.wrapping_add(1);
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "could not hand the connection to a worker");
                continue;
            }
        };
        // The socket moves to the worker's runtime; it must be registered there.
        worker.spawn(async move {
            match TcpStream::from_std(std_stream) {
                Ok(stream) => serve(stream, peer, tls, &endpoint).await,
                Err(e) => warn!(error = %e, "could not register the connection"),
            }
        });
    }
}

/// On a worker: TLS handshake, WebSocket upgrade, then the connection actor. Failures are the
/// client's problem (or a scanner's), so they are logged at debug and only close the socket.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    endpoint: &Endpoint,
) {
    let Some(config) = tls else {
        let info = ConnInfo {
            peer,
            tls_chain: None,
        };
        match endpoint.protocol {
            ListenerProtocol::Mqtt => {
                // Owned halves: no lock between reader and writer on the common path.
                let (r, w) = stream.into_split();
                Connection::start(r, w, info, endpoint.shared.clone());
            }
            ListenerProtocol::WebSockets => upgrade_and_start(stream, info, endpoint).await,
        }
        return;
    };
    // rustls' unbuffered API: an idle TLS connection holds no buffers (see `tls_stream`).
    let accept = crate::tls_stream::accept(config, stream);
    let stream = match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, timeout = ?tls::HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return;
        }
    };
    // Verified by the port's client verifier during the handshake; owned so it outlives it.
    let tls_chain = stream
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect());
    let info = ConnInfo { peer, tls_chain };
    match endpoint.protocol {
        ListenerProtocol::Mqtt => start(stream, info, endpoint),
        ListenerProtocol::WebSockets => upgrade_and_start(stream, info, endpoint).await,
    }
}

async fn upgrade_and_start<S>(stream: S, info: ConnInfo, endpoint: &Endpoint)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match crate::ws::accept(stream).await {
        Ok(stream) => start(stream, info, endpoint),
        Err(e) => debug!(peer = %info.peer, error = %e, "WebSocket upgrade failed"),
    }
}

fn start<S: AsyncRead + AsyncWrite + 'static>(stream: S, info: ConnInfo, endpoint: &Endpoint) {
    let (r, w) = tokio::io::split(stream);
    Connection::start(r, w, info, endpoint.shared.clone());
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
