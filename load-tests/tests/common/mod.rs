//! Running the `gatehouse-bench` binary from integration tests: to completion with a deadline,
//! or in the background while watching its report lines. Every wait is bounded; nothing here
//! asserts on timing.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::process::{self, Output};
use serde_json::Value;

/// Generous: a debug build on a shared two-core machine. A run that takes this long has failed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

pub fn bench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse-bench")
}

/// Run `gatehouse-bench <args>` to completion.
pub fn bench(args: &[&str]) -> Output {
    process::run(Command::new(bench_bin()).args(args), RUN_TIMEOUT)
}

/// Run to completion and insist on exit status 0.
pub fn bench_ok(args: &[&str]) -> Output {
    let out = bench(args);
    assert!(
        out.success(),
        "gatehouse-bench {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no --json output at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// A counter total from a `--json` summary.
pub fn counter(summary: &Value, name: &str) -> u64 {
    summary["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {summary}"))
}

/// `gatehouse-bench` running in the background, its stdout lines readable as they come.
pub struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Background {
    pub fn spawn(args: &[&str]) -> Background {
        let mut child = Command::new(bench_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gatehouse-bench");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Wait (bounded) for a report line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.child.kill();
        panic!(
            "no line containing {needle:?} from gatehouse-bench; stdout so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Wait (bounded) for the process to exit on its own with status 0; returns its stdout.
    pub fn wait_ok(mut self) -> String {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("gatehouse-bench did not exit within {RUN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        let stdout = self.seen.join("\n");
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        assert!(
            status.success(),
            "gatehouse-bench exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
