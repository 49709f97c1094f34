//! Keys from the identity service's JWKS endpoint (JWT_PUBLIC_KEY_URL).
//!
//! The key set is fetched at start, refreshed every JWKS_REFRESH_SECS, and
//! refetched when a token names an unknown `kid` - at most once per cooldown,
//! with a negative cache, so a flood of made-up kids costs at most one fetch
//! per cooldown. A failed or unusable fetch keeps the last good keys; until a
//! first usable set arrives every token is refused as `Unavailable` (fail
//! closed) and `/ready` reports `jwt_keys: error`. The URL comes from
//! configuration only: nothing in a token is used to build a request.

use super::keys::KeySet;
use super::verifier::{JwtConfig, JwtVerifier};
use async_trait::async_trait;
use relay_ports::{AuthError, Claims, InvalidToken, TokenVerifier};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// The least time the refresher waits between two fetches.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// Where and how often to fetch.
#[derive(Clone, Debug)]
pub struct JwksConfig {
    pub url: String,
    /// The issuer these keys belong to (JWT_ISSUER): tokens from another
    /// issuer are refused even if they name a kid of this set.
    pub issuer: Option<String>,
    /// JWKS_REFRESH_SECS.
    pub refresh: Duration,
    /// Least time between two fetches caused by unknown kids.
    pub cooldown: Duration,
    /// Per request.
    pub timeout: Duration,
    /// A larger JWKS document is refused.
    pub max_body_bytes: usize,
}

impl JwksConfig {
    pub fn new(url: impl Into<String>) -> Self {
        JwksConfig {
            url: url.into(),
            issuer: None,
            refresh: Duration::from_secs(300),
            cooldown: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
        }
    }
}

/// Why a fetch did not produce keys.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS request failed: {0}")]
    Request(String),
    #[error("JWKS endpoint answered {0}")]
    Status(u16),
    #[error("JWKS document larger than {0} bytes")]
    TooLarge(usize),
    #[error("JWKS document unusable: {0}")]
    Invalid(String),
    #[error("JWKS document has no usable key")]
    NoUsableKey,
}

struct FetchState {
    last_attempt: Option<Instant>,
    /// Kids looked for and not found since the last successful fetch.
    missing: HashSet<String>,
}

/// A token verifier whose keys come from a JWKS URL.
pub struct JwksVerifier {
    verifier: JwtVerifier,
    config: JwksConfig,
    client: reqwest::Client,
    state: tokio::sync::Mutex<FetchState>,
    fetches: AtomicU64,
    /// Counts `materi_jwks_refreshes_total{result}` once set.
    metrics: std::sync::OnceLock<Arc<dyn relay_ports::Metrics>>,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier")
            .field("url", &self.config.url)
            .field("has_keys", &self.verifier.has_keys())
            .finish_non_exhaustive()
    }
}

impl JwksVerifier {
    pub fn new(config: JwksConfig, jwt: JwtConfig) -> Arc<JwksVerifier> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .expect("an HTTP client with default TLS settings");
        Arc::new(JwksVerifier {
            verifier: JwtVerifier::new(jwt),
            config,
            client,
            state: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                missing: HashSet::new(),
            }),
            fetches: AtomicU64::new(0),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Records each fetch's result in `metrics` from now on (set once).
    pub fn record_to(&self, metrics: Arc<dyn relay_ports::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// How many fetches were attempted (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches now and installs the keys if usable. Returns how many keys
    /// are usable.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let mut state = self.state.lock().await;
        self.refresh_locked(&mut state).await
    }

    async fn refresh_locked(&self, state: &mut FetchState) -> Result<usize, JwksError> {
        state.last_attempt = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch().await;
        if let Some(m) = self.metrics.get() {
            m.jwks_refresh(result.is_ok());
        }
        match &result {
            Ok(keys) => {
                let n = keys.len();
                self.verifier.set_keys(keys.clone());
                state.missing.clear();
                info!(url = %self.config.url, keys = n, "token keys loaded");
                Ok(n)
            }
            Err(e) => {
                warn!(url = %self.config.url, error = %e, "JWKS fetch failed; keeping the previous keys");
                Err(e.clone())
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let mut response = self
            .client
            .get(&self.config.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| JwksError::Request(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let limit = self.config.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|n| n as usize > limit)
        {
            return Err(JwksError::TooLarge(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| JwksError::Request(e.to_string()))?
        {
            if body.len() + chunk.len() > limit {
                return Err(JwksError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        let keys = KeySet::from_jwks_json(&body, self.config.issuer.clone())
            .map_err(|e| JwksError::Invalid(e.to_string()))?;
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(keys)
    }

    /// A token named `kid`, which the keys do not have: refetch unless a
    /// fetch happened within the cooldown. Returns whether the kid is now
    /// known.
    async fn look_for(&self, kid: &str) -> bool {
        let mut state = self.state.lock().await;
        if self.verifier.keys().get(kid).is_some() {
            // Another request's fetch found it meanwhile.
            return true;
        }
        let recent = state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.config.cooldown);
        if recent {
            if state.missing.len() < 10_000 {
                state.missing.insert(kid.to_owned());
            }
            return false;
        }
        let _ = self.refresh_locked(&mut state).await;
        let found = self.verifier.keys().get(kid).is_some();
        if !found && state.missing.len() < 10_000 {
            state.missing.insert(kid.to_owned());
        }
        found
    }

    /// The refresher's loop, for a task tracker to run: keeps the keys
    /// fresh until `stop` is cancelled (also during a fetch or a wait).
    /// Retries quickly (1 s doubling up to the cooldown) until a first
    /// usable set, then every refresh interval, keeping the last good keys
    /// on failure.
    pub fn refresher(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = Arc::clone(self);
        async move {
            stop.clone()
                .run_until_cancelled(this.refresh_forever())
                .await;
        }
    }

    async fn refresh_forever(self: Arc<Self>) {
        let this = self;
        {
            let mut backoff = MIN_RETRY;
            loop {
                let ok = this.refresh().await.is_ok();
                let wait = if ok || this.verifier.has_keys() {
                    backoff = MIN_RETRY;
                    let wait = if ok {
                        this.config.refresh
                    } else {
                        this.config.cooldown.min(this.config.refresh)
                    };
                    // With JWKS_COOLDOWN_SECS=0 a failing endpoint would
                    // otherwise be retried in a tight loop.
                    wait.max(MIN_RETRY)
                } else {
                    let w = backoff;
                    backoff = (backoff * 2).min(this.config.cooldown.max(MIN_RETRY));
                    w
                };
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[async_trait]
impl TokenVerifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        match self.verifier.verify_token(token) {
            Err(AuthError::Invalid(reason @ InvalidToken::UnknownKid)) => {
                let Some(kid) = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid) else {
                    return Err(AuthError::Invalid(reason));
                };
                if kid.len() > 256 || !self.look_for(&kid).await {
                    return Err(AuthError::Invalid(reason));
                }
                self.verifier.verify_token(token)
            }
            other => other,
        }
    }

    fn has_keys(&self) -> bool {
        self.verifier.has_keys()
    }
}
