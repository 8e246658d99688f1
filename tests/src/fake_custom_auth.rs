//! A fake custom authentication server implementing the published API 0.5.0 (broker-spec §3)
//! over HTTPS on loopback, for tests of the broker's `Custom` method and for the docs' examples
//! (the `fake-auth-server` binary wraps it).
//!
//! It validates requests the way the published sample does (`api-version` query required →
//! 400 `missing api-version`; an unsupported version → 422 `{"supportedVersions":[...]}`;
//! methods other than POST → 405; paths other than `/` → 404; a body that is not a connect or
//! auth request → 400), records every request it receives (method, path, query, headers,
//! body, the client certificate) for assertions, and answers with the sample's default logic:
//! usernames starting `deny` are refused with reason 135, usernames starting `expire` get a
//! credential expiring in 10 s, and CONNECTs get the attribute `example_key=example_value`.
//! On AUTH, the sample decodes `enhancedAuthentication.method` as base64 and applies the same
//! rules to it.
//!
//! Tests steer it with [`Behavior`]s: for the next request ([`FakeAuthServer::push_next`]),
//! per CONNECT username ([`FakeAuthServer::on_username`]), per AUTH data
//! ([`FakeAuthServer::on_auth_data`]) or for everything else ([`FakeAuthServer::set_fallback`]);
//! each may be delayed. [`FakeAuthServer::stop`] closes the port and every open connection
//! (clients then see connection refused) and [`FakeAuthServer::restart`] binds the same port
//! again.
//!
//! It is not a reference implementation: it never persists anything, and it accepts any
//! request body the published shape allows.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::WAIT;
use crate::pki::{Authority, KeyKind, Leaf};
use crate::restartable::{self, Running};

/// The versions the fake accepts unless told otherwise.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.5.0"];
/// What the template's `expire*` users get.
pub const TEMPLATE_EXPIRY: Duration = Duration::from_secs(10);
/// Bodies larger than this are refused (400), as a real server would bound them.
const MAX_BODY: usize = 1024 * 1024;

/// How to answer one request.
#[derive(Clone, Debug)]
pub struct Behavior {
    pub delay: Duration,
    pub reply: Reply,
}

#[derive(Clone, Debug)]
pub enum Reply {
    /// The published sample's logic (see the module documentation).
    Template,
    /// 200 with these attributes and, when set, an expiry this long from the moment of the
    /// answer (RFC 3339, seconds precision, as the sample writes it).
    Allow {
        expires_in: Option<Duration>,
        attributes: BTreeMap<String, String>,
    },
    /// 403 `{"reason": reason, "message": message}`; `reason` is any JSON (0, 134, "x").
    Deny {
        reason: Value,
        message: Option<String>,
    },
    /// Any status with this body (e.g. 500/503 to simulate a failing server).
    Status { status: u16, body: String },
}

impl Behavior {
    pub fn template() -> Behavior {
        Behavior::reply(Reply::Template)
    }

    /// 200 `{}`: allowed, no attributes, no expiry.
    pub fn allow() -> Behavior {
        Behavior::reply(Reply::Allow {
            expires_in: None,
            attributes: BTreeMap::new(),
        })
    }

    /// 403 with this reason and no message.
    pub fn deny(reason: impl Into<Value>) -> Behavior {
        Behavior::reply(Reply::Deny {
            reason: reason.into(),
            message: None,
        })
    }

    pub fn status(status: u16) -> Behavior {
        Behavior::reply(Reply::Status {
            status,
            body: format!("fake server answering {status}"),
        })
    }

    fn reply(reply: Reply) -> Behavior {
        Behavior {
            delay: Duration::ZERO,
            reply,
        }
    }

    /// Adds an attribute to an allow.
    pub fn attribute(mut self, key: &str, value: &str) -> Behavior {
        if let Reply::Allow { attributes, .. } = &mut self.reply {
            attributes.insert(key.to_string(), value.to_string());
        }
        self
    }

    /// Makes an allow expire this long after the answer.
    pub fn expires_in(mut self, lifetime: Duration) -> Behavior {
        if let Reply::Allow { expires_in, .. } = &mut self.reply {
            *expires_in = Some(lifetime);
        }
        self
    }

    /// Adds a message to a deny.
    pub fn message(mut self, text: &str) -> Behavior {
        if let Reply::Deny { message, .. } = &mut self.reply {
            *message = Some(text.to_string());
        }
        self
    }

