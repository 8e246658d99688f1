//! The `ServiceAccountToken` method: Kubernetes bound service-account tokens (`K8S-SAT`).
//!
//! Relevance (broker-spec §2.2): a v5 CONNECT or AUTH whose Authentication Method is `K8S-SAT`
//! (token in Authentication Data), or a CONNECT (3.1.1 or v5 without a method) whose username is
//! exactly `K8S-SAT` (token as password). The AIO docs say "username starting with K8S-SAT";
//! every AIO sample uses exactly `K8S-SAT`, and a prefix match would capture ordinary usernames
//! such as `K8S-SATURN`, so only the exact name counts.
//!
//! Validity, chosen by `verification`:
//! - `TokenReview` (default): the apiserver's `authentication.k8s.io/v1` TokenReview with the
//!   configured audiences; allowed when authenticated and `status.audiences` shares one with them.
//! - `OfflineJwks`: the JWT is verified here against the cluster's OIDC discovery keys
//!   ([`offline`]), optionally with a TokenReview the first time a token is seen.
//!
//! The principal is `system:serviceaccount:NS:NAME`, never the MQTT username (§2.3: it is not
//! verified); attributes come from the ServiceAccount's `aio-broker-auth/` annotations (and the
//! preview prefix `aio-mq-broker-auth/`); the expiry is the token's `exp`. Apiserver trouble is
//! [`Decision::Transient`] (CONNACK 0x88, AUTH 0x18 on re-authentication), never a denial.
//!
//! This module does not talk HTTP itself ([`kube_api`] does, through `kube`) and holds no
//! connections: the frontend enforces the expiry.

mod kube_api;
mod offline;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::Value;

pub use kube_api::KubeSource;

use crate::policy::{BuildContext, PolicyError};
use crate::{Credentials, Decision, DecisionFuture, Grant, Kind, Principal};

use kube_api::{ApiError, KubeApi};
use offline::{OfflineVerifier, Verified};

/// The v5 Authentication Method, and the 3.1.1 username, that select this method.
pub const METHOD: &str = "K8S-SAT";
/// Annotation prefixes whose entries become attributes; the first is the current one and wins
/// over the preview prefix when both name the same attribute.
pub const ANNOTATION_PREFIXES: [&str; 2] = ["aio-broker-auth/", "aio-mq-broker-auth/"];
/// Projected tokens are about 1 KiB; anything far larger is not one, and is not worth sending on.
const MAX_TOKEN_LEN: usize = 16 * 1024;
const SA_PREFIX: &str = "system:serviceaccount:";

/// How tokens are checked (`serviceAccountTokenSettings.verification`, a Gatehouse option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    TokenReview,
    OfflineJwks { token_review_on_first_use: bool },
}

/// Validated `serviceAccountTokenSettings`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub audiences: Vec<String>,
    pub verification: Verification,
}

/// Timing knobs; the defaults are for production, tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Bound on one apiserver call, client set-up included.
    pub request_timeout: Duration,
    /// The JWKS is refetched for an unknown `kid` at most this often.
    pub jwks_min_refetch: Duration,
    /// ServiceAccount annotations are re-read after this long; a stale copy is used while the
    /// apiserver cannot be reached.
    pub annotation_ttl: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            // Below the frontend's 3 s budget for a whole decision, so that a hanging
            // apiserver yields this method's Transient (with its reason) rather than the
            // frontend's own timeout.
            request_timeout: Duration::from_secs(2),
            jwks_min_refetch: Duration::from_secs(10),
            annotation_ttl: Duration::from_secs(30),
        }
    }
}

const KNOWN_FIELDS: [&str; 3] = ["audiences", "verification", "tokenReviewOnFirstUse"];

