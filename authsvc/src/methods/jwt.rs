//! The `JWT` method: a v5 client presents a signed JSON Web Token as its Authentication Data
//! (Event Grid's `OAUTH2-JWT` and `CUSTOM-JWT` modes, broker-spec §6.2, scenario 58).
//!
//! Settings (`jwtSettings`):
//! - `authenticationMethods` — the v5 Authentication Method names this method answers
//!   (default `[OAUTH2-JWT, CUSTOM-JWT]`); other credentials are not relevant to it;
//! - `issuer` (required) and `audiences` (required, ≥ 1): `iss` must equal the issuer and `aud`
//!   (string or list) must contain one of the audiences;
//! - keys: `jwksUrl` (http or https; fetched with a [`FETCH_TIMEOUT`], cached, refetched when a
//!   token names an unknown `kid` or the set is older than [`JWKS_MAX_AGE`], at most once per
//!   [`JWKS_MIN_REFETCH`]) and/or `issuerCertificates` (one or two entries, for rotation: a
//!   ConfigMap or Secret name — every PEM certificate or public key in it — or inline PEM);
//!   `caCertConfigMap` names the CAs that verify an https JWKS server (default: the system's);
//! - `usernameClaim` (default `sub`), `claimsToAttributes` (default: every claim that is not a
//!   registered one), `leewaySeconds` for `exp`/`nbf` (default 30).
//!
//! Validation: the header's `alg` picks the algorithm, but only RS256/384/512, PS256/384/512,
//! ES256/384 and EdDSA are accepted — never `none`, never an HMAC algorithm (a public key must
//! not become a shared secret). `exp`, `iss` and `aud` are required; `nbf` is checked when
//! present. Any failure is a denial with 0x87 and a reason; a JWKS that cannot be fetched when
//! the token needs it (no set yet, or an unknown `kid`) is a *transient* failure (CONNECT 0x88,
//! re-authentication AUTH 0x18), never a denial and never an allow.
//!
//! The principal: username from `usernameClaim`; attributes from claims, converted to text as
//! [`claim_text`] documents; expiry = `exp`. The credential can be renewed with AUTH 0x19 and a
//! fresh token.
//!
//! This module never logs a token and does not accept symmetric keys or unsigned tokens.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use serde_json::{Map, Value};
use tracing::warn;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use broker_config::mounted::read_folder;

use super::x509::{config_map_pem, secret_pem};
use crate::policy::{BuildContext, PolicyError};
use crate::{Credentials, Decision, DecisionFuture, Grant, Method, Principal};

/// The longest a JWKS request (connect, TLS, response, body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set older than this is refetched on next use (the old one serves if that fails).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// At most one fetch per this interval, however many unknown `kid`s arrive: a stream of
/// forged tokens must not turn the broker into a load generator against the issuer.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Event Grid accepts two issuer certificates: current and next.
const MAX_ISSUER_CERTIFICATES: usize = 2;
const DEFAULT_LEEWAY_SECS: u64 = 30;
const DEFAULT_METHODS: [&str; 2] = ["OAUTH2-JWT", "CUSTOM-JWT"];
/// Registered claims (RFC 7519 §4.1): not attributes unless listed in `claimsToAttributes`.
const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];
const ALLOWED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

const SETTINGS: &[&str] = &[
    "authenticationMethods",
    "issuer",
    "audiences",
    "jwksUrl",
    "issuerCertificates",
    "caCertConfigMap",
    "claimsToAttributes",
    "usernameClaim",
    "leewaySeconds",
];

pub fn build(
    cx: &BuildContext<'_>,
    settings: &Value,
    field: &str,
) -> Result<Box<dyn Method>, PolicyError> {
    Ok(Box::new(Jwt::from_settings(cx, settings, field)?))
}

/// A compiled `JWT` method.
pub struct Jwt {
    methods: Vec<String>,
    issuer: String,
    audiences: Vec<String>,
    leeway: u64,
    username_claim: String,
    /// `None`: every non-registered claim.
    claims_to_attributes: Option<Vec<String>>,
    static_keys: Vec<VerifyingKey>,
    jwks: Option<Jwks>,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("methods", &self.methods)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("static_keys", &self.static_keys.len())
            .field("jwks", &self.jwks.as_ref().map(|j| j.url.to_string()))
            .finish_non_exhaustive()
    }
}

/// A public key and what may be verified with it.
#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    /// A JWK's `alg`: when set, the only algorithm this key verifies.
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

