//! The command line of `gatehouse-bench`: emqtt-bench's `conn`, `sub` and `pub` subcommands with
//! its flag names, short options, defaults and boolean syntax, plus a few Gatehouse extras
//! (`--duration`, `--json`, v5 enhanced authentication and re-authentication, `--recv-limit`).
//!
//! This module only parses and validates; it opens no file and no socket (see `run.rs`).
//! emqtt-bench options we do not implement (QUIC, QoE logging, Prometheus, `--topics-payload`,
//! `--lowmem`, ...) are rejected as unknown rather than silently ignored, so a copied command line
//! never measures something other than what it says.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

#[cfg(test)]
use crate::payload::Hdr;
use crate::payload::Hdrs;

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse-bench",
    about = "An emqtt-bench-compatible MQTT load generator",
    // `-h` is emqtt-bench's --host and `-V` its --version, so neither may be clap's.
    disable_help_flag = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open connections and keep them alive.
    #[command(disable_help_flag = true)]
    Conn(ConnArgs),
    /// Connect and subscribe, counting what arrives.
    #[command(disable_help_flag = true)]
    Sub(SubArgs),
    /// Connect and publish at a fixed interval.
    #[command(disable_help_flag = true)]
    Pub(PubArgs),
}

impl Command {
    pub fn common(&self) -> &Common {
        match self {
            Command::Conn(a) => &a.common,
            Command::Sub(a) => &a.common,
            Command::Pub(a) => &a.common,
        }
    }

    /// The name emqtt-bench uses in default client ids (`..._bench_<name>_...`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Conn(_) => "conn",
            Command::Sub(_) => "sub",
            Command::Pub(_) => "pub",
        }
    }
}

/// emqtt-bench's getopt booleans: `-S` alone means true, and `-S true` / `-C false` also parse.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

fn parse_payload_hdrs(s: &str) -> Result<Hdrs, String> {
    Hdrs::parse(s)
}

/// Options shared by `conn`, `sub` and `pub` (emqtt-bench's COMMON_OPTS).
#[derive(Args, Debug, Clone)]
pub struct Common {
    #[arg(long, action = ArgAction::Help, help = "Print help")]
    pub help: Option<bool>,

    /// MQTT server hostname or comma-separated hostnames (connections go round-robin).
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,

    /// MQTT server port number.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub port: u16,

    /// MQTT protocol version: 3 | 4 | 5.
    #[arg(short = 'V', long = "version", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(3..=5))]
    pub version: u8,

    /// Max count of clients.
    #[arg(short = 'c', long, default_value_t = 200)]
    pub count: u64,

    /// Connection rate (/s); 0 falls back to --interval.
    #[arg(short = 'R', long = "connrate", default_value_t = 0)]
    pub conn_rate: u64,

    /// Interval of connecting to the broker (ms).
    #[arg(short = 'i', long, default_value_t = 10)]
    pub interval: u64,

    /// Local source address(es), comma-separated; connections are spread over them.
    #[arg(long)]
    pub ifaddr: Option<String>,

    /// Client id prefix (default '<host>_bench_<cmd>_<random>_<N>').
    #[arg(long)]
    pub prefix: Option<String>,

    /// Use short client ids: '<prefix><N>', or just '<N>'.
    #[arg(long, num_args = 0..=1, default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, action = ArgAction::Set)]
    pub shortids: bool,

    /// The first client sequence number is startnumber + 1.
    #[arg(short = 'n', long, default_value_t = 0)]
    pub startnumber: u64,

    /// Times to retry establishing a connection before giving up.
    #[arg(long = "num-retry-connect", default_value_t = 0)]
    pub num_retry_connect: u32,

    /// TLS transport.
    #[arg(short = 'S', long, num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub ssl: bool,

    /// CA certificate (PEM) to verify the server; without it the server is not verified.
    #[arg(long)]
    pub cacertfile: Option<PathBuf>,

    /// Client certificate (PEM), if required by the server.
    #[arg(long)]
    pub certfile: Option<PathBuf>,

    /// Client private key (PEM), if required by the server.
    #[arg(long)]
    pub keyfile: Option<PathBuf>,

    /// MQTT over WebSocket (path /mqtt, subprotocol mqtt).
    #[arg(long, num_args = 0..=1, default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, action = ArgAction::Set)]
    pub ws: bool,

    /// Username for connecting to server.
    #[arg(short = 'u', long)]
    pub username: Option<String>,

    /// Password for connecting to server.
    #[arg(short = 'P', long)]
    pub password: Option<String>,

    /// Keep alive in seconds.
    #[arg(short = 'k', long, default_value_t = 300)]
    pub keepalive: u16,

