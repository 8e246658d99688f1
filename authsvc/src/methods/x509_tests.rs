//! Unit tests of the `X509` method, on PKIs generated here with rcgen (EC P-256 from rcgen, RSA
//! 2048 keys from `openssl genpkey`, since ring cannot generate RSA keys). Scenario numbers are
//! broker-spec §10's; "tutorial" is §5.
//!
//! The PKI helpers are `pub(crate)` so the JWT tests can make issuer certificates with them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker_config::Config;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;
use crate::chain::Chain;

// ------------------------------------------------------------------------------------------------
// PKI helpers
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Ec256,
    Rsa2048,
}

impl KeyKind {
    pub(crate) fn generate(self) -> KeyPair {
        match self {
            KeyKind::Ec256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyKind::Rsa2048 => KeyPair::from_pem(&openssl_rsa_pkcs8()).unwrap(),
        }
    }
}

/// A fresh RSA 2048 private key as PKCS#8 PEM.
pub(crate) fn openssl_rsa_pkcs8() -> String {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `SystemTime` as rcgen's date type (adding to rcgen's epoch spares a `time` dependency).
macro_rules! rcgen_time {
    ($t:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + $t.duration_since(UNIX_EPOCH).unwrap()
    };
}

const HOUR: Duration = Duration::from_secs(3600);

pub(crate) fn dn(pairs: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in pairs {
        dn.push(t.clone(), *v);
    }
    dn
}

/// A CA and the DER of the intermediates between it and its root (root excluded).
pub(crate) struct Ca {
    pub(crate) pem: String,
    kind: KeyKind,
    chain: Vec<Vec<u8>>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(subject: DistinguishedName) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = rcgen_time!(now - HOUR);
    params.not_after = rcgen_time!(now + 24 * 365 * HOUR);
    params
}

