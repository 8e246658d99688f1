//! Tests of listener TLS without sockets: configurations are built from YAML exactly as the
//! broker builds them, and handshakes run over in-memory pipes with a rustls client.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};

use super::*;
use crate::config::Config;
use crate::health::{Health, PortState};

// ---- a tiny PKI ------------------------------------------------------------------------------

struct Ca {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

struct Leaf {
    cert: CertificateDer<'static>,
    pem: String,
    key_pem: String,
}

fn ca(name: &str, parent: Option<&Ca>) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = match parent {
        None => params.self_signed(&key).unwrap(),
        Some(parent) => params.signed_by(&key, &parent.issuer).unwrap(),
    };
    Ca {
        cert: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn leaf(name: &str, issuer: &Ca, client: bool) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, &issuer.issuer).unwrap();
    Leaf {
        cert: cert.der().clone(),
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Contoso's server side of broker-spec §5: root → intermediate → `localhost` leaf.
struct ServerPki {
    root: Ca,
    intermediate: Ca,
    leaf: Leaf,
}

fn server_pki(org: &str) -> ServerPki {
    let root = ca(&format!("{org} Root CA"), None);
    let intermediate = ca(&format!("{org} Intermediate CA 1"), Some(&root));
    let leaf = leaf("mqtts-endpoint", &intermediate, false);
    ServerPki {
        root,
        intermediate,
        leaf,
    }
}

impl ServerPki {
    /// `tls.crt` as the tutorial bundles it: leaf, then intermediate.
    fn chain_pem(&self) -> String {
        format!("{}{}", self.leaf.pem, self.intermediate.pem)
    }
}

// ---- configurations and handshakes -----------------------------------------------------------

fn parse(yaml: &str) -> Config {
    Config::from_yaml_str(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn listener(port: &str) -> String {
    format!(
        "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {{name: default}}\n\
         spec:\n  ports:\n    - {port}\n"
    )
}

fn manual_port(secret: &str, auth: Option<&str>) -> String {
    let auth = auth.map_or(String::new(), |a| format!(", authenticationRef: {a}"));
    listener(&format!(
        "{{port: 0, tls: {{mode: Manual, manual: {{secretRef: {secret}}}}}{auth}}}"
    ))
}

/// A YAML document (JSON is YAML) for a `kubernetes.io/tls` Secret.
fn secret_doc(name: &str, body: serde_json::Value) -> String {
    let mut doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
    });
    doc.as_object_mut()
        .unwrap()
        .extend(body.as_object().unwrap().clone());
    format!("---\n{doc}\n")
}

fn config_map_doc(name: &str, data: serde_json::Value) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": data,
    });
    format!("---\n{doc}\n")
}

fn x509_authentication(name: &str, trusted: &str) -> String {
    format!(
        "---\napiVersion: gatehouse.io/v1\nkind: BrokerAuthentication\nmetadata: {{name: {name}}}\n\
         spec:\n  authenticationMethods:\n    - method: X509\n      x509Settings:\n        \
         trustedClientCaCert: {trusted}\n"
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    env: TlsEnv,
    health: Arc<Health>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let env = TlsEnv::new(dir.path().join("secrets"), dir.path().join("data"));
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        Fixture {
            dir,
            env,
            health: Arc::new(Health::default()),
        }
    }

    fn port(&self, yaml: &str) -> Result<PortTls, SetupError> {
        let config = parse(yaml);
        PortTls::new(
            &config.listeners[0],
            8883,
            &Documents::from(&config),
            &self.env,
            self.health.clone(),
        )
    }

    fn write_secret(&self, name: &str, files: &[(&str, &str)]) {
        let dir = self.env.secrets_dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, content) in files {
            std::fs::write(dir.join(file), content).unwrap();
        }
    }

    fn state(&self) -> PortState {
        self.health
            .ports()
            .into_iter()
            .find(|((l, p), _)| l == "default" && *p == 8883)
            .map(|(_, s)| s)
            .expect("the port is registered in health")
    }
}

fn client_config(roots: &[&CertificateDer<'static>], client: Option<&Leaf>) -> ClientConfig {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(store);
    match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let key = parse_private_key(leaf.key_pem.as_bytes()).unwrap();
            builder
                .with_client_auth_cert(vec![leaf.cert.clone()], key.der().clone_key())
                .unwrap()
        }
    }
}

