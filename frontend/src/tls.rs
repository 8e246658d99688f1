//! TLS on listener ports: where each port's server certificate comes from, which client
//! certificates it trusts, and keeping both current without a restart (broker-spec §1, §2.4).
//!
//! Every TLS port gets a [`PortTls`]. It owns the port's sources and publishes the current
//! [`rustls::ServerConfig`] through a [`ConfigSlot`]; the accept path reads the slot once per
//! connection, so a reload changes the next handshake and never disturbs a running one. A
//! background task ([`PortTls::watch`]) polls the sources every [`POLL_INTERVAL`].
//!
//! Server certificates:
//! - `tls.mode: Manual` with `manual.secretRef: NAME`: the chain (leaf first, then
//!   intermediates, served in that order) and key of a `kubernetes.io/tls` Secret, taken from a
//!   `Secret` document of the configuration when there is one, else from the files
//!   `<secrets-dir>/NAME/tls.crt` and `tls.key`, the way Kubernetes mounts a Secret.
//! - `tls.mode: Automatic`: a certificate issued by a local CA kept in the data directory
//!   ([`LocalCa`]), renewed before it expires.
//!
//! Client certificates are requested on a port whose `authenticationRef` names a
//! BrokerAuthentication with an `X509` method. Every certificate in the ConfigMap named by
//! `x509Settings.trustedClientCaCert` is a trust anchor, root or intermediate. Clients without a
//! certificate still get through the handshake (other methods may authenticate them); a
//! certificate that does not chain to an anchor fails it.
//!
//! A port whose material is missing or invalid stays bound but *waiting*: the accept path closes
//! every connection at once, [`Health`] says why, and the reason is logged once. Once a port
//! has served, a broken update is logged and the last good configuration keeps serving, because
//! an operator replacing two files is briefly inconsistent and a typo must not take a port down.
//!
//! This module does not authenticate anyone: it verifies chains during the handshake and hands
//! the verified chain on; turning it into a principal is the authentication work's. It does not
//! talk to Kubernetes or cert-manager (`issuerRef` is accepted and ignored).

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tracing::{info, warn};

use crate::config::{
    AuthenticationResource, ConfigMapResource, Document, ListenerPortConfig, SecretResource,
    TlsConfig,
};
use crate::health::{Health, PortState};

/// How long a client may take to complete the TLS handshake (and a WebSocket upgrade).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often certificate files are re-read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The ConfigMap an `X509` method trusts when it names none, as in the AIO examples.
pub const DEFAULT_TRUSTED_CLIENT_CA: &str = "client-ca";
/// The lifetime of an automatic server certificate without `duration` (the AIO portal default).
pub const DEFAULT_AUTOMATIC_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// The local CA's lifetime: clients pin `ca.crt`, so it should outlive many server certificates.
const LOCAL_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A local CA closer than this to its end is replaced at start rather than reused.
const LOCAL_CA_MIN_REMAINING: Duration = Duration::from_secs(24 * 3600);
/// Certificates we issue start a little in the past, for peers whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The only crypto provider: ring (aws-lc-rs is deliberately not compiled in).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// A TLS setting the broker cannot start with. `field` is relative to the port
/// (`tls.certManagerCertificateSpec.duration`), so the caller can prefix `spec.ports[i]`.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SetupError {
    pub field: String,
    pub reason: String,
}

fn setup_error(field: impl Into<String>, reason: impl Into<String>) -> SetupError {
    SetupError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Why a port cannot serve (yet). Not fatal: the port waits and the watcher retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LoadError {
    /// Neither a Secret document nor `dir` holds the server certificate.
    SecretNotFound { name: String, dir: PathBuf },
    /// Neither a ConfigMap document nor `dir` holds the trusted client CAs.
    ConfigMapNotFound { name: String, dir: PathBuf },
    /// The material exists but cannot be used. Never carries key bytes.
    Invalid { what: String, reason: String },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The AIO health manager's wording (broker-spec §1.2), so runbooks carry over.
            LoadError::SecretNotFound { name, .. } => write!(
                f,
                "Server certificate {name} not found. Awaiting creation of secret."
            ),
            LoadError::ConfigMapNotFound { name, .. } => write!(
                f,
                "Trusted client CA certificate {name} not found. Awaiting creation of configmap."
            ),
            LoadError::Invalid { what, reason } => {
                write!(f, "{what} is invalid: {reason}. Awaiting a valid one.")
            }
        }
    }
}

