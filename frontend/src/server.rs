//! Listeners and the broker's lifetime: bind every configured port, accept connections, hand
//! each one to a connection actor on one of the worker arbiters, and shut down gracefully.
//!
//! This module does no MQTT. It turns a validated [`Config`] into running listeners and
//! reports where they listen (the ready file), so tests and supervisors can find port-0 binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::Arbiter;
use mqtt::session::SessionConfig;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::auth::AllowAll;
use crate::config::{ClientLimits, Config, ListenerProtocol};
use crate::connection::{Connection, Shared};
use crate::metrics::Metrics;
use crate::router::{LocalRouter, QueueStrategy, RouterLimits};

/// Everything `run` needs besides the configuration.
pub struct RunOptions {
    pub data_dir: PathBuf,
    /// Written once every listener is bound: one JSON object per line,
    /// `{"listener":..,"port":..,"local_addr":..}`.
    pub ready_file: Option<PathBuf>,
    pub workers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {listener:?} spec.ports[{index}]: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        index: usize,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener:?} spec.ports[{index}]: {what} is not supported by this build yet")]
    Unsupported {
        listener: String,
        index: usize,
        what: &'static str,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
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

/// Run the broker until SIGTERM or Ctrl-C. Must be called inside an actix `System`.
pub async fn run(config: Config, options: RunOptions) -> Result<(), ServerError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| ServerError::DataDir {
        path: options.data_dir.clone(),
        source,
    })?;
    let limits = &config.broker.limits;
    let metrics = Arc::new(Metrics::default());
    let router = Arc::new(LocalRouter::new(router_limits(limits), metrics.clone()));
    let workers: Vec<Arbiter> = (0..options.workers.max(1))
        .map(|_| Arbiter::new())
        .collect();
    let workers = Arc::new(workers);

    let mut bound = Vec::new();
    for port in &config.listeners {
        if port.tls.is_some() {
            return Err(ServerError::Unsupported {
                listener: port.listener.clone(),
                index: port.index,
                what: "tls",
            });
        }
        if port.protocol != ListenerProtocol::Mqtt {
            return Err(ServerError::Unsupported {
                listener: port.listener.clone(),
                index: port.index,
                what: "protocol WebSockets",
            });
        }
        if port.authentication_ref.is_some() || port.authorization_ref.is_some() {
            warn!(
                listener = %port.listener,
                port = port.port,
                "authenticationRef/authorizationRef are not enforced by this build yet; the port allows everyone"
            );
        }
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
        info!(listener = %port.listener, %local, "listening for MQTT");
        let shared = Arc::new(Shared {
            router: router.clone(),
            authenticator: Arc::new(AllowAll),
            authorizer: Arc::new(AllowAll),
            metrics: metrics.clone(),
            session_config: session_config(limits),
            listener_port: local.port(),
        });
        bound.push((port.listener.clone(), port.port, local, listener, shared));
    }

    if let Some(path) = &options.ready_file {
        let lines: String = bound
            .iter()
            .map(|(name, port, local, _, _)| {
                format!(
                    "{}\n",
                    serde_json::json!({"listener": name, "port": port, "local_addr": local.to_string()})
                )
            })
            .collect();
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, lines)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| ServerError::ReadyFile {
                path: path.clone(),
                source,
            })?;
    }

    let mut accept_tasks = Vec::new();
    for (_, _, _, listener, shared) in bound {
        let workers = workers.clone();
        accept_tasks.push(actix_rt::spawn(accept_loop(listener, shared, workers)));
    }

    shutdown_signal().await;
    info!("shutting down: no new connections; telling clients the server is going away");
    for t in &accept_tasks {
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
    info!("stopped");
    Ok(())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, workers: Arc<Vec<Arbiter>>) {
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
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
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
            match tokio::net::TcpStream::from_std(std_stream) {
                Ok(stream) => {
                    let (r, w) = stream.into_split();
                    Connection::start(r, w, peer, shared);
                }
                Err(e) => warn!(error = %e, "could not register the connection"),
            }
        });
    }
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