/// What each side saw of a handshake over an in-memory pipe.
struct Handshake {
    /// The server chain the client received, in order.
    server_chain: Vec<CertificateDer<'static>>,
    /// The client chain the server verified.
    client_chain: Option<Vec<CertificateDer<'static>>>,
}

async fn handshake(server: Arc<ServerConfig>, client: ClientConfig) -> Result<Handshake, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    // The broker's own accept path.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("localhost").unwrap();
    let (s, c) = tokio::join!(
        crate::tls_stream::accept(server, a),
        connector.connect(name, b)
    );
    let s = s.map_err(|e| format!("server: {e}"))?;
    let c = c.map_err(|e| format!("client: {e}"))?;
    let owned =
        |certs: &[CertificateDer<'_>]| certs.iter().map(|c| c.clone().into_owned()).collect();
    Ok(Handshake {
        server_chain: c
            .get_ref()
            .1
            .peer_certificates()
            .map(owned)
            .unwrap_or_default(),
        client_chain: s.peer_certificates().map(owned),
    })
}

fn current(port: &PortTls) -> Arc<ServerConfig> {
    port.slot().current().expect("the port serves")
}

// ---- Manual: Secret documents -----------------------------------------------------------------

/// Scenario 3: the chain is served leaf first, then the intermediate, so a client trusting
/// only the root completes the handshake.
#[tokio::test]
async fn the_chain_is_served_in_file_order_and_verifies_against_the_root() {
    let pki = server_pki("Contoso");
    let f = Fixture::new();
    let yaml = manual_port("broker-server-cert", None)
        + &secret_doc(
            "broker-server-cert",
            serde_json::json!({"stringData": {"tls.crt": pki.chain_pem(), "tls.key": pki.leaf.key_pem}}),
        );
    let port = f.port(&yaml).unwrap();
    assert_eq!(f.state(), PortState::Serving);
    let seen = handshake(current(&port), client_config(&[&pki.root.cert], None))
        .await
        .unwrap();
    assert_eq!(
        seen.server_chain,
        vec![pki.leaf.cert.clone(), pki.intermediate.cert.clone()]
    );
    assert!(seen.client_chain.is_none());
}

#[tokio::test]
async fn secret_data_is_base64_and_string_data_wins() {
    let pki = server_pki("Contoso");
    let other = server_pki("Other");
    let f = Fixture::new();
    let b64 = |s: &str| encode_base64(s.as_bytes());
    // `data` holds another certificate; `stringData` overrides tls.crt only, and the key in
    // `data` (base64, split over lines as kubectl does) must match it.
    let yaml = manual_port("mixed", None)
        + &secret_doc(
            "mixed",
            serde_json::json!({
                "data": {
                    "tls.crt": b64(&other.chain_pem()),
                    "tls.key": wrap(&b64(&pki.leaf.key_pem)),
                },
                "stringData": {"tls.crt": pki.chain_pem()},
            }),
        );
    let port = f.port(&yaml).unwrap();
    let seen = handshake(current(&port), client_config(&[&pki.root.cert], None))
        .await
        .unwrap();
    assert_eq!(seen.server_chain[0], pki.leaf.cert);
}

#[tokio::test]
async fn a_secret_with_only_base64_data_serves() {
    let pki = server_pki("Contoso");
    let f = Fixture::new();
    let yaml = manual_port("b64", None)
        + &secret_doc(
            "b64",
            serde_json::json!({"data": {
                "tls.crt": encode_base64(pki.chain_pem().as_bytes()),
                "tls.key": encode_base64(pki.leaf.key_pem.as_bytes()),
            }}),
        );
    let port = f.port(&yaml).unwrap();
    handshake(current(&port), client_config(&[&pki.root.cert], None))
        .await
        .unwrap();
}

#[test]
fn an_invalid_secret_leaves_the_port_waiting_with_a_reason() {
    let f = Fixture::new();
    let yaml = manual_port("bad", None)
        + &secret_doc(
            "bad",
            serde_json::json!({"data": {"tls.crt": "!!!", "tls.key": "AAAA"}}),
        );
    let port = f.port(&yaml).unwrap();
    assert!(port.slot().current().is_none());
    let PortState::Waiting(why) = f.state() else {
        panic!("not waiting")
    };
    assert!(why.contains("data.tls.crt is not valid base64"), "{why}");

    let f = Fixture::new();
    let yaml = manual_port("nokey", None)
        + &secret_doc("nokey", serde_json::json!({"stringData": {"tls.crt": "x"}}));
    f.port(&yaml).unwrap();
    let PortState::Waiting(why) = f.state() else {
        panic!("not waiting")
    };
    assert!(why.contains("it has no tls.key"), "{why}");
}

