//! From YAML text to a validated [`Config`]: document dispatch, cross-document rules, defaults.
//!
//! Parsing is two-pass per document. The first pass reads the document as an untyped value, only
//! to learn its `apiVersion`, `kind` and `metadata.name`; the second re-reads the same document
//! from the text straight into its typed shape. Re-reading (rather than converting the value)
//! matters: only serde_yaml's streaming deserializer reports the field path and line of a schema
//! error, which is what makes `unknown field` messages useful.
//!
//! Problems are collected, not returned at the first one, so an operator fixes a file in one
//! round. A document that fails its typed parse is remembered as "broken" so that references to
//! it do not produce a second, misleading "not defined" error. This module knows nothing about
//! files or folders; [`Config::load`] feeds it text.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::IpAddr;

use serde::Deserialize;

use super::resources::{
    BrokerListenerSpec, BrokerSpec, ConfigMapResource, OperationalMode, PersistenceDurability,
    Resource, SecretResource, TlsMode,
};
use super::{
    AuthenticationResource, AuthorizationResource, BrokerSettings, Cardinality, ClientLimits,
    Config, ConfigError, Document, DocumentId, ListenerPortConfig, Persistence, Problem,
    QueueLimit, TlsConfig,
};

/// API groups of the broker's own kinds: ours, and AIO's so its manifests load unchanged.
const BROKER_API_VERSIONS: &[&str] = &[
    "gatehouse.io/v1",
    "mqttbroker.iotoperations.azure.com/v1",
    "mqttbroker.iotoperations.azure.com/v1beta1",
];
/// `Secret` and `ConfigMap` are core Kubernetes kinds (`v1`); our group is accepted too so a
/// hand-written local file need not mix groups.
const CORE_API_VERSIONS: &[&str] = &["v1", "gatehouse.io/v1"];

const MAX_LISTENERS: usize = 3;
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Broker,
    BrokerListener,
    BrokerAuthentication,
    BrokerAuthorization,
    Secret,
    ConfigMap,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Broker,
        Kind::BrokerListener,
        Kind::BrokerAuthentication,
        Kind::BrokerAuthorization,
        Kind::Secret,
        Kind::ConfigMap,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Broker => "Broker",
            Kind::BrokerListener => "BrokerListener",
            Kind::BrokerAuthentication => "BrokerAuthentication",
            Kind::BrokerAuthorization => "BrokerAuthorization",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Secret | Kind::ConfigMap => CORE_API_VERSIONS,
            _ => BROKER_API_VERSIONS,
        }
    }
}

/// Accumulates the documents of one or more texts, then validates them together in
/// [`Parser::finish`], since references may cross files.
#[derive(Default)]
pub(super) struct Parser {
    brokers: Vec<Document<Resource<BrokerSpec>>>,
    listeners: Vec<Document<Resource<BrokerListenerSpec>>>,
    authentications: Vec<AuthenticationResource>,
    authorizations: Vec<AuthorizationResource>,
    secrets: Vec<Document<SecretResource>>,
    config_maps: Vec<Document<ConfigMapResource>>,
    /// Documents whose kind and name are known but whose typed parse failed.
    broken: Vec<DocumentId>,
    problems: Vec<Problem>,
    origins: Vec<String>,
}

impl Parser {
    pub(super) fn add_text(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        self.origins.push(origin.to_owned());
        for (position, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let index = position + 1;
            let value =
                serde_yaml::Value::deserialize(document).map_err(|error| ConfigError::Syntax {
                    origin: origin.to_owned(),
                    index,
                    error,
                })?;
            // A comment-only document, or the empty one after a trailing `---`.
            if value.is_null() {
                continue;
            }
            let mut id = DocumentId {
                origin: origin.to_owned(),
                index,
                kind: String::new(),
                name: None,
            };
            let Some(kind) = self.identify(&value, &mut id) else {
                continue;
            };
            let typed = serde_yaml::Deserializer::from_str(text)
                .nth(position)
                .expect("the first pass read this document from the same text");
            let parsed = match kind {
                Kind::Broker => typed_parse(typed, id, &mut self.brokers),
                Kind::BrokerListener => typed_parse(typed, id, &mut self.listeners),
                Kind::BrokerAuthentication => typed_parse(typed, id, &mut self.authentications),
                Kind::BrokerAuthorization => typed_parse(typed, id, &mut self.authorizations),
                Kind::Secret => typed_parse(typed, id, &mut self.secrets),
                Kind::ConfigMap => typed_parse(typed, id, &mut self.config_maps),
            };
            if let Err((id, error)) = parsed {
                self.problems.push(Problem {
                    document: Some(id.clone()),
                    field: None,
                    reason: error.to_string(),
                });
                self.broken.push(id);
            }
        }
        Ok(())
    }

