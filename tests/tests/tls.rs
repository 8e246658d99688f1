//! TLS listener ports end to end (broker-spec §1, §5; scenarios 2, 3, 6, 10, 11): Manual
//! certificates from Secret documents and from mounted files, hot reload, Automatic
//! certificates from the broker's local CA, client certificates on X.509 ports, TLS 1.2 and
//! 1.3, EC and RSA, driven by mosquitto_pub/sub (libmosquitto + OpenSSL) and by rumqttc and
//! tokio-rustls (rustls + ring).
//!
//! What is tested here is the TLS layer — which handshakes succeed, what the server presents,
//! and that an untrusted certificate is stopped by the handshake itself. What authentication
//! then makes of a certificate (username, attributes, expiry) is in `auth_x509.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::broker::gatehouse;
use e2e::mosquitto::{available, mosquitto_pub_at, mosquitto_sub_spawn_at};
use e2e::pki::{self, KeyKind, Leaf, Pki};
use e2e::process::Output;
use e2e::rumqtt::V5;
use e2e::{Broker, RawClient, Recv, WAIT, unique_id};
use mqtt::{Packet, Protocol};
use rumqttc::v5::mqttbytes::QoS;
use tempfile::TempDir;

const VERSIONS: [&str; 2] = ["mqttv311", "mqttv5"];
const SERVER_SECRET: &str = "broker-server-cert";

fn require_tools() {
    assert!(
        available(),
        "mosquitto-clients are not installed; run scripts/test.sh"
    );
}

/// A BrokerListener named `default` with these ports (YAML flow mappings).
fn listener(ports: &[&str]) -> String {
    let mut yaml = "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: default}\n\
                    spec:\n  ports:\n"
        .to_owned();
    for port in ports {
        yaml.push_str(&format!("    - {port}\n"));
    }
    yaml
}

const PLAIN: &str = "{port: 0, host: 127.0.0.1}";

fn manual(secret: &str) -> String {
    format!("{{port: 0, host: 127.0.0.1, tls: {{mode: Manual, manual: {{secretRef: {secret}}}}}}}")
}

fn manual_x509(secret: &str, authentication: &str) -> String {
    format!(
        "{{port: 0, host: 127.0.0.1, authenticationRef: {authentication}, \
         tls: {{mode: Manual, manual: {{secretRef: {secret}}}}}}}"
    )
}

fn x509_authentication(name: &str, trusted_config_map: &str) -> String {
    format!(
        "---\napiVersion: gatehouse.io/v1\nkind: BrokerAuthentication\nmetadata: {{name: {name}}}\n\
         spec:\n  authenticationMethods:\n    - method: X509\n      x509Settings:\n        \
         trustedClientCaCert: {trusted_config_map}\n"
    )
}

/// A broker with `--secrets-dir` pointing at a folder the test controls.
struct TlsBroker {
    broker: Broker,
    secrets: TempDir,
    /// Client-side files (CA bundles, client certificates).
    files: TempDir,
}

impl TlsBroker {
    fn start(yaml: &str) -> TlsBroker {
        TlsBroker::start_with_secrets(yaml, |_| {})
    }

