//! The frontend ⇄ authentication service split, end to end (issue 4, broker-spec §2, §2.5):
//! `authsvc` as its own process and `gatehouse --authsvc URL`, the embedded default (the same
//! gRPC code over loopback), two replicas with one killed mid-session (new CONNECTs go to the
//! other, live connections are registered again and still receive its pushes), no replica at
//! all (0x88, never an allow), re-authentication while the service is gone (AUTH 0x18),
//! credential expiry with both `expiryAction`s, TLS/mTLS on the channel, and bad policies
//! stopping either binary with the field named.
//!
//! The policies use the development-only `Anonymous` method, so these tests depend on no PKI,
//! token or external server; the real methods have their own files.
//!
//! Needs `cargo build -p frontend --bin gatehouse` and `cargo build -p authsvc --bin authsvc`
//! (scripts/test.sh does both).

use std::time::Duration;

use bytes::Bytes;
use e2e::authsvc::run_authsvc;
use e2e::broker::gatehouse;
use e2e::pki::{Authority, KeyKind};
use e2e::raw::{connect_v5, connect_v311};
use e2e::{Authsvc, Broker, RawClient, Recv, WAIT, unique_id};
use mqtt::{Auth, Connect, Packet, Properties, Protocol, QoS, ReasonCode};

/// Port 0 → `anon` (everyone in), port 1 → `closed` (everyone refused), port 2 → no
/// `authenticationRef` (no authentication at all).
const LISTENER: &str = "\
apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {name: default}
spec:
  ports:
    - {port: 0, host: 127.0.0.1, authenticationRef: anon}
    - {port: 0, host: 127.0.0.1, authenticationRef: closed}
    - {port: 0, host: 127.0.0.1}
";

/// [`LISTENER`] after the policy `anon` was dropped.
const LISTENER_WITHOUT_ANON: &str = "\
apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {name: default}
spec:
  ports:
    - {port: 0, host: 127.0.0.1, authenticationRef: closed}
";

fn policy(name: &str, settings: &str, extra_spec: &str) -> String {
    format!(
        "---\napiVersion: gatehouse.io/v1\nkind: BrokerAuthentication\nmetadata: {{name: {name}}}\n\
         spec:\n{extra_spec}  authenticationMethods:\n    - method: Anonymous\n      \
         anonymousSettings: {settings}\n"
    )
}

/// The configuration both processes read (authsvc uses its BrokerAuthentication documents).
fn config() -> String {
    LISTENER.to_string()
        + &policy("anon", "{allow: true, attributes: {group: dev}}", "")
        + &policy("closed", "{allow: false}", "")
}

const ANON: usize = 0;
const CLOSED: usize = 1;
const OPEN: usize = 2;

fn addr(broker: &Broker, port: usize) -> std::net::SocketAddr {
    broker.ready_ports()[port].local_addr
}

/// A v5 CONNECT with an authentication method, so that the client may re-authenticate
/// ([MQTT-4.12.1-1]: AUTH needs the method CONNECT named).
fn connect_v5_with_method(client_id: &str) -> Connect {
    let mut c = connect_v5(client_id);
    c.properties.authentication_method = Some("ANONYMOUS".to_string());
    c
}

/// The 3.1.1 CONNACK as bytes: type 2, length 2, no session present, `code`.
async fn v311_connack_bytes(addr: std::net::SocketAddr, client_id: &str) -> Vec<u8> {
    let mut c = RawClient::tcp(addr).await;
    c.protocol = Protocol::V311;
    c.send(&Packet::Connect(Box::new(connect_v311(client_id, true))))
        .await;
    c.recv_bytes(4).await
}

