//! Tests of configuration loading: the embedded default, files and folders, AIO manifests, and
//! one failing case per validation rule, each asserting the field path and the reason.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

const BROKER_API: &str = "apiVersion: gatehouse.io/v1";

fn parse(text: &str) -> Config {
    Config::from_yaml_str(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// The error message of a configuration that must be rejected.
fn reject(text: &str) -> String {
    match Config::from_yaml_str(text, "test.yaml") {
        Ok(config) => panic!("accepted an invalid configuration: {config:?}"),
        Err(error) => error.to_string(),
    }
}

fn assert_contains(message: &str, expected: &[&str]) {
    for part in expected {
        assert!(
            message.contains(part),
            "{message:?} does not contain {part:?}"
        );
    }
}

/// A listener document with the given YAML for its `spec` (indented by 2).
fn listener(name: &str, spec: &str) -> String {
    format!("---\n{BROKER_API}\nkind: BrokerListener\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

fn plain_listener(name: &str, service_type: &str, port: u16) -> String {
    listener(
        name,
        &format!("  serviceType: {service_type}\n  ports:\n    - port: {port}\n"),
    )
}

/// A single-listener configuration plus a Broker with the given `advanced.clients` body.
fn with_clients(clients: &str) -> String {
    format!(
        "{BROKER_API}\nkind: Broker\nmetadata:\n  name: default\nspec:\n  advanced:\n    \
         clients:\n{clients}{}",
        plain_listener("default", "ClusterIp", 1883)
    )
}

// ---- the embedded default -----------------------------------------------------------------

#[test]
fn embedded_default_listens_on_0_0_0_0_1883_and_8883_with_tls() {
    let config = Config::embedded_default();
    assert_eq!(config.listeners.len(), 2);
    let tls = &config.listeners[1];
    assert_eq!(tls.socket_addr(), "0.0.0.0:8883".parse().unwrap());
    assert_eq!((tls.listener.as_str(), tls.index), ("default", 1));
    assert_eq!(tls.protocol, ListenerProtocol::Mqtt);
    assert!(matches!(
        tls.tls,
        Some(TlsConfig::Automatic {
            cert_manager_certificate_spec: None
        })
    ));
    assert!(tls.authentication_ref.is_none());
    let port = &config.listeners[0];
    assert_eq!(port.socket_addr(), "0.0.0.0:1883".parse().unwrap());
    assert_eq!(port.listener, "default");
    assert_eq!(port.index, 0);
    assert_eq!(port.protocol, ListenerProtocol::Mqtt);
    assert_eq!(port.service_type, ServiceType::ClusterIp);
    assert!(port.tls.is_none());
    assert!(port.authentication_ref.is_none());
    assert!(port.authorization_ref.is_none());
    assert_eq!(config.broker.name, "default");
    assert_eq!(config.broker.memory_profile, MemoryProfile::Medium);
    assert!(config.warnings.is_empty());
    assert!(config.listener_specs.contains_key("default"));
}

/// The file says "uncommented values are the defaults": keep it honest.
#[test]
fn embedded_default_values_are_the_defaults() {
    let config = Config::embedded_default();
    assert_eq!(
        config.broker.limits,
        ClientLimits::for_profile(MemoryProfile::Medium)
    );
    assert_eq!(config.broker.limits, ClientLimits::default());
    assert!(config.broker.encrypt_internal_traffic);
    assert_eq!(config.broker.log_level, None);
    // Not a default but a choice of the embedded file: it serves the admin endpoint.
    assert_eq!(config.broker.prometheus_port, Some(9600));
    assert!(config.broker.cardinality.is_none());
}

#[test]
fn default_config_yaml_is_the_embedded_file() {
    assert!(default_config_yaml().starts_with("# Gatehouse"));
    assert!(default_config_yaml().contains("kind: BrokerListener"));
}

#[test]
fn a_missing_broker_document_means_all_defaults() {
    let config = parse(&plain_listener("default", "ClusterIp", 1883));
    assert_eq!(config.broker.name, "default");
    assert!(config.broker.document.is_none());
    assert_eq!(config.broker.limits, ClientLimits::default());
}

// ---- files and folders --------------------------------------------------------------------

#[test]
fn a_folder_loads_every_yaml_file_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "10-broker.yaml",
        &format!(
            "{BROKER_API}\nkind: Broker\nmetadata:\n  name: default\nspec:\n  memoryProfile: Tiny\n"
        ),
    );
    // References a BrokerAuthentication from a later file: references cross files.
    write(
        "20-listeners.yml",
        &format!(
            "{}{}",
            listener(
                "internal",
                "  ports:\n    - port: 0\n      host: 127.0.0.1\n      authenticationRef: clients\n"
            ),
            plain_listener("public", "LoadBalancer", 0)
        ),
    );
    write(
        "30-auth.yaml",
        &format!(
            "{BROKER_API}\nkind: BrokerAuthentication\nmetadata:\n  name: clients\nspec:\n  \
             authenticationMethods: []\n"
        ),
    );
    write("README.md", "not yaml: [");
    write(".hidden.yaml", "not yaml: [");

    let config = Config::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.broker.memory_profile, MemoryProfile::Tiny);
    let names: Vec<_> = config
        .listeners
        .iter()
        .map(|l| l.listener.as_str())
        .collect();
    assert_eq!(names, ["internal", "public"]);
    assert_eq!(config.listeners[0].host, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(
        config.listeners[0].authentication_ref.as_deref(),
        Some("clients")
    );
    assert!(config.authentications.contains_key("clients"));
    assert!(
        config.listener_specs["public"]
            .id
            .origin
            .ends_with("20-listeners.yml")
    );
}

#[test]
fn errors_in_a_folder_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("listeners.yaml");
    std::fs::write(&file, listener("default", "  prots: []\n")).unwrap();
    let message = Config::load(dir.path()).unwrap_err().to_string();
    assert_contains(
        &message,
        &[&file.display().to_string(), "unknown field `prots`"],
    );
}

#[test]
fn a_single_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.yaml");
    std::fs::write(&file, default_config_yaml()).unwrap();
    let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listeners[0].port, 1883);
}

