//! The `Custom` authentication method end to end (broker-spec §2.2, §2.5, §3): the real broker
//! (embedded authentication service) against the fake custom authentication server of
//! `e2e::fake_custom_auth` over HTTPS on loopback, driven by the raw codec client.
//!
//! Scenarios 12–18 (decisions, fall-through, attributes, version negotiation, the request on
//! the wire, reason 0) and 20–23, 26 (expiry closes the connection without DISCONNECT,
//! re-authentication success / refusal / unreachable server, 3.1.1). The second method of
//! the fall-through policies is the development-only `Anonymous` method, standing in for SAT.
//!
//! Expiries are a few seconds long; every wait is bounded by the credential's deadline plus
//! [`WAIT`], and the only timing assertion is that a close comes after its deadline.
//!
//! Needs `cargo build -p frontend --bin gatehouse` (scripts/test.sh does it).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use e2e::fake_custom_auth::{Behavior, FakeAuthServer, Recorded};
use e2e::pki::{self, Authority, KeyKind, Pki};
use e2e::raw::{connect_v5, connect_v311};
use e2e::{Broker, RawClient, Recv, WAIT, unique_id};
use mqtt::{Auth, Connect, Packet, Properties, QoS, ReasonCode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

/// Port 0 → [Custom, Anonymous]; port 1 → [Custom] alone; port 2 → [Custom] alone with an
/// authorization policy granting publish on `custom/{group}/#` to attribute `group: g1`.
const THEN_ANONYMOUS: usize = 0;
const ALONE: usize = 1;
const AUTHORIZED: usize = 2;

/// A YAML document (JSON is YAML) with a leading separator.
fn doc(value: Value) -> String {
    format!("---\n{value}\n")
}

fn custom_method(fake: &FakeAuthServer, extra: &Value) -> Value {
    let mut settings = json!({"endpoint": fake.endpoint(), "caCertConfigMap": "auth-server-ca"});
    for (k, v) in extra.as_object().expect("an object") {
        settings[k] = v.clone();
    }
    json!({"method": "Custom", "customSettings": settings})
}

fn authentication(name: &str, methods: Vec<Value>) -> String {
    doc(json!({
        "apiVersion": "gatehouse.io/v1", "kind": "BrokerAuthentication",
        "metadata": {"name": name},
        "spec": {"authenticationMethods": methods},
    }))
}

fn config_map(name: &str, pem: &str) -> String {
    doc(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"ca.pem": pem},
    }))
}

/// The three plain ports above; `extra` is merged into every `customSettings`.
fn config(fake: &FakeAuthServer, extra: Value) -> String {
    let listener = doc(json!({
        "apiVersion": "gatehouse.io/v1", "kind": "BrokerListener",
        "metadata": {"name": "default"},
        "spec": {"ports": [
            {"port": 0, "host": "127.0.0.1", "authenticationRef": "custom-then-anonymous"},
            {"port": 0, "host": "127.0.0.1", "authenticationRef": "custom-alone"},
            {"port": 0, "host": "127.0.0.1", "authenticationRef": "custom-alone",
             "authorizationRef": "group-g1"},
        ]},
    }));
    let authorization = doc(json!({
        "apiVersion": "gatehouse.io/v1", "kind": "BrokerAuthorization",
        "metadata": {"name": "group-g1"},
        "spec": {"authorizationPolicies": {"rules": [{
            "principals": {"attributes": [{"group": "g1"}]},
            "brokerResources": [
                {"method": "Connect"},
                {"method": "Publish", "topics": ["custom/{principal.attributes.group}/#"]},
            ],
        }]}},
    }));
    listener
        + &config_map("auth-server-ca", fake.ca_pem())
        + &authentication(
            "custom-then-anonymous",
            vec![
                custom_method(fake, &extra),
                json!({"method": "Anonymous", "anonymousSettings": {"allow": true}}),
            ],
        )
        + &authentication("custom-alone", vec![custom_method(fake, &extra)])
        + &authorization
}

fn addr(broker: &Broker, port: usize) -> SocketAddr {
    broker.ready_ports()[port].local_addr
}

fn user(prefix: &str) -> String {
    unique_id(prefix)
}

