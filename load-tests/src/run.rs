//! One run of `gatehouse-bench`: turn the parsed command line into a plan, start clients at the
//! requested rate, print the per-second report, and stop on Ctrl-C/SIGTERM, `--duration`,
//! `--recv-limit`, or when every client has ended (a `--limit` is used up, or every connection
//! failed). Then clients get a bounded moment to disconnect cleanly, the last report and the
//! summary are printed, and `--json` is written.
//!
//! Not here: anything per connection (`client.rs`) or about output formats (`stats.rs`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use mqtt::{Protocol, QoS};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_rustls::TlsConnector;

use crate::cli::{Cli, Command, Common, split_list};
use crate::client::{self, Limit, Mode, PubPlan, Shared, SubPlan};
use crate::payload::Body;
use crate::stats::{Counter, Reporter, Stats};
use crate::topic::{TopicTemplate, hostname};
use crate::transport::{Target, tls_config};

/// How long stopping clients may take to send DISCONNECT before they are dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
enum Why {
    AllDone,
    Duration,
    Signal,
    RecvLimit,
}

/// Run the command; `Err` is a setup problem (bad file, unresolvable host), not a client error.
pub async fn run(cli: Cli, args: Vec<String>, workers: usize) -> Result<(), String> {
    let common = cli.command.common().clone();
    let shared = Arc::new(plan(&cli.command, &common, workers).await?);
    let interval = if common.conn_rate > 0 {
        Duration::from_secs_f64(1.0 / common.conn_rate as f64)
    } else {
        Duration::from_millis(common.interval)
    };
    print_lines(vec![
        format!(
            "Start with {workers} workers, addrs pool size: {} and req interval: {} ms",
            shared.ifaddrs.len().max(1),
            interval.as_secs_f64() * 1000.0
        ),
        String::new(),
    ]);

    let start = Instant::now();
    let mut reporter = Reporter::new(start.into_std());
    let mut ticker = interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = common.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut stop = shared.stop.subscribe();
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut clients = JoinSet::new();
    let mut spawned = 0u64;
    let mut next_spawn = start;
    let why = loop {
        if spawned == shared.count && clients.is_empty() {
            break Why::AllDone;
        }
        tokio::select! {
            () = sleep_until(next_spawn), if spawned < shared.count => {
                let now = Instant::now();
                while spawned < shared.count && next_spawn <= now {
                    clients.spawn(client::run(Arc::clone(&shared), spawned));
                    spawned += 1;
                    next_spawn += interval;
                }
            }
            Some(done) = clients.join_next(), if !clients.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    eprintln!("a client task panicked: {e}");
                }
            }
            _ = ticker.tick() => print_lines(reporter.tick(&shared.stats, std::time::Instant::now())),
            () = sleep_until(deadline.unwrap_or(start)), if deadline.is_some() => break Why::Duration,
            _ = sigint.recv() => break Why::Signal,
            _ = sigterm.recv() => break Why::Signal,
            _ = stop.wait_for(|s| *s) => break Why::RecvLimit,
        }
    };

    shared.stop.send_replace(true);
    let drained = timeout(DRAIN_TIMEOUT, async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        clients.abort_all();
        while clients.join_next().await.is_some() {}
    }

    let now = std::time::Instant::now();
    print_lines(reporter.tick(&shared.stats, now));
    if let Command::Pub(p) = &cli.command
        && p.limit > 0
        && why == Why::AllDone
    {
        print_lines(vec!["publish complete".to_owned()]);
    }
    let summary = reporter.summary(&shared.stats, now, cli.command.name(), &args);
    print_lines(vec![summary_line(&summary)]);
    let unprinted = shared.unprinted_errors();
    if unprinted > 0 {
        eprintln!("{unprinted} more client errors were counted but not printed");
    }
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write --json {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Report lines to stdout. Write errors are ignored: a reader that went away (`| head`) must not
/// stop the run.
fn print_lines(lines: Vec<String>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// A human summary of the JSON: elapsed, non-zero counters, latency, own CPU.
fn summary_line(v: &serde_json::Value) -> String {
    let mut parts = vec![format!("summary: elapsed={}s", v["elapsed_secs"])];
    for c in Counter::ALL {
        let n = v["counters"][c.name()].as_u64().unwrap_or(0);
        if n > 0 {
            parts.push(format!("{}={n}", c.name()));
        }
    }
    if let Some(l) = v["latency_ms"].as_object() {
        parts.push(format!(
            "latency_ms p50={} p90={} p99={} max={}",
            l["p50"], l["p90"], l["p99"], l["max"]
        ));
    }
    if let Some(l) = v["connect_latency_ms"].as_object() {
        parts.push(format!(
            "connect_ms p50={} p99={} max={}",
            l["p50"], l["p99"], l["max"]
        ));
    }
    if let Some(e) = v["expiry_delay_ms"].as_object() {
        parts.push(format!(
            "expiry_delay_ms count={} early={} p50={} p99={} max={}",
            e["count"], e["early"], e["p50"], e["p99"], e["max"]
        ));
    }
    parts.push(format!(
        "cpu={}s ({}% of one core) max_rss={}KB",
        v["cpu"]["total_secs"], v["cpu"]["percent_of_one_core"], v["max_rss_kb"]
    ));
    parts.join(" ")
}

/// Everything the clients need, read from the command line and the files it names.
async fn plan(command: &Command, c: &Common, workers: usize) -> Result<Shared, String> {
    let protocol = match c.version {
        3 => Protocol::V31,
        4 => Protocol::V311,
        _ => Protocol::V5,
    };
    let ifaddrs = match &c.ifaddr {
        None => Vec::new(),
        Some(list) => split_list(list)
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|e| format!("bad --ifaddr address {a:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let tls = if c.ssl {
        Some(TlsConnector::from(tls_config(
            c.cacertfile.as_deref(),
            c.certfile.as_deref(),
            c.keyfile.as_deref(),
        )?))
    } else {
        None
    };
    let hosts = split_list(&c.host);
    if hosts.is_empty() {
        return Err("--host is empty".into());
    }
    let want_v4 = ifaddrs.first().map(IpAddr::is_ipv4);
    let mut targets = Vec::new();
    for host in hosts {
        // Resolved once: tens of thousands of connections must not mean as many lookups.
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), c.port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| want_v4.is_none_or(|v4| a.is_ipv4() == v4))
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("{host} has no address"))?;
        targets.push(Target {
            addr,
            host,
            tls: tls.clone(),
            ws: c.ws,
        });
    }
    let auth_data = match (&c.auth_data, &c.auth_data_file) {
        (Some(d), _) => vec![Bytes::from(d.clone().into_bytes())],
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --auth-data-file {}: {e}", path.display()))?;
            let lines: Vec<Bytes> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| Bytes::from(l.to_owned().into_bytes()))
                .collect();
            if lines.is_empty() {
                return Err(format!("--auth-data-file {} is empty", path.display()));
            }
            lines
        }
        (None, None) => Vec::new(),
    };
    let qos = |q: u8| QoS::from_u8(q).expect("clap limits QoS to 0..=2");
    let mode = match command {
        Command::Conn(_) => Mode::Conn,
        Command::Sub(s) => Mode::Sub(SubPlan {
            topics: s
                .topic
                .iter()
                .map(|t| TopicTemplate::parse(t))
                .collect::<Result<_, _>>()?,
            qos: qos(s.qos),
            hdrs: s.payload_hdrs.clone(),
            recv_limit: s.recv_limit,
        }),
        Command::Pub(p) => Mode::Pub(PubPlan {
            topic: TopicTemplate::parse(&p.topic)?,
            qos: qos(p.qos),
            retain: p.retain,
            hdrs: p.payload_hdrs.clone(),
            body: Body::from_args(p.message.as_deref(), p.size)?,
            interval: Duration::from_millis(p.interval_of_msg),
            limit: (p.limit > 0).then(|| Limit::new(p.limit)),
            inflight: p.inflight,
            wait_for_all: p.wait_before_publishing,
            min_wait: Duration::from_millis(p.min_random_wait),
            max_wait: Duration::from_millis(p.max_random_wait),
        }),
    };
    Ok(Shared {
        mode,
        command: command.name(),
        count: c.count,
        startnumber: c.startnumber,
        targets,
        ifaddrs,
        hostname: hostname(),
        prefix: c.prefix.clone(),
        shortids: c.shortids,
        protocol,
        keepalive: c.keepalive,
        clean: c.clean,
        session_expiry: c.session_expiry,
        username: c.username.clone(),
        password: c.password.clone().map(|p| Bytes::from(p.into_bytes())),
        auth_method: c.auth_method.clone(),
        auth_data,
        reauth_interval: c.reauth_interval.map(Duration::from_millis),
        connect_timeout: Duration::from_secs_f64(c.connect_timeout),
        num_retry_connect: c.num_retry_connect,
        stats: match c.expect_lifetime {
            Some(secs) => Stats::new(workers * 4).with_expected_lifetime(secs),
            None => Stats::new(workers * 4),
        },
        stop: watch::channel(false).0,
        go: watch::channel(false).0,
        attempted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    })
}

/// Raise the soft open-files limit to the hard one: tens of thousands of connections need more
/// than the usual 1024, and asking the operator to run `ulimit -n` first is easy to forget.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
