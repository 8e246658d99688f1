//! The serde shapes of the configuration documents, exactly as an operator writes them.
//!
//! These mirror the Kubernetes custom resources of the AIO MQTT broker
//! (`mqttbroker.iotoperations.azure.com/v1`, see `broker-spec.md` §1.1 and §7.2) plus a few
//! Gatehouse extensions, so that a manifest written for AIO loads here unchanged. Field names are
//! camelCase and every struct denies unknown fields: a typo must fail loudly, not silently fall
//! back to a default.
//!
//! This module only *describes* documents. It does not check ranges, cross-references or
//! defaults that depend on other documents; that happens in `validate`, which turns these
//! shapes into the resolved [`super::Config`]. Parts that later work will implement
//! (cert-manager specs, persistence, traces, ...) are kept as loose [`serde_json::Value`]s so they
//! are accepted and preserved but not interpreted.
//!
//! Numbers use the narrowest unsigned type that still covers the documented range, so serde
//! rejects negative or huge values (with the field path) and `validate` only has to check
//! the remaining bounds such as "at least 1".

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// The envelope shared by every custom resource: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[expect(dead_code, reason = "`status` is accepted only to be ignored")]
pub struct Resource<S> {
    /// Checked against the kind before the typed parse; kept for completeness.
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    /// `kubectl get -o yaml` output carries a status; it is read-only state, so it is ignored.
    #[serde(default)]
    status: Option<IgnoredAny>,
}

/// Kubernetes object metadata. Only `name` matters to the broker.
///
/// The server-populated fields are accepted (and ignored) so that the output of
/// `kubectl get -o yaml` can be fed back in; anything else is a typo and rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "server-populated fields are accepted only to be ignored"
)]
pub struct ObjectMeta {
    pub name: String,
    /// Ignored: one Gatehouse configuration is one broker, whatever namespace it came from.
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    uid: Option<IgnoredAny>,
    #[serde(default)]
    resource_version: Option<IgnoredAny>,
    #[serde(default)]
    generation: Option<IgnoredAny>,
    #[serde(default)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    deletion_grace_period_seconds: Option<IgnoredAny>,
    #[serde(default)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    finalizers: Option<IgnoredAny>,
    #[serde(default)]
    owner_references: Option<IgnoredAny>,
    #[serde(default)]
    self_link: Option<IgnoredAny>,
}

// ------------------------------------------------------------------------------------------------
// BrokerListener (broker-spec.md §1.1)
// ------------------------------------------------------------------------------------------------

/// `BrokerListener.spec`: one Kubernetes Service with one or more ports.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerListenerSpec {
    /// Must name the Broker (`default` when there is no Broker document).
    pub broker_ref: Option<String>,
    /// The Service name in Kubernetes; defaults to the listener's name. Unused locally.
    pub service_name: Option<String>,
    #[serde(default)]
    pub service_type: ServiceType,
    pub ports: Vec<ListenerPortSpec>,
}

/// How the listener is exposed in Kubernetes. Locally it only feeds the
/// "one listener per service type" rule, which we keep so manifests stay portable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIp,
    LoadBalancer,
    NodePort,
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceType::ClusterIp => "ClusterIp",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
        })
    }
}

/// One port of a listener; authentication, authorization, protocol and TLS are all per port.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerPortSpec {
    /// 0 asks the OS for any free port (tests use it); it is exempt from the uniqueness rule.
    pub port: u16,
    /// Only meaningful with `serviceType: NodePort`.
    pub node_port: Option<u16>,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Omitted means authentication is disabled on this port.
    pub authentication_ref: Option<String>,
    /// Omitted means authorization is disabled on this port. Has effect only together with an
    /// `authenticationRef` (broker-spec.md §1.2).
    pub authorization_ref: Option<String>,
    /// Omitted means plaintext.
    pub tls: Option<TlsSpec>,
    /// Gatehouse extension: the IP address to bind, default `0.0.0.0`. In Kubernetes the pod
    /// binds all interfaces and the Service does the rest, so AIO has no such field.
    pub host: Option<String>,
}

/// The protocol spoken on a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum ListenerProtocol {
    #[default]
    Mqtt,
    /// MQTT over WebSockets.
    WebSockets,
}

/// `TlsCertMethod`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    pub mode: TlsMode,
    /// cert-manager `Certificate` fields (issuerRef, duration, san, ...), for `Automatic`.
    /// Kept loose (AIO manifests carry fields a local issuer ignores); the frontend's `tls` module reads
    /// `duration`, `renewBefore`, `san` and `privateKey.algorithm`.
    pub cert_manager_certificate_spec: Option<Value>,
    /// For `Manual`.
    pub manual: Option<ManualTlsSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum TlsMode {
    Automatic,
    Manual,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManualTlsSpec {
    /// Optional here only so that a missing value gets the same "required when ..." message as
    /// every other cross-field rule, from `validate`.
    pub secret_ref: Option<String>,
}

// ------------------------------------------------------------------------------------------------
// Broker (broker-spec.md §7.2)
// ------------------------------------------------------------------------------------------------

/// `Broker.spec`. Everything is optional; an absent Broker document means all defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerSpec {
    pub memory_profile: Option<MemoryProfile>,
    /// AIO's scale-out shape. Gatehouse validates and keeps it for the cluster work; a single
    /// process ignores it.
    pub cardinality: Option<CardinalitySpec>,
    pub advanced: Option<AdvancedSpec>,
    pub diagnostics: Option<DiagnosticsSpec>,
    pub disk_backed_message_buffer: Option<Value>,
    pub generate_resource_limits: Option<Value>,
    pub high_priority_messages_backpressure_handling: Option<BackpressureHandling>,
    pub persistence: Option<PersistenceSpec>,
}

