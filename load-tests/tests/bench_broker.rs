//! `gatehouse-bench` against the real broker (`target/debug/gatehouse`, built with
//! `cargo build -p frontend --bin gatehouse`): a subscriber and publishers as separate
//! processes, with every total checked from the `--json` summaries. Counts only, never timing.
//!
//! Plain TCP and WebSocket listeners are covered. `-L` is emqtt-bench's total for all
//! publishers together, so `-c 5 -L 500` sends 500 messages, not 2500.

mod common;

use common::{Background, bench_ok, counter, read_json};
use e2e::Broker;

/// A subscriber on `filter` that exits once it has received `expect` messages.
fn subscriber(broker: &Broker, dir: &std::path::Path, extra: &[&str], expect: u64) -> Background {
    let port = broker.port().to_string();
    let json = dir.join("sub.json");
    let limit = expect.to_string();
    let mut args = vec![
        "sub",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        "1",
        "--recv-limit",
        &limit,
        "--duration",
        "80",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut sub = Background::spawn(&args);
    // The reporter prints `<t> sub total=1 ...` once the SUBACK is in.
    sub.wait_for_line(" sub total=1 ");
    sub
}

#[test]
fn qos1_totals_through_the_broker() {
    let broker = Broker::start_default();
    let dir = tempfile::tempdir().unwrap();
    let port = broker.port().to_string();
    let sub = subscriber(
        &broker,
        dir.path(),
        &["-t", "bench/#", "-q", "1", "--payload-hdrs", "cnt64,ts"],
        500,
    );
    let pub_json = dir.path().join("pub.json");
    let out = bench_ok(&[
        "pub",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        "5",
        "-i",
        "1",
        "-t",
        "bench/%i",
        "-q",
        "1",
        "-L",
        "500",
        "-I",
        "0",
        "-F",
        "8",
        "--payload-hdrs",
        "cnt64,ts",
        "--json",
        pub_json.to_str().unwrap(),
    ]);
    assert!(out.stdout.contains("publish complete"), "{}", out.stdout);
    let stdout = sub.wait_ok();

    let p = read_json(&pub_json);
    assert_eq!(counter(&p, "connect_succ"), 5);
    assert_eq!(counter(&p, "pub"), 500);
    assert_eq!(counter(&p, "pub_succ"), 500);
    assert_eq!(counter(&p, "pub_fail"), 0);
    assert_eq!(counter(&p, "connection_lost"), 0);

    let s = read_json(&dir.path().join("sub.json"));
    assert_eq!(counter(&s, "connect_succ"), 1);
    assert_eq!(counter(&s, "sub"), 1);
    assert_eq!(counter(&s, "recv"), 500);
    // One topic per publisher, QoS 1 on one connection: nothing lost, nothing reordered.
    assert_eq!(counter(&s, "cnt64_gap"), 0);
    assert_eq!(counter(&s, "cnt64_dup"), 0);
    assert_eq!(s["latency_ms"]["count"], 500, "{s}");
    assert!(stdout.contains(" publish_latency avg="), "{stdout}");
    assert!(stdout.contains(" recv total=500 rate="), "{stdout}");
}

#[test]
fn qos2_mqtt311_totals_through_the_broker() {
    let broker = Broker::start_default();
    let dir = tempfile::tempdir().unwrap();
    let port = broker.port().to_string();
    let sub = subscriber(
        &broker,
        dir.path(),
        &[
            "-V",
            "4",
            "-t",
            "q2/+/x",
            "-q",
            "2",
            "--payload-hdrs",
            "cnt64",
        ],
        300,
    );
    let pub_json = dir.path().join("pub.json");
    bench_ok(&[
        "pub",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "4",
        "-c",
        "3",
        "-i",
        "1",
        "-t",
        "q2/%i/x",
        "-q",
        "2",
        "-L",
        "300",
        "-I",
        "0",
        "-F",
        "4",
        "--payload-hdrs",
        "cnt64",
        "--json",
        pub_json.to_str().unwrap(),
    ]);
    sub.wait_ok();

    let p = read_json(&pub_json);
    assert_eq!(counter(&p, "pub"), 300);
    assert_eq!(counter(&p, "pub_succ"), 300);
    let s = read_json(&dir.path().join("sub.json"));
    assert_eq!(counter(&s, "recv"), 300);
    assert_eq!(counter(&s, "cnt64_gap"), 0);
    assert_eq!(counter(&s, "cnt64_dup"), 0);
    assert!(s["latency_ms"].is_null(), "no ts header, no latency");
}

#[test]
fn conn_counts_connections_and_refusals() {
    let broker = Broker::start_default();
    let dir = tempfile::tempdir().unwrap();
    let port = broker.port().to_string();

    // Spread over two loopback source addresses, as for more than 64k connections.
    let json = dir.path().join("conn.json");
    let out = bench_ok(&[
        "conn",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        "6",
        "-i",
        "0",
        "--ifaddr",
        "127.0.0.2,127.0.0.3",
        "--duration",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.stdout.contains(" connect_succ total=6 rate="),
        "{}",
        out.stdout
    );
    let v = read_json(&json);
    assert_eq!(counter(&v, "connect_succ"), 6);
    assert_eq!(counter(&v, "connect_fail"), 0);
    assert!(v["cpu"]["total_secs"].as_f64().unwrap() > 0.0);

    // Nothing listens on the port of a stopped broker: every attempt is counted, none panics,
    // and with every client ended the run ends by itself.
    drop(broker);
    let json = dir.path().join("refused.json");
    bench_ok(&[
        "conn",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        "3",
        "-i",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    let v = read_json(&json);
    assert_eq!(counter(&v, "connect_fail"), 3);
    assert_eq!(counter(&v, "connection_refused"), 3);
    assert_eq!(counter(&v, "connect_succ"), 0);
}

#[test]
fn websocket_totals_through_the_broker() {
    let broker = Broker::start(
        "apiVersion: gatehouse.io/v1\n\
         kind: BrokerListener\n\
         metadata: {name: default}\n\
         spec:\n  ports:\n    - {port: 0, host: 127.0.0.1, protocol: WebSockets}\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = broker.port().to_string();
    let sub = subscriber(
        &broker,
        dir.path(),
        &["--ws", "-t", "ws/#", "-q", "1", "--payload-hdrs", "ts"],
        200,
    );
    let pub_json = dir.path().join("pub.json");
    bench_ok(&[
        "pub",
        "--ws",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        "4",
        "-i",
        "0",
        "-t",
        "ws/%i",
        "-q",
        "1",
        "-L",
        "200",
        "-I",
        "0",
        "-F",
        "8",
        "--payload-hdrs",
        "ts",
        "--json",
        pub_json.to_str().unwrap(),
    ]);
    sub.wait_ok();
    let p = read_json(&pub_json);
    assert_eq!(counter(&p, "connect_succ"), 4);
    assert_eq!(counter(&p, "pub_succ"), 200);
    let s = read_json(&dir.path().join("sub.json"));
    assert_eq!(counter(&s, "recv"), 200);
    assert_eq!(s["latency_ms"]["count"], 200, "{s}");
}
