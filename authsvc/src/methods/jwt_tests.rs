//! Unit tests of the `JWT` method: tokens signed here (EC P-256 and Ed25519 keys from rcgen,
//! RSA keys from `openssl`), keys served as configured certificates or from a JWKS server
//! started on 127.0.0.1:0 (plain HTTP and HTTPS). Scenario numbers are broker-spec §10's.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{EncodingKey, Header};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use serde_json::json;
use tokio::net::TcpListener;

use super::*;
use crate::Kind;
use crate::methods::x509::tests::{Ca, KeyKind, config_with_config_maps, openssl_rsa_pkcs8};
use broker_config::Config;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "gatehouse.example";
const FIELD: &str = "spec.authenticationMethods[0].jwtSettings";

// ------------------------------------------------------------------------------------------------
// Keys and tokens
// ------------------------------------------------------------------------------------------------

/// A signing key, its JWK and a self-signed certificate carrying its public key.
struct SigningKey {
    alg: Algorithm,
    encoding: EncodingKey,
    cert_pem: String,
    /// Ed25519's raw public key: `Jwk::from_encoding_key` does not read rcgen's PKCS#8 v2.
    ed_public: Option<Vec<u8>>,
}

impl SigningKey {
    fn ec() -> SigningKey {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        SigningKey {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            cert_pem: self_signed(&kp),
            ed_public: None,
        }
    }

    fn ed25519() -> SigningKey {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        SigningKey {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&kp.serialize_der()),
            cert_pem: self_signed(&kp),
            ed_public: Some(kp.public_key_raw().to_vec()),
        }
    }

    fn rsa(alg: Algorithm) -> SigningKey {
        let pkcs8 = openssl_rsa_pkcs8();
        let kp = KeyPair::from_pem(&pkcs8).unwrap();
        // jsonwebtoken signs with PKCS#1 DER; openssl converts.
        let mut child = Command::new("openssl")
            .args(["pkey", "-traditional"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pkcs8.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let PrivateKeyDer::Pkcs1(pkcs1) = PrivateKeyDer::from_pem_slice(&out.stdout).unwrap()
        else {
            panic!("openssl pkey -traditional gives PKCS#1 for RSA");
        };
        SigningKey {
            alg,
            encoding: EncodingKey::from_rsa_der(pkcs1.secret_pkcs1_der()),
            cert_pem: self_signed(&kp),
            ed_public: None,
        }
    }

    fn jwk(&self, kid: &str) -> Jwk {
        if let Some(x) = &self.ed_public {
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(x), "kid": kid});
            return serde_json::from_value(jwk).unwrap();
        }
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }

    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn self_signed(kp: &KeyPair) -> String {
    CertificateParams::new(vec!["issuer.example".to_owned()])
        .unwrap()
        .self_signed(kp)
        .unwrap()
        .pem()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for `sub`, expiring in ten minutes.
fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "sub": sub,
        "aud": [AUDIENCE, "someone-else"],
        "iat": now_secs(),
        "nbf": now_secs() - 5,
        "exp": now_secs() + 600,
    })
}

fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ------------------------------------------------------------------------------------------------
// Method helpers
// ------------------------------------------------------------------------------------------------

fn build_in(config: &Config, settings: Value) -> Result<Jwt, PolicyError> {
    let dir = tempfile::tempdir().unwrap();
    let cx = BuildContext {
        policy: "jwt-auth".to_owned(),
        config,
        secrets_dir: dir.path().to_owned(),
    };
    Jwt::from_settings(&cx, &settings, FIELD)
}

fn build(settings: Value) -> Jwt {
    build_in(&config_with_config_maps(&[]), settings).unwrap_or_else(|e| panic!("{e}"))
}

fn settings_with_certs(certs: &[&str]) -> Value {
    json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "issuerCertificates": certs,
    })
}

fn connect(method: &str, token: &str) -> Credentials {
    let mut c = Credentials::connect("client-1");
    c.method = Some(method.to_owned());
    c.data = Some(crate::Secret(Bytes::from(token.to_owned())));
    c
}

fn grant(decision: Decision) -> Grant {
    match decision {
        Decision::Allow(grant) => grant,
        other => panic!("expected Allow, got {other:?}"),
    }
}