/// Reads `serviceAccountTokenSettings`; `field` is its path, for errors.
pub fn parse_settings(
    cx: &BuildContext<'_>,
    settings: &Value,
    field: &str,
) -> Result<Settings, PolicyError> {
    let Some(obj) = settings.as_object() else {
        return Err(cx.error(
            field,
            "required: an object with audiences (at least one audience the tokens must carry)",
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(cx.error(
            format!("{field}.{unknown}"),
            format!("unknown field; expected one of {}", KNOWN_FIELDS.join(", ")),
        ));
    }
    let audiences_field = format!("{field}.audiences");
    let audiences = match obj.get("audiences") {
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if !s.is_empty() => out.push(s.to_string()),
                    _ => {
                        return Err(cx.error(
                            format!("{audiences_field}[{i}]"),
                            "an audience must be a non-empty string",
                        ));
                    }
                }
            }
            out
        }
        _ => {
            return Err(cx.error(
                audiences_field,
                "required: a list of at least one audience (e.g. [aio-internal])",
            ));
        }
    };
    let on_first_use_field = format!("{field}.tokenReviewOnFirstUse");
    let on_first_use = match obj.get("tokenReviewOnFirstUse") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(cx.error(on_first_use_field, "must be true or false")),
    };
    let verification = match obj.get("verification") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "TokenReview" => None,
        Some(Value::String(s)) if s == "OfflineJwks" => Some(()),
        Some(other) => {
            return Err(cx.error(
                format!("{field}.verification"),
                format!("{other} is not a verification; expected TokenReview or OfflineJwks"),
            ));
        }
    };
    let verification = match (verification, on_first_use) {
        (None, None) => Verification::TokenReview,
        (None, Some(_)) => {
            return Err(cx.error(
                on_first_use_field,
                "only applies with verification: OfflineJwks (TokenReview reviews every token)",
            ));
        }
        (Some(()), first) => Verification::OfflineJwks {
            token_review_on_first_use: first.unwrap_or(false),
        },
    };
    Ok(Settings {
        audiences,
        verification,
    })
}

/// Builds the method with the Kubernetes client inferred from the environment (in-cluster, or
/// `KUBECONFIG` / `~/.kube/config`), created on first use.
pub fn build(
    cx: &BuildContext<'_>,
    settings: &Value,
    field: &str,
) -> Result<Box<dyn crate::Method>, PolicyError> {
    let settings = parse_settings(cx, settings, field)?;
    Ok(Box::new(ServiceAccountToken::new(
        settings,
        KubeSource::Infer,
        Tuning::default(),
    )))
}

/// The `ServiceAccountToken` method.
pub struct ServiceAccountToken {
    settings: Settings,
    api: KubeApi,
    offline: Option<OfflineVerifier>,
    tuning: Tuning,
    annotations: Mutex<HashMap<(String, String), CachedAnnotations>>,
    /// Tokens that already had their first-use TokenReview (by `jti`, else a hash), with `exp`.
    reviewed: Mutex<HashMap<String, u64>>,
}

struct CachedAnnotations {
    attributes: Arc<BTreeMap<String, String>>,
    fetched: Instant,
}

/// Bounds both caches: beyond this, expired entries go, then everything (which only costs
/// apiserver calls, never a wrong answer).
const CACHE_CAP: usize = 10_000;

impl ServiceAccountToken {
    pub fn new(settings: Settings, source: KubeSource, tuning: Tuning) -> ServiceAccountToken {
        let offline = match settings.verification {
            Verification::TokenReview => None,
            Verification::OfflineJwks { .. } => Some(OfflineVerifier::new(tuning.jwks_min_refetch)),
        };
        ServiceAccountToken {
            settings,
            api: KubeApi::new(source, tuning.request_timeout),
            offline,
            tuning,
            annotations: Mutex::new(HashMap::new()),
            reviewed: Mutex::new(HashMap::new()),
        }
    }