/// A v5 CONNECT with username, password and an authentication method (so that the client may
/// re-authenticate with AUTH: [MQTT-4.12.1-1]).
fn connect_as(username: &str) -> Connect {
    let mut c = connect_v5(&unique_id("c"));
    c.username = Some(username.to_string());
    c.password = Some(Bytes::from_static(b"p"));
    c.properties.authentication_method = Some("M".to_string());
    c.properties.authentication_data = Some(Bytes::from_static(b"D"));
    c
}

fn connect_v3_as(username: &str) -> Connect {
    let mut c = connect_v311(&unique_id("c3"), true);
    c.username = Some(username.to_string());
    c.password = Some(Bytes::from_static(b"p"));
    c
}

async fn reauthenticate(c: &mut RawClient, data: &[u8]) -> Auth {
    let properties = Properties {
        authentication_method: Some("M".to_string()),
        authentication_data: Some(Bytes::copy_from_slice(data)),
        ..Properties::default()
    };
    c.send(&Packet::Auth(Auth {
        code: ReasonCode::REAUTHENTICATE,
        properties,
    }))
    .await;
    match c.recv().await {
        Packet::Auth(a) => a,
        other => panic!("expected AUTH, got {other:?}"),
    }
}

/// The last request the fake received for a CONNECT with this username.
fn connect_request(fake: &FakeAuthServer, username: &str) -> Recorded {
    fake.requests()
        .into_iter()
        .rev()
        .find(|r| r.json.as_ref().and_then(|j| j["username"].as_str()) == Some(username))
        .unwrap_or_else(|| panic!("no request for {username}: {:#?}", fake.requests()))
}

/// The expiry the fake answered the last AUTH request with.
fn last_auth_expiry(fake: &FakeAuthServer) -> SystemTime {
    fake.requests()
        .into_iter()
        .rev()
        .find(|r| r.kind() == Some("auth"))
        .and_then(|r| r.answered_expiry())
        .expect("an AUTH request answered with an expiry")
}

fn until(deadline: SystemTime) -> Duration {
    deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// The connection is closed without any packet (no DISCONNECT, broker-spec §2.5), and not
/// before `deadline` (a few ms of slack for clock granularity between SystemTime and timers).
async fn expect_closed_at(c: &mut RawClient, deadline: SystemTime) {
    match c.try_recv(until(deadline) + WAIT).await {
        Recv::Closed => {}
        other => panic!("expected the connection to close at expiry, got {other:?}"),
    }
    let now = SystemTime::now() + Duration::from_millis(20);
    assert!(
        now >= deadline,
        "closed {:?} before the credential's expiry",
        deadline.duration_since(now).unwrap_or_default()
    );
}

/// Sleeps until `deadline` has passed by a margin, then proves the connection is alive.
async fn outlives(c: &mut RawClient, deadline: SystemTime) {
    tokio::time::sleep(until(deadline) + Duration::from_millis(500)).await;
    c.sync().await;
}

fn wait_for_log(broker: &Broker, what: &str, needles: &[&str]) -> String {
    tokio::task::block_in_place(|| {
        broker.wait_for_log(what, |l| needles.iter().all(|n| l.contains(n)), WAIT)
    })
}

// ------------------------------------------------------------------------------------------------
// Decisions and fall-through
// ------------------------------------------------------------------------------------------------

/// Scenario 12: Custom first decides; its 403 reason 134 is the CONNACK code (3.1.1: 0x04),
/// and the accepting method after it is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_reason_is_the_connack_code_without_fall_through() {
    let fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    let name = user("sat-client");
    fake.on_username(&name, Behavior::deny(134).message("bad password"));
    let mut c = connect_as(&name);
    c.properties.authentication_method = Some("K8S-SAT".into());
    c.properties.authentication_data = Some(Bytes::from_static(b"token"));
    let (mut client, ack) = RawClient::connect(addr(&broker, THEN_ANONYMOUS), c).await;
    assert_eq!(ack.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "{ack:?}");
    client.expect_closed(WAIT).await;

    let mut v3 = RawClient::tcp(addr(&broker, THEN_ANONYMOUS)).await;
    v3.protocol = mqtt::Protocol::V311;
    v3.send(&Packet::Connect(Box::new(connect_v3_as(&name))))
        .await;
    assert_eq!(v3.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x04]);
}

