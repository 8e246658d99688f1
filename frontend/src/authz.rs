//! Attribute-based authorization (`BrokerAuthorization`, broker-spec §4): policies compiled
//! once at load, then once per client at CONNECT into [`ClientPermissions`] that the connection
//! checks locally for every PUBLISH and SUBSCRIBE — never a per-message call anywhere.
//!
//! Semantics (allow-only):
//! - a rule applies to a client when any of its principals matches: a client id, a username,
//!   or an attribute map whose every pair the client has (maps are OR'ed);
//! - CONNECT is allowed when an applicable rule grants `Connect` (optionally restricted to
//!   client ids, `*` prefix globs allowed); nothing applicable, or no rules at all, denies;
//! - PUBLISH: the topic must match a granted filter; SUBSCRIBE: the requested filter must be
//!   covered by a granted one (`a/#` covers `a/+/b`; `a/+` does not cover `a/#`); a shared
//!   subscription is judged on its inner filter;
//! - `{principal.clientId}`, `{principal.username}`, `{principal.attributes.NAME}` are
//!   substituted as whole topic segments (anything else is a configuration error); a token
//!   whose value is missing never matches.
//!
//! State-store key rules are validated and kept; they are enforced when the state store exists.
//! This module knows nothing about connections or the wire; `connection.rs` asks it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mqtt::topic;
use mqtt::trie::SubscriptionTrie;
use parking_lot::Mutex;
use serde_json::Value;

use crate::auth::Principal;

/// A configuration problem, naming the policy, the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BrokerAuthorization {policy:?} {field}: {reason}")]
pub struct AuthzError {
    pub policy: String,
    pub field: String,
    pub reason: String,
}

/// One piece of a template: literal text or a principal token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    ClientId,
    Username,
    Attribute(String),
}

/// A string with `{principal.*}` tokens, e.g. a topic filter or a client-id pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Part>);

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let Some(len) = rest[start..].find('}') else {
                return Err(format!("unclosed '{{' in {text:?}"));
            };
            let token = &rest[start + 1..start + len];
            parts.push(match token {
                "principal.clientId" => Part::ClientId,
                "principal.username" => Part::Username,
                t if t.starts_with("principal.attributes.") => {
                    let name = &t["principal.attributes.".len()..];
                    if name.is_empty() {
                        return Err(format!("{{{t}}} names no attribute"));
                    }
                    Part::Attribute(name.to_string())
                }
                t => {
                    return Err(format!(
                        "unknown token {{{t}}}; expected {{principal.clientId}}, \
                         {{principal.username}} or {{principal.attributes.NAME}}"
                    ));
                }
            });
            rest = &rest[start + len + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched '}}' in {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template(parts))
    }

    fn has_tokens(&self) -> bool {
        self.0.iter().any(|p| !matches!(p, Part::Text(_)))
    }

    /// The text with tokens replaced; `None` if a value is missing (never matches).
    fn render(&self, who: &Who<'_>) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::ClientId => out.push_str(who.client_id),
                Part::Username => out.push_str(who.principal.username.as_deref()?),
                Part::Attribute(name) => out.push_str(who.principal.attributes.get(name)?),
            }
        }
        Some(out)
    }
}

/// A topic filter template: tokens must be whole segments ([broker-spec §4.2], scenario 37).
fn topic_template(text: &str) -> Result<Template, String> {
    for segment in text.split('/') {
        if segment.contains('{') || segment.contains('}') {
            let t = Template::parse(segment)?;
            if t.0.len() != 1 || !t.has_tokens() {
                return Err(format!(
                    "segment {segment:?}: a substitution token must be the whole topic segment"
                ));
            }
        }
    }
    let t = Template::parse(text)?;
    // Validate the shape with placeholders standing in for tokens.
    let probe =
        t.0.iter()
            .map(|p| match p {
                Part::Text(s) => s.as_str(),
                _ => "x",
            })
            .collect::<String>();
    topic::validate_topic_filter(&probe)
        .map_err(|e| format!("{text:?} is not a topic filter: {e}"))?;
    Ok(t)
}

/// Who is asking: the client id from CONNECT and what authentication said.
struct Who<'a> {
    client_id: &'a str,
    principal: &'a Principal,
}

#[derive(Debug, Clone)]
struct Principals {
    client_ids: Vec<Template>,
    usernames: Vec<Template>,
    attributes: Vec<BTreeMap<String, String>>,
}