/// What every deployment shape must decide the same way.
async fn decisions(broker: &Broker) {
    // Allowed by the service: v5 and 3.1.1, and the connection works.
    let mut c = RawClient::v5(addr(broker, ANON), &unique_id("anon-v5")).await;
    c.subscribe("split/t", QoS::AtLeastOnce).await;
    assert_eq!(
        c.publish(e2e::raw::publish("split/t", QoS::AtLeastOnce, b"hi"))
            .await,
        ReasonCode::SUCCESS
    );
    assert_eq!(&c.recv_publish_ack().await.payload[..], b"hi");
    assert_eq!(
        v311_connack_bytes(addr(broker, ANON), &unique_id("anon-v3")).await,
        [0x20, 0x02, 0x00, 0x00]
    );

    // Refused by the service: 0x87 with its reason (v5), 0x05 (3.1.1), then closed.
    let (mut refused, ack) =
        RawClient::connect(addr(broker, CLOSED), connect_v5(&unique_id("closed-v5"))).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    assert!(
        ack.properties
            .reason_string
            .as_deref()
            .is_some_and(|r| r.contains("anonymous access is disabled")),
        "{ack:?}"
    );
    refused.expect_closed(WAIT).await;
    assert_eq!(
        v311_connack_bytes(addr(broker, CLOSED), &unique_id("closed-v3")).await,
        [0x20, 0x02, 0x00, 0x05]
    );

    // Scenario 19: no authenticationRef, no authentication, even with bogus credentials.
    let mut bogus = connect_v5(&unique_id("open"));
    bogus.username = Some("nobody".into());
    bogus.password = Some(Bytes::from_static(b"wrong"));
    RawClient::connect_ok(addr(broker, OPEN), bogus).await;
}

/// Split: authsvc is its own process; the frontend reaches it with `--authsvc`.
#[tokio::test]
async fn split_processes_decide_connects() {
    let authsvc = Authsvc::start(&config());
    let broker = Broker::start_with_args(&config(), &["--authsvc", &authsvc.url()]);
    decisions(&broker).await;
    // One Watch stream per frontend process, opened at start-up.
    authsvc.wait_for_log(
        "about the frontend's watch stream",
        |l| l.contains("frontend watch stream open"),
        WAIT,
    );
    let line = broker.wait_for_log(
        "naming the replicas",
        |l| l.contains("authenticating through the authentication service"),
        WAIT,
    );
    assert!(line.contains(&authsvc.url()), "{line}");
    assert!(
        !broker.logs().contains("running in this process"),
        "{}",
        broker.logs()
    );
}

/// Embedded default: no `--authsvc`, the service runs inside gatehouse and is reached over
/// loopback through the same client and service code.
#[tokio::test]
async fn embedded_default_uses_the_same_split_over_loopback() {
    let broker = Broker::start(&config());
    let line = broker.wait_for_log(
        "about the embedded service",
        |l| l.contains("authentication service running in this process"),
        WAIT,
    );
    assert!(line.contains("127.0.0.1:"), "{line}");
    decisions(&broker).await;
    broker.wait_for_log(
        "about the watch stream",
        |l| l.contains("authentication watch stream open"),
        WAIT,
    );
}

/// The embedded service follows `--config` like a separate authsvc does: a changed
/// `BrokerAuthentication` applies to the next CONNECT without a restart, and one that does not
/// load is logged and the running policies kept.
#[tokio::test]
async fn embedded_service_applies_authentication_changes_without_restart() {
    let broker = Broker::start(&config());
    RawClient::connect_ok(addr(&broker, ANON), connect_v5(&unique_id("before"))).await;

    // The two policies swap: `anon` now refuses everyone, `closed` lets everyone in.
    broker.rewrite_config(
        &(LISTENER.to_string()
            + &policy("anon", "{allow: false}", "")
            + &policy("closed", "{allow: true}", "")),
    );
    let line = broker.wait_for_log(
        "about the reload",
        |l| l.contains("configuration reloaded"),
        WAIT,
    );
    assert!(line.contains("anon") && line.contains("closed"), "{line}");
    let (_, ack) = RawClient::connect(addr(&broker, ANON), connect_v5(&unique_id("after"))).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    RawClient::connect_ok(addr(&broker, CLOSED), connect_v5(&unique_id("after"))).await;

    // A policy that does not compile changes nothing.
    broker.rewrite_config(
        &(LISTENER.to_string()
            + &policy("anon", "{allow: maybe}", "")
            + &policy("closed", "{allow: true}", "")),
    );
    broker.wait_for_log(
        "about the rejected configuration",
        |l| l.contains("configuration rejected, keeping the previous one") && l.contains("allow"),
        WAIT,
    );
    let (_, ack) = RawClient::connect(addr(&broker, ANON), connect_v5(&unique_id("kept"))).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    RawClient::connect_ok(addr(&broker, CLOSED), connect_v5(&unique_id("kept"))).await;
}

