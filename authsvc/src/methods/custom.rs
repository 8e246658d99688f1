//! The `Custom` method: every credential is forwarded to an external HTTPS server speaking the
//! published custom authentication server API 0.5.0 (broker-spec §3), and its answer decides.
//!
//! Settings (`customSettings`, broker-spec §2.1):
//! - `endpoint` (required): `https://host[:port][/path]`. Requests go to
//!   `POST <endpoint>/?api-version=0.5.0` (the endpoint's own path, if it has one, is kept).
//!   `http://` is refused unless the Gatehouse extension `allowInsecureEndpoint: true` is set,
//!   meant for local development only: the body carries passwords and tokens.
//! - `caCertConfigMap`: ConfigMap whose PEM certificates are the only roots trusted for the
//!   server's certificate (a `ConfigMap` document of the configuration, else the files of
//!   `<secrets-dir>/NAME/`). Without it, the system's CA store.
//! - `auth.x509.secretRef`: `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) with the client
//!   certificate the broker presents (mTLS).
//! - `headers`: extra headers sent on every request (values may be secrets: never logged).
//! - Gatehouse extensions: `timeoutMillis` (default 2000: the bound on one whole decision,
//!   version renegotiation included) and `apiVersion` (default `0.5.0`: the version tried
//!   first; a 422 answer renegotiates it, see below).
//!
//! Relevance (broker-spec §2.2): Custom considers every credential relevant, so whatever the
//! server answers decides — except when there is no answer (connection refused, TLS failure,
//! timeout) or a 5xx: then it is not relevant on CONNECT (the next method is asked, scenarios
//! 13/14) and transient on re-authentication (AUTH 0x18, old deadline kept, scenario 23).
//!
//! Answers: 200 allows with the returned `attributes` and `expiry` (RFC 3339; absent = never);
//! 403 denies with the returned `reason` as CONNACK code, except that a code below 0x80 (0 is
//! *Success*) or one CONNACK cannot carry becomes 0x87 — a denial must never read as success
//! (scenario 18); on re-authentication a denial is always 0x87, the DISCONNECT code. 422 lists
//! `supportedVersions`: the request is retried once with one of them and the choice is kept for
//! later requests (scenario 16). Any other answer denies with 0x87.
//!
//! One HTTP client (hyper, rustls with ring, HTTP/1.1 or h2 by ALPN) per method instance, so
//! connections to the server are reused. This module does not enforce expiry (the frontend
//! holding the connection does) and keeps no per-client state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use broker_config::mounted::read_folder;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::policy::{BuildContext, PolicyError};
use crate::{Credentials, Decision, DecisionFuture, Grant, Kind, Principal, code};

/// The API version this implementation speaks (broker-spec §3).
pub const API_VERSION: &str = "0.5.0";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2000);
const MAX_TIMEOUT_MILLIS: u64 = 60_000;
/// Answers are small JSON objects; anything bigger is not an answer we can trust.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How much of an unexpected answer's text goes into the log.
const LOGGED_BODY_CHARS: usize = 200;

const FIELDS: &[&str] = &[
    "endpoint",
    "caCertConfigMap",
    "auth",
    "headers",
    "timeoutMillis",
    "allowInsecureEndpoint",
    "apiVersion",
];

/// Headers the client itself writes; an operator overriding them would break the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

/// The codes a v5 CONNACK may carry for a refusal (MQTT 5.0 §3.2.2.2).
const CONNACK_REFUSALS: &[u8] = &[
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99,
    0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];

pub fn build(
    cx: &BuildContext<'_>,
    settings: &Value,
    field: &str,
) -> Result<Box<dyn crate::Method>, PolicyError> {
    let settings = Settings::parse(cx, settings, field)?;
    Ok(Box::new(Custom::new(&cx.policy, settings)))
}

// ------------------------------------------------------------------------------------------------
// Settings
// ------------------------------------------------------------------------------------------------