#[test]
fn an_empty_folder_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let error = Config::load(dir.path()).unwrap_err();
    assert!(matches!(error, ConfigError::EmptyFolder { .. }), "{error}");
}

#[test]
fn a_missing_path_is_rejected() {
    let error = Config::load(Path::new("/nonexistent/gatehouse.yaml")).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    assert_contains(&error.to_string(), &["/nonexistent/gatehouse.yaml"]);
}

#[test]
fn malformed_yaml_is_a_syntax_error_naming_the_document() {
    let text = format!(
        "{}---\nkind: [\n",
        plain_listener("default", "ClusterIp", 1883)
    );
    let error = Config::from_yaml_str(&text, "test.yaml").unwrap_err();
    assert!(
        matches!(error, ConfigError::Syntax { index: 2, .. }),
        "{error}"
    );
    assert_contains(
        &error.to_string(),
        &["test.yaml (document 2)", "invalid YAML"],
    );
}

#[test]
fn comment_only_and_trailing_empty_documents_are_skipped() {
    let text = format!(
        "# just a comment\n{}---\n",
        plain_listener("default", "ClusterIp", 1883)
    );
    assert_eq!(parse(&text).listeners.len(), 1);
}

// ---- AIO manifests ------------------------------------------------------------------------

const AIO_MANIFEST: &str = r#"
apiVersion: mqttbroker.iotoperations.azure.com/v1
kind: Broker
metadata:
  name: default
  namespace: azure-iot-operations
spec:
  memoryProfile: Low
  cardinality:
    backendChain:
      partitions: 2
      redundancyFactor: 2
      workers: 1
    frontend:
      replicas: 2
      workers: 2
  advanced:
    encryptInternalTraffic: Enabled
    clients:
      maxSessionExpirySeconds: 3600
      maxMessageExpirySeconds: 600
      maxPacketSizeBytes: 1048576
      maxReceiveMaximum: 100
      maxKeepAliveSeconds: 120
      subscriberQueueLimit:
        length: 500
        strategy: DropOldest
  diagnostics:
    logs:
      level: debug
    metrics:
      prometheusPort: 9600
    selfCheck:
      mode: Enabled
      intervalSeconds: 30
      timeoutSeconds: 15
    traces:
      mode: Enabled
      cacheSizeMegabytes: 16
      selfTracing:
        mode: Enabled
        intervalSeconds: 30
      spanChannelCapacity: 1000
  generateResourceLimits:
    cpu: Disabled
---
apiVersion: mqttbroker.iotoperations.azure.com/v1
kind: BrokerListener
metadata:
  name: loadbalancer-listener
  namespace: azure-iot-operations
  uid: 7a3e9b0c-0000-4000-8000-000000000000
  resourceVersion: "12345"
  generation: 1
  creationTimestamp: "2024-11-20T10:00:00Z"
spec:
  brokerRef: default
  serviceType: LoadBalancer
  serviceName: aio-broker-loadbalancer
  ports:
  - port: 1883
    protocol: Mqtt
  - port: 8883
    authenticationRef: default
    authorizationRef: my-authz-policies
    protocol: Mqtt
    tls:
      mode: Automatic
      certManagerCertificateSpec:
        issuerRef:
          name: azure-iot-operations-aio-certificate-issuer
          kind: ClusterIssuer
          group: cert-manager.io
        privateKey:
          algorithm: Ec256
          rotationPolicy: Always
        san:
          dns:
          - iotmq.example.com
          ip:
          - 192.168.1.10