/// The frontend's log line for its Watch stream opening on the replica at `url`.
fn stream_open_on(url: &str) -> impl Fn(&str) -> bool {
    let needle = format!("replica={url} ");
    move |l: &str| l.contains("authentication watch stream open") && l.contains(&needle)
}

/// A replica dies (kill -9) mid-session: new CONNECTs are decided by the other one, and the
/// live connections are registered there again, so a disconnect the second replica pushes
/// later (its configuration drops their policy) still reaches them. A broken configuration on
/// the way is logged and changes nothing.
#[tokio::test]
async fn a_replica_killed_mid_session_hands_over_to_the_other() {
    let mut first = Authsvc::start(&config());
    let second = Authsvc::start(&config());
    let urls = format!("{},{}", first.url(), second.url());
    let broker = Broker::start_with_args(&config(), &["--authsvc", &urls]);
    broker.wait_for_log(
        "watch stream on the first replica",
        stream_open_on(&first.url()),
        WAIT,
    );

    let mut before = RawClient::v5(addr(&broker, ANON), &unique_id("before")).await;
    first.kill9();

    // New CONNECTs succeed through the second replica.
    let mut after = RawClient::v5(addr(&broker, ANON), &unique_id("after")).await;
    assert_eq!(
        v311_connack_bytes(addr(&broker, ANON), &unique_id("after-v3")).await,
        [0x20, 0x02, 0x00, 0x00]
    );
    // The watch stream moves to the second replica, with every live connection on it.
    broker.wait_for_log(
        "watch stream on the second replica",
        stream_open_on(&second.url()),
        WAIT,
    );

    // A configuration that does not load is logged; the old one stays in force.
    second.rewrite_config("apiVersion: gatehouse.io/v1\nkind: BrokerListener\nspec: [\n");
    second.wait_for_log(
        "rejecting the broken configuration",
        |l| l.contains("configuration rejected, keeping the previous one"),
        WAIT,
    );
    RawClient::v5(addr(&broker, ANON), &unique_id("during"))
        .await
        .sync()
        .await;

    // Drop the policy `anon` on the second replica: it pushes a disconnect for every
    // connection registered with it, including the one that connected through the first.
    let without_anon = LISTENER_WITHOUT_ANON.to_string() + &policy("closed", "{allow: false}", "");
    second.rewrite_config(&without_anon);
    for client in [&mut before, &mut after] {
        let d = client.expect_disconnect(WAIT).await;
        assert_eq!(d.code, ReasonCode::NOT_AUTHORIZED, "{d:?}");
        assert_eq!(
            d.properties.reason_string.as_deref(),
            Some("authentication policy changed")
        );
        client.expect_closed(WAIT).await;
    }
    second.wait_for_log(
        "about the reload",
        |l| l.contains("configuration reloaded") && l.contains("anon"),
        WAIT,
    );
    broker.wait_for_log(
        "about the pushed disconnect",
        |l| l.contains("the authentication service disconnects a client"),
        WAIT,
    );
}

/// Scenario "0x88 when unavailable": no replica answers → v5 CONNACK 0x88, 3.1.1 CONNACK
/// 0x03, never an allow; ports without authentication are not affected.
#[tokio::test]
async fn no_reachable_replica_is_server_unavailable_never_an_allow() {
    // A port nobody listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let urls = format!("http://{dead},http://{dead}");
    let broker = Broker::start_with_args(&config(), &["--authsvc", &urls]);
    for _ in 0..2 {
        let (mut c, ack) =
            RawClient::connect(addr(&broker, ANON), connect_v5(&unique_id("unavailable"))).await;
        assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
        c.expect_closed(WAIT).await;
        // Even the port whose policy refuses everyone answers 0x88, not a guess.
        let (_, ack) =
            RawClient::connect(addr(&broker, CLOSED), connect_v5(&unique_id("unavailable"))).await;
        assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
        assert_eq!(
            v311_connack_bytes(addr(&broker, ANON), &unique_id("unavailable-v3")).await,
            [0x20, 0x02, 0x00, 0x03]
        );
    }
    RawClient::v5(addr(&broker, OPEN), &unique_id("open"))
        .await
        .sync()
        .await;
    broker.wait_for_log(
        "about the unavailable service",
        |l| l.contains("authentication unavailable"),
        WAIT,
    );
}