    async fn decide(&self, credentials: &Credentials) -> Decision {
        if credentials.kind == Kind::Continue {
            // K8S-SAT is single-step: this method never answers Continue, so the chain cannot
            // route an AUTH 0x18 here legitimately.
            return Decision::deny(0x82, "K8S-SAT has no multi-step exchange");
        }
        let Some(token) = presented_token(credentials) else {
            return Decision::NotRelevant;
        };
        let token = match token {
            Ok(t) => t,
            Err(reason) => return Decision::not_authorized(reason),
        };
        let identity = match self.settings.verification {
            Verification::TokenReview => self.review(token).await,
            Verification::OfflineJwks {
                token_review_on_first_use,
            } => self.verify_offline(token, token_review_on_first_use).await,
        };
        let identity = match identity {
            Ok(id) => id,
            Err(decision) => return decision,
        };
        let attributes = match self.attributes(&identity.namespace, &identity.name).await {
            Ok(a) => a,
            Err(decision) => return decision,
        };
        tracing::debug!(
            serviceaccount = %identity.username(),
            client_id = %credentials.client_id,
            exp = identity.exp,
            "K8S-SAT accepted"
        );
        Decision::Allow(Grant {
            principal: Principal {
                username: Some(identity.username()),
                attributes: (*attributes).clone(),
            },
            expiry: Some(UNIX_EPOCH + Duration::from_secs(identity.exp)),
            data: None,
            can_reauthenticate: true,
        })
    }

    /// TokenReview mode. The expiry is read from the token's payload without checking its
    /// signature: the apiserver has just vouched for this exact token, so its `exp` is the one
    /// the apiserver enforces.
    async fn review(&self, token: &str) -> Result<Identity, Decision> {
        let claims = offline::unverified_claims(token)
            .map_err(|e| Decision::not_authorized(format!("K8S-SAT token: {e}")))?;
        // Checked first: such a token can never pass, so the apiserver is not asked.
        let Some(exp) = claims.exp else {
            return Err(Decision::not_authorized(
                "K8S-SAT token has no exp: legacy ServiceAccount Secret tokens are not accepted; \
                 use a projected (bound) token",
            ));
        };
        let username = self.token_review(token).await?;
        let (namespace, name) = parse_sa_username(&username).ok_or_else(|| {
            Decision::not_authorized("the token does not belong to a service account")
        })?;
        Ok(Identity {
            namespace,
            name,
            exp,
        })
    }

    /// One TokenReview; `Ok(username)` when the apiserver authenticated the token for one of our
    /// audiences.
    async fn token_review(&self, token: &str) -> Result<String, Decision> {
        let status = self
            .api
            .token_review(token, &self.settings.audiences)
            .await
            .map_err(|e| transient("TokenReview", e))?;
        if !status.authenticated {
            return Err(Decision::not_authorized(
                "K8S-SAT token rejected by the Kubernetes API (TokenReview)",
            ));
        }
        // An authenticated review with no audiences means "valid for the apiserver itself"
        // (TokenReview docs), which is not one of ours.
        if !status
            .audiences
            .iter()
            .any(|a| self.settings.audiences.contains(a))
        {
            return Err(Decision::not_authorized(
                "K8S-SAT token audience is not accepted here",
            ));
        }
        status.username.ok_or_else(|| {
            Decision::not_authorized("TokenReview authenticated the token without a user")
        })
    }

    async fn verify_offline(
        &self,
        token: &str,
        review_first_use: bool,
    ) -> Result<Identity, Decision> {
        let Some(verifier) = &self.offline else {
            return Err(Decision::Transient {
                reason: "offline verification is not set up".into(),
            });
        };
        let Verified { claims, seen_key } = verifier
            .verify(&self.api, token, &self.settings.audiences)
            .await?;
        let (namespace, name) = claims
            .sub
            .as_deref()
            .and_then(parse_sa_username)
            .ok_or_else(|| {
                Decision::not_authorized("K8S-SAT token sub is not system:serviceaccount:NS:NAME")
            })?;
        let exp = claims.exp.unwrap_or(0);
        if review_first_use && !self.reviewed.lock().contains_key(&seen_key) {
            let username = self.token_review(token).await?;
            if parse_sa_username(&username) != Some((namespace.clone(), name.clone())) {
                return Err(Decision::not_authorized(
                    "TokenReview names another identity than the token",
                ));
            }
            let now = unix_now();
            let mut reviewed = self.reviewed.lock();
            if reviewed.len() >= CACHE_CAP {
                reviewed.retain(|_, exp| *exp > now);
                if reviewed.len() >= CACHE_CAP {
                    reviewed.clear();
                }
            }
            reviewed.insert(seen_key, exp);
        }
        Ok(Identity {
            namespace,
            name,
            exp,
        })
    }