impl VerifyingKey {
    fn fits(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        let kid_ok = match kid {
            Some(kid) => self.kid.as_deref() == Some(kid),
            None => true,
        };
        kid_ok && self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// Why a token was not accepted by one key.
enum KeyOutcome {
    Valid(Map<String, Value>),
    /// The signature does not verify with this key; another key may fit.
    WrongKey,
    /// The signature verified (or the token is malformed): the token itself is refused.
    Invalid(String),
}

impl Jwt {
    pub fn from_settings(
        cx: &BuildContext<'_>,
        settings: &Value,
        field: &str,
    ) -> Result<Jwt, PolicyError> {
        let Some(map) = settings.as_object() else {
            return Err(cx.error(
                field,
                "required: an object with issuer, audiences and jwksUrl or issuerCertificates",
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            return Err(cx.error(
                format!("{field}.{unknown}"),
                format!("unknown setting; expected one of {}", SETTINGS.join(", ")),
            ));
        }
        let at = |name: &str| format!("{field}.{name}");

        let methods = match map.get("authenticationMethods") {
            None | Some(Value::Null) => DEFAULT_METHODS.map(str::to_owned).to_vec(),
            Some(v) => string_list(v).filter(|l| !l.is_empty()).ok_or_else(|| {
                cx.error(
                    at("authenticationMethods"),
                    "must be a non-empty list of v5 authentication method names such as CUSTOM-JWT",
                )
            })?,
        };
        let issuer = match map.get("issuer") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(cx.error(at("issuer"), "required: the expected `iss` claim")),
        };
        let audiences = map
            .get("audiences")
            .and_then(string_list)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                cx.error(
                    at("audiences"),
                    "required: a non-empty list; the token's `aud` must contain one of them",
                )
            })?;
        let username_claim = match map.get("usernameClaim") {
            None | Some(Value::Null) => "sub".to_owned(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(cx.error(at("usernameClaim"), "must be a claim name")),
        };
        let claims_to_attributes = match map.get("claimsToAttributes") {
            None | Some(Value::Null) => None,
            Some(v) => Some(string_list(v).ok_or_else(|| {
                cx.error(at("claimsToAttributes"), "must be a list of claim names")
            })?),
        };
        let leeway = match map.get("leewaySeconds") {
            None | Some(Value::Null) => DEFAULT_LEEWAY_SECS,
            Some(v) => v.as_u64().filter(|s| *s <= 3600).ok_or_else(|| {
                cx.error(
                    at("leewaySeconds"),
                    "must be a whole number of seconds, 0 to 3600",
                )
            })?,
        };

        let static_keys = match map.get("issuerCertificates") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(entries))
                if (1..=MAX_ISSUER_CERTIFICATES).contains(&entries.len()) =>
            {
                let mut keys = Vec::new();
                for (i, entry) in entries.iter().enumerate() {
                    let entry_field = format!("{}[{i}]", at("issuerCertificates"));
                    let Some(text) = entry.as_str().filter(|s| !s.is_empty()) else {
                        return Err(cx.error(
                            entry_field,
                            "must be a ConfigMap or Secret name, or PEM text",
                        ));
                    };
                    let found =
                        issuer_keys(cx, text).map_err(|reason| cx.error(&entry_field, reason))?;
                    keys.extend(found);
                }
                keys
            }
            Some(_) => {
                return Err(cx.error(
                    at("issuerCertificates"),
                    "must list one or two certificates (current and next, for rotation)",
                ));
            }
        };

        let jwks = match map.get("jwksUrl") {
            None | Some(Value::Null) => None,
            Some(Value::String(url)) => {
                let uri: Uri = url
                    .parse()
                    .ok()
                    .filter(|u: &Uri| {
                        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                    })
                    .ok_or_else(|| cx.error(at("jwksUrl"), "must be an http:// or https:// URL"))?;
                let ca = match map.get("caCertConfigMap") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(name)) if !name.is_empty() => Some(name.as_str()),
                    Some(_) => {
                        return Err(cx.error(at("caCertConfigMap"), "must be a ConfigMap name"));
                    }
                };
                let roots = if uri.scheme_str() == Some("https") {
                    https_roots(cx, ca).map_err(|r| cx.error(at("caCertConfigMap"), r))?
                } else {
                    RootCertStore::empty()
                };
                Some(Jwks::new(uri, roots).map_err(|r| cx.error(at("jwksUrl"), r))?)
            }
            Some(_) => return Err(cx.error(at("jwksUrl"), "must be an http:// or https:// URL")),
        };
        if jwks.is_none() && map.contains_key("caCertConfigMap") {
            return Err(cx.error(at("caCertConfigMap"), "only applies with jwksUrl"));
        }
        if jwks.is_none() && static_keys.is_empty() {
            return Err(cx.error(field, "needs keys: jwksUrl, issuerCertificates, or both"));
        }

        Ok(Jwt {
            methods,
            issuer,
            audiences,
            leeway,
            username_claim,
            claims_to_attributes,
            static_keys,
            jwks,
        })
    }

    async fn decide(&self, credentials: &Credentials) -> Decision {
        let Some(method) = credentials.method.as_deref() else {
            return Decision::NotRelevant;
        };
        if !self.methods.iter().any(|m| m == method) {
            return Decision::NotRelevant;
        }
        let token = match credentials.data.as_ref().map(|d| std::str::from_utf8(&d.0)) {
            Some(Ok(token)) if !token.is_empty() => token.trim(),
            Some(Err(_)) => {
                return Decision::not_authorized(format!("{method}: the token is not text"));
            }
            _ => {
                return Decision::not_authorized(format!(
                    "{method}: no token in the Authentication Data"
                ));
            }
        };
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            Err(e) => return Decision::not_authorized(format!("{method}: malformed token: {e}")),
        };
        let alg = header.alg;
        if !ALLOWED_ALGORITHMS.contains(&alg) {
            return Decision::not_authorized(format!("{method}: algorithm {alg:?} is not allowed"));
        }
        let validation = self.validation(alg);

        // Configured certificates first: they need no network.
        for key in self.static_keys.iter().filter(|k| k.fits(None, alg)) {
            match self.try_key(token, key, &validation) {
                KeyOutcome::Valid(claims) => return self.allow(method, claims),
                KeyOutcome::WrongKey => continue,
                KeyOutcome::Invalid(reason) => {
                    return Decision::not_authorized(format!("{method}: {reason}"));
                }
            }
        }
        if let Some(jwks) = &self.jwks {
            let keys = match jwks.candidates(header.kid.as_deref(), alg).await {
                Ok(keys) => keys,
                Err(JwksError::Unavailable(reason)) => {
                    return Decision::Transient {
                        reason: format!("{method}: the issuer's key set is unavailable: {reason}"),
                    };
                }
                Err(JwksError::NoKey) => {
                    return Decision::not_authorized(match &header.kid {
                        Some(kid) => format!("{method}: unknown key id {kid:?}"),
                        None => format!("{method}: no {alg:?} key in the issuer's key set"),
                    });
                }
            };
            for key in &keys {
                match self.try_key(token, key, &validation) {
                    KeyOutcome::Valid(claims) => return self.allow(method, claims),
                    KeyOutcome::WrongKey => continue,
                    KeyOutcome::Invalid(reason) => {
                        return Decision::not_authorized(format!("{method}: {reason}"));
                    }
                }
            }
        }
        Decision::not_authorized(format!(
            "{method}: the signature does not verify with any configured key"
        ))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v
    }

    fn try_key(&self, token: &str, key: &VerifyingKey, validation: &Validation) -> KeyOutcome {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => KeyOutcome::Valid(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidKeyFormat => KeyOutcome::WrongKey,
                ErrorKind::ExpiredSignature => KeyOutcome::Invalid("the token has expired".into()),
                ErrorKind::ImmatureSignature => {
                    KeyOutcome::Invalid("the token is not valid yet (nbf)".into())
                }
                ErrorKind::InvalidIssuer => {
                    KeyOutcome::Invalid(format!("the token's issuer is not {:?}", self.issuer))
                }
                ErrorKind::InvalidAudience => KeyOutcome::Invalid(format!(
                    "the token's audience is none of {:?}",
                    self.audiences
                )),
                ErrorKind::MissingRequiredClaim(claim) => {
                    KeyOutcome::Invalid(format!("the token has no {claim} claim"))
                }
                _ => KeyOutcome::Invalid(format!("invalid token: {e}")),
            },
        }
    }

    fn allow(&self, method: &str, claims: Map<String, Value>) -> Decision {
        let username = match claims.get(&self.username_claim).and_then(claim_text) {
            Some(name) if !name.is_empty() => name,
            _ => {
                return Decision::not_authorized(format!(
                    "{method}: the token has no usable {} claim",
                    self.username_claim
                ));
            }
        };
        let expiry = claims
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs as u64));
        let attributes: BTreeMap<String, String> = match &self.claims_to_attributes {
            Some(listed) => listed
                .iter()
                .filter_map(|name| Some((name.clone(), claim_text(claims.get(name)?)?)))
                .collect(),
            None => claims
                .iter()
                .filter(|(name, _)| !REGISTERED_CLAIMS.contains(&name.as_str()))
                .filter_map(|(name, value)| Some((name.clone(), claim_text(value)?)))
                .collect(),
        };
        Decision::Allow(Grant {
            principal: Principal {
                username: Some(username),
                attributes,
            },
            expiry,
            data: None,
            can_reauthenticate: true,
        })
    }
}