async fn reauthenticate(c: &mut RawClient) -> Auth {
    c.send(&Packet::Auth(Auth {
        code: ReasonCode::REAUTHENTICATE,
        properties: Properties {
            authentication_method: Some("ANONYMOUS".to_string()),
            ..Properties::default()
        },
    }))
    .await;
    match c.recv().await {
        Packet::Auth(a) => a,
        other => panic!("expected AUTH, got {other:?}"),
    }
}

/// Scenarios 21 and 23 through the split: re-authentication goes to the service (AUTH 0x00);
/// with the service gone it gets AUTH 0x18 and the connection stays; a new CONNECT gets 0x88.
#[tokio::test]
async fn reauthentication_while_the_service_is_gone_gets_auth_0x18() {
    let mut authsvc = Authsvc::start(&config());
    let broker = Broker::start_with_args(&config(), &["--authsvc", &authsvc.url()]);
    let (mut c, _) = RawClient::connect_ok(
        addr(&broker, ANON),
        connect_v5_with_method(&unique_id("re")),
    )
    .await;
    let ok = reauthenticate(&mut c).await;
    assert_eq!(ok.code, ReasonCode::SUCCESS, "{ok:?}");

    authsvc.kill9();
    let later = reauthenticate(&mut c).await;
    assert_eq!(later.code, ReasonCode::CONTINUE_AUTHENTICATION, "{later:?}");
    c.sync().await;
    let (_, ack) = RawClient::connect(addr(&broker, ANON), connect_v5(&unique_id("new"))).await;
    assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
    c.sync().await;
}

/// Scenarios 20 and 26 through the split, and `spec.expiryAction`: by default the connection
/// is closed without DISCONNECT when the credential expires; with `Disconnect`, v5 clients get
/// DISCONNECT 0x87 "credential expired" first (3.1.1 clients are just closed). Logged with the
/// cause either way.
#[tokio::test]
async fn credential_expiry_closes_or_disconnects_per_policy() {
    let yaml = "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: default}\n\
                spec:\n  ports:\n    - {port: 0, host: 127.0.0.1, authenticationRef: close}\n    \
                - {port: 0, host: 127.0.0.1, authenticationRef: notify}\n"
        .to_string()
        + &policy("close", "{allow: true, expirySeconds: 2}", "")
        + &policy(
            "notify",
            "{allow: true, expirySeconds: 2}",
            "  expiryAction: Disconnect\n",
        );
    let authsvc = Authsvc::start(&yaml);
    let broker = Broker::start_with_args(&yaml, &["--authsvc", &authsvc.url()]);

    let mut closed = RawClient::v5(addr(&broker, 0), &unique_id("exp-close")).await;
    let mut notified = RawClient::v5(addr(&broker, 1), &unique_id("exp-notify")).await;
    let mut v3 = RawClient::v311(addr(&broker, 1), &unique_id("exp-v3")).await;

    match closed.try_recv(WAIT).await {
        Recv::Closed => {}
        other => panic!("expected a close without DISCONNECT, got {other:?}"),
    }
    let d = notified.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::NOT_AUTHORIZED, "{d:?}");
    assert_eq!(
        d.properties.reason_string.as_deref(),
        Some("credential expired")
    );
    notified.expect_closed(WAIT).await;
    v3.expect_closed(WAIT).await;
    broker.wait_for_log(
        "about the expiry",
        |l| l.contains("credential expired"),
        WAIT,
    );
}