struct Settings {
    endpoint: Endpoint,
    api_version: String,
    /// Values may be credentials (an API key): never logged, never in `Debug`.
    headers: HeaderMap,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

/// Where requests go: the endpoint with the `api-version` query still to be added.
#[derive(Clone, Debug)]
struct Endpoint {
    https: bool,
    authority: String,
    path: String,
    query: Option<String>,
}

impl Endpoint {
    fn uri(&self, version: &str) -> Result<Uri, http::Error> {
        let scheme = if self.https { "https" } else { "http" };
        let query = match &self.query {
            Some(q) if !q.is_empty() => format!("{q}&api-version={version}"),
            _ => format!("api-version={version}"),
        };
        Ok(Uri::try_from(format!(
            "{scheme}://{}{}?{query}",
            self.authority, self.path
        ))?)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

impl Settings {
    fn parse(
        cx: &BuildContext<'_>,
        settings: &Value,
        field: &str,
    ) -> Result<Settings, PolicyError> {
        let err = |sub: &str, reason: String| cx.error(format!("{field}.{sub}"), reason);
        let Some(obj) = settings.as_object() else {
            return Err(cx.error(
                field,
                "required for method Custom: an object with at least `endpoint`",
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(err(
                unknown,
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            ));
        }

        let allow_insecure = match obj.get("allowInsecureEndpoint") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(err("allowInsecureEndpoint", "must be true or false".into()));
            }
        };
        let endpoint = match obj.get("endpoint") {
            Some(Value::String(s)) => {
                parse_endpoint(s, allow_insecure).map_err(|reason| err("endpoint", reason))?
            }
            None | Some(Value::Null) => {
                return Err(err(
                    "endpoint",
                    "required: the https:// URL of the custom authentication server".into(),
                ));
            }
            Some(_) => return Err(err("endpoint", "must be a string (an https:// URL)".into())),
        };

        let api_version = match obj.get("apiVersion") {
            None | Some(Value::Null) => API_VERSION.to_string(),
            Some(Value::String(v)) if valid_version(v) => v.clone(),
            Some(_) => {
                return Err(err(
                    "apiVersion",
                    "must be a version string such as \"0.5.0\" (letters, digits, '.', '-', '_')"
                        .into(),
                ));
            }
        };

        let timeout = match obj.get("timeoutMillis") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT,
            Some(v) => match v.as_u64() {
                Some(ms) if (1..=MAX_TIMEOUT_MILLIS).contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(err(
                        "timeoutMillis",
                        format!("must be an integer from 1 to {MAX_TIMEOUT_MILLIS}"),
                    ));
                }
            },
        };

        let mut headers = HeaderMap::new();
        match obj.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let sub = format!("headers.{name}");
                    let header = HeaderName::try_from(name.as_str())
                        .map_err(|_| err(&sub, "not a valid HTTP header name".into()))?;
                    if RESERVED_HEADERS.contains(&header.as_str()) {
                        return Err(err(
                            &sub,
                            "set by the broker itself; it cannot be configured".into(),
                        ));
                    }
                    let Some(text) = value.as_str() else {
                        return Err(err(&sub, "must be a string".into()));
                    };
                    // The value is not echoed: it may be a credential.
                    let mut value = HeaderValue::try_from(text).map_err(|_| {
                        err(
                            &sub,
                            "not a valid HTTP header value (control characters?)".into(),
                        )
                    })?;
                    value.set_sensitive(true);
                    headers.append(header, value);
                }
            }
            Some(_) => {
                return Err(err(
                    "headers",
                    "must be a map of header names to string values".into(),
                ));
            }
        }

        let roots = match obj.get("caCertConfigMap") {
            // Plain http:// never verifies a certificate.
            None | Some(Value::Null) if !endpoint.https => rustls::RootCertStore::empty(),
            None | Some(Value::Null) => system_roots().map_err(|reason| {
                err(
                    "caCertConfigMap",
                    format!("not set, and the system CA store is unusable: {reason}"),
                )
            })?,
            Some(Value::String(name)) => {
                let pem =
                    config_map_pem(cx, name).map_err(|reason| err("caCertConfigMap", reason))?;
                roots_from_pem(&pem).map_err(|reason| {
                    err("caCertConfigMap", format!("ConfigMap {name:?}: {reason}"))
                })?
            }
            Some(_) => {
                return Err(err(
                    "caCertConfigMap",
                    "must be the name of a ConfigMap".into(),
                ));
            }
        };

        let client_cert = match obj.get("auth") {
            None | Some(Value::Null) => None,
            Some(Value::Object(auth)) => {
                if let Some(k) = auth.keys().find(|k| k.as_str() != "x509") {
                    return Err(err(
                        &format!("auth.{k}"),
                        "unknown field; expected x509".into(),
                    ));
                }
                match auth.get("x509") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(x509)) => {
                        if let Some(k) = x509.keys().find(|k| k.as_str() != "secretRef") {
                            return Err(err(
                                &format!("auth.x509.{k}"),
                                "unknown field; expected secretRef".into(),
                            ));
                        }
                        let Some(name) = x509.get("secretRef").and_then(Value::as_str) else {
                            return Err(err(
                                "auth.x509.secretRef",
                                "required: the name of a kubernetes.io/tls Secret".into(),
                            ));
                        };
                        Some(
                            client_identity(cx, name)
                                .map_err(|reason| err("auth.x509.secretRef", reason))?,
                        )
                    }
                    Some(_) => {
                        return Err(err("auth.x509", "must be an object with secretRef".into()));
                    }
                }
            }
            Some(_) => return Err(err("auth", "must be an object".into())),
        };

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err("endpoint", format!("TLS set-up failed: {e}")))?
            .with_root_certificates(roots);
        let tls = match client_cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                err(
                    "auth.x509.secretRef",
                    format!("unusable client certificate: {e}"),
                )
            })?,
        };

        Ok(Settings {
            endpoint,
            api_version,
            headers,
            timeout,
            tls: Arc::new(tls),
        })
    }
}

