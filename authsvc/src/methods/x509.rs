//! The `X509` method: a client authenticated by the certificate it presented in the TLS
//! handshake (broker-spec §2.2–§2.4, §5; Event Grid extensions §6.2).
//!
//! Settings (`x509Settings`):
//! - `trustedClientCaCert` — the ConfigMap whose PEM certificates are the trust anchors; every
//!   certificate in it counts, root or intermediate (default `client-ca`, as the frontend's
//!   handshake assumes). Taken from a `ConfigMap` document of the configuration, else from the
//!   files of `<secrets-dir>/<NAME>/` (re-read at most once per [`RELOAD_INTERVAL`]).
//! - `authorizationAttributes` — `{rule: {subject: "CN = x, OU = y", attributes: {k: v}}}`.
//!   The leaf's subject is compared first, then each certificate up the verified path to its
//!   anchor; the first certificate that any rule matches gives the attributes of every rule
//!   matching it, and the search stops there (a leaf match hides the intermediate's attributes).
//! - `additionalValidation` — only `None`; `AzureDeviceRegistry` is refused at load time.
//! - Gatehouse extensions modelled on Event Grid: `thumbprints` (`{client: [sha256-hex, ...]}`,
//!   one or two per client) and `authenticationNameSource` (an ordered list of `Username`,
//!   `ClientCertificateSubject`, `ClientCertificateDns`, `ClientCertificateUri`,
//!   `ClientCertificateIp`, `ClientCertificateEmail`).
//!
//! Relevant when a TLS client chain was presented; then the chain is verified again here (the
//! service does not trust the frontend's handshake alone): an untrusted, expired or malformed
//! chain is denied with 0x87. The username is the leaf's subject CN; the credential expires at
//! the leaf's `notAfter`; it cannot be renewed in-band, so an AUTH 0x19 from such a client is
//! denied (0x87, scenario 25).
//!
//! With an authentication-name source or `thumbprints` configured, the *authentication name*
//! is taken from the first source that yields a value (default source: the CONNECT username)
//! and becomes the username and the `authenticationName` attribute. With `thumbprints`, the name
//! must also be a listed client (compared case-insensitively; the listed spelling is used) and
//! the SHA-256 of the leaf's DER one of that client's thumbprints. Pinning comes on top of chain
//! validation, never instead of it: the frontend's handshake already requires a chain to an
//! anchor, and webpki does not accept self-signed end-entity certificates.
//!
//! This module does not read revocation lists and does not talk to a device registry.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker_config::mounted::read_folder;
use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::warn;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use crate::policy::{BuildContext, PolicyError};
use crate::{Credentials, Decision, DecisionFuture, Grant, Kind, Method, Principal};

/// The ConfigMap trusted when `trustedClientCaCert` is absent, as in the AIO examples and the
/// frontend's handshake.
pub const DEFAULT_TRUSTED_CLIENT_CA: &str = "client-ca";
/// How often a file-backed trust bundle is re-read (the frontend polls at the same pace).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Event Grid allows a primary and a secondary thumbprint per client.
const MAX_THUMBPRINTS: usize = 2;
/// Event Grid's limit on a client's authentication name.
const MAX_NAME_LEN: usize = 128;

const SETTINGS: &[&str] = &[
    "trustedClientCaCert",
    "authorizationAttributes",
    "additionalValidation",
    "thumbprints",
    "authenticationNameSource",
];

pub fn build(
    cx: &BuildContext<'_>,
    settings: &Value,
    field: &str,
) -> Result<Box<dyn Method>, PolicyError> {
    Ok(Box::new(X509::from_settings(cx, settings, field)?))
}

/// A compiled `X509` method.
pub struct X509 {
    trust: TrustStore,
    rules: Vec<AttributeRule>,
    /// Set when the Event Grid authentication-name mode is on.
    identity: Option<Identity>,
}

impl fmt::Debug for X509 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509")
            .field("trust", &self.trust.name)
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .field("identity", &self.identity)
            .finish()
    }
}