status:
  provisioningState: Succeeded
---
apiVersion: mqttbroker.iotoperations.azure.com/v1
kind: BrokerListener
metadata:
  name: nodeport-listener
spec:
  serviceType: NodePort
  ports:
  - port: 1884
    nodePort: 31884
    protocol: WebSockets
    authenticationRef: x509-auth
    tls:
      mode: Manual
      manual:
        secretRef: server-cert-secret
---
apiVersion: mqttbroker.iotoperations.azure.com/v1
kind: BrokerAuthentication
metadata:
  name: default
  namespace: azure-iot-operations
spec:
  authenticationMethods:
    - method: ServiceAccountToken
      serviceAccountTokenSettings:
        audiences:
          - aio-internal
---
apiVersion: mqttbroker.iotoperations.azure.com/v1beta1
kind: BrokerAuthentication
metadata:
  name: x509-auth
spec:
  authenticationMethods:
    - method: X509
      x509Settings:
        trustedClientCaCert: client-ca
        additionalValidation: AzureDeviceRegistry
        authorizationAttributes:
          smart-fan:
            attributes:
              building: "17"
            subject: CN = smart-fan
---
apiVersion: mqttbroker.iotoperations.azure.com/v1
kind: BrokerAuthorization
metadata:
  name: my-authz-policies
spec:
  authorizationPolicies:
    cache: Enabled
    rules:
      - principals:
          clientIds:
            - "temperature-sensor"
          attributes:
            - floor: "floor1"
        brokerResources:
          - method: Connect
          - method: Publish
            topics:
              - "/telemetry/{principal.clientId}"
        stateStoreResources:
          - method: Read
            keyType: Pattern
            keys:
              - "myreadkey"
---
apiVersion: v1
kind: Secret
metadata:
  name: server-cert-secret
type: kubernetes.io/tls
data:
  tls.crt: LS0tLS1CRUdJTi0tLS0t
  tls.key: c2VjcmV0LWtleS1ieXRlcw==
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: client-ca
data:
  client_ca.pem: |
    -----BEGIN CERTIFICATE-----
    -----END CERTIFICATE-----
"#;

#[test]
fn an_aio_manifest_loads_unchanged() {
    let config = Config::from_yaml_str(AIO_MANIFEST, "aio.yaml").unwrap_or_else(|e| panic!("{e}"));

    let broker = &config.broker;
    assert_eq!(broker.memory_profile, MemoryProfile::Low);
    assert_eq!(broker.log_level.as_deref(), Some("debug"));
    assert_eq!(broker.prometheus_port, Some(9600));
    assert_eq!(
        broker.cardinality,
        Some(Cardinality {
            frontend_replicas: 2,
            frontend_workers: 2,
            backend_partitions: 2,
            backend_redundancy_factor: 2,
            backend_workers: 1,
        })
    );
    let limits = &broker.limits;
    assert_eq!(limits.max_session_expiry_secs, 3600);
    assert_eq!(limits.max_message_expiry_secs, Some(600));
    assert_eq!(limits.max_packet_size, 1_048_576);
    assert_eq!(limits.max_receive_maximum, 100);
    assert_eq!(limits.max_keep_alive_secs, 120);
    assert_eq!(
        limits.subscriber_queue_limit,
        Some(QueueLimit {
            length: 500,
            strategy: QueueStrategy::DropOldest
        })
    );
    assert_eq!(limits.max_queued_messages, 500);
    assert_eq!(limits.memory_budget_bytes, 64 * 1024 * 1024);

    let ports: Vec<_> = config
        .listeners
        .iter()
        .map(|l| (l.listener.as_str(), l.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("loadbalancer-listener", 1883),
            ("loadbalancer-listener", 8883),
            ("nodeport-listener", 1884)
        ]
    );
    let tls_port = &config.listeners[1];
    assert_eq!(tls_port.service_type, ServiceType::LoadBalancer);
    assert_eq!(tls_port.authentication_ref.as_deref(), Some("default"));
    assert_eq!(
        tls_port.authorization_ref.as_deref(),
        Some("my-authz-policies")
    );
    match &tls_port.tls {
        Some(TlsConfig::Automatic {
            cert_manager_certificate_spec: Some(spec),
        }) => assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer"),
        other => panic!("unexpected TLS settings {other:?}"),
    }
    let ws_port = &config.listeners[2];
    assert_eq!(ws_port.protocol, ListenerProtocol::WebSockets);
    assert_eq!(ws_port.node_port, Some(31884));
    assert!(
        matches!(&ws_port.tls, Some(TlsConfig::Manual { secret_ref }) if secret_ref == "server-cert-secret")
    );

    let sat = &config.authentications["default"].resource.spec;
    assert_eq!(
        sat["authenticationMethods"][0]["method"],
        "ServiceAccountToken"
    );
    assert_eq!(
        sat["authenticationMethods"][0]["serviceAccountTokenSettings"]["audiences"][0],
        "aio-internal"
    );
    assert!(config.authentications.contains_key("x509-auth"));
    assert_eq!(
        config.authorizations["my-authz-policies"].resource.spec["authorizationPolicies"]["rules"]
            [0]["brokerResources"][1]["topics"][0],
        "/telemetry/{principal.clientId}"
    );
    let secret = &config.secrets["server-cert-secret"].resource;
    assert_eq!(secret.secret_type.as_deref(), Some("kubernetes.io/tls"));
    assert!(secret.data.contains_key("tls.key"));
    assert!(config.config_maps["client-ca"].resource.data["client_ca.pem"].contains("BEGIN"));
    assert_eq!(
        config.listener_specs["loadbalancer-listener"]
            .resource
            .service_name
            .as_deref(),
        Some("aio-broker-loadbalancer")
    );
}

