//! A fake Kubernetes API server on loopback for the `ServiceAccountToken` method: the endpoints
//! the broker uses, in the real wire format (design/tooling.md §2), over plain HTTP.
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: a `TokenReview` in, the same object
//!   with `status` out (201). A token is authenticated when the test registered it (tokens from
//!   [`FakeKube::mint`] are registered), it has not expired or been revoked, and its audiences
//!   share one with `spec.audiences` — then `status.audiences` holds the common ones, as the
//!   real apiserver answers. Otherwise `authenticated` is absent and `status.error` says why.
//! - `GET /api/v1/namespaces/{ns}/serviceaccounts/{name}`: the ServiceAccount with the
//!   annotations the test set, or a 404 `Status`.
//! - `GET /.well-known/openid-configuration` and `GET /openid/v1/jwks`: ServiceAccountIssuerDiscovery,
//!   with the public halves of the fake's signing keys.
//!
//! It mints real bound-token JWTs (RS256 with an openssl-generated key, or ES256 with rcgen),
//! shaped like a 1.30 cluster's (`aud`, `exp`, `iat`, `nbf`, `iss`, `jti`, `sub`, `kubernetes.io`).
//! Knobs: answer everything with an HTTP status ([`FakeKube::fail_with`]), delay every answer
//! ([`FakeKube::set_delay`]), require the broker's bearer token ([`FakeKube::require_bearer`]),
//! rotate the signing key, and go away ([`FakeKube::stop`] closes the port and every open
//! connection, so pooled keep-alive connections die too) and come back ([`FakeKube::restart`]).
//! Point the broker at it with [`FakeKube::write_kubeconfig`] and `KUBECONFIG`.
//!
//! It is served with hyper directly, like `fake_custom_auth`, because `stop` must cut live
//! connections, which `axum::serve` cannot. It is not an apiserver: no RBAC, no other resources,
//! no persistence.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::restartable::{self, Running};

/// The issuer of minted tokens and of the discovery document (a real cluster's default).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The bearer token the kubeconfig of [`FakeKube::write_kubeconfig`] gives the broker.
pub const BROKER_TOKEN: &str = "gatehouse-broker-sa-token";
const MAX_BODY: usize = 1024 * 1024;

/// The endpoints, for [`FakeKube::hits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    TokenReview,
    ServiceAccount,
    Discovery,
    Jwks,
}

/// Signing key kinds a cluster uses for service-account tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rs256,
    Es256,
}

struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    fn generate(kind: KeyKind, kid: &str) -> SigningKey {
        let (alg, key) = match kind {
            KeyKind::Es256 => {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .expect("P-256 key");
                (
                    Algorithm::ES256,
                    EncodingKey::from_ec_der(&kp.serialize_der()),
                )
            }
            KeyKind::Rs256 => (
                Algorithm::RS256,
                EncodingKey::from_rsa_der(&rsa_pkcs1_der()),
            ),
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public JWK of the signing key");
        jwk.common.key_id = Some(kid.to_string());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        SigningKey {
            kid: kid.to_string(),
            alg,
            key,
            jwk,
        }
    }
}

/// ring cannot generate RSA keys; openssl (as in `pki`) can. jsonwebtoken's pure-Rust backend
/// reads PKCS#1 DER.
fn rsa_pkcs1_der() -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl to generate an RSA key: {e}"));
    assert!(
        out.status.success(),
        "openssl genrsa failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rustls_pki_types::PrivatePkcs1KeyDer::from_pem_slice(&out.stdout)
        .expect("openssl writes a PKCS#1 PEM")
        .secret_pkcs1_der()
        .to_vec()
}

/// What a minted token says; [`Mint::new`] gives a normal bound token.
#[derive(Clone, Debug)]
pub struct Mint {
    pub namespace: String,
    pub name: String,
    pub audiences: Vec<String>,
    /// Lifetime from now; negative = already expired.
    pub ttl_secs: i64,
    pub issuer: String,
    /// Register the token for TokenReview (a token the apiserver knows).
    pub register: bool,
}

impl Mint {
    pub fn new(namespace: &str, name: &str, audiences: &[&str], ttl: Duration) -> Mint {
        Mint {
            namespace: namespace.to_string(),
            name: name.to_string(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            ttl_secs: ttl.as_secs() as i64,
            issuer: ISSUER.to_string(),
            register: true,
        }
    }
}

struct Registered {
    username: String,
    audiences: Vec<String>,
    exp: u64,
    revoked: bool,
}

struct State {
    keys: Vec<SigningKey>,
    /// Index in `keys` of the key new tokens are signed with.
    current: usize,
    tokens: HashMap<String, Registered>,
    service_accounts: HashMap<(String, String), BTreeMap<String, String>>,
    fail_with: Option<u16>,
    delay: Duration,
    require_bearer: Option<String>,
    hits: HashMap<Endpoint, usize>,
    reviews: Vec<Value>,
    next_jti: u64,
}

pub struct FakeKube {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    running: Option<Running>,
}

impl FakeKube {
    /// Listens on 127.0.0.1:0 with one ES256 signing key (kid `key-1`).
    pub async fn start() -> FakeKube {
        FakeKube::start_with_key(KeyKind::Es256).await
    }

