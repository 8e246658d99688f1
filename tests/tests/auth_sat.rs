//! The `ServiceAccountToken` method end to end (broker-spec §2.2, §2.3, §2.5; scenarios 7, 8,
//! 9, 24): the real `gatehouse` binary, its embedded authentication service, and a fake
//! Kubernetes API server on loopback (`e2e::fake_kube`) that the service reaches through
//! `KUBECONFIG`, exactly as a broker outside the cluster would. One test runs the split
//! variant: `authsvc` as its own process holding the `KUBECONFIG`, and `gatehouse --authsvc
//! URL` without one.
//!
//! Needs `cargo build -p frontend --bin gatehouse` and, for the split variant, `cargo build -p
//! authsvc --bin authsvc` (scripts/test.sh does both).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use e2e::fake_kube::{BROKER_TOKEN, Endpoint, FakeKube, KeyKind};
use e2e::raw::{connect_v5, connect_v311, publish};
use e2e::{Authsvc, Broker, RawClient, Recv, WAIT, unique_id};
use mqtt::{Auth, Connect, Packet, Properties, Protocol, QoS, ReasonCode};
use tempfile::TempDir;

const AUD: &str = "aio-internal";
const NS: &str = "factory";

/// One port with `authenticationRef: sat` (and `authorizationRef: z` when `authz` is given).
fn config(sat_settings: &str, authz: Option<&str>) -> String {
    let authz_ref = if authz.is_some() {
        ", authorizationRef: z"
    } else {
        ""
    };
    let mut yaml = format!(
        "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {{name: default}}\n\
         spec:\n  ports:\n    - {{port: 0, host: 127.0.0.1, authenticationRef: sat{authz_ref}}}\n\
         ---\napiVersion: gatehouse.io/v1\nkind: BrokerAuthentication\nmetadata: {{name: sat}}\n\
         spec:\n  authenticationMethods:\n    - method: ServiceAccountToken\n      \
         serviceAccountTokenSettings: {sat_settings}\n"
    );
    if let Some(rules) = authz {
        yaml += &format!(
            "---\napiVersion: gatehouse.io/v1\nkind: BrokerAuthorization\nmetadata: {{name: z}}\n\
             spec:\n  authorizationPolicies:\n    rules:\n{rules}"
        );
    }
    yaml
}

/// The broker, with `KUBECONFIG` pointing at `kube` (the kubeconfig lives in the returned dir).
fn start(kube: &FakeKube, yaml: &str) -> (Broker, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let broker = Broker::start_with_env(yaml, &[], &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    (broker, dir)
}

fn sat_connect(client_id: &str, token: &str) -> Connect {
    let mut c = connect_v5(client_id);
    c.properties.authentication_method = Some("K8S-SAT".into());
    c.properties.authentication_data = Some(Bytes::from(token.to_string()));
    c
}

/// The 3.1.1 form: username `K8S-SAT`, the token as password; returns the CONNACK bytes.
async fn v311_sat_connack(addr: SocketAddr, token: &str) -> (RawClient, Vec<u8>) {
    let mut connect = connect_v311(&unique_id("sat-v3"), true);
    connect.username = Some("K8S-SAT".into());
    connect.password = Some(Bytes::from(token.to_string()));
    let mut c = RawClient::tcp(addr).await;
    c.protocol = Protocol::V311;
    c.send(&Packet::Connect(Box::new(connect))).await;
    let bytes = c.recv_bytes(4).await;
    (c, bytes)
}

/// AUTH 0x19 with method `K8S-SAT` and `token` as data.
fn reauth_packet(token: &str) -> Packet {
    Packet::Auth(Auth {
        code: ReasonCode::REAUTHENTICATE,
        properties: Properties {
            authentication_method: Some("K8S-SAT".into()),
            authentication_data: Some(Bytes::from(token.to_string())),
            ..Properties::default()
        },
    })
}

async fn reauthenticate(c: &mut RawClient, token: &str) -> Auth {
    c.send(&reauth_packet(token)).await;
    match c.recv().await {
        Packet::Auth(a) => a,
        other => panic!("expected AUTH, got {other:?}"),
    }
}

/// Scenarios 7 and 8, both protocol forms, with TokenReview: the right audience connects, a
/// token for another audience or one the apiserver does not know is refused (v5 0x87, 3.1.1
/// 0x05), and the broker authenticates to the apiserver with its kubeconfig credentials.
#[tokio::test]
async fn token_review_decides_connects_by_audience() {
    let kube = FakeKube::start().await;
    kube.require_bearer(Some(BROKER_TOKEN));
    kube.service_account(NS, "thermostat", &[]);
    let (broker, _dir) = start(&kube, &config("{audiences: [aio-internal]}", None));

    // Scenario 7.
    let good = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    let (mut c, ack) =
        RawClient::connect(broker.addr(), sat_connect(&unique_id("sat"), &good)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    c.sync().await;
    let (mut v3, bytes) = v311_sat_connack(broker.addr(), &good).await;
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x00]);
    v3.sync().await;
    let review = &kube.reviews()[0];
    assert_eq!(review["kind"], "TokenReview");
    assert_eq!(review["spec"]["audiences"], serde_json::json!([AUD]));

    // Scenario 8.
    let other = kube.mint(NS, "thermostat", &["other"], Duration::from_secs(3600));
    let (mut refused, ack) =
        RawClient::connect(broker.addr(), sat_connect(&unique_id("sat"), &other)).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    refused.expect_closed(WAIT).await;
    let (_, bytes) = v311_sat_connack(broker.addr(), &other).await;
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x05]);

    // A token the apiserver no longer accepts (its pod was deleted).
    let revoked = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    kube.revoke(&revoked);
    let (_, ack) =
        RawClient::connect(broker.addr(), sat_connect(&unique_id("sat"), &revoked)).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
}