/// `Broker.spec.persistence`. The AIO fields (maxSize, per-kind modes, encryption, volume
/// claims) are accepted and kept; Gatehouse's own `durability` and `flushIntervalMillis` say
/// how the embedded store commits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistenceSpec {
    pub max_size: Option<String>,
    pub persistent_volume_claim_spec: Option<Value>,
    pub retain: Option<Value>,
    pub state_store: Option<Value>,
    pub subscriber_queue: Option<Value>,
    pub encryption: Option<Value>,
    /// Gatehouse extension: `Immediate` (default), `Periodic` or `Disabled`.
    pub durability: Option<PersistenceDurability>,
    /// Gatehouse extension: with `durability: Periodic`, the longest time between flushes.
    pub flush_interval_millis: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum PersistenceDurability {
    /// A QoS 1/2 PUBLISH is acknowledged after the store flushed it to disk (fsync).
    #[default]
    Immediate,
    /// Acknowledged at once; flushed at least every `flushIntervalMillis`.
    Periodic,
    /// Nothing is written: sessions and retained messages live in memory only.
    Disabled,
}

/// Memory profiles bound PUBLISH traffic only (broker-spec.md §7.3); sessions and subscriptions
/// are not counted against them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum MemoryProfile {
    Tiny,
    Low,
    #[default]
    Medium,
    High,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CardinalitySpec {
    pub frontend: FrontendCardinalitySpec,
    pub backend_chain: BackendChainSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendCardinalitySpec {
    /// 1..=16.
    pub replicas: u32,
    /// 1..=16, default 2.
    pub workers: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendChainSpec {
    /// 1..=16.
    pub partitions: u32,
    /// 1..=5.
    pub redundancy_factor: u32,
    /// 1..=16, default 1.
    pub workers: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdvancedSpec {
    pub clients: Option<ClientsSpec>,
    pub encrypt_internal_traffic: Option<OperationalMode>,
    /// Durations and key algorithm of the internal certificates; loose until clustering.
    pub internal_certs: Option<Value>,
}

/// `Enabled` / `Disabled`, the AIO spelling of a switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum OperationalMode {
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum BackpressureHandling {
    #[default]
    Accept,
    Reject,
}

/// `Broker.spec.advanced.clients`: limits the broker imposes on, and advertises to, clients.
/// See [`super::ClientLimits`] for what each one means at run time and its default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientsSpec {
    pub max_session_expiry_seconds: Option<u32>,
    pub max_message_expiry_seconds: Option<u32>,
    pub max_packet_size_bytes: Option<u32>,
    pub max_receive_maximum: Option<u16>,
    pub max_keep_alive_seconds: Option<u16>,
    pub subscriber_queue_limit: Option<SubscriberQueueLimitSpec>,
    /// Gatehouse extension.
    pub max_topic_aliases: Option<u16>,
    /// Gatehouse extension.
    pub max_inflight_messages: Option<u16>,
    /// Gatehouse extension.
    pub max_queued_messages: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriberQueueLimitSpec {
    pub length: u64,
    #[serde(default)]
    pub strategy: QueueStrategy,
}

/// What happens when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum QueueStrategy {
    /// No length bound at all (broker-spec §7.4): the queue grows until the session expires,
    /// held back only by the global memory budget.
    #[default]
    None,
    /// Drop the oldest queued message to make room.
    DropOldest,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiagnosticsSpec {
    pub metrics: Option<MetricsSpec>,
    pub logs: Option<LogsSpec>,
    pub self_check: Option<Value>,
    pub traces: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSpec {
    pub prometheus_port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogsSpec {
    /// One of `trace`, `debug`, `info`, `warn`, `error`.
    pub level: Option<String>,
}

// ------------------------------------------------------------------------------------------------
// Core Kubernetes kinds used for TLS material and CA bundles
// ------------------------------------------------------------------------------------------------

/// A Kubernetes `Secret` (`apiVersion: v1`). It has no `spec`, hence its own envelope.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretResource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    /// e.g. `kubernetes.io/tls`.
    #[serde(rename = "type")]
    pub secret_type: Option<String>,
    /// Base64-encoded values, as in Kubernetes; the frontend's `tls` module decodes them.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Plain-text values; Kubernetes merges them over `data` on write.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
    pub immutable: Option<bool>,
}

/// Secret values must never reach a log, so `Debug` shows the keys only.
impl fmt::Debug for SecretResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretResource")
            .field("metadata", &self.metadata)
            .field("secret_type", &self.secret_type)
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .field("string_data", &self.string_data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A Kubernetes `ConfigMap` (`apiVersion: v1`), e.g. a CA trust bundle.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapResource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Base64-encoded values.
    #[serde(default)]
    pub binary_data: BTreeMap<String, String>,
    pub immutable: Option<bool>,
}
