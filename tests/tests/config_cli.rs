//! The `gatehouse` command line and lifecycle, end to end: `check-config` exit codes and
//! messages that name the offending field, `print-default-config`, `--help`, the ready file,
//! both accepted apiVersions, a config folder, JSON logs, and graceful shutdown on SIGTERM.
//!
//! Not the place for validation rules one by one: those are unit tests in `frontend`. These
//! check that the binary wires them to exit codes and output a user sees.

use std::time::Duration;

use e2e::broker::{DEFAULT_LISTENER, gatehouse};
use e2e::raw::connect_v5;
use e2e::{Broker, RawClient, Recv, WAIT, broker_config, unique_id};
use mqtt::{Packet, QoS, ReasonCode};

/// Write `yaml` to a temporary file and run `gatehouse --config FILE check-config`.
fn check_config(yaml: &str) -> e2e::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write");
    gatehouse(&[
        "--config",
        path.to_str().expect("utf-8 path"),
        "check-config",
    ])
}

fn assert_rejected(yaml: &str, must_name: &[&str]) {
    let out = check_config(yaml);
    assert_eq!(out.code(), Some(2), "invalid config must exit 2: {out:?}");
    for name in must_name {
        assert!(
            out.stderr.contains(name),
            "stderr should name {name:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn check_config_accepts_a_valid_file() {
    let out = check_config(&broker_config(
        "maxPacketSizeBytes: 1024, maxKeepAliveSeconds: 60",
    ));
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn check_config_names_an_out_of_range_field() {
    assert_rejected(
        &broker_config("maxPacketSizeBytes: 0"),
        &["spec.advanced.clients.maxPacketSizeBytes"],
    );
}

#[test]
fn check_config_names_a_mistyped_field() {
    assert_rejected(
        &broker_config("maxReceiveMaximum: 70000"),
        &["maxReceiveMaximum"],
    );
    assert_rejected(
        &broker_config("maxKeepAliveSeconds: soon"),
        &["maxKeepAliveSeconds"],
    );
}

#[test]
fn check_config_names_an_unknown_field() {
    assert_rejected(
        &broker_config("maxKeepAliveSecs: 60"),
        &["maxKeepAliveSecs"],
    );
}

#[test]
fn check_config_names_a_duplicate_port() {
    let yaml = "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: default}\n\
                spec:\n  ports:\n    - {port: 1883}\n    - {port: 1883}\n";
    assert_rejected(yaml, &["spec.ports[1].port"]);
}

#[test]
fn check_config_names_a_bad_api_version() {
    let yaml = DEFAULT_LISTENER.replace("gatehouse.io/v1", "example.com/v9");
    assert_rejected(&yaml, &["apiVersion"]);
}

#[test]
fn check_config_on_a_missing_file_fails() {
    let out = gatehouse(&["--config", "/nonexistent/gatehouse.yaml", "check-config"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("/nonexistent/gatehouse.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn starting_with_an_invalid_config_exits_2_without_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, broker_config("maxPacketSizeBytes: 0")).expect("write");
    let ready = dir.path().join("ready");
    let out = gatehouse(&[
        "--config",
        config.to_str().unwrap(),
        "--ready-file",
        ready.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("maxPacketSizeBytes"), "{}", out.stderr);
    assert!(
        !ready.exists(),
        "a rejected configuration must not report readiness"
    );
}

#[test]
fn print_default_config_is_valid_yaml_that_check_config_accepts() {
    let out = gatehouse(&["print-default-config"]);
    assert!(out.success(), "{out:?}");
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&out.stdout)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).expect("each document parses");
            assert!(
                matches!(v["apiVersion"].as_str(), Some("gatehouse.io/v1")),
                "apiVersion of {v:?}"
            );
            v["kind"].as_str().expect("kind").to_owned()
        })
        .collect();
    assert!(kinds.contains(&"Broker".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"BrokerListener".to_owned()), "{kinds:?}");
    // What it prints is what the broker runs with, so it must validate as-is.
    let check = check_config(&out.stdout);
    assert_eq!(check.code(), Some(0), "{check:?}");
}

use serde::Deserialize as _;

#[test]
fn help_documents_every_flag_and_subcommand() {
    let out = gatehouse(&["--help"]);
    assert!(out.success(), "{out:?}");
    for flag in [
        "--config",
        "--data-dir",
        "--ready-file",
        "--workers",
        "--log ",
        "--log-format",
        "print-default-config",
        "check-config",
    ] {
        assert!(
            out.stdout.contains(flag),
            "--help does not mention {flag}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn ready_file_reports_the_listener_and_the_bound_address() {
    let broker = Broker::start_default();
    let ports = broker.ready_ports();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].listener, "default");
    assert_eq!(ports[0].port, 0, "the configured port");
    assert!(ports[0].local_addr.ip().is_loopback());
    assert_ne!(ports[0].local_addr.port(), 0, "the bound port");
    // And something really listens there.
    std::net::TcpStream::connect(broker.addr()).expect("connect to the reported address");
}

#[test]
fn two_ports_are_both_reported_and_served() {
    let yaml = "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: multi}\n\
                spec:\n  ports:\n    - {port: 0, host: 127.0.0.1}\n    - {port: 0, host: 127.0.0.1}\n";
    let broker = Broker::start(yaml);
    let ports = broker.ready_ports();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert!(ports.iter().all(|p| p.listener == "multi"));
    assert_ne!(ports[0].local_addr, ports[1].local_addr);
    for p in ports {
        std::net::TcpStream::connect(p.local_addr).expect("connect");
    }
}

#[tokio::test]
async fn aio_api_version_is_accepted() {
    let yaml = broker_config("maxKeepAliveSeconds: 42")
        .replace("gatehouse.io/v1", "mqttbroker.iotoperations.azure.com/v1");
    let broker = Broker::start(&yaml);
    let mut connect = connect_v5(&unique_id("aio"));
    connect.keep_alive = 0;
    let (_c, ack) = RawClient::connect_ok(broker.addr(), connect).await;
    // The Broker document was applied, not just parsed.
    assert_eq!(ack.properties.server_keep_alive, Some(42));
}

#[tokio::test]
async fn config_folder_reads_every_yaml_file() {
    let broker = Broker::start_with_config_folder(&[
        (
            "10-broker.yaml",
            "apiVersion: gatehouse.io/v1\nkind: Broker\nmetadata: {name: default}\n\
             spec:\n  advanced:\n    clients: {maxKeepAliveSeconds: 17}\n",
        ),
        ("20-listener.yml", DEFAULT_LISTENER),
        ("README.txt", "not YAML, not read"),
    ]);
    let mut connect = connect_v5(&unique_id("folder"));
    connect.keep_alive = 0;
    let (_c, ack) = RawClient::connect_ok(broker.addr(), connect).await;
    assert_eq!(ack.properties.server_keep_alive, Some(17));
}

#[test]
fn json_log_format_writes_json_lines() {
    let broker = Broker::start_with_args(DEFAULT_LISTENER, &["--log-format", "json"]);
    let logs = broker.logs();
    let first = logs.lines().next().expect("at least the listening line");
    let v: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON: {first:?}: {e}"));
    assert!(v.is_object(), "{v}");
}

#[test]
fn data_dir_is_created() {
    let broker = Broker::start_default();
    assert!(
        broker.dir().join("data").is_dir(),
        "--data-dir was not created"
    );
}

#[tokio::test]
async fn sigterm_disconnects_clients_with_0x8b_and_exits_0() {
    let mut broker = Broker::start_default();
    let mut v5 = RawClient::v5(broker.addr(), &unique_id("term5")).await;
    v5.subscribe("term/t", QoS::AtLeastOnce).await;
    let mut v311 = RawClient::v311(broker.addr(), &unique_id("term311")).await;

    broker.signal(libc::SIGTERM);
    // v5 clients are told why [MQTT-3.14.2]: Server shutting down.
    let d = v5.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::SERVER_SHUTTING_DOWN, "{d:?}");
    v311.expect_closed(WAIT).await;
    let status = broker.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must be a clean exit: {status}"
    );
    // No longer accepting.
    assert!(
        std::net::TcpStream::connect(broker.addr()).is_err(),
        "still accepting after exit"
    );
}

#[tokio::test]
async fn sigterm_with_no_clients_exits_0() {
    let mut broker = Broker::start_default();
    assert_eq!(broker.terminate().code(), Some(0));
}

#[tokio::test]
async fn sigterm_with_a_will_bearing_client_still_exits_0() {
    // The spec lets a server send wills on shutdown or not; what matters here is that a client
    // mid-session when the broker stops does not hang the shutdown.
    let mut broker = Broker::start_default();
    let mut connect = connect_v5(&unique_id("term-will"));
    connect.will = Some(e2e::raw::will("term/will", "bye", QoS::AtLeastOnce));
    let (mut c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    broker.signal(libc::SIGTERM);
    match c.try_recv(WAIT).await {
        Recv::Packet(Packet::Disconnect(_)) | Recv::Closed => {}
        other => panic!("expected DISCONNECT or close on shutdown, got {other:?}"),
    }
    assert_eq!(broker.wait_exit(Duration::from_secs(20)).code(), Some(0));
}