fn denied(decision: Decision) -> String {
    match decision {
        Decision::Deny { code: 0x87, reason } => reason,
        other => panic!("expected Deny 0x87, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Validation
// ------------------------------------------------------------------------------------------------

/// Scenario 58: a valid token is allowed; extra claims become attributes (`floor=3`,
/// `tags=[a]`), the username is `sub`, the expiry is `exp`, and it can be renewed.
#[tokio::test]
async fn a_valid_token_gives_a_principal_with_claims_as_attributes() {
    let key = SigningKey::ec();
    let jwt = build(settings_with_certs(&[&key.cert_pem]));
    let exp = now_secs() + 300;
    let token = key.sign(
        None,
        &with(
            claims("dev-1"),
            json!({
                "exp": exp,
                "floor": 3,
                "tags": ["a"],
                "ratio": 2.5,
                "enabled": true,
                "mixed": ["x", 1],
                "nested": {"a": 1},
                "deep": [["a"]],
                "nothing": null
            }),
        ),
    );
    let g = grant(jwt.decide(&connect("CUSTOM-JWT", &token)).await);
    assert_eq!(g.principal.username.as_deref(), Some("dev-1"));
    let expected: BTreeMap<String, String> = [
        ("enabled", "true"),
        ("floor", "3"),
        ("mixed", "[x,1]"),
        ("ratio", "2.5"),
        ("tags", "[a]"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(g.principal.attributes, expected);
    assert_eq!(g.expiry, Some(UNIX_EPOCH + Duration::from_secs(exp as u64)));
    assert!(g.can_reauthenticate);
    // OAUTH2-JWT is the other default method name.
    grant(jwt.decide(&connect("OAUTH2-JWT", &token)).await);
}

/// Scenario 58: an expired token is denied with 0x87; `exp` within the leeway still passes.
#[tokio::test]
async fn expired_tokens_are_denied() {
    let key = SigningKey::ec();
    let jwt = build(settings_with_certs(&[&key.cert_pem]));
    let expired = key.sign(None, &with(claims("d"), json!({"exp": now_secs() - 120})));
    let reason = denied(jwt.decide(&connect("CUSTOM-JWT", &expired)).await);
    assert!(reason.contains("expired"), "{reason}");
    let within_leeway = key.sign(None, &with(claims("d"), json!({"exp": now_secs() - 5})));
    grant(jwt.decide(&connect("CUSTOM-JWT", &within_leeway)).await);
    let strict = build(with(
        settings_with_certs(&[&key.cert_pem]),
        json!({"leewaySeconds": 0}),
    ));
    denied(strict.decide(&connect("CUSTOM-JWT", &within_leeway)).await);
}

#[tokio::test]
async fn claims_are_checked() {
    let key = SigningKey::ec();
    let jwt = build(settings_with_certs(&[&key.cert_pem]));
    let cases = [
        (json!({"nbf": now_secs() + 600}), "not valid yet"),
        (json!({"aud": "other-audience"}), "audience"),
        (json!({"aud": null}), "no aud claim"),
        (json!({"iss": "https://evil.example"}), "issuer"),
        (json!({"iss": null}), "no iss claim"),
        (json!({"exp": null}), "no exp claim"),
        (json!({"sub": null}), "no usable sub claim"),
        (json!({"sub": {"not": "text"}}), "invalid token"),
    ];
    for (change, expected) in cases {
        let token = key.sign(None, &with(claims("d"), change.clone()));
        let reason = denied(jwt.decide(&connect("CUSTOM-JWT", &token)).await);
        assert!(reason.contains(expected), "{change}: {reason}");
    }
    // A single-string audience is fine too.
    let token = key.sign(None, &with(claims("d"), json!({"aud": AUDIENCE})));
    grant(jwt.decide(&connect("CUSTOM-JWT", &token)).await);
}

/// `alg: none` and HMAC with the public key as the secret (algorithm confusion) are refused;
/// so are garbage and a token signed by a key nobody configured.
#[tokio::test]
async fn unsigned_and_confused_tokens_are_denied() {
    let key = SigningKey::rsa(Algorithm::RS256);
    let jwt = build(settings_with_certs(&[&key.cert_pem]));
    let body = b64url(serde_json::to_string(&claims("d")).unwrap().as_bytes());

    let none = format!("{}.{body}.", b64url(br#"{"alg":"none","typ":"JWT"}"#));
    let reason = denied(jwt.decide(&connect("CUSTOM-JWT", &none)).await);
    assert!(reason.contains("malformed"), "{reason}");

    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("d"),
        &EncodingKey::from_secret(key.cert_pem.as_bytes()),
    )
    .unwrap();
    let reason = denied(jwt.decide(&connect("CUSTOM-JWT", &hs)).await);
    assert!(reason.contains("HS256 is not allowed"), "{reason}");

    denied(jwt.decide(&connect("CUSTOM-JWT", "not.a.token")).await);
    denied(jwt.decide(&connect("CUSTOM-JWT", "")).await);
    let other = SigningKey::rsa(Algorithm::RS256);
    let reason = denied(
        jwt.decide(&connect("CUSTOM-JWT", &other.sign(None, &claims("d"))))
            .await,
    );
    assert!(reason.contains("does not verify"), "{reason}");
    // An EC token against an RSA-only configuration finds no key either.
    let ec = SigningKey::ec();
    denied(
        jwt.decide(&connect("CUSTOM-JWT", &ec.sign(None, &claims("d"))))
            .await,
    );
}

#[tokio::test]
async fn relevance_follows_the_authentication_method() {
    let key = SigningKey::ec();
    let jwt = build(with(
        settings_with_certs(&[&key.cert_pem]),
        json!({"authenticationMethods": ["CUSTOM-JWT"]}),
    ));
    let token = key.sign(None, &claims("d"));
    assert_eq!(
        jwt.decide(&connect("OAUTH2-JWT", &token)).await,
        Decision::NotRelevant
    );
    assert_eq!(
        jwt.decide(&connect("K8S-SAT", &token)).await,
        Decision::NotRelevant
    );
    let mut plain = Credentials::connect("c");
    plain.username = Some("u".to_owned());
    plain.password = Some(crate::Secret(Bytes::from(token.clone())));
    assert_eq!(jwt.decide(&plain).await, Decision::NotRelevant);
    let mut empty = connect("CUSTOM-JWT", "");
    empty.data = None;
    let reason = denied(jwt.decide(&empty).await);
    assert!(reason.contains("no token"), "{reason}");
}

/// Scenario 58: AUTH 0x19 with a fresh token → allowed with the new expiry (the frontend
/// answers AUTH 0x00 and re-arms the timer); a stale one is denied (DISCONNECT 0x87).
#[tokio::test]
async fn reauthentication_with_a_fresh_token() {
    let key = SigningKey::ec();
    let chain = crate::chain::Chain::new(
        "jwt-auth",
        vec![Box::new(build(settings_with_certs(&[&key.cert_pem])))],
    );
    let first = grant(
        chain
            .authenticate(&connect("CUSTOM-JWT", &key.sign(None, &claims("d"))))
            .await,
    );
    let later = now_secs() + 3600;
    let mut reauth = connect(
        "CUSTOM-JWT",
        &key.sign(None, &with(claims("d"), json!({"exp": later}))),
    );
    reauth.kind = Kind::Reauthenticate;
    let renewed = grant(chain.authenticate(&reauth).await);
    assert_eq!(
        renewed.expiry,
        Some(UNIX_EPOCH + Duration::from_secs(later as u64))
    );
    assert!(renewed.expiry > first.expiry);
    reauth.data = Some(crate::Secret(Bytes::from(
        key.sign(None, &with(claims("d"), json!({"exp": now_secs() - 600}))),
    )));
    assert!(matches!(
        chain.authenticate(&reauth).await,
        Decision::Deny { code: 0x87, .. }
    ));
}

#[tokio::test]
async fn username_claim_and_listed_claims() {
    let key = SigningKey::ed25519();
    let jwt = build(with(
        settings_with_certs(&[&key.cert_pem]),
        json!({"usernameClaim": "client_id", "claimsToAttributes": ["floor", "aud", "absent"]}),
    ));
    let token = key.sign(
        None,
        &with(
            claims("d"),
            json!({"client_id": "machine-7", "floor": 5, "room": "r1"}),
        ),
    );
    let g = grant(jwt.decide(&connect("CUSTOM-JWT", &token)).await);
    assert_eq!(g.principal.username.as_deref(), Some("machine-7"));
    let attributes: Vec<(&str, &str)> = g
        .principal
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        attributes,
        [("aud", "[gatehouse.example,someone-else]"), ("floor", "5")]
    );
}

/// Two issuer certificates (current and next): tokens from either verify, others do not.
/// RSA PKCS#1 and PSS, one from a ConfigMap, one inline.
#[tokio::test]
async fn key_rotation_with_two_certificates() {
    let current = SigningKey::rsa(Algorithm::RS256);
    let next = SigningKey::rsa(Algorithm::PS384);
    let retired = SigningKey::rsa(Algorithm::RS256);
    let config = config_with_config_maps(&[("issuer-current", &current.cert_pem)]);
    let jwt = build_in(
        &config,
        settings_with_certs(&["issuer-current", &next.cert_pem]),
    )
    .unwrap();
    grant(
        jwt.decide(&connect("CUSTOM-JWT", &current.sign(None, &claims("d"))))
            .await,
    );
    grant(
        jwt.decide(&connect("CUSTOM-JWT", &next.sign(None, &claims("d"))))
            .await,
    );
    denied(
        jwt.decide(&connect("CUSTOM-JWT", &retired.sign(None, &claims("d"))))
            .await,
    );
}

#[test]
fn settings_errors_name_the_field() {
    let key = SigningKey::ec();
    let config = config_with_config_maps(&[("empty", "nothing")]);
    let cases = [
        (Value::Null, ""),
        (
            json!({"audiences": [AUDIENCE], "issuerCertificates": [key.cert_pem]}),
            "issuer",
        ),
        (
            json!({"issuer": ISSUER, "audiences": [], "issuerCertificates": [key.cert_pem]}),
            "audiences",
        ),
        (json!({"issuer": ISSUER, "audiences": [AUDIENCE]}), ""),
        (
            settings_with_certs(&[&key.cert_pem, &key.cert_pem, &key.cert_pem]),
            "issuerCertificates",
        ),
        (settings_with_certs(&["empty"]), "issuerCertificates[0]"),
        (settings_with_certs(&["missing"]), "issuerCertificates[0]"),
        (
            with(
                settings_with_certs(&[&key.cert_pem]),
                json!({"jwksUrl": "ftp://x/keys"}),
            ),
            "jwksUrl",
        ),
        (
            with(
                settings_with_certs(&[&key.cert_pem]),
                json!({"caCertConfigMap": "empty"}),
            ),
            "caCertConfigMap",
        ),
        (
            with(
                settings_with_certs(&[&key.cert_pem]),
                json!({"leewaySeconds": -1}),
            ),
            "leewaySeconds",
        ),
        (
            with(
                settings_with_certs(&[&key.cert_pem]),
                json!({"authenticationMethods": []}),
            ),
            "authenticationMethods",
        ),
        (
            with(
                settings_with_certs(&[&key.cert_pem]),
                json!({"audience": "x"}),
            ),
            "audience",
        ),
        (
            with(
                settings_with_certs(&[&key.cert_pem]),
                json!({"jwksUrl": "https://127.0.0.1:1/k", "caCertConfigMap": "empty"}),
            ),
            "caCertConfigMap",
        ),
    ];
    for (settings, field) in cases {
        match build_in(&config, settings.clone()) {
            Ok(_) => panic!("{settings} should be refused"),
            Err(e) => {
                assert!(e.field.starts_with(FIELD), "{e}");
                assert!(e.field.ends_with(field), "{settings}: {e}");
                assert_eq!(e.policy, "jwt-auth");
            }
        }
    }
}

#[test]
fn claim_text_format() {
    assert_eq!(claim_text(&json!("a b")).as_deref(), Some("a b"));
    assert_eq!(claim_text(&json!(-7)).as_deref(), Some("-7"));
    assert_eq!(claim_text(&json!(["a", "b"])).as_deref(), Some("[a,b]"));
    assert_eq!(claim_text(&json!([])).as_deref(), Some("[]"));
    assert_eq!(claim_text(&json!({"a": 1})), None);
    assert_eq!(claim_text(&Value::Null), None);
}

// ------------------------------------------------------------------------------------------------
// JWKS
// ------------------------------------------------------------------------------------------------

/// A JWKS server on 127.0.0.1:0: serves `body` with `status`, counts requests.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<parking_lot::Mutex<String>>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(parking_lot::Mutex::new(r#"{"keys":[]}"#.to_owned()));
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, s, h) = (body.clone(), status.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (b, s, h) = (b.clone(), s.clone(), h.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (b, s, h) = (b.clone(), s.clone(), h.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            let body = if req.uri().path() == "/keys" {
                                b.lock().clone()
                            } else {
                                String::new()
                            };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(s.load(Ordering::SeqCst))
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        JwksServer {
            addr,
            body,
            status,
            hits,
            task,
        }
    }

    fn serve(&self, keys: &[Jwk]) {
        *self.body.lock() = serde_json::to_string(&JwkSet {
            keys: keys.to_vec(),
        })
        .unwrap();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/keys", self.addr)
    }
}

fn jwks_settings(url: &str) -> Value {
    json!({"issuer": ISSUER, "audiences": [AUDIENCE], "jwksUrl": url})
}

fn jwks_of(jwt: &mut Jwt) -> &mut Jwks {
    jwt.jwks.as_mut().unwrap()
}

/// An unknown `kid` refetches the set (key rotation at the issuer); a known one does not; and
/// refetching is rate limited.
#[tokio::test]
async fn unknown_kid_refetches_the_key_set() {
    let server = JwksServer::start(None).await;
    let k1 = SigningKey::ec();
    let k2 = SigningKey::rsa(Algorithm::RS256);
    let k3 = SigningKey::ed25519();
    server.serve(&[k1.jwk("k1")]);
    let mut jwt = build(jwks_settings(&server.url("http")));
    jwks_of(&mut jwt).min_refetch = Duration::ZERO;

    assert_eq!(server.hits(), 0, "fetched lazily, not at load");
    grant(
        jwt.decide(&connect("CUSTOM-JWT", &k1.sign(Some("k1"), &claims("d"))))
            .await,
    );
    grant(
        jwt.decide(&connect("CUSTOM-JWT", &k1.sign(Some("k1"), &claims("d"))))
            .await,
    );
    assert_eq!(server.hits(), 1, "a known kid is served from the cache");

    server.serve(&[k1.jwk("k1"), k2.jwk("k2")]);
    grant(
        jwt.decide(&connect("CUSTOM-JWT", &k2.sign(Some("k2"), &claims("d"))))
            .await,
    );
    assert_eq!(server.hits(), 2, "an unknown kid refetched the set");

    // A kid the fresh set does not have either is a denial, not a transient failure.
    let reason = denied(
        jwt.decide(&connect("CUSTOM-JWT", &k3.sign(Some("k3"), &claims("d"))))
            .await,
    );
    assert!(reason.contains("unknown key id"), "{reason}");
    // A token naming k1 but signed by k2 does not verify.
    denied(
        jwt.decide(&connect("CUSTOM-JWT", &k2.sign(Some("k1"), &claims("d"))))
            .await,
    );

    // Rate limited: within the interval, an unknown kid does not fetch again.
    jwks_of(&mut jwt).min_refetch = Duration::from_secs(3600);
    let before = server.hits();
    server.serve(&[k3.jwk("k3")]);
    denied(
        jwt.decide(&connect("CUSTOM-JWT", &k3.sign(Some("k3"), &claims("d"))))
            .await,
    );
    assert_eq!(server.hits(), before);
}

/// A JWK whose `alg` differs from the token's header is not used for it; encryption keys are
/// skipped.
#[tokio::test]
async fn jwk_alg_and_use_are_respected() {
    let server = JwksServer::start(None).await;
    let key = SigningKey::rsa(Algorithm::RS256);
    let mut pinned = key.jwk("k");
    pinned.common.key_algorithm = Some(KeyAlgorithm::PS256);
    server.serve(&[pinned]);
    let jwt = build(jwks_settings(&server.url("http")));
    denied(
        jwt.decide(&connect("CUSTOM-JWT", &key.sign(Some("k"), &claims("d"))))
            .await,
    );

    let server = JwksServer::start(None).await;
    let mut enc = key.jwk("k");
    enc.common.public_key_use = Some(PublicKeyUse::Encryption);
    server.serve(&[enc]);
    let jwt = build(jwks_settings(&server.url("http")));
    denied(
        jwt.decide(&connect("CUSTOM-JWT", &key.sign(Some("k"), &claims("d"))))
            .await,
    );
}

/// An unreachable or failing JWKS endpoint is a transient failure (CONNECT 0x88, re-auth
/// AUTH 0x18), never a denial; once it answers, the same token is accepted.
#[tokio::test]
async fn jwks_failures_are_transient() {
    let key = SigningKey::ec();
    let token = key.sign(Some("k"), &claims("d"));

    // Nothing listens on this port once the listener is dropped.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let jwt = build(jwks_settings(&format!("http://{closed}/keys")));
    assert!(matches!(
        jwt.decide(&connect("CUSTOM-JWT", &token)).await,
        Decision::Transient { .. }
    ));

    let server = JwksServer::start(None).await;
    server.serve(&[key.jwk("k")]);
    server.status.store(503, Ordering::SeqCst);
    let mut jwt = build(jwks_settings(&server.url("http")));
    jwks_of(&mut jwt).min_refetch = Duration::ZERO;
    match jwt.decide(&connect("CUSTOM-JWT", &token)).await {
        Decision::Transient { reason } => assert!(reason.contains("503"), "{reason}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    server.status.store(200, Ordering::SeqCst);
    grant(jwt.decide(&connect("CUSTOM-JWT", &token)).await);

    // With the set cached, an outage does not affect tokens whose key is known...
    server.status.store(500, Ordering::SeqCst);
    grant(jwt.decide(&connect("CUSTOM-JWT", &token)).await);
    // ...but an unknown kid cannot be settled: transient.
    let other = SigningKey::ec();
    assert!(matches!(
        jwt.decide(&connect(
            "CUSTOM-JWT",
            &other.sign(Some("new"), &claims("d"))
        ))
        .await,
        Decision::Transient { .. }
    ));
}

/// JWKS over HTTPS, the server verified against `caCertConfigMap`; a server the CA did not
/// issue cannot serve keys (transient failure).
#[tokio::test]
async fn jwks_over_https_with_a_configured_ca() {
    let ca = Ca::root("JWKS Test CA", KeyKind::Ec256);
    let server_chain = ca.server_cert("127.0.0.1");
    let tls = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(server_chain.0, server_chain.1)
        .unwrap(),
    );
    let server = JwksServer::start(Some(tls)).await;
    let key = SigningKey::ec();
    server.serve(&[key.jwk("k")]);
    let token = key.sign(Some("k"), &claims("d"));

    let config = config_with_config_maps(&[("jwks-ca", &ca.pem)]);
    let mut settings = jwks_settings(&server.url("https"));
    settings["caCertConfigMap"] = json!("jwks-ca");
    let jwt = build_in(&config, settings).unwrap();
    grant(jwt.decide(&connect("CUSTOM-JWT", &token)).await);

    let other_ca = Ca::root("Someone Else", KeyKind::Ec256);
    let config = config_with_config_maps(&[("jwks-ca", &other_ca.pem)]);
    let mut settings = jwks_settings(&server.url("https"));
    settings["caCertConfigMap"] = json!("jwks-ca");
    let jwt = build_in(&config, settings).unwrap();
    assert!(matches!(
        jwt.decide(&connect("CUSTOM-JWT", &token)).await,
        Decision::Transient { .. }
    ));
}

/// Configured certificates and a JWKS together: the certificates need no fetch.
#[tokio::test]
async fn certificates_are_tried_before_the_key_set() {
    let server = JwksServer::start(None).await;
    let static_key = SigningKey::ec();
    let remote = SigningKey::ec();
    server.serve(&[remote.jwk("r")]);
    let mut settings = settings_with_certs(&[&static_key.cert_pem]);
    settings["jwksUrl"] = json!(server.url("http"));
    let jwt = build(settings);
    grant(
        jwt.decide(&connect("CUSTOM-JWT", &static_key.sign(None, &claims("d"))))
            .await,
    );
    assert_eq!(server.hits(), 0);
    grant(
        jwt.decide(&connect(
            "CUSTOM-JWT",
            &remote.sign(Some("r"), &claims("d")),
        ))
        .await,
    );
    assert_eq!(server.hits(), 1);
}

#[test]
fn jwks_documents_skip_unusable_keys() {
    let key = SigningKey::ec();
    let good = serde_json::to_value(key.jwk("good")).unwrap();
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "weird", "kid": "x"},
        good,
    ]});
    let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid.as_deref(), Some("good"));
    assert!(parse_jwks(b"{}").is_err());
    assert!(parse_jwks(b"<html>").is_err());
}
