//! The authentication service under test as a child process: the real `authsvc` binary on
//! 127.0.0.1:0, its configuration in a temporary directory, its stderr captured to a file and
//! its address read from its ready file — the counterpart of [`crate::Broker`].
//!
//! This does not build the binary: `scripts/test.sh` runs `cargo build -p authsvc --bin
//! authsvc` first (cargo builds binaries only for the package whose tests run).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, Output};

/// How long the service may take to write its ready file.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the `authsvc` binary is: `$AUTHSVC_BIN`, else next to this test binary's `deps/`
/// folder, else `$CARGO_TARGET_DIR/debug`, else the workspace's `target/debug`.
pub fn authsvc_bin() -> PathBuf {
    process::workspace_bin(
        "authsvc",
        "AUTHSVC_BIN",
        "cargo build -p authsvc --bin authsvc",
    )
}

/// Run `authsvc` with `args` to completion (e.g. to see a configuration rejected), bounded.
pub fn run_authsvc(args: &[&str]) -> Output {
    process::run(
        Command::new(authsvc_bin()).args(args),
        Duration::from_secs(20),
    )
}

/// A running `authsvc`. Killed when dropped; on a failing test its log is printed first.
pub struct Authsvc {
    child: Option<Child>,
    dir: TempDir,
    addr: SocketAddr,
}

impl Authsvc {
    /// Start on `config_yaml` (written to `config.yaml`) and wait until it listens.
    pub fn start(config_yaml: &str) -> Authsvc {
        Authsvc::start_with_args(config_yaml, &[])
    }

    /// [`Authsvc::start`] with extra command-line arguments (TLS, `--secrets-dir`, `--log`).
    pub fn start_with_args(config_yaml: &str, extra_args: &[&str]) -> Authsvc {
        Authsvc::start_with_env(config_yaml, extra_args, &[])
    }

    /// [`Authsvc::start_with_args`] with extra environment variables for the service process
    /// (e.g. `KUBECONFIG` for the ServiceAccountToken method), on top of the test's own.
    pub fn start_with_env(
        config_yaml: &str,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Authsvc {
        let dir = tempfile::Builder::new()
            .prefix("authsvc-e2e-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("config.yaml"), config_yaml).expect("write config");
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("authsvc.log")).expect("log file");
        let child = Command::new(authsvc_bin())
            .arg("--config")
            .arg(dir.path().join("config.yaml"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready)
            .args(if extra_args.contains(&"--log") {
                &[][..]
            } else {
                &["--log", "info"][..]
            })
            .args(extra_args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", authsvc_bin()));
        let mut svc = Authsvc {
            child: Some(child),
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        svc.addr = svc.wait_ready(&ready);
        svc
    }

    fn wait_ready(&mut self, ready: &Path) -> SocketAddr {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Written atomically (rename): whatever we read is whole.
            if let Ok(text) = std::fs::read_to_string(ready) {
                let line: serde_json::Value = serde_json::from_str(text.trim())
                    .unwrap_or_else(|e| panic!("bad ready file {text:?}: {e}"));
                return line["listen"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("ready file without a listen address: {text:?}"));
            }
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "authsvc exited with {status} before it was ready; log:\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "authsvc not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, for `gatehouse --authsvc`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://IP:PORT` (when started with `--tls-cert`).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Replace the configuration in one step (write, then rename), so the service's poller
    /// never reads half a file.
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.dir.path().join("config.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("replace config");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kill -9`: no chance to end its streams; wait until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("authsvc already stopped");
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let dir = self.dir.path().to_path_buf();
        process::wait_child_exit("authsvc", &mut child, EXIT_TIMEOUT, || {
            std::fs::read_to_string(dir.join("authsvc.log")).unwrap_or_default()
        })
    }

    /// Everything logged so far (stderr).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("authsvc.log")).unwrap_or_default()
    }

    /// Wait until a log line satisfies `pred`; returns it.
    pub fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        process::wait_for_log_line("authsvc", || self.logs(), what, pred, timeout)
    }
}

impl Drop for Authsvc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- authsvc log ({:?}) ----\n{}",
                self.dir.path(),
                self.logs()
            );
        }
    }
}
