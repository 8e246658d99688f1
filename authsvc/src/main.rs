//! `authsvc`: the authentication service as its own process. Parses the command line, loads
//! and compiles the configuration, serves `auth.v1.Auth` over gRPC (plain, TLS or mTLS) and
//! polls the configuration for changes. All behaviour lives in the library
//! (`authsvc::grpc`); the frontend runs the same code in-process in the embedded default.
//!
//! Exit codes: 0 after SIGTERM / Ctrl-C, 2 for a configuration or TLS file that cannot be
//! used (the message names the field or the flag), 1 for anything else (e.g. the address is
//! in use).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use authsvc::grpc::{self, AuthService, Policies, ServerTls};
use broker_config::Config;
use clap::Parser;
use tracing::{error, info, warn};

/// How long in-flight calls may take to finish after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Gatehouse authentication service: decides who MQTT clients are, for one or more frontends.
///
/// It reads the same configuration documents as the broker (only BrokerAuthentication, Secret
/// and ConfigMap documents matter here) and polls them every second: a changed configuration
/// is compiled and used, a broken one is logged and the previous one kept.
#[derive(Parser, Debug)]
#[command(name = "authsvc", version, about, long_about)]
struct Cli {
    /// Configuration: a YAML file or a folder of YAML files, as for `gatehouse --config`.
    #[arg(long, short = 'c', env = "AUTHSVC_CONFIG", value_name = "PATH")]
    config: PathBuf,

    /// Where to serve gRPC, e.g. `0.0.0.0:50051` or `127.0.0.1:0`.
    #[arg(long, env = "AUTHSVC_LISTEN", value_name = "ADDR")]
    listen: SocketAddr,

    /// Folder of Secrets and ConfigMaps that are not documents of the configuration, one
    /// sub-folder per name as Kubernetes mounts them (same layout as `gatehouse --secrets-dir`).
    #[arg(
        long,
        env = "AUTHSVC_SECRETS_DIR",
        value_name = "DIR",
        default_value = "./secrets"
    )]
    secrets_dir: PathBuf,

    /// Once listening, write one JSON line `{"listen":"IP:PORT"}` to this file (useful with
    /// port 0).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,

    /// Serve TLS with this certificate chain (PEM, leaf first). Requires --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require frontends to present a client certificate issued by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    client_ca: Option<PathBuf>,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `authsvc=debug`). Default: RUST_LOG,
    /// else `info`.
    #[arg(long, env = "AUTHSVC_LOG", value_name = "FILTER")]
    log: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("authsvc: --log {filter:?}: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // ring is the only provider compiled in; installing it makes that explicit for every
    // rustls user in the process (tonic, the methods' HTTPS clients).
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("authsvc")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authsvc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Method builders may set up clients that spawn tasks: on this runtime.
    let entered = runtime.enter();
    // Fingerprint first: a change made while we load is seen by the first poll.
    let fingerprint = grpc::config_fingerprint(&cli.config, &cli.secrets_dir);
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authsvc: configuration rejected: {e}");
            return ExitCode::from(2);
        }
    };
    let policies = match Policies::compile(&config, cli.secrets_dir.clone()) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                eprintln!("authsvc: configuration rejected: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => match ServerTls::load(cert, key, cli.client_ca.as_deref()) {
            Ok(tls) => Some(tls),
            Err(e) => {
                let flag = if e.path == *cert {
                    "--tls-cert"
                } else if e.path == *key {
                    "--tls-key"
                } else {
                    "--client-ca"
                };
                eprintln!("authsvc: {flag} {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };

    drop(entered);
    let result = runtime.block_on(run(cli, policies, tls, fingerprint));
    // Method tasks that ignore cancellation must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("authsvc: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    cli: Cli,
    policies: Policies,
    tls: Option<ServerTls>,
    fingerprint: u64,
) -> Result<(), String> {
    grpc::log_policies(&policies);
    let service = AuthService::new(policies);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| format!("--listen {}: cannot bind: {e}", cli.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("--listen {}: {e}", cli.listen))?;
    info!(listen = %local, tls = tls.is_some(), mtls = cli.client_ca.is_some(), "serving auth.v1.Auth");

    let poller = tokio::spawn(grpc::watch_config(
        service.clone(),
        cli.config.clone(),
        cli.secrets_dir.clone(),
        fingerprint,
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(service.serve(listener, tls, async {
        let _ = stop_rx.await;
    }));

    if let Some(path) = &cli.ready_file {
        let line = format!("{}\n", serde_json::json!({"listen": local.to_string()}));
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, line)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| format!("--ready-file {}: {e}", path.display()))?;
    }

    let outcome = tokio::select! {
        served = &mut server => Some(served),
        _ = shutdown_signal() => None,
    };
    poller.abort();
    let served = match outcome {
        Some(served) => served,
        None => {
            info!("shutting down: ending watch streams, finishing calls in flight");
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    warn!(timeout = ?SHUTDOWN_TIMEOUT, "calls still in flight; stopping anyway");
                    server.abort();
                    return Ok(());
                }
            }
        }
    };
    match served {
        Ok(Ok(())) => {
            info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("server task failed: {e}")),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the service");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