fn parse_endpoint(text: &str, allow_insecure: bool) -> Result<Endpoint, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if allow_insecure => false,
        Some("http") => {
            return Err(format!(
                "{text:?} must be https:// (credentials travel in the request); \
                 http:// needs allowInsecureEndpoint: true, for local development only"
            ));
        }
        _ => return Err(format!("{text:?} must be an https:// URL")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{text:?}: credentials in the URL are not supported; use headers"
        ));
    }
    let query = uri.query().map(str::to_string);
    if query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("api-version=")))
    {
        return Err(format!(
            "{text:?} already has an api-version query; the broker adds it (see apiVersion)"
        ));
    }
    let path = match uri.path() {
        "" => "/".to_string(),
        p => p.to_string(),
    };
    Ok(Endpoint {
        https,
        authority: authority.as_str().to_string(),
        path,
        query,
    })
}

/// Version strings go into the query unescaped, so they are kept to a safe alphabet.
fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = rustls::RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no certificates found".into());
        return Err(format!("{why}; set caCertConfigMap"));
    }
    Ok(store)
}

fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("unreadable PEM: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("a certificate is not usable as a trust anchor: {e}"))?;
    }
    if store.is_empty() {
        return Err("contains no PEM certificate".into());
    }
    Ok(store)
}

/// Every value of a ConfigMap (document first, else the files of `<secrets-dir>/NAME/`),
/// concatenated: a CA bundle may be split over several keys.
fn config_map_pem(cx: &BuildContext<'_>, name: &str) -> Result<Vec<u8>, String> {
    if let Some(doc) = cx.config.config_maps.get(name) {
        let mut pem = Vec::new();
        for value in doc.resource.data.values() {
            pem.extend_from_slice(value.as_bytes());
            pem.push(b'\n');
        }
        for (key, value) in &doc.resource.binary_data {
            let bytes = decode_base64(value)
                .map_err(|e| format!("ConfigMap {name:?} binaryData.{key}: {e}"))?;
            pem.extend_from_slice(&bytes);
            pem.push(b'\n');
        }
        return Ok(pem);
    }
    let dir = cx.secrets_dir.join(name);
    read_folder(&dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no ConfigMap document {name:?} in the configuration and no folder {}",
                dir.display()
            )
        })
}