/// The channel between frontend and authsvc with mutual TLS: a frontend with the CA and a
/// client certificate is served; one without a certificate is refused by the service, which
/// its clients see as 0x88.
#[tokio::test]
async fn the_channel_can_use_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::root("authsvc-ca", KeyKind::Ec256);
    let server = ca
        .server("authsvc", &["127.0.0.1", "localhost"])
        .write(dir.path(), "server");
    let frontend = ca.client("frontend").write(dir.path(), "frontend");
    let ca_file = ca.write_cert(&dir.path().join("ca.crt"));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let authsvc = Authsvc::start_with_args(
        &config(),
        &[
            "--tls-cert",
            &path(&server.cert),
            "--tls-key",
            &path(&server.key),
            "--client-ca",
            &path(&ca_file),
        ],
    );
    let broker = Broker::start_with_args(
        &config(),
        &[
            "--authsvc",
            &authsvc.https_url(),
            "--authsvc-ca",
            &path(&ca_file),
            "--authsvc-cert",
            &path(&frontend.cert),
            "--authsvc-key",
            &path(&frontend.key),
        ],
    );
    decisions(&broker).await;

    let anonymous = Broker::start_with_args(
        &config(),
        &[
            "--authsvc",
            &authsvc.https_url(),
            "--authsvc-ca",
            &path(&ca_file),
        ],
    );
    let (_, ack) =
        RawClient::connect(addr(&anonymous, ANON), connect_v5(&unique_id("no-cert"))).await;
    assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
}

/// A policy that does not compile stops either binary at start with exit code 2 and the
/// field named; so does a bad `expiryAction` in a frontend pointed at remote replicas.
#[test]
fn bad_policies_are_fatal_and_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, yaml: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p.to_str().unwrap().to_string()
    };
    let bad_method = write(
        "bad-method.yaml",
        &(LISTENER.to_string()
            + &policy("anon", "{allow: yes-please}", "")
            + &policy("closed", "{allow: false}", "")),
    );
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let field =
        "BrokerAuthentication \"anon\" spec.authenticationMethods[0].anonymousSettings.allow";

    let out = gatehouse(&["--config", &bad_method, "--data-dir", data]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains(field), "{}", out.stderr);

    let out = run_authsvc(&["--config", &bad_method, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains(field), "{}", out.stderr);

    let bad_action = write(
        "bad-action.yaml",
        &(LISTENER.to_string()
            + &policy("anon", "{allow: true}", "  expiryAction: Whenever\n")
            + &policy("closed", "{allow: false}", "")),
    );
    let out = gatehouse(&[
        "--config",
        &bad_action,
        "--data-dir",
        data,
        "--authsvc",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("BrokerAuthentication \"anon\" spec.expiryAction"),
        "{}",
        out.stderr
    );
    let out = run_authsvc(&["--config", &bad_action, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("spec.expiryAction"), "{}", out.stderr);
}

/// SIGTERM ends the service cleanly even with a frontend's Watch stream open; the frontend
/// keeps its live connections and ports without authentication, and refuses new CONNECTs on
/// the others with 0x88.
#[tokio::test]
async fn authsvc_stops_on_sigterm_with_streams_open() {
    let mut authsvc = Authsvc::start(&config());
    let broker = Broker::start_with_args(&config(), &["--authsvc", &authsvc.url()]);
    authsvc.wait_for_log(
        "about the frontend's watch stream",
        |l| l.contains("frontend watch stream open"),
        WAIT,
    );
    let mut live = RawClient::v5(addr(&broker, ANON), &unique_id("live")).await;
    let status = authsvc.terminate();
    assert!(status.success(), "{status:?}\n{}", authsvc.logs());
    broker.wait_for_log(
        "about the lost stream",
        |l| l.contains("authentication watch stream lost"),
        Duration::from_secs(20),
    );
    let (_, ack) = RawClient::connect(addr(&broker, ANON), connect_v5(&unique_id("after"))).await;
    assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
    RawClient::v5(addr(&broker, OPEN), &unique_id("open"))
        .await
        .sync()
        .await;
    // Scenario 27: a live connection does not depend on the service being there.
    live.sync().await;
}