impl Ca {
    pub(crate) fn root(name: &str, kind: KeyKind) -> Ca {
        let key = kind.generate();
        let params = ca_params(dn(&[(DnType::CommonName, name)]));
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            kind,
            chain: Vec::new(),
            issuer: Issuer::new(params, key),
        }
    }

    pub(crate) fn intermediate(&self, name: &str) -> Ca {
        let key = self.kind.generate();
        let params = ca_params(dn(&[(DnType::CommonName, name)]));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut chain = vec![cert.der().to_vec()];
        chain.extend(self.chain.iter().cloned());
        Ca {
            pem: cert.pem(),
            kind: self.kind,
            chain,
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate: the chain as a client sends it (leaf, then intermediates).
    pub(crate) fn leaf(&self, spec: Leaf) -> Vec<Vec<u8>> {
        let key = self.kind.generate();
        let mut params = CertificateParams::default();
        params.distinguished_name = spec.subject;
        params.subject_alt_names = spec.sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen_time!(spec.not_before);
        params.not_after = rcgen_time!(spec.not_after);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut chain = vec![cert.der().to_vec()];
        chain.extend(self.chain.iter().cloned());
        chain
    }

    pub(crate) fn client(&self, cn: &str) -> Vec<Vec<u8>> {
        self.leaf(Leaf::cn(cn))
    }

    /// A TLS server certificate for an IP address, with its key, as rustls takes them.
    pub(crate) fn server_cert(
        &self,
        ip: &str,
    ) -> (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ) {
        let key = self.kind.generate();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&[(DnType::CommonName, ip)]);
        params.subject_alt_names = vec![SanType::IpAddress(ip.parse().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = rcgen_time!(now - HOUR);
        params.not_after = rcgen_time!(now + 100 * HOUR);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned().map(CertificateDer::from));
        let key = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        (chain, key.into())
    }
}

pub(crate) struct Leaf {
    subject: DistinguishedName,
    sans: Vec<SanType>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Leaf {
    pub(crate) fn subject(subject: DistinguishedName) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            subject,
            sans: Vec::new(),
            not_before: now - HOUR,
            not_after: now + 100 * HOUR,
        }
    }

    pub(crate) fn cn(cn: &str) -> Leaf {
        Leaf::subject(dn(&[(DnType::CommonName, cn)]))
    }

    fn san(mut self, san: SanType) -> Leaf {
        self.sans.push(san);
        self
    }

    fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> Leaf {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

// ------------------------------------------------------------------------------------------------
// Configuration helpers
// ------------------------------------------------------------------------------------------------

/// A configuration of `docs` plus the one listener every configuration needs.
pub(crate) fn config_from(docs: &[Value]) -> Config {
    let listener = json!({
        "apiVersion": "mqttbroker.iotoperations.azure.com/v1",
        "kind": "BrokerListener",
        "metadata": {"name": "test"},
        "spec": {"serviceType": "ClusterIp", "ports": [{"port": 1883}]},
    });
    let yaml = std::iter::once(&listener)
        .chain(docs)
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    Config::from_yaml_str(&yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// A configuration holding ConfigMap documents `name → PEM text` (as `data`).
pub(crate) fn config_with_config_maps(maps: &[(&str, &str)]) -> Config {
    let docs: Vec<Value> = maps
        .iter()
        .map(|(name, pem)| {
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": {"ca.pem": pem},
            })
        })
        .collect();
    config_from(&docs)
}

const FIELD: &str = "spec.authenticationMethods[0].x509Settings";

fn build_with(config: &Config, dir: &Path, settings: Value) -> Result<X509, PolicyError> {
    let cx = BuildContext {
        policy: "x509-auth".to_owned(),
        config,
        secrets_dir: dir.to_owned(),
    };
    X509::from_settings(&cx, &settings, FIELD)
}

fn method(ca_pem: &str, settings: Value) -> X509 {
    let config = config_with_config_maps(&[("fabrikam-ca", ca_pem)]);
    let dir = tempfile::tempdir().unwrap();
    build_with(&config, dir.path(), settings).unwrap_or_else(|e| panic!("{e}"))
}

fn with_chain(chain: Vec<Vec<u8>>) -> Credentials {
    let mut c = Credentials::connect("client");
    c.tls_chain = chain;
    c
}

fn grant(decision: Decision) -> Grant {
    match decision {
        Decision::Allow(grant) => grant,
        other => panic!("expected Allow, got {other:?}"),
    }
}

fn denied_reason(decision: Decision) -> String {
    match decision {
        Decision::Deny { code: 0x87, reason } => reason,
        other => panic!("expected Deny 0x87, got {other:?}"),
    }
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// The tutorial's BrokerAuthentication `x509-auth` (§5 step 3).
fn tutorial_settings() -> Value {
    json!({
        "trustedClientCaCert": "fabrikam-ca",
        "authorizationAttributes": {
            "thermostat": {"subject": "CN = thermostat", "attributes": {"group": "thermostat_group"}},
            "hygrometer": {"subject": "CN = hygrometer", "attributes": {"group": "hygrometer_group"}},
            "intermediate": {
                "subject": "CN = Fabrikam Intermediate CA 1",
                "attributes": {"manufacturer": "fabrikam"}
            }
        }
    })
}

// ------------------------------------------------------------------------------------------------
// Tutorial and chain verification
// ------------------------------------------------------------------------------------------------

/// Tutorial §5 with scenarios 10 and 39: username = leaf CN, leaf-first attribute matching that
/// stops at the first match, expiry = leaf notAfter, no in-band renewal.
fn tutorial(kind: KeyKind) {
    let root = Ca::root("Fabrikam Root CA", kind);
    let intermediate = root.intermediate("Fabrikam Intermediate CA 1");
    let x509 = method(&root.pem, tutorial_settings());

    let expected = [
        ("thermostat", attrs(&[("group", "thermostat_group")])),
        ("hygrometer", attrs(&[("group", "hygrometer_group")])),
        ("heater", attrs(&[("manufacturer", "fabrikam")])),
        ("lightbulb", attrs(&[("manufacturer", "fabrikam")])),
    ];
    for (device, attributes) in expected {
        let not_after = SystemTime::now() + 50 * HOUR;
        let chain = intermediate.leaf(Leaf::cn(device).valid(SystemTime::now() - HOUR, not_after));
        let g = grant(x509.decide(&with_chain(chain), now()));
        assert_eq!(g.principal.username.as_deref(), Some(device));
        assert_eq!(g.principal.attributes, attributes, "{device} ({kind:?})");
        assert!(!g.can_reauthenticate);
        let want = not_after.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let got = g
            .expiry
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(
            got, want,
            "expiry is the leaf's notAfter (second precision)"
        );
        assert!(g.data.is_none());
    }
}

#[test]
fn tutorial_attributes_ec_chain() {
    tutorial(KeyKind::Ec256);
}

#[test]
fn tutorial_attributes_rsa_chain() {
    tutorial(KeyKind::Rsa2048);
}

/// Scenario 11: a certificate from another CA is denied (the service re-verifies; it does not
/// trust the frontend's handshake alone).
#[test]
fn a_chain_from_another_ca_is_denied() {
    let fabrikam = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let other =
        Ca::root("Fabrikam Root CA", KeyKind::Ec256).intermediate("Fabrikam Intermediate CA 1");
    let x509 = method(&fabrikam.pem, tutorial_settings());
    let reason = denied_reason(x509.decide(&with_chain(other.client("thermostat")), now()));
    assert!(reason.contains("not trusted"), "{reason}");

    // A leaf without the intermediate it needs does not chain to the root either.
    let intermediate = fabrikam.intermediate("Fabrikam Intermediate CA 1");
    let mut chain = intermediate.client("thermostat");
    chain.truncate(1);
    denied_reason(x509.decide(&with_chain(chain), now()));

    // Garbage is denied, not a panic.
    denied_reason(x509.decide(&with_chain(vec![b"not a certificate".to_vec()]), now()));
}

/// Scenario 11 (no certificate): X509 is not relevant, and a policy with only X509 denies 0x87.
#[tokio::test]
async fn no_client_certificate_is_not_relevant_and_an_x509_only_policy_denies() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let x509 = method(&root.pem, tutorial_settings());
    let mut c = Credentials::connect("c");
    c.username = Some("thermostat".to_owned());
    assert_eq!(x509.decide(&c, now()), Decision::NotRelevant);
    let chain = Chain::new("x509-auth", vec![Box::new(x509)]);
    assert!(matches!(
        chain.authenticate(&c).await,
        Decision::Deny { code: 0x87, .. }
    ));
}

/// Scenario 25: an X.509 client cannot renew its credential with AUTH 0x19.
#[test]
fn reauthentication_is_denied() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let x509 = method(&root.pem, json!({"trustedClientCaCert": "fabrikam-ca"}));
    let mut c = with_chain(root.client("thermostat"));
    c.kind = Kind::Reauthenticate;
    c.method = Some("CUSTOM".to_owned());
    let reason = denied_reason(x509.decide(&c, now()));
    assert_eq!(reason, "X.509 credentials cannot re-authenticate in-band");
}

#[test]
fn expired_and_not_yet_valid_leaves_are_denied() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let x509 = method(&root.pem, json!({"trustedClientCaCert": "fabrikam-ca"}));
    let t = SystemTime::now();
    let expired = root.leaf(Leaf::cn("old").valid(t - 10 * HOUR, t - HOUR));
    let reason = denied_reason(x509.decide(&with_chain(expired.clone()), now()));
    assert!(
        reason.contains("Expired") || reason.contains("expired"),
        "{reason}"
    );
    // The same certificate was fine while it was valid.
    grant(x509.decide(&with_chain(expired), t - 2 * HOUR));
    let future = root.leaf(Leaf::cn("new").valid(t + HOUR, t + 10 * HOUR));
    denied_reason(x509.decide(&with_chain(future), now()));
}