    /// `prepare` fills the secrets folder before the broker starts.
    fn start_with_secrets(yaml: &str, prepare: impl FnOnce(&Path)) -> TlsBroker {
        let secrets = tempfile::Builder::new()
            .prefix("gatehouse-secrets-")
            .tempdir()
            .expect("tempdir");
        prepare(secrets.path());
        let dir = secrets.path().to_str().expect("utf-8 path").to_owned();
        let broker = Broker::start_with_args(yaml, &["--secrets-dir", &dir]);
        TlsBroker {
            broker,
            secrets,
            files: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The bound port of `spec.ports[index]`.
    fn port(&self, index: usize) -> u16 {
        self.broker.ready_ports()[index].local_addr.port()
    }

    fn addr(&self, index: usize) -> std::net::SocketAddr {
        self.broker.ready_ports()[index].local_addr
    }

    /// Writes a CA certificate for `--cafile`.
    fn cafile(&self, ca: &pki::Authority) -> PathBuf {
        ca.write_cert(
            &self
                .files
                .path()
                .join(format!("ca-{}.crt", unique_id("ca"))),
        )
    }

    fn client_files(&self, leaf: &Leaf) -> pki::Files {
        leaf.write(self.files.path(), &unique_id("client"))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `mosquitto_pub -h localhost` (the name in the server certificate) on `port` with `tls`
/// arguments, publishing one QoS 1 message with `-d` so the CONNACK shows.
fn publish(port: u16, version: &str, tls: &[&str]) -> Output {
    let topic = format!("tls/{}", unique_id("t"));
    let mut args = vec!["-d", "-V", version, "-q", "1", "-t", &topic, "-m", "hello"];
    args.extend_from_slice(tls);
    mosquitto_pub_at("localhost", port, &args)
}

fn assert_published(out: &Output, what: &str) {
    assert!(out.success(), "{what}: mosquitto_pub failed: {out:?}");
    assert!(
        out.stdout.contains("received CONNACK") && out.stdout.contains("received PUBACK"),
        "{what}: no CONNACK/PUBACK: {out:?}"
    );
}

fn assert_refused(out: &Output, what: &str) {
    assert!(!out.success(), "{what}: mosquitto_pub succeeded: {out:?}");
    assert!(
        !out.stdout.contains("received CONNACK"),
        "{what}: got a CONNACK: {out:?}"
    );
}

/// Retries `attempt` until it returns `Some`, for at most `timeout`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = attempt().await {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// rumqttc v5 over rustls to `localhost:port`.
async fn rumqttc_v5(port: u16, config: std::sync::Arc<rustls::ClientConfig>) -> Result<V5, String> {
    let mut options = rumqttc::v5::MqttOptions::new(unique_id("rumqttc-tls"), "localhost", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(config),
    ));
    V5::try_connect(options).await
}

// ---- Manual certificates ------------------------------------------------------------------

/// Scenario 2: plain MQTT on the TLS port gets no CONNACK; the plaintext port next to it
/// still works.
#[tokio::test]
async fn scenario_2_plain_mqtt_on_a_tls_port_gets_no_connack() {
    let contoso = Pki::contoso(KeyKind::Ec256);
    let server = contoso.server("mqtts-endpoint", &["localhost"]);
    let yaml = listener(&[PLAIN, &manual(SERVER_SECRET)]) + &server.secret_yaml(SERVER_SECRET);
    let b = TlsBroker::start(&yaml);

    let mut c = RawClient::tcp(b.addr(1)).await;
    c.protocol = Protocol::V5;
    c.send(&Packet::Connect(Box::new(e2e::raw::connect_v5(
        &unique_id("plain"),
    ))))
    .await;
    match c.try_recv(WAIT).await {
        Recv::Closed | Recv::Invalid(_) => {}
        other => panic!("plain MQTT on the TLS port got {other:?}"),
    }

    RawClient::v5(b.addr(0), &unique_id("plain-ok")).await;
}

/// Scenario 3 (and tutorial step 5 without client certificates): the Secret's chain is leaf
/// then intermediate; clients that trust only Contoso's root connect, publish and receive, over
/// MQTT 3.1.1 and 5.0, with mosquitto and rumqttc. The Secret document uses base64 `data`.
#[tokio::test]
async fn scenario_3_chain_with_intermediate_is_trusted_through_the_root() {
    require_tools();
    let contoso = Pki::contoso(KeyKind::Ec256);
    let server = contoso.server("mqtts-endpoint", &["localhost"]);
    let yaml = listener(&[&manual(SERVER_SECRET)]) + &server.secret_yaml_base64(SERVER_SECRET);
    let b = TlsBroker::start(&yaml);
    let cafile = b.cafile(&contoso.root);
    let tls = ["--cafile", path(&cafile)];

    // The server presents exactly leaf, intermediate.
    let seen = pki::handshake(
        b.addr(0),
        "localhost",
        pki::client_config(&[&contoso.root.cert.der], None),
    )
    .await
    .expect("handshake trusting the root only");
    assert_eq!(seen.server_chain, server.chain());

    for version in VERSIONS {
        let topic = format!("tls/chain/{version}");
        let sub = mosquitto_sub_spawn_at(
            "localhost",
            b.port(0),
            e2e::mosquitto::DEFAULT_FORMAT,
            &[
                "-V",
                version,
                "-q",
                "1",
                "-t",
                &topic,
                "-C",
                "1",
                "--cafile",
                path(&cafile),
            ],
        );
        sub.wait_line("SUBACK", |l| l.contains("received SUBACK"));
        let mut args = vec!["-V", version, "-q", "1", "-t", &topic, "-m", "over tls"];
        args.extend_from_slice(&tls);
        let out = mosquitto_pub_at("localhost", b.port(0), &args);
        assert!(out.success(), "{version}: {out:?}");
        let (messages, _) = sub.finish();
        assert_eq!(messages.len(), 1, "{version}");
        assert_eq!(messages[0][3], "over tls");
    }

    let mut client = rumqttc_v5(
        b.port(0),
        pki::client_config(&[&contoso.root.cert.der], None),
    )
    .await
    .expect("rumqttc over rustls");
    client.subscribe("tls/rumqttc", QoS::AtLeastOnce).await;
    client
        .publish("tls/rumqttc", QoS::AtLeastOnce, false, "rustls")
        .await;
    assert_eq!(&client.expect_publish().await.payload[..], b"rustls");
    client.disconnect().await;

    // A client that trusts another root does not get through.
    let other = Pki::new("Other", KeyKind::Ec256);
    assert_refused(
        &publish(
            b.port(0),
            "mqttv5",
            &["--cafile", path(&b.cafile(&other.root))],
        ),
        "untrusted server",
    );
}

/// Scenario 6: a Manual port whose Secret does not exist yet is bound but refuses
/// connections; creating the files makes it serve without a restart; replacing them makes new
/// handshakes see the new certificate.
#[tokio::test]
async fn scenario_6_secret_files_appear_later_and_are_replaced() {
    require_tools();
    let b = TlsBroker::start(&listener(&[PLAIN, &manual(SERVER_SECRET)]));
    b.broker.wait_for_log(
        "about the missing secret",
        |l| {
            l.contains(
                "Server certificate broker-server-cert not found. Awaiting creation of secret.",
            )
        },
        WAIT,
    );
    let first = Pki::contoso(KeyKind::Ec256);
    let first_ca = b.cafile(&first.root);
    assert_refused(
        &publish(b.port(1), "mqttv5", &["--cafile", path(&first_ca)]),
        "before the secret exists",
    );
    // The plaintext port serves meanwhile.
    RawClient::v5(b.addr(0), &unique_id("meanwhile")).await;

    let first_leaf = first.server("mqtts-endpoint", &["localhost"]);
    first_leaf.write_tls_secret(b.secrets.path(), SERVER_SECRET);
    let first_config = pki::client_config(&[&first.root.cert.der], None);
    let seen = eventually("the port serving the new secret", WAIT, || {
        let config = first_config.clone();
        let addr = b.addr(1);
        async move { pki::handshake(addr, "localhost", config).await.ok() }
    })
    .await;
    assert_eq!(seen.server_chain, first_leaf.chain());
    b.broker.wait_for_log(
        "about serving",
        |l| l.contains("Server certificate broker-server-cert serving"),
        WAIT,
    );
    for version in VERSIONS {
        assert_published(
            &publish(b.port(1), version, &["--cafile", path(&first_ca)]),
            version,
        );
    }

    // Rotate to a certificate from another CA.
    let second = Pki::contoso(KeyKind::Ec256);
    let second_leaf = second.server("mqtts-endpoint", &["localhost"]);
    second_leaf.write_tls_secret(b.secrets.path(), SERVER_SECRET);
    let second_config = pki::client_config(&[&second.root.cert.der], None);
    let seen = eventually("the port serving the replaced secret", WAIT, || {
        let config = second_config.clone();
        let addr = b.addr(1);
        async move { pki::handshake(addr, "localhost", config).await.ok() }
    })
    .await;
    assert_eq!(seen.server_chain[0], second_leaf.cert.der);
    assert_published(
        &publish(
            b.port(1),
            "mqttv5",
            &["--cafile", path(&b.cafile(&second.root))],
        ),
        "after rotation",
    );
    assert_refused(
        &publish(b.port(1), "mqttv5", &["--cafile", path(&first_ca)]),
        "the old CA after rotation",
    );
}

/// TLS 1.2 and 1.3 both negotiate, for mosquitto (OpenSSL) and rustls clients.
#[tokio::test]
async fn tls_1_2_and_1_3_both_negotiate() {
    require_tools();
    let contoso = Pki::contoso(KeyKind::Ec256);
    let server = contoso.server("mqtts-endpoint", &["localhost"]);
    let yaml = listener(&[&manual(SERVER_SECRET)]) + &server.secret_yaml(SERVER_SECRET);
    let b = TlsBroker::start(&yaml);
    let cafile = b.cafile(&contoso.root);
    for tls_version in ["tlsv1.2", "tlsv1.3"] {
        assert_published(
            &publish(
                b.port(0),
                "mqttv5",
                &["--cafile", path(&cafile), "--tls-version", tls_version],
            ),
            tls_version,
        );
    }
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = pki::client_config_with_versions(&[&contoso.root.cert.der], None, &[version]);
        let seen = pki::handshake(b.addr(0), "localhost", config.clone())
            .await
            .expect("handshake");
        assert_eq!(seen.version, Some(expected));
        let client = rumqttc_v5(b.port(0), config).await.expect("rumqttc");
        client.disconnect().await;
    }
}

/// RSA chains work like EC ones (mosquitto and rustls).
#[tokio::test]
async fn rsa_server_chain() {
    require_tools();
    let contoso = Pki::contoso(KeyKind::Rsa2048);
    let server = contoso.server("mqtts-endpoint", &["localhost"]);
    let b = TlsBroker::start_with_secrets(&listener(&[&manual(SERVER_SECRET)]), |dir| {
        server.write_tls_secret(dir, SERVER_SECRET);
    });
    for version in VERSIONS {
        assert_published(
            &publish(
                b.port(0),
                version,
                &["--cafile", path(&b.cafile(&contoso.root))],
            ),
            version,
        );
    }
    let seen = pki::handshake(
        b.addr(0),
        "localhost",
        pki::client_config(&[&contoso.root.cert.der], None),
    )
    .await
    .expect("handshake");
    assert_eq!(seen.server_chain, server.chain());
}

// ---- Automatic certificates -----------------------------------------------------------------

/// `tls.mode: Automatic`: the broker writes `<data-dir>/ca.crt`, and
/// `mosquitto_pub --cafile <data-dir>/ca.crt -h localhost` works.
#[tokio::test]
async fn automatic_mode_is_trusted_through_the_data_dir_ca() {
    require_tools();
    let b = TlsBroker::start(&listener(&[
        "{port: 0, host: 127.0.0.1, tls: {mode: Automatic}}",
    ]));
    let ca = b.broker.data_dir().join("ca.crt");
    assert!(ca.is_file(), "no {ca:?}");
    for version in VERSIONS {
        assert_published(
            &publish(b.port(0), version, &["--cafile", path(&ca)]),
            version,
        );
    }
    let ca_cert = pki::read_certificate(&ca);
    let client = rumqttc_v5(b.port(0), pki::client_config(&[&ca_cert], None))
        .await
        .expect("rumqttc trusting ca.crt");
    client.disconnect().await;
}

// ---- client certificates -------------------------------------------------------------------

/// Scenarios 10 and 11 at the TLS layer, tutorial PKIs: Contoso serves, Fabrikam's root is
/// the only trusted client CA. `thermostat` (leaf + intermediate) connects; a certificate from
/// another CA fails the handshake (no CONNACK); no certificate passes the handshake (other
/// methods may apply) and, with X.509 the only method, gets CONNACK 0x87. EC and RSA.
#[tokio::test]
async fn x509_port_verifies_client_certificates() {
    require_tools();
    for kind in [KeyKind::Ec256, KeyKind::Rsa2048] {
        let contoso = Pki::contoso(kind);
        let fabrikam = Pki::fabrikam(kind);
        let server = contoso.server("mqtts-endpoint", &["localhost"]);
        let yaml = listener(&[&manual_x509(SERVER_SECRET, "x509-auth")])
            + &server.secret_yaml(SERVER_SECRET)
            + &x509_authentication("x509-auth", "fabrikam-ca")
            + &pki::config_map_yaml("fabrikam-ca", "client_ca.pem", &[&fabrikam.root.cert]);
        let b = TlsBroker::start(&yaml);
        let cafile = b.cafile(&contoso.root);

        let thermostat = b.client_files(&fabrikam.client("thermostat"));
        for version in VERSIONS {
            assert_published(
                &publish(
                    b.port(0),
                    version,
                    &[
                        "--cafile",
                        path(&cafile),
                        "--cert",
                        path(&thermostat.cert),
                        "--key",
                        path(&thermostat.key),
                    ],
                ),
                &format!("{kind:?} thermostat {version}"),
            );
        }

        let stranger_pki = Pki::new("Stranger", kind);
        let stranger = b.client_files(&stranger_pki.client("thermostat"));
        for version in VERSIONS {
            assert_refused(
                &publish(
                    b.port(0),
                    version,
                    &[
                        "--cafile",
                        path(&cafile),
                        "--cert",
                        path(&stranger.cert),
                        "--key",
                        path(&stranger.key),
                    ],
                ),
                &format!("{kind:?} certificate from another CA, {version}"),
            );
        }

        let out = publish(b.port(0), "mqttv5", &["--cafile", path(&cafile)]);
        assert!(
            out.stdout.contains("received CONNACK (135)"),
            "{kind:?} without a certificate: handshake passes, CONNACK 0x87: {out:?}"
        );

        // rustls client with a certificate: connects and round-trips a message.
        let heater = fabrikam.client("heater");
        let mut client = rumqttc_v5(
            b.port(0),
            pki::client_config(&[&contoso.root.cert.der], Some(&heater)),
        )
        .await
        .expect("rumqttc with a Fabrikam certificate");
        client
            .subscribe("sensor/temperature", QoS::AtLeastOnce)
            .await;
        client
            .publish("sensor/temperature", QoS::AtLeastOnce, false, "21.5")
            .await;
        assert_eq!(&client.expect_publish().await.payload[..], b"21.5");
        client.disconnect().await;
    }
}

/// An intermediate in the trusted ConfigMap is an anchor by itself (broker-spec §2.1), here
/// from files mounted under the secrets folder: a client sending only its leaf connects.
#[tokio::test]
async fn an_intermediate_in_the_config_map_is_a_trust_anchor() {
    require_tools();
    let contoso = Pki::contoso(KeyKind::Ec256);
    let fabrikam = Pki::fabrikam(KeyKind::Ec256);
    let server = contoso.server("mqtts-endpoint", &["localhost"]);
    let yaml = listener(&[&manual_x509(SERVER_SECRET, "x509-auth")])
        + &x509_authentication("x509-auth", "fabrikam-ca");
    let b = TlsBroker::start_with_secrets(&yaml, |dir| {
        server.write_tls_secret(dir, SERVER_SECRET);
        pki::write_config_map(
            dir,
            "fabrikam-ca",
            "client_ca.pem",
            &[&fabrikam.intermediate.cert],
        );
    });
    let lightbulb = fabrikam
        .client("lightbulb")
        .write_leaf_only(b.files.path(), "lightbulb");
    assert_published(
        &publish(
            b.port(0),
            "mqttv5",
            &[
                "--cafile",
                path(&b.cafile(&contoso.root)),
                "--cert",
                path(&lightbulb.cert),
                "--key",
                path(&lightbulb.key),
            ],
        ),
        "leaf under a trusted intermediate",
    );
}

/// X509 authentication on a plaintext port is a configuration error that names the field.
#[test]
fn x509_without_tls_is_rejected_naming_the_field() {
    let yaml = listener(&["{port: 0, host: 127.0.0.1, authenticationRef: x509-auth}"])
        + &x509_authentication("x509-auth", "fabrikam-ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let out = gatehouse(&["check-config", "--config", path(&file)]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("spec.ports[0].tls: required") && out.stderr.contains("X509"),
        "{out:?}"
    );
}

/// MQTT over WebSockets inside TLS (`wss://`) on one port: the TLS handshake first, then the
/// upgrade on `/mqtt` with the `mqtt` subprotocol, then CONNECT → CONNACK in binary messages.
#[tokio::test]
async fn websockets_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let contoso = Pki::contoso(KeyKind::Ec256);
    let server = contoso.server("mqtts-endpoint", &["localhost"]);
    let yaml = listener(&[&format!(
        "{{port: 0, host: 127.0.0.1, protocol: WebSockets, \
         tls: {{mode: Manual, manual: {{secretRef: {SERVER_SECRET}}}}}}}"
    )]) + &server.secret_yaml(SERVER_SECRET);
    let b = TlsBroker::start(&yaml);
    let tls = pki::handshake(
        b.addr(0),
        "localhost",
        pki::client_config(&[&contoso.root.cert.der], None),
    )
    .await
    .expect("TLS handshake");
    let mut request = format!("wss://localhost:{}/mqtt", b.port(0))
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (mut ws, response) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tls.stream))
            .await
            .expect("upgrade in time")
            .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );

    let mut out = bytes::BytesMut::new();
    mqtt::codec::encode(
        &Packet::Connect(Box::new(e2e::raw::connect_v5(&unique_id("wss")))),
        Protocol::V5,
        &mut out,
    );
    ws.send(Message::binary(out.freeze()))
        .await
        .expect("send CONNECT");
    let mut buf = bytes::BytesMut::new();
    let connack = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => {
                    buf.extend_from_slice(&data);
                    if let Some(p) = mqtt::codec::decode(&mut buf, Protocol::V5, 1 << 20)
                        .expect("a valid packet")
                    {
                        return p;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("no CONNACK: {other:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    match connack {
        Packet::ConnAck(ack) => assert_eq!(ack.code, mqtt::ReasonCode::SUCCESS),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