struct AttributeRule {
    name: String,
    subject: Rdns,
    attributes: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Identity {
    sources: Vec<NameSource>,
    /// `thumbprints`: the registered clients; `None` = any name is accepted.
    clients: Option<Vec<Client>>,
}

#[derive(Debug)]
struct Client {
    name: String,
    thumbprints: Vec<[u8; 32]>,
}

/// Where an Event Grid authentication name comes from (broker-spec §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    Username,
    /// The leaf subject's common name (scenario 56: `CN=dev2` → `dev2`).
    ClientCertificateSubject,
    ClientCertificateDns,
    ClientCertificateUri,
    ClientCertificateIp,
    ClientCertificateEmail,
}

impl NameSource {
    const ALL: [(&'static str, NameSource); 6] = [
        ("Username", NameSource::Username),
        (
            "ClientCertificateSubject",
            NameSource::ClientCertificateSubject,
        ),
        ("ClientCertificateDns", NameSource::ClientCertificateDns),
        ("ClientCertificateUri", NameSource::ClientCertificateUri),
        ("ClientCertificateIp", NameSource::ClientCertificateIp),
        ("ClientCertificateEmail", NameSource::ClientCertificateEmail),
    ];

    fn parse(text: &str) -> Option<NameSource> {
        Self::ALL.iter().find(|(n, _)| *n == text).map(|(_, s)| *s)
    }
}

impl X509 {
    pub fn from_settings(
        cx: &BuildContext<'_>,
        settings: &Value,
        field: &str,
    ) -> Result<X509, PolicyError> {
        let empty = Map::new();
        let map = match settings {
            Value::Null => &empty,
            Value::Object(map) => map,
            _ => return Err(cx.error(field, "must be an object")),
        };
        if let Some(unknown) = map.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            return Err(cx.error(
                format!("{field}.{unknown}"),
                format!("unknown setting; expected one of {}", SETTINGS.join(", ")),
            ));
        }

        let trust_name = match map.get("trustedClientCaCert") {
            None | Some(Value::Null) => DEFAULT_TRUSTED_CLIENT_CA.to_owned(),
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            Some(_) => {
                return Err(cx.error(
                    format!("{field}.trustedClientCaCert"),
                    "must be the name of a ConfigMap",
                ));
            }
        };
        let trust = TrustStore::new(cx, &trust_name)
            .map_err(|reason| cx.error(format!("{field}.trustedClientCaCert"), reason))?;

        match map.get("additionalValidation") {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if v == "None" => {}
            Some(Value::String(v)) if v == "AzureDeviceRegistry" => {
                return Err(cx.error(
                    format!("{field}.additionalValidation"),
                    "AzureDeviceRegistry is not supported by Gatehouse; use None",
                ));
            }
            Some(_) => {
                return Err(cx.error(format!("{field}.additionalValidation"), "must be None"));
            }
        }

        let rules = parse_rules(cx, map.get("authorizationAttributes"), field)?;
        let identity = parse_identity(cx, map, field)?;
        Ok(X509 {
            trust,
            rules,
            identity,
        })
    }

    /// The decision for `credentials` at `now` (passed in so tests can pick the instant).
    pub fn decide(&self, credentials: &Credentials, now: SystemTime) -> Decision {
        let Some(leaf_der) = credentials.tls_chain.first() else {
            return Decision::NotRelevant;
        };
        if credentials.kind == Kind::Reauthenticate {
            return Decision::not_authorized("X.509 credentials cannot re-authenticate in-band");
        }
        let anchors = match self.trust.current() {
            Ok(anchors) => anchors,
            Err(reason) => return Decision::not_authorized(reason),
        };
        let subjects = match verify_chain(&anchors, &credentials.tls_chain, now) {
            Ok(subjects) => subjects,
            Err(reason) => return Decision::not_authorized(reason),
        };
        let leaf = match X509Certificate::from_der(leaf_der) {
            Ok((_, leaf)) => leaf,
            Err(e) => {
                return Decision::not_authorized(format!("client certificate does not parse: {e}"));
            }
        };

        let mut attributes = self.attributes_for(&subjects);
        let username = match &self.identity {
            None => common_name(leaf.subject()),
            Some(identity) => {
                match identity.authenticate(credentials.username.as_deref(), &leaf, leaf_der) {
                    Ok(name) => {
                        attributes.insert("authenticationName".to_owned(), name.clone());
                        Some(name)
                    }
                    Err(reason) => return Decision::not_authorized(reason),
                }
            }
        };
        let not_after = leaf.validity().not_after.timestamp();
        let expiry = u64::try_from(not_after)
            .ok()
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        Decision::Allow(Grant {
            principal: Principal {
                username,
                attributes,
            },
            expiry,
            data: None,
            can_reauthenticate: false,
        })
    }