/// Every certificate in the ConfigMap is an anchor: trusting only the intermediate accepts a
/// client that sends no intermediate, and the anchor's subject still takes part in matching.
#[test]
fn an_intermediate_alone_is_a_trust_anchor() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let intermediate = root.intermediate("Fabrikam Intermediate CA 1");
    let x509 = method(&intermediate.pem, tutorial_settings());
    let mut chain = intermediate.client("lightbulb");
    chain.truncate(1);
    let g = grant(x509.decide(&with_chain(chain), now()));
    assert_eq!(
        g.principal.attributes,
        attrs(&[("manufacturer", "fabrikam")])
    );
}

/// A bundle of several anchors (two unrelated roots), and a rule on the root: matched when
/// neither the leaf nor the intermediate has one.
#[test]
fn several_anchors_and_a_root_rule() {
    let fabrikam = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let contoso = Ca::root("Contoso Root CA", KeyKind::Rsa2048);
    let bundle = format!("{}{}", fabrikam.pem, contoso.pem);
    let x509 = method(
        &bundle,
        json!({
            "trustedClientCaCert": "fabrikam-ca",
            "authorizationAttributes": {
                "root": {"subject": "CN=Contoso Root CA", "attributes": {"org": "contoso"}}
            }
        }),
    );
    let from_contoso = contoso
        .intermediate("Contoso Intermediate CA 1")
        .client("door");
    let g = grant(x509.decide(&with_chain(from_contoso), now()));
    assert_eq!(g.principal.attributes, attrs(&[("org", "contoso")]));
    let from_fabrikam = fabrikam
        .intermediate("Fabrikam Intermediate CA 1")
        .client("door");
    let g = grant(x509.decide(&with_chain(from_fabrikam), now()));
    assert!(g.principal.attributes.is_empty());
}