    /// Reads `kind`, `apiVersion` and `metadata.name` from the untyped document, fills in `id`
    /// and returns the kind if it and its apiVersion are supported.
    fn identify(&mut self, value: &serde_yaml::Value, id: &mut DocumentId) -> Option<Kind> {
        let Some(map) = value.as_mapping() else {
            self.problems.push(Problem {
                document: Some(id.clone()),
                field: None,
                reason: "a document must be a mapping with apiVersion, kind, metadata and spec"
                    .to_owned(),
            });
            return None;
        };
        let text = |key: &str| map.get(key).and_then(serde_yaml::Value::as_str);
        id.kind = text("kind").unwrap_or_default().to_owned();
        id.name = map
            .get("metadata")
            .and_then(|metadata| metadata.get("name"))
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_owned);

        let kinds = Kind::ALL.map(Kind::name).join(", ");
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == id.kind) else {
            let reason = match map.get("kind") {
                None => format!("missing; expected one of {kinds}"),
                Some(_) if id.kind.is_empty() => format!("must be one of {kinds}"),
                Some(_) => format!("unknown kind {:?}; expected one of {kinds}", id.kind),
            };
            self.problems.push(Problem {
                document: Some(id.clone()),
                field: Some("kind".to_owned()),
                reason,
            });
            return None;
        };
        let supported = kind.api_versions();
        let reason = match text("apiVersion") {
            Some(version) if supported.contains(&version) => return Some(kind),
            Some(version) => format!(
                "unsupported apiVersion {version:?} for kind {}; expected one of {}",
                kind.name(),
                supported.join(", ")
            ),
            None => format!("missing; expected one of {}", supported.join(", ")),
        };
        self.problems.push(Problem {
            document: Some(id.clone()),
            field: Some("apiVersion".to_owned()),
            reason,
        });
        // Its kind and name are known, so references to it are not reported as dangling.
        self.broken.push(id.clone());
        None
    }

    /// Applies the cross-document rules and resolves defaults.
    pub(super) fn finish(self) -> Result<Config, ConfigError> {
        let Parser {
            brokers,
            listeners,
            authentications,
            authorizations,
            secrets,
            config_maps,
            broken,
            mut problems,
            origins,
        } = self;
        let mut warnings = Vec::new();

        let mut brokers = brokers.into_iter();
        let broker_document = brokers.next();
        for extra in brokers {
            let first = broker_document.as_ref().map(|d| &d.id);
            problems.push(Problem {
                document: Some(extra.id.clone()),
                field: None,
                reason: format!(
                    "only one Broker is allowed; {} is already defined",
                    first.map(ToString::to_string).unwrap_or_default()
                ),
            });
        }
        let broker = resolve_broker(broker_document, &mut problems);

        let authentications = unique_by_name(authentications, &mut problems);
        let authorizations = unique_by_name(authorizations, &mut problems);
        let secrets = unique_by_name(secrets, &mut problems);
        let config_maps = unique_by_name(config_maps, &mut problems);

        let references = References {
            broker: &broker.name,
            authentications: &authentications,
            authorizations: &authorizations,
            broken: &broken,
        };
        let ports = resolve_listeners(&listeners, &references, &mut problems, &mut warnings);
        let broken_listener = broken
            .iter()
            .any(|id| id.kind == Kind::BrokerListener.name());
        if listeners.is_empty() && !broken_listener {
            problems.push(Problem {
                document: None,
                field: None,
                reason: format!(
                    "no BrokerListener in {}: the broker would accept no connection",
                    origins.join(", ")
                ),
            });
        }
        let listener_specs = unique_by_name(listeners, &mut problems)
            .into_iter()
            .map(|(name, d)| {
                let spec = Document {
                    id: d.id,
                    resource: d.resource.spec,
                };
                (name, spec)
            })
            .collect();

        if !problems.is_empty() {
            return Err(ConfigError::Invalid { problems });
        }
        Ok(Config {
            broker,
            listeners: ports,
            listener_specs,
            authentications,
            authorizations,
            secrets,
            config_maps,
            warnings,
        })
    }
}

