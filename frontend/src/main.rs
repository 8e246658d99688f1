//! `gatehouse`: the broker binary. Parses the command line, loads the configuration, sets up
//! logging and runs the server inside an actix system. All behaviour lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use frontend::config::{Config, default_config_yaml};
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

    /// Worker threads serving connections (default: one per CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    if let Some(Command::CheckConfig) = cli.command {
        for warning in &config.warnings {
            eprintln!("gatehouse: warning: {warning}");
        }
        println!(
            "configuration is valid: {} listener port(s)",
            config.listeners.len()
        );
        return ExitCode::SUCCESS;
    }
    init_logging(&cli, config.broker.log_level.as_deref());
    for warning in &config.warnings {
        tracing::warn!("configuration: {warning}");
    }
    let options = RunOptions {
        data_dir: cli.data_dir.clone(),
        ready_file: cli.ready_file.clone(),
        workers: cli
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let system = actix::System::new();
    let result = system.block_on(server::run(config, options));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("gatehouse: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cli: &Cli, configured_level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match (&cli.log, configured_level) {
        (Some(f), _) => EnvFilter::new(f),
        (None, Some(level)) => EnvFilter::new(level),
        (None, None) => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