#[test]
fn subjects_compare_as_sets_of_rdns() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let subject = dn(&[
        (DnType::CommonName, "thermostat"),
        (DnType::OrganizationalUnitName, "Engineering"),
        (DnType::CountryName, "US"),
    ]);
    let chain = root.leaf(Leaf::subject(subject));
    let decide = |rule: &str| {
        let x509 = method(
            &root.pem,
            json!({
                "trustedClientCaCert": "fabrikam-ca",
                "authorizationAttributes": {"r": {"subject": rule, "attributes": {"hit": "yes"}}}
            }),
        );
        grant(x509.decide(&with_chain(chain.clone()), now()))
            .principal
            .attributes
            .contains_key("hit")
    };
    assert!(decide("CN = thermostat, OU = Engineering, C = US"));
    assert!(decide("C=US,OU=Engineering,CN=thermostat"));
    assert!(decide(
        "  c =  us ,  ou=engineering,commonName = Thermostat "
    ));
    assert!(decide("/C=US/OU=Engineering/CN=thermostat"));
    assert!(decide("2.5.4.3 = thermostat, OU = Engineering, C = US"));
    // Not a subset match: all RDNs must be there, and nothing more.
    assert!(!decide("CN = thermostat"));
    assert!(!decide(
        "CN = thermostat, OU = Engineering, C = US, O = Fabrikam"
    ));
    assert!(!decide("CN = thermostat, OU = Engineering, C = DE"));
}

#[test]
fn subject_strings_parse_escapes_and_quotes() {
    let a = Rdns::parse(r#"CN = "Fabrikam, Inc.", OU = a\+b"#).unwrap();
    assert_eq!(
        a.0,
        vec![
            ("2.5.4.11".to_owned(), "a+b".to_owned()),
            ("2.5.4.3".to_owned(), "fabrikam, inc.".to_owned()),
        ]
    );
    let b = Rdns::parse(r"CN = x\=y").unwrap();
    assert_eq!(b.0, vec![("2.5.4.3".to_owned(), "x=y".to_owned())]);
    for bad in [
        "",
        "CN",
        "XX = y",
        "CN = ",
        "CN = \"open",
        "= x",
        "CN = x\\",
    ] {
        assert!(Rdns::parse(bad).is_err(), "{bad:?} should not parse");
    }
}

// ------------------------------------------------------------------------------------------------
// Event Grid: thumbprints and authentication-name sources
// ------------------------------------------------------------------------------------------------

fn thumbprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

#[test]
fn thumbprint_match_and_mismatch() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let primary = root.client("sensor-1");
    let secondary = root.client("sensor-1");
    let stranger = root.client("sensor-1");
    // Colon-separated, as `openssl x509 -fingerprint -sha256` prints it.
    let with_colons: String = thumbprint(&secondary[0])
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let x509 = method(
        &root.pem,
        json!({
            "trustedClientCaCert": "fabrikam-ca",
            "thumbprints": {"Sensor-1": [thumbprint(&primary[0]).to_lowercase(), with_colons]},
            "authorizationAttributes": {
                "s": {"subject": "CN = sensor-1", "attributes": {"floor": "3"}}
            }
        }),
    );
    let connect = |chain: &Vec<Vec<u8>>, username: Option<&str>| {
        let mut c = with_chain(chain.clone());
        c.username = username.map(str::to_owned);
        x509.decide(&c, now())
    };
    for chain in [&primary, &secondary] {
        // The default name source is the CONNECT username, compared case-insensitively; the
        // registered spelling is the principal's.
        let g = grant(connect(chain, Some("sensor-1")));
        assert_eq!(g.principal.username.as_deref(), Some("Sensor-1"));
        assert_eq!(
            g.principal.attributes,
            attrs(&[("authenticationName", "Sensor-1"), ("floor", "3")])
        );
    }
    let reason = denied_reason(connect(&stranger, Some("sensor-1")));
    assert!(reason.contains("thumbprint"), "{reason}");
    let reason = denied_reason(connect(&primary, Some("sensor-2")));
    assert!(reason.contains("not a registered client"), "{reason}");
    let reason = denied_reason(connect(&primary, None));
    assert!(reason.contains("no authentication name"), "{reason}");
}