    /// Waits this long before answering.
    pub fn after(mut self, delay: Duration) -> Behavior {
        self.delay = delay;
        self
    }
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: String,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The body as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The certificate chain the caller presented in the TLS handshake (mTLS).
    pub client_chain: Vec<CertificateDer<'static>>,
    pub at: SystemTime,
    /// The status the fake answered with, and the body.
    pub status: u16,
    pub response: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `api-version` query parameter.
    pub fn api_version(&self) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .find_map(|p| p.strip_prefix("api-version="))
    }

    /// The `expiry` the fake answered with, if any.
    pub fn answered_expiry(&self) -> Option<SystemTime> {
        let body: Value = serde_json::from_str(&self.response).ok()?;
        let at = chrono::DateTime::parse_from_rfc3339(body.get("expiry")?.as_str()?).ok()?;
        Some(SystemTime::from(at))
    }

    /// The `type` of the JSON body (`connect` / `auth`).
    pub fn kind(&self) -> Option<&str> {
        self.json.as_ref()?.get("type")?.as_str()
    }
}

/// What the fake is told to do, shared with the connection tasks.
struct State {
    requests: Vec<Recorded>,
    next: VecDeque<Behavior>,
    by_username: BTreeMap<String, Behavior>,
    by_auth_data: BTreeMap<Vec<u8>, Behavior>,
    fallback: Behavior,
    supported_versions: Vec<String>,
    tls_failures: usize,
    /// Log each request to stdout (the binary does; tests need not).
    verbose: bool,
}

/// How to start a [`FakeAuthServer`].
pub struct Options {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub addr: SocketAddr,
    /// The server's certificate chain (leaf first) and key.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// When set, callers must present a certificate issued by one of these (mTLS).
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
    pub verbose: bool,
}

pub struct FakeAuthServer {
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
    state: Arc<Mutex<State>>,
    running: Option<Running>,
    /// The CA of the server certificate when the fake made its own (see [`FakeAuthServer::start`]).
    ca: Option<Authority>,
}

impl FakeAuthServer {
    /// On 127.0.0.1 with a certificate for `127.0.0.1` and `localhost` from a CA of its own
    /// ([`FakeAuthServer::ca_pem`] is what the broker's `caCertConfigMap` must hold), no mTLS.
    pub async fn start() -> FakeAuthServer {
        FakeAuthServer::start_mtls(None).await
    }

    /// Like [`FakeAuthServer::start`], requiring a client certificate issued by `client_ca`.
    pub async fn start_mtls(client_ca: Option<&Authority>) -> FakeAuthServer {
        let ca = Authority::root("Fake Auth Server CA", KeyKind::Ec256);
        let leaf: Leaf = ca.server("fake-auth-server", &["127.0.0.1", "localhost"]);
        let options = Options {
            addr: "127.0.0.1:0".parse().expect("an address"),
            chain: leaf.chain(),
            key: leaf.cert.private_key(),
            client_ca: client_ca.map(|ca| vec![ca.cert.der.clone()]),
            verbose: false,
        };
        let mut server = FakeAuthServer::start_with(options)
            .await
            .expect("start the fake custom auth server");
        server.ca = Some(ca);
        server
    }