impl LoadError {
    /// Where the files were looked for, for the log line; `None` when not about files.
    fn looked_in(&self) -> Option<&Path> {
        match self {
            LoadError::SecretNotFound { dir, .. } | LoadError::ConfigMapNotFound { dir, .. } => {
                Some(dir)
            }
            LoadError::Invalid { .. } => None,
        }
    }
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> LoadError {
    LoadError::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}

// ------------------------------------------------------------------------------------------------
// Material
// ------------------------------------------------------------------------------------------------

/// Private key bytes (PEM or DER) that must never be printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyBytes(Vec<u8>);

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<private key, {} bytes>", self.0.len())
    }
}

/// A server certificate chain and its key as PEM text, as read from a Secret or files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerPem {
    /// `tls.crt`: leaf first, then intermediates.
    chain: Vec<u8>,
    /// `tls.key`.
    key: KeyBytes,
}

/// A parsed private key whose `Debug` shows nothing of it.
pub struct PrivateKey(PrivateKeyDer<'static>);

impl PrivateKey {
    pub fn der(&self) -> &PrivateKeyDer<'static> {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Every PEM `CERTIFICATE` in `pem`, in order; other sections are skipped.
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM CERTIFICATE".to_owned());
    }
    Ok(certs)
}

/// The first PEM private key (PKCS#8, PKCS#1 or SEC1) in `pem`.
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKey, String> {
    // The PEM parser's error can quote a line of the input, which could be key material.
    PrivateKeyDer::from_pem_slice(pem)
        .map(PrivateKey)
        .map_err(|_| {
            "holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".to_owned()
        })
}

/// Standard base64 (RFC 4648; whitespace, as in wrapped YAML, ignored), as Kubernetes stores
/// `Secret.data` and `ConfigMap.binaryData`.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    // Padding optional: hand-written Secrets often drop it, and Kubernetes' own decoder is
    // lenient the same way.
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    ENGINE.decode(compact.as_bytes()).map_err(|e| e.to_string())
}

/// The value of `key` in a Secret: `stringData` wins over `data`, as Kubernetes merges them.
fn secret_value(secret: &SecretResource, key: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(text) = secret.string_data.get(key) {
        return Ok(Some(text.clone().into_bytes()));
    }
    match secret.data.get(key) {
        None => Ok(None),
        Some(b64) => decode_base64(b64)
            .map(Some)
            .map_err(|e| format!("data.{key} is not valid base64: {e}")),
    }
}

/// The server certificate and key of a `kubernetes.io/tls` Secret document.
fn server_pem_from_secret(
    name: &str,
    doc: &Document<SecretResource>,
) -> Result<ServerPem, LoadError> {
    let what = || format!("Server certificate {name} (Secret at {})", doc.id);
    let secret = &doc.resource;
    let get = |key: &str| match secret_value(secret, key) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(invalid(
            what(),
            format!("it has no {key} (a kubernetes.io/tls Secret has tls.crt and tls.key)"),
        )),
        Err(reason) => Err(invalid(what(), reason)),
    };
    Ok(ServerPem {
        chain: get("tls.crt")?,
        key: KeyBytes(get("tls.key")?),
    })
}

