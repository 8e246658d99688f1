//! Offline verification of bound service-account tokens against the cluster's
//! ServiceAccountIssuerDiscovery keys (`verification: OfflineJwks`), and unverified reading of a
//! token's claims.
//!
//! Keys come from the apiserver the Kubernetes client points at: `/.well-known/openid-configuration`
//! gives the `issuer` and `jwks_uri`, and the JWKS is fetched from the *path* of `jwks_uri` on that
//! same apiserver. The token's own `iss` is never used as a URL, so a forged token cannot make
//! the service fetch from an address of its choosing. The key set is cached and refetched when a
//! token names an unknown `kid`, at most once per `min_refetch`.
//!
//! Checked: `alg` (RSA or ECDSA only) and `kid`, the signature, `iss` = the discovery issuer,
//! `aud` ∩ audiences, `exp` (no leeway: the frontend closes the connection at `exp` anyway),
//! `nbf` (60 s of clock skew), and `sub`. Legacy Secret tokens (`iss: kubernetes/serviceaccount`,
//! no `exp`) are refused. Not noticed offline: a deleted pod or ServiceAccount (TokenReview
//! does; `tokenReviewOnFirstUse` narrows that gap).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use parking_lot::RwLock;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::kube_api::{ApiError, KubeApi};
use crate::Decision;

/// The issuer of legacy (Secret-based, non-expiring) service-account tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const NBF_SKEW_SECS: u64 = 60;
const ALLOWED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The claims this method reads.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub jti: Option<String>,
    /// The `kubernetes.io` claim of bound tokens: namespace and service-account name.
    pub k8s_namespace: Option<String>,
    pub k8s_name: Option<String>,
}

impl Claims {
    fn from_json(v: &Value) -> Claims {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        // Some issuers write numeric dates as floats; whole seconds are what counts.
        let n = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f.max(0.0) as u64)))
        };
        let k8s = v.get("kubernetes.io");
        Claims {
            iss: s("iss"),
            sub: s("sub"),
            exp: n("exp"),
            nbf: n("nbf"),
            jti: s("jti"),
            k8s_namespace: k8s
                .and_then(|k| k.get("namespace"))
                .and_then(Value::as_str)
                .map(str::to_string),
            k8s_name: k8s
                .and_then(|k| k.pointer("/serviceaccount/name"))
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }
}

/// The payload of a compact JWT, **not verified**. Used only where something else vouches for
/// the token (TokenReview), or before verification to reject what can never pass.
pub fn unverified_claims(token: &str) -> Result<Claims, String> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (expected header.payload.signature)".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the JWT payload is not base64url".to_string())?;
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|_| "the JWT payload is not JSON".to_string())?;
    if !json.is_object() {
        return Err("the JWT payload is not a JSON object".into());
    }
    Ok(Claims::from_json(&json))
}

/// A verified token: its claims and the key under which its first use is remembered.
pub struct Verified {
    pub claims: Claims,
    /// `jti:<jti>` when the token has one, else `sha256:<hash of the token>`.
    pub seen_key: String,
}

struct KeySet {
    issuer: String,
    jwks: JwkSet,
}

pub struct OfflineVerifier {
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Serialises fetches; holds when the last one was attempted.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
}

impl OfflineVerifier {
    pub fn new(min_refetch: Duration) -> OfflineVerifier {
        OfflineVerifier {
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(None),
            min_refetch,
        }
    }