impl Principals {
    fn matches(&self, who: &Who<'_>) -> bool {
        let eq = |t: &Template, value: Option<&str>| match (t.render(who), value) {
            (Some(expected), Some(actual)) => expected == actual,
            _ => false,
        };
        self.client_ids.iter().any(|t| eq(t, Some(who.client_id)))
            || self
                .usernames
                .iter()
                .any(|t| eq(t, who.principal.username.as_deref()))
            || self.attributes.iter().any(|map| {
                map.iter()
                    .all(|(k, v)| who.principal.attributes.get(k) == Some(v))
            })
    }
}

/// `Connect.clientIds` entry: exact, or a prefix when it ends with `*`.
#[derive(Debug, Clone)]
struct ClientIdPattern {
    template: Template,
    prefix: bool,
}

impl ClientIdPattern {
    fn matches(&self, who: &Who<'_>) -> bool {
        let Some(text) = self.template.render(who) else {
            return false;
        };
        if self.prefix {
            who.client_id.starts_with(&text)
        } else {
            who.client_id == text
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Pattern,
    String,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAccess {
    Read,
    Write,
    ReadWrite,
}

/// A state-store rule, validated and kept until the state store exists.
#[derive(Debug, Clone)]
pub struct StateStoreRule {
    pub key_type: KeyType,
    pub access: KeyAccess,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    principals: Principals,
    /// `Some(empty)` = Connect with any client id; `None` = the rule grants no Connect.
    connect: Option<Vec<ClientIdPattern>>,
    publish: Vec<Template>,
    subscribe: Vec<Template>,
    #[allow(dead_code)] // enforced once the state store exists
    state_store: Vec<StateStoreRule>,
}

/// A compiled `BrokerAuthorization`.
#[derive(Debug)]
pub struct AbacPolicy {
    pub name: String,
    pub cache: bool,
    rules: Vec<Rule>,
}

fn strings(
    v: Option<&Value>,
    field: &str,
    err: &dyn Fn(&str, String) -> AuthzError,
) -> Result<Vec<String>, AuthzError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err(&format!("{field}[{i}]"), "must be a string".into()))
            })
            .collect(),
        Some(_) => Err(err(field, "must be a list of strings".into())),
    }
}

impl AbacPolicy {
    /// Compiles `spec` of a `BrokerAuthorization` named `name`. All problems are reported.
    pub fn compile(name: &str, spec: &Value) -> Result<AbacPolicy, Vec<AuthzError>> {
        let mut errors = Vec::new();
        let err = |field: &str, reason: String| AuthzError {
            policy: name.to_string(),
            field: field.to_string(),
            reason,
        };
        let Some(policies) = spec.get("authorizationPolicies") else {
            return Err(vec![err("spec.authorizationPolicies", "required".into())]);
        };
        let cache = match policies.get("cache").and_then(Value::as_str) {
            None | Some("Enabled") => true,
            Some("Disabled") => false,
            Some(other) => {
                errors.push(err(
                    "spec.authorizationPolicies.cache",
                    format!("{other:?}: expected Enabled or Disabled"),
                ));
                true
            }
        };
        let empty = Vec::new();
        let rules_json = match policies.get("rules") {
            None | Some(Value::Null) => &empty,
            Some(Value::Array(a)) => a,
            Some(_) => {
                errors.push(err(
                    "spec.authorizationPolicies.rules",
                    "must be a list".into(),
                ));
                &empty
            }
        };
        let mut rules = Vec::new();
        for (i, r) in rules_json.iter().enumerate() {
            let at = format!("spec.authorizationPolicies.rules[{i}]");
            match compile_rule(r, &at, &err) {
                Ok(rule) => rules.push(rule),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(AbacPolicy {
                name: name.to_string(),
                cache,
                rules,
            })
        } else {
            Err(errors)
        }
    }

    /// Authorizes a CONNECT and compiles the client's permissions. `Err` carries the reason
    /// for the log (the client gets 0x87, 3.1.1: 0x05).
    pub fn connect(
        &self,
        client_id: &str,
        principal: &Principal,
    ) -> Result<ClientPermissions, String> {
        let who = Who {
            client_id,
            principal,
        };
        let applicable: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.principals.matches(&who))
            .collect();
        if applicable.is_empty() {
            return Err("no rule matched the principal".to_string());
        }
        let connect_ok = applicable.iter().any(|r| match &r.connect {
            None => false,
            Some(patterns) => patterns.is_empty() || patterns.iter().any(|p| p.matches(&who)),
        });
        if !connect_ok {
            return Err("no rule grants Connect for this client id".to_string());
        }
        let mut grants = TopicGrants::default();
        for rule in &applicable {
            for filter in rule.publish.iter().filter_map(|t| t.render(&who)) {
                grants.grant_publish(filter);
            }
            for filter in rule.subscribe.iter().filter_map(|t| t.render(&who)) {
                grants.grant_subscribe(filter);
            }
        }
        Ok(ClientPermissions {
            grants,
            cache: self.cache.then(|| Mutex::new(HashMap::new())),
        })
    }
}