    pub async fn start_with(options: Options) -> io::Result<FakeAuthServer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?;
        let builder = match options.client_ca {
            None => builder.with_no_client_auth(),
            Some(cas) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in cas {
                    roots.add(ca).map_err(io::Error::other)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(io::Error::other)?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut tls = builder
            .with_single_cert(options.chain, options.key)
            .map_err(io::Error::other)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            next: VecDeque::new(),
            by_username: BTreeMap::new(),
            by_auth_data: BTreeMap::new(),
            fallback: Behavior::template(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
            tls_failures: 0,
            verbose: options.verbose,
        }));
        let mut server = FakeAuthServer {
            addr: options.addr,
            tls: Arc::new(tls),
            state,
            running: None,
            ca: None,
        };
        server.listen()?;
        Ok(server)
    }

    fn listen(&mut self) -> io::Result<()> {
        let (tls, state) = (self.tls.clone(), self.state.clone());
        let (addr, running) = restartable::listen(self.addr, |listener, shutdown| {
            accept_loop(listener, tls, state, shutdown)
        })?;
        self.addr = addr;
        self.running = Some(running);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`: what `customSettings.endpoint` should say.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The PEM of the CA that issued the server certificate (for `caCertConfigMap`), when the
    /// fake generated it.
    pub fn ca_pem(&self) -> &str {
        &self
            .ca
            .as_ref()
            .expect("the fake generated its own certificate")
            .cert
            .pem
    }

    pub fn ca(&self) -> Option<&Authority> {
        self.ca.as_ref()
    }

    /// Closes the port and every open connection; in-flight requests get no answer.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Listens again on the same port after [`FakeAuthServer::stop`].
    pub async fn restart(&mut self) {
        self.stop().await;
        self.listen().expect("listen again on the same port");
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Answers the next request (whatever it is) with `behavior`; queued in order.
    pub fn push_next(&self, behavior: Behavior) {
        self.lock().next.push_back(behavior);
    }

    /// Answers every CONNECT request with this username with `behavior`.
    pub fn on_username(&self, username: &str, behavior: Behavior) {
        self.lock()
            .by_username
            .insert(username.to_string(), behavior);
    }

    /// Answers every AUTH request whose `enhancedAuthentication.data` decodes to `data`.
    pub fn on_auth_data(&self, data: &[u8], behavior: Behavior) {
        self.lock().by_auth_data.insert(data.to_vec(), behavior);
    }

    /// What to do with requests no other rule matches (default: [`Reply::Template`]).
    pub fn set_fallback(&self, behavior: Behavior) {
        self.lock().fallback = behavior;
    }

    /// The api-versions accepted (default `["0.5.0"]`); others get 422 listing these.
    pub fn set_supported_versions(&self, versions: &[&str]) {
        self.lock().supported_versions = versions.iter().map(|v| v.to_string()).collect();
    }

    /// Forgets every rule and queued behavior (recorded requests are kept).
    pub fn reset_behaviors(&self) {
        let mut state = self.lock();
        state.next.clear();
        state.by_username.clear();
        state.by_auth_data.clear();
        state.fallback = Behavior::template();
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// TLS handshakes that failed (e.g. a caller without the required client certificate).
    pub fn tls_failures(&self) -> usize {
        self.lock().tls_failures
    }

    /// Waits (at most [`WAIT`]) until at least `n` requests were received; returns them all.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the fake auth server received {} requests, expected {n}: {requests:#?}",
                    requests.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<Mutex<State>>,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let serve = async {
                let stream = match tokio::time::timeout(WAIT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    _ => {
                        lock(&state).tls_failures += 1;
                        return;
                    }
                };
                let client_chain: Vec<CertificateDer<'static>> = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default();
                let service = hyper::service::service_fn(move |req| {
                    handle(req, client_chain.clone(), state.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            };
            // Dropping the connection future on stop closes the socket mid-request.
            tokio::select! {
                _ = serve => {}
                _ = shutdown.wait_for(|stopped| *stopped) => {}
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    client_chain: Vec<CertificateDer<'static>>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        http_version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        json: serde_json::from_slice(&body).ok(),
        body,
        client_chain,
        at: SystemTime::now(),
        status: 0,
        response: String::new(),
    };
    let (behavior, verdict) = {
        let mut st = lock(&state);
        let verdict = validate(&recorded, &st.supported_versions);
        let behavior = match verdict {
            Ok(ref request) => Some(choose(&mut st, request)),
            Err(_) => None,
        };
        (behavior, verdict)
    };
    let (status, content_type, text, delay) = match (verdict, behavior) {
        (Err((status, text)), _) => {
            let ct = if text.starts_with('{') {
                "application/json"
            } else {
                "text/plain"
            };
            (status, ct, text, Duration::ZERO)
        }
        (Ok(request), Some(behavior)) => {
            let (status, text) = answer(&request, &behavior.reply);
            let ct = if status == 200 || status == 403 {
                "application/json"
            } else {
                "text/plain"
            };
            (status, ct, text, behavior.delay)
        }
        (Ok(_), None) => (500, "text/plain", "no behavior".to_string(), Duration::ZERO),
    };
    recorded.status = status;
    recorded.response = text.clone();
    {
        let mut st = lock(&state);
        if st.verbose {
            println!("{}", describe(&recorded));
        }
        st.requests.push(recorded);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(response)
}

/// A request that passed validation.
struct Valid {
    kind: Kind,
    username: Option<String>,
    method: Option<String>,
    data: Option<Vec<u8>>,
}

#[derive(PartialEq)]
enum Kind {
    Connect,
    Auth,
}

/// The sample's request checks, in its order; `Err((status, body))` ends the request.
fn validate(r: &Recorded, supported: &[String]) -> Result<Valid, (u16, String)> {
    if r.path != "/" {
        return Err((404, format!("{} not found", r.path)));
    }
    if r.method != "POST" {
        return Err((405, format!("{} not allowed", r.method)));
    }
    let Some(version) = r.api_version() else {
        return Err((400, "missing api-version".into()));
    };
    if !supported.iter().any(|v| v == version) {
        return Err((422, json!({ "supportedVersions": supported }).to_string()));
    }
    let content_type = r.header("content-type").unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err((400, "invalid content-type".into()));
    }
    if r.body.is_empty() {
        return Err((400, "missing body".into()));
    }
    let invalid = |why: &str| (400, format!("invalid client request body: {why}"));
    let Some(Value::Object(body)) = &r.json else {
        return Err(invalid("not a JSON object"));
    };
    let text = |key: &str| -> Result<Option<String>, (u16, String)> {
        match body.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(&format!("{key} must be a string"))),
        }
    };
    let kind = match body.get("type").and_then(Value::as_str) {
        Some("connect") => Kind::Connect,
        Some("auth") => Kind::Auth,
        Some(other) => return Err(invalid(&format!("unknown type {other:?}"))),
        None => return Err(invalid("missing field `type`")),
    };
    let username = text("username")?;
    if let Some(p) = text("password")?
        && BASE64.decode(p).is_err()
    {
        return Err(invalid("password is not base64"));
    }
    if let Some(certs) = text("certs")?
        && !certs.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(invalid("certs is not a PEM chain"));
    }
    let (method, data) = match body.get("enhancedAuthentication") {
        None => (None, None),
        Some(Value::Object(ea)) => {
            let method = match ea.get("method") {
                Some(Value::String(m)) => m.clone(),
                _ => return Err(invalid("enhancedAuthentication.method must be a string")),
            };
            let data = match ea.get("data") {
                None => None,
                Some(Value::String(d)) => Some(
                    BASE64
                        .decode(d)
                        .map_err(|_| invalid("enhancedAuthentication.data is not base64"))?,
                ),
                Some(_) => return Err(invalid("enhancedAuthentication.data must be a string")),
            };
            (Some(method), data)
        }
        Some(_) => return Err(invalid("enhancedAuthentication must be an object")),
    };
    if kind == Kind::Auth && method.is_none() {
        return Err(invalid("auth requests need enhancedAuthentication"));
    }
    Ok(Valid {
        kind,
        username,
        method,
        data,
    })
}

fn choose(st: &mut State, request: &Valid) -> Behavior {
    if let Some(b) = st.next.pop_front() {
        return b;
    }
    let rule = match request.kind {
        Kind::Connect => request
            .username
            .as_ref()
            .and_then(|u| st.by_username.get(u)),
        Kind::Auth => request.data.as_ref().and_then(|d| st.by_auth_data.get(d)),
    };
    rule.cloned().unwrap_or_else(|| st.fallback.clone())
}

/// (status, JSON body) for a valid request.
fn answer(request: &Valid, reply: &Reply) -> (u16, String) {
    match reply {
        Reply::Template => template(request),
        Reply::Allow {
            expires_in,
            attributes,
        } => (200, allow_body(*expires_in, attributes)),
        Reply::Deny { reason, message } => {
            let mut body = json!({ "reason": reason });
            if let Some(m) = message {
                body["message"] = json!(m);
            }
            (403, body.to_string())
        }
        Reply::Status { status, body } => (*status, body.clone()),
    }
}

/// The published sample's decisions.
fn template(request: &Valid) -> (u16, String) {
    let deny = || (403, json!({"reason": 135}).to_string());
    match request.kind {
        Kind::Connect => {
            let username = request.username.as_deref().unwrap_or("");
            let attributes =
                BTreeMap::from([("example_key".to_string(), "example_value".to_string())]);
            if username.starts_with("deny") {
                deny()
            } else if username.starts_with("expire") {
                (200, allow_body(Some(TEMPLATE_EXPIRY), &attributes))
            } else {
                (200, allow_body(None, &attributes))
            }
        }
        Kind::Auth => {
            // The sample's demo hack: the AUTH method is a base64 username.
            let method = request.method.as_deref().unwrap_or("");
            let Some(username) = BASE64
                .decode(method)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            else {
                return deny();
            };
            if username.starts_with("deny") {
                deny()
            } else if username.starts_with("expire") {
                (200, allow_body(Some(TEMPLATE_EXPIRY), &BTreeMap::new()))
            } else {
                (200, allow_body(None, &BTreeMap::new()))
            }
        }
    }
}

/// `{"expiry": "...Z", "attributes": {...}}`, each only when there is something to say.
fn allow_body(expires_in: Option<Duration>, attributes: &BTreeMap<String, String>) -> String {
    let mut body = serde_json::Map::new();
    if let Some(lifetime) = expires_in {
        let at = chrono::Utc::now()
            + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::zero());
        body.insert(
            "expiry".into(),
            json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
    }
    if !attributes.is_empty() {
        body.insert("attributes".into(), json!(attributes));
    }
    Value::Object(body).to_string()
}

/// One log line for the binary: never the password or the data, only their presence.
fn describe(r: &Recorded) -> String {
    let mut line = format!(
        "{} {}{} {} -> {}",
        r.method,
        r.path,
        r.query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default(),
        r.http_version,
        r.status
    );
    if let Some(body) = &r.json {
        let field = |k: &str| body.get(k).and_then(Value::as_str);
        line.push_str(&format!(" type={}", field("type").unwrap_or("?")));
        if let Some(u) = field("username") {
            line.push_str(&format!(" username={u:?}"));
        }
        if body.get("password").is_some() {
            line.push_str(" password=<redacted>");
        }
        if body.get("certs").is_some() {
            line.push_str(" certs=<pem>");
        }
        if let Some(m) = body
            .get("enhancedAuthentication")
            .and_then(|e| e.get("method"))
            .and_then(Value::as_str)
        {
            line.push_str(&format!(" method={m:?} data=<redacted>"));
        }
    }
    if !r.client_chain.is_empty() {
        line.push_str(" client-cert=yes");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(method: &str, path: &str, query: Option<&str>, body: Value) -> Recorded {
        let body = Bytes::from(body.to_string());
        Recorded {
            method: method.into(),
            path: path.into(),
            query: query.map(str::to_string),
            http_version: "HTTP/1.1".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            json: serde_json::from_slice(&body).ok(),
            body,
            client_chain: Vec::new(),
            at: SystemTime::now(),
            status: 0,
            response: String::new(),
        }
    }

    fn check(r: &Recorded) -> Result<(u16, String), (u16, String)> {
        let supported = vec!["0.5.0".to_string()];
        validate(r, &supported).map(|v| template(&v))
    }

    #[test]
    fn validation_follows_the_sample() {
        let ok = json!({"type": "connect", "username": "alice", "password": "cA=="});
        let q = Some("api-version=0.5.0");
        assert_eq!(check(&recorded("POST", "/", q, ok.clone())).unwrap().0, 200);
        assert_eq!(
            check(&recorded("POST", "/", None, ok.clone())).unwrap_err(),
            (400, "missing api-version".into())
        );
        assert_eq!(
            check(&recorded(
                "POST",
                "/",
                Some("api-version=0.4.0"),
                ok.clone()
            ))
            .unwrap_err(),
            (422, r#"{"supportedVersions":["0.5.0"]}"#.into())
        );
        assert_eq!(
            check(&recorded("GET", "/", q, ok.clone())).unwrap_err().0,
            405
        );
        assert_eq!(
            check(&recorded("POST", "/x", q, ok.clone())).unwrap_err().0,
            404
        );
        assert_eq!(
            check(&recorded("POST", "/", q, json!({"type": "other"})))
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            check(&recorded("POST", "/", q, json!({"type": "auth"})))
                .unwrap_err()
                .0,
            400
        );
    }

    #[test]
    fn template_logic() {
        let q = Some("api-version=0.5.0");
        let connect = |u: &str| json!({"type": "connect", "username": u});
        let (s, body) = check(&recorded("POST", "/", q, connect("deny-eve"))).unwrap();
        assert_eq!((s, body.as_str()), (403, r#"{"reason":135}"#));
        let (s, body) = check(&recorded("POST", "/", q, connect("alice"))).unwrap();
        assert_eq!(
            (s, body.as_str()),
            (200, r#"{"attributes":{"example_key":"example_value"}}"#)
        );
        let (s, body) = check(&recorded("POST", "/", q, connect("expire-bob"))).unwrap();
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(s, 200);
        let expiry = chrono::DateTime::parse_from_rfc3339(body["expiry"].as_str().unwrap())
            .unwrap()
            .timestamp();
        let now = chrono::Utc::now().timestamp();
        assert!((now + 8..=now + 11).contains(&expiry), "{expiry} vs {now}");
        let auth = |m: &str| json!({"type": "auth", "enhancedAuthentication": {"method": m}});
        let (s, body) = check(&recorded("POST", "/", q, auth(&BASE64.encode("user")))).unwrap();
        assert_eq!((s, body.as_str()), (200, "{}"));
        assert_eq!(
            check(&recorded("POST", "/", q, auth("not base64!")))
                .unwrap()
                .0,
            403
        );
    }
}