    /// Clean start / clean session.
    #[arg(short = 'C', long, num_args = 0..=1, default_value = "true",
          default_missing_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub clean: bool,

    /// Session Expiry Interval (seconds, v5).
    #[arg(short = 'x', long = "session-expiry", default_value_t = 0)]
    pub session_expiry: u32,

    // ---- Gatehouse extras ----
    /// Stop after this many seconds (default: run until done or Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Write a machine-readable summary to PATH when done.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Tokio worker threads (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Give up on a connection (TCP + TLS + WebSocket + CONNACK) after this many seconds.
    #[arg(long = "connect-timeout", value_name = "SECS", default_value_t = 30.0)]
    pub connect_timeout: f64,

    /// v5 enhanced authentication: the Authentication Method sent in CONNECT.
    #[arg(long = "auth-method")]
    pub auth_method: Option<String>,

    /// v5 enhanced authentication: the Authentication Data sent in CONNECT.
    #[arg(long = "auth-data", conflicts_with = "auth_data_file")]
    pub auth_data: Option<String>,

    /// Authentication Data per client, one line each (client k uses line k, wrapping around).
    #[arg(long = "auth-data-file")]
    pub auth_data_file: Option<PathBuf>,

    /// Re-authenticate (AUTH 0x19, same method and data) every MS milliseconds.
    #[arg(long = "reauth-interval", value_name = "MS")]
    pub reauth_interval: Option<u64>,

    /// Credentials expire this long after CONNECT: for each connection the server closes,
    /// record how late that was (`expiry_delay_ms` in --json).
    #[arg(long = "expect-lifetime", value_name = "SECS")]
    pub expect_lifetime: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct SubArgs {
    #[command(flatten)]
    pub common: Common,

    /// Topic filter to subscribe (repeatable); supports %u, %c, %i, %rand_N.
    #[arg(short = 't', long, required = true)]
    pub topic: Vec<String>,

    /// Subscribe QoS.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// Payload headers to expect, in the publisher's order: cnt64 (ordering check), ts (latency).
    #[arg(long = "payload-hdrs", default_value = "", value_parser = parse_payload_hdrs)]
    pub payload_hdrs: Hdrs,

    /// (extra) Stop once this many messages have been received in total.
    #[arg(long = "recv-limit", value_name = "N")]
    pub recv_limit: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct PubArgs {
    #[command(flatten)]
    pub common: Common,

    /// Interval of publishing messages per client (ms); 0 = as fast as flow control allows.
    #[arg(
        short = 'I',
        long = "interval_of_msg",
        visible_alias = "interval-of-msg",
        default_value_t = 1000
    )]
    pub interval_of_msg: u64,

    /// Topic to publish; supports %u, %c, %i, %s (message seq) and %rand_N.
    #[arg(short = 't', long, required = true)]
    pub topic: String,

    /// Payload headers to prepend: cnt64 (per-publisher counter), ts (send time), e.g. cnt64,ts.
    #[arg(long = "payload-hdrs", default_value = "", value_parser = parse_payload_hdrs)]
    pub payload_hdrs: Hdrs,

    /// Payload size (bytes, not counting payload headers).
    #[arg(short = 's', long, default_value_t = 256)]
    pub size: usize,

    /// Payload: a literal, or 'template://<file>' with %TIMESTAMP% %TIMESTAMPMS% %TIMESTAMPUS%
    /// %TIMESTAMPNS% %UNIQUE% %RANDOM%.
    #[arg(short = 'm', long)]
    pub message: Option<String>,

    /// Publish QoS.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// Retain flag.
    #[arg(short = 'r', long, num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub retain: bool,

    /// Max messages to publish in total (shared by all clients, as in emqtt-bench); 0 = unlimited.
    #[arg(short = 'L', long, default_value_t = 0)]
    pub limit: u64,

    /// Max QoS 1/2 messages in flight per client; 0 = unlimited (up to Receive Maximum).
    #[arg(short = 'F', long, default_value_t = 1)]
    pub inflight: u32,

    /// Wait until every publisher has (tried to) connect before anyone publishes.
    #[arg(short = 'w', long = "wait-before-publishing", num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub wait_before_publishing: bool,

    /// Each publisher waits a uniform random time up to this (ms) before its first message.
    #[arg(long = "max-random-wait", default_value_t = 0)]
    pub max_random_wait: u64,

    /// Lower bound of that random wait (ms).
    #[arg(long = "min-random-wait", default_value_t = 0)]
    pub min_random_wait: u64,
}

