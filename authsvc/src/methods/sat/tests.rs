//! Unit tests of the `ServiceAccountToken` method against a minimal fake Kubernetes API server:
//! an axum app on 127.0.0.1:0 speaking the real wire format (TokenReview, ServiceAccount,
//! OIDC discovery, JWKS), reached through kube over real HTTP. The full-featured fake for
//! end-to-end tests lives in `tests/src/fake_kube.rs`.
//!
//! Scenario numbers refer to broker-spec §10 (7, 8, 9, 24).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes as Body;
use axum::http::{Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::*;
use crate::{Method, Secret};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUD: &str = "aio-internal";

// ---------------------------------------------------------------------------------------------
// The fake apiserver
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct State {
    /// token → (username, audiences the token is valid for)
    tokens: HashMap<String, (String, Vec<String>)>,
    annotations: HashMap<(String, String), BTreeMap<String, String>>,
    fail_with: Option<u16>,
    /// Answer authenticated reviews without status.audiences (an audience-unaware apiserver).
    omit_audiences: bool,
    delay: Duration,
    jwks: Vec<Jwk>,
    hits: HashMap<&'static str, usize>,
    reviews: Vec<Value>,
}

struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Fake {
    async fn start() -> Fake {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app_state = state.clone();
        let app = axum::Router::new().fallback(move |m: HttpMethod, u: Uri, b: Body| {
            let state = app_state.clone();
            async move { handle(state, m, u, b).await }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Fake {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn source(&self) -> KubeSource {
        let url = format!("http://{}", self.addr).parse().unwrap();
        KubeSource::Config(Box::new(kube::Config::new(url)))
    }

    fn token(&self, token: &str, sa: (&str, &str), audiences: &[&str]) {
        self.state.lock().tokens.insert(
            token.to_string(),
            (
                format!("system:serviceaccount:{}:{}", sa.0, sa.1),
                audiences.iter().map(|s| s.to_string()).collect(),
            ),
        );
    }

    fn service_account(&self, ns: &str, name: &str, annotations: &[(&str, &str)]) {
        self.state.lock().annotations.insert(
            (ns.to_string(), name.to_string()),
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    fn hits(&self, what: &str) -> usize {
        self.state.lock().hits.get(what).copied().unwrap_or(0)
    }

    /// Stops serving; later connections are refused.
    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            // Graceful shutdown waits for idle keep-alive connections; abort after a bound.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

async fn handle(state: Arc<Mutex<State>>, method: HttpMethod, uri: Uri, body: Body) -> Response {
    let (fail, delay) = {
        let s = state.lock();
        (s.fail_with, s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = fail {
        let code = StatusCode::from_u16(code).unwrap();
        return (code, "internal error").into_response();
    }
    let path = uri.path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut s = state.lock();
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            *s.hits.entry("tokenreview").or_default() += 1;
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            s.reviews.push(req.clone());
            let token = req
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or("");
            let wanted: Vec<String> = req
                .pointer("/spec/audiences")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let status = match s.tokens.get(token) {
                Some((user, auds)) => {
                    let common: Vec<&String> = auds.iter().filter(|a| wanted.contains(a)).collect();
                    if s.omit_audiences {
                        json!({"authenticated": true, "user": {"username": user}})
                    } else if common.is_empty() {
                        json!({"user": {}, "error": "token audiences are invalid for the target audiences"})
                    } else {
                        json!({"authenticated": true,
                               "user": {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts"]},
                               "audiences": common})
                    }
                }
                None => json!({"user": {}, "error": "invalid bearer token"}),
            };
            let mut out = req;
            out["status"] = status;
            json_response(StatusCode::CREATED, out)
        }
        ("GET", ["api", "v1", "namespaces", ns, "serviceaccounts", name]) => {
            *s.hits.entry("serviceaccount").or_default() += 1;
            match s.annotations.get(&(ns.to_string(), name.to_string())) {
                Some(a) => json_response(
                    StatusCode::OK,
                    json!({
                        "kind": "ServiceAccount", "apiVersion": "v1",
                        "metadata": {"name": name, "namespace": ns, "annotations": a}
                    }),
                ),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": format!("serviceaccounts \"{name}\" not found")}),
                ),
            }
        }
        ("GET", [".well-known", "openid-configuration"]) => {
            *s.hits.entry("discovery").or_default() += 1;
            json_response(
                StatusCode::OK,
                json!({
                    "issuer": ISSUER,
                    "jwks_uri": "https://10.0.0.1:6443/openid/v1/jwks",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"]
                }),
            )
        }
        ("GET", ["openid", "v1", "jwks"]) => {
            *s.hits.entry("jwks").or_default() += 1;
            json_response(
                StatusCode::OK,
                serde_json::to_value(JwkSet {
                    keys: s.jwks.clone(),
                })
                .unwrap(),
            )
        }
        _ => (StatusCode::NOT_FOUND, "no such path").into_response(),
    }
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Token minting
// ---------------------------------------------------------------------------------------------

struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn es256(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&kp.serialize_der()),
        }
    }

    /// RSA keys come from the openssl command line (ring cannot generate them); PKCS#1 DER is
    /// what jsonwebtoken's pure-Rust backend reads.
    fn rs256(kid: &str) -> Signer {
        use rustls_pki_types::pem::PemObject;
        let out = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "2048"])
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl genrsa failed");
        let der = rustls_pki_types::PrivatePkcs1KeyDer::from_pem_slice(&out.stdout).unwrap();
        Signer {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_der(der.secret_pkcs1_der()),
        }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a bound token for `ns/name`, valid for `ttl` seconds.
fn claims(ns: &str, name: &str, aud: &[&str], ttl: i64) -> Value {
    let now = now() as i64;
    json!({
        "aud": aud, "exp": now + ttl, "iat": now - 5, "nbf": now - 5, "iss": ISSUER,
        "jti": format!("jti-{}-{}", name, rand_suffix()),
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "sa-uid"},
                          "pod": {"name": "p", "uid": "pod-uid"}}
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn settings(verification: Verification) -> Settings {
    Settings {
        audiences: vec![AUD.to_string()],
        verification,
    }
}

fn offline(first_use: bool) -> Verification {
    Verification::OfflineJwks {
        token_review_on_first_use: first_use,
    }
}

fn tuning() -> Tuning {
    Tuning {
        request_timeout: Duration::from_secs(5),
        jwks_min_refetch: Duration::ZERO,
        annotation_ttl: Duration::from_secs(30),
    }
}

fn method(fake: &Fake, verification: Verification) -> ServiceAccountToken {
    ServiceAccountToken::new(settings(verification), fake.source(), tuning())
}

fn v5(token: &str) -> Credentials {
    let mut c = Credentials::connect("sat-client");
    c.method = Some(METHOD.into());
    c.data = Some(Secret(Bytes::from(token.to_string())));
    c
}

fn v3(token: &str) -> Credentials {
    let mut c = Credentials::connect("sat-client");
    c.protocol_version = 4;
    c.username = Some(METHOD.into());
    c.password = Some(Secret(Bytes::from(token.to_string())));
    c
}

fn grant(d: Decision) -> Grant {
    match d {
        Decision::Allow(g) => g,
        other => panic!("expected Allow, got {other:?}"),
    }
}

fn assert_denied(d: &Decision, contains: &str) {
    match d {
        Decision::Deny { code, reason } => {
            assert_eq!(*code, 0x87, "{reason}");
            assert!(reason.contains(contains), "{reason:?} lacks {contains:?}");
        }
        other => panic!("expected Deny 0x87, got {other:?}"),
    }
}

fn assert_transient(d: &Decision) {
    assert!(
        matches!(d, Decision::Transient { .. }),
        "expected Transient, got {d:?}"
    );
}

fn exp_of(token: &str) -> SystemTime {
    let exp = offline::unverified_claims(token).unwrap().exp.unwrap();
    UNIX_EPOCH + Duration::from_secs(exp)
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

fn parse(v: Value) -> Result<Settings, PolicyError> {
    let config = broker_config::Config::embedded_default();
    let cx = BuildContext {
        policy: "p".into(),
        config: &config,
        secrets_dir: "/nonexistent".into(),
    };
    parse_settings(
        &cx,
        &v,
        "spec.authenticationMethods[0].serviceAccountTokenSettings",
    )
}

#[test]
fn settings_require_at_least_one_audience_and_name_the_field() {
    for bad in [
        json!(null),
        json!({}),
        json!({"audiences": []}),
        json!({"audiences": "x"}),
    ] {
        let e = parse(bad.clone()).unwrap_err();
        assert!(
            e.field.ends_with("serviceAccountTokenSettings.audiences")
                || (bad.is_null() && e.field.ends_with("serviceAccountTokenSettings")),
            "{e}"
        );
    }
    let e = parse(json!({"audiences": ["a", ""]})).unwrap_err();
    assert!(e.field.ends_with("audiences[1]"), "{e}");
    let e = parse(json!({"audiences": ["a"], "audience": "b"})).unwrap_err();
    assert!(
        e.field.ends_with(".audience") && e.reason.contains("unknown field"),
        "{e}"
    );
}

#[test]
fn settings_read_verification_options() {
    assert_eq!(
        parse(json!({"audiences": ["aio-internal"]})).unwrap(),
        Settings {
            audiences: vec!["aio-internal".into()],
            verification: Verification::TokenReview
        }
    );
    assert_eq!(
        parse(json!({"audiences": ["a"], "verification": "OfflineJwks", "tokenReviewOnFirstUse": true}))
            .unwrap()
            .verification,
        offline(true)
    );
    assert_eq!(
        parse(json!({"audiences": ["a"], "verification": "OfflineJwks"}))
            .unwrap()
            .verification,
        offline(false)
    );
    let e = parse(json!({"audiences": ["a"], "verification": "Jwks"})).unwrap_err();
    assert!(e.field.ends_with(".verification"), "{e}");
    let e = parse(json!({"audiences": ["a"], "tokenReviewOnFirstUse": true})).unwrap_err();
    assert!(e.field.ends_with(".tokenReviewOnFirstUse"), "{e}");
    let e = parse(
        json!({"audiences": ["a"], "verification": "OfflineJwks", "tokenReviewOnFirstUse": "yes"}),
    )
    .unwrap_err();
    assert!(e.field.ends_with(".tokenReviewOnFirstUse"), "{e}");
}

#[test]
fn policy_compiles_a_service_account_token_method() {
    let config = broker_config::Config::from_yaml_str(
        "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: default}\n\
         spec:\n  ports:\n    - {port: 0, authenticationRef: sat}\n---\n\
         apiVersion: gatehouse.io/v1\nkind: BrokerAuthentication\nmetadata: {name: sat}\n\
         spec:\n  authenticationMethods:\n    - method: ServiceAccountToken\n      \
         serviceAccountTokenSettings: {audiences: [aio-internal]}\n",
        "test",
    )
    .unwrap();
    let chains = crate::policy::compile(&config, "/nonexistent".into()).unwrap();
    assert_eq!(chains["sat"].method_names(), vec!["ServiceAccountToken"]);
}

// ---------------------------------------------------------------------------------------------
// Relevance
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn only_k8s_sat_credentials_are_relevant() {
    // Scenario 9: username/password only is not for this method (the chain then denies 0x87).
    let fake = Fake::start().await;
    let m = method(&fake, Verification::TokenReview);
    let mut userpass = Credentials::connect("c");
    userpass.username = Some("alice".into());
    userpass.password = Some(Secret(Bytes::from_static(b"pw")));
    let mut other_method = v5("tok");
    other_method.method = Some("OAUTH2-JWT".into());
    // The method, not the username, says what a v5 client is doing.
    let mut other_method_sat_user = other_method.clone();
    other_method_sat_user.username = Some(METHOD.into());
    let mut prefix_only = v3("tok");
    prefix_only.username = Some("K8S-SATURN".into());
    let mut reauth_without_method = v3("tok");
    reauth_without_method.kind = Kind::Reauthenticate;
    for c in [
        Credentials::connect("c"),
        userpass,
        other_method,
        other_method_sat_user,
        prefix_only,
        reauth_without_method,
    ] {
        assert_eq!(m.authenticate(&c).await, Decision::NotRelevant, "{c:?}");
    }
    assert_eq!(fake.hits("tokenreview"), 0);

    // Relevant but unusable: denied here, no fall-through, no apiserver call.
    assert_denied(&m.authenticate(&v5("")).await, "without a token");
    let mut no_data = v5("x");
    no_data.data = None;
    assert_denied(&m.authenticate(&no_data).await, "without a token");
    assert_denied(&m.authenticate(&v5("not-a-jwt")).await, "not a JWT");
    assert_eq!(fake.hits("tokenreview"), 0);

    let mut cont = v5("x");
    cont.kind = Kind::Continue;
    assert!(matches!(
        m.authenticate(&cont).await,
        Decision::Deny { code: 0x82, .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// TokenReview
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_review_allows_with_principal_attributes_and_expiry() {
    // Scenario 7.
    let fake = Fake::start().await;
    let signer = Signer::es256("k1");
    let token = signer.sign(&claims("ns1", "thermostat", &[AUD], 3600));
    fake.token(
        &token,
        ("ns1", "thermostat"),
        &[AUD, "https://kubernetes.default.svc"],
    );
    fake.service_account(
        "ns1",
        "thermostat",
        &[
            ("aio-broker-auth/group", "g1"),
            ("aio-mq-broker-auth/group", "old"),
            ("aio-mq-broker-auth/floor", "3"),
            ("unrelated/thing", "x"),
            ("aio-broker-auth/", "empty-name"),
        ],
    );
    let m = method(&fake, Verification::TokenReview);
    let mut c = v5(&format!("{token}\n"));
    c.username = Some("i-am-admin".into());
    let g = grant(m.authenticate(&c).await);
    // The MQTT username is not trusted: the principal is the service account.
    assert_eq!(
        g.principal.username.as_deref(),
        Some("system:serviceaccount:ns1:thermostat")
    );
    assert_eq!(
        g.principal.attributes,
        BTreeMap::from([("group".into(), "g1".into()), ("floor".into(), "3".into())])
    );
    assert_eq!(g.expiry, Some(exp_of(&token)));
    assert!(g.can_reauthenticate);
    // The real wire format: spec.token and spec.audiences.
    let reviews = fake.state.lock().reviews.clone();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(reviews[0]["kind"], "TokenReview");
    assert_eq!(reviews[0]["spec"]["token"], token.as_str());
    assert_eq!(reviews[0]["spec"]["audiences"], json!([AUD]));
}

#[tokio::test]
async fn token_review_denies_unknown_tokens_and_other_audiences() {
    // Scenario 8: a token for audience `other` → 0x87 (the frontend maps it to 0x05 for 3.1.1).
    let fake = Fake::start().await;
    let signer = Signer::es256("k1");
    let other = signer.sign(&claims("ns1", "a", &["other"], 3600));
    fake.token(&other, ("ns1", "a"), &["other"]);
    fake.service_account("ns1", "a", &[]);
    let m = method(&fake, Verification::TokenReview);
    assert_denied(&m.authenticate(&v5(&other)).await, "rejected");
    assert_denied(&m.authenticate(&v3(&other)).await, "rejected");
    let unknown = signer.sign(&claims("ns1", "a", &[AUD], 3600));
    assert_denied(&m.authenticate(&v5(&unknown)).await, "rejected");
    assert_eq!(fake.hits("tokenreview"), 3);
    assert_eq!(fake.hits("serviceaccount"), 0);
}

#[tokio::test]
async fn token_review_requires_a_returned_audience_we_accept() {
    // An apiserver that is not audience-aware answers "authenticated" without
    // status.audiences, which means "valid for the apiserver": not for us.
    let fake = Fake::start().await;
    let signer = Signer::es256("k1");
    let token = signer.sign(&claims("ns1", "a", &[AUD], 3600));
    fake.token(&token, ("ns1", "a"), &[AUD]);
    fake.service_account("ns1", "a", &[]);
    let m = method(&fake, Verification::TokenReview);
    grant(m.authenticate(&v5(&token)).await);
    fake.state.lock().omit_audiences = true;
    assert_denied(&m.authenticate(&v5(&token)).await, "audience");
}

#[tokio::test]
async fn v311_username_form_is_accepted() {
    // Scenario 7/8, 3.1.1 form: username K8S-SAT, password = token.
    let fake = Fake::start().await;
    let signer = Signer::es256("k1");
    let token = signer.sign(&claims("ns2", "heater", &[AUD], 600));
    fake.token(&token, ("ns2", "heater"), &[AUD]);
    fake.service_account("ns2", "heater", &[("aio-broker-auth/room", "7")]);
    let m = method(&fake, Verification::TokenReview);
    let g = grant(m.authenticate(&v3(&token)).await);
    assert_eq!(
        g.principal.username.as_deref(),
        Some("system:serviceaccount:ns2:heater")
    );
    assert_eq!(g.principal.attributes["room"], "7");
}

#[tokio::test]
async fn reauthentication_with_a_new_token_moves_the_expiry() {
    // Scenario 24: AUTH 0x19 with method K8S-SAT and a new token → Allow with the new exp.
    let fake = Fake::start().await;
    let signer = Signer::es256("k1");
    let first = signer.sign(&claims("ns1", "a", &[AUD], 30));
    let second = signer.sign(&claims("ns1", "a", &[AUD], 3600));
    fake.token(&first, ("ns1", "a"), &[AUD]);
    fake.token(&second, ("ns1", "a"), &[AUD]);
    fake.service_account("ns1", "a", &[]);
    let m = method(&fake, Verification::TokenReview);
    let g1 = grant(m.authenticate(&v5(&first)).await);
    let mut re = v5(&second);
    re.kind = Kind::Reauthenticate;
    let g2 = grant(m.authenticate(&re).await);
    assert_eq!(g1.expiry, Some(exp_of(&first)));
    assert_eq!(g2.expiry, Some(exp_of(&second)));
    assert!(g2.expiry > g1.expiry);
    // A bad token on re-authentication is a denial (the frontend sends DISCONNECT 0x87).
    let mut bad = v5(&signer.sign(&claims("ns1", "a", &[AUD], 60)));
    bad.kind = Kind::Reauthenticate;
    assert_denied(&m.authenticate(&bad).await, "rejected");
}

#[tokio::test]
async fn legacy_tokens_without_exp_are_refused_in_token_review_mode() {
    let fake = Fake::start().await;
    let signer = Signer::es256("k1");
    let legacy = signer.sign(&json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "ns1",
        "kubernetes.io/serviceaccount/service-account.name": "a",
        "sub": "system:serviceaccount:ns1:a"
    }));
    fake.token(&legacy, ("ns1", "a"), &[AUD]);
    fake.service_account("ns1", "a", &[]);
    let m = method(&fake, Verification::TokenReview);
    assert_denied(&m.authenticate(&v5(&legacy)).await, "legacy");
    assert_eq!(fake.hits("tokenreview"), 0);
}

#[tokio::test]
async fn a_deleted_service_account_is_denied() {
    let fake = Fake::start().await;
    let signer = Signer::es256("k1");
    let token = signer.sign(&claims("ns1", "gone", &[AUD], 600));
    fake.token(&token, ("ns1", "gone"), &[AUD]);
    let m = method(&fake, Verification::TokenReview);
    assert_denied(&m.authenticate(&v5(&token)).await, "does not exist");
}

#[tokio::test]
async fn apiserver_trouble_is_transient() {
    let signer = Signer::es256("k1");
    let token = signer.sign(&claims("ns1", "a", &[AUD], 600));

    // Unreachable: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}").parse().unwrap();
    let m = ServiceAccountToken::new(
        settings(Verification::TokenReview),
        KubeSource::Config(Box::new(kube::Config::new(url))),
        tuning(),
    );
    assert_transient(&m.authenticate(&v5(&token)).await);

    // 5xx.
    let mut fake = Fake::start().await;
    fake.token(&token, ("ns1", "a"), &[AUD]);
    fake.service_account("ns1", "a", &[]);
    let m = method(&fake, Verification::TokenReview);
    for code in [500, 503] {
        fake.state.lock().fail_with = Some(code);
        assert_transient(&m.authenticate(&v5(&token)).await);
    }
    fake.state.lock().fail_with = None;
    grant(m.authenticate(&v5(&token)).await);

    // No answer within the timeout.
    fake.state.lock().delay = Duration::from_secs(30);
    let slow = ServiceAccountToken::new(
        settings(Verification::TokenReview),
        fake.source(),
        Tuning {
            request_timeout: Duration::from_millis(300),
            ..tuning()
        },
    );
    assert_transient(&slow.authenticate(&v5(&token)).await);
    fake.state.lock().delay = Duration::ZERO;

    // Gone after having answered.
    fake.stop().await;
    assert_transient(&m.authenticate(&v5(&token)).await);
}

// ---------------------------------------------------------------------------------------------
// Offline JWKS
// ---------------------------------------------------------------------------------------------

async fn offline_fake(signer: &Signer) -> Fake {
    let fake = Fake::start().await;
    fake.state.lock().jwks = vec![signer.jwk()];
    fake.service_account("ns1", "a", &[("aio-broker-auth/group", "g1")]);
    fake
}

#[tokio::test]
async fn offline_accepts_a_valid_token_without_token_review() {
    // Scenario 7 with verification: OfflineJwks.
    for signer in [Signer::es256("ec-1"), Signer::rs256("rsa-1")] {
        let fake = offline_fake(&signer).await;
        let m = method(&fake, offline(false));
        let token = signer.sign(&claims("ns1", "a", &[AUD], 600));
        let g = grant(m.authenticate(&v5(&token)).await);
        assert_eq!(
            g.principal.username.as_deref(),
            Some("system:serviceaccount:ns1:a")
        );
        assert_eq!(g.principal.attributes["group"], "g1");
        assert_eq!(g.expiry, Some(exp_of(&token)));
        assert!(g.can_reauthenticate);
        // A second token: keys and annotations are cached.
        let token2 = signer.sign(&claims("ns1", "a", &[AUD], 900));
        grant(m.authenticate(&v3(&token2)).await);
        assert_eq!(fake.hits("tokenreview"), 0);
        assert_eq!(fake.hits("discovery"), 1);
        assert_eq!(fake.hits("jwks"), 1);
        assert_eq!(fake.hits("serviceaccount"), 1);
    }
}

#[tokio::test]
async fn offline_rejects_expired_wrong_audience_wrong_issuer_and_forged_tokens() {
    // Scenario 8 with verification: OfflineJwks.
    let signer = Signer::es256("k1");
    let fake = offline_fake(&signer).await;
    let m = method(&fake, offline(false));
    let expired = signer.sign(&claims("ns1", "a", &[AUD], -10));
    assert_denied(&m.authenticate(&v5(&expired)).await, "expired");
    let other = signer.sign(&claims("ns1", "a", &["other"], 600));
    assert_denied(&m.authenticate(&v5(&other)).await, "audience");
    let mut c = claims("ns1", "a", &[AUD], 600);
    c["iss"] = json!("https://evil.example");
    assert_denied(&m.authenticate(&v5(&signer.sign(&c))).await, "issuer");
    // Same kid, another key: the signature does not verify.
    let forger = Signer::es256("k1");
    let forged = forger.sign(&claims("ns1", "a", &[AUD], 600));
    assert_denied(&m.authenticate(&v5(&forged)).await, "signature");
    // sub not a service account.
    let mut c = claims("ns1", "a", &[AUD], 600);
    c["sub"] = json!("alice");
    c.as_object_mut().unwrap().remove("kubernetes.io");
    assert_denied(&m.authenticate(&v5(&signer.sign(&c))).await, "sub");
    // sub and kubernetes.io disagree.
    let mut c = claims("ns1", "a", &[AUD], 600);
    c["sub"] = json!("system:serviceaccount:kube-system:admin");
    assert_denied(&m.authenticate(&v5(&signer.sign(&c))).await, "disagree");
    // Not yet valid.
    let mut c = claims("ns1", "a", &[AUD], 6000);
    c["nbf"] = json!(now() + 3000);
    assert_denied(&m.authenticate(&v5(&signer.sign(&c))).await, "nbf");
    // An unsigned token.
    let mut parts: Vec<String> = signer
        .sign(&claims("ns1", "a", &[AUD], 600))
        .split('.')
        .map(String::from)
        .collect();
    parts[0] = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        br#"{"alg":"none","kid":"k1"}"#,
    );
    assert_denied(&m.authenticate(&v5(&parts.join("."))).await, "");
    assert_eq!(fake.hits("tokenreview"), 0);
}

#[tokio::test]
async fn offline_rejects_legacy_secret_tokens() {
    let signer = Signer::es256("k1");
    let fake = offline_fake(&signer).await;
    let m = method(&fake, offline(false));
    let legacy = signer.sign(&json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "ns1",
        "kubernetes.io/serviceaccount/secret.name": "a-token-xyz",
        "kubernetes.io/serviceaccount/service-account.name": "a",
        "sub": "system:serviceaccount:ns1:a"
    }));
    assert_denied(&m.authenticate(&v5(&legacy)).await, "legacy");
}

#[tokio::test]
async fn offline_refetches_keys_for_an_unknown_kid() {
    let old = Signer::es256("old");
    let fake = offline_fake(&old).await;
    let m = method(&fake, offline(false));
    grant(
        m.authenticate(&v5(&old.sign(&claims("ns1", "a", &[AUD], 600))))
            .await,
    );
    assert_eq!(fake.hits("jwks"), 1);
    // The cluster rotates its signing key.
    let new = Signer::es256("new");
    fake.state.lock().jwks = vec![new.jwk(), old.jwk()];
    grant(
        m.authenticate(&v5(&new.sign(&claims("ns1", "a", &[AUD], 600))))
            .await,
    );
    assert_eq!(fake.hits("jwks"), 2);
    // A kid the cluster does not publish, even after a refetch: denied.
    let stranger = Signer::es256("stranger");
    let d = m
        .authenticate(&v5(&stranger.sign(&claims("ns1", "a", &[AUD], 600))))
        .await;
    assert_denied(&d, "unknown key");
    assert_eq!(fake.hits("jwks"), 3);
}

#[tokio::test]
async fn offline_refetch_is_rate_limited() {
    let old = Signer::es256("old");
    let fake = offline_fake(&old).await;
    let m = ServiceAccountToken::new(
        settings(offline(false)),
        fake.source(),
        Tuning {
            jwks_min_refetch: Duration::from_secs(3600),
            ..tuning()
        },
    );
    grant(
        m.authenticate(&v5(&old.sign(&claims("ns1", "a", &[AUD], 600))))
            .await,
    );
    let new = Signer::es256("new");
    fake.state.lock().jwks = vec![new.jwk()];
    for _ in 0..3 {
        let d = m
            .authenticate(&v5(&new.sign(&claims("ns1", "a", &[AUD], 600))))
            .await;
        assert_transient(&d);
    }
    assert_eq!(fake.hits("jwks"), 1);
}

#[tokio::test]
async fn offline_keeps_working_while_the_apiserver_is_away() {
    let signer = Signer::es256("k1");
    let mut fake = offline_fake(&signer).await;
    let m = method(&fake, offline(false));
    grant(
        m.authenticate(&v5(&signer.sign(&claims("ns1", "a", &[AUD], 600))))
            .await,
    );
    fake.stop().await;
    // Keys and (stale-tolerant) annotations are cached.
    let g = grant(
        m.authenticate(&v5(&signer.sign(&claims("ns1", "a", &[AUD], 600))))
            .await,
    );
    assert_eq!(g.principal.attributes["group"], "g1");
    // Without cached keys there is no decision possible.
    let fresh = method(&fake, offline(false));
    assert_transient(
        &fresh
            .authenticate(&v5(&signer.sign(&claims("ns1", "a", &[AUD], 600))))
            .await,
    );
}

#[tokio::test]
async fn offline_with_token_review_on_first_use() {
    let signer = Signer::es256("k1");
    let fake = offline_fake(&signer).await;
    let m = method(&fake, offline(true));
    let token = signer.sign(&claims("ns1", "a", &[AUD], 600));
    // Signature fine, but the apiserver no longer knows the token (pod deleted): denied.
    assert_denied(&m.authenticate(&v5(&token)).await, "rejected");
    assert_eq!(fake.hits("tokenreview"), 1);
    fake.token(&token, ("ns1", "a"), &[AUD]);
    grant(m.authenticate(&v5(&token)).await);
    assert_eq!(fake.hits("tokenreview"), 2);
    // Seen: no more reviews for this token.
    grant(m.authenticate(&v5(&token)).await);
    assert_eq!(fake.hits("tokenreview"), 2);
    // A new token is reviewed again; TokenReview down on first use is transient.
    let second = signer.sign(&claims("ns1", "a", &[AUD], 600));
    fake.state.lock().fail_with = Some(500);
    assert_transient(&m.authenticate(&v5(&second)).await);
    fake.state.lock().fail_with = None;
    fake.token(&second, ("ns1", "a"), &[AUD]);
    grant(m.authenticate(&v5(&second)).await);
    // The failed attempt is not counted: the fake fails before routing.
    assert_eq!(fake.hits("tokenreview"), 3);
}

#[test]
fn annotations_map_to_attributes() {
    let a = BTreeMap::from([
        ("aio-broker-auth/group".to_string(), "g1".to_string()),
        (
            "aio-mq-broker-auth/group".to_string(),
            "preview".to_string(),
        ),
        ("aio-mq-broker-auth/zone".to_string(), "z".to_string()),
        (
            "kubectl.kubernetes.io/last-applied-configuration".to_string(),
            "{}".to_string(),
        ),
    ]);
    assert_eq!(
        attributes_from_annotations(&a),
        BTreeMap::from([("group".into(), "g1".into()), ("zone".into(), "z".into())])
    );
}

#[test]
fn service_account_usernames_parse() {
    assert_eq!(
        parse_sa_username("system:serviceaccount:ns:name"),
        Some(("ns".into(), "name".into()))
    );
    for bad in [
        "alice",
        "system:serviceaccount:ns",
        "system:serviceaccount::n",
        "system:serviceaccount:ns:",
        "system:serviceaccount:a:b:c",
    ] {
        assert_eq!(parse_sa_username(bad), None, "{bad}");
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let c = v5("eyJhbGciOi.secret-token-body.sig");
    assert!(!format!("{c:?}").contains("secret-token-body"));
}