#[test]
fn secret_values_stay_out_of_debug_output() {
    let config = Config::from_yaml_str(AIO_MANIFEST, "aio.yaml").unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("c2VjcmV0LWtleS1ieXRlcw=="), "{debug}");
    assert!(debug.contains("tls.key"));
}

// ---- document-level rules -----------------------------------------------------------------

#[test]
fn an_unknown_field_is_rejected_with_its_name_and_path() {
    let message = reject(&listener("public", "  prots:\n    - port: 1883\n"));
    assert_contains(
        &message,
        &[
            "test.yaml (document 1)",
            "BrokerListener \"public\"",
            "spec: unknown field `prots`",
        ],
    );
}

#[test]
fn an_unknown_nested_field_is_rejected_with_its_path() {
    let message = reject(&listener(
        "public",
        "  ports:\n    - port: 1883\n      hots: x\n",
    ));
    assert_contains(&message, &["spec.ports[0]: unknown field `hots`"]);
    let message = reject(&with_clients("      maxPacketSize: 10\n"));
    assert_contains(
        &message,
        &["spec.advanced.clients: unknown field `maxPacketSize`"],
    );
}

#[test]
fn a_value_of_the_wrong_type_names_the_field() {
    let message = reject(&listener("public", "  ports:\n    - port: 70000\n"));
    assert_contains(&message, &["spec.ports[0].port", "70000"]);
    let message = reject(&listener(
        "public",
        "  serviceType: Headless\n  ports:\n    - port: 1\n",
    ));
    assert_contains(
        &message,
        &["spec.serviceType", "unknown variant `Headless`"],
    );
}

#[test]
fn an_unknown_kind_is_rejected() {
    let message = reject(&format!(
        "{BROKER_API}\nkind: Gateway\nmetadata:\n  name: x\nspec: {{}}\n"
    ));
    assert_contains(
        &message,
        &["kind: unknown kind \"Gateway\"", "BrokerListener"],
    );
    let message = reject(&format!("{BROKER_API}\nmetadata:\n  name: x\n"));
    assert_contains(&message, &["kind: missing"]);
}

#[test]
fn an_unsupported_api_version_is_rejected() {
    let text = plain_listener("default", "ClusterIp", 1883)
        .replace(BROKER_API, "apiVersion: mq.iotoperations.azure.com/v1beta1");
    let message = reject(&text);
    assert_contains(
        &message,
        &[
            "apiVersion: unsupported apiVersion \"mq.iotoperations.azure.com/v1beta1\"",
            "gatehouse.io/v1",
        ],
    );
    // Broker kinds are not core Kubernetes kinds.
    let text = plain_listener("default", "ClusterIp", 1883).replace(BROKER_API, "apiVersion: v1");
    assert_contains(
        &reject(&text),
        &["apiVersion: unsupported apiVersion \"v1\""],
    );
}

#[test]
fn a_document_that_is_not_a_mapping_is_rejected() {
    let message = reject("- a\n- b\n");
    assert_contains(&message, &["test.yaml (document 1)", "must be a mapping"]);
}

#[test]
fn a_configuration_without_listeners_is_rejected() {
    let message = reject(&format!(
        "{BROKER_API}\nkind: Broker\nmetadata:\n  name: default\nspec: {{}}\n"
    ));
    assert_contains(&message, &["no BrokerListener"]);
}

#[test]
fn a_second_broker_is_rejected() {
    let broker = |name: &str| {
        format!("---\n{BROKER_API}\nkind: Broker\nmetadata:\n  name: {name}\nspec: {{}}\n")
    };
    let text = format!(
        "{}{}{}",
        broker("default"),
        broker("other"),
        plain_listener("default", "ClusterIp", 1)
    );
    assert_contains(
        &reject(&text),
        &[
            "Broker \"other\": only one Broker is allowed",
            "Broker \"default\" is already defined",
        ],
    );
}