fn compile_rule(
    r: &Value,
    at: &str,
    err: &dyn Fn(&str, String) -> AuthzError,
) -> Result<Rule, Vec<AuthzError>> {
    let mut errors = Vec::new();
    fn template(
        text: &str,
        field: &str,
        topic: bool,
        errors: &mut Vec<AuthzError>,
        err: &dyn Fn(&str, String) -> AuthzError,
    ) -> Option<Template> {
        let parsed = if topic {
            topic_template(text)
        } else {
            Template::parse(text)
        };
        parsed
            .map_err(|reason| errors.push(err(field, reason)))
            .ok()
    }
    fn list(
        v: Option<&Value>,
        field: &str,
        errors: &mut Vec<AuthzError>,
        err: &dyn Fn(&str, String) -> AuthzError,
    ) -> Vec<String> {
        strings(v, field, err).unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        })
    }
    let Some(p) = r.get("principals") else {
        return Err(vec![err(&format!("{at}.principals"), "required".into())]);
    };
    let client_ids_raw = list(
        p.get("clientIds"),
        &format!("{at}.principals.clientIds"),
        &mut errors,
        err,
    );
    let usernames_raw = list(
        p.get("usernames"),
        &format!("{at}.principals.usernames"),
        &mut errors,
        err,
    );
    let mut attributes = Vec::new();
    match p.get("attributes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(maps)) => {
            for (j, m) in maps.iter().enumerate() {
                match m.as_object() {
                    Some(obj) => {
                        let mut map = BTreeMap::new();
                        for (k, v) in obj {
                            match v.as_str() {
                                Some(s) => {
                                    map.insert(k.clone(), s.to_string());
                                }
                                None => errors.push(err(
                                    &format!("{at}.principals.attributes[{j}].{k}"),
                                    "must be a string".into(),
                                )),
                            }
                        }
                        attributes.push(map);
                    }
                    None => errors.push(err(
                        &format!("{at}.principals.attributes[{j}]"),
                        "must be a map of strings".into(),
                    )),
                }
            }
        }
        Some(_) => errors.push(err(
            &format!("{at}.principals.attributes"),
            "must be a list of maps".into(),
        )),
    }
    let client_ids = client_ids_raw
        .iter()
        .enumerate()
        .filter_map(|(j, c)| {
            template(
                c,
                &format!("{at}.principals.clientIds[{j}]"),
                false,
                &mut errors,
                err,
            )
        })
        .collect();
    let usernames = usernames_raw
        .iter()
        .enumerate()
        .filter_map(|(j, c)| {
            template(
                c,
                &format!("{at}.principals.usernames[{j}]"),
                false,
                &mut errors,
                err,
            )
        })
        .collect();

    let mut connect = None;
    let mut publish = Vec::new();
    let mut subscribe = Vec::new();
    let resources = match r.get("brokerResources") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => {
            errors.push(err(
                &format!("{at}.brokerResources"),
                "must be a list".into(),
            ));
            Vec::new()
        }
    };
    for (j, res) in resources.iter().enumerate() {
        let rat = format!("{at}.brokerResources[{j}]");
        let method = res.get("method").and_then(Value::as_str).unwrap_or("");
        let topics = list(
            res.get("topics"),
            &format!("{rat}.topics"),
            &mut errors,
            err,
        );
        let ids = list(
            res.get("clientIds"),
            &format!("{rat}.clientIds"),
            &mut errors,
            err,
        );
        match method {
            "Connect" => {
                if !topics.is_empty() {
                    errors.push(err(
                        &format!("{rat}.topics"),
                        "Connect takes no topics".into(),
                    ));
                }
                let patterns: &mut Vec<ClientIdPattern> = connect.get_or_insert_with(Vec::new);
                let mut any = ids.is_empty();
                for (k, id) in ids.iter().enumerate() {
                    let (body, prefix) = match id.strip_suffix('*') {
                        Some(b) => (b, true),
                        None => (id.as_str(), false),
                    };
                    if body.contains('*') {
                        errors.push(err(
                            &format!("{rat}.clientIds[{k}]"),
                            "'*' is only allowed at the end".into(),
                        ));
                        continue;
                    }
                    if body.is_empty() && prefix {
                        any = true;
                        continue;
                    }
                    if let Some(t) = template(
                        body,
                        &format!("{rat}.clientIds[{k}]"),
                        false,
                        &mut errors,
                        err,
                    ) {
                        patterns.push(ClientIdPattern {
                            template: t,
                            prefix,
                        });
                    }
                }
                if any {
                    // A Connect without restriction: any client id.
                    patterns.clear();
                    connect = Some(Vec::new());
                }
            }
            "Publish" | "Subscribe" => {
                if topics.is_empty() {
                    errors.push(err(
                        &format!("{rat}.topics"),
                        format!("required for {method}"),
                    ));
                }
                if !ids.is_empty() {
                    errors.push(err(
                        &format!("{rat}.clientIds"),
                        "only meaningful for Connect".into(),
                    ));
                }
                for (k, t) in topics.iter().enumerate() {
                    if let Some(t) =
                        template(t, &format!("{rat}.topics[{k}]"), true, &mut errors, err)
                    {
                        if method == "Publish" {
                            publish.push(t);
                        } else {
                            subscribe.push(t);
                        }
                    }
                }
            }
            other => errors.push(err(
                &format!("{rat}.method"),
                format!("{other:?}: expected Connect, Publish or Subscribe"),
            )),
        }
    }
    let mut state_store = Vec::new();
    if let Some(Value::Array(items)) = r.get("stateStoreResources") {
        for (j, s) in items.iter().enumerate() {
            let sat = format!("{at}.stateStoreResources[{j}]");
            let key_type = match s.get("keyType").and_then(Value::as_str) {
                None | Some("Pattern") => KeyType::Pattern,
                Some("String") => KeyType::String,
                Some("Binary") => KeyType::Binary,
                Some(o) => {
                    errors.push(err(
                        &format!("{sat}.keyType"),
                        format!("{o:?}: expected Pattern, String or Binary"),
                    ));
                    continue;
                }
            };
            let access = match s.get("method").and_then(Value::as_str) {
                Some("Read") => KeyAccess::Read,
                Some("Write") => KeyAccess::Write,
                Some("ReadWrite") => KeyAccess::ReadWrite,
                o => {
                    errors.push(err(
                        &format!("{sat}.method"),
                        format!("{o:?}: expected Read, Write or ReadWrite"),
                    ));
                    continue;
                }
            };
            let keys = list(s.get("keys"), &format!("{sat}.keys"), &mut errors, err);
            if keys.is_empty() {
                errors.push(err(&format!("{sat}.keys"), "required".into()));
            }
            for (k, key) in keys.iter().enumerate() {
                if key_type == KeyType::Pattern
                    && let Err(reason) = Template::parse(key)
                {
                    errors.push(err(&format!("{sat}.keys[{k}]"), reason));
                }
            }
            state_store.push(StateStoreRule {
                key_type,
                access,
                keys,
            });
        }
    }
    if errors.is_empty() {
        Ok(Rule {
            principals: Principals {
                client_ids,
                usernames,
                attributes,
            },
            connect,
            publish,
            subscribe,
            state_store,
        })
    } else {
        Err(errors)
    }
}

