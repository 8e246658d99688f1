//! The `JWT` method end to end (broker-spec §6.2, scenario 58): the real `gatehouse` binary and
//! its embedded authentication service, v5 clients presenting `CUSTOM-JWT` tokens in CONNECT
//! and AUTH 0x19, keys from a configured issuer certificate or from a JWKS server on loopback.
//!
//! Needs `cargo build -p frontend --bin gatehouse` (scripts/test.sh does it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use e2e::raw::{connect_v5, publish};
use e2e::{Broker, RawClient, WAIT, unique_id};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mqtt::{Auth, Connect, Packet, Properties, QoS, ReasonCode};
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.gatehouse.test";
const AUDIENCE: &str = "gatehouse.test";
const METHOD: &str = "CUSTOM-JWT";

/// An ES256 signing key and a self-signed certificate carrying its public key.
struct Issuer {
    key: EncodingKey,
    cert_pem: String,
}

impl Issuer {
    fn new() -> Issuer {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let cert = CertificateParams::new(vec!["issuer.gatehouse.test".to_owned()])
            .expect("params")
            .self_signed(&kp)
            .expect("self-signed issuer certificate");
        Issuer {
            key: EncodingKey::from_ec_der(&kp.serialize_der()),
            cert_pem: cert.pem(),
        }
    }

    fn jwk(&self, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, Algorithm::ES256).expect("JWK");
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }

    /// A token for `sub` valid from a minute ago until `exp_in` seconds from now (negative:
    /// already expired), with `extra` claims.
    fn token(&self, kid: Option<&str>, sub: &str, exp_in: i64, extra: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64;
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
            "iat": now - 60, "nbf": now - 60, "exp": now + exp_in,
        });
        for (k, v) in extra.as_object().expect("an object") {
            claims[k] = v.clone();
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }
}

/// A BrokerAuthentication `name` with one JWT method.
fn jwt_auth(name: &str, keys: Value) -> String {
    let mut settings = json!({"issuer": ISSUER, "audiences": [AUDIENCE]});
    for (k, v) in keys.as_object().expect("an object") {
        settings[k] = v.clone();
    }
    let doc = json!({
        "apiVersion": "mqttbroker.iotoperations.azure.com/v1",
        "kind": "BrokerAuthentication",
        "metadata": {"name": name},
        "spec": {"authenticationMethods": [{"method": "JWT", "jwtSettings": settings}]},
    });
    format!("---\n{doc}\n")
}

/// A listener with one plaintext port per `(authenticationRef, authorizationRef)`.
fn listener(ports: &[(&str, Option<&str>)]) -> String {
    let mut yaml = "apiVersion: mqttbroker.iotoperations.azure.com/v1\nkind: BrokerListener\n\
                    metadata: {name: default}\nspec:\n  ports:\n"
        .to_owned();
    for (authn, authz) in ports {
        let authz = authz
            .map(|z| format!(", authorizationRef: {z}"))
            .unwrap_or_default();
        yaml += &format!("    - {{port: 0, host: 127.0.0.1, authenticationRef: {authn}{authz}}}\n");
    }
    yaml
}

fn jwt_connect(token: &str) -> Connect {
    let mut c = connect_v5(&unique_id("jwt"));
    c.properties.authentication_method = Some(METHOD.into());
    c.properties.authentication_data = Some(Bytes::from(token.to_owned()));
    c
}

async fn reauthenticate(c: &mut RawClient, token: &str) {
    let properties = Properties {
        authentication_method: Some(METHOD.into()),
        authentication_data: Some(Bytes::from(token.to_owned())),
        ..Properties::default()
    };
    c.send(&Packet::Auth(Auth {
        code: ReasonCode::REAUTHENTICATE,
        properties,
    }))
    .await;
}

async fn expect_auth(c: &mut RawClient) -> Auth {
    match c.recv().await {
        Packet::Auth(a) => a,
        other => panic!("expected AUTH, got {other:?}"),
    }
}