#[test]
fn a_duplicate_name_is_rejected() {
    let text = format!(
        "{}{}",
        plain_listener("public", "ClusterIp", 1),
        plain_listener("public", "LoadBalancer", 2)
    );
    assert_contains(
        &reject(&text),
        &[
            "(document 2): BrokerListener \"public\": metadata.name: duplicate name",
            "(document 1)",
        ],
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = format!(
        "{}{}",
        listener("x", "  ports:\n    - port: 1\n      host: nowhere\n"),
        plain_listener("second", "ClusterIp", 1)
    );
    let error = Config::from_yaml_str(&text, "test.yaml").unwrap_err();
    assert!(error.problems().len() >= 3, "{error}");
    assert_contains(
        &error.to_string(),
        &[
            "problems",
            "metadata.name",
            "spec.ports[0].host",
            "spec.serviceType",
            "spec.ports[0].port",
        ],
    );
}

// ---- BrokerListener rules -----------------------------------------------------------------

#[test]
fn a_port_used_by_another_listener_is_rejected() {
    let text = format!(
        "{}{}",
        listener("default", "  ports:\n    - port: 8883\n"),
        listener(
            "public",
            "  serviceType: LoadBalancer\n  ports:\n    - port: 1883\n    - port: 8883\n"
        )
    );
    assert_contains(
        &reject(&text),
        &[
            "BrokerListener \"public\": spec.ports[1].port: port 8883 is already used by \
           BrokerListener \"default\" spec.ports[0]",
        ],
    );
}

#[test]
fn a_port_used_twice_in_one_listener_is_rejected() {
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 1883\n    - port: 1883\n",
    ));
    assert_contains(
        &message,
        &[
            "spec.ports[1].port: port 1883 is already used by BrokerListener \"default\" spec.ports[0]",
        ],
    );
}

#[test]
fn several_ephemeral_ports_are_allowed() {
    let text = format!(
        "{}{}",
        listener("default", "  ports:\n    - port: 0\n    - port: 0\n"),
        plain_listener("public", "LoadBalancer", 0)
    );
    let config = parse(&text);
    assert!(config.listeners.iter().all(|l| l.port == 0));
    assert_eq!(config.listeners.len(), 3);
}

#[test]
fn a_fourth_listener_is_rejected() {
    let text = format!(
        "{}{}{}{}",
        plain_listener("one", "ClusterIp", 1),
        plain_listener("two", "LoadBalancer", 2),
        plain_listener("three", "NodePort", 3),
        plain_listener("four", "ClusterIp", 4)
    );
    assert_contains(
        &reject(&text),
        &["BrokerListener \"four\": too many BrokerListeners: at most 3 are allowed"],
    );
}

#[test]
fn two_listeners_with_the_same_service_type_are_rejected() {
    let text = format!(
        "{}{}",
        plain_listener("one", "LoadBalancer", 1),
        plain_listener("two", "LoadBalancer", 2)
    );
    assert_contains(
        &reject(&text),
        &[
            "BrokerListener \"two\": spec.serviceType: serviceType LoadBalancer is already used by \
           BrokerListener \"one\"",
        ],
    );
    // The default service type counts too.
    let text = format!(
        "{}{}",
        listener("one", "  ports:\n    - port: 1\n"),
        plain_listener("two", "ClusterIp", 2)
    );
    assert_contains(
        &reject(&text),
        &["spec.serviceType: serviceType ClusterIp is already used"],
    );
}

#[test]
fn a_duplicate_service_name_is_rejected() {
    let text = format!(
        "{}{}",
        plain_listener("one", "ClusterIp", 1),
        listener(
            "two",
            "  serviceName: one\n  serviceType: NodePort\n  ports:\n    - port: 2\n"
        )
    );
    assert_contains(
        &reject(&text),
        &["spec.serviceName: Service name \"one\" is already used"],
    );
}

#[test]
fn invalid_listener_names_are_rejected() {
    let long = "a".repeat(64);
    for name in [
        "ab",
        "Public",
        "-public",
        "public-",
        "pub_lic",
        long.as_str(),
    ] {
        let message = reject(&plain_listener(name, "ClusterIp", 1883));
        assert_contains(&message, &["metadata.name", "is not a valid listener name"]);
    }
    for name in ["abc", "a-1", "0x0", "a".repeat(63).as_str()] {
        parse(&plain_listener(name, "ClusterIp", 1883));
    }
}