/// Parses one document into `T` and appends it to `out`; on failure hands the id back with the
/// error.
fn typed_parse<'de, T: Deserialize<'de>>(
    deserializer: serde_yaml::Deserializer<'de>,
    id: DocumentId,
    out: &mut Vec<Document<T>>,
) -> Result<(), (DocumentId, serde_yaml::Error)> {
    match T::deserialize(deserializer) {
        Ok(resource) => {
            out.push(Document { id, resource });
            Ok(())
        }
        Err(error) => Err((id, error)),
    }
}

trait Named {
    fn name(&self) -> &str;
}

impl<S> Named for Resource<S> {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl Named for SecretResource {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl Named for ConfigMapResource {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// Keys documents by name; a second document of the same kind and name is an error (which of
/// the two the operator meant is anyone's guess).
fn unique_by_name<T: Named>(
    documents: Vec<Document<T>>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Document<T>> {
    let mut by_name: BTreeMap<String, Document<T>> = BTreeMap::new();
    for document in documents {
        let name = document.resource.name().to_owned();
        if let Some(first) = by_name.get(&name) {
            problems.push(Problem {
                document: Some(document.id.clone()),
                field: Some("metadata.name".to_owned()),
                reason: format!("duplicate name; {} is already defined", first.id),
            });
        } else {
            by_name.insert(name, document);
        }
    }
    by_name
}

/// Records problems against one document.
struct Reporter<'a> {
    document: Option<&'a DocumentId>,
    problems: &'a mut Vec<Problem>,
}

impl Reporter<'_> {
    fn report(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            document: self.document.cloned(),
            field: Some(field.into()),
            reason: reason.into(),
        });
    }

    fn report_document(&mut self, reason: impl Into<String>) {
        self.problems.push(Problem {
            document: self.document.cloned(),
            field: None,
            reason: reason.into(),
        });
    }

    /// `Some(value)` if `min <= value <= max`, else a problem and `None`.
    fn within<T: PartialOrd + Display + Copy>(
        &mut self,
        field: &str,
        value: T,
        min: T,
        max: T,
    ) -> Option<T> {
        if value < min || value > max {
            self.report(field, format!("{value} is out of range {min}..={max}"));
            None
        } else {
            Some(value)
        }
    }

    /// For limits whose only bound is "at least `min`" (the type bounds the rest).
    fn at_least<T: PartialOrd + Display + Copy>(
        &mut self,
        field: &str,
        value: T,
        min: T,
    ) -> Option<T> {
        if value < min {
            self.report(
                field,
                format!("{value} is out of range: must be at least {min}"),
            );
            None
        } else {
            Some(value)
        }
    }
}

