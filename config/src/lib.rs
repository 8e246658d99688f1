//! The broker's configuration: Kubernetes-shaped YAML documents in, a validated [`Config`] out.
//!
//! `gatehouse --config PATH` reads a YAML file (possibly several `---`-separated documents) or a
//! folder (every `*.yaml` / `*.yml` file in it, in name order). Each document is a resource as
//! the AIO MQTT broker's custom resources define it — `Broker`, `BrokerListener`,
//! `BrokerAuthentication`, `BrokerAuthorization` — plus core `Secret` and `ConfigMap`, so an AIO
//! manifest loads unchanged (`broker-spec.md` §1, §2.1, §4.1, §7.2).
//!
//! ## Layout
//! - [`resources`]: the serde shapes of the documents, as written.
//! - `validate` (private): cross-document rules, ranges and defaults; builds the [`Config`].
//! - [`limits`]: memory-profile defaults and the resolved [`ClientLimits`].
//! - [`mounted`]: the bytes of Secrets and ConfigMaps mounted as folders.
//!
//! Every error names the file, the document, the field path and the reason, and all problems are
//! reported at once. This module does not watch files, reload, interpret TLS material or talk to
//! Kubernetes; it turns text into a [`Config`] (and mounted folders into bytes). `BrokerAuthentication` and
//! `BrokerAuthorization` specs are kept loosely typed until the authentication and authorization
//! work gives them types; only their existence is checked.

pub mod limits;
pub mod mounted;
pub mod resources;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use limits::{ClientLimits, QueueLimit};
pub use resources::{
    BackpressureHandling, BrokerListenerSpec, BrokerSpec, ConfigMapResource, ListenerProtocol,
    MemoryProfile, PersistenceDurability, PersistenceSpec, QueueStrategy, SecretResource,
    ServiceType,
};

use resources::Resource;

/// The embedded default configuration, printed by `gatehouse print-default-config`.
pub fn default_config_yaml() -> &'static str {
    include_str!("../default-config.yaml")
}

/// What [`Config::embedded_default`] names as the origin of its documents.
const EMBEDDED_ORIGIN: &str = "<embedded default-config.yaml>";

/// A validated broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub broker: BrokerSettings,
    /// Every port of every listener, in document order, then port order.
    pub listeners: Vec<ListenerPortConfig>,
    /// The listener documents as written, by name, for fields the flattened
    /// [`Config::listeners`] does not carry (`serviceName`, ...).
    pub listener_specs: BTreeMap<String, Document<BrokerListenerSpec>>,
    pub authentications: BTreeMap<String, AuthenticationResource>,
    pub authorizations: BTreeMap<String, AuthorizationResource>,
    pub secrets: BTreeMap<String, Document<SecretResource>>,
    pub config_maps: BTreeMap<String, Document<ConfigMapResource>>,
    /// Accepted but suspicious settings (for example an `authorizationRef` without an
    /// `authenticationRef`, which has no effect). The caller logs them.
    pub warnings: Vec<Problem>,
}

/// A parsed document together with where it came from, so that later stages (TLS loading,
/// policy compilation) can report errors against the document the operator wrote.
#[derive(Debug, Clone)]
pub struct Document<T> {
    pub id: DocumentId,
    pub resource: T,
}

/// A `BrokerAuthentication`: its methods stay loose JSON until authentication is implemented.
pub type AuthenticationResource = Document<Resource<serde_json::Value>>;
/// A `BrokerAuthorization`: its rules stay loose JSON until authorization is implemented.
pub type AuthorizationResource = Document<Resource<serde_json::Value>>;

/// The resolved `Broker` resource (all defaults when there is no Broker document).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// `default` unless a Broker document names it otherwise; listeners' `brokerRef` must match.
    pub name: String,
    /// `None` when no Broker document was given.
    pub document: Option<DocumentId>,
    pub memory_profile: MemoryProfile,
    pub limits: ClientLimits,
    /// `diagnostics.logs.level`: one of trace, debug, info, warn, error.
    pub log_level: Option<String>,
    /// `diagnostics.metrics.prometheusPort`.
    pub prometheus_port: Option<u16>,
    /// The cluster shape, validated; a single process ignores it.
    pub cardinality: Option<Cardinality>,
    /// `advanced.encryptInternalTraffic`, default enabled as in AIO. Meaningful only once
    /// frontends and backends talk over the network.
    pub encrypt_internal_traffic: bool,
    pub high_priority_backpressure: BackpressureHandling,
    /// How the embedded store commits (`spec.persistence`).
    pub persistence: Persistence,
    /// The spec as written, for the parts not resolved above (traces, ...).
    pub spec: BrokerSpec,
}

/// The resolved `Broker.spec.persistence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    Disabled,
    Immediate,
    Periodic { flush_interval_millis: u32 },
}

/// `Broker.spec.cardinality` with its defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cardinality {
    pub frontend_replicas: u32,
    pub frontend_workers: u32,
    pub backend_partitions: u32,
    pub backend_redundancy_factor: u32,
    pub backend_workers: u32,
}