/// Scenario 9: with only the SAT method, username/password is not relevant to anything → 0x87;
/// so is a client with no credentials. The apiserver is never asked.
#[tokio::test]
async fn credentials_not_for_sat_are_refused_without_asking_the_apiserver() {
    let kube = FakeKube::start().await;
    let (broker, _dir) = start(&kube, &config("{audiences: [aio-internal]}", None));
    let mut userpass = connect_v5(&unique_id("userpass"));
    userpass.username = Some("alice".into());
    userpass.password = Some(Bytes::from_static(b"secret"));
    let (_, ack) = RawClient::connect(broker.addr(), userpass).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    let (_, ack) = RawClient::connect(broker.addr(), connect_v5(&unique_id("none"))).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    assert_eq!(kube.hits(Endpoint::TokenReview), 0);
}

/// The apiserver failing, too slow or unreachable: CONNACK 0x88 (3.1.1: 0x03), never an allow or a
/// denial; once it is back, clients get in again.
#[tokio::test]
async fn apiserver_down_is_server_unavailable() {
    let mut kube = FakeKube::start().await;
    kube.service_account(NS, "thermostat", &[]);
    let (broker, _dir) = start(&kube, &config("{audiences: [aio-internal]}", None));
    let token = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    RawClient::connect_ok(broker.addr(), sat_connect(&unique_id("before"), &token)).await;

    kube.fail_with(Some(500));
    let (_, ack) = RawClient::connect(broker.addr(), sat_connect(&unique_id("5xx"), &token)).await;
    assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
    kube.fail_with(None);

    // An apiserver that does not answer in time.
    kube.set_delay(WAIT);
    let (_, ack) = RawClient::connect(broker.addr(), sat_connect(&unique_id("slow"), &token)).await;
    assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
    kube.set_delay(Duration::ZERO);

    kube.stop().await;
    let (mut c, ack) =
        RawClient::connect(broker.addr(), sat_connect(&unique_id("down"), &token)).await;
    assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
    c.expect_closed(WAIT).await;
    let (_, bytes) = v311_sat_connack(broker.addr(), &token).await;
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x03]);

    kube.restart().await;
    RawClient::connect_ok(broker.addr(), sat_connect(&unique_id("after"), &token)).await;
}

/// Scenario 24: the connection is closed at the token's `exp`, without DISCONNECT; a v5 client
/// that re-authenticates (AUTH 0x19, method K8S-SAT, a new token) before then gets AUTH 0x00
/// and stays connected past the old `exp`. Re-authenticating with a token the apiserver refuses
/// gets DISCONNECT 0x87.
#[tokio::test]
async fn token_expiry_and_reauthentication() {
    let kube = FakeKube::start().await;
    kube.service_account(NS, "thermostat", &[]);
    let (broker, _dir) = start(&kube, &config("{audiences: [aio-internal]}", None));
    let lifetime = Duration::from_secs(3);

    // Both connections start with the same token, so they share one deadline.
    let short = kube.mint(NS, "thermostat", &[AUD], lifetime);
    let old_exp = exp_of(&short);
    let (mut expiring, _) =
        RawClient::connect_ok(broker.addr(), sat_connect(&unique_id("expiring"), &short)).await;
    let (mut renewing, _) =
        RawClient::connect_ok(broker.addr(), sat_connect(&unique_id("renewing"), &short)).await;

    let fresh = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    let ok = reauthenticate(&mut renewing, &fresh).await;
    assert_eq!(ok.code, ReasonCode::SUCCESS, "{ok:?}");

    match expiring.try_recv(WAIT).await {
        Recv::Closed => {}
        other => panic!("expected a close without DISCONNECT at exp, got {other:?}"),
    }
    // The renewed connection outlives the old exp: make sure it has passed, then ping.
    if let Ok(left) = old_exp.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(200)).await;
    }
    renewing.sync().await;
    broker.wait_for_log(
        "about the expiry",
        |l| l.contains("credential expired"),
        WAIT,
    );

    let refused = kube.mint(NS, "thermostat", &["other"], Duration::from_secs(3600));
    renewing.send(&reauth_packet(&refused)).await;
    let d = renewing.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::NOT_AUTHORIZED, "{d:?}");
}

