//! `BrokerAuthentication` documents → compiled [`Chain`]s.
//!
//! Each entry of `spec.authenticationMethods` names its method and carries exactly one settings
//! object (`x509Settings`, `serviceAccountTokenSettings`, `customSettings`, `jwtSettings`);
//! the method's module builds it. Every error names the policy, the field path and the reason,
//! and all problems are reported, not just the first.

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
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("spec.authenticationMethods[{i}]");
        let method = entry.get("method").and_then(Value::as_str).unwrap_or("");
        let (settings_key, build): (&str, methods::Builder) = match method {
            "X509" => ("x509Settings", methods::x509::build),
            "ServiceAccountToken" => ("serviceAccountTokenSettings", methods::sat::build),
            "Custom" => ("customSettings", methods::custom::build),
            "JWT" => ("jwtSettings", methods::jwt::build),
            other => {
                errors.push(cx.error(
                    format!("{field}.method"),
                    format!(
                        "{other:?} is not a method; expected X509, ServiceAccountToken, Custom or JWT"
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