#[test]
fn a_listener_without_ports_is_rejected() {
    let message = reject(&listener("default", "  ports: []\n"));
    assert_contains(&message, &["spec.ports: at least one port is required"]);
    let message = reject(&listener("default", "  serviceType: NodePort\n"));
    assert_contains(&message, &["missing field `ports`"]);
}

#[test]
fn node_port_requires_a_node_port_listener() {
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 1883\n      nodePort: 31883\n",
    ));
    assert_contains(
        &message,
        &[
            "spec.ports[0].nodePort: only allowed when spec.serviceType is NodePort (it is ClusterIp)",
        ],
    );
    let text = listener(
        "default",
        "  serviceType: NodePort\n  ports:\n    - port: 1883\n      nodePort: 31883\n",
    );
    assert_eq!(parse(&text).listeners[0].node_port, Some(31883));
}

#[test]
fn the_host_must_be_an_ip_address() {
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 1883\n      host: localhost\n",
    ));
    assert_contains(
        &message,
        &["spec.ports[0].host: \"localhost\" is not an IP address"],
    );
    let text = listener(
        "default",
        "  ports:\n    - port: 1883\n      host: \"::1\"\n",
    );
    assert_eq!(
        parse(&text).listeners[0].socket_addr(),
        "[::1]:1883".parse().unwrap()
    );
}

#[test]
fn manual_tls_requires_a_secret_ref() {
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 8883\n      tls:\n        mode: Manual\n",
    ));
    assert_contains(
        &message,
        &["spec.ports[0].tls.manual.secretRef: required when tls.mode is Manual"],
    );
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 8883\n      tls:\n        mode: Manual\n        manual: {}\n",
    ));
    assert_contains(&message, &["spec.ports[0].tls.manual.secretRef: required"]);
}

#[test]
fn tls_settings_must_match_the_mode() {
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 8883\n      tls:\n        mode: Automatic\n        manual:\n          secretRef: s\n",
    ));
    assert_contains(
        &message,
        &["spec.ports[0].tls.manual: only allowed when tls.mode is Manual"],
    );
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 8883\n      tls:\n        mode: Manual\n        manual:\n          \
         secretRef: s\n        certManagerCertificateSpec: {}\n",
    ));
    assert_contains(
        &message,
        &["spec.ports[0].tls.certManagerCertificateSpec: only allowed when tls.mode is Automatic"],
    );
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 8883\n      tls: {}\n",
    ));
    assert_contains(&message, &["spec.ports[0].tls: missing field `mode`"]);
}

#[test]
fn a_dangling_authentication_ref_is_rejected() {
    let message = reject(&listener(
        "default",
        "  ports:\n    - port: 1883\n    - port: 8883\n      authenticationRef: missing\n",
    ));
    assert_contains(
        &message,
        &[
            "spec.ports[1].authenticationRef: BrokerAuthentication \"missing\" is not defined (none is defined)",
        ],
    );
}

#[test]
fn x509_authentication_requires_tls_on_the_port() {
    let authentication = format!(
        "---\n{BROKER_API}\nkind: BrokerAuthentication\nmetadata:\n  name: x509-auth\nspec:\n  \
         authenticationMethods:\n    - method: X509\n      x509Settings:\n        \
         trustedClientCaCert: fabrikam-ca\n"
    );
    let message = reject(
        &(listener(
            "default",
            "  ports:\n    - port: 1883\n      authenticationRef: x509-auth\n",
        ) + &authentication),
    );
    assert_contains(
        &message,
        &["spec.ports[0].tls: required: authenticationRef \"x509-auth\" has an X509 method"],
    );
    parse(
        &(listener(
            "default",
            "  ports:\n    - port: 8883\n      authenticationRef: x509-auth\n      \
             tls: {mode: Automatic}\n",
        ) + &authentication),
    );
}

#[test]
fn a_dangling_authorization_ref_is_rejected() {
    let text = format!(
        "{BROKER_API}\nkind: BrokerAuthorization\nmetadata:\n  name: real\nspec: {{}}\n{}",
        listener(
            "default",
            "  ports:\n    - port: 1883\n      authorizationRef: missing\n"
        )
    );
    assert_contains(
        &reject(&text),
        &[
            "spec.ports[0].authorizationRef: BrokerAuthorization \"missing\" is not defined (defined: \"real\")",
        ],
    );
}

#[test]
fn a_reference_to_a_broken_document_is_not_reported_twice() {
    let text = format!(
        "{BROKER_API}\nkind: BrokerAuthentication\nmetadata:\n  name: clients\n  nmae: typo\nspec: {{}}\n{}",
        listener(
            "default",
            "  ports:\n    - port: 1883\n      authenticationRef: clients\n"
        )
    );
    let error = Config::from_yaml_str(&text, "test.yaml").unwrap_err();
    assert_eq!(error.problems().len(), 1, "{error}");
    assert_contains(&error.to_string(), &["metadata: unknown field `nmae`"]);
}

