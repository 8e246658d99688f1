//! The side-by-side benchmark harness (`load-tests/harness/harness.py`) end to end in its
//! `--quick` form: tiny counts, one repetition, the debug binaries, against the real `gatehouse`
//! and Debian's mosquitto, writing into a temporary directory instead of `docs/`.
//!
//! It checks only that every scenario produced figures: for both brokers, or for Gatehouse
//! alone where mosquitto has no equivalent (re-authentication, credential expiry), with the
//! reason in the document. The authentication-service scenarios run too, embedded and split
//! (`authsvc` as its own process). No timing assertions: the numbers of a quick run on a
//! debug build mean nothing.
//!
//! Needs `python3`, `openssl` and mosquitto (`/usr/sbin/mosquitto`, with `mosquitto_passwd`);
//! scripts/test.sh installs them, and builds `authsvc`. Without them this test fails, with a
//! message saying what is missing; it never skips.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::process;
use serde_json::Value;

/// The quick run takes about 50 s on a debug build; past this it has hung.
const TIMEOUT: Duration = Duration::from_secs(240);

const BROKERS: [&str; 2] = ["gatehouse", "mosquitto"];

/// Scenarios a quick run must measure on both brokers.
const MEASURED: [&str; 10] = [
    "p2p_qos0",
    "p2p_qos1",
    "fanout",
    "fanin_shared",
    "latency",
    "tls_connrate",
    "idle_memory_plain_10k",
    "idle_memory_tls_10k",
    "tls_connrate_authsvc",
    "tls_connrate_authsvc_split",
];

/// Scenarios mosquitto cannot take part in: measured on Gatehouse only, with the reason.
const GATEHOUSE_ONLY: [(&str, &str); 4] = [
    ("reauth_storm", "mosquitto cannot re-authenticate"),
    ("reauth_storm_split", "mosquitto cannot re-authenticate"),
    ("credential_expiry", "mosquitto has no credential expiry"),
    (
        "credential_expiry_split",
        "mosquitto has no credential expiry",
    ),
];

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn mosquitto() -> PathBuf {
    let path = PathBuf::from("/usr/sbin/mosquitto");
    assert!(
        path.is_file(),
        "mosquitto is not installed at {}: the benchmark harness compares against it. Install \
         Debian's mosquitto (`apt-get install mosquitto`; scripts/test.sh does this).",
        path.display()
    );
    path
}

fn number(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite(), "{what} is not finite: {x}");
    x
}

#[test]
fn harness_quick_run_measures_every_scenario_on_both_brokers() {
    let mosquitto = mosquitto();
    assert!(
        runs("python3", "--version"),
        "python3 not found: the benchmark harness is a Python script (scripts/test.sh installs it)"
    );
    assert!(
        runs("openssl", "version"),
        "openssl not found: the harness makes its TLS certificate with it (scripts/test.sh \
         installs it)"
    );
    let out_dir = tempfile::Builder::new()
        .prefix("gatehouse-harness-smoke-")
        .tempdir()
        .unwrap();
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/harness.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&harness)
        .args(["--quick", "--no-build", "--profile", "debug"])
        .arg("--gatehouse-bin")
        .arg(e2e::gatehouse_bin())
        .arg("--bench-bin")
        .arg(env!("CARGO_BIN_EXE_gatehouse-bench"))
        .arg("--authsvc-bin")
        .arg(e2e::authsvc::authsvc_bin())
        .arg("--mosquitto-bin")
        .arg(&mosquitto)
        .arg("--out-dir")
        .arg(out_dir.path());
    let out = process::run(&mut cmd, TIMEOUT);
    assert!(
        out.success(),
        "harness failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );

    let results: Vec<PathBuf> = std::fs::read_dir(out_dir.path().join("results"))
        .expect("results directory")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(results.len(), 1, "one results file: {results:?}");
    let text = std::fs::read_to_string(&results[0]).unwrap();
    let res: Value = serde_json::from_str(&text).expect("results are JSON");
    assert_eq!(res["quick"], true);
    assert_eq!(res["repetitions"], 1);

    let mut measured = BTreeSet::new();
    let mut gatehouse_only = BTreeSet::new();
    for sc in res["scenarios"].as_array().expect("scenarios") {
        let id = sc["id"].as_str().unwrap();
        let only = GATEHOUSE_ONLY.iter().find(|(g, _)| *g == id);
        let brokers: &[&str] = if only.is_some() {
            &BROKERS[..1]
        } else {
            &BROKERS
        };
        match sc["status"].as_str().unwrap() {
            "measured" => {
                if let Some((_, reason)) = only {
                    assert!(
                        sc["runs"].get("mosquitto").is_none(),
                        "{id}: no mosquitto runs: {sc}"
                    );
                    let why = sc["no_mosquitto"].as_str().unwrap_or_default();
                    assert!(why.contains(reason), "{id}: the reason: {sc}");
                    gatehouse_only.insert(id.to_owned());
                } else {
                    measured.insert(id.to_owned());
                }
                for &broker in brokers {
                    let runs = sc["runs"][broker].as_array().unwrap();
                    assert_eq!(runs.len(), 1, "{id} {broker}: {runs:?}");
                    assert!(runs[0]["error"].is_null(), "{id} {broker}: {}", runs[0]);
                    for metric in sc["metrics"].as_array().unwrap() {
                        let key = metric["key"].as_str().unwrap();
                        let what = format!("{id} {broker} {key}");
                        number(&runs[0]["metrics"][key], &what);
                        number(&sc["summary"][broker][key]["median"], &what);
                    }
                }
            }
            // The 50k-connection variants belong to the full run only.
            "not run" => assert_eq!(sc["full_only"], true, "{id} was not run: {sc}"),
            other => panic!("{id}: status {other}: {sc}"),
        }
    }
    assert_eq!(
        measured,
        MEASURED.iter().map(|s| s.to_string()).collect(),
        "measured scenarios"
    );
    assert_eq!(
        gatehouse_only,
        GATEHOUSE_ONLY.iter().map(|(s, _)| s.to_string()).collect(),
        "Gatehouse-only scenarios"
    );

    // The generator measured what these figures are made of.
    let runs = |id: &str| -> Value {
        res["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|sc| sc["id"] == id)
            .map(|sc| sc["runs"]["gatehouse"][0].clone())
            .unwrap()
    };
    for id in ["reauth_storm", "reauth_storm_split"] {
        let storm = runs(id);
        assert!(
            storm["checks"]["reauth_succ_in_interval"].as_u64().unwrap() > 0,
            "{id}: {storm}"
        );
    }
    for id in ["credential_expiry", "credential_expiry_split"] {
        let expiry = runs(id);
        assert_eq!(
            expiry["generator"]["conn"]["expiry_delay_ms"]["count"], expiry["checks"]["closed"],
            "{id}: {expiry}"
        );
    }
    let split = runs("tls_connrate_authsvc_split");
    assert!(
        split["generator"]["probe"]["connect_latency_ms"]["count"]
            .as_u64()
            .unwrap()
            > 0,
        "{split}"
    );

    let doc = std::fs::read_to_string(out_dir.path().join("benchmarks.md")).expect("document");
    assert!(doc.contains("QUICK VALIDATION RUN"), "{doc}");
    assert!(!doc.contains("TODO"), "no scenario is left as TODO: {doc}");
    for (_, reason) in GATEHOUSE_ONLY {
        assert!(doc.contains(reason), "{reason}: {doc}");
    }
    let name = results[0].file_name().unwrap().to_str().unwrap();
    assert!(
        doc.contains(name),
        "the document names its results file {name}"
    );
}
