//! The Kubernetes API calls the `ServiceAccountToken` method makes, through `kube`: TokenReview,
//! ServiceAccount reads, and the OIDC discovery documents of the service-account issuer.
//!
//! The client is created lazily, on the first call, because `kube::Client` needs a Tokio
//! runtime and policies are compiled outside one; a failed creation is retried on the next call.
//! Every call is bounded by one timeout, client creation included. This module decides nothing:
//! it reports what the apiserver said, and classifies failures as [`ApiError`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::Value;
use tokio::sync::OnceCell;

/// Where the Kubernetes client comes from.
pub enum KubeSource {
    /// `kube::Config::infer()`: `KUBECONFIG` or `~/.kube/config`, else the in-cluster service
    /// account (`KUBERNETES_SERVICE_HOST` and the mounted token and CA).
    Infer,
    /// An explicit configuration, e.g. `kube::Config::new("http://127.0.0.1:PORT")` in tests.
    Config(Box<kube::Config>),
    /// A ready client (e.g. over a `tower_test` mock service).
    Client(kube::Client),
}

/// Why a call produced no answer. The token is never part of it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the object does not exist")]
    NotFound,
    #[error("no Kubernetes API configuration: {0}")]
    NoConfig(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP {code}: {message}")]
    Status { code: u16, message: String },
    #[error("{0}")]
    Other(String),
}

/// What a TokenReview said.
#[derive(Debug, Default)]
pub struct ReviewStatus {
    pub authenticated: bool,
    pub username: Option<String>,
    pub audiences: Vec<String>,
}

pub struct KubeApi {
    source: KubeSource,
    client: OnceCell<kube::Client>,
    timeout: Duration,
}

impl KubeApi {
    pub fn new(source: KubeSource, timeout: Duration) -> KubeApi {
        KubeApi {
            source,
            client: OnceCell::new(),
            timeout,
        }
    }

    async fn client(&self) -> Result<kube::Client, ApiError> {
        self.client
            .get_or_try_init(|| async {
                let config = match &self.source {
                    KubeSource::Client(c) => return Ok(c.clone()),
                    KubeSource::Config(c) => (**c).clone(),
                    KubeSource::Infer => kube::Config::infer()
                        .await
                        .map_err(|e| ApiError::NoConfig(e.to_string()))?,
                };
                kube::Client::try_from(tune(config, self.timeout))
                    .map_err(|e| ApiError::NoConfig(e.to_string()))
            })
            .await
            .cloned()
    }

    /// Runs `f` with the client, bounded by the timeout.
    async fn bounded<T, F>(&self, f: impl FnOnce(kube::Client) -> F) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let call = async {
            let client = self.client().await?;
            f(client).await
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(ApiError::Timeout(self.timeout)))
    }

    /// POST `authentication.k8s.io/v1` TokenReview with the token and our audiences.
    pub async fn token_review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewStatus, ApiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(audiences.to_vec()),
            },
            ..TokenReview::default()
        };
        let out = self
            .bounded(|client| async move {
                Api::<TokenReview>::all(client)
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(classify)
            })
            .await?;
        let status = out.status.unwrap_or_default();
        Ok(ReviewStatus {
            authenticated: status.authenticated.unwrap_or(false),
            username: status.user.and_then(|u| u.username),
            audiences: status.audiences.unwrap_or_default(),
        })
    }

    /// GET the ServiceAccount's annotations; [`ApiError::NotFound`] when it does not exist.
    pub async fn service_account_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let sa = self
            .bounded(|client| async move {
                Api::<ServiceAccount>::namespaced(client, namespace)
                    .get_opt(name)
                    .await
                    .map_err(classify)
            })
            .await?
            .ok_or(ApiError::NotFound)?;
        Ok(sa.metadata.annotations.unwrap_or_default())
    }

    /// GET a JSON document by path from the apiserver (OIDC discovery, JWKS).
    pub async fn get_json(&self, path: &str) -> Result<Value, ApiError> {
        let request = http::Request::get(path)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| ApiError::Other(e.to_string()))?;
        self.bounded(
            |client| async move { client.request::<Value>(request).await.map_err(classify) },
        )
        .await
    }
}

/// Our own timeouts apply to every call; kube's built-in retry of 429/503/504 is off so that a
/// failing apiserver turns into a prompt Transient (the client retries) rather than a wait that
/// runs into the frontend's deadline.
fn tune(mut config: kube::Config, timeout: Duration) -> kube::Config {
    config.connect_timeout = Some(config.connect_timeout.map_or(timeout, |t| t.min(timeout)));
    config.read_timeout = Some(timeout);
    config.reset_reader_on_write = true;
    config.default_retry = false;
    config
}

fn classify(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(status) if status.code == 404 => ApiError::NotFound,
        kube::Error::Api(status) => ApiError::Status {
            code: status.code,
            message: truncate(&status.message, 200),
        },
        other => ApiError::Other(truncate(&other.to_string(), 300)),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