    pub async fn start_with_key(kind: KeyKind) -> FakeKube {
        let state = Arc::new(Mutex::new(State {
            keys: vec![SigningKey::generate(kind, "key-1")],
            current: 0,
            tokens: HashMap::new(),
            service_accounts: HashMap::new(),
            fail_with: None,
            delay: Duration::ZERO,
            require_bearer: None,
            hits: HashMap::new(),
            reviews: Vec::new(),
            next_jti: 0,
        }));
        let mut fake = FakeKube {
            addr: "127.0.0.1:0".parse().unwrap(),
            state,
            running: None,
        };
        fake.listen()
            .expect("the fake apiserver listens on loopback");
        fake
    }

    fn listen(&mut self) -> io::Result<()> {
        let state = self.state.clone();
        let (addr, running) = restartable::listen(self.addr, |listener, shutdown| {
            accept_loop(listener, state, shutdown)
        })?;
        self.addr = addr;
        self.running = Some(running);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context is this fake, authenticating with [`BROKER_TOKEN`].
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: gatehouse\n  user:\n    token: {BROKER_TOKEN}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: gatehouse\n    namespace: default\n\
             current-context: fake\n",
            url = self.url()
        )
    }

    /// Writes [`FakeKube::kubeconfig`] into `dir`; set `KUBECONFIG` to the returned path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig.yaml");
        std::fs::write(&path, self.kubeconfig()).expect("write the kubeconfig");
        path
    }

    /// Creates or replaces a ServiceAccount with these annotations.
    pub fn service_account(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        self.state.lock().service_accounts.insert(
            (namespace.to_string(), name.to_string()),
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    pub fn delete_service_account(&self, namespace: &str, name: &str) {
        self.state
            .lock()
            .service_accounts
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// A bound token for `namespace/name` with these audiences, valid for `ttl`, signed with
    /// the current key and known to TokenReview.
    pub fn mint(&self, namespace: &str, name: &str, audiences: &[&str], ttl: Duration) -> String {
        self.mint_with(&Mint::new(namespace, name, audiences, ttl))
    }

    pub fn mint_with(&self, m: &Mint) -> String {
        let mut s = self.state.lock();
        s.next_jti += 1;
        let now = unix_now() as i64;
        let exp = now + m.ttl_secs;
        let claims = json!({
            "aud": m.audiences,
            "exp": exp,
            "iat": now - 1,
            "nbf": now - 1,
            "iss": m.issuer,
            "jti": format!("00000000-0000-4000-8000-{:012x}", s.next_jti),
            "sub": format!("system:serviceaccount:{}:{}", m.namespace, m.name),
            "kubernetes.io": {
                "namespace": m.namespace,
                "serviceaccount": {"name": m.name, "uid": "5f1c5b0e-0000-4000-8000-000000000001"},
                "pod": {"name": format!("{}-pod", m.name), "uid": "5f1c5b0e-0000-4000-8000-000000000002"},
                "node": {"name": "node-1", "uid": "5f1c5b0e-0000-4000-8000-000000000003"}
            }
        });
        let key = &s.keys[s.current];
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.key).expect("sign the token");
        if m.register {
            s.tokens.insert(
                token.clone(),
                Registered {
                    username: format!("system:serviceaccount:{}:{}", m.namespace, m.name),
                    audiences: m.audiences.clone(),
                    exp: exp.max(0) as u64,
                    revoked: false,
                },
            );
        }
        token
    }

    /// TokenReview stops accepting `token` (its pod was deleted).
    pub fn revoke(&self, token: &str) {
        if let Some(t) = self.state.lock().tokens.get_mut(token) {
            t.revoked = true;
        }
    }

    /// Adds a new signing key and signs new tokens with it; the JWKS publishes both unless
    /// `drop_old`. Returns the new kid.
    pub fn rotate_key(&self, kind: KeyKind, drop_old: bool) -> String {
        let mut s = self.state.lock();
        let kid = format!("key-{}", s.keys.len() + 1);
        let key = SigningKey::generate(kind, &kid);
        if drop_old {
            s.keys.clear();
        }
        s.keys.push(key);
        s.current = s.keys.len() - 1;
        kid
    }

    /// Answer every request with this HTTP status (a `Status` body), or normally with `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        self.state.lock().fail_with = status;
    }

    /// Delay every answer by this much.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// Refuse (401) requests without `Authorization: Bearer <token>`.
    pub fn require_bearer(&self, token: Option<&str>) {
        self.state.lock().require_bearer = token.map(str::to_string);
    }

    pub fn hits(&self, endpoint: Endpoint) -> usize {
        self.state.lock().hits.get(&endpoint).copied().unwrap_or(0)
    }

    /// Every TokenReview request body received, in order.
    pub fn reviews(&self) -> Vec<Value> {
        self.state.lock().reviews.clone()
    }

    /// Closes the port and every open connection; in-flight requests get no answer.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Listens again on the same port after [`FakeKube::stop`].
    pub async fn restart(&mut self) {
        self.stop().await;
        self.listen().expect("listen again on the same port");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let serve = builder.serve_connection(TokioIo::new(tcp), service);
            // Dropping the connection future on stop closes the socket mid-request.
            tokio::select! {
                _ = serve => {}
                _ = shutdown.wait_for(|stopped| *stopped) => {}
            }
        });
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// A `meta/v1` Status, the apiserver's error body.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (delay, fail_with, require_bearer) = {
        let s = state.lock();
        (s.delay, s.fail_with, s.require_bearer.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = fail_with {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(status(
            code,
            "InternalError",
            "the fake apiserver was told to fail",
        ));
    }
    if let Some(expected) = require_bearer {
        let given = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(&format!("Bearer {expected}")) {
            return Ok(status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized",
            ));
        }
    }
    let path = parts.uri.path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut s = state.lock();
    let response = match (parts.method.as_str(), segments.as_slice()) {
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            *s.hits.entry(Endpoint::TokenReview).or_default() += 1;
            let Ok(mut review) = serde_json::from_slice::<Value>(&body) else {
                return Ok(status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON"));
            };
            s.reviews.push(review.clone());
            review["status"] = token_review_status(&s, &review);
            json_response(StatusCode::CREATED, &review)
        }
        ("GET", ["api", "v1", "namespaces", ns, "serviceaccounts", name]) => {
            *s.hits.entry(Endpoint::ServiceAccount).or_default() += 1;
            match s.service_accounts.get(&(ns.to_string(), name.to_string())) {
                Some(annotations) => json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "ServiceAccount", "apiVersion": "v1",
                        "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                                     "uid": "5f1c5b0e-0000-4000-8000-000000000001",
                                     "resourceVersion": "1"}
                    }),
                ),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("serviceaccounts \"{name}\" not found"),
                ),
            }
        }
        ("GET", [".well-known", "openid-configuration"]) => {
            *s.hits.entry(Endpoint::Discovery).or_default() += 1;
            // jwks_uri names the apiserver's external address, as a real one does; clients
            // fetch its path from the apiserver they already talk to.
            json_response(
                StatusCode::OK,
                &json!({
                    "issuer": ISSUER,
                    "jwks_uri": "https://10.96.0.1:443/openid/v1/jwks",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256", "RS256"]
                }),
            )
        }
        ("GET", ["openid", "v1", "jwks"]) => {
            *s.hits.entry(Endpoint::Jwks).or_default() += 1;
            let set = JwkSet {
                keys: s.keys.iter().map(|k| k.jwk.clone()).collect(),
            };
            json_response(
                StatusCode::OK,
                &serde_json::to_value(set).expect("a JWK set serialises"),
            )
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    };
    Ok(response)
}

