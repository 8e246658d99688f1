//! `gatehouse`: the broker binary. Parses the command line, loads the configuration, sets up
//! logging and telemetry and runs the server inside an actix system. All behaviour lives in the
//! library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use frontend::config::{Config, default_config_yaml};
use frontend::observability::{self, LogFormat, LogOptions};
use frontend::server::{self, RunOptions};

/// Gatehouse: a clustered MQTT 3.1.1 / 5.0 broker.
///
/// With no arguments it runs the embedded default configuration: plain MQTT on 0.0.0.0:1883,
/// data under ./gatehouse-data.
#[derive(Parser, Debug)]
#[command(name = "gatehouse", version, about, long_about)]
struct Cli {
    /// Configuration: a YAML file or a folder of YAML files holding Broker, BrokerListener,
    /// BrokerAuthentication, BrokerAuthorization, Secret and ConfigMap documents
    /// (apiVersion gatehouse.io/v1 or mqttbroker.iotoperations.azure.com/v1). Without it the
    /// embedded default is used (see `gatehouse print-default-config`).
    #[arg(
        long,
        short = 'c',
        env = "GATEHOUSE_CONFIG",
        value_name = "PATH",
        global = true
    )]
    config: Option<PathBuf>,

    /// Directory for the broker's state (created if missing).
    #[arg(
        long,
        env = "GATEHOUSE_DATA_DIR",
        value_name = "DIR",
        default_value = "./gatehouse-data"
    )]
    data_dir: PathBuf,

    /// Folder of Secrets and ConfigMaps that are not documents of the configuration, one
    /// sub-folder per name as Kubernetes mounts them: a Manual TLS port's `secretRef: NAME` reads
    /// NAME/tls.crt (chain, leaf first) and NAME/tls.key; an X509 method's
    /// `trustedClientCaCert: NAME` reads every file in NAME/. Changes are picked up without a
    /// restart. Default: <data-dir>/secrets.
    #[arg(long, env = "GATEHOUSE_SECRETS_DIR", value_name = "DIR")]
    secrets_dir: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `frontend=debug`). Overrides
    /// Broker.spec.diagnostics.logs.level; RUST_LOG is honoured when neither is set.
    #[arg(long, env = "GATEHOUSE_LOG", value_name = "FILTER")]
    log: Option<String>,

    /// Once every listener is bound, write one JSON line per port to this file:
    /// {"listener": NAME, "port": CONFIGURED, "local_addr": "IP:PORT"}. Useful with port 0.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,

    /// Serve the admin endpoint (/metrics, /healthz, /readyz) on this address, e.g.
    /// `127.0.0.1:0`. Overrides Broker.spec.diagnostics.metrics.prometheusPort (which listens
    /// on 0.0.0.0:PORT). Without either there is no admin endpoint.
    #[arg(long, env = "GATEHOUSE_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,

    /// Worker threads serving connections (default: one per CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// Authentication service replicas for ports with an authenticationRef, comma-separated
    /// `http://HOST:PORT` or `https://HOST:PORT` URLs, e.g.
    /// `http://authsvc-0:50051,http://authsvc-1:50051`.
    /// Decisions go to the replica that answered last, then to the others; if none answers
    /// within 3 s the client gets CONNACK 0x88 (3.1.1: 0x03). Without it, the service runs in
    /// this process on 127.0.0.1 with the policies of --config.
    #[arg(
        long,
        env = "GATEHOUSE_AUTHSVC",
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    authsvc: Vec<String>,

    /// CA certificate (PEM) the authentication service's certificate chains to; required for
    /// https:// URLs.
    #[arg(long, env = "GATEHOUSE_AUTHSVC_CA", value_name = "PEM")]
    authsvc_ca: Option<PathBuf>,

    /// Client certificate chain (PEM) this frontend presents to the authentication service
    /// (mutual TLS). Requires --authsvc-key.
    #[arg(
        long,
        env = "GATEHOUSE_AUTHSVC_CERT",
        value_name = "PEM",
        requires = "authsvc_key"
    )]
    authsvc_cert: Option<PathBuf>,

    /// The private key (PEM) of --authsvc-cert.
    #[arg(
        long,
        env = "GATEHOUSE_AUTHSVC_KEY",
        value_name = "PEM",
        requires = "authsvc_cert"
    )]
    authsvc_key: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the embedded default configuration (every knob, commented) and exit.
    PrintDefaultConfig,
    /// Validate a configuration and exit: 0 if valid, 2 with every problem listed if not.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::PrintDefaultConfig) = cli.command {
        print!("{}", default_config_yaml());
        return ExitCode::SUCCESS;
    }
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gatehouse: configuration rejected: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::embedded_default(),
    };
    // Policies are compiled before anything starts, so a bad rule (a token inside a topic
    // segment, an unknown method) is a configuration error with its field, exit 2.
    let on_update_errors: Vec<_> = config
        .authorizations
        .iter()
        .filter_map(|(name, doc)| {
            frontend::policy_reload::on_update(name, &doc.resource.spec).err()
        })
        .collect();
    if !on_update_errors.is_empty() {
        for e in on_update_errors {
            eprintln!("gatehouse: configuration rejected: {e}");
        }
        return ExitCode::from(2);
    }
    if let Err(errors) = frontend::authz::compile_all(&config.authorizations) {
        for e in errors {
            eprintln!("gatehouse: configuration rejected: {e}");
        }
        return ExitCode::from(2);
    }
    if let Some(Command::CheckConfig) = cli.command {
        // Authentication methods are compiled too (CA bundles, endpoints, audiences), as the
        // broker would at start. Some builders create clients that want a runtime.
        let secrets_dir = cli
            .secrets_dir
            .clone()
            .unwrap_or_else(|| cli.data_dir.join("secrets"));
        let compiled = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| {
                rt.block_on(async { authsvc::policy::compile(&config, secrets_dir).map(|_| ()) })
            });
        match compiled {
            Ok(Ok(())) => {}
            Ok(Err(errors)) => {
                for e in errors {
                    eprintln!("gatehouse: configuration rejected: {e}");
                }
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("gatehouse: cannot start a runtime to check the configuration: {e}");
                return ExitCode::from(1);
            }
        }
        for warning in &config.warnings {
            eprintln!("gatehouse: warning: {warning}");
        }
        println!(
            "configuration is valid: {} listener port(s)",
            config.listeners.len()
        );
        return ExitCode::SUCCESS;
    }
    // ring is the only rustls provider compiled in; make it the process default for every
    // rustls user (the auth client's channels, the embedded service's methods).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let system = actix::System::new();
    // Inside the System's runtime: the OTLP exporters' gRPC channel is created on it, and it
    // keeps running (driving that channel) for as long as the broker does.
    let telemetry = system.block_on(async {
        observability::init(&LogOptions {
            format: cli.log_format,
            filter: cli.log.clone(),
            configured_level: config.broker.log_level.clone(),
        })
    });
    for warning in &config.warnings {
        tracing::warn!("configuration: {warning}");
    }
    let options = RunOptions {
        data_dir: cli.data_dir.clone(),
        secrets_dir: cli
            .secrets_dir
            .clone()
            .unwrap_or_else(|| cli.data_dir.join("secrets")),
        health: std::sync::Arc::new(frontend::health::Health::default()),
        admin_listen: cli.admin_listen.or_else(|| {
            config
                .broker
                .prometheus_port
                .map(|port| SocketAddr::from(([0, 0, 0, 0], port)))
        }),
        ready_file: cli.ready_file.clone(),
        authsvc: frontend::authclient::ClientOptions {
            urls: cli
                .authsvc
                .iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            ca: cli.authsvc_ca.clone(),
            cert: cli.authsvc_cert.clone(),
            key: cli.authsvc_key.clone(),
        },
        workers: cli
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        config_path: cli.config.clone(),
    };
    let result = system.block_on(server::run(config, options));
    system.block_on(telemetry.shutdown());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A BrokerAuthentication that does not compile is a configuration error, like one
        // `Config::load` finds.
        Err(e @ server::ServerError::Policy(_)) => {
            tracing::error!("configuration rejected: {e}");
            for line in e.to_string().lines() {
                eprintln!("gatehouse: configuration rejected: {line}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("gatehouse: {e}");
            ExitCode::from(1)
        }
    }
}