fn resolve_broker(
    document: Option<Document<Resource<BrokerSpec>>>,
    problems: &mut Vec<Problem>,
) -> BrokerSettings {
    let (id, name, spec) = match document {
        Some(d) => (Some(d.id), d.resource.metadata.name, d.resource.spec),
        None => (None, "default".to_owned(), BrokerSpec::default()),
    };
    let mut r = Reporter {
        document: id.as_ref(),
        problems,
    };

    let memory_profile = spec.memory_profile.unwrap_or_default();
    let mut limits = ClientLimits::for_profile(memory_profile);
    if let Some(clients) = spec.advanced.as_ref().and_then(|a| a.clients.as_ref()) {
        let field = |name: &str| format!("spec.advanced.clients.{name}");
        if let Some(v) = clients.max_session_expiry_seconds {
            let checked = r.at_least(&field("maxSessionExpirySeconds"), v, 1);
            limits.max_session_expiry_secs = checked.unwrap_or(v);
        }
        if let Some(v) = clients.max_message_expiry_seconds {
            let checked = r.at_least(&field("maxMessageExpirySeconds"), v, 1);
            limits.max_message_expiry_secs = checked;
        }
        if let Some(v) = clients.max_packet_size_bytes {
            // AIO accepts 268435456 (256 MiB); MQTT cannot carry more than 268435455.
            if let Some(v) = r.within(&field("maxPacketSizeBytes"), v, 1, 268_435_456) {
                limits.max_packet_size = v.min(ClientLimits::MQTT_MAX_PACKET_SIZE);
            }
        }
        if let Some(v) = clients.max_receive_maximum {
            let checked = r.at_least(&field("maxReceiveMaximum"), v, 1);
            limits.max_receive_maximum = checked.unwrap_or(v);
        }
        if let Some(v) = clients.max_keep_alive_seconds {
            limits.max_keep_alive_secs = v;
        }
        if let Some(v) = clients.max_topic_aliases {
            limits.max_topic_aliases = v;
        }
        if let Some(v) = clients.max_inflight_messages {
            let checked = r.at_least(&field("maxInflightMessages"), v, 1);
            limits.max_inflight = checked.unwrap_or(v);
        }
        match (&clients.subscriber_queue_limit, clients.max_queued_messages) {
            (Some(_), Some(_)) => r.report(
                field("maxQueuedMessages"),
                "set either maxQueuedMessages or subscriberQueueLimit, not both: \
                 subscriberQueueLimit.length is the queue bound when it is set",
            ),
            (Some(queue), None) => {
                let length = r.at_least(&field("subscriberQueueLimit.length"), queue.length, 1);
                if let Some(length) = length {
                    limits.subscriber_queue_limit = Some(QueueLimit {
                        length,
                        strategy: queue.strategy,
                    });
                    // broker-spec §7.4 / scenario 46: strategy None means the queue is not
                    // bounded by length (only by session expiry and the global memory budget);
                    // the length matters only for DropOldest.
                    limits.max_queued_messages = match queue.strategy {
                        super::resources::QueueStrategy::None => usize::MAX,
                        super::resources::QueueStrategy::DropOldest => {
                            usize::try_from(length).unwrap_or(usize::MAX)
                        }
                    };
                }
            }
            (None, Some(v)) => {
                if let Some(v) = r.at_least(&field("maxQueuedMessages"), v, 1) {
                    limits.max_queued_messages = usize::try_from(v).unwrap_or(usize::MAX);
                }
            }
            (None, None) => {}
        }
    }

    let cardinality = spec.cardinality.as_ref().map(|c| {
        let mut check = |field: &str, value: u32, max: u32| {
            r.within(&format!("spec.cardinality.{field}"), value, 1, max)
                .unwrap_or(value)
        };
        Cardinality {
            frontend_replicas: check("frontend.replicas", c.frontend.replicas, 16),
            frontend_workers: check("frontend.workers", c.frontend.workers.unwrap_or(2), 16),
            backend_partitions: check("backendChain.partitions", c.backend_chain.partitions, 16),
            backend_redundancy_factor: check(
                "backendChain.redundancyFactor",
                c.backend_chain.redundancy_factor,
                5,
            ),
            backend_workers: check(
                "backendChain.workers",
                c.backend_chain.workers.unwrap_or(1),
                16,
            ),
        }
    });

    let diagnostics = spec.diagnostics.as_ref();
    let log_level = diagnostics
        .and_then(|d| d.logs.as_ref())
        .and_then(|l| l.level.clone());
    if let Some(level) = &log_level
        && !LOG_LEVELS.contains(&level.as_str())
    {
        r.report(
            "spec.diagnostics.logs.level",
            format!(
                "unknown level {level:?}; expected one of {}",
                LOG_LEVELS.join(", ")
            ),
        );
    }
    let prometheus_port = diagnostics
        .and_then(|d| d.metrics.as_ref())
        .and_then(|m| m.prometheus_port);

    let persistence_spec = spec.persistence.clone().unwrap_or_default();
    let persistence = match persistence_spec.durability.unwrap_or_default() {
        PersistenceDurability::Disabled => Persistence::Disabled,
        PersistenceDurability::Immediate => Persistence::Immediate,
        PersistenceDurability::Periodic => {
            let every = persistence_spec.flush_interval_millis.unwrap_or(100);
            if !(1..=60_000).contains(&every) {
                r.report(
                    "spec.persistence.flushIntervalMillis",
                    format!("{every} is out of range 1..60000"),
                );
            }
            Persistence::Periodic {
                flush_interval_millis: every.clamp(1, 60_000),
            }
        }
    };
    if persistence_spec.flush_interval_millis.is_some()
        && persistence_spec.durability != Some(PersistenceDurability::Periodic)
    {
        r.report(
            "spec.persistence.flushIntervalMillis",
            "only allowed with durability: Periodic",
        );
    }

    let advanced = spec.advanced.as_ref();
    BrokerSettings {
        persistence,
        name,
        document: id.clone(),
        memory_profile,
        limits,
        log_level,
        prometheus_port,
        cardinality,
        encrypt_internal_traffic: advanced.and_then(|a| a.encrypt_internal_traffic)
            != Some(OperationalMode::Disabled),
        high_priority_backpressure: spec
            .high_priority_messages_backpressure_handling
            .unwrap_or_default(),
        spec,
    }
}