/// Scenario 13: the server is down (connection refused) or too slow: Custom is not relevant,
/// the next method accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_slow_server_falls_through_to_the_next_method() {
    let mut fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({"timeoutMillis": 500})));

    // Slow: answers after the broker's timeout.
    fake.push_next(Behavior::deny(135).after(Duration::from_secs(3)));
    let slow = user("slow");
    RawClient::connect_ok(addr(&broker, THEN_ANONYMOUS), connect_as(&slow)).await;
    connect_request(&fake, &slow);

    // Failing: 5xx.
    fake.push_next(Behavior::status(503));
    RawClient::connect_ok(addr(&broker, THEN_ANONYMOUS), connect_as(&user("5xx"))).await;

    // Down.
    fake.stop().await;
    RawClient::connect_ok(addr(&broker, THEN_ANONYMOUS), connect_as(&user("down"))).await;
    wait_for_log(
        &broker,
        "about the unavailable server",
        &["unavailable", "custom"],
    );
}

/// Scenario 14: the server is down and nothing else is relevant: 0x87 (3.1.1: 0x05).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_and_nothing_else_relevant_is_not_authorized() {
    let mut fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    fake.stop().await;
    let (_, ack) = RawClient::connect(addr(&broker, ALONE), connect_as(&user("u"))).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");

    let mut v3 = RawClient::tcp(addr(&broker, ALONE)).await;
    v3.protocol = mqtt::Protocol::V311;
    v3.send(&Packet::Connect(Box::new(connect_v3_as("u3"))))
        .await;
    assert_eq!(v3.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x05]);
}

/// Scenario 15: the server's attributes become the principal's, usable in authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_from_the_server_drive_authorization() {
    let fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    let member = user("member");
    fake.on_username(&member, Behavior::allow().attribute("group", "g1"));
    let (mut c, _) = RawClient::connect_ok(addr(&broker, AUTHORIZED), connect_as(&member)).await;
    assert_eq!(
        c.publish(e2e::raw::publish("custom/g1/t", QoS::AtLeastOnce, b"x"))
            .await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        c.publish(e2e::raw::publish("custom/g2/t", QoS::AtLeastOnce, b"x"))
            .await,
        ReasonCode::NOT_AUTHORIZED
    );

    // The template's default attribute is not `group: g1`: no Connect grant.
    let (_, ack) =
        RawClient::connect(addr(&broker, AUTHORIZED), connect_as(&user("outsider"))).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
}

/// Scenario 16: a 422 for the first version tried; the broker retries with the one listed and
/// keeps using it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_api_version_is_renegotiated() {
    let fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({"apiVersion": "0.4.0"})));
    let first = user("first");
    RawClient::connect_ok(addr(&broker, ALONE), connect_as(&first)).await;
    let deny = user("deny-after-retry");
    let (_, ack) = RawClient::connect(addr(&broker, ALONE), connect_as(&deny)).await;
    assert_eq!(
        ack.code,
        ReasonCode::NOT_AUTHORIZED,
        "the retry's answer is obeyed"
    );

    let seen: Vec<(Option<String>, u16)> = fake
        .requests()
        .iter()
        .map(|r| (r.api_version().map(str::to_string), r.status))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("0.4.0".to_string()), 422),
            (Some("0.5.0".to_string()), 200),
            (Some("0.5.0".to_string()), 403),
        ]
    );
}

/// Scenario 18: a 403 whose reason is 0 (Success) is a refusal with 0x87, never an allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_with_reason_zero_is_not_authorized() {
    let fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    let name = user("unknown");
    fake.on_username(&name, Behavior::deny(0).message("unknown user"));
    for port in [THEN_ANONYMOUS, ALONE] {
        let (mut c, ack) = RawClient::connect(addr(&broker, port), connect_as(&name)).await;
        assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
        c.expect_closed(WAIT).await;
    }
}

// ------------------------------------------------------------------------------------------------
// The request on the wire
// ------------------------------------------------------------------------------------------------

