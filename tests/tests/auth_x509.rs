//! The `X509` method end to end: the AIO TLS + X.509 tutorial (broker-spec §5) against the real
//! `gatehouse` binary and its embedded authentication service — Contoso serves, Fabrikam's root
//! is the trusted client CA, mosquitto_pub (libmosquitto + OpenSSL) and the raw client over
//! rustls connect (scenarios 10, 11, 25, 30, 39).
//!
//! Needs `cargo build -p frontend --bin gatehouse` and mosquitto-clients (scripts/test.sh).

use std::path::Path;

use e2e::mosquitto::{available, mosquitto_pub_at};
use e2e::pki::{self, KeyKind, Pki};
use e2e::process::Output;
use e2e::raw::{connect_v5, publish};
use e2e::{Broker, RawClient, WAIT, unique_id};
use mqtt::{Auth, Packet, Properties, QoS, ReasonCode};
use tempfile::TempDir;

const SERVER_SECRET: &str = "broker-server-cert";

fn require_tools() {
    assert!(
        available(),
        "mosquitto-clients are not installed; run scripts/test.sh"
    );
}

/// The tutorial's BrokerAuthentication `x509-auth` (§5 step 3).
fn x509_auth() -> String {
    let doc = serde_json::json!({
        "apiVersion": "mqttbroker.iotoperations.azure.com/v1",
        "kind": "BrokerAuthentication",
        "metadata": {"name": "x509-auth"},
        "spec": {"authenticationMethods": [{
            "method": "X509",
            "x509Settings": {
                "trustedClientCaCert": "fabrikam-ca",
                "authorizationAttributes": {
                    "thermostat": {"subject": "CN = thermostat", "attributes": {"group": "thermostat_group"}},
                    "hygrometer": {"subject": "CN = hygrometer", "attributes": {"group": "hygrometer_group"}},
                    "intermediate": {
                        "subject": "CN = Fabrikam Intermediate CA 1",
                        "attributes": {"manufacturer": "fabrikam"}
                    }
                }
            }
        }]}
    });
    format!("---\n{doc}\n")
}

/// The tutorial's BrokerAuthorization `abac-authz` (§5 step 6).
const ABAC_AUTHZ: &str = r#"---
apiVersion: mqttbroker.iotoperations.azure.com/v1
kind: BrokerAuthorization
metadata: {name: abac-authz}
spec:
  authorizationPolicies:
    rules:
      - principals: {attributes: [{group: thermostat_group}]}
        brokerResources:
          - {method: Connect}
          - {method: Publish, topics: [sensor/temperature]}
      - principals: {attributes: [{group: hygrometer_group}]}
        brokerResources:
          - {method: Connect}
          - {method: Publish, topics: [sensor/humidity]}
      - principals: {attributes: [{manufacturer: fabrikam}]}
        brokerResources:
          - {method: Connect}
          - {method: Publish, topics: [health/heartbeat]}
      - principals: {usernames: [heater]}
        brokerResources:
          - {method: Connect}
          - {method: Subscribe, topics: [sensor/temperature, sensor/humidity]}
"#;

/// Port 0 of the broker: TLS with Contoso's `mqtts-endpoint`, authentication `x509-auth`, and
/// `abac-authz` when `authz`.
struct Tutorial {
    contoso: Pki,
    fabrikam: Pki,
    broker: Broker,
    files: TempDir,
}