#[test]
fn a_key_that_does_not_match_the_leaf_is_refused() {
    let pki = server_pki("Contoso");
    let other = server_pki("Other");
    let f = Fixture::new();
    let yaml = manual_port("mismatch", None)
        + &secret_doc(
            "mismatch",
            serde_json::json!({"stringData": {"tls.crt": pki.chain_pem(), "tls.key": other.leaf.key_pem}}),
        );
    let port = f.port(&yaml).unwrap();
    assert!(port.slot().current().is_none());
    let PortState::Waiting(why) = f.state() else {
        panic!("not waiting")
    };
    assert!(why.contains("do not form a usable pair"), "{why}");
}

// ---- Manual: files, waiting and reload -----------------------------------------------------------

/// Scenario 6, first half: no Secret anywhere → bound but waiting, with AIO's message.
#[test]
fn missing_files_leave_the_port_waiting() {
    let f = Fixture::new();
    let port = f.port(&manual_port("broker-server-cert", None)).unwrap();
    assert!(port.slot().current().is_none());
    assert_eq!(
        f.state(),
        PortState::Waiting(
            "Server certificate broker-server-cert not found. Awaiting creation of secret."
                .to_owned()
        )
    );
    assert!(f.health.ready().is_err());
}

/// Scenario 6: the files appear → the port serves; they change → the next handshake sees the
/// new certificate; a broken update keeps the last good one.
#[tokio::test]
async fn reload_swaps_the_configuration() {
    let first = server_pki("Contoso");
    let second = server_pki("Contoso");
    let f = Fixture::new();
    let mut port = f.port(&manual_port("srv", None)).unwrap();
    assert!(port.slot().current().is_none());

    f.write_secret(
        "srv",
        &[
            ("tls.crt", &first.chain_pem()),
            ("tls.key", &first.leaf.key_pem),
        ],
    );
    port.refresh(SystemTime::now());
    assert_eq!(f.state(), PortState::Serving);
    let before = current(&port);
    let seen = handshake(before.clone(), client_config(&[&first.root.cert], None))
        .await
        .unwrap();
    assert_eq!(seen.server_chain[0], first.leaf.cert);

    // Unchanged files: nothing is rebuilt.
    port.refresh(SystemTime::now());
    assert!(Arc::ptr_eq(&before, &current(&port)));

    // Half an update (new chain, old key) is refused; the old configuration keeps serving.
    f.write_secret("srv", &[("tls.crt", &second.chain_pem())]);
    port.refresh(SystemTime::now());
    assert!(Arc::ptr_eq(&before, &current(&port)));
    assert_eq!(f.state(), PortState::Serving);

    f.write_secret("srv", &[("tls.key", &second.leaf.key_pem)]);
    port.refresh(SystemTime::now());
    let after = current(&port);
    assert!(!Arc::ptr_eq(&before, &after));
    let seen = handshake(after, client_config(&[&second.root.cert], None))
        .await
        .unwrap();
    assert_eq!(seen.server_chain[0], second.leaf.cert);

    // Deleting the files does not take a serving port down either.
    std::fs::remove_dir_all(f.env.secrets_dir.join("srv")).unwrap();
    port.refresh(SystemTime::now());
    assert!(port.slot().current().is_some());
}

#[test]
fn a_secret_document_wins_over_files() {
    let pki = server_pki("Contoso");
    let f = Fixture::new();
    // The files are garbage; the document is used, so the port serves.
    f.write_secret("both", &[("tls.crt", "garbage"), ("tls.key", "garbage")]);
    let yaml = manual_port("both", None)
        + &secret_doc(
            "both",
            serde_json::json!({"stringData": {"tls.crt": pki.chain_pem(), "tls.key": pki.leaf.key_pem}}),
        );
    let port = f.port(&yaml).unwrap();
    assert!(port.slot().current().is_some());
}

// ---- client certificates --------------------------------------------------------------------

