//! `BrokerAuthentication` documents → compiled [`Chain`]s.
//!
//! Each entry of `spec.authenticationMethods` names its method and carries exactly one settings
//! object (`x509Settings`, `serviceAccountTokenSettings`, `customSettings`, `jwtSettings`, and
//! the development-only `anonymousSettings`); the method's module builds it. The Gatehouse
//! extension `spec.expiryAction` ([`ExpiryAction`]) is validated here too; the frontend applies
//! it. Every error names the policy, the field path and the reason, and all problems are
//! reported, not just the first.

use std::collections::BTreeMap;
use std::path::PathBuf;

use broker_config::Config;
use serde_json::Value;

use crate::chain::Chain;
use crate::methods;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BrokerAuthentication {policy:?} {field}: {reason}")]
pub struct PolicyError {
    pub policy: String,
    pub field: String,
    pub reason: String,
}

/// What a method's builder may read: the whole configuration (ConfigMaps, Secrets) and where
/// Secrets and ConfigMaps live as files.
pub struct BuildContext<'a> {
    pub policy: String,
    pub config: &'a Config,
    pub secrets_dir: PathBuf,
}

impl BuildContext<'_> {
    /// An error about `field` (a path below `spec.authenticationMethods[i]`).
    pub fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
        PolicyError {
            policy: self.policy.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Chains = BTreeMap<String, Chain>;

/// What the frontend does when a connection's credential expires: Gatehouse's extension field
/// `spec.expiryAction` of a `BrokerAuthentication`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpiryAction {
    /// Close the network connection without DISCONNECT: the documented AIO behaviour
    /// (broker-spec §2.5) and the default.
    #[default]
    Close,
    /// v5 clients get DISCONNECT 0x87 "credential expired" first; 3.1.1 clients are closed.
    Disconnect,
}

/// Reads and validates `spec.expiryAction` (absent = [`ExpiryAction::Close`]). The frontend
/// reads it from its own copy of the policy, so this needs nothing but the spec.
pub fn expiry_action(policy: &str, spec: &Value) -> Result<ExpiryAction, PolicyError> {
    match spec.get("expiryAction") {
        None | Some(Value::Null) => Ok(ExpiryAction::Close),
        Some(Value::String(s)) if s == "Close" => Ok(ExpiryAction::Close),
        Some(Value::String(s)) if s == "Disconnect" => Ok(ExpiryAction::Disconnect),
        Some(other) => Err(PolicyError {
            policy: policy.to_string(),
            field: "spec.expiryAction".to_string(),
            reason: format!("{other} is not an expiry action; expected Close or Disconnect"),
        }),
    }
}

/// Compiles every `BrokerAuthentication` of the configuration.
pub fn compile(config: &Config, secrets_dir: PathBuf) -> Result<Chains, Vec<PolicyError>> {
    let mut chains = Chains::new();
    let mut errors = Vec::new();
    for (name, doc) in &config.authentications {
        let cx = BuildContext {
            policy: name.clone(),
            config,
            secrets_dir: secrets_dir.clone(),
        };
        match compile_one(&cx, &doc.resource.spec) {
            Ok(chain) => {
                chains.insert(name.clone(), chain);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(chains)
    } else {
        Err(errors)
    }
}

fn compile_one(cx: &BuildContext<'_>, spec: &Value) -> Result<Chain, Vec<PolicyError>> {
    let Some(entries) = spec.get("authenticationMethods").and_then(Value::as_array) else {
        return Err(vec![cx.error(
            "spec.authenticationMethods",
            "required: a list of methods (it may be empty, which denies everyone)",
        )]);
    };
    let mut out: Vec<Box<dyn crate::Method>> = Vec::new();
    let mut errors = Vec::new();
    if let Err(e) = expiry_action(&cx.policy, spec) {
        errors.push(e);
    }
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("spec.authenticationMethods[{i}]");
        let method = entry.get("method").and_then(Value::as_str).unwrap_or("");
        let (settings_key, build): (&str, methods::Builder) = match method {
            "X509" => ("x509Settings", methods::x509::build),
            "ServiceAccountToken" => ("serviceAccountTokenSettings", methods::sat::build),
            "Custom" => ("customSettings", methods::custom::build),
            "JWT" => ("jwtSettings", methods::jwt::build),
            // Gatehouse extension, for development and tests only.
            "Anonymous" => ("anonymousSettings", methods::anonymous::build),
            other => {
                errors.push(cx.error(
                    format!("{field}.method"),
                    format!(
                        "{other:?} is not a method; expected X509, ServiceAccountToken, Custom, JWT or Anonymous"
                    ),
                ));
                continue;
            }
        };
        let settings = entry.get(settings_key).cloned().unwrap_or(Value::Null);
        match build(cx, &settings, &format!("{field}.{settings_key}")) {
            Ok(m) => out.push(m),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(Chain::new(cx.policy.clone(), out))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod expiry_action_tests {
    use super::*;

    #[test]
    fn expiry_action_defaults_to_close_and_rejects_other_values() {
        let spec = |v: Value| serde_json::json!({"authenticationMethods": [], "expiryAction": v});
        assert_eq!(
            expiry_action("p", &serde_json::json!({})),
            Ok(ExpiryAction::Close)
        );
        assert_eq!(
            expiry_action("p", &spec("Close".into())),
            Ok(ExpiryAction::Close)
        );
        assert_eq!(
            expiry_action("p", &spec("Disconnect".into())),
            Ok(ExpiryAction::Disconnect)
        );
        let e = expiry_action("p", &spec("disconnect".into())).unwrap_err();
        assert_eq!(e.field, "spec.expiryAction");
        assert!(
            e.to_string().contains("expected Close or Disconnect"),
            "{e}"
        );
    }

    #[test]
    fn compile_reports_a_bad_expiry_action_with_its_field() {
        let config = broker_config::Config::from_yaml_str(
            "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: default}\n\
             spec:\n  ports:\n    - {port: 0, authenticationRef: p}\n---\n\
             apiVersion: gatehouse.io/v1\nkind: BrokerAuthentication\nmetadata: {name: p}\n\
             spec:\n  expiryAction: Later\n  authenticationMethods:\n    - method: Anonymous\n      \
             anonymousSettings: {allow: true}\n",
            "test",
        )
        .unwrap();
        let errors = compile(&config, PathBuf::from("/nonexistent"))
            .err()
            .unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.expiryAction");
    }
}