/// Re-authentication while the apiserver is away: AUTH 0x18, the connection stays.
#[tokio::test]
async fn reauthentication_while_the_apiserver_is_down_gets_auth_0x18() {
    let mut kube = FakeKube::start().await;
    kube.service_account(NS, "thermostat", &[]);
    let (broker, _dir) = start(&kube, &config("{audiences: [aio-internal]}", None));
    let token = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    let (mut c, _) =
        RawClient::connect_ok(broker.addr(), sat_connect(&unique_id("re"), &token)).await;
    let next = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    kube.stop().await;
    let later = reauthenticate(&mut c, &next).await;
    assert_eq!(later.code, ReasonCode::CONTINUE_AUTHENTICATION, "{later:?}");
    c.sync().await;
}

/// Rules for [`annotation_rules_apply`]: attribute `group: g1` may publish under `sensor/`;
/// the service account `heater` (by principal name) may only connect.
fn annotation_rules() -> String {
    format!(
        "      - principals:\n          attributes: [{{group: g1}}]\n        brokerResources:\n          \
         - {{method: Connect}}\n          - {{method: Publish, topics: [\"sensor/#\"]}}\n      \
         - principals:\n          usernames: [\"system:serviceaccount:{NS}:heater\"]\n        \
         brokerResources:\n          - {{method: Connect}}\n"
    )
}

/// Under [`annotation_rules`]: `thermostat` (annotation `group: g1`) connects and publishes
/// only where the attribute allows; `heater` (no annotation) connects by its principal name but
/// may not publish. Returns the two tokens used.
async fn annotation_rules_apply(kube: &FakeKube, addr: SocketAddr) -> (String, String) {
    let t = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    let (mut thermostat, _) =
        RawClient::connect_ok(addr, sat_connect(&unique_id("thermo"), &t)).await;
    let code = thermostat
        .publish(publish("sensor/temperature", QoS::AtLeastOnce, b"21"))
        .await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let code = thermostat
        .publish(publish("actuator/valve", QoS::AtLeastOnce, b"1"))
        .await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);

    let h = kube.mint(NS, "heater", &[AUD], Duration::from_secs(3600));
    let (mut heater, _) = RawClient::connect_ok(addr, sat_connect(&unique_id("heater"), &h)).await;
    let code = heater
        .publish(publish("sensor/temperature", QoS::AtLeastOnce, b"x"))
        .await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    (t, h)
}

/// §2.3: the principal is the service account from the token, never the MQTT username, and its
/// `aio-broker-auth/` annotations are attributes authorization rules can use.
#[tokio::test]
async fn principal_and_annotation_attributes_reach_authorization() {
    let kube = FakeKube::start().await;
    kube.service_account(NS, "thermostat", &[("aio-broker-auth/group", "g1")]);
    kube.service_account(NS, "heater", &[]);
    kube.service_account(NS, "stranger", &[("aio-mq-broker-auth/group", "g2")]);
    let (broker, _dir) = start(
        &kube,
        &config("{audiences: [aio-internal]}", Some(&annotation_rules())),
    );

    annotation_rules_apply(&kube, broker.addr()).await;

    // A valid token for another account, claiming heater's name as MQTT username: the
    // username is not what authorization sees.
    let s = kube.mint(NS, "stranger", &[AUD], Duration::from_secs(3600));
    let mut claim = sat_connect(&unique_id("stranger"), &s);
    claim.username = Some(format!("system:serviceaccount:{NS}:heater"));
    let (_, ack) = RawClient::connect(broker.addr(), claim).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
}