/// Scenarios 10 and 11 at the TLS layer: a Fabrikam client is verified and its chain kept; a
/// certificate from another CA fails the handshake; no certificate still gets through.
#[tokio::test]
async fn x509_ports_verify_client_certificates_against_the_config_map() {
    let server = server_pki("Contoso");
    let fabrikam = server_pki("Fabrikam");
    let thermostat = leaf("thermostat", &fabrikam.intermediate, true);
    let stranger_ca = server_pki("Stranger");
    let stranger = leaf("stranger", &stranger_ca.intermediate, true);
    let f = Fixture::new();
    let yaml = manual_port("srv", Some("x509-auth"))
        + &secret_doc(
            "srv",
            serde_json::json!({"stringData": {"tls.crt": server.chain_pem(), "tls.key": server.leaf.key_pem}}),
        )
        + &x509_authentication("x509-auth", "fabrikam-ca")
        + &config_map_doc(
            "fabrikam-ca",
            serde_json::json!({"client_ca.pem": fabrikam.root.pem}),
        );
    let port = f.port(&yaml).unwrap();
    assert!(port.requests_client_certificates());
    let config = current(&port);

    // The client sends its leaf and intermediate; the ConfigMap has only the root.
    let key = parse_private_key(thermostat.key_pem.as_bytes()).unwrap();
    let with_chain = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&server.root.cert))
        .with_client_auth_cert(
            vec![thermostat.cert.clone(), fabrikam.intermediate.cert.clone()],
            key.der().clone_key(),
        )
        .unwrap();
    let seen = handshake(config.clone(), with_chain).await.unwrap();
    assert_eq!(
        seen.client_chain,
        Some(vec![
            thermostat.cert.clone(),
            fabrikam.intermediate.cert.clone()
        ])
    );

    let err = handshake(
        config.clone(),
        client_config(&[&server.root.cert], Some(&stranger)),
    )
    .await;
    assert!(
        err.is_err(),
        "a certificate from another CA must fail the handshake"
    );

    let seen = handshake(config, client_config(&[&server.root.cert], None))
        .await
        .unwrap();
    assert!(seen.client_chain.is_none());
}

fn roots(root: &CertificateDer<'static>) -> RootCertStore {
    let mut store = RootCertStore::empty();
    store.add(root.clone()).unwrap();
    store
}

/// An intermediate in the ConfigMap is an anchor on its own (broker-spec §2.1: "root or
/// intermediate"), read here from files the way Kubernetes mounts a ConfigMap.
#[tokio::test]
async fn an_intermediate_from_mounted_files_is_a_trust_anchor() {
    let server = server_pki("Contoso");
    let fabrikam = server_pki("Fabrikam");
    let lightbulb = leaf("lightbulb", &fabrikam.intermediate, true);
    let f = Fixture::new();
    f.write_secret(
        "srv",
        &[
            ("tls.crt", &server.chain_pem()),
            ("tls.key", &server.leaf.key_pem),
        ],
    );
    // Kubernetes' layout: visible names link into a hidden timestamped folder.
    let ca_dir = f.env.secrets_dir.join("fabrikam-ca");
    std::fs::create_dir_all(ca_dir.join("..2024_01_01")).unwrap();
    std::fs::write(
        ca_dir.join("..2024_01_01/client_ca.pem"),
        &fabrikam.intermediate.pem,
    )
    .unwrap();
    std::os::unix::fs::symlink("..2024_01_01/client_ca.pem", ca_dir.join("client_ca.pem")).unwrap();
    let yaml =
        manual_port("srv", Some("x509-auth")) + &x509_authentication("x509-auth", "fabrikam-ca");
    let port = f.port(&yaml).unwrap();
    let seen = handshake(
        current(&port),
        client_config(&[&server.root.cert], Some(&lightbulb)),
    )
    .await
    .unwrap();
    assert_eq!(seen.client_chain, Some(vec![lightbulb.cert.clone()]));
}

#[test]
fn a_missing_client_ca_leaves_the_port_waiting() {
    let server = server_pki("Contoso");
    let f = Fixture::new();
    let yaml = manual_port("srv", Some("x509-auth"))
        + &secret_doc(
            "srv",
            serde_json::json!({"stringData": {"tls.crt": server.chain_pem(), "tls.key": server.leaf.key_pem}}),
        )
        + &x509_authentication("x509-auth", "nowhere");
    let port = f.port(&yaml).unwrap();
    assert!(port.slot().current().is_none());
    assert_eq!(
        f.state(),
        PortState::Waiting(
            "Trusted client CA certificate nowhere not found. Awaiting creation of configmap."
                .to_owned()
        )
    );
}