/// One port to listen on, with its per-port policy.
#[derive(Debug, Clone)]
pub struct ListenerPortConfig {
    /// The BrokerListener's `metadata.name`.
    pub listener: String,
    /// Position in the listener's `spec.ports`, for error messages and metrics labels.
    pub index: usize,
    pub host: IpAddr,
    /// 0 means "any free port".
    pub port: u16,
    pub node_port: Option<u16>,
    pub protocol: ListenerProtocol,
    /// `None` means plaintext.
    pub tls: Option<TlsConfig>,
    /// `None` means authentication is disabled on this port.
    pub authentication_ref: Option<String>,
    /// `None` means authorization is disabled. Without an `authentication_ref` it has no effect.
    pub authorization_ref: Option<String>,
    pub service_type: ServiceType,
}

impl ListenerPortConfig {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

/// A port's TLS settings, with the mode-specific field guaranteed present.
#[derive(Debug, Clone)]
pub enum TlsConfig {
    /// The broker issues its own server certificate.
    Automatic {
        /// The cert-manager Certificate settings as written (issuerRef, san, duration, ...).
        cert_manager_certificate_spec: Option<serde_json::Value>,
    },
    /// The server certificate chain and key come from a `kubernetes.io/tls` Secret.
    Manual { secret_ref: String },
}

/// Where a document came from: the file, its position in the file, its kind and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentId {
    /// The file path, or `<embedded default-config.yaml>`, or what the caller of
    /// [`Config::from_yaml_str`] passed.
    pub origin: String,
    /// 1-based position among the `---`-separated documents of the file.
    pub index: usize,
    /// Empty when the document has no `kind`.
    pub kind: String,
    /// `metadata.name`, when the document has one.
    pub name: Option<String>,
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.origin, self.index)?;
        match (self.kind.as_str(), &self.name) {
            ("", _) => Ok(()),
            (kind, Some(name)) => write!(f, ": {kind} {name:?}"),
            (kind, None) => write!(f, ": {kind} (unnamed)"),
        }
    }
}

/// One thing wrong (or, in [`Config::warnings`], suspicious) with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `None` for problems with the configuration as a whole (no listener at all).
    pub document: Option<DocumentId>,
    /// The field path inside the document, like `spec.ports[1].port`.
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(document) = &self.document {
            write!(f, "{document}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or folder could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// A folder was given but holds no `*.yaml` / `*.yml` file: almost certainly the wrong path.
    #[error("{}: no *.yaml or *.yml file in this folder", path.display())]
    EmptyFolder { path: PathBuf },
    /// The text is not well-formed YAML. Reported alone, since nothing after it can be trusted.
    #[error("{origin} (document {index}): invalid YAML: {error}")]
    Syntax {
        origin: String,
        index: usize,
        error: serde_yaml::Error,
    },
    /// Well-formed YAML that breaks the schema or a rule; every problem found is listed.
    #[error("{}", display_problems(.problems))]
    Invalid { problems: Vec<Problem> },
}

impl ConfigError {
    /// The individual problems of an [`ConfigError::Invalid`] error; empty for the others.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

/// No "invalid configuration" prefix: callers add their own context.
fn display_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut text = format!("{} problems:", many.len());
            for problem in many {
                text.push_str("\n  - ");
                text.push_str(&problem.to_string());
            }
            text
        }
    }
}

impl Config {
    /// Loads a YAML file, or every `*.yaml` / `*.yml` file of a folder in name order.
    ///
    /// Hidden files are skipped, so the `..data` links Kubernetes puts in a mounted ConfigMap
    /// folder are not read twice. The folder is not searched recursively.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_error = |path: &Path, error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        };
        let metadata = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
        let mut files = Vec::new();
        if metadata.is_dir() {
            for entry in std::fs::read_dir(path).map_err(|e| read_error(path, e))? {
                let entry = entry.map_err(|e| read_error(path, e))?;
                let file_name = entry.file_name();
                let name = file_name.to_string_lossy();
                let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
                if !is_yaml || name.starts_with('.') {
                    continue;
                }
                // Follows symlinks, which is how mounted ConfigMaps present their files.
                let entry_path = entry.path();
                let entry_meta =
                    std::fs::metadata(&entry_path).map_err(|e| read_error(&entry_path, e))?;
                if entry_meta.is_file() {
                    files.push((file_name, entry_path));
                }
            }
            if files.is_empty() {
                return Err(ConfigError::EmptyFolder {
                    path: path.to_path_buf(),
                });
            }
            files.sort();
        } else {
            files.push((path.as_os_str().to_owned(), path.to_path_buf()));
        }

        let mut parser = validate::Parser::default();
        for (_, file) in files {
            let text = std::fs::read_to_string(&file).map_err(|e| read_error(&file, e))?;
            parser.add_text(&text, &file.display().to_string())?;
        }
        parser.finish()
    }

    /// Parses YAML text (one or more documents). `origin` names the text in error messages.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut parser = validate::Parser::default();
        parser.add_text(text, origin)?;
        parser.finish()
    }

    /// The embedded default: exactly the documents of [`default_config_yaml`].
    pub fn embedded_default() -> Config {
        // A test parses the same text, so this cannot fail in a released binary.
        Config::from_yaml_str(default_config_yaml(), EMBEDDED_ORIGIN)
            .unwrap_or_else(|e| panic!("the embedded default configuration is invalid: {e}"))
    }
}