    /// The attributes of the first certificate (leaf first) that any rule matches.
    fn attributes_for(&self, subjects: &[Rdns]) -> BTreeMap<String, String> {
        let mut attributes = BTreeMap::new();
        for subject in subjects {
            let mut matched = false;
            // Rules are in name order (the settings map is sorted), so a key two rules for the
            // same subject both set resolves the same way on every load.
            for rule in self.rules.iter().filter(|r| &r.subject == subject) {
                matched = true;
                attributes.extend(rule.attributes.clone());
            }
            if matched {
                break;
            }
        }
        attributes
    }
}

impl Method for X509 {
    fn name(&self) -> &'static str {
        "X509"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> DecisionFuture<'a> {
        Box::pin(std::future::ready(
            self.decide(credentials, SystemTime::now()),
        ))
    }
}

impl Identity {
    /// The client's authentication name, checked against the registry when there is one.
    fn authenticate(
        &self,
        username: Option<&str>,
        leaf: &X509Certificate<'_>,
        leaf_der: &[u8],
    ) -> Result<String, String> {
        let name = self
            .sources
            .iter()
            .find_map(|source| name_from(*source, username, leaf))
            .ok_or_else(|| {
                format!(
                    "no authentication name: none of {:?} has a value",
                    self.sources
                )
            })?;
        let Some(clients) = &self.clients else {
            return Ok(name);
        };
        // Event Grid compares authentication names case-insensitively and keeps the
        // registered spelling.
        let Some(client) = clients.iter().find(|c| c.name.eq_ignore_ascii_case(&name)) else {
            return Err(format!("{name:?} is not a registered client"));
        };
        let thumbprint: [u8; 32] = Sha256::digest(leaf_der).into();
        if client.thumbprints.contains(&thumbprint) {
            Ok(client.name.clone())
        } else {
            Err(format!(
                "the client certificate's thumbprint is not one of {:?}'s",
                client.name
            ))
        }
    }
}

/// The value `source` yields, if non-empty.
fn name_from(
    source: NameSource,
    username: Option<&str>,
    leaf: &X509Certificate<'_>,
) -> Option<String> {
    let sans = || -> Vec<GeneralName<'_>> {
        match leaf.subject_alternative_name() {
            Ok(Some(ext)) => ext.value.general_names.clone(),
            _ => Vec::new(),
        }
    };
    let value = match source {
        NameSource::Username => username.map(str::to_owned),
        NameSource::ClientCertificateSubject => common_name(leaf.subject()),
        NameSource::ClientCertificateDns => sans().into_iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_owned()),
            _ => None,
        }),
        NameSource::ClientCertificateUri => sans().into_iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_owned()),
            _ => None,
        }),
        NameSource::ClientCertificateIp => sans().into_iter().find_map(|n| match n {
            GeneralName::IPAddress(bytes) => ip_text(bytes),
            _ => None,
        }),
        NameSource::ClientCertificateEmail => sans().into_iter().find_map(|n| match n {
            GeneralName::RFC822Name(e) => Some(e.to_owned()),
            _ => None,
        }),
    };
    value.filter(|v| !v.is_empty())
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// The first common name of a subject.
fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name().next().map(attribute_text)
}

// ------------------------------------------------------------------------------------------------
// Chain verification
// ------------------------------------------------------------------------------------------------

/// Verifies `chain` (leaf first) against `anchors` for client authentication at `now`. Returns
/// the subjects of the verified path: leaf, intermediates, anchor.
fn verify_chain(
    anchors: &Anchors,
    chain: &[Vec<u8>],
    now: SystemTime,
) -> Result<Vec<Rdns>, String> {
    let leaf = CertificateDer::from(chain[0].as_slice());
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let end_entity = EndEntityCert::try_from(&leaf)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let path = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors.anchors,
            &intermediates,
            now,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            format!(
                "client certificate chain is not trusted by ConfigMap {}: {e}",
                anchors.name
            )
        })?;
    let mut subjects = Vec::new();
    let (_, leaf_cert) = X509Certificate::from_der(&chain[0])
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    subjects.push(Rdns::of(leaf_cert.subject()));
    for cert in path.intermediate_certificates() {
        subjects.push(Rdns::of_raw(cert.subject())?);
    }
    subjects.push(Rdns::of_raw(path.anchor().subject.as_ref())?);
    Ok(subjects)
}