/// Reads a file, mapping "does not exist" to `None`.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, io::Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `<dir>/tls.crt` and `<dir>/tls.key`, as Kubernetes mounts a TLS Secret.
fn server_pem_from_files(name: &str, dir: &Path) -> Result<ServerPem, LoadError> {
    let read = |file: &str| {
        let path = dir.join(file);
        read_optional(&path).map_err(|e| {
            invalid(
                format!("Server certificate {name}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    match (read("tls.crt")?, read("tls.key")?) {
        (Some(chain), Some(key)) => Ok(ServerPem {
            chain,
            key: KeyBytes(key),
        }),
        _ => Err(LoadError::SecretNotFound {
            name: name.to_owned(),
            dir: dir.to_owned(),
        }),
    }
}

/// Every data value of a ConfigMap document, `binaryData` decoded, concatenated.
fn ca_pem_from_config_map(
    name: &str,
    doc: &Document<ConfigMapResource>,
) -> Result<Vec<u8>, LoadError> {
    let mut pem = Vec::new();
    for value in doc.resource.data.values() {
        pem.extend_from_slice(value.as_bytes());
        pem.push(b'\n');
    }
    for (key, value) in &doc.resource.binary_data {
        let bytes = decode_base64(value).map_err(|e| {
            invalid(
                format!(
                    "Trusted client CA certificate {name} (ConfigMap at {})",
                    doc.id
                ),
                format!("binaryData.{key} is not valid base64: {e}"),
            )
        })?;
        pem.extend_from_slice(&bytes);
        pem.push(b'\n');
    }
    Ok(pem)
}

/// The trusted-CA ConfigMap mounted at `dir` (see [`broker_config::mounted::read_folder`]).
fn ca_pem_from_files(name: &str, dir: &Path) -> Result<Vec<u8>, LoadError> {
    match broker_config::mounted::read_folder(dir) {
        Ok(Some(pem)) => Ok(pem),
        Ok(None) => Err(LoadError::ConfigMapNotFound {
            name: name.to_owned(),
            dir: dir.to_owned(),
        }),
        Err(e) => Err(invalid(
            format!("Trusted client CA certificate {name}"),
            e.to_string(),
        )),
    }
}

/// A rustls server configuration for `chain` + `key`, requesting client certificates that
/// chain to `client_roots` when given. TLS 1.2 and 1.3, ring only.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKey,
    client_roots: Option<Vec<CertificateDer<'static>>>,
) -> Result<ServerConfig, String> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let mut store = RootCertStore::empty();
            for (i, cert) in roots.into_iter().enumerate() {
                store
                    .add(cert)
                    .map_err(|e| format!("trusted client CA certificate #{}: {e}", i + 1))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
                // Without a certificate a client may still pass another method (§2.2).
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key.0)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))
}

// ------------------------------------------------------------------------------------------------
// The slot the accept path reads
// ------------------------------------------------------------------------------------------------

/// The port's current server configuration; `None` while the port waits. Cheap to clone.
#[derive(Clone, Default)]
pub struct ConfigSlot(Arc<RwLock<Option<Arc<ServerConfig>>>>);

impl ConfigSlot {
    /// What the next handshake uses.
    pub fn current(&self) -> Option<Arc<ServerConfig>> {
        self.0.read().clone()
    }

    fn set(&self, config: Arc<ServerConfig>) {
        *self.0.write() = Some(config);
    }
}

impl fmt::Debug for ConfigSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.0.read().is_some() {
            "serving"
        } else {
            "waiting"
        };
        f.debug_tuple("ConfigSlot").field(&state).finish()
    }
}

// ------------------------------------------------------------------------------------------------
// Automatic mode: the local CA and the certificates it issues
// ------------------------------------------------------------------------------------------------

/// `SystemTime` as rcgen's date type. Adding to rcgen's own epoch value spares a direct
/// dependency on the `time` crate.
macro_rules! rcgen_time {
    ($t:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + $t.duration_since(UNIX_EPOCH).unwrap_or_default()
    };
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as RFC 5280 wants serials.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// The machine's host name, for the automatic certificate's SANs.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim().to_owned();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(name)
}

