//! Test PKIs: root → intermediate → leaf chains as PEM text and files, for server certificates
//! (Manual TLS ports) and client certificates (X.509 authentication), in EC and RSA.
//!
//! [`Pki::new`] builds the two-level hierarchy of the AIO TLS tutorial (broker-spec §5):
//! `<Org> Root CA` → `<Org> Intermediate CA 1` → leaves, so a test can set up the "Contoso"
//! server PKI and the "Fabrikam" client PKI in two lines. [`Authority`] and [`LeafSpec`] cover
//! everything else (other subjects, SANs, validity windows for expiry tests, deeper chains).
//! Helpers write what the broker reads (a `kubernetes.io/tls` Secret as files or as a YAML
//! document, a ConfigMap) and what clients need (`--cafile`, `--cert`, `--key`, a rustls
//! [`ClientConfig`]).
//!
//! EC keys come from rcgen. ring, our only crypto provider, cannot generate RSA keys, so RSA
//! keys come from `openssl genpkey` (Debian's `openssl`, which `ca-certificates` depends on).
//! Nothing here starts a broker or asserts anything.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use rcgen::DnType;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A key algorithm. Every certificate of one chain should use the same one (broker-spec §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256 with SHA-256.
    Ec256,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256.
    Rsa2048,
}

impl KeyKind {
    fn generate(self) -> KeyPair {
        match self {
            KeyKind::Ec256 => {
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate EC key")
            }
            KeyKind::Rsa2048 => {
                let out = Command::new("openssl")
                    .args([
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                    ])
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run openssl to generate an RSA key: {e}"));
                assert!(
                    out.status.success(),
                    "openssl genpkey failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let pem = String::from_utf8(out.stdout).expect("PEM is text");
                KeyPair::from_pem(&pem).expect("openssl's RSA key loads")
            }
        }
    }
}

/// `SystemTime` as rcgen's date type (adding to rcgen's epoch spares a `time` dependency).
macro_rules! rcgen_time {
    ($t:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + $t.duration_since(UNIX_EPOCH).expect("after 1970")
    };
}

/// A subject with just a common name, e.g. `CN = thermostat`.
pub fn cn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// One issued certificate and its private key.
#[derive(Clone)]
pub struct Cert {
    pub der: CertificateDer<'static>,
    pub pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cert")
            .field("pem", &self.pem)
            .finish_non_exhaustive()
    }
}

impl Cert {
    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("our own key parses")
    }
}

/// A CA: a root, or an intermediate with the chain above it.
pub struct Authority {
    pub cert: Cert,
    pub key_kind: KeyKind,
    /// The certificates between this CA and its root, nearest first, root excluded.
    pub parents: Vec<Cert>,
    is_root: bool,
    issuer: Issuer<'static, KeyPair>,
}

/// Long enough for any test run; short enough to stay a valid X.509 date.
const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// The tutorial's leaf lifetime: 2400h.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(2400 * 3600);
/// Certificates start an hour in the past, so clock skew never makes them "not yet valid".
const BACKDATE: Duration = Duration::from_secs(3600);

impl Authority {
    /// A self-signed root CA whose subject is `CN = <name>`.
    pub fn root(name: &str, key_kind: KeyKind) -> Authority {
        Authority::root_with(cn(name), key_kind)
    }