    pub async fn verify(
        &self,
        api: &KubeApi,
        token: &str,
        audiences: &[String],
    ) -> Result<Verified, Decision> {
        let deny = |why: &str| Decision::not_authorized(format!("K8S-SAT token: {why}"));
        let unverified = unverified_claims(token).map_err(|e| deny(&e))?;
        if unverified.iss.as_deref() == Some(LEGACY_ISSUER) {
            return Err(deny(
                "legacy ServiceAccount Secret tokens are not accepted; use a projected (bound) token",
            ));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| deny("bad JWT header"))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(deny(&format!("alg {:?} is not accepted", header.alg)));
        }
        let Some(kid) = header.kid.as_deref() else {
            return Err(deny("no kid in the header"));
        };
        let keys = self.keys_for(api, kid).await?;
        let Some(jwk) = keys.jwks.find(kid) else {
            return Err(deny("signed with an unknown key"));
        };
        if let Some(alg) = jwk.common.key_algorithm
            && alg != KeyAlgorithm::from(header.alg)
        {
            return Err(deny("alg does not match the signing key"));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| deny("the signing key is unusable"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[keys.issuer.as_str()]);
        validation.set_audience(audiences);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            deny(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::InvalidAudience => "audience is not accepted here",
                ErrorKind::InvalidIssuer => "issuer is not this cluster's",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::MissingRequiredClaim(_) => {
                    "a required claim (exp, iss, aud, sub) is missing"
                }
                ErrorKind::InvalidAlgorithm => "alg does not match the signing key",
                _ => "invalid",
            })
        })?;
        let claims = Claims::from_json(&data.claims);
        if let Some(nbf) = claims.nbf
            && nbf > super::unix_now() + NBF_SKEW_SECS
        {
            return Err(deny("not valid yet (nbf)"));
        }
        // Bound tokens repeat namespace and name in `kubernetes.io`; they must agree with `sub`.
        if let (Some(sub), Some(ns), Some(name)) =
            (&claims.sub, &claims.k8s_namespace, &claims.k8s_name)
            && *sub != format!("{}{ns}:{name}", super::SA_PREFIX)
        {
            return Err(deny("sub and kubernetes.io disagree"));
        }
        let seen_key = match &claims.jti {
            Some(jti) if !jti.is_empty() => format!("jti:{jti}"),
            _ => {
                let digest = Sha256::digest(token.as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        Ok(Verified { claims, seen_key })
    }

    /// A key set that knows `kid`, fetching (or refetching) it when needed and allowed.
    async fn keys_for(&self, api: &KubeApi, kid: &str) -> Result<Arc<KeySet>, Decision> {
        if let Some(keys) = self.cached_with(kid) {
            return Ok(keys);
        }
        let mut last_attempt = self.fetch.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(keys) = self.cached_with(kid) {
            return Ok(keys);
        }
        if let Some(at) = *last_attempt
            && at.elapsed() < self.min_refetch
        {
            return Err(Decision::Transient {
                reason: "K8S-SAT signing key not known; the cluster's keys were fetched moments \
                         ago, try again shortly"
                    .into(),
            });
        }
        *last_attempt = Some(Instant::now());
        let fetched = fetch_keys(api).await.map_err(|e| {
            tracing::warn!(error = %e, "K8S-SAT: fetching the service-account issuer keys failed");
            Decision::Transient {
                reason: format!("Kubernetes API unavailable (issuer keys): {e}"),
            }
        })?;
        let fetched = Arc::new(fetched);
        *self.keys.write() = Some(fetched.clone());
        if fetched.jwks.find(kid).is_none() {
            return Err(Decision::not_authorized(
                "K8S-SAT token: signed with an unknown key",
            ));
        }
        Ok(fetched)
    }

    fn cached_with(&self, kid: &str) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .as_ref()
            .filter(|k| k.jwks.find(kid).is_some())
            .cloned()
    }
}

async fn fetch_keys(api: &KubeApi) -> Result<KeySet, ApiError> {
    let discovery = api.get_json(DISCOVERY_PATH).await?;
    let issuer = discovery
        .get("issuer")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::Other("OIDC discovery document has no issuer".into()))?
        .to_string();
    let jwks_uri = discovery
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::Other("OIDC discovery document has no jwks_uri".into()))?;
    let uri: http::Uri = jwks_uri
        .parse()
        .map_err(|_| ApiError::Other("OIDC discovery jwks_uri is not a URI".into()))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| ApiError::Other("OIDC discovery jwks_uri has no path".into()))?;
    let jwks = api.get_json(path).await?;
    // Keys of kinds this library cannot read are skipped rather than failing the whole set.
    let keys: Vec<Jwk> = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::Other("the JWKS has no keys array".into()))?
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .collect();
    Ok(KeySet {
        issuer,
        jwks: JwkSet { keys },
    })
}