/// The CA that issues `Automatic` server certificates: `<data-dir>/ca.crt` (what clients pass
/// to `--cafile`) and `<data-dir>/ca.key` (mode 0600). Reused across restarts while valid, so
/// clients keep trusting the broker; replaced (old files kept as `*.old`) when not.
pub struct LocalCa {
    cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA from `data_dir`, or creates it there.
    pub fn load_or_create(data_dir: &Path, now: SystemTime) -> Result<LocalCa, String> {
        let cert_path = data_dir.join("ca.crt");
        let key_path = data_dir.join("ca.key");
        match LocalCa::load(&cert_path, &key_path, now) {
            Ok(Some(ca)) => {
                info!(path = %cert_path.display(), "reusing the local CA for automatic TLS certificates");
                return Ok(ca);
            }
            Ok(None) => {}
            Err(reason) => {
                warn!(path = %cert_path.display(), %reason, "the local CA cannot be reused; moving it aside as *.old and creating a new one (clients must trust the new ca.crt)");
                for path in [&cert_path, &key_path] {
                    let mut old = path.clone().into_os_string();
                    old.push(".old");
                    std::fs::rename(path, &old)
                        .or_else(|e| {
                            if e.kind() == io::ErrorKind::NotFound {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
                }
            }
        }
        let ca = LocalCa::create(&cert_path, &key_path, now)?;
        info!(path = %cert_path.display(), "created a local CA for automatic TLS certificates; clients trust it with --cafile");
        Ok(ca)
    }

    /// `Ok(None)` when neither file exists; `Err` when they exist but cannot serve as the CA.
    fn load(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<Option<LocalCa>, String> {
        let read =
            |p: &Path| read_optional(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let (cert_pem, key_pem) = match (read(cert_path)?, read(key_path)?) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            _ => return Err("only one of ca.crt and ca.key exists".to_owned()),
        };
        let der = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| format!("ca.crt is not a PEM certificate ({e})"))?;
        let key_text =
            std::str::from_utf8(&key_pem).map_err(|_| "ca.key is not PEM text".to_owned())?;
        let key = KeyPair::from_pem(key_text)
            .map_err(|_| "ca.key is not a usable private key".to_owned())?;
        {
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| format!("ca.crt does not parse: {e}"))?;
            if !cert.is_ca() {
                return Err("ca.crt is not a CA certificate".to_owned());
            }
            if cert.public_key().subject_public_key.data.as_ref()
                != rcgen::PublicKeyData::der_bytes(&key)
            {
                return Err("ca.key does not belong to ca.crt".to_owned());
            }
            let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            let validity = cert.validity();
            if validity.not_before.timestamp() > now_secs
                || validity.not_after.timestamp()
                    < now_secs + LOCAL_CA_MIN_REMAINING.as_secs() as i64
            {
                return Err(format!(
                    "ca.crt is not valid now or expires within a day (valid {} to {})",
                    validity.not_before, validity.not_after
                ));
            }
        }
        restrict_permissions(key_path);
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| format!("ca.crt cannot issue certificates: {e}"))?;
        Ok(Some(LocalCa {
            cert_path: cert_path.to_owned(),
            issuer,
        }))
    }

    fn create(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<LocalCa, String> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot generate the CA key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Gatehouse");
        let cn = match hostname() {
            Some(host) => format!("Gatehouse local CA ({host})"),
            None => "Gatehouse local CA".to_owned(),
        };
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        // It signs server certificates directly, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = rcgen_time!(now - BACKDATE);
        params.not_after = rcgen_time!(now + LOCAL_CA_LIFETIME);
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot create the CA certificate: {e}"))?;
        // The key first: a crt without its key is useless, the reverse is merely unused.
        write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(LocalCa {
            cert_path: cert_path.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Where clients find the CA certificate.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A server certificate for `spec`, valid from now.
    fn issue(&self, spec: &AutomaticSpec, now: SystemTime) -> Result<ServerPem, String> {
        let key = KeyPair::generate_for(spec.algorithm)
            .map_err(|e| format!("cannot generate a server key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Gatehouse");
        dn.push(DnType::CommonName, spec.common_name.clone());
        params.distinguished_name = dn;
        params.subject_alt_names = spec.sans.clone();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = rcgen_time!(now - BACKDATE);
        params.not_after = rcgen_time!(now + spec.lifetime);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("cannot sign the server certificate: {e}"))?;
        Ok(ServerPem {
            chain: cert.pem().into_bytes(),
            key: KeyBytes(key.serialize_pem().into_bytes()),
        })
    }
}

/// Write-then-rename with `mode`, so a reader never sees half a file or a readable key.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.to_owned().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // `mode` only applies to a new file: a leftover from a crash could be world-readable.
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    result.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A key readable by others is tightened rather than refused: the broker can fix it.
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warn!(path = %path.display(), "the local CA key was readable by others; setting mode 0600");
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

/// `certManagerCertificateSpec`, as far as a local issuer can honour it.
#[derive(Debug, Clone)]
struct AutomaticSpec {
    lifetime: Duration,
    renew_before: Duration,
    common_name: String,
    sans: Vec<SanType>,
    algorithm: &'static SignatureAlgorithm,
}

impl AutomaticSpec {
    fn parse(spec: Option<&Value>) -> Result<AutomaticSpec, SetupError> {
        const BASE: &str = "tls.certManagerCertificateSpec";
        let empty = Value::Null;
        let spec = spec.unwrap_or(&empty);
        if !(spec.is_object() || spec.is_null()) {
            return Err(setup_error(BASE, "must be a mapping"));
        }
        let duration_field = |name: &str| -> Result<Option<Duration>, SetupError> {
            match spec.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => parse_go_duration(text).map(Some).map_err(|reason| {
                    setup_error(format!("{BASE}.{name}"), format!("{text:?}: {reason}"))
                }),
                Some(_) => Err(setup_error(
                    format!("{BASE}.{name}"),
                    "must be a Go duration string such as \"240h\"",
                )),
            }
        };
        let lifetime = duration_field("duration")?.unwrap_or(DEFAULT_AUTOMATIC_LIFETIME);
        if lifetime < Duration::from_secs(60) {
            return Err(setup_error(
                format!("{BASE}.duration"),
                "must be at least 1m",
            ));
        }
        let renew_before = match duration_field("renewBefore")? {
            // cert-manager's default: renew when two thirds of the lifetime have passed.
            None => lifetime / 3,
            Some(d) if d >= lifetime => {
                return Err(setup_error(
                    format!("{BASE}.renewBefore"),
                    "must be shorter than duration",
                ));
            }
            Some(d) => d,
        };

        let host = hostname();
        let mut dns: Vec<String> = vec!["localhost".to_owned()];
        dns.extend(host.clone());
        let mut ips: Vec<IpAddr> = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ];
        let san = spec.get("san").unwrap_or(&empty);
        let strings = |name: &str| -> Result<Vec<String>, SetupError> {
            match san.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str().map(str::to_owned).ok_or_else(|| {
                            setup_error(format!("{BASE}.san.{name}[{i}]"), "must be a string")
                        })
                    })
                    .collect(),
                Some(_) => Err(setup_error(
                    format!("{BASE}.san.{name}"),
                    "must be a list of strings",
                )),
            }
        };
        for (i, name) in strings("dns")?.into_iter().enumerate() {
            if rcgen::string::Ia5String::try_from(name.as_str()).is_err() || name.is_empty() {
                return Err(setup_error(
                    format!("{BASE}.san.dns[{i}]"),
                    format!("{name:?} is not a DNS name"),
                ));
            }
            if !dns.contains(&name) {
                dns.push(name);
            }
        }
        for (i, text) in strings("ip")?.into_iter().enumerate() {
            let ip: IpAddr = text.parse().map_err(|_| {
                setup_error(
                    format!("{BASE}.san.ip[{i}]"),
                    format!("{text:?} is not an IP address"),
                )
            })?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let mut sans = Vec::new();
        for name in &dns {
            // Checked above (the host name by `hostname`), so this only skips the impossible.
            if let Ok(ia5) = rcgen::string::Ia5String::try_from(name.as_str()) {
                sans.push(SanType::DnsName(ia5));
            }
        }
        sans.extend(ips.into_iter().map(SanType::IpAddress));

        let algorithm = match spec
            .get("privateKey")
            .and_then(|k| k.get("algorithm"))
            .and_then(Value::as_str)
        {
            None | Some("Ec256") => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some("Ec384") => &rcgen::PKCS_ECDSA_P384_SHA384,
            Some("Ed25519") => &rcgen::PKCS_ED25519,
            Some(other) => {
                // RSA and P-521 key generation are not available with ring; an AIO manifest
                // asking for them should still load.
                warn!(
                    algorithm = other,
                    "{BASE}.privateKey.algorithm is not available for automatic certificates; using Ec256"
                );
                &rcgen::PKCS_ECDSA_P256_SHA256
            }
        };
        Ok(AutomaticSpec {
            lifetime,
            renew_before,
            common_name: host.unwrap_or_else(|| "localhost".to_owned()),
            sans,
            algorithm,
        })
    }
}