    /// A self-signed root CA with any subject.
    pub fn root_with(subject: DistinguishedName, key_kind: KeyKind) -> Authority {
        let key = key_kind.generate();
        let params = ca_params(subject);
        let cert = params.self_signed(&key).expect("self-sign the root");
        Authority {
            cert: Cert {
                der: cert.der().clone(),
                pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            key_kind,
            parents: Vec::new(),
            is_root: true,
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA (same key algorithm) signed by this one.
    pub fn intermediate(&self, name: &str) -> Authority {
        self.intermediate_with(cn(name))
    }

    pub fn intermediate_with(&self, subject: DistinguishedName) -> Authority {
        let key = self.key_kind.generate();
        let params = ca_params(subject);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the intermediate");
        Authority {
            cert: Cert {
                der: cert.der().clone(),
                pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            key_kind: self.key_kind,
            parents: self.chain_to_root(),
            is_root: false,
            issuer: Issuer::new(params, key),
        }
    }

    /// This CA and its parents, nearest first, without the root: what a certificate it
    /// issues is sent with.
    fn chain_to_root(&self) -> Vec<Cert> {
        if self.is_root {
            return Vec::new();
        }
        std::iter::once(self.cert.clone())
            .chain(self.parents.iter().cloned())
            .collect()
    }

    /// A leaf as `spec` says, with this CA's key algorithm unless the spec overrides it.
    pub fn issue(&self, spec: LeafSpec) -> Leaf {
        let key = spec.key_kind.unwrap_or(self.key_kind).generate();
        let mut params = CertificateParams::default();
        params.distinguished_name = spec.subject;
        params.subject_alt_names = spec.sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.key_kind.unwrap_or(self.key_kind) == KeyKind::Rsa2048 {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = spec.usages;
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen_time!(spec.not_before);
        params.not_after = rcgen_time!(spec.not_after);
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf {
            cert: Cert {
                der: cert.der().clone(),
                pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            intermediates: self.chain_to_root(),
        }
    }

    /// A server certificate `CN = <name>` with `sans` (DNS names or IP addresses).
    pub fn server(&self, name: &str, sans: &[&str]) -> Leaf {
        self.issue(LeafSpec::server(name, sans))
    }

    /// A client certificate `CN = <name>`.
    pub fn client(&self, name: &str) -> Leaf {
        self.issue(LeafSpec::client(name))
    }

    /// Writes this CA's certificate (what a client passes to `--cafile`) to `path`.
    pub fn write_cert(&self, path: &Path) -> PathBuf {
        write(path, &self.cert.pem);
        path.to_owned()
    }
}

fn ca_params(subject: DistinguishedName) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = rcgen_time!(now - BACKDATE);
    params.not_after = rcgen_time!(now + CA_LIFETIME);
    params
}

/// What a leaf certificate should say.
pub struct LeafSpec {
    pub subject: DistinguishedName,
    pub sans: Vec<SanType>,
    pub usages: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `None`: the issuer's algorithm.
    pub key_kind: Option<KeyKind>,
}

impl LeafSpec {
    fn new(subject: DistinguishedName, usage: ExtendedKeyUsagePurpose) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            subject,
            sans: Vec::new(),
            usages: vec![usage],
            not_before: now - BACKDATE,
            not_after: now + LEAF_LIFETIME,
            key_kind: None,
        }
    }

    /// A TLS server certificate `CN = <name>` for `sans` (DNS names or IP addresses).
    pub fn server(name: &str, sans: &[&str]) -> LeafSpec {
        LeafSpec::new(cn(name), ExtendedKeyUsagePurpose::ServerAuth).sans(sans)
    }

    /// A TLS client certificate `CN = <name>`.
    pub fn client(name: &str) -> LeafSpec {
        LeafSpec::new(cn(name), ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Adds subject alternative names: IP addresses where they parse, DNS names otherwise.
    pub fn sans(mut self, sans: &[&str]) -> LeafSpec {
        for san in sans {
            self.sans.push(match san.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*san).try_into().expect("a DNS name")),
            });
        }
        self
    }

    /// Replaces the subject, e.g. `CN = thermostat, OU = Engineering, C = US`.
    pub fn subject(mut self, subject: DistinguishedName) -> LeafSpec {
        self.subject = subject;
        self
    }

    /// Valid from `not_before` to `not_after` (for expiry tests).
    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> LeafSpec {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    pub fn key_kind(mut self, key_kind: KeyKind) -> LeafSpec {
        self.key_kind = Some(key_kind);
        self
    }
}

/// A leaf certificate with the intermediates that lead to its root (root excluded).
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: Cert,
    /// Nearest first.
    pub intermediates: Vec<Cert>,
}

/// Where [`Leaf::write`] put a certificate and its key.
#[derive(Debug, Clone)]
pub struct Files {
    /// The chain: leaf first, then intermediates.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// Leaf then intermediates, as PEM: a Secret's `tls.crt` or mosquitto's `--cert`.
    pub fn chain_pem(&self) -> String {
        std::iter::once(&self.cert)
            .chain(&self.intermediates)
            .map(|c| c.pem.as_str())
            .collect()
    }

    /// Leaf then intermediates, as rustls wants them.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.cert)
            .chain(&self.intermediates)
            .map(|c| c.der.clone())
            .collect()
    }

    pub fn key_pem(&self) -> &str {
        self.cert.key_pem()
    }

    /// Writes `<dir>/<stem>.crt` (the chain, or the leaf alone with `leaf_only`) and
    /// `<dir>/<stem>.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> Files {
        self.write_as(dir, stem, false)
    }

    /// Like [`Leaf::write`] with only the leaf in the certificate file.
    pub fn write_leaf_only(&self, dir: &Path, stem: &str) -> Files {
        self.write_as(dir, stem, true)
    }