/// `verification: OfflineJwks`: tokens are verified against the cluster's published keys
/// (RS256 here), with no TokenReview; once keys and annotations are cached, clients keep
/// connecting while the apiserver is away. Wrong audience and expired tokens are refused.
#[tokio::test]
async fn offline_jwks_verification() {
    let mut kube = FakeKube::start_with_key(KeyKind::Rs256).await;
    kube.service_account(NS, "thermostat", &[]);
    let (broker, _dir) = start(
        &kube,
        &config(
            "{audiences: [aio-internal], verification: OfflineJwks}",
            None,
        ),
    );
    let token = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    RawClient::connect_ok(broker.addr(), sat_connect(&unique_id("off"), &token)).await;
    let other = kube.mint(NS, "thermostat", &["other"], Duration::from_secs(3600));
    let (_, ack) = RawClient::connect(broker.addr(), sat_connect(&unique_id("off"), &other)).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    let mut expired = e2e::fake_kube::Mint::new(NS, "thermostat", &[AUD], Duration::ZERO);
    expired.ttl_secs = -5;
    let expired = kube.mint_with(&expired);
    let (_, ack) =
        RawClient::connect(broker.addr(), sat_connect(&unique_id("off"), &expired)).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    assert_eq!(kube.hits(Endpoint::TokenReview), 0);
    assert_eq!(kube.hits(Endpoint::Jwks), 1);

    kube.stop().await;
    let again = kube.mint(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    RawClient::connect_ok(broker.addr(), sat_connect(&unique_id("off"), &again)).await;
}

/// Scenarios 7, 8 and 9 and §2.3's annotation attributes, split variant: `authsvc` runs as its
/// own process with `KUBECONFIG` pointing at the fake apiserver, and the broker runs with
/// `--authsvc URL` and no kubeconfig, so every SAT decision is made by the separate service.
/// A valid token connects and its service account's annotations drive authorization; a
/// token for another audience or one the apiserver does not know is refused (v5 0x87, 3.1.1
/// 0x05), after a TokenReview the service sent with its kubeconfig credentials; username and
/// password get 0x87 without asking the apiserver.
#[tokio::test]
async fn split_authsvc_process_decides_sat_connects() {
    let kube = FakeKube::start().await;
    kube.require_bearer(Some(BROKER_TOKEN));
    kube.service_account(NS, "thermostat", &[("aio-broker-auth/group", "g1")]);
    kube.service_account(NS, "heater", &[]);
    let yaml = config("{audiences: [aio-internal]}", Some(&annotation_rules()));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let authsvc =
        Authsvc::start_with_env(&yaml, &[], &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    // No KUBECONFIG for the broker: only the separate service can reach the fake apiserver.
    let broker = Broker::start_with_args(&yaml, &["--authsvc", &authsvc.url()]);
    let line = broker.wait_for_log(
        "naming the authentication service",
        |l| l.contains("authenticating through the authentication service"),
        WAIT,
    );
    assert!(line.contains(&authsvc.url()), "{line}");

    // Scenario 7, and the annotation attribute reaching authorization.
    let (t, h) = annotation_rules_apply(&kube, broker.addr()).await;
    let reviews = kube.reviews();
    assert_eq!(reviews[0]["kind"], "TokenReview");
    assert_eq!(reviews[0]["spec"]["audiences"], serde_json::json!([AUD]));
    assert!(reviewed(&kube, &t) && reviewed(&kube, &h), "{reviews:?}");

    // Scenario 8: another audience, both protocol forms.
    let other = kube.mint(NS, "thermostat", &["other"], Duration::from_secs(3600));
    let (mut refused, ack) = RawClient::connect(
        broker.addr(),
        sat_connect(&unique_id("split-other"), &other),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    refused.expect_closed(WAIT).await;
    let (_, bytes) = v311_sat_connack(broker.addr(), &other).await;
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x05]);
    // A well-formed token the apiserver never issued.
    let mut unknown =
        e2e::fake_kube::Mint::new(NS, "thermostat", &[AUD], Duration::from_secs(3600));
    unknown.register = false;
    let unknown = kube.mint_with(&unknown);
    let (_, ack) = RawClient::connect(
        broker.addr(),
        sat_connect(&unique_id("split-unknown"), &unknown),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    assert!(
        reviewed(&kube, &other) && reviewed(&kube, &unknown),
        "{:?}",
        kube.reviews()
    );

    // Scenario 9: nothing relevant to SAT → 0x87, and the apiserver is not asked.
    let asked = kube.hits(Endpoint::TokenReview);
    let mut userpass = connect_v5(&unique_id("split-userpass"));
    userpass.username = Some("alice".into());
    userpass.password = Some(Bytes::from_static(b"secret"));
    let (_, ack) = RawClient::connect(broker.addr(), userpass).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    assert_eq!(kube.hits(Endpoint::TokenReview), asked);
}

/// Whether the fake apiserver received a TokenReview for `token`.
fn reviewed(kube: &FakeKube, token: &str) -> bool {
    kube.reviews().iter().any(|r| r["spec"]["token"] == token)
}

fn exp_of(token: &str) -> SystemTime {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap())
}