impl Tutorial {
    fn start(kind: KeyKind, authz: bool) -> Tutorial {
        let contoso = Pki::contoso(kind);
        let fabrikam = Pki::fabrikam(kind);
        let server = contoso.server("mqtts-endpoint", &["localhost"]);
        let authz_ref = if authz {
            ", authorizationRef: abac-authz"
        } else {
            ""
        };
        let mut yaml = format!(
            "apiVersion: mqttbroker.iotoperations.azure.com/v1\nkind: BrokerListener\n\
             metadata: {{name: mqtts-endpoint}}\nspec:\n  ports:\n    - {{port: 0, host: 127.0.0.1, \
             authenticationRef: x509-auth{authz_ref}, \
             tls: {{mode: Manual, manual: {{secretRef: {SERVER_SECRET}}}}}}}\n"
        );
        yaml += &server.secret_yaml(SERVER_SECRET);
        yaml += &x509_auth();
        yaml += &pki::config_map_yaml("fabrikam-ca", "client_ca.pem", &[&fabrikam.root.cert]);
        if authz {
            yaml += ABAC_AUTHZ;
        }
        Tutorial {
            broker: Broker::start(&yaml),
            contoso,
            fabrikam,
            files: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn port(&self) -> u16 {
        self.broker.port()
    }

    fn cafile(&self) -> String {
        let path = self.files.path().join("contoso_root_ca.crt");
        if !path.exists() {
            self.contoso.root.write_cert(&path);
        }
        path_str(&path).to_owned()
    }

    /// `mosquitto_pub -d` to `topic`, QoS 1, as `device` (its chain and key), or without a
    /// client certificate when `device` is `None`.
    fn publish_as(&self, device: Option<&pki::Leaf>, version: &str, topic: &str) -> Output {
        let cafile = self.cafile();
        let mut args = vec![
            "-d", "-V", version, "-q", "1", "-t", topic, "-m", "hello", "--cafile", &cafile,
        ];
        let files;
        if let Some(leaf) = device {
            files = leaf.write(self.files.path(), &unique_id("device"));
            args.extend([
                "--cert",
                path_str(&files.cert),
                "--key",
                path_str(&files.key),
            ]);
        }
        mosquitto_pub_at("localhost", self.port(), &args)
    }

    /// A v5 raw client over TLS presenting `device`'s chain.
    async fn raw_client(&self, device: &pki::Leaf) -> RawClient {
        let config = pki::client_config(&[&self.contoso.root.cert.der], Some(device));
        let handshake = pki::handshake(self.broker.addr(), "localhost", config)
            .await
            .expect("TLS handshake with a Fabrikam certificate");
        RawClient::over(handshake.stream)
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn connack_code(out: &Output) -> Option<u8> {
    let at = out.stdout.find("received CONNACK (")? + "received CONNACK (".len();
    let rest = &out.stdout[at..];
    rest[..rest.find(')')?].parse().ok()
}

fn assert_published(out: &Output, what: &str) {
    assert!(out.success(), "{what}: mosquitto_pub failed: {out:?}");
    assert_eq!(connack_code(out), Some(0), "{what}: {out:?}");
    assert!(
        out.stdout.contains("received PUBACK"),
        "{what}: no PUBACK: {out:?}"
    );
}

/// Tutorial part 1 (§5 step 5), scenarios 10 and 11, EC and RSA PKIs: `thermostat` (leaf +
/// intermediate, trusted root only) gets CONNACK 0 and PUBACK 0 in v5 and 3.1.1; a certificate
/// from another CA fails the TLS handshake (no CONNACK); no certificate on this X509-only port
/// is refused with CONNACK 0x87 (3.1.1: 5).
#[tokio::test]
async fn tutorial_part_1_x509_authentication() {
    require_tools();
    for kind in [KeyKind::Ec256, KeyKind::Rsa2048] {
        let t = Tutorial::start(kind, false);
        let thermostat = t.fabrikam.client("thermostat");
        for version in ["mqttv5", "mqttv311"] {
            assert_published(
                &t.publish_as(Some(&thermostat), version, "example/topic"),
                &format!("{kind:?} thermostat {version}"),
            );
        }

        let stranger = Pki::new("Fabrikam", kind).client("thermostat");
        let out = t.publish_as(Some(&stranger), "mqttv5", "example/topic");
        assert!(!out.success(), "{kind:?} stranger: {out:?}");
        assert_eq!(connack_code(&out), None, "{kind:?} stranger: {out:?}");

        let out = t.publish_as(None, "mqttv5", "example/topic");
        assert!(!out.success(), "{kind:?} no certificate v5: {out:?}");
        assert_eq!(connack_code(&out), Some(0x87), "{kind:?} v5: {out:?}");
        let out = t.publish_as(None, "mqttv311", "example/topic");
        assert!(!out.success(), "{kind:?} no certificate 3.1.1: {out:?}");
        assert_eq!(connack_code(&out), Some(5), "{kind:?} 3.1.1: {out:?}");
    }
}

/// Tutorial part 2 (§5 step 7), scenarios 30 and 39: the attributes the service derives (leaf
/// first, first match wins) drive ABAC. thermostat may publish `sensor/temperature`, not
/// `sensor/humidity` and — its leaf match hides the intermediate's `manufacturer` — not
/// `health/heartbeat`; lightbulb (no leaf rule) gets `manufacturer=fabrikam` and may.
#[tokio::test]
async fn tutorial_part_2_attributes_drive_authorization() {
    let t = Tutorial::start(KeyKind::Ec256, true);

    let thermostat = t.raw_client(&t.fabrikam.client("thermostat")).await;
    let (mut thermostat, ack) = thermostat
        .connect_on(connect_v5(&unique_id("thermostat")))
        .await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    let ok = thermostat
        .publish(publish("sensor/temperature", QoS::AtLeastOnce, b"21"))
        .await;
    assert_eq!(ok, ReasonCode::SUCCESS);
    for topic in ["sensor/humidity", "health/heartbeat"] {
        let code = thermostat
            .publish(publish(topic, QoS::AtLeastOnce, b"x"))
            .await;
        assert_eq!(code, ReasonCode::NOT_AUTHORIZED, "thermostat → {topic}");
    }

    let lightbulb = t.raw_client(&t.fabrikam.client("lightbulb")).await;
    let (mut lightbulb, ack) = lightbulb
        .connect_on(connect_v5(&unique_id("lightbulb")))
        .await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    let code = lightbulb
        .publish(publish("health/heartbeat", QoS::AtLeastOnce, b"beat"))
        .await;
    assert_eq!(code, ReasonCode::SUCCESS);
}

/// Scenario 25: an X.509 client cannot renew in-band; AUTH 0x19 gets DISCONNECT 0x87.
#[tokio::test]
async fn x509_clients_cannot_reauthenticate() {
    let t = Tutorial::start(KeyKind::Ec256, false);
    let client = t.raw_client(&t.fabrikam.client("heater")).await;
    let mut connect = connect_v5(&unique_id("heater"));
    connect.properties.authentication_method = Some("RENEW".into());
    let (mut client, ack) = client.connect_on(connect).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    let properties = Properties {
        authentication_method: Some("RENEW".into()),
        ..Properties::default()
    };
    client
        .send(&Packet::Auth(Auth {
            code: ReasonCode::REAUTHENTICATE,
            properties,
        }))
        .await;
    let disconnect = client.expect_disconnect(WAIT).await;
    assert_eq!(
        disconnect.code,
        ReasonCode::NOT_AUTHORIZED,
        "{disconnect:?}"
    );
    client.expect_closed(WAIT).await;
}