#[test]
fn authorization_without_authentication_is_a_warning() {
    let text = format!(
        "{BROKER_API}\nkind: BrokerAuthorization\nmetadata:\n  name: rules\nspec: {{}}\n{}",
        listener(
            "default",
            "  ports:\n    - port: 1883\n      authorizationRef: rules\n"
        )
    );
    let config = parse(&text);
    assert_eq!(config.warnings.len(), 1);
    assert_contains(
        &config.warnings[0].to_string(),
        &["spec.ports[0].authorizationRef: has no effect without an authenticationRef"],
    );
}

#[test]
fn broker_ref_must_name_the_broker() {
    let message = reject(&listener(
        "default",
        "  brokerRef: other\n  ports:\n    - port: 1883\n",
    ));
    assert_contains(
        &message,
        &["spec.brokerRef: Broker \"other\" is not defined (the broker is named \"default\")"],
    );
}

// ---- Broker rules -------------------------------------------------------------------------

#[test]
fn an_out_of_range_max_packet_size_is_rejected() {
    for value in ["0", "268435457"] {
        let message = reject(&with_clients(&format!(
            "      maxPacketSizeBytes: {value}\n"
        )));
        assert_contains(
            &message,
            &[&format!(
                "Broker \"default\": spec.advanced.clients.maxPacketSizeBytes: {value} is out of range 1..=268435456"
            )],
        );
    }
}

#[test]
fn client_limits_below_their_minimum_are_rejected() {
    for field in [
        "maxSessionExpirySeconds",
        "maxMessageExpirySeconds",
        "maxReceiveMaximum",
        "maxInflightMessages",
        "maxQueuedMessages",
    ] {
        let message = reject(&with_clients(&format!("      {field}: 0\n")));
        assert_contains(
            &message,
            &[&format!(
                "spec.advanced.clients.{field}: 0 is out of range: must be at least 1"
            )],
        );
    }
    let message = reject(&with_clients(
        "      subscriberQueueLimit:\n        length: 0\n",
    ));
    assert_contains(
        &message,
        &[
            "spec.advanced.clients.subscriberQueueLimit.length: 0 is out of range: must be at least 1",
        ],
    );
    let message = reject(&with_clients("      maxKeepAliveSeconds: 65536\n"));
    assert_contains(
        &message,
        &["spec.advanced.clients.maxKeepAliveSeconds", "65536"],
    );
}

#[test]
fn queue_bounds_cannot_be_set_twice() {
    let message = reject(&with_clients(
        "      maxQueuedMessages: 5\n      subscriberQueueLimit:\n        length: 10\n",
    ));
    assert_contains(
        &message,
        &[
            "spec.advanced.clients.maxQueuedMessages: set either maxQueuedMessages or subscriberQueueLimit",
        ],
    );
}

#[test]
fn gatehouse_client_extensions_apply() {
    let config = parse(&with_clients(
        "      maxTopicAliases: 0\n      maxInflightMessages: 20\n      maxQueuedMessages: 7\n",
    ));
    let limits = &config.broker.limits;
    assert_eq!(limits.max_topic_aliases, 0);
    assert_eq!(limits.max_inflight, 20);
    assert_eq!(limits.max_queued_messages, 7);
    assert_eq!(limits.subscriber_queue_limit, None);
}

#[test]
fn cardinality_ranges_are_checked() {
    let broker = |cardinality: &str| {
        format!(
            "{BROKER_API}\nkind: Broker\nmetadata:\n  name: default\nspec:\n  cardinality:\n{cardinality}{}",
            plain_listener("default", "ClusterIp", 1883)
        )
    };
    let message = reject(&broker(
        "    frontend:\n      replicas: 17\n    backendChain:\n      partitions: 1\n      redundancyFactor: 6\n",
    ));
    assert_contains(
        &message,
        &[
            "spec.cardinality.frontend.replicas: 17 is out of range 1..=16",
            "spec.cardinality.backendChain.redundancyFactor: 6 is out of range 1..=5",
        ],
    );
    let message = reject(&broker("    frontend:\n      replicas: 1\n"));
    assert_contains(
        &message,
        &["spec.cardinality: missing field `backendChain`"],
    );
}

#[test]
fn the_log_level_must_be_known() {
    let text = format!(
        "{BROKER_API}\nkind: Broker\nmetadata:\n  name: default\nspec:\n  diagnostics:\n    logs:\n      level: verbose\n{}",
        plain_listener("default", "ClusterIp", 1883)
    );
    assert_contains(
        &reject(&text),
        &["spec.diagnostics.logs.level: unknown level \"verbose\""],
    );
}

// ---- memory profiles ----------------------------------------------------------------------