/// Go's `time.ParseDuration` syntax ("240h", "1h30m", "1.5h", "90s", "500ms"), which
/// cert-manager's `duration` and `renewBefore` use. Negative durations are refused.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err("expected a number, e.g. \"240h\" or \"1h30m\"".to_owned());
        }
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err("missing unit (one of ns, us, ms, s, m, h)".to_owned()),
            other => {
                return Err(format!(
                    "unknown unit {other:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        total += number * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| "out of range".to_owned())
}

// ------------------------------------------------------------------------------------------------
// Per-port sources and the watcher
// ------------------------------------------------------------------------------------------------

/// What the TLS ports of one broker share: where files live, and the one local CA.
#[derive(Debug)]
pub struct TlsEnv {
    pub secrets_dir: PathBuf,
    pub data_dir: PathBuf,
    local_ca: Mutex<Option<Arc<LocalCa>>>,
}

impl TlsEnv {
    pub fn new(secrets_dir: PathBuf, data_dir: PathBuf) -> TlsEnv {
        TlsEnv {
            secrets_dir,
            data_dir,
            local_ca: Mutex::new(None),
        }
    }

    /// The local CA, loaded or created on first use, so a broker without Automatic ports
    /// never writes one.
    pub fn local_ca(&self) -> Result<Arc<LocalCa>, String> {
        let mut slot = self.local_ca.lock();
        if let Some(ca) = &*slot {
            return Ok(ca.clone());
        }
        let ca = Arc::new(LocalCa::load_or_create(&self.data_dir, SystemTime::now())?);
        *slot = Some(ca.clone());
        Ok(ca)
    }
}

enum ServerSource {
    /// A Secret document of the configuration; fixed for the process's lifetime.
    Document {
        name: String,
        pem: Result<ServerPem, LoadError>,
    },
    /// `<secrets-dir>/<name>/tls.{crt,key}`, re-read on every poll.
    Files { name: String, dir: PathBuf },
    Automatic {
        ca: Arc<LocalCa>,
        spec: AutomaticSpec,
        /// The certificate issued last and when to replace it.
        issued: Option<(ServerPem, SystemTime)>,
    },
}

impl ServerSource {
    fn name(&self) -> &str {
        match self {
            ServerSource::Document { name, .. } | ServerSource::Files { name, .. } => name,
            ServerSource::Automatic { .. } => "(automatic)",
        }
    }

    fn read(&mut self, now: SystemTime) -> Result<ServerPem, LoadError> {
        match self {
            ServerSource::Document { pem, .. } => pem.clone(),
            ServerSource::Files { name, dir } => server_pem_from_files(name, dir),
            ServerSource::Automatic { ca, spec, issued } => {
                if let Some((pem, renew_at)) = issued
                    && now < *renew_at
                {
                    return Ok(pem.clone());
                }
                let pem = ca
                    .issue(spec, now)
                    .map_err(|reason| invalid("Automatic server certificate", reason))?;
                let renew_at = now + (spec.lifetime - spec.renew_before);
                info!(
                    ca = %ca.cert_path().display(),
                    lifetime_hours = spec.lifetime.as_secs() / 3600,
                    renew_in_hours = (spec.lifetime - spec.renew_before).as_secs() / 3600,
                    "issued an automatic server certificate"
                );
                *issued = Some((pem.clone(), renew_at));
                Ok(pem)
            }
        }
    }
}

enum ClientCaSource {
    Document {
        name: String,
        pem: Result<Vec<u8>, LoadError>,
    },
    Files {
        name: String,
        dir: PathBuf,
    },
}

impl ClientCaSource {
    fn name(&self) -> &str {
        match self {
            ClientCaSource::Document { name, .. } | ClientCaSource::Files { name, .. } => name,
        }
    }

    fn read(&self) -> Result<Vec<u8>, LoadError> {
        match self {
            ClientCaSource::Document { pem, .. } => pem.clone(),
            ClientCaSource::Files { name, dir } => ca_pem_from_files(name, dir),
        }
    }
}

/// The names of the ConfigMaps an authentication's `X509` methods trust; `None` when it has
/// no `X509` method (then the port does not ask for client certificates).
pub fn trusted_client_ca_names(authentication: &AuthenticationResource) -> Option<Vec<String>> {
    let methods = authentication
        .resource
        .spec
        .get("authenticationMethods")
        .and_then(Value::as_array)?;
    let names: Vec<String> = methods
        .iter()
        .filter(|m| m.get("method").and_then(Value::as_str) == Some("X509"))
        .map(|m| {
            m.get("x509Settings")
                .and_then(|s| s.get("trustedClientCaCert"))
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_TRUSTED_CLIENT_CA)
                .to_owned()
        })
        .collect();
    (!names.is_empty()).then_some(names)
}

/// The configuration documents a port's TLS may refer to.
pub struct Documents<'a> {
    pub secrets: &'a std::collections::BTreeMap<String, Document<SecretResource>>,
    pub config_maps: &'a std::collections::BTreeMap<String, Document<ConfigMapResource>>,
    pub authentications: &'a std::collections::BTreeMap<String, AuthenticationResource>,
}