fn token_review_status(s: &State, review: &Value) -> Value {
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("");
    let wanted: Vec<&str> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let unauthenticated = |error: &str| json!({"user": {}, "error": error});
    let Some(t) = s.tokens.get(token) else {
        return unauthenticated("invalid bearer token");
    };
    if t.revoked {
        return unauthenticated("pod does not exist");
    }
    if t.exp <= unix_now() {
        return unauthenticated("token has expired");
    }
    // Without spec.audiences the apiserver checks against its own audiences.
    let wanted: Vec<&str> = if wanted.is_empty() {
        vec![ISSUER]
    } else {
        wanted
    };
    let common: Vec<&str> = t
        .audiences
        .iter()
        .map(String::as_str)
        .filter(|a| wanted.contains(a))
        .collect();
    if common.is_empty() {
        return unauthenticated("token audiences are invalid for the target audiences");
    }
    let (ns, name) = t
        .username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
        .unwrap_or(("", ""));
    json!({
        "authenticated": true,
        "user": {
            "username": t.username,
            "uid": "5f1c5b0e-0000-4000-8000-000000000001",
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/pod-name": [format!("{name}-pod")],
                "authentication.kubernetes.io/pod-uid": ["5f1c5b0e-0000-4000-8000-000000000002"],
                "authentication.kubernetes.io/node-name": ["node-1"],
                "authentication.kubernetes.io/credential-id": ["JTI=00000000-0000-4000-8000-000000000000"]
            }
        },
        "audiences": common
    })
}