/// Scenario 56: sources [ClientCertificateDns, ClientCertificateSubject], no username.
#[test]
fn authentication_name_sources_are_tried_in_order() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let dev1 = root.leaf(Leaf::cn("ignored").san(SanType::DnsName("dev1".try_into().unwrap())));
    let dev2 = root.client("dev2");
    let dev3 = root.client("dev3");
    let x509 = method(
        &root.pem,
        json!({
            "trustedClientCaCert": "fabrikam-ca",
            "authenticationNameSource": ["ClientCertificateDns", "ClientCertificateSubject"],
            "thumbprints": {
                "dev1": [thumbprint(&dev1[0])],
                "dev2": [thumbprint(&dev2[0])],
                "dev3": [thumbprint(&dev1[0])]
            }
        }),
    );
    let name = |chain: &Vec<Vec<u8>>| {
        grant(x509.decide(&with_chain(chain.clone()), now()))
            .principal
            .username
    };
    assert_eq!(name(&dev1).as_deref(), Some("dev1"));
    assert_eq!(name(&dev2).as_deref(), Some("dev2"));
    // dev3 is registered, but with another certificate's thumbprint.
    denied_reason(x509.decide(&with_chain(dev3), now()));

    // Without a registry the name is taken as is; the first source with a value wins.
    let all = root.leaf(
        Leaf::cn("cn-name")
            .san(SanType::URI("urn:dev:uri".try_into().unwrap()))
            .san(SanType::IpAddress("10.0.0.7".parse().unwrap()))
            .san(SanType::Rfc822Name("dev@example.com".try_into().unwrap())),
    );
    let by = |sources: Value, username: Option<&str>| {
        let x509 = method(
            &root.pem,
            json!({"trustedClientCaCert": "fabrikam-ca", "authenticationNameSource": sources}),
        );
        let mut c = with_chain(all.clone());
        c.username = username.map(str::to_owned);
        x509.decide(&c, now())
    };
    let username = |d: Decision| grant(d).principal.username.unwrap();
    assert_eq!(
        username(by(json!(["ClientCertificateUri"]), None)),
        "urn:dev:uri"
    );
    assert_eq!(
        username(by(json!(["ClientCertificateIp"]), None)),
        "10.0.0.7"
    );
    assert_eq!(
        username(by(json!(["ClientCertificateEmail"]), None)),
        "dev@example.com"
    );
    assert_eq!(
        username(by(
            json!([
                "ClientCertificateDns",
                "Username",
                "ClientCertificateSubject"
            ]),
            Some("u1")
        )),
        "u1"
    );
    assert_eq!(
        username(by(
            json!([
                "ClientCertificateDns",
                "Username",
                "ClientCertificateSubject"
            ]),
            None
        )),
        "cn-name"
    );
    denied_reason(by(json!(["ClientCertificateDns"]), Some("u1")));
}

// ------------------------------------------------------------------------------------------------
// Settings and trust material
// ------------------------------------------------------------------------------------------------

#[test]
fn settings_errors_name_the_field() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let config = config_with_config_maps(&[("fabrikam-ca", &root.pem), ("empty", "no pem here")]);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "extra": 1}),
            "x509Settings.extra",
        ),
        (json!({"trustedClientCaCert": 7}), "trustedClientCaCert"),
        (
            json!({"trustedClientCaCert": "empty"}),
            "trustedClientCaCert",
        ),
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "additionalValidation": "AzureDeviceRegistry"}),
            "additionalValidation",
        ),
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "authorizationAttributes": {"r": {"subject": "XX = 1", "attributes": {}}}}),
            "authorizationAttributes.r.subject",
        ),
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "authorizationAttributes": {"r": {"subject": "CN = a", "attributes": {"n": 3}}}}),
            "authorizationAttributes.r.attributes.n",
        ),
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "thumbprints": {"a": ["00"]}}),
            "thumbprints.a[0]",
        ),
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "thumbprints": {"a": ["0".repeat(64), "1".repeat(64), "2".repeat(64)]}}),
            "thumbprints.a",
        ),
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "thumbprints": {"a": ["0".repeat(64)], "A": ["1".repeat(64)]}}),
            "thumbprints.",
        ),
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "authenticationNameSource": ["Username", "Username"]}),
            "authenticationNameSource[1]",
        ),
        (
            json!({"trustedClientCaCert": "fabrikam-ca", "authenticationNameSource": ["Subject"]}),
            "authenticationNameSource[0]",
        ),
    ];
    for (settings, field) in cases {
        match build_with(&config, dir.path(), settings.clone()) {
            Ok(_) => panic!("{settings} should be refused"),
            Err(e) => {
                assert!(e.field.starts_with(FIELD), "{e}");
                assert!(e.field.contains(field), "{settings}: {e}");
                assert_eq!(e.policy, "x509-auth");
            }
        }
    }
    // Absent settings: the default ConfigMap `client-ca`, looked for as files, is not an
    // error at load time (it may be mounted later).
    build_with(&config, dir.path(), Value::Null).unwrap();
}