/// Scenario 58: an expired token → CONNACK 0x87; a valid one → 0; AUTH 0x19 with a fresh token
/// → AUTH 0x00 and the connection goes on; AUTH 0x19 with an expired one → DISCONNECT 0x87.
#[tokio::test]
async fn custom_jwt_connect_and_reauthenticate() {
    let issuer = Issuer::new();
    let yaml = listener(&[("jwt-auth", None)])
        + &jwt_auth("jwt-auth", json!({"issuerCertificates": [issuer.cert_pem]}));
    let broker = Broker::start(&yaml);

    let expired = issuer.token(None, "machine1", -600, json!({}));
    let (mut refused, ack) = RawClient::connect(broker.addr(), jwt_connect(&expired)).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    refused.expect_closed(WAIT).await;

    let valid = issuer.token(None, "machine1", 300, json!({}));
    let (mut c, ack) = RawClient::connect(broker.addr(), jwt_connect(&valid)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");

    let fresh = issuer.token(None, "machine1", 3600, json!({}));
    reauthenticate(&mut c, &fresh).await;
    let auth = expect_auth(&mut c).await;
    assert_eq!(auth.code, ReasonCode::SUCCESS, "{auth:?}");
    assert_eq!(
        c.publish(publish("machines/machine1/t", QoS::AtLeastOnce, b"1"))
            .await,
        ReasonCode::SUCCESS
    );

    reauthenticate(&mut c, &expired).await;
    let disconnect = c.expect_disconnect(WAIT).await;
    assert_eq!(
        disconnect.code,
        ReasonCode::NOT_AUTHORIZED,
        "{disconnect:?}"
    );
    c.expect_closed(WAIT).await;

    // A v5 client without the method (username/password) is not relevant: nothing accepts it.
    let mut plain = connect_v5(&unique_id("plain"));
    plain.username = Some("machine1".into());
    plain.password = Some(Bytes::from(valid));
    let (_, ack) = RawClient::connect(broker.addr(), plain).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
}

/// Scenario 58: claims become attributes (`floor=3`, `tags=[a]`) that authorization rules
/// match; a token without them is refused at CONNECT by the authorization policy.
#[tokio::test]
async fn claims_become_attributes_for_authorization() {
    let issuer = Issuer::new();
    let authz = r#"---
apiVersion: mqttbroker.iotoperations.azure.com/v1
kind: BrokerAuthorization
metadata: {name: floor3}
spec:
  authorizationPolicies:
    rules:
      - principals: {attributes: [{floor: "3", tags: "[a]"}]}
        brokerResources:
          - {method: Connect}
          - {method: Publish, topics: [floor3/#]}
"#;
    let yaml = listener(&[("jwt-auth", Some("floor3"))])
        + &jwt_auth("jwt-auth", json!({"issuerCertificates": [issuer.cert_pem]}))
        + authz;
    let broker = Broker::start(&yaml);

    let token = issuer.token(None, "dev", 300, json!({"floor": 3, "tags": ["a"]}));
    let (mut c, ack) = RawClient::connect(broker.addr(), jwt_connect(&token)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    assert_eq!(
        c.publish(publish("floor3/temp", QoS::AtLeastOnce, b"1"))
            .await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        c.publish(publish("floor4/temp", QoS::AtLeastOnce, b"1"))
            .await,
        ReasonCode::NOT_AUTHORIZED
    );

    let other_floor = issuer.token(None, "dev", 300, json!({"floor": 4, "tags": ["a"]}));
    let (_, ack) = RawClient::connect(broker.addr(), jwt_connect(&other_floor)).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
}

/// Keys from a JWKS endpoint: served → CONNACK 0; an endpoint nobody answers → CONNACK 0x88
/// Server unavailable (a transient failure, never a denial or an allow).
#[tokio::test]
async fn jwks_keys_and_an_unreachable_jwks_endpoint() {
    let issuer = Issuer::new();
    let jwks = serde_json::to_string(&JwkSet {
        keys: vec![issuer.jwk("k1")],
    })
    .expect("JWKS JSON");
    let (jwks_addr, server) = serve(jwks).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let yaml = listener(&[("jwks-live", None), ("jwks-down", None)])
        + &jwt_auth(
            "jwks-live",
            json!({"jwksUrl": format!("http://{jwks_addr}/keys")}),
        )
        + &jwt_auth(
            "jwks-down",
            json!({"jwksUrl": format!("http://{closed}/keys")}),
        );
    let broker = Broker::start(&yaml);
    let live = broker.ready_ports()[0].local_addr;
    let down = broker.ready_ports()[1].local_addr;

    let token = issuer.token(Some("k1"), "dev", 300, json!({}));
    let (_, ack) = RawClient::connect(live, jwt_connect(&token)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    let (_, ack) = RawClient::connect(down, jwt_connect(&token)).await;
    assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
    server.abort();
}

/// An HTTP server on 127.0.0.1:0 answering every request with `body` (a JWKS document).
async fn serve(body: String) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Scenario 59: an Event Grid group query (`attributes.floor <= 5 and attributes.type =
/// "sensor"`) decides membership from JWT claims; a re-authentication whose new claims move
/// the client out of the group its live subscription relies on disconnects it (0x87), while
/// one that keeps it in the group keeps the connection.
#[tokio::test]
async fn group_membership_is_re_evaluated_on_reauthentication() {
    let issuer = Issuer::new();
    let authz = r#"---
apiVersion: mqttbroker.iotoperations.azure.com/v1
kind: BrokerAuthorization
metadata: {name: eg}
spec:
  eventGrid:
    clientGroups:
      - {name: low-sensors, query: 'attributes.floor <= 5 and attributes.type = "sensor"'}
    topicSpaces:
      - name: alerts
        topicTemplates: ['alerts/#']
      - name: own
        topicTemplates: ['devices/${client.authenticationName}/#']
    permissionBindings:
      - {name: sensors-read, clientGroupName: low-sensors, topicSpaceName: alerts, permission: Subscriber}
      - {name: everyone-own, clientGroupName: $all, topicSpaceName: own, permission: Publisher}
"#;
    let yaml = listener(&[("jwt-auth", Some("eg"))])
        + &jwt_auth("jwt-auth", json!({"issuerCertificates": [issuer.cert_pem]}))
        + authz;
    let broker = Broker::start(&yaml);

    let sensor =
        |floor: i64| issuer.token(None, "dev1", 300, json!({"floor": floor, "type": "sensor"}));
    let (mut c, ack) = RawClient::connect(broker.addr(), jwt_connect(&sensor(3))).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    c.subscribe("alerts/fire", QoS::AtLeastOnce).await;

    // Still in the group: the re-authentication succeeds and the connection stays.
    reauthenticate(&mut c, &sensor(5)).await;
    assert_eq!(expect_auth(&mut c).await.code, ReasonCode::SUCCESS);
    c.sync().await;

    // Floor 7 leaves `low-sensors`: the live subscription is no longer allowed.
    reauthenticate(&mut c, &sensor(7)).await;
    let d = c.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::NOT_AUTHORIZED);
}