type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate chain and key of a `kubernetes.io/tls` Secret (document first, else
/// `<secrets-dir>/NAME/tls.crt` and `tls.key`). Errors never quote the key.
fn client_identity(cx: &BuildContext<'_>, name: &str) -> Result<ClientIdentity, String> {
    let (crt, key) = if let Some(doc) = cx.config.secrets.get(name) {
        let secret = &doc.resource;
        let value = |k: &str| -> Result<Vec<u8>, String> {
            if let Some(text) = secret.string_data.get(k) {
                return Ok(text.clone().into_bytes());
            }
            match secret.data.get(k) {
                Some(b64) => decode_base64(b64)
                    .map_err(|e| format!("Secret {name:?} data.{k} is not valid base64: {e}")),
                None => Err(format!(
                    "Secret {name:?} has no {k} (a kubernetes.io/tls Secret has tls.crt and tls.key)"
                )),
            }
        };
        (value("tls.crt")?, value("tls.key")?)
    } else {
        let dir = cx.secrets_dir.join(name);
        let read = |f: &str| {
            std::fs::read(dir.join(f)).map_err(|e| {
                format!(
                    "no Secret document {name:?} in the configuration and cannot read {}: {e}",
                    dir.join(f).display()
                )
            })
        };
        (read("tls.crt")?, read("tls.key")?)
    };
    let chain = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("Secret {name:?} tls.crt: unreadable PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!("Secret {name:?} tls.crt holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|_| format!("Secret {name:?} tls.key holds no usable private key"))?;
    Ok((chain, key))
}

/// Standard base64, whitespace (wrapped YAML) ignored, padding optional.
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT.decode(compact.as_bytes())
}

// ------------------------------------------------------------------------------------------------
// The wire format (broker-spec §3.2, §3.3)
// ------------------------------------------------------------------------------------------------

/// A request body. Field order follows the published examples; absent fields are omitted.
/// No `Debug`: it holds the password.
#[derive(Serialize)]
struct WireRequest<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certs: Option<String>,
    #[serde(
        rename = "enhancedAuthentication",
        skip_serializing_if = "Option::is_none"
    )]
    enhanced: Option<WireEnhanced<'a>>,
}

#[derive(Serialize)]
struct WireEnhanced<'a> {
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

/// The JSON body sent for these credentials: `connect` for CONNECT, `auth` for an AUTH packet.
fn request_body(c: &Credentials) -> Result<Vec<u8>, serde_json::Error> {
    let enhanced = c.method.as_deref().map(|method| WireEnhanced {
        method,
        data: c.data.as_ref().map(|d| BASE64.encode(&d.0)),
    });
    let wire = match c.kind {
        Kind::Connect => WireRequest {
            kind: "connect",
            username: c.username.as_deref(),
            password: c.password.as_ref().map(|p| BASE64.encode(&p.0)),
            certs: (!c.tls_chain.is_empty()).then(|| pem_chain(&c.tls_chain)),
            enhanced,
        },
        Kind::Continue | Kind::Reauthenticate => WireRequest {
            kind: "auth",
            username: None,
            password: None,
            certs: None,
            enhanced,
        },
    };
    serde_json::to_vec(&wire)
}