/// The topics one client may publish to and the filters it may subscribe to, as rendered for
/// it at CONNECT. Both authorization models (AIO rules, Event Grid topic spaces) end here.
#[derive(Default)]
pub struct TopicGrants {
    /// Granted PUBLISH filters; a topic is allowed when any matches.
    publish: SubscriptionTrie<String, ()>,
    /// Granted SUBSCRIBE filters; a requested filter must be covered by one.
    subscribe: Vec<String>,
}

impl TopicGrants {
    /// Adds a PUBLISH filter; a rendered value that is not a valid filter grants nothing.
    pub fn grant_publish(&mut self, filter: String) {
        if topic::validate_topic_filter(&filter).is_ok() {
            self.publish.insert(&filter, filter.clone(), ());
        }
    }

    /// Adds a SUBSCRIBE filter; an invalid one grants nothing, a repeated one is kept once.
    pub fn grant_subscribe(&mut self, filter: String) {
        if topic::validate_topic_filter(&filter).is_ok() && !self.subscribe.contains(&filter) {
            self.subscribe.push(filter);
        }
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        let mut allowed = false;
        self.publish.for_each_match(topic, |_, _| allowed = true);
        allowed
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        // Shared subscriptions are judged on the filter they share.
        let inner = match topic::parse_shared(filter) {
            Ok(Some((_, inner))) => inner,
            Ok(None) => filter,
            Err(_) => return false,
        };
        if topic::validate_topic_filter(inner).is_err() {
            return false;
        }
        self.subscribe
            .iter()
            .any(|allowed| topic::covers(allowed, inner))
    }
}