/// Scenario 17: CONNECT v5 with username, password, method, data and a TLS client certificate
/// → POST /?api-version=0.5.0 with exactly the published JSON, the configured headers, over TLS
/// validated against the configured CA, with the broker's client certificate (mTLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_headers_and_mtls() {
    let broker_client_ca = Authority::root("Broker Client CA", KeyKind::Ec256);
    let broker_identity = broker_client_ca.client("gatehouse");
    let fake = FakeAuthServer::start_mtls(Some(&broker_client_ca)).await;

    let server_pki = Pki::contoso(KeyKind::Ec256);
    let device_pki = Pki::fabrikam(KeyKind::Ec256);
    let device = device_pki.client("device-1");
    // The port asks for client certificates because the policy has an X509 method; Custom,
    // first, decides for every client.
    let listener = doc(json!({
        "apiVersion": "gatehouse.io/v1", "kind": "BrokerListener",
        "metadata": {"name": "default"},
        "spec": {"ports": [{"port": 0, "host": "127.0.0.1", "authenticationRef": "custom-mtls",
            "tls": {"mode": "Manual", "manual": {"secretRef": "broker-server-cert"}}}]},
    }));
    let yaml = listener
        + &server_pki
            .server("localhost", &["localhost", "127.0.0.1"])
            .secret_yaml("broker-server-cert")
        + &broker_identity.secret_yaml("auth-client-cert")
        + &config_map("auth-server-ca", fake.ca_pem())
        + &pki::config_map_yaml("device-ca", "ca.pem", &[&device_pki.root.cert])
        + &authentication(
            "custom-mtls",
            vec![
                custom_method(
                    &fake,
                    &json!({
                        "auth": {"x509": {"secretRef": "auth-client-cert"}},
                        "headers": {"x-api-key": "k3y", "X-Tenant": "contoso"},
                    }),
                ),
                json!({"method": "X509", "x509Settings": {"trustedClientCaCert": "device-ca"}}),
            ],
        );
    let broker = Broker::start(&yaml);

    let tls = pki::handshake(
        addr(&broker, 0),
        "localhost",
        pki::client_config(&[&server_pki.root.cert.der], Some(&device)),
    )
    .await
    .expect("TLS handshake with a client certificate");
    let (_client, ack) = RawClient::over(tls.stream)
        .connect_on(connect_as("u"))
        .await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");

    let requests = fake.wait_for_requests(1).await;
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"));
    assert_eq!(r.query.as_deref(), Some("api-version=0.5.0"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-api-key"), Some("k3y"));
    assert_eq!(r.header("x-tenant"), Some("contoso"));
    assert_eq!(r.client_chain.first(), broker_identity.chain().first());

    let body = r.json.clone().expect("a JSON body");
    let certs = body["certs"].as_str().expect("certs");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certs.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certs is a PEM chain");
    assert_eq!(chain.first(), Some(&device.cert.der), "leaf first");
    assert!(chain.contains(&device_pki.intermediate.cert.der), "{certs}");
    assert_eq!(
        body,
        json!({
            "type": "connect",
            "username": "u",
            "password": "cA==",
            "certs": certs,
            "enhancedAuthentication": {"method": "M", "data": "RA=="},
        })
    );
    // Field order as published.
    let text = String::from_utf8(r.body.to_vec()).expect("UTF-8");
    let order: Vec<usize> = [
        "\"type\"",
        "\"username\"",
        "\"password\"",
        "\"certs\"",
        "\"enhanced",
    ]
    .iter()
    .map(|k| text.find(k).expect("field present"))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
}

// ------------------------------------------------------------------------------------------------
// Expiry and re-authentication
// ------------------------------------------------------------------------------------------------

/// Scenario 20: at the server's expiry the connection is closed without DISCONNECT, and the
/// broker logs why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_the_connection_without_disconnect() {
    let fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    let name = user("expiring");
    fake.on_username(&name, Behavior::allow().expires_in(Duration::from_secs(3)));
    let connect = connect_as(&name);
    let client_id = connect.client_id.clone();
    let (mut c, _) = RawClient::connect_ok(addr(&broker, ALONE), connect).await;
    let deadline = connect_request(&fake, &name)
        .answered_expiry()
        .expect("an expiry");
    expect_closed_at(&mut c, deadline).await;
    wait_for_log(
        &broker,
        "about the expiry-driven disconnect",
        &[&client_id, "credential expired"],
    );
}