/// The trust anchors of one bundle.
struct Anchors {
    name: String,
    anchors: Vec<TrustAnchor<'static>>,
}

impl Anchors {
    fn from_pem(name: &str, pem: &[u8]) -> Result<Anchors, String> {
        let mut anchors = Vec::new();
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| {
                format!(
                    "ConfigMap {name}: certificate {} is not valid PEM: {e}",
                    i + 1
                )
            })?;
            let anchor = webpki::anchor_from_trusted_cert(&cert).map_err(|e| {
                format!(
                    "ConfigMap {name}: certificate {} is not a usable trust anchor: {e}",
                    i + 1
                )
            })?;
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(format!("ConfigMap {name} holds no PEM certificate"));
        }
        Ok(Anchors {
            name: name.to_owned(),
            anchors,
        })
    }
}

/// The trusted bundle of one method: fixed when it came from a configuration document,
/// re-read when it lives in files (a mounted ConfigMap is updated in place).
struct TrustStore {
    name: String,
    source: TrustSource,
}

enum TrustSource {
    Document(Arc<Anchors>),
    Files {
        dir: PathBuf,
        state: Mutex<FileState>,
    },
}

#[derive(Default)]
struct FileState {
    loaded: Option<Arc<Anchors>>,
    last_error: Option<String>,
    checked_at: Option<Instant>,
}