#[test]
fn memory_profiles_map_to_their_limits() {
    const MIB: usize = 1024 * 1024;
    let expected = [
        ("Tiny", MemoryProfile::Tiny, 4 * 1024 * 1024, 16 * MIB),
        ("Low", MemoryProfile::Low, 16 * 1024 * 1024, 64 * MIB),
        ("Medium", MemoryProfile::Medium, 64 * 1024 * 1024, 576 * MIB),
        // 256 MiB is one byte more than MQTT can carry.
        ("High", MemoryProfile::High, 268_435_455, 2048 * MIB),
    ];
    for (name, profile, max_packet, budget) in expected {
        let text = format!(
            "{BROKER_API}\nkind: Broker\nmetadata:\n  name: default\nspec:\n  memoryProfile: {name}\n{}",
            plain_listener("default", "ClusterIp", 1883)
        );
        let broker = parse(&text).broker;
        assert_eq!(broker.memory_profile, profile);
        assert_eq!(broker.limits, ClientLimits::for_profile(profile), "{name}");
        assert_eq!(broker.limits.max_packet_size, max_packet, "{name}");
        assert_eq!(broker.limits.memory_budget_bytes, budget, "{name}");
        assert_eq!(
            broker.limits.backpressure_threshold_bytes(),
            budget / 4 * 3,
            "{name}"
        );
        // The profile-independent defaults.
        assert_eq!(broker.limits.max_session_expiry_secs, u32::MAX);
        assert_eq!(broker.limits.max_message_expiry_secs, None);
        assert_eq!(broker.limits.max_receive_maximum, 1024);
        assert_eq!(broker.limits.max_keep_alive_secs, 65535);
        assert_eq!(broker.limits.max_topic_aliases, 64);
        assert_eq!(broker.limits.max_inflight, 65535);
        assert_eq!(broker.limits.max_queued_messages, 10_000);
    }
}

#[test]
fn max_packet_size_overrides_the_profile_up_to_the_mqtt_maximum() {
    let config = parse(&with_clients("      maxPacketSizeBytes: 1000\n"));
    assert_eq!(config.broker.limits.max_packet_size, 1000);
    let config = parse(&with_clients("      maxPacketSizeBytes: 268435456\n"));
    assert_eq!(
        config.broker.limits.max_packet_size,
        ClientLimits::MQTT_MAX_PACKET_SIZE
    );
}

/// broker-spec §7.4, scenario 46: `strategy: None` means the queue has no length bound.
#[test]
fn subscriber_queue_limit_strategy_none_is_unbounded() {
    let config = Config::from_yaml_str(
        "apiVersion: gatehouse.io/v1\nkind: Broker\nmetadata: {name: default}\nspec:\n  advanced:\n    clients:\n      subscriberQueueLimit: {length: 10, strategy: None}\n---\napiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: default}\nspec:\n  ports:\n    - {port: 0}\n",
        "test",
    )
    .expect("valid");
    assert_eq!(config.broker.limits.max_queued_messages, usize::MAX);
}

// ---- persistence ---------------------------------------------------------------------------

fn with_persistence(body: &str) -> String {
    format!(
        "{BROKER_API}\nkind: Broker\nmetadata:\n  name: default\nspec:\n  persistence: {body}\n{}",
        plain_listener("default", "ClusterIp", 1883)
    )
}

#[test]
fn persistence_defaults_to_immediate_and_accepts_aio_fields() {
    let config = parse(&plain_listener("default", "ClusterIp", 1883));
    assert_eq!(config.broker.persistence, Persistence::Immediate);
    let config = parse(&with_persistence(
        "{maxSize: 10G, encryption: {mode: Enabled}, retain: {mode: All}}",
    ));
    assert_eq!(config.broker.persistence, Persistence::Immediate);
    let config = parse(&with_persistence(
        "{durability: Periodic, flushIntervalMillis: 250}",
    ));
    assert_eq!(
        config.broker.persistence,
        Persistence::Periodic {
            flush_interval_millis: 250
        }
    );
    let config = parse(&with_persistence("{durability: Disabled}"));
    assert_eq!(config.broker.persistence, Persistence::Disabled);
}

#[test]
fn persistence_rejects_bad_values_naming_the_field() {
    let e = reject(&with_persistence(
        "{durability: Immediate, flushIntervalMillis: 10}",
    ));
    assert_contains(
        &e,
        &[
            "spec.persistence.flushIntervalMillis",
            "only allowed with durability: Periodic",
        ],
    );
    let e = reject(&with_persistence(
        "{durability: Periodic, flushIntervalMillis: 0}",
    ));
    assert_contains(
        &e,
        &["spec.persistence.flushIntervalMillis", "out of range"],
    );
    let e = reject(&with_persistence("{durability: Sometimes}"));
    assert_contains(&e, &["durability", "Sometimes"]);
}
