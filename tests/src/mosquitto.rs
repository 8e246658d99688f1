//! Debian's `mosquitto_pub` and `mosquitto_sub` (2.0) pointed at the broker under test: the
//! interop check against a widely deployed C client, for MQTT 3.1.1 and 5.0.
//!
//! Every run is bounded: `mosquitto_sub` always gets `-W` and both tools are killed by the
//! test after a deadline. This module only runs the tools and parses their output; it does not
//! start brokers (the mosquitto broker itself is not used by these tests).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::Broker;
use crate::process::{self, Output, Running};

/// mosquitto_sub's own timeout (`-W`), in seconds; the test's deadline is a little longer.
const SUB_TIMEOUT_SECS: u64 = 30;
/// The deadline for one mosquitto_pub run.
const PUB_TIMEOUT: Duration = Duration::from_secs(20);

/// Prefix of the lines `mosquitto_sub -F` prints per message, to tell them from `-d` lines.
const MARK: &str = "MSG|";

/// The default per-message format: topic, QoS, retain flag and payload, `|`-separated.
pub const DEFAULT_FORMAT: &str = "%t|%q|%r|%p";

/// Whether the mosquitto command-line clients are installed (scripts/test.sh installs them).
pub fn available() -> bool {
    Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Run `mosquitto_pub -h HOST -p PORT ARGS...` to completion.
pub fn mosquitto_pub(broker: &Broker, args: &[&str]) -> Output {
    mosquitto_pub_at(&broker.host(), broker.port(), args)
}

/// [`mosquitto_pub`] against any address, e.g. `localhost` and a TLS port, where the host name
/// must match the server certificate.
pub fn mosquitto_pub_at(host: &str, port: u16, args: &[&str]) -> Output {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", host, "-p", &port.to_string()]).args(args);
    process::run(&mut cmd, PUB_TIMEOUT)
}

/// [`mosquitto_pub`] that must succeed.
pub fn mosquitto_pub_ok(broker: &Broker, args: &[&str]) {
    let out = mosquitto_pub(broker, args);
    assert!(out.success(), "mosquitto_pub {args:?} failed: {out:?}");
}

/// One message as printed by the subscriber: the `|`-separated fields of its format.
pub type Message = Vec<String>;

/// A running `mosquitto_sub`.
pub struct Sub {
    running: Running,
    lines: Arc<(Mutex<Lines>, Condvar)>,
}

#[derive(Default)]
struct Lines {
    all: Vec<String>,
    eof: bool,
}

/// Start `mosquitto_sub -h HOST -p PORT -d -W 30 -F DEFAULT_FORMAT ARGS...` and wait until its
/// subscription is acknowledged, so a publish made after this returns is seen.
pub fn mosquitto_sub_spawn(broker: &Broker, args: &[&str]) -> Sub {
    mosquitto_sub_spawn_fmt(broker, DEFAULT_FORMAT, args)
}

/// [`mosquitto_sub_spawn`] with another `-F` format (fields separated by `|`).
pub fn mosquitto_sub_spawn_fmt(broker: &Broker, format: &str, args: &[&str]) -> Sub {
    let sub = mosquitto_sub_spawn_nowait(broker, format, args);
    sub.wait_line("SUBACK", |l| l.contains("received SUBACK"));
    sub
}

/// Start mosquitto_sub without waiting for its SUBACK (for runs expected to fail).
pub fn mosquitto_sub_spawn_nowait(broker: &Broker, format: &str, args: &[&str]) -> Sub {
    mosquitto_sub_spawn_at(&broker.host(), broker.port(), format, args)
}

/// [`mosquitto_sub_spawn_nowait`] against any address (see [`mosquitto_pub_at`]).
pub fn mosquitto_sub_spawn_at(host: &str, port: u16, format: &str, args: &[&str]) -> Sub {
    // mosquitto_sub block-buffers stdout into a pipe; line buffering lets us see the SUBACK
    // and each message as it happens.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub"])
        .args(["-h", host, "-p", &port.to_string()])
        // -d prints protocol events, which is how we see the SUBACK.
        .args(["-d", "-W", &SUB_TIMEOUT_SECS.to_string()])
        .args(["-F", &format!("{MARK}{format}")])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let lines = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
    let shared = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let (m, cv) = &*shared;
            m.lock().unwrap_or_else(|e| e.into_inner()).all.push(line);
            cv.notify_all();
        }
        let (m, cv) = &*shared;
        m.lock().unwrap_or_else(|e| e.into_inner()).eof = true;
        cv.notify_all();
    });
    Sub {
        running: Running::new(child, format!("{cmd:?}")),
        lines,
    }
}

impl Sub {
    /// Wait until a stdout line satisfies `pred`; panics (with all output) after a deadline or
    /// if the tool exits first.
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(SUB_TIMEOUT_SECS);
        let (m, cv) = &*self.lines;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(l) = lines.all.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let now = Instant::now();
            if lines.eof || now >= deadline {
                panic!(
                    "mosquitto_sub printed no {what}; stdout:\n{}",
                    lines.all.join("\n")
                );
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<Message> {
        let (m, _) = &*self.lines;
        parse(&m.lock().unwrap().all)
    }

    /// Wait until at least `n` messages have arrived (bounded); returns them all.
    pub fn wait_messages(&self, n: usize) -> Vec<Message> {
        let deadline = Instant::now() + Duration::from_secs(SUB_TIMEOUT_SECS);
        let (m, cv) = &*self.lines;
        let mut lines = m.lock().unwrap();
        loop {
            let messages = parse(&lines.all);
            if messages.len() >= n {
                return messages;
            }
            let now = Instant::now();
            if lines.eof || now >= deadline {
                panic!(
                    "mosquitto_sub got {} of {n} messages; stdout:\n{}",
                    messages.len(),
                    lines.all.join("\n")
                );
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Wait for the tool to exit on its own (e.g. after `-C N` messages); returns the messages
    /// and the process output.
    pub fn finish(mut self) -> (Vec<Message>, Output) {
        let out = self
            .running
            .wait(Duration::from_secs(SUB_TIMEOUT_SECS + 10));
        // The reader thread sees EOF once the process is gone.
        let (m, cv) = &*self.lines;
        let mut lines = m.lock().unwrap();
        while !lines.eof {
            lines = cv.wait_timeout(lines, Duration::from_secs(5)).unwrap().0;
        }
        (parse(&lines.all), out)
    }

    /// Kill the subscriber abruptly (no DISCONNECT), as a crashing client would.
    pub fn kill(self) {
        self.running.signal(libc::SIGKILL);
    }

    /// All stdout so far, for diagnostics.
    pub fn stdout(&self) -> String {
        let (m, _) = &*self.lines;
        m.lock().unwrap().all.join("\n")
    }
}

fn parse(lines: &[String]) -> Vec<Message> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(MARK))
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}