impl Cli {
    /// Cross-field rules clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let c = self.command.common();
        if c.count == 0 {
            return Err("--count must be at least 1".into());
        }
        if c.auth_method.is_none() && (c.auth_data.is_some() || c.auth_data_file.is_some()) {
            return Err("--auth-data/--auth-data-file need --auth-method".into());
        }
        if c.auth_method.is_some() && c.version != 5 {
            return Err("enhanced authentication (--auth-method) needs -V 5".into());
        }
        if c.reauth_interval.is_some() && c.auth_method.is_none() {
            return Err("--reauth-interval needs --auth-method".into());
        }
        if c.reauth_interval == Some(0) {
            return Err("--reauth-interval must be at least 1 ms".into());
        }
        if c.certfile.is_some() != c.keyfile.is_some() {
            return Err("--certfile and --keyfile go together".into());
        }
        if let Some(d) = c.duration
            && !(d > 0.0 && d.is_finite())
        {
            return Err("--duration must be a positive number of seconds".into());
        }
        if let Some(l) = c.expect_lifetime
            && !(l > 0.0 && l.is_finite() && l < 1e9)
        {
            return Err("--expect-lifetime must be a positive number of seconds".into());
        }
        if !(c.connect_timeout > 0.0 && c.connect_timeout.is_finite()) {
            return Err("--connect-timeout must be a positive number of seconds".into());
        }
        if c.workers == Some(0) {
            return Err("--workers must be at least 1".into());
        }
        if let Command::Pub(p) = &self.command
            && p.min_random_wait > p.max_random_wait
            && p.max_random_wait != 0
        {
            return Err("--min-random-wait is above --max-random-wait".into());
        }
        Ok(())
    }
}