impl Method for Jwt {
    fn name(&self) -> &'static str {
        "JWT"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> DecisionFuture<'a> {
        Box::pin(self.decide(credentials))
    }
}

/// A claim as attribute text:
/// - a string as is; a number as its JSON text (`3`, `2.5`); a boolean as `true` / `false`;
/// - an array of those as `[a,b]`: elements as above, joined with `,`, no quotes or spaces
///   (scenario 58: `["a"]` → `[a]`);
/// - `null`, objects and arrays holding arrays or objects have no text: the claim is skipped.
pub fn claim_text(value: &Value) -> Option<String> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match value {
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
            Some(format!("[{}]", parts?.join(",")))
        }
        other => scalar(other),
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Keys from certificates and PEM
// ------------------------------------------------------------------------------------------------

/// The public keys of one `issuerCertificates` entry: inline PEM, or every PEM certificate and
/// public key in a ConfigMap, a Secret, or `<secrets-dir>/<NAME>/`.
fn issuer_keys(cx: &BuildContext<'_>, entry: &str) -> Result<Vec<VerifyingKey>, String> {
    let pem = if entry.trim_start().starts_with("-----BEGIN") {
        entry.as_bytes().to_vec()
    } else if let Some(doc) = cx.config.config_maps.get(entry) {
        config_map_pem(entry, &doc.resource)?
    } else if let Some(doc) = cx.config.secrets.get(entry) {
        secret_pem(entry, &doc.resource)?
    } else {
        let dir = cx.secrets_dir.join(entry);
        read_folder(&dir)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no ConfigMap or Secret {entry:?} (no document, no files in {})",
                    dir.display()
                )
            })?
    };
    keys_from_pem(&pem)
}