    /// The ServiceAccount's annotation attributes, cached for `annotation_ttl`; a stale copy
    /// serves while the apiserver is away.
    async fn attributes(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<BTreeMap<String, String>>, Decision> {
        let key = (namespace.to_string(), name.to_string());
        let cached = self.annotations.lock().get(&key).map(|c| {
            (
                c.attributes.clone(),
                c.fetched.elapsed() < self.tuning.annotation_ttl,
            )
        });
        if let Some((attributes, true)) = &cached {
            return Ok(attributes.clone());
        }
        match self.api.service_account_annotations(namespace, name).await {
            Ok(annotations) => {
                let attributes = Arc::new(attributes_from_annotations(&annotations));
                let mut cache = self.annotations.lock();
                if cache.len() >= CACHE_CAP {
                    let ttl = self.tuning.annotation_ttl;
                    cache.retain(|_, c| c.fetched.elapsed() < ttl);
                    if cache.len() >= CACHE_CAP {
                        cache.clear();
                    }
                }
                cache.insert(
                    key,
                    CachedAnnotations {
                        attributes: attributes.clone(),
                        fetched: Instant::now(),
                    },
                );
                Ok(attributes)
            }
            Err(ApiError::NotFound) => {
                self.annotations.lock().remove(&key);
                Err(Decision::not_authorized(format!(
                    "ServiceAccount {namespace}/{name} does not exist"
                )))
            }
            Err(e) => match cached {
                Some((attributes, _)) => {
                    tracing::warn!(
                        serviceaccount = %format!("{namespace}/{name}"),
                        error = %e,
                        "cannot refresh ServiceAccount annotations; using the cached ones"
                    );
                    Ok(attributes)
                }
                None => Err(transient(
                    &format!("reading ServiceAccount {namespace}/{name}"),
                    e,
                )),
            },
        }
    }
}

impl crate::Method for ServiceAccountToken {
    fn name(&self) -> &'static str {
        "ServiceAccountToken"
    }

    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> DecisionFuture<'a> {
        Box::pin(self.decide(credentials))
    }
}

/// Who a verified token belongs to.
struct Identity {
    namespace: String,
    name: String,
    exp: u64,
}

impl Identity {
    fn username(&self) -> String {
        format!("{SA_PREFIX}{}:{}", self.namespace, self.name)
    }
}

fn transient(what: &str, e: ApiError) -> Decision {
    tracing::warn!(error = %e, "K8S-SAT: {what} failed");
    Decision::Transient {
        reason: format!("Kubernetes API unavailable ({what}): {e}"),
    }
}

/// `None`: not for this method. `Some(Err)`: for this method but unusable (relevant and invalid:
/// denied, no fall-through).
fn presented_token(c: &Credentials) -> Option<Result<&str, String>> {
    let secret = match c.method.as_deref() {
        Some(METHOD) => c.data.as_ref(),
        // Another enhanced method: whatever the username says, the client is doing that one.
        Some(_) => return None,
        None if c.kind == Kind::Connect && c.username.as_deref() == Some(METHOD) => {
            c.password.as_ref()
        }
        None => return None,
    };
    let bytes = secret.map(|s| &s.0[..]).unwrap_or_default();
    let Ok(token) = std::str::from_utf8(bytes) else {
        return Some(Err("K8S-SAT token is not UTF-8".into()));
    };
    // Tokens read from a file often end with a newline.
    let token = token.trim_matches(|c: char| c.is_ascii_whitespace());
    if token.is_empty() {
        return Some(Err("K8S-SAT without a token".into()));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Some(Err("K8S-SAT token is too long".into()));
    }
    Some(Ok(token))
}

/// `system:serviceaccount:NS:NAME` → (NS, NAME).
fn parse_sa_username(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix(SA_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    if ns.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((ns.to_string(), name.to_string()))
}

/// `aio-broker-auth/group: g1` → `group=g1`; the current prefix wins over the preview one.
pub fn attributes_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for prefix in ANNOTATION_PREFIXES.iter().rev() {
        for (k, v) in annotations {
            if let Some(attr) = k.strip_prefix(prefix)
                && !attr.is_empty()
            {
                out.insert(attr.to_string(), v.clone());
            }
        }
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
