//! Running child processes with a deadline: the one place that turns "a tool hung" into a test
//! failure with the tool's output, instead of a test run that never ends.
//!
//! It knows nothing about MQTT or about which tool it runs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a finished child printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run `cmd` to completion with stdin closed; kill it and panic if it outlives `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut running = Running::new(child, format!("{cmd:?}"));
    running.wait(timeout)
}

/// A child whose stdout and stderr are drained by background threads, so it can never block
/// on a full pipe while the test waits on something else.
pub struct Running {
    child: Child,
    what: String,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    /// Take over a child spawned with piped stdout and stderr.
    pub fn new(mut child: Child, what: String) -> Running {
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Running {
            child,
            what,
            stdout,
            stderr,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the child to exit; kill it and panic with its output after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Output {
        match self.wait_or_kill(timeout) {
            Ok(out) => out,
            Err(out) => panic!(
                "{} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.what, out.stdout, out.stderr
            ),
        }
    }

    /// Wait for the child to exit. `Err` carries what it printed if it had to be killed.
    pub fn wait_or_kill(&mut self, timeout: Duration) -> Result<Output, Output> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Ok(self.collect(status));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait after kill");
                return Err(self.collect(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Signal the child (e.g. `libc::SIGKILL` to simulate a crash) without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        let take = |h: Option<JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Output {
            status,
            stdout: take(self.stdout.take()),
            stderr: take(self.stderr.take()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Where a binary of this workspace is: `$<env_var>`, else next to this test binary's `deps/`
/// folder (which follows whatever target dir and profile cargo used), else
/// `$CARGO_TARGET_DIR/debug`, else the workspace's `target/debug`. `build` is the command that
/// builds it, for the panic message.
pub fn workspace_bin(name: &str, env_var: &str, build: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env_var) {
        return PathBuf::from(bin);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(profile_dir.join(name));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug").join(name));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name),
    );
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("{name} binary not found (looked at {candidates:?}); build it with `{build}` or set {env_var}")
        })
}

/// Polls `logs()` until a line satisfies `pred` and returns it; panics with the whole log
/// after `timeout`. `who` names the process in the message.
pub fn wait_for_log_line(
    who: &str,
    logs: impl Fn() -> String,
    what: &str,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = logs().lines().find(|l| pred(l)) {
            return line.to_owned();
        }
        if Instant::now() >= deadline {
            panic!(
                "no {who} log line {what} within {timeout:?}; log:\n{}",
                logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) for `child` to exit and returns its status; kills it and panics with the
/// log after `timeout`.
pub fn wait_child_exit(
    who: &str,
    child: &mut Child,
    timeout: Duration,
    logs: impl Fn() -> String,
) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{who} did not exit within {timeout:?}; log:\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