/// What listener ports may refer to.
struct References<'a> {
    broker: &'a str,
    authentications: &'a BTreeMap<String, AuthenticationResource>,
    authorizations: &'a BTreeMap<String, AuthorizationResource>,
    broken: &'a [DocumentId],
}

impl References<'_> {
    /// `None` if `name` is defined (or defined but broken, already reported), else the reason.
    fn missing<T>(&self, kind: Kind, defined: &BTreeMap<String, T>, name: &str) -> Option<String> {
        let broken = self
            .broken
            .iter()
            .any(|id| id.kind == kind.name() && id.name.as_deref() == Some(name));
        if defined.contains_key(name) || broken {
            return None;
        }
        let known = if defined.is_empty() {
            "none is defined".to_owned()
        } else {
            let names: Vec<String> = defined.keys().map(|n| format!("{n:?}")).collect();
            format!("defined: {}", names.join(", "))
        };
        Some(format!("{} {name:?} is not defined ({known})", kind.name()))
    }
}

/// Whether a BrokerAuthentication spec (still loose JSON) lists an `X509` method.
fn has_x509_method(spec: &serde_json::Value) -> bool {
    spec.get("authenticationMethods")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|methods| {
            methods
                .iter()
                .any(|m| m.get("method").and_then(serde_json::Value::as_str) == Some("X509"))
        })
}

/// Listener names are Kubernetes Service names (RFC 1123 labels), 3 to 63 characters.
fn is_valid_listener_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