fn keys_from_pem(pem: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let mut keys = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("a certificate is not valid PEM: {e}"))?;
        let (_, parsed) = X509Certificate::from_der(&cert)
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
        keys.push(key_from_spki(parsed.public_key())?);
    }
    for spki in SubjectPublicKeyInfoDer::pem_slice_iter(pem) {
        let spki = spki.map_err(|e| format!("a public key is not valid PEM: {e}"))?;
        let (_, parsed) = SubjectPublicKeyInfo::from_der(spki.as_ref())
            .map_err(|e| format!("a public key does not parse: {e}"))?;
        keys.push(key_from_spki(&parsed)?);
    }
    if keys.is_empty() {
        return Err("holds no PEM certificate or public key".to_owned());
    }
    Ok(keys)
}

fn key_from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<VerifyingKey, String> {
    let bits = spki.subject_public_key.data.as_ref();
    let (family, key) = match spki.algorithm.algorithm.to_id_string().as_str() {
        // rsaEncryption, RSASSA-PSS: the bit string is a PKCS#1 RSAPublicKey.
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => {
            (AlgorithmFamily::Rsa, DecodingKey::from_rsa_der(bits))
        }
        // id-ecPublicKey: the bit string is the SEC1 point.
        "1.2.840.10045.2.1" => (AlgorithmFamily::Ec, DecodingKey::from_ec_der(bits)),
        "1.3.101.112" => (AlgorithmFamily::Ed, DecodingKey::from_ed_der(bits)),
        other => return Err(format!("key algorithm {other} is not RSA, EC or Ed25519")),
    };
    Ok(VerifyingKey {
        kid: None,
        alg: None,
        family,
        key,
    })
}

/// The key of a JWK, if it is a public signing key we accept.
fn key_from_jwk(jwk: &Jwk) -> Option<VerifyingKey> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => return None,
        Some(ka) => Some(Algorithm::from_str(&ka.to_string()).ok()?),
    };
    if alg.is_some_and(|a| !ALLOWED_ALGORITHMS.contains(&a)) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let family = key.family();
    // An `oct` key would make HMAC possible; never accept one.
    if family == AlgorithmFamily::Hmac {
        return None;
    }
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        key,
    })
}