    fn write_as(&self, dir: &Path, stem: &str, leaf_only: bool) -> Files {
        std::fs::create_dir_all(dir).expect("create the certificate folder");
        let files = Files {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        let cert = if leaf_only {
            self.cert.pem.clone()
        } else {
            self.chain_pem()
        };
        write(&files.cert, &cert);
        write(&files.key, self.key_pem());
        files
    }

    /// Writes `<secrets_dir>/<name>/tls.crt` and `tls.key`, the way Kubernetes mounts a
    /// `kubernetes.io/tls` Secret. Each file is written to a temporary name and renamed, so a
    /// broker polling the folder never reads half a file.
    pub fn write_tls_secret(&self, secrets_dir: &Path, name: &str) -> PathBuf {
        let dir = secrets_dir.join(name);
        std::fs::create_dir_all(&dir).expect("create the secret folder");
        write(&dir.join("tls.crt"), &self.chain_pem());
        write(&dir.join("tls.key"), self.key_pem());
        dir
    }

    /// A `kubernetes.io/tls` Secret document with the chain and key in `stringData`.
    pub fn secret_yaml(&self, name: &str) -> String {
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": self.chain_pem(), "tls.key": self.key_pem()},
        });
        format!("---\n{doc}\n")
    }

    /// The same Secret with base64 `data`, as `kubectl create secret tls -o yaml` writes it.
    pub fn secret_yaml_base64(&self, name: &str) -> String {
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": base64(self.chain_pem().as_bytes()),
                "tls.key": base64(self.key_pem().as_bytes()),
            },
        });
        format!("---\n{doc}\n")
    }
}

/// The first certificate of a PEM file (e.g. the broker's `<data-dir>/ca.crt`).
pub fn read_certificate(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// A ConfigMap document whose `data[key]` holds `certs` as concatenated PEM (a trust bundle).
pub fn config_map_yaml(name: &str, key: &str, certs: &[&Cert]) -> String {
    let pem: String = certs.iter().map(|c| c.pem.as_str()).collect();
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {key: pem},
    });
    format!("---\n{doc}\n")
}

/// Writes a trust bundle file `<dir>/<name>/<key>`, the way Kubernetes mounts a ConfigMap.
pub fn write_config_map(dir: &Path, name: &str, key: &str, certs: &[&Cert]) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("create the ConfigMap folder");
    let pem: String = certs.iter().map(|c| c.pem.as_str()).collect();
    let path = folder.join(key);
    write(&path, &pem);
    path
}

/// The two-level hierarchy of the TLS tutorial: `<Org> Root CA` → `<Org> Intermediate CA 1`.
pub struct Pki {
    pub root: Authority,
    pub intermediate: Authority,
}

impl Pki {
    pub fn new(org: &str, key_kind: KeyKind) -> Pki {
        let root = Authority::root(&format!("{org} Root CA"), key_kind);
        let intermediate = root.intermediate(&format!("{org} Intermediate CA 1"));
        Pki { root, intermediate }
    }

    /// The tutorial's server side.
    pub fn contoso(key_kind: KeyKind) -> Pki {
        Pki::new("Contoso", key_kind)
    }

    /// The tutorial's client side.
    pub fn fabrikam(key_kind: KeyKind) -> Pki {
        Pki::new("Fabrikam", key_kind)
    }

    /// A server leaf from the intermediate, chained leaf + intermediate. The tutorial's is
    /// `mqtts-endpoint` for `localhost`.
    pub fn server(&self, name: &str, sans: &[&str]) -> Leaf {
        self.intermediate.server(name, sans)
    }

    /// A client leaf (`thermostat`, `heater`, ...) from the intermediate.
    pub fn client(&self, name: &str) -> Leaf {
        self.intermediate.client(name)
    }
}

/// A rustls client configuration (ring, TLS 1.2 and 1.3) trusting `roots`, presenting
/// `client`'s chain when given.
pub fn client_config(
    roots: &[&CertificateDer<'static>],
    client: Option<&Leaf>,
) -> Arc<ClientConfig> {
    client_config_with_versions(
        roots,
        client,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

pub fn client_config_with_versions(
    roots: &[&CertificateDer<'static>],
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).expect("a usable root");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(store);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.cert.private_key())
            .expect("a usable client certificate"),
    };
    Arc::new(config)
}

/// What a TLS handshake with the broker showed.
#[derive(Debug)]
pub struct Handshake {
    /// The chain the server sent, in order.
    pub server_chain: Vec<CertificateDer<'static>>,
    pub version: Option<rustls::ProtocolVersion>,
    /// The open connection, for tests that go on to speak MQTT over it.
    pub stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

/// Connects to `addr` and runs a TLS handshake for `server_name`, bounded by [`crate::WAIT`].
///
/// With TLS 1.3 the server checks a client certificate after the client considers the
/// handshake done; [`Handshake::confirm`] reads once more to surface a rejection.
pub async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> io::Result<Handshake> {
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    let stream = tokio::time::timeout(crate::WAIT, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let (_, conn) = stream.get_ref();
    Ok(Handshake {
        server_chain: conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default(),
        version: conn.protocol_version(),
        stream,
    })
}

/// Standard base64 with padding (for Secret `data`).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Write then rename, so a polling reader never sees a half-written file.
fn write(path: &Path, content: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, content).unwrap_or_else(|e| panic!("write {tmp:?}: {e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {path:?}: {e}"));
}
