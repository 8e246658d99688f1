//! The broker under test as a child process: the real `gatehouse` binary, its configuration and
//! data directory in a temporary directory, its stderr captured to a file, and the listening
//! address read from its ready file.
//!
//! This is not an in-process server and does not build the binary: `scripts/test.sh` runs
//! `cargo build -p frontend --bin gatehouse` first (cargo builds binaries only for the package
//! whose tests run, and this crate is not `frontend`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

use crate::process::{self, Output};

/// How long the broker may take to write its ready file before the test gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful shutdown may take.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// A listener that binds an OS-assigned port on loopback, so tests can run in parallel.
pub const DEFAULT_LISTENER: &str = "\
apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {name: default}
spec:
  ports:
    - {port: 0, host: 127.0.0.1}
";

/// A full configuration: a `Broker` whose `spec.advanced.clients` holds `clients` (YAML flow
/// mapping entries, e.g. `"maxKeepAliveSeconds: 60, maxReceiveMaximum: 10"`) plus
/// [`DEFAULT_LISTENER`].
pub fn broker_config(clients: &str) -> String {
    format!(
        "apiVersion: gatehouse.io/v1\n\
         kind: Broker\n\
         metadata: {{name: default}}\n\
         spec:\n  advanced:\n    clients: {{{clients}}}\n\
         ---\n{DEFAULT_LISTENER}"
    )
}

/// One line of the ready file.
#[derive(Debug, Clone, Deserialize)]
pub struct ReadyPort {
    pub listener: String,
    pub port: u16,
    pub local_addr: SocketAddr,
}

/// Where the `gatehouse` binary is: `$GATEHOUSE_BIN`, else next to this test binary's
/// `deps/` folder (which follows whatever target dir and profile cargo used), else
/// `$CARGO_TARGET_DIR/debug`, else the workspace's `target/debug`.
pub fn gatehouse_bin() -> PathBuf {
    process::workspace_bin(
        "gatehouse",
        "GATEHOUSE_BIN",
        "cargo build -p frontend --bin gatehouse",
    )
}

/// Run the `gatehouse` binary with `args` to completion (for subcommands such as
/// `check-config`), bounded by a timeout.
pub fn gatehouse(args: &[&str]) -> Output {
    process::run(
        Command::new(gatehouse_bin()).args(args),
        Duration::from_secs(20),
    )
}

/// A running broker. Killed when dropped; on a failing test its log is printed first, so the
/// test output shows what the broker saw.
pub struct Broker {
    child: Option<Child>,
    dir: TempDir,
    ports: Vec<ReadyPort>,
    /// The command line after `--config PATH`, kept so that `restart` runs the same broker.
    config: PathBuf,
    extra_args: Vec<String>,
    /// Extra environment variables for the broker process (e.g. `OTEL_*`).
    envs: Vec<(String, String)>,
}

impl Broker {
    /// Start the broker on `config_yaml` and wait until it listens.
    pub fn start(config_yaml: &str) -> Broker {
        Broker::start_with_args(config_yaml, &[])
    }

    /// Plain MQTT on an OS-assigned loopback port, every limit at its default.
    pub fn start_default() -> Broker {
        Broker::start(DEFAULT_LISTENER)
    }

    /// [`Broker::start`] with `Broker.spec.advanced.clients` set to `clients` (see
    /// [`broker_config`]).
    pub fn start_with_clients(clients: &str) -> Broker {
        Broker::start(&broker_config(clients))
    }

    /// [`Broker::start`] with extra command-line arguments.
    pub fn start_with_args(config_yaml: &str, extra_args: &[&str]) -> Broker {
        Broker::launch(&[("config.yaml", config_yaml)], false, extra_args, &[])
    }

    /// [`Broker::start_with_args`] with extra environment variables.
    pub fn start_with_env(config_yaml: &str, extra_args: &[&str], envs: &[(&str, &str)]) -> Broker {
        Broker::launch(&[("config.yaml", config_yaml)], false, extra_args, envs)
    }

    /// Start with `--config FOLDER`, the folder holding `files` as (name, content).
    pub fn start_with_config_folder(files: &[(&str, &str)]) -> Broker {
        Broker::launch(files, true, &[], &[])
    }

    fn launch(
        files: &[(&str, &str)],
        as_folder: bool,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-e2e-")
            .tempdir()
            .expect("tempdir");
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).expect("config dir");
        for (name, content) in files {
            std::fs::write(config_dir.join(name), content).expect("write config");
        }
        let config = if as_folder {
            config_dir
        } else {
            config_dir.join(files[0].0)
        };
        let mut broker = Broker {
            child: None,
            dir,
            ports: Vec::new(),
            config,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        broker.spawn();
        broker
    }

    /// Start the process (again) on the same configuration, data directory and arguments, and
    /// wait until it listens. Its log is appended to the same file.
    fn spawn(&mut self) {
        let ready = self.dir.path().join("ready.jsonl");
        let _ = std::fs::remove_file(&ready);
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .expect("open log file")
        };
        let (log, stdout) = (open("broker.log"), open("stdout.log"));
        let child = Command::new(gatehouse_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--ready-file")
            .arg(&ready)
            // Two workers whatever the machine, so connection placement varies like in production.
            .args(["--workers", "2"])
            // `info` unless the test chose a filter (clap refuses a repeated `--log`).
            .args(if self.extra_args.iter().any(|a| a == "--log") {
                &[][..]
            } else {
                &["--log", "info"][..]
            })
            .args(&self.extra_args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", gatehouse_bin()));
        self.child = Some(child);
        self.ports = self.wait_ready(&ready);
    }

    /// `kill -9` the broker (no chance to flush anything) and wait until it is gone.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
        self.child = None;
    }

    /// Start the broker again after `kill9` or `terminate`, on the same data directory. The
    /// listening ports change (they are OS-assigned): read `addr()` again.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart() after kill9() or terminate()"
        );
        self.spawn();
    }

    fn wait_ready(&mut self, ready: &Path) -> Vec<ReadyPort> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // The broker writes the file atomically (rename), so any content we read is whole.
            if let Ok(text) = std::fs::read_to_string(ready) {
                let ports: Vec<ReadyPort> = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        serde_json::from_str(l)
                            .unwrap_or_else(|e| panic!("bad ready file line {l:?}: {e}"))
                    })
                    .collect();
                assert!(!ports.is_empty(), "ready file {ready:?} is empty");
                return ports;
            }
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "broker exited with {status} before it was ready; log:\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "broker not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every port the ready file listed.
    pub fn ready_ports(&self) -> &[ReadyPort] {
        &self.ports
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.ports[0].local_addr
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    pub fn host(&self) -> String {
        self.addr().ip().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker already stopped").id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replace the single-file configuration (`config/config.yaml`) in one step — write, then
    /// rename, as a ConfigMap mount or an editor does — so the broker never reads half a file.
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.dir.path().join("config.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, self.dir.path().join("config/config.yaml")).expect("replace config");
    }

    /// The broker's `--data-dir` (the local CA's `ca.crt` is written there).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the broker has logged so far (its stderr).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Wait until the log contains a line for which `pred` holds; returns that line.
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        process::wait_for_log_line("broker", || self.logs(), what, pred, timeout)
    }

    /// Send `signal` to the broker without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped while `child` is Some.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Wait for the broker to exit on its own; kill it and panic after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("broker already stopped");
        let dir = self.dir.path().to_path_buf();
        process::wait_child_exit("broker", &mut child, timeout, || {
            std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default()
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- gatehouse log ({:?}) ----\n{}",
                self.dir.path(),
                self.logs()
            );
        }
    }
}