/// The roots that verify an https JWKS server: the named ConfigMap, else the system's.
fn https_roots(cx: &BuildContext<'_>, config_map: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match config_map {
        Some(name) => {
            let pem = match cx.config.config_maps.get(name) {
                Some(doc) => config_map_pem(name, &doc.resource)?,
                None => {
                    let dir = cx.secrets_dir.join(name);
                    read_folder(&dir)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("ConfigMap {name} not found"))?
                }
            };
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("ConfigMap {name}: invalid PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ConfigMap {name}: unusable CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("ConfigMap {name} holds no PEM certificate"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found; name the CAs with caCertConfigMap".into(),
                );
            }
        }
    }
    Ok(roots)
}

// ------------------------------------------------------------------------------------------------
// JWKS
// ------------------------------------------------------------------------------------------------

enum JwksError {
    /// The set could not be fetched (and no cached key fits): try again later.
    Unavailable(String),
    /// The set is current and has no key for this token.
    NoKey,
}

struct Jwks {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    cache: RwLock<Option<KeySet>>,
    /// Held while fetching, so concurrent misses wait for one fetch instead of each starting one.
    fetch: tokio::sync::Mutex<FetchState>,
    min_refetch: Duration,
    max_age: Duration,
}

struct KeySet {
    keys: Vec<VerifyingKey>,
    fetched_at: Instant,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

impl Jwks {
    fn new(url: Uri, roots: RootCertStore) -> Result<Jwks, String> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Jwks {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            cache: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            min_refetch: JWKS_MIN_REFETCH,
            max_age: JWKS_MAX_AGE,
        })
    }

    fn cached(&self, kid: Option<&str>, alg: Algorithm) -> (Vec<VerifyingKey>, bool) {
        match self.cache.read().as_ref() {
            None => (Vec::new(), false),
            Some(set) => (
                set.keys
                    .iter()
                    .filter(|k| k.fits(kid, alg))
                    .cloned()
                    .collect(),
                set.fetched_at.elapsed() < self.max_age,
            ),
        }
    }

    /// The keys that may have signed a token with `kid` and `alg`.
    async fn candidates(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<VerifyingKey>, JwksError> {
        let (keys, fresh) = self.cached(kid, alg);
        if !keys.is_empty() && fresh {
            return Ok(keys);
        }
        let refreshed = self.refresh().await;
        let (keys, _) = self.cached(kid, alg);
        match (keys.is_empty(), refreshed) {
            // A stale set still serves the keys it has when the issuer is unreachable.
            (false, _) => Ok(keys),
            (true, Err(reason)) => Err(JwksError::Unavailable(reason)),
            (true, Ok(())) => Err(JwksError::NoKey),
        }
    }

    /// Fetches the set unless that was tried less than `min_refetch` ago; returns the outcome
    /// of the latest attempt.
    async fn refresh(&self) -> Result<(), String> {
        let mut state = self.fetch.lock().await;
        if let Some(at) = state.last_attempt
            && at.elapsed() < self.min_refetch
        {
            return state.last_error.clone().map_or(Ok(()), Err);
        }
        state.last_attempt = Some(Instant::now());
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_once()).await {
            Ok(Ok(keys)) => {
                *self.cache.write() = Some(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                });
                state.last_error = None;
                Ok(())
            }
            Ok(Err(reason)) => {
                warn!(url = %self.url, %reason, "JWKS fetch failed");
                state.last_error = Some(reason.clone());
                Err(reason)
            }
            Err(_) => {
                let reason = format!("no answer within {FETCH_TIMEOUT:?}");
                warn!(url = %self.url, %reason, "JWKS fetch failed");
                state.last_error = Some(reason.clone());
                Err(reason)
            }
        }
    }

    async fn fetch_once(&self) -> Result<Vec<VerifyingKey>, String> {
        let response = self
            .client
            .get(self.url.clone())
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
            .to_bytes();
        parse_jwks(&body)
    }
}

/// The usable keys of a JWKS document. Keys we cannot use (encryption keys, unknown types) are
/// skipped, not fatal: issuers publish sets for many consumers.
fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the key set is not JSON: {e}"))?;
    let Some(items) = doc.get("keys").and_then(Value::as_array) else {
        return Err("the key set has no \"keys\" list".to_owned());
    };
    Ok(items
        .iter()
        .filter_map(|item| serde_json::from_value::<Jwk>(item.clone()).ok())
        .filter_map(|jwk| key_from_jwk(&jwk))
        .collect())
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
