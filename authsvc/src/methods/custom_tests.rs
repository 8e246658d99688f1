//! Tests of the Custom method against a small HTTPS server on 127.0.0.1 (hyper + rustls with an
//! rcgen PKI): the request on the wire (scenario 17), each kind of answer (scenarios 12, 15, 16,
//! 18), unreachable servers (13, 14, 23) and settings errors. The server here is deliberately
//! minimal; the faithful fake of the published API lives in the e2e crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;
use crate::chain::Chain;
use crate::{AllowEveryone, Method, Secret};

/// The bound on any wait in these tests; reaching it means the test failed.
const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------------
// A tiny PKI and HTTPS server
// ------------------------------------------------------------------------------------------------

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `name` with SANs (`127.0.0.1` becomes an IP SAN).
    fn leaf(&self, name: &str, sans: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
    body: Bytes,
    client_cert: bool,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the server answers: status, JSON/text body, and a delay before answering.
type Responder = Arc<dyn Fn(&Seen) -> (u16, String, Duration) + Send + Sync>;

struct Server {
    addr: SocketAddr,
    ca: Ca,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(respond: Responder) -> Server {
        Server::start_with(respond, None).await
    }

    /// With `client_ca`, a client certificate issued by it is required (mTLS).
    async fn start_with(respond: Responder, client_ca: Option<&Ca>) -> Server {
        let ca = Ca::new("Test Server CA");
        let (cert, key) = ca.leaf("auth-server", &["127.0.0.1", "localhost"]);
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(client_ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(client_ca.pem.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let seen = seen.clone();
            let accepted = accepted.clone();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    let seen = seen.clone();
                    let respond = respond.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let client_cert = tls.get_ref().1.peer_certificates().is_some();
                        let service = hyper::service::service_fn(move |req| {
                            handle(req, client_cert, seen.clone(), respond.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });
        Server {
            addr,
            ca,
            seen,
            accepted,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

async fn handle(
    req: http::Request<Incoming>,
    client_cert: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Responder,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let request = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
        client_cert,
    };
    seen.lock().push(request.clone());
    let (status, body, delay) = respond(&request);
    tokio::time::sleep(delay).await;
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

fn answer(status: u16, body: Value) -> Responder {
    let text = body.to_string();
    Arc::new(move |_| (status, text.clone(), Duration::ZERO))
}

// ------------------------------------------------------------------------------------------------
// Building the method
// ------------------------------------------------------------------------------------------------

struct Env {
    config: broker_config::Config,
    secrets_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// The embedded default configuration plus `extra_yaml` documents (ConfigMaps, Secrets).
fn env(extra_yaml: &str) -> Env {
    let text = format!("{}\n{extra_yaml}", broker_config::default_config_yaml());
    let dir = tempfile::tempdir().unwrap();
    Env {
        config: broker_config::Config::from_yaml_str(&text, "test").unwrap(),
        secrets_dir: dir.path().to_path_buf(),
        _dir: dir,
    }
}

fn config_map_yaml(name: &str, pem: &str) -> String {
    let doc = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"ca.pem": pem},
    });
    format!("---\n{doc}\n")
}

fn tls_secret_yaml(name: &str, cert: &str, key: &str) -> String {
    let doc = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "type": "kubernetes.io/tls", "stringData": {"tls.crt": cert, "tls.key": key},
    });
    format!("---\n{doc}\n")
}

fn try_build(env: &Env, settings: Value) -> Result<Box<dyn Method>, PolicyError> {
    let cx = BuildContext {
        policy: "custom-auth".into(),
        config: &env.config,
        secrets_dir: env.secrets_dir.clone(),
    };
    build(
        &cx,
        &settings,
        "spec.authenticationMethods[0].customSettings",
    )
}

/// The method for `server`, trusting its CA through a ConfigMap document, plus `extra`
/// settings.
fn method_for(server: &Server, extra: Value) -> Box<dyn Method> {
    let env = env(&config_map_yaml("auth-ca", &server.ca.pem));
    let mut settings = json!({"endpoint": server.endpoint(), "caCertConfigMap": "auth-ca"});
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    try_build(&env, settings).unwrap()
}

fn connect(username: &str) -> Credentials {
    let mut c = Credentials::connect("client-1");
    c.username = Some(username.to_string());
    c.password = Some(Secret(Bytes::from_static(b"p")));
    c
}

fn reauth(method: &str, data: &[u8]) -> Credentials {
    let mut c = Credentials::connect("client-1");
    c.kind = Kind::Reauthenticate;
    c.username = Some("u".into());
    c.method = Some(method.to_string());
    c.data = Some(Secret(Bytes::copy_from_slice(data)));
    c
}

async fn run(method: &dyn Method, c: &Credentials) -> Decision {
    tokio::time::timeout(WAIT, method.authenticate(c))
        .await
        .expect("the method answered within its bound")
}

// ------------------------------------------------------------------------------------------------
// The request on the wire
// ------------------------------------------------------------------------------------------------

/// Scenario 17: body, query, content type, headers, TLS against the configured CA, and the
/// broker's client certificate.
#[tokio::test]
async fn connect_request_matches_the_published_shape() {
    let client_ca = Ca::new("Broker Client CA");
    let server = Server::start_with(answer(200, json!({})), Some(&client_ca)).await;
    let (broker_cert, broker_key) = client_ca.leaf("gatehouse", &[]);
    let env = env(&format!(
        "{}{}",
        config_map_yaml("auth-ca", &server.ca.pem),
        tls_secret_yaml("broker-client", &broker_cert, &broker_key)
    ));
    let method = try_build(
        &env,
        json!({
            "endpoint": server.endpoint(),
            "caCertConfigMap": "auth-ca",
            "auth": {"x509": {"secretRef": "broker-client"}},
            "headers": {"x-api-key": "k3y", "X-Tenant": "t1"},
        }),
    )
    .unwrap();

    // A client chain of two certificates, leaf first.
    let client_pki = Ca::new("Device CA");
    let (leaf_pem, _) = client_pki.leaf("device-1", &[]);
    let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
    let ca_der = CertificateDer::from_pem_slice(client_pki.pem.as_bytes()).unwrap();
    let mut c = connect("u");
    c.method = Some("M".into());
    c.data = Some(Secret(Bytes::from_static(b"D")));
    c.tls_chain = vec![leaf.to_vec(), ca_der.to_vec()];

    let decision = run(&*method, &c).await;
    assert!(matches!(decision, Decision::Allow(_)), "{decision:?}");

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/");
    assert_eq!(req.query.as_deref(), Some("api-version=0.5.0"));
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["x-api-key"], "k3y");
    assert_eq!(req.headers["x-tenant"], "t1");
    assert!(
        req.client_cert,
        "the broker presented its client certificate"
    );

    // The PEM chain decodes back to the DER the frontend verified, leaf first.
    let body = req.json();
    let certs = body["certs"].as_str().unwrap();
    let decoded = CertificateDer::pem_slice_iter(certs.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(decoded, vec![leaf.clone(), ca_der.clone()]);
    // Byte for byte, in the documented field order.
    let expected = format!(
        r#"{{"type":"connect","username":"u","password":"cA==","certs":{},"enhancedAuthentication":{{"method":"M","data":"RA=="}}}}"#,
        serde_json::to_string(certs).unwrap()
    );
    assert_eq!(String::from_utf8(req.body.to_vec()).unwrap(), expected);
}

#[tokio::test]
async fn absent_fields_are_omitted_and_the_endpoint_path_is_kept() {
    let server = Server::start(answer(200, json!({}))).await;
    let env = env(&config_map_yaml("auth-ca", &server.ca.pem));
    let method = try_build(
        &env,
        json!({"endpoint": format!("{}/mqtt/auth?tenant=a", server.endpoint()), "caCertConfigMap": "auth-ca"}),
    )
    .unwrap();
    let c = Credentials::connect("anon");
    run(&*method, &c).await;
    let seen = server.seen();
    assert_eq!(seen[0].path, "/mqtt/auth");
    assert_eq!(seen[0].query.as_deref(), Some("tenant=a&api-version=0.5.0"));
    assert_eq!(&seen[0].body[..], br#"{"type":"connect"}"#);
}

/// Re-authentication (AUTH 0x19) and multi-step AUTH are sent as `type: auth`.
#[tokio::test]
async fn auth_requests_carry_only_the_enhanced_authentication() {
    let server = Server::start(answer(200, json!({}))).await;
    let method = method_for(&server, json!({}));
    run(&*method, &reauth("M", b"D")).await;
    let mut cont = reauth("M", b"more");
    cont.kind = Kind::Continue;
    run(&*method, &cont).await;
    let seen = server.seen();
    assert_eq!(
        &seen[0].body[..],
        br#"{"type":"auth","enhancedAuthentication":{"method":"M","data":"RA=="}}"#
    );
    assert_eq!(seen[1].json()["enhancedAuthentication"]["data"], "bW9yZQ==");
}

#[tokio::test]
async fn one_connection_is_reused_across_requests() {
    let server = Server::start(answer(200, json!({}))).await;
    let method = method_for(&server, json!({}));
    for _ in 0..3 {
        assert!(matches!(
            run(&*method, &connect("u")).await,
            Decision::Allow(_)
        ));
    }
    assert_eq!(server.seen().len(), 3);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

// ------------------------------------------------------------------------------------------------
// Answers
// ------------------------------------------------------------------------------------------------

/// Scenario 15 (attributes) and §3.3 (expiry; absent = never).
#[tokio::test]
async fn ok_allows_with_attributes_and_expiry() {
    let server = Server::start(answer(
        200,
        json!({"expiry": "2030-05-08T20:04:16+00:00", "attributes": {"group": "g1", "floor": 3}}),
    ))
    .await;
    let method = method_for(&server, json!({}));
    let Decision::Allow(grant) = run(&*method, &connect("alice")).await else {
        panic!("expected Allow");
    };
    assert_eq!(grant.principal.username.as_deref(), Some("alice"));
    assert_eq!(
        grant.principal.attributes,
        BTreeMap::from([
            ("group".to_string(), "g1".to_string()),
            ("floor".to_string(), "3".to_string())
        ])
    );
    let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_904_501_056);
    assert_eq!(grant.expiry, Some(expected));
    assert!(grant.can_reauthenticate, "v5 clients may re-authenticate");

    let mut v3 = connect("alice");
    v3.protocol_version = 4;
    let Decision::Allow(grant) = run(&*method, &v3).await else {
        panic!("expected Allow");
    };
    assert!(!grant.can_reauthenticate, "3.1.1 has no AUTH packet");
}

#[tokio::test]
async fn ok_with_an_empty_object_never_expires() {
    let server = Server::start(answer(200, json!({}))).await;
    let method = method_for(&server, json!({}));
    let Decision::Allow(grant) = run(&*method, &connect("alice")).await else {
        panic!("expected Allow");
    };
    assert_eq!(grant.expiry, None);
    assert!(grant.principal.attributes.is_empty());
}

#[tokio::test]
async fn unusable_ok_answers_deny() {
    for body in [
        r#"{"expiry":"tomorrow"}"#,
        r#"{"attributes":{"a":{"nested":1}}}"#,
        r#"not json"#,
        r#"{"expiry":"2001-01-01T00:00:00Z"}"#,
    ] {
        let text = body.to_string();
        let server = Server::start(Arc::new(move |_| (200, text.clone(), Duration::ZERO))).await;
        let method = method_for(&server, json!({}));
        assert!(
            matches!(
                run(&*method, &connect("u")).await,
                Decision::Deny { code: 0x87, .. }
            ),
            "{body}"
        );
    }
}

/// Scenario 12: the server's reason is the CONNACK code; a relevant denial does not fall
/// through to the next method.
#[tokio::test]
async fn forbidden_denies_with_the_servers_reason() {
    let server = Server::start(answer(
        403,
        json!({"reason": 134, "message": "bad password"}),
    ))
    .await;
    let chain = Chain::new(
        "p",
        vec![method_for(&server, json!({})), Box::new(AllowEveryone)],
    );
    assert!(matches!(
        run_chain(&chain, &connect("u")).await,
        Decision::Deny { code: 0x86, .. }
    ));
}

/// Scenario 18: a 403 carrying 0 (Success) — or any code below 0x80, or one CONNACK cannot
/// carry — is a denial with 0x87, never an allow.
#[tokio::test]
async fn forbidden_with_a_success_range_reason_is_not_authorized() {
    for body in [
        json!({"reason": 0}),
        json!({"reason": 0, "message": "unknown user"}),
        json!({"reason": 5}),
        json!({"reason": 0x8E}),
        json!({"reason": 300}),
        json!({"reason": "0"}),
        json!({}),
    ] {
        let server = Server::start(answer(403, body.clone())).await;
        let method = method_for(&server, json!({}));
        assert!(
            matches!(
                run(&*method, &connect("u")).await,
                Decision::Deny { code: 0x87, .. }
            ),
            "{body}"
        );
    }
}

/// Scenario 22: a refused re-authentication ends in DISCONNECT, whose code is 0x87.
#[tokio::test]
async fn forbidden_reauthentication_is_not_authorized() {
    let server = Server::start(answer(403, json!({"reason": 134}))).await;
    let method = method_for(&server, json!({}));
    assert!(matches!(
        run(&*method, &reauth("M", b"D")).await,
        Decision::Deny { code: 0x87, .. }
    ));
}

/// Scenario 16: a 422 renegotiates the version once, and the new one is kept.
#[tokio::test]
async fn unsupported_version_is_renegotiated_and_remembered() {
    let server = Server::start(Arc::new(|seen: &Seen| {
        if seen.query.as_deref() == Some("api-version=0.5.0") {
            (200, r#"{"attributes":{"v":"ok"}}"#.into(), Duration::ZERO)
        } else {
            (
                422,
                r#"{"supportedVersions":["0.5.0"]}"#.into(),
                Duration::ZERO,
            )
        }
    }))
    .await;
    let method = method_for(&server, json!({"apiVersion": "0.4.0"}));
    assert!(matches!(
        run(&*method, &connect("u")).await,
        Decision::Allow(_)
    ));
    assert!(matches!(
        run(&*method, &connect("u")).await,
        Decision::Allow(_)
    ));
    let queries: Vec<_> = server
        .seen()
        .iter()
        .map(|s| s.query.clone().unwrap())
        .collect();
    assert_eq!(
        queries,
        [
            "api-version=0.4.0",
            "api-version=0.5.0",
            "api-version=0.5.0"
        ]
    );
}

#[tokio::test]
async fn no_common_version_denies() {
    let server = Server::start(answer(422, json!({"supportedVersions": ["9.0.0"]}))).await;
    let method = method_for(&server, json!({}));
    assert!(matches!(
        run(&*method, &connect("u")).await,
        Decision::Deny { code: 0x87, .. }
    ));
    // 0.5.0 was tried, then 9.0.0 once; both refused.
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn other_client_errors_deny() {
    let text = "missing api-version".to_string();
    let server = Server::start(Arc::new(move |_| (400, text.clone(), Duration::ZERO))).await;
    let method = method_for(&server, json!({}));
    assert!(matches!(
        run(&*method, &connect("u")).await,
        Decision::Deny { code: 0x87, .. }
    ));
}

// ------------------------------------------------------------------------------------------------
// No answer: not relevant on CONNECT, transient on re-authentication
// ------------------------------------------------------------------------------------------------

/// Scenario 13/14 at the unit level: a 5xx makes Custom not relevant, so the next method
/// decides; with nothing else relevant the chain denies.
#[tokio::test]
async fn server_error_is_not_relevant_on_connect_and_transient_on_reauth() {
    let server = Server::start(answer(503, json!({}))).await;
    let method = method_for(&server, json!({}));
    assert_eq!(run(&*method, &connect("u")).await, Decision::NotRelevant);
    assert!(matches!(
        run(&*method, &reauth("M", b"D")).await,
        Decision::Transient { .. }
    ));

    let chain = Chain::new(
        "p",
        vec![method_for(&server, json!({})), Box::new(AllowEveryone)],
    );
    assert!(matches!(
        run_chain(&chain, &connect("u")).await,
        Decision::Allow(_)
    ));
    let alone = Chain::new("p", vec![method_for(&server, json!({}))]);
    assert!(matches!(
        run_chain(&alone, &connect("u")).await,
        Decision::Deny { code: 0x87, .. }
    ));
}

#[tokio::test]
async fn timeout_is_not_relevant_on_connect_and_transient_on_reauth() {
    let server = Server::start(Arc::new(|_: &Seen| {
        (200, "{}".into(), Duration::from_secs(5))
    }))
    .await;
    let method = method_for(&server, json!({"timeoutMillis": 200}));
    assert_eq!(run(&*method, &connect("u")).await, Decision::NotRelevant);
    assert!(matches!(
        run(&*method, &reauth("M", b"D")).await,
        Decision::Transient { .. }
    ));
}

#[tokio::test]
async fn connection_refused_is_not_relevant_on_connect_and_transient_on_reauth() {
    let ca = Ca::new("Unused CA");
    let env = env(&config_map_yaml("auth-ca", &ca.pem));
    // A port that was just free: nobody listens there now.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let method = try_build(
        &env,
        json!({"endpoint": format!("https://{addr}"), "caCertConfigMap": "auth-ca"}),
    )
    .unwrap();
    assert_eq!(run(&*method, &connect("u")).await, Decision::NotRelevant);
    assert!(matches!(
        run(&*method, &reauth("M", b"D")).await,
        Decision::Transient { .. }
    ));
}

/// A server whose certificate does not chain to `caCertConfigMap` is not trusted.
#[tokio::test]
async fn untrusted_server_certificate_is_not_relevant() {
    let server = Server::start(answer(200, json!({}))).await;
    let other = Ca::new("Someone Else");
    let env = env(&config_map_yaml("other-ca", &other.pem));
    let method = try_build(
        &env,
        json!({"endpoint": server.endpoint(), "caCertConfigMap": "other-ca"}),
    )
    .unwrap();
    assert_eq!(run(&*method, &connect("u")).await, Decision::NotRelevant);
    assert!(
        server.seen().is_empty(),
        "no request reached an untrusted server"
    );
}

/// A server that requires mTLS refuses a broker without a client certificate.
#[tokio::test]
async fn missing_client_certificate_is_not_relevant() {
    let client_ca = Ca::new("Broker Client CA");
    let server = Server::start_with(answer(200, json!({})), Some(&client_ca)).await;
    let method = method_for(&server, json!({}));
    assert_eq!(run(&*method, &connect("u")).await, Decision::NotRelevant);
    assert!(server.seen().is_empty());
}

// ------------------------------------------------------------------------------------------------
// Settings
// ------------------------------------------------------------------------------------------------

#[test]
fn trust_and_client_certificate_load_from_mounted_folders() {
    let env = env("");
    let ca = Ca::new("Folder CA");
    let ca_dir = env.secrets_dir.join("auth-ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("ca.crt"), &ca.pem).unwrap();
    let (cert, key) = ca.leaf("gatehouse", &[]);
    let secret_dir = env.secrets_dir.join("broker-client");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("tls.crt"), cert).unwrap();
    std::fs::write(secret_dir.join("tls.key"), key).unwrap();
    try_build(
        &env,
        json!({
            "endpoint": "https://auth.example:8443",
            "caCertConfigMap": "auth-ca",
            "auth": {"x509": {"secretRef": "broker-client"}},
        }),
    )
    .unwrap();
}

#[test]
fn settings_errors_name_the_field() {
    let ca = Ca::new("Settings CA");
    let env = env(&format!(
        "{}{}",
        config_map_yaml("empty", "no certificates here"),
        config_map_yaml("ok", &ca.pem)
    ));
    let base = "spec.authenticationMethods[0].customSettings";
    let cases = [
        (Value::Null, base.to_string()),
        (json!({}), format!("{base}.endpoint")),
        (
            json!({"endpoint": "http://127.0.0.1:1"}),
            format!("{base}.endpoint"),
        ),
        (json!({"endpoint": "ftp://x"}), format!("{base}.endpoint")),
        (json!({"endpoint": "not a url"}), format!("{base}.endpoint")),
        (
            json!({"endpoint": "https://x/?api-version=1"}),
            format!("{base}.endpoint"),
        ),
        (
            json!({"endpoint": "https://x", "endpiont": 1}),
            format!("{base}.endpiont"),
        ),
        (
            json!({"endpoint": "https://x", "caCertConfigMap": "missing"}),
            format!("{base}.caCertConfigMap"),
        ),
        (
            json!({"endpoint": "https://x", "caCertConfigMap": "empty"}),
            format!("{base}.caCertConfigMap"),
        ),
        (
            json!({"endpoint": "https://x", "caCertConfigMap": "ok", "auth": {"x509": {"secretRef": "missing"}}}),
            format!("{base}.auth.x509.secretRef"),
        ),
        (
            json!({"endpoint": "https://x", "caCertConfigMap": "ok", "auth": {"x509": {}}}),
            format!("{base}.auth.x509.secretRef"),
        ),
        (
            json!({"endpoint": "https://x", "headers": {"bad header": "v"}}),
            format!("{base}.headers.bad header"),
        ),
        (
            json!({"endpoint": "https://x", "headers": {"Content-Type": "text/plain"}}),
            format!("{base}.headers.Content-Type"),
        ),
        (
            json!({"endpoint": "https://x", "headers": {"x": 1}}),
            format!("{base}.headers.x"),
        ),
        (
            json!({"endpoint": "https://x", "timeoutMillis": 0}),
            format!("{base}.timeoutMillis"),
        ),
        (
            json!({"endpoint": "https://x", "apiVersion": "0.5.0&x=y"}),
            format!("{base}.apiVersion"),
        ),
        (
            json!({"endpoint": "https://x", "allowInsecureEndpoint": "yes"}),
            format!("{base}.allowInsecureEndpoint"),
        ),
    ];
    for (settings, field) in cases {
        let error = try_build(&env, settings.clone())
            .err()
            .unwrap_or_else(|| panic!("{settings} was accepted"));
        assert_eq!(error.field, field, "{settings}: {error}");
        assert_eq!(error.policy, "custom-auth");
    }
}

#[test]
fn header_values_stay_out_of_errors() {
    let env = env("");
    let error = try_build(
        &env,
        json!({"endpoint": "https://x", "headers": {"authorization": "Bearer s3cr3t\n"}}),
    )
    .err()
    .unwrap();
    assert!(!error.to_string().contains("s3cr3t"), "{error}");
}

/// `http://` only behind the explicit development flag; then requests really go out in clear.
#[tokio::test]
async fn plain_http_needs_the_insecure_flag() {
    let env = env("");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, false, seen.clone(), answer(200, json!({})))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        }
    });
    let method = try_build(
        &env,
        json!({"endpoint": format!("http://{addr}"), "allowInsecureEndpoint": true}),
    )
    .unwrap();
    assert!(matches!(
        run(&*method, &connect("u")).await,
        Decision::Allow(_)
    ));
    assert_eq!(seen.lock().len(), 1);
    task.abort();
}

#[test]
fn reason_codes_below_0x80_never_pass() {
    for r in 0..0x80u64 {
        assert_eq!(refusal_code(Some(&json!(r))), 0x87);
    }
    assert_eq!(refusal_code(Some(&json!(0x86))), 0x86);
    assert_eq!(refusal_code(Some(&json!(0x87))), 0x87);
    assert_eq!(refusal_code(Some(&json!(0x9F))), 0x9F);
    assert_eq!(refusal_code(None), 0x87);
}

// ------------------------------------------------------------------------------------------------

async fn run_chain(chain: &Chain, c: &Credentials) -> Decision {
    tokio::time::timeout(WAIT, chain.authenticate(c))
        .await
        .expect("the chain answered within its bound")
}