/// Comma-separated list, empty items dropped (emqtt-bench's `string:tokens(S, ",")`).
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        let args = std::iter::once("gatehouse-bench").chain(line.split_whitespace());
        Cli::try_parse_from(args)
    }

    fn ok(line: &str) -> Cli {
        let cli = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        cli.validate().unwrap_or_else(|e| panic!("{line}: {e}"));
        cli
    }

    #[test]
    fn emqtt_bench_readme_examples() {
        // From emqtt-bench's README and EMQX's benchmark guide.
        let Command::Sub(s) = ok("sub -c 50000 -i 10 -t bench/%i -q 2").command else {
            panic!()
        };
        assert_eq!((s.common.count, s.common.interval, s.qos), (50000, 10, 2));
        assert_eq!(s.topic, vec!["bench/%i"]);

        let Command::Pub(p) = ok("pub -c 100 -I 10 -t bench/%i -s 256").command else {
            panic!()
        };
        assert_eq!((p.common.count, p.interval_of_msg, p.size), (100, 10, 256));

        let Command::Conn(c) = ok("conn -h 127.0.0.1 -p 1883 -c 1000 -i 1").command else {
            panic!()
        };
        assert_eq!(c.common.host, "127.0.0.1");
        assert_eq!(
            (c.common.port, c.common.count, c.common.interval),
            (1883, 1000, 1)
        );
    }

    #[test]
    fn defaults_match_emqtt_bench() {
        let Command::Pub(p) = ok("pub -t t").command else {
            panic!()
        };
        let c = &p.common;
        assert_eq!(c.host, "localhost");
        assert_eq!(c.port, 1883);
        assert_eq!(c.version, 5);
        assert_eq!(c.count, 200);
        assert_eq!(c.interval, 10);
        assert_eq!(c.conn_rate, 0);
        assert_eq!(c.keepalive, 300);
        assert!(c.clean);
        assert!(!c.ssl && !c.ws && !c.shortids);
        assert_eq!(c.session_expiry, 0);
        assert_eq!(c.startnumber, 0);
        assert_eq!(p.interval_of_msg, 1000);
        assert_eq!(p.size, 256);
        assert_eq!(p.qos, 0);
        assert!(!p.retain);
        assert_eq!(p.limit, 0);
        assert_eq!(p.inflight, 1);
        assert!(p.payload_hdrs.0.is_empty());
    }

    #[test]
    fn booleans_take_an_optional_value() {
        let Command::Pub(p) = ok("pub -t t -C false -S -r true --ws --shortids").command else {
            panic!()
        };
        assert!(!p.common.clean);
        assert!(p.common.ssl && p.common.ws && p.common.shortids);
        assert!(p.retain);
        let Command::Conn(c) = ok("conn -S false -C true -c 3").command else {
            panic!()
        };
        assert!(!c.common.ssl && c.common.clean);
        let Command::Conn(c) = ok("conn --clean=false").command else {
            panic!()
        };
        assert!(!c.common.clean);
        assert!(parse("conn -S maybe").is_err());
    }

    #[test]
    fn long_forms_and_underscore_names() {
        let line = "pub --host a,b --port 8883 --version 4 --count 7 --connrate 50 \
                    --interval_of_msg 5 --limit 10 --inflight 0 --wait-before-publishing \
                    --payload-hdrs cnt64,ts --session-expiry 60 --startnumber 100 \
                    --prefix p --username u --password pw --keepalive 30 --qos 1 \
                    --size 16 --topic x/%i --ifaddr 127.0.0.1,127.0.0.2 --num-retry-connect 2";
        let Command::Pub(p) = ok(line).command else {
            panic!()
        };
        let c = &p.common;
        assert_eq!(split_list(&c.host), vec!["a", "b"]);
        assert_eq!((c.port, c.version, c.count, c.conn_rate), (8883, 4, 7, 50));
        assert_eq!(
            (c.session_expiry, c.startnumber, c.keepalive),
            (60, 100, 30)
        );
        assert_eq!(c.prefix.as_deref(), Some("p"));
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(
            split_list(c.ifaddr.as_deref().unwrap()),
            vec!["127.0.0.1", "127.0.0.2"]
        );
        assert_eq!(c.num_retry_connect, 2);
        assert_eq!((p.interval_of_msg, p.limit, p.inflight), (5, 10, 0));
        assert!(p.wait_before_publishing);
        assert_eq!(p.payload_hdrs.0, vec![Hdr::Cnt64, Hdr::Ts]);
        assert_eq!((p.qos, p.size), (1, 16));
        // The hyphenated spelling is accepted too.
        let Command::Pub(p) = ok("pub -t t --interval-of-msg 3").command else {
            panic!()
        };
        assert_eq!(p.interval_of_msg, 3);
    }

    #[test]
    fn sub_accepts_several_topics() {
        let Command::Sub(s) = ok("sub -t a/%i -t b/# -q 1 --payload-hdrs ts").command else {
            panic!()
        };
        assert_eq!(s.topic, vec!["a/%i", "b/#"]);
        assert_eq!(s.payload_hdrs.0, vec![Hdr::Ts]);
    }

    #[test]
    fn ssl_and_ws_files() {
        let Command::Conn(c) =
            ok("conn -S --cacertfile ca.pem --certfile c.pem --keyfile k.pem --ws").command
        else {
            panic!()
        };
        assert!(c.common.ssl && c.common.ws);
        assert_eq!(c.common.cacertfile, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.common.certfile, Some(PathBuf::from("c.pem")));
        assert_eq!(c.common.keyfile, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn extras() {
        let line = "conn -c 10 --duration 2.5 --json out.json --auth-method K8S-SAT \
                    --auth-data tok --reauth-interval 500 --workers 2 --expect-lifetime 2.5";
        let Command::Conn(c) = ok(line).command else {
            panic!()
        };
        assert_eq!(c.common.duration, Some(2.5));
        assert_eq!(c.common.json, Some(PathBuf::from("out.json")));
        assert_eq!(c.common.auth_method.as_deref(), Some("K8S-SAT"));
        assert_eq!(c.common.auth_data.as_deref(), Some("tok"));
        assert_eq!(c.common.reauth_interval, Some(500));
        assert_eq!(c.common.workers, Some(2));
        assert_eq!(c.common.expect_lifetime, Some(2.5));
        let Command::Sub(s) = ok("sub -t t --recv-limit 500").command else {
            panic!()
        };
        assert_eq!(s.recv_limit, Some(500));
    }

    #[test]
    fn rejected_lines() {
        // Required topic, bad ranges, unknown options, bad payload headers.
        for line in [
            "sub -c 1",
            "pub -c 1",
            "pub -t t -q 3",
            "conn -V 6",
            "conn --quic",
            "sub -t t --payload-hdrs cnt32",
            "conn --auth-data x --auth-data-file f --auth-method m",
            "frob",
        ] {
            assert!(parse(line).is_err(), "{line} should not parse");
        }
        for line in [
            "conn -c 0",
            "conn --auth-data x",
            "conn -V 4 --auth-method m",
            "conn --reauth-interval 10",
            "conn --certfile c.pem",
            "conn --duration 0",
            "conn --expect-lifetime 0",
            "pub -t t --min-random-wait 10 --max-random-wait 5",
        ] {
            let cli = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(cli.validate().is_err(), "{line} should not validate");
        }
    }

    #[test]
    fn help_is_long_only() {
        let e = parse("pub --help").unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        // `-h` is the host.
        assert!(parse("conn -h").is_err());
    }
}