fn resolve_listeners(
    listeners: &[Document<Resource<BrokerListenerSpec>>],
    references: &References<'_>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Vec<ListenerPortConfig> {
    let mut ports = Vec::new();
    // port -> (listener, index), for the "unique across all listeners" rule.
    let mut used_ports: BTreeMap<u16, (&str, usize)> = BTreeMap::new();
    let mut used_service_types = BTreeMap::new();
    let mut used_service_names: BTreeMap<&str, &str> = BTreeMap::new();

    for (number, listener) in listeners.iter().enumerate() {
        let name = listener.resource.metadata.name.as_str();
        let spec = &listener.resource.spec;
        let mut r = Reporter {
            document: Some(&listener.id),
            problems,
        };

        if number >= MAX_LISTENERS {
            r.report_document(format!(
                "too many BrokerListeners: at most {MAX_LISTENERS} are allowed, one per \
                     serviceType; add ports to an existing listener instead"
            ));
        }
        if !is_valid_listener_name(name) {
            r.report(
                "metadata.name",
                format!(
                    "{name:?} is not a valid listener name: it must be 3 to 63 characters of \
                     a-z, 0-9 and '-', and start and end with a letter or digit"
                ),
            );
        }
        if let Some(other) = used_service_types.insert(spec.service_type, name) {
            used_service_types.insert(spec.service_type, other);
            r.report(
                "spec.serviceType",
                format!(
                    "serviceType {} is already used by BrokerListener {other:?}; only one \
                     listener per serviceType is allowed, add ports to that listener instead",
                    spec.service_type
                ),
            );
        }
        let service_name = spec.service_name.as_deref().unwrap_or(name);
        match used_service_names.get(service_name) {
            // Same listener name twice is reported as a duplicate name, not here.
            Some(other) if *other != name => r.report(
                if spec.service_name.is_some() {
                    "spec.serviceName"
                } else {
                    "metadata.name"
                },
                format!(
                    "Service name {service_name:?} is already used by BrokerListener {other:?}"
                ),
            ),
            Some(_) => {}
            None => {
                used_service_names.insert(service_name, name);
            }
        }
        if let Some(broker_ref) = &spec.broker_ref
            && broker_ref != references.broker
        {
            r.report(
                "spec.brokerRef",
                format!(
                    "Broker {broker_ref:?} is not defined (the broker is named {:?})",
                    references.broker
                ),
            );
        }
        if spec.ports.is_empty() {
            r.report("spec.ports", "at least one port is required");
        }

        for (index, port) in spec.ports.iter().enumerate() {
            let field = |name: &str| format!("spec.ports[{index}].{name}");
            if port.port != 0 {
                if let Some((other, other_index)) = used_ports.get(&port.port) {
                    r.report(
                        field("port"),
                        format!(
                            "port {} is already used by BrokerListener {other:?} \
                             spec.ports[{other_index}]",
                            port.port
                        ),
                    );
                } else {
                    used_ports.insert(port.port, (name, index));
                }
            }
            if port.node_port.is_some() && spec.service_type != super::ServiceType::NodePort {
                r.report(
                    field("nodePort"),
                    format!(
                        "only allowed when spec.serviceType is NodePort (it is {})",
                        spec.service_type
                    ),
                );
            }
            let host = match &port.host {
                None => IpAddr::from([0, 0, 0, 0]),
                Some(host) => host.parse().unwrap_or_else(|_| {
                    r.report(
                        field("host"),
                        format!(
                            "{host:?} is not an IP address (for example 0.0.0.0, 127.0.0.1 \
                             or ::)"
                        ),
                    );
                    IpAddr::from([0, 0, 0, 0])
                }),
            };
            let tls = port.tls.as_ref().map(|tls| match tls.mode {
                TlsMode::Automatic => {
                    if tls.manual.is_some() {
                        r.report(field("tls.manual"), "only allowed when tls.mode is Manual");
                    }
                    TlsConfig::Automatic {
                        cert_manager_certificate_spec: tls.cert_manager_certificate_spec.clone(),
                    }
                }
                TlsMode::Manual => {
                    if tls.cert_manager_certificate_spec.is_some() {
                        r.report(
                            field("tls.certManagerCertificateSpec"),
                            "only allowed when tls.mode is Automatic",
                        );
                    }
                    let secret_ref = tls.manual.as_ref().and_then(|m| m.secret_ref.clone());
                    if secret_ref.is_none() {
                        r.report(
                            field("tls.manual.secretRef"),
                            "required when tls.mode is Manual: the name of a kubernetes.io/tls \
                             Secret holding the server certificate chain and key",
                        );
                    }
                    TlsConfig::Manual {
                        secret_ref: secret_ref.unwrap_or_default(),
                    }
                }
            });
            if let Some(reference) = &port.authentication_ref
                && let Some(reason) = references.missing(
                    Kind::BrokerAuthentication,
                    references.authentications,
                    reference,
                )
            {
                r.report(field("authenticationRef"), reason);
            }
            if port.tls.is_none()
                && let Some(reference) = &port.authentication_ref
                && let Some(authentication) = references.authentications.get(reference)
                && has_x509_method(&authentication.resource.spec)
            {
                r.report(
                    field("tls"),
                    format!(
                        "required: authenticationRef {reference:?} has an X509 method, and \
                         client certificates are only presented in a TLS handshake"
                    ),
                );
            }
            if let Some(reference) = &port.authorization_ref
                && let Some(reason) = references.missing(
                    Kind::BrokerAuthorization,
                    references.authorizations,
                    reference,
                )
            {
                r.report(field("authorizationRef"), reason);
            }
            if port.authorization_ref.is_some() && port.authentication_ref.is_none() {
                warnings.push(Problem {
                    document: Some(listener.id.clone()),
                    field: Some(field("authorizationRef")),
                    reason: "has no effect without an authenticationRef on the same port"
                        .to_owned(),
                });
            }
            ports.push(ListenerPortConfig {
                listener: name.to_owned(),
                index,
                host,
                port: port.port,
                node_port: port.node_port,
                protocol: port.protocol,
                tls,
                authentication_ref: port.authentication_ref.clone(),
                authorization_ref: port.authorization_ref.clone(),
                service_type: spec.service_type,
            });
        }
    }
    ports
}
