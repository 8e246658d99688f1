//! The `Anonymous` method: every client is let in (or, with `allow: false`, every client is
//! refused), with fixed attributes and an optional credential lifetime. FOR DEVELOPMENT AND
//! TESTS ONLY: it checks nothing the client presents.
//!
//! ```yaml
//! authenticationMethods:
//!   - method: Anonymous
//!     anonymousSettings:
//!       allow: true            # required; false refuses everyone with 0x87
//!       expirySeconds: 3600    # optional: the "credential" expires this long after CONNECT
//!       attributes: {group: dev}   # optional: the principal's attributes
//! ```
//!
//! It is always relevant, so it decides for every client that reaches it: put it last. The
//! principal's username is the CONNECT username, unverified. It is a Gatehouse extension, not
//! an AIO method; it exists so that the frontend ⇄ authsvc split, expiry and re-authentication
//! can be exercised without PKI, tokens or an external server.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::policy::{BuildContext, PolicyError};
use crate::{Credentials, Decision, DecisionFuture, Grant, Method, Principal};

pub struct Anonymous {
    allow: bool,
    lifetime: Option<Duration>,
    attributes: BTreeMap<String, String>,
}

impl Method for Anonymous {
    fn name(&self) -> &'static str {
        "Anonymous"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> DecisionFuture<'a> {
        let decision = if self.allow {
            Decision::Allow(Grant {
                principal: Principal {
                    username: credentials.username.clone(),
                    attributes: self.attributes.clone(),
                },
                expiry: self.lifetime.map(|d| SystemTime::now() + d),
                data: None,
                // AUTH 0x19 simply starts a new lifetime.
                can_reauthenticate: true,
            })
        } else {
            Decision::not_authorized("anonymous access is disabled by this policy")
        };
        Box::pin(std::future::ready(decision))
    }
}

pub fn build(
    cx: &BuildContext<'_>,
    settings: &Value,
    field: &str,
) -> Result<Box<dyn Method>, PolicyError> {
    let Some(object) = settings.as_object() else {
        return Err(cx.error(
            field,
            "required: an object with `allow` (and optionally `expirySeconds`, `attributes`)",
        ));
    };
    for key in object.keys() {
        if !matches!(key.as_str(), "allow" | "expirySeconds" | "attributes") {
            return Err(cx.error(
                format!("{field}.{key}"),
                "unknown field; expected allow, expirySeconds or attributes",
            ));
        }
    }
    let allow = match object.get("allow") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(cx.error(format!("{field}.allow"), "must be true or false")),
        None => return Err(cx.error(format!("{field}.allow"), "required: true or false")),
    };
    let lifetime = match object.get("expirySeconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(secs @ 1..=0xFFFF_FFFF) => Some(Duration::from_secs(secs)),
            _ => {
                return Err(cx.error(
                    format!("{field}.expirySeconds"),
                    "must be an integer from 1 to 4294967295",
                ));
            }
        },
    };
    let mut attributes = BTreeMap::new();
    match object.get("attributes") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let Some(v) = v.as_str() else {
                    return Err(cx.error(format!("{field}.attributes.{k}"), "must be a string"));
                };
                attributes.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => {
            return Err(cx.error(format!("{field}.attributes"), "must be a map of strings"));
        }
    }
    if allow {
        tracing::warn!(
            policy = %cx.policy,
            "BrokerAuthentication uses the Anonymous method: every client reaching it is let in \
             (development only)"
        );
    }
    Ok(Box::new(Anonymous {
        allow,
        lifetime,
        attributes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(config: &broker_config::Config) -> BuildContext<'_> {
        BuildContext {
            policy: "p".into(),
            config,
            secrets_dir: std::path::PathBuf::from("/nonexistent"),
        }
    }

    fn config() -> broker_config::Config {
        broker_config::Config::from_yaml_str(
            "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: default}\n\
             spec:\n  ports:\n    - {port: 0}\n",
            "test",
        )
        .unwrap()
    }

    fn run(m: &dyn Method, c: &Credentials) -> Decision {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(m.authenticate(c))
    }

    #[test]
    fn allows_with_attributes_and_lifetime() {
        let config = config();
        let m = build(
            &context(&config),
            &serde_json::json!({"allow": true, "expirySeconds": 30, "attributes": {"group": "dev"}}),
            "f",
        )
        .unwrap();
        let mut c = Credentials::connect("c");
        c.username = Some("u".into());
        let Decision::Allow(grant) = run(&*m, &c) else {
            panic!("expected Allow");
        };
        assert_eq!(grant.principal.username.as_deref(), Some("u"));
        assert_eq!(grant.principal.attributes["group"], "dev");
        let left = grant
            .expiry
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20));
        assert!(grant.can_reauthenticate);
    }

    #[test]
    fn allow_false_refuses_with_not_authorized() {
        let config = config();
        let m = build(&context(&config), &serde_json::json!({"allow": false}), "f").unwrap();
        assert!(matches!(
            run(&*m, &Credentials::connect("c")),
            Decision::Deny { code: 0x87, .. }
        ));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let config = config();
        let cx = context(&config);
        let field = |v: Value| build(&cx, &v, "s").err().map(|e| e.field);
        assert_eq!(field(Value::Null), Some("s".into()));
        assert_eq!(field(serde_json::json!({})), Some("s.allow".into()));
        assert_eq!(
            field(serde_json::json!({"allow": "yes"})),
            Some("s.allow".into())
        );
        assert_eq!(
            field(serde_json::json!({"allow": true, "expirySeconds": 0})),
            Some("s.expirySeconds".into())
        );
        assert_eq!(
            field(serde_json::json!({"allow": true, "attributes": {"a": 1}})),
            Some("s.attributes.a".into())
        );
        assert_eq!(
            field(serde_json::json!({"allow": true, "alow": true})),
            Some("s.alow".into())
        );
    }
}