/// The ConfigMap as mounted files (no document): read at load, re-read when it changes, and a
/// missing one denies with a reason rather than failing the policy.
#[test]
fn a_file_backed_bundle_is_reloaded() {
    let first = Ca::root("First Root", KeyKind::Ec256);
    let second = Ca::root("Second Root", KeyKind::Ec256);
    let config = config_with_config_maps(&[]);
    let dir = tempfile::tempdir().unwrap();

    let x509 = build_with(
        &config,
        dir.path(),
        json!({"trustedClientCaCert": "mounted"}),
    )
    .unwrap();
    let reason = denied_reason(x509.decide(&with_chain(first.client("a")), now()));
    assert!(
        reason.contains("mounted") && reason.contains("not found"),
        "{reason}"
    );

    let mounted = dir.path().join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    std::fs::write(mounted.join("ca.crt"), &first.pem).unwrap();
    std::fs::write(mounted.join(".hidden"), "ignored").unwrap();
    force_reload(&x509);
    grant(x509.decide(&with_chain(first.client("a")), now()));
    denied_reason(x509.decide(&with_chain(second.client("a")), now()));

    std::fs::write(mounted.join("ca.crt"), &second.pem).unwrap();
    force_reload(&x509);
    grant(x509.decide(&with_chain(second.client("a")), now()));

    // A broken update keeps the last good bundle.
    std::fs::write(mounted.join("ca.crt"), "garbage").unwrap();
    force_reload(&x509);
    grant(x509.decide(&with_chain(second.client("a")), now()));
}

fn force_reload(x509: &X509) {
    if let TrustSource::Files { state, .. } = &x509.trust.source {
        state.lock().checked_at = None;
    }
}

#[test]
fn binary_data_config_maps_are_decoded() {
    use base64::Engine as _;
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "bin-ca"},
        "binaryData": {"ca.pem": base64::engine::general_purpose::STANDARD.encode(&root.pem)},
    });
    let config = config_from(&[doc]);
    let dir = tempfile::tempdir().unwrap();
    let x509 = build_with(
        &config,
        dir.path(),
        json!({"trustedClientCaCert": "bin-ca"}),
    )
    .unwrap();
    grant(x509.decide(&with_chain(root.client("a")), now()));
}

/// Through the policy compiler, as the service builds it.
#[tokio::test]
async fn compiled_from_a_broker_authentication_document() {
    let root = Ca::root("Fabrikam Root CA", KeyKind::Ec256);
    let intermediate = root.intermediate("Fabrikam Intermediate CA 1");
    let doc = json!({
        "apiVersion": "mqttbroker.iotoperations.azure.com/v1",
        "kind": "BrokerAuthentication",
        "metadata": {"name": "x509-auth"},
        "spec": {"authenticationMethods": [{"method": "X509", "x509Settings": tutorial_settings()}]}
    });
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fabrikam-ca"},
        "data": {"client_ca.pem": root.pem},
    });
    let config = config_from(&[doc, cm]);
    let dir = tempfile::tempdir().unwrap();
    let chains = crate::policy::compile(&config, dir.path().to_owned()).unwrap();
    let chain = &chains["x509-auth"];
    assert_eq!(chain.method_names(), ["X509"]);
    let g = grant(
        chain
            .authenticate(&with_chain(intermediate.client("thermostat")))
            .await,
    );
    assert_eq!(g.principal.username.as_deref(), Some("thermostat"));
}