#[test]
fn trusted_client_ca_defaults_to_client_ca_and_other_methods_do_not_ask_for_certificates() {
    let config = parse(
        &(listener("{port: 1883}")
            + "---\napiVersion: gatehouse.io/v1\nkind: BrokerAuthentication\nmetadata: {name: a}\n\
               spec:\n  authenticationMethods:\n    - method: ServiceAccountToken\n      \
               serviceAccountTokenSettings: {audiences: [x]}\n    - method: X509\n"
            + "---\napiVersion: gatehouse.io/v1\nkind: BrokerAuthentication\nmetadata: {name: b}\n\
               spec:\n  authenticationMethods:\n    - method: ServiceAccountToken\n      \
               serviceAccountTokenSettings: {audiences: [x]}\n"),
    );
    assert_eq!(
        trusted_client_ca_names(&config.authentications["a"]),
        Some(vec![DEFAULT_TRUSTED_CLIENT_CA.to_owned()])
    );
    assert_eq!(trusted_client_ca_names(&config.authentications["b"]), None);
}

// ---- Automatic --------------------------------------------------------------------------------

fn automatic_port(spec: &str) -> String {
    listener(&format!("{{port: 0, tls: {{mode: Automatic{spec}}}}}"))
}

fn read_ca(f: &Fixture) -> (String, String) {
    let data = f.dir.path().join("data");
    (
        std::fs::read_to_string(data.join("ca.crt")).unwrap(),
        std::fs::read_to_string(data.join("ca.key")).unwrap(),
    )
}

#[tokio::test]
async fn automatic_mode_creates_a_local_ca_and_serves_a_localhost_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let port = f.port(&automatic_port("")).unwrap();
    assert_eq!(f.state(), PortState::Serving);
    let (ca_pem, _) = read_ca(&f);
    let mode = std::fs::metadata(f.dir.path().join("data/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    let seen = handshake(current(&port), client_config(&[&ca], None))
        .await
        .unwrap();
    // The default lifetime is 90 days and the SANs cover loopback by name and address.
    let (_, cert) = x509_parser::parse_x509_certificate(&seen.server_chain[0]).unwrap();
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert_eq!(
        lifetime,
        (DEFAULT_AUTOMATIC_LIFETIME + BACKDATE).as_secs() as i64
    );
    let text = sans(&seen.server_chain[0]);
    for expected in ["dns:localhost", "ip:127.0.0.1", "ip:::1"] {
        assert!(
            text.iter().any(|t| t == expected),
            "{expected} missing from {text:?}"
        );
    }
}

#[test]
fn the_local_ca_is_reused_across_restarts() {
    let f = Fixture::new();
    f.port(&automatic_port("")).unwrap();
    let first = read_ca(&f);
    // A new TlsEnv is a new broker process on the same data directory.
    let f2 = Fixture {
        env: TlsEnv::new(f.env.secrets_dir.clone(), f.env.data_dir.clone()),
        health: Arc::new(Health::default()),
        dir: f.dir,
    };
    f2.port(&automatic_port("")).unwrap();
    assert_eq!(read_ca(&f2), first);
}

#[test]
fn an_unusable_local_ca_is_moved_aside_and_replaced() {
    let f = Fixture::new();
    let data = f.dir.path().join("data");
    std::fs::write(data.join("ca.crt"), "not a certificate").unwrap();
    std::fs::write(data.join("ca.key"), "not a key").unwrap();
    f.port(&automatic_port("")).unwrap();
    assert_eq!(f.state(), PortState::Serving);
    assert!(read_ca(&f).0.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        std::fs::read_to_string(data.join("ca.crt.old")).unwrap(),
        "not a certificate"
    );
}

#[tokio::test]
async fn automatic_certificates_are_renewed_before_they_expire() {
    let f = Fixture::new();
    let mut port = f
        .port(&automatic_port(
            ", certManagerCertificateSpec: {duration: 3h, renewBefore: 1h, san: {dns: [broker.example], ip: [10.1.2.3]}}",
        ))
        .unwrap();
    let first = current(&port);
    let now = SystemTime::now();
    port.refresh(now + Duration::from_secs(3600));
    assert!(Arc::ptr_eq(&first, &current(&port)), "renewed too early");
    port.refresh(now + Duration::from_secs(2 * 3600 + 60));
    let second = current(&port);
    assert!(!Arc::ptr_eq(&first, &second), "not renewed");

    // The renewed certificate starts at the (simulated) renewal time, so a handshake now would
    // call it not yet valid; inspect what was issued instead.
    let ServerSource::Automatic {
        issued: Some((pem, renew_at)),
        ..
    } = &port.server
    else {
        panic!("not automatic")
    };
    let leaf = parse_certificates(&pem.chain).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let validity = cert.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        (Duration::from_secs(3 * 3600) + BACKDATE).as_secs() as i64
    );
    assert_eq!(
        renew_at.duration_since(now).unwrap(),
        Duration::from_secs(2 * 3600 + 60) + Duration::from_secs(2 * 3600)
    );
    let text = sans(&leaf);
    assert!(text.contains(&"dns:broker.example".to_owned()), "{text:?}");
    assert!(text.contains(&"ip:10.1.2.3".to_owned()), "{text:?}");
    assert!(text.contains(&"dns:localhost".to_owned()), "{text:?}");

    // It chains to the local CA like the first one.
    let (ca_pem, _) = read_ca(&f);
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    handshake(first, client_config(&[&ca], None)).await.unwrap();
}