impl TrustStore {
    fn new(cx: &BuildContext<'_>, name: &str) -> Result<TrustStore, String> {
        let source = match cx.config.config_maps.get(name) {
            Some(doc) => {
                let pem = config_map_pem(name, &doc.resource)?;
                TrustSource::Document(Arc::new(Anchors::from_pem(name, &pem)?))
            }
            None => {
                let dir = cx.secrets_dir.join(name);
                let mut state = FileState::default();
                // Broken files are reported at load; missing ones may still be mounted later.
                match read_folder(&dir) {
                    Ok(Some(pem)) => {
                        state.loaded = Some(Arc::new(Anchors::from_pem(name, &pem)?));
                        state.checked_at = Some(Instant::now());
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                }
                TrustSource::Files {
                    dir,
                    state: Mutex::new(state),
                }
            }
        };
        Ok(TrustStore {
            name: name.to_owned(),
            source,
        })
    }

    /// The anchors in force. A file bundle that broke after loading keeps its last good
    /// anchors, as the frontend's handshake does.
    fn current(&self) -> Result<Arc<Anchors>, String> {
        let (dir, state) = match &self.source {
            TrustSource::Document(anchors) => return Ok(anchors.clone()),
            TrustSource::Files { dir, state } => (dir, state),
        };
        let mut state = state.lock();
        let due = state
            .checked_at
            .is_none_or(|at| at.elapsed() >= RELOAD_INTERVAL);
        if due {
            state.checked_at = Some(Instant::now());
            // Small files read at most once a second: not worth a blocking-pool hop.
            let result = match read_folder(dir) {
                Ok(Some(pem)) => Anchors::from_pem(&self.name, &pem),
                Ok(None) => Err(format!(
                    "trusted client CA ConfigMap {} not found (no document, no files in {})",
                    self.name,
                    dir.display()
                )),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(anchors) => {
                    state.loaded = Some(Arc::new(anchors));
                    state.last_error = None;
                }
                Err(reason) => {
                    if state.last_error.as_ref() != Some(&reason) {
                        warn!(configmap = %self.name, %reason, "trusted client CA bundle unusable");
                    }
                    state.last_error = Some(reason);
                }
            }
        }
        match (&state.loaded, &state.last_error) {
            (Some(anchors), _) => Ok(anchors.clone()),
            (None, Some(reason)) => Err(reason.clone()),
            (None, None) => Err(format!(
                "trusted client CA ConfigMap {} not loaded",
                self.name
            )),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// ConfigMap / Secret material, shared with the JWT method
// ------------------------------------------------------------------------------------------------

/// Every value of a ConfigMap document (`binaryData` decoded), concatenated.
pub(crate) fn config_map_pem(
    name: &str,
    cm: &broker_config::ConfigMapResource,
) -> Result<Vec<u8>, String> {
    let mut pem = Vec::new();
    for value in cm.data.values() {
        pem.extend_from_slice(value.as_bytes());
        pem.push(b'\n');
    }
    for (key, value) in &cm.binary_data {
        let bytes = decode_base64(value)
            .map_err(|e| format!("ConfigMap {name}: binaryData.{key} is not valid base64: {e}"))?;
        pem.extend_from_slice(&bytes);
        pem.push(b'\n');
    }
    Ok(pem)
}

/// Every value of a Secret document (`stringData` and decoded `data`), concatenated.
pub(crate) fn secret_pem(
    name: &str,
    secret: &broker_config::SecretResource,
) -> Result<Vec<u8>, String> {
    let mut pem = Vec::new();
    for (key, value) in &secret.data {
        if secret.string_data.contains_key(key) {
            continue;
        }
        let bytes = decode_base64(value)
            .map_err(|e| format!("Secret {name}: data.{key} is not valid base64: {e}"))?;
        pem.extend_from_slice(&bytes);
        pem.push(b'\n');
    }
    for value in secret.string_data.values() {
        pem.extend_from_slice(value.as_bytes());
        pem.push(b'\n');
    }
    Ok(pem)
}

/// Standard base64 with optional padding, whitespace ignored (as Kubernetes stores binary values).
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    ENGINE.decode(compact.as_bytes()).map_err(|e| e.to_string())
}

// ------------------------------------------------------------------------------------------------
// Settings
// ------------------------------------------------------------------------------------------------

fn parse_rules(
    cx: &BuildContext<'_>,
    value: Option<&Value>,
    field: &str,
) -> Result<Vec<AttributeRule>, PolicyError> {
    let field = format!("{field}.authorizationAttributes");
    let map = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(cx.error(field, "must be a map of rule name to {subject, attributes}"));
        }
    };
    let mut rules = Vec::new();
    for (name, rule) in map {
        let at = format!("{field}.{name}");
        let Some(rule) = rule.as_object() else {
            return Err(cx.error(at, "must be an object with subject and attributes"));
        };
        if let Some(unknown) = rule.keys().find(|k| *k != "subject" && *k != "attributes") {
            return Err(cx.error(
                format!("{at}.{unknown}"),
                "unknown field; expected subject and attributes",
            ));
        }
        let subject = match rule.get("subject") {
            Some(Value::String(s)) => {
                Rdns::parse(s).map_err(|reason| cx.error(format!("{at}.subject"), reason))?
            }
            _ => {
                return Err(cx.error(
                    format!("{at}.subject"),
                    "required: a distinguished name such as \"CN = thermostat, OU = Sensors\"",
                ));
            }
        };
        let mut attributes = BTreeMap::new();
        match rule.get("attributes") {
            Some(Value::Object(attrs)) => {
                for (k, v) in attrs {
                    let Some(v) = v.as_str() else {
                        return Err(cx.error(
                            format!("{at}.attributes.{k}"),
                            "must be a string (quote numbers and booleans)",
                        ));
                    };
                    attributes.insert(k.clone(), v.to_owned());
                }
            }
            _ => {
                return Err(cx.error(
                    format!("{at}.attributes"),
                    "required: a map of attribute name to value",
                ));
            }
        }
        rules.push(AttributeRule {
            name: name.clone(),
            subject,
            attributes,
        });
    }
    Ok(rules)
}

fn parse_identity(
    cx: &BuildContext<'_>,
    map: &Map<String, Value>,
    field: &str,
) -> Result<Option<Identity>, PolicyError> {
    let sources_field = format!("{field}.authenticationNameSource");
    let sources = match map.get("authenticationNameSource") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut sources = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let source = item.as_str().and_then(NameSource::parse).ok_or_else(|| {
                    cx.error(
                        format!("{sources_field}[{i}]"),
                        format!(
                            "expected one of {}",
                            NameSource::ALL.map(|(n, _)| n).join(", ")
                        ),
                    )
                })?;
                if sources.contains(&source) {
                    return Err(cx.error(format!("{sources_field}[{i}]"), "listed twice"));
                }
                sources.push(source);
            }
            Some(sources)
        }
        Some(_) => {
            return Err(cx.error(
                sources_field,
                "must be a non-empty list of name sources, in the order to try them",
            ));
        }
    };

    let thumbs_field = format!("{field}.thumbprints");
    let clients = match map.get("thumbprints") {
        None | Some(Value::Null) => None,
        Some(Value::Object(entries)) if !entries.is_empty() => {
            let mut clients: Vec<Client> = Vec::new();
            for (name, list) in entries {
                let at = format!("{thumbs_field}.{name}");
                if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
                    return Err(cx.error(at, "a client name has 1 to 128 characters"));
                }
                if clients.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
                    return Err(cx.error(
                        at,
                        "client names are compared case-insensitively; this one is listed twice",
                    ));
                }
                let items = match list {
                    Value::Array(items) if (1..=MAX_THUMBPRINTS).contains(&items.len()) => items,
                    _ => {
                        return Err(cx.error(
                            at,
                            "must list one or two SHA-256 thumbprints (primary, secondary)",
                        ));
                    }
                };
                let mut thumbprints = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let parsed = item.as_str().and_then(parse_thumbprint).ok_or_else(|| {
                        cx.error(
                            format!("{at}[{i}]"),
                            "must be a SHA-256 thumbprint: 64 hex digits (colons allowed)",
                        )
                    })?;
                    thumbprints.push(parsed);
                }
                clients.push(Client {
                    name: name.clone(),
                    thumbprints,
                });
            }
            Some(clients)
        }
        Some(_) => {
            return Err(cx.error(
                thumbs_field,
                "must map client names to lists of SHA-256 thumbprints",
            ));
        }
    };

    Ok(match (sources, clients) {
        (None, None) => None,
        (sources, clients) => Some(Identity {
            // Event Grid's default: the authentication name is the CONNECT username.
            sources: sources.unwrap_or_else(|| vec![NameSource::Username]),
            clients,
        }),
    })
}