/// DER certificates as one PEM text, leaf first.
fn pem_chain(chain: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for der in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = BASE64.encode(der);
        for line in b64.as_bytes().chunks(64) {
            // Base64 output is ASCII.
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[derive(Deserialize)]
struct AllowBody {
    #[serde(default)]
    expiry: Option<String>,
    #[serde(default)]
    attributes: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct DenyBody {
    #[serde(default)]
    reason: Option<Value>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct UnsupportedVersionBody {
    #[serde(default, rename = "supportedVersions")]
    supported_versions: Vec<Value>,
}

/// A 200 answer, parsed.
#[derive(Debug, PartialEq)]
struct Allowed {
    expiry: Option<SystemTime>,
    attributes: BTreeMap<String, String>,
}

fn parse_allow(body: &[u8]) -> Result<Allowed, String> {
    // The spec requires a body (`{}` at least); an empty one is read as `{}`.
    let parsed: AllowBody = if body.iter().all(u8::is_ascii_whitespace) {
        AllowBody {
            expiry: None,
            attributes: None,
        }
    } else {
        serde_json::from_slice(body).map_err(|e| format!("not the expected JSON: {e}"))?
    };
    let expiry = match parsed.expiry {
        None => None,
        Some(text) => {
            let at = chrono::DateTime::parse_from_rfc3339(&text)
                .map_err(|e| format!("expiry {text:?} is not an RFC 3339 time: {e}"))?;
            Some(SystemTime::from(at))
        }
    };
    let mut attributes = BTreeMap::new();
    for (key, value) in parsed.attributes.unwrap_or_default() {
        // The API says string values; scalars are accepted as their JSON text.
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(format!("attribute {key:?} is not a string")),
        };
        attributes.insert(key, text);
    }
    Ok(Allowed { expiry, attributes })
}

/// The CONNACK code for a 403's `reason`: the server's code when CONNACK can carry it as a
/// refusal, else 0x87. Codes below 0x80 (0 = Success; the v3-style 4/5 some servers send) are
/// never passed on: a denial must not read as success (scenario 18).
fn refusal_code(reason: Option<&Value>) -> u8 {
    match reason.and_then(Value::as_u64) {
        Some(r) if r <= 0xFF && CONNACK_REFUSALS.contains(&(r as u8)) => r as u8,
        _ => code::NOT_AUTHORIZED,
    }
}

/// Prefer the version we implement; otherwise the server's first choice.
fn pick_version(supported: &[Value], tried: &str) -> Option<String> {
    let listed: Vec<&str> = supported
        .iter()
        .filter_map(Value::as_str)
        .filter(|v| valid_version(v) && *v != tried)
        .collect();
    listed
        .iter()
        .find(|v| **v == API_VERSION)
        .or(listed.first())
        .map(|v| v.to_string())
}

// ------------------------------------------------------------------------------------------------
// The method
// ------------------------------------------------------------------------------------------------

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct Custom {
    policy: String,
    endpoint: Endpoint,
    headers: HeaderMap,
    timeout: Duration,
    /// The api-version to use: the configured one until a 422 renegotiates it.
    version: Mutex<String>,
    client: HttpClient,
}

/// Why the server gave no answer that decides: connect/TLS failure, timeout, 5xx.
#[derive(Debug)]
struct Unavailable(String);

/// An answer that decides: any status but 5xx.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Custom {
    fn new(policy: &str, settings: Settings) -> Custom {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.timeout));
        let builder =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*settings.tls).clone());
        let builder = if settings.endpoint.https {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let connector = builder.enable_http1().enable_http2().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Custom {
            policy: policy.to_string(),
            endpoint: settings.endpoint,
            headers: settings.headers,
            timeout: settings.timeout,
            version: Mutex::new(settings.api_version),
            client,
        }
    }

    async fn decide(&self, c: &Credentials) -> Decision {
        let body = match request_body(c) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                return self.unavailable(c, Unavailable(format!("encoding the request: {e}")));
            }
        };
        let deadline = Instant::now() + self.timeout;
        match self.exchange(body, deadline).await {
            Ok(answer) => self.interpret(c, answer),
            Err(e) => self.unavailable(c, e),
        }
    }

    /// No answer: not relevant on CONNECT (fall through), transient during AUTH exchanges.
    fn unavailable(&self, c: &Credentials, e: Unavailable) -> Decision {
        let reason = format!(
            "custom authentication server {} unavailable: {}",
            self.endpoint, e.0
        );
        warn!(policy = %self.policy, client_id = %c.client_id, kind = ?c.kind, %reason);
        match c.kind {
            Kind::Connect => Decision::NotRelevant,
            Kind::Continue | Kind::Reauthenticate => Decision::Transient { reason },
        }
    }

    /// POSTs the body; on 422 retries once with a version the server supports.
    async fn exchange(&self, body: Bytes, deadline: Instant) -> Result<Answer, Unavailable> {
        let version = self.version.lock().clone();
        let first = self.post(&version, body.clone(), deadline).await?;
        if first.status != StatusCode::UNPROCESSABLE_ENTITY {
            return Ok(first);
        }
        let supported = serde_json::from_slice::<UnsupportedVersionBody>(&first.body)
            .map(|b| b.supported_versions)
            .unwrap_or_default();
        let Some(next) = pick_version(&supported, &version) else {
            return Ok(first);
        };
        info!(policy = %self.policy, endpoint = %self.endpoint, tried = %version, retry = %next,
            "custom authentication server does not support this api-version; retrying");
        let second = self.post(&next, body, deadline).await?;
        if second.status != StatusCode::UNPROCESSABLE_ENTITY {
            // Scenario 16: later requests start with the version that worked.
            *self.version.lock() = next;
        }
        Ok(second)
    }

    async fn post(
        &self,
        version: &str,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Answer, Unavailable> {
        let uri = self
            .endpoint
            .uri(version)
            .map_err(|e| Unavailable(format!("bad request URL: {e}")))?;
        let mut request = Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Unavailable(format!("building the request: {e}")))?;
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| Unavailable(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| Unavailable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        let answer = tokio::time::timeout_at(deadline, call)
            .await
            .map_err(|_| {
                Unavailable(format!("no answer within {} ms", self.timeout.as_millis()))
            })??;
        if answer.status.is_server_error() {
            return Err(Unavailable(format!(
                "HTTP {}{}",
                answer.status,
                body_excerpt(&answer.body)
            )));
        }
        Ok(answer)
    }

    fn interpret(&self, c: &Credentials, answer: Answer) -> Decision {
        let reauth = c.kind == Kind::Reauthenticate;
        match answer.status {
            StatusCode::OK => match parse_allow(&answer.body) {
                Ok(allowed) => {
                    if let Some(expiry) = allowed.expiry
                        && expiry <= SystemTime::now()
                    {
                        info!(policy = %self.policy, client_id = %c.client_id,
                            "custom authentication server allowed with an expiry in the past");
                        return Decision::not_authorized(
                            "the custom authentication server returned an expired credential",
                        );
                    }
                    debug!(policy = %self.policy, client_id = %c.client_id, kind = ?c.kind,
                        attributes = allowed.attributes.len(), expiry = ?allowed.expiry,
                        "custom authentication server allowed");
                    Decision::Allow(Grant {
                        principal: Principal {
                            username: c.username.clone(),
                            attributes: allowed.attributes,
                        },
                        expiry: allowed.expiry,
                        data: None,
                        can_reauthenticate: c.protocol_version >= 5,
                    })
                }
                Err(why) => {
                    warn!(policy = %self.policy, endpoint = %self.endpoint, client_id = %c.client_id,
                        "custom authentication server sent an unusable 200 answer: {why}");
                    Decision::not_authorized("the custom authentication server's answer is invalid")
                }
            },
            StatusCode::FORBIDDEN => {
                let deny: DenyBody = serde_json::from_slice(&answer.body).unwrap_or(DenyBody {
                    reason: None,
                    message: None,
                });
                let server_code = refusal_code(deny.reason.as_ref());
                // Re-authentication failures end in DISCONNECT, which has no 0x86 & co.
                let sent = if reauth {
                    code::NOT_AUTHORIZED
                } else {
                    server_code
                };
                let server_reason = deny
                    .reason
                    .as_ref()
                    .map_or_else(|| "none".to_string(), Value::to_string);
                info!(policy = %self.policy, client_id = %c.client_id, kind = ?c.kind,
                    server_reason, code = format_args!("{sent:#04x}"),
                    message = deny.message.as_deref().unwrap_or(""),
                    "custom authentication server denied");
                Decision::deny(sent, "denied by the custom authentication server")
            }
            status => {
                warn!(policy = %self.policy, endpoint = %self.endpoint, client_id = %c.client_id,
                    "custom authentication server answered HTTP {status}{}", body_excerpt(&answer.body));
                Decision::not_authorized(format!(
                    "the custom authentication server answered HTTP {}",
                    status.as_u16()
                ))
            }
        }
    }
}

impl crate::Method for Custom {
    fn name(&self) -> &'static str {
        "Custom"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> DecisionFuture<'a> {
        Box::pin(self.decide(credentials))
    }
}

/// An error with its causes (`client error: connect: tls: ...`): the useful part of a hyper
/// error is usually two levels down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A short excerpt of an unexpected answer's body, for logs (servers put the cause there).
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(LOGGED_BODY_CHARS).collect();
    format!(": {cut}")
}

#[cfg(test)]
#[path = "custom_tests.rs"]
mod tests;