/// Scenario 26: a 3.1.1 client with an expiring credential is closed at expiry too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_client_is_closed_at_expiry() {
    let fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    // The template's rule: `expire*` users get 10 s; this test sets a shorter one.
    let name = user("expire-v3");
    fake.on_username(&name, Behavior::allow().expires_in(Duration::from_secs(3)));
    let (mut c, _) = RawClient::connect_ok(addr(&broker, ALONE), connect_v3_as(&name)).await;
    let deadline = connect_request(&fake, &name)
        .answered_expiry()
        .expect("an expiry");
    expect_closed_at(&mut c, deadline).await;
}

/// Scenario 21: AUTH 0x19 before expiry → AUTH 0x00; the connection outlives the first
/// deadline and is closed at the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_moves_the_deadline() {
    let fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    let name = user("renewing");
    fake.on_username(&name, Behavior::allow().expires_in(Duration::from_secs(3)));
    fake.on_auth_data(
        b"renew",
        Behavior::allow().expires_in(Duration::from_secs(6)),
    );
    let (mut c, _) = RawClient::connect_ok(addr(&broker, ALONE), connect_as(&name)).await;
    let first = connect_request(&fake, &name)
        .answered_expiry()
        .expect("an expiry");

    let ok = reauthenticate(&mut c, b"renew").await;
    assert_eq!(ok.code, ReasonCode::SUCCESS, "{ok:?}");
    let auth = fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.kind() == Some("auth"))
        .expect("the AUTH was forwarded");
    assert_eq!(
        auth.json.expect("JSON"),
        json!({"type": "auth", "enhancedAuthentication": {"method": "M", "data": "cmVuZXc="}})
    );
    let second = last_auth_expiry(&fake);
    assert!(second > first);

    outlives(&mut c, first).await;
    expect_closed_at(&mut c, second).await;
}

/// Scenario 22: a refused re-authentication ends with DISCONNECT 0x87.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reauthentication_disconnects() {
    let fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    fake.on_auth_data(b"bad", Behavior::deny(134));
    let (mut c, _) = RawClient::connect_ok(addr(&broker, ALONE), connect_as(&user("u"))).await;
    let properties = Properties {
        authentication_method: Some("M".to_string()),
        authentication_data: Some(Bytes::from_static(b"bad")),
        ..Properties::default()
    };
    c.send(&Packet::Auth(Auth {
        code: ReasonCode::REAUTHENTICATE,
        properties,
    }))
    .await;
    let d = c.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::NOT_AUTHORIZED, "{d:?}");
}

/// Scenario 23: with the server unreachable a re-authentication gets AUTH 0x18 and the
/// connection keeps its old deadline (closed then); a later successful re-authentication
/// extends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_while_the_server_is_down_keeps_the_old_deadline() {
    let mut fake = FakeAuthServer::start().await;
    let broker = Broker::start(&config(&fake, json!({})));
    let (a, b) = (user("a"), user("b"));
    for name in [&a, &b] {
        fake.on_username(name, Behavior::allow().expires_in(Duration::from_secs(4)));
    }
    fake.on_auth_data(
        b"renew",
        Behavior::allow().expires_in(Duration::from_secs(8)),
    );
    let (mut ca, _) = RawClient::connect_ok(addr(&broker, ALONE), connect_as(&a)).await;
    let (mut cb, _) = RawClient::connect_ok(addr(&broker, ALONE), connect_as(&b)).await;
    let deadline_a = connect_request(&fake, &a)
        .answered_expiry()
        .expect("expiry");
    let deadline_b = connect_request(&fake, &b)
        .answered_expiry()
        .expect("expiry");

    fake.stop().await;
    for c in [&mut ca, &mut cb] {
        let later = reauthenticate(c, b"renew").await;
        assert_eq!(later.code, ReasonCode::CONTINUE_AUTHENTICATION, "{later:?}");
        c.sync().await;
    }

    fake.restart().await;
    let ok = reauthenticate(&mut cb, b"renew").await;
    assert_eq!(ok.code, ReasonCode::SUCCESS, "{ok:?}");

    expect_closed_at(&mut ca, deadline_a).await;
    outlives(&mut cb, deadline_b).await;
}