impl<'a> From<&'a crate::config::Config> for Documents<'a> {
    fn from(config: &'a crate::config::Config) -> Self {
        Documents {
            secrets: &config.secrets,
            config_maps: &config.config_maps,
            authentications: &config.authentications,
        }
    }
}

/// One TLS port: its sources, the slot the accept path reads, and the watcher state.
pub struct PortTls {
    listener: String,
    /// The bound port, which is what [`Health`] and logs name.
    port: u16,
    server: ServerSource,
    /// One per trusted ConfigMap; empty when the port asks for no client certificate.
    client_cas: Vec<ClientCaSource>,
    slot: ConfigSlot,
    health: Arc<Health>,
    /// A hash of the inputs of the last attempt, so unchanged inputs are neither rebuilt nor
    /// logged again (the "log once" of a waiting port).
    last_inputs: Option<u64>,
}

impl fmt::Debug for PortTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortTls")
            .field("listener", &self.listener)
            .field("port", &self.port)
            .field("server", &self.server.name())
            .field(
                "client_cas",
                &self
                    .client_cas
                    .iter()
                    .map(ClientCaSource::name)
                    .collect::<Vec<_>>(),
            )
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl PortTls {
    /// Sets up `port` (which must have `tls`), loads what exists now and registers it in
    /// `health`. `Err` only for settings the broker cannot run with; missing material waits.
    pub fn new(
        port: &ListenerPortConfig,
        bound_port: u16,
        documents: &Documents<'_>,
        env: &TlsEnv,
        health: Arc<Health>,
    ) -> Result<PortTls, SetupError> {
        let server = match &port.tls {
            None => return Err(setup_error("tls", "this port has no TLS settings")),
            Some(TlsConfig::Manual { secret_ref }) => match documents.secrets.get(secret_ref) {
                Some(doc) => ServerSource::Document {
                    name: secret_ref.clone(),
                    pem: server_pem_from_secret(secret_ref, doc),
                },
                None => ServerSource::Files {
                    name: secret_ref.clone(),
                    dir: env.secrets_dir.join(secret_ref),
                },
            },
            Some(TlsConfig::Automatic {
                cert_manager_certificate_spec,
            }) => {
                let spec = AutomaticSpec::parse(cert_manager_certificate_spec.as_ref())?;
                let ca = env
                    .local_ca()
                    .map_err(|reason| setup_error("tls.mode", format!("Automatic: {reason}")))?;
                ServerSource::Automatic {
                    ca,
                    spec,
                    issued: None,
                }
            }
        };
        let ca_names = port
            .authentication_ref
            .as_ref()
            .and_then(|name| documents.authentications.get(name))
            .and_then(trusted_client_ca_names)
            .unwrap_or_default();
        let client_cas = ca_names
            .into_iter()
            .map(|name| match documents.config_maps.get(&name) {
                Some(doc) => ClientCaSource::Document {
                    pem: ca_pem_from_config_map(&name, doc),
                    name,
                },
                None => ClientCaSource::Files {
                    dir: env.secrets_dir.join(&name),
                    name,
                },
            })
            .collect();
        let mut tls = PortTls {
            listener: port.listener.clone(),
            port: bound_port,
            server,
            client_cas,
            slot: ConfigSlot::default(),
            health,
            last_inputs: None,
        };
        tls.refresh(SystemTime::now());
        Ok(tls)
    }

    /// The slot the accept path reads.
    pub fn slot(&self) -> ConfigSlot {
        self.slot.clone()
    }

    /// Whether the port asks clients for certificates.
    pub fn requests_client_certificates(&self) -> bool {
        !self.client_cas.is_empty()
    }

    /// Re-reads the sources and, if they changed, rebuilds and swaps the configuration.
    pub fn refresh(&mut self, now: SystemTime) {
        let server = self.server.read(now);
        let cas: Vec<Result<Vec<u8>, LoadError>> =
            self.client_cas.iter().map(ClientCaSource::read).collect();
        let fingerprint = {
            let mut h = DefaultHasher::new();
            server.hash(&mut h);
            cas.hash(&mut h);
            h.finish()
        };
        if self.last_inputs == Some(fingerprint) {
            return;
        }
        self.last_inputs = Some(fingerprint);
        let name = self.server.name().to_owned();
        match self.build(server, cas) {
            Ok((config, leaf)) => {
                let first = self.slot.current().is_none();
                self.slot.set(Arc::new(config));
                self.health
                    .set(&self.listener, self.port, PortState::Serving);
                let what = if first {
                    "serving"
                } else {
                    "reloaded; new handshakes use it"
                };
                info!(
                    listener = %self.listener,
                    port = self.port,
                    subject = %leaf.subject,
                    not_after = %leaf.not_after,
                    client_certificates = self.requests_client_certificates(),
                    "Server certificate {name} {what}."
                );
            }
            Err(error) => {
                let looked_in = error.looked_in().map(|p| p.display().to_string());
                if self.slot.current().is_some() {
                    warn!(listener = %self.listener, port = self.port, looked_in, "{error} The port keeps serving the previous certificate.");
                } else {
                    warn!(listener = %self.listener, port = self.port, looked_in, "{error}");
                    self.health.set(
                        &self.listener,
                        self.port,
                        PortState::Waiting(error.to_string()),
                    );
                }
            }
        }
    }

    fn build(
        &self,
        server: Result<ServerPem, LoadError>,
        cas: Vec<Result<Vec<u8>, LoadError>>,
    ) -> Result<(ServerConfig, LeafSummary), LoadError> {
        let name = self.server.name();
        let what = || format!("Server certificate {name}");
        let server = server?;
        let chain = parse_certificates(&server.chain)
            .map_err(|reason| invalid(what(), format!("tls.crt {reason}")))?;
        let key = parse_private_key(&server.key.0)
            .map_err(|reason| invalid(what(), format!("tls.key {reason}")))?;
        let leaf = LeafSummary::of(&chain[0]).map_err(|reason| invalid(what(), reason))?;
        let roots = if self.client_cas.is_empty() {
            None
        } else {
            let mut roots = Vec::new();
            for (source, pem) in self.client_cas.iter().zip(cas) {
                let certs = parse_certificates(&pem?).map_err(|reason| {
                    invalid(
                        format!("Trusted client CA certificate {}", source.name()),
                        reason,
                    )
                })?;
                roots.extend(certs);
            }
            Some(roots)
        };
        let config = server_config(chain, key, roots).map_err(|reason| invalid(what(), reason))?;
        Ok((config, leaf))
    }

    /// Polls until the task is aborted. File reads are a few kilobytes per second and automatic
    /// renewal is one key generation, so this runs on the accept thread without blocking it
    /// noticeably.
    pub async fn watch(mut self) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.refresh(SystemTime::now());
        }
    }
}

/// What the log says about a served certificate.
struct LeafSummary {
    subject: String,
    not_after: String,
}

impl LeafSummary {
    fn of(der: &CertificateDer<'_>) -> Result<LeafSummary, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("tls.crt: the first certificate does not parse: {e}"))?;
        Ok(LeafSummary {
            subject: cert.subject().to_string(),
            not_after: cert.validity().not_after.to_string(),
        })
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