/// The SANs of `der` as `dns:NAME` / `ip:ADDRESS`.
fn sans(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let names = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .clone();
    names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(b) => match b.len() {
                4 => format!("ip:{}", IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
                16 => format!("ip:{}", IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
                _ => format!("ip:{b:?}"),
            },
            other => other.to_string(),
        })
        .collect()
}

#[test]
fn bad_automatic_settings_name_the_field() {
    let f = Fixture::new();
    let cases = [
        (
            "{duration: 10 days}",
            "tls.certManagerCertificateSpec.duration",
            "unknown unit",
        ),
        (
            "{duration: 2h, renewBefore: 3h}",
            "tls.certManagerCertificateSpec.renewBefore",
            "shorter than duration",
        ),
        (
            "{san: {ip: [not-an-ip]}}",
            "tls.certManagerCertificateSpec.san.ip[0]",
            "not an IP address",
        ),
        (
            "{san: {dns: [\"bad name é\"]}}",
            "tls.certManagerCertificateSpec.san.dns[0]",
            "not a DNS name",
        ),
        (
            "{duration: 30s}",
            "tls.certManagerCertificateSpec.duration",
            "at least 1m",
        ),
    ];
    for (spec, field, reason) in cases {
        let err = f
            .port(&automatic_port(&format!(
                ", certManagerCertificateSpec: {spec}"
            )))
            .expect_err(spec);
        assert_eq!(err.field, field, "{spec}");
        assert!(err.reason.contains(reason), "{spec}: {err}");
    }
}

// ---- parsing helpers --------------------------------------------------------------------------

#[test]
fn go_durations() {
    let ok = [
        ("240h", 240.0 * 3600.0),
        ("45m", 45.0 * 60.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2160h0m0s", 2160.0 * 3600.0),
        ("500ms", 0.5),
        ("0", 0.0),
    ];
    for (text, secs) in ok {
        assert_eq!(
            parse_go_duration(text),
            Ok(Duration::from_secs_f64(secs)),
            "{text}"
        );
    }
    for bad in ["", "10", "h", "-1h", "1d", "1h x", "1..5h"] {
        assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
    }
}

/// Test-only encoder, the inverse of [`decode_base64`].
fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn wrap(text: &str) -> String {
    text.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn base64_round_trips_and_rejects_garbage() {
    for input in [
        &b""[..],
        b"f",
        b"fo",
        b"foo",
        b"foob",
        b"fooba",
        b"foobar",
        &[0, 255, 7, 128],
    ] {
        let encoded = encode_base64(input);
        assert_eq!(decode_base64(&encoded).unwrap(), input, "{encoded}");
        assert_eq!(
            decode_base64(encoded.trim_end_matches('=')).unwrap(),
            input,
            "unpadded {encoded}"
        );
    }
    assert_eq!(decode_base64("Zm9v\nYmFy\n").unwrap(), b"foobar");
    for bad in ["Zm9v!", "Z", "Zm=9", "Zg===", "Zg=x"] {
        assert!(decode_base64(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn keys_never_reach_debug_output() {
    let pki = server_pki("Contoso");
    let key = parse_private_key(pki.leaf.key_pem.as_bytes()).unwrap();
    assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
    let bytes = KeyBytes(pki.leaf.key_pem.clone().into_bytes());
    assert!(!format!("{bytes:?}").contains("PRIVATE"));
    let pem = ServerPem {
        chain: Vec::new(),
        key: bytes,
    };
    assert!(!format!("{pem:?}").contains("PRIVATE"));
    // A key that does not parse is not quoted in the error either.
    let err = parse_private_key(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n").unwrap_err();
    assert!(!err.contains("c2VjcmV0"), "{err}");
}