/// What one connected client may do, compiled at CONNECT. Checked per packet, locally.
pub struct ClientPermissions {
    grants: TopicGrants,
    /// Decisions per topic (`cache: Enabled`), bounded so unique-per-message topics cannot
    /// grow it without limit.
    cache: Option<Mutex<HashMap<String, bool>>>,
}

/// Decisions answered from a client's cache, and decisions that walked the compiled rules:
/// exported as `gatehouse_authorization_cache_hits` / `gatehouse_authorization_evaluations`
/// so that an operator can see the cache work (scenario 41). Process-wide, like the metrics.
pub static CACHE_HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static RULE_EVALUATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The cache forgets everything beyond this many topics.
const CACHE_LIMIT: usize = 4096;

impl ClientPermissions {
    pub fn may_publish(&self, topic: &str) -> bool {
        if let Some(cache) = &self.cache
            && let Some(&hit) = cache.lock().get(topic)
        {
            CACHE_HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return hit;
        }
        RULE_EVALUATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let allowed = self.grants.may_publish(topic);
        if let Some(cache) = &self.cache {
            let mut c = cache.lock();
            if c.len() >= CACHE_LIMIT {
                c.clear();
            }
            c.insert(topic.to_string(), allowed);
        }
        allowed
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.grants.may_subscribe(filter)
    }
}

impl crate::auth::Permissions for ClientPermissions {
    fn may_publish(&self, topic: &str) -> bool {
        ClientPermissions::may_publish(self, topic)
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        ClientPermissions::may_subscribe(self, filter)
    }
}

/// A port's `BrokerAuthorization`. The policy can be swapped at runtime (a configuration
/// update); connections keep the permissions compiled at their CONNECT until they reconnect,
/// which is why an update disconnects the port's clients.
pub struct AbacAuthorizer {
    policy: parking_lot::RwLock<Arc<AbacPolicy>>,
}

impl AbacAuthorizer {
    pub fn new(policy: Arc<AbacPolicy>) -> AbacAuthorizer {
        AbacAuthorizer {
            policy: parking_lot::RwLock::new(policy),
        }
    }

    pub fn replace(&self, policy: Arc<AbacPolicy>) {
        *self.policy.write() = policy;
    }
}

impl crate::auth::Authorizer for AbacAuthorizer {
    fn connect(
        &self,
        client_id: &str,
        principal: &Principal,
    ) -> Result<Arc<dyn crate::auth::Permissions>, String> {
        let policy = self.policy.read().clone();
        policy
            .connect(client_id, principal)
            .map(|p| Arc::new(p) as Arc<dyn crate::auth::Permissions>)
    }
}

/// A compiled `BrokerAuthorization` of either model: AIO rules (`spec.authorizationPolicies`)
/// or Event Grid topic spaces (`spec.eventGrid`, [`crate::eventgrid`]).
#[derive(Debug, Clone)]
pub enum Policy {
    Abac(Arc<AbacPolicy>),
    EventGrid(Arc<crate::eventgrid::EventGridPolicy>),
}

impl Policy {
    /// Compiles `spec` as the model it holds; a spec holding both is an error, because which
    /// one would apply is a guess the operator should not have to make.
    pub fn compile(name: &str, spec: &Value) -> Result<Policy, Vec<AuthzError>> {
        match (spec.get("authorizationPolicies"), spec.get("eventGrid")) {
            (Some(_), Some(_)) => Err(vec![AuthzError {
                policy: name.to_string(),
                field: "spec.eventGrid".to_string(),
                reason: "cannot be combined with spec.authorizationPolicies: a \
                         BrokerAuthorization holds either AIO rules or Event Grid topic spaces"
                    .to_string(),
            }]),
            (None, Some(_)) => crate::eventgrid::EventGridPolicy::compile(name, spec)
                .map(|p| Policy::EventGrid(Arc::new(p))),
            (_, None) => AbacPolicy::compile(name, spec).map(|p| Policy::Abac(Arc::new(p))),
        }
    }

    /// The port's authorizer for this policy.
    pub fn authorizer(&self) -> Arc<dyn crate::auth::Authorizer> {
        match self {
            Policy::Abac(p) => Arc::new(AbacAuthorizer::new(p.clone())),
            Policy::EventGrid(p) => Arc::new(crate::eventgrid::EventGridAuthorizer::new(p.clone())),
        }
    }
}

/// The policies of a configuration, by name.
pub fn compile_all(
    authorizations: &BTreeMap<String, broker_config::AuthorizationResource>,
) -> Result<BTreeMap<String, Policy>, Vec<AuthzError>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, doc) in authorizations {
        match Policy::compile(name, &doc.resource.spec) {
            Ok(p) => {
                out.insert(name.clone(), p);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