/// 64 hex digits, optionally separated by colons or spaces (as tools print them).
fn parse_thumbprint(text: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b':' && *b != b' ').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

// ------------------------------------------------------------------------------------------------
// Distinguished names
// ------------------------------------------------------------------------------------------------

/// A distinguished name as a sorted multiset of (attribute type OID, normalized value): the
/// order of RDNs is insignificant, and values compare as RFC 5280 §7.1 suggests (case-folded,
/// surrounding spaces dropped, inner runs of spaces collapsed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rdns(Vec<(String, String)>);

/// OpenSSL's short names (and a few long ones) for the attribute types seen in subjects.
const ATTRIBUTE_TYPES: &[(&str, &str)] = &[
    ("CN", "2.5.4.3"),
    ("commonName", "2.5.4.3"),
    ("SN", "2.5.4.4"),
    ("surname", "2.5.4.4"),
    ("serialNumber", "2.5.4.5"),
    ("C", "2.5.4.6"),
    ("countryName", "2.5.4.6"),
    ("L", "2.5.4.7"),
    ("localityName", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("S", "2.5.4.8"),
    ("stateOrProvinceName", "2.5.4.8"),
    ("street", "2.5.4.9"),
    ("streetAddress", "2.5.4.9"),
    ("O", "2.5.4.10"),
    ("organizationName", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("organizationalUnitName", "2.5.4.11"),
    ("title", "2.5.4.12"),
    ("businessCategory", "2.5.4.15"),
    ("postalCode", "2.5.4.17"),
    ("GN", "2.5.4.42"),
    ("givenName", "2.5.4.42"),
    ("initials", "2.5.4.43"),
    ("generationQualifier", "2.5.4.44"),
    ("dnQualifier", "2.5.4.46"),
    ("pseudonym", "2.5.4.65"),
    ("organizationIdentifier", "2.5.4.97"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("domainComponent", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("userId", "0.9.2342.19200300.100.1.1"),
    ("emailAddress", "1.2.840.113549.1.9.1"),
    ("E", "1.2.840.113549.1.9.1"),
];

fn attribute_oid(key: &str) -> Option<String> {
    if let Some((_, oid)) = ATTRIBUTE_TYPES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
    {
        return Some((*oid).to_owned());
    }
    let dotted = key.split('.').count() >= 2
        && key
            .split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    dotted.then(|| key.to_owned())
}

fn normalize_value(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The text of an attribute value: the string types as UTF-8, BMPString as UTF-16BE,
/// TeletexString as Latin-1, anything else as `#hex` of its content (RFC 4514 style).
fn attribute_text(ava: &AttributeTypeAndValue<'_>) -> String {
    if let Ok(text) = ava.as_str() {
        return text.to_owned();
    }
    let any = ava.attr_value();
    let data = any.data;
    if any.tag() == Tag::BmpString && data.len() % 2 == 0 {
        let units: Vec<u16> = data
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        if let Ok(text) = String::from_utf16(&units) {
            return text;
        }
    }
    if any.tag() == Tag::T61String {
        return data.iter().map(|b| char::from(*b)).collect();
    }
    let mut hex = String::from("#");
    for b in data.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

impl Rdns {
    fn new(mut avas: Vec<(String, String)>) -> Rdns {
        avas.sort();
        Rdns(avas)
    }

    /// A certificate's subject.
    fn of(name: &X509Name<'_>) -> Rdns {
        Rdns::new(
            name.iter_attributes()
                .map(|ava| {
                    (
                        ava.attr_type().to_id_string(),
                        normalize_value(&attribute_text(ava)),
                    )
                })
                .collect(),
        )
    }

    /// A subject as webpki hands it out: the content of the Name SEQUENCE, without its header.
    fn of_raw(content: &[u8]) -> Result<Rdns, String> {
        let mut der = vec![0x30];
        let len = content.len();
        if len < 0x80 {
            der.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            der.push(0x80 | (bytes.len() - skip) as u8);
            der.extend_from_slice(&bytes[skip..]);
        }
        der.extend_from_slice(content);
        let (_, name) = X509Name::from_der(&der)
            .map_err(|e| format!("a certificate subject does not parse: {e}"))?;
        Ok(Rdns::of(&name))
    }

    /// An operator's subject string: OpenSSL's one-line form `CN = x, OU = y, C = z` (spaces
    /// around `=` and `,` optional, `+` for multi-valued RDNs, `\` escapes and `"` quotes), or
    /// the old slash form `/CN=x/OU=y`.
    pub fn parse(text: &str) -> Result<Rdns, String> {
        let text = text.trim();
        let (body, separators): (&str, &[char]) = match text.strip_prefix('/') {
            Some(rest) => (rest, &['/', '+']),
            None => (text, &[',', '+', ';']),
        };
        let mut avas = Vec::new();
        for part in split_unescaped(body, separators)? {
            let (key, value) = split_key_value(&part)
                .ok_or_else(|| format!("{part:?} is not of the form TYPE = value"))?;
            let oid = attribute_oid(&key).ok_or_else(|| {
                format!("unknown attribute type {key:?} (use CN, OU, O, C, ... or a dotted OID)")
            })?;
            let value = normalize_value(&value);
            if value.is_empty() {
                return Err(format!("{key} has an empty value"));
            }
            avas.push((oid, value));
        }
        if avas.is_empty() {
            return Err("an empty distinguished name matches nothing".to_owned());
        }
        Ok(Rdns::new(avas))
    }
}

/// Splits at unescaped, unquoted separators; removes escapes and quotes from the pieces, but
/// keeps an escaped `=` marked so the key/value split does not take it.
fn split_unescaped(text: &str, separators: &[char]) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => {
                    // Escaped '=' must not split key from value; mark it with a private-use
                    // character that `split_key_value` turns back into '='.
                    current.push(if next == '=' { ESCAPED_EQUALS } else { next });
                }
                None => return Err("a trailing backslash escapes nothing".to_owned()),
            },
            '"' => quoted = !quoted,
            c if !quoted && separators.contains(&c) => {
                parts.push(std::mem::take(&mut current));
            }
            c => current.push(if quoted && c == '=' {
                ESCAPED_EQUALS
            } else {
                c
            }),
        }
    }
    if quoted {
        return Err("unterminated quote".to_owned());
    }
    parts.push(current);
    Ok(parts.into_iter().filter(|p| !p.trim().is_empty()).collect())
}

const ESCAPED_EQUALS: char = '\u{E03D}';

fn split_key_value(part: &str) -> Option<(String, String)> {
    let (key, value) = part.split_once('=')?;
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    Some((
        key.replace(ESCAPED_EQUALS, "="),
        value.replace(ESCAPED_EQUALS, "="),
    ))
}

#[cfg(test)]
#[path = "x509_tests.rs"]
pub(crate) mod tests;
