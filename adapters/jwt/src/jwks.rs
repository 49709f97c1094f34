//! Keys from the identity service's JWKS endpoint (JWT_PUBLIC_KEY_URL).
//!
//! The key set is fetched at start, refreshed every JWKS_REFRESH_SECS, and
//! refetched when a token names an unknown `kid`:
//!
//! - a kid that a fetch did not find is remembered as missing (the negative
//!   cache): tokens naming it again are refused without a fetch until
//!   JWKS_COOLDOWN_SECS have passed since that fetch;
//! - any other unknown kid - one never looked up, or whose miss is older
//!   than the cooldown - gets a fetch of its own, so a key the identity
//!   provider starts using the moment it publishes it is found at once,
//!   however many made-up kids an attacker sends;
//! - but fetches caused by unknown kids are at most one per tenth of the
//!   cooldown (3 s by default) after the last fetch of any kind: a flood
//!   of made-up kids costs at most ten fetches per cooldown. A kid refused
//!   by that bound is not remembered, so its next token fetches.
//!
//! A failed or unusable fetch keeps the last good keys; until a first usable
//! set arrives every token is refused as `Unavailable` (fail closed) and
//! `/ready` reports `jwt_keys: error`. The URL comes from configuration
//! only: nothing in a token is used to build a request, and a redirect is
//! followed (at most 3) only while it does not leave `https` for another
//! scheme.

use super::keys::KeySet;
use super::verifier::{JwtConfig, JwtVerifier};
use async_trait::async_trait;
use relay_ports::{AuthError, Claims, InvalidToken, TokenVerifier};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// The least time the refresher waits between two fetches.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// Redirects followed, at most.
const MAX_REDIRECTS: usize = 3;

/// Kids remembered as missing, at most.
const MAX_MISSING: usize = 10_000;

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
    /// Whether the URL is plain `http://` to a host other than the loopback
    /// interface: whoever can answer in the identity service's place could
    /// then hand out keys and mint valid tokens.
    pub fn is_plain_http_to_another_host(&self) -> bool {
        let Ok(url) = reqwest::Url::parse(&self.url) else {
            return false;
        };
        if url.scheme() != "http" {
            return false;
        }
        let Some(host) = url.host_str() else {
            return true;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
    }

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
    /// Kids a successful fetch made for them did not find, with the time
    /// of that fetch (the negative cache).
    missing: HashMap<String, Instant>,
}

/// Whether a redirect from the chain `previous` (the first is the
/// configured URL) to `next` may be followed: never from `https` to another
/// scheme, since whoever answers the plain request could then hand out
/// keys that mint valid tokens.
pub(crate) fn redirect_allowed(previous: &[reqwest::Url], next: &reqwest::Url) -> bool {
    next.scheme() == "https" || previous.iter().all(|u| u.scheme() != "https")
}

fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if !redirect_allowed(attempt.previous(), attempt.url()) {
            attempt.error("redirect from https to another scheme refused")
        } else {
            attempt.follow()
        }
    })
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
            .redirect(redirect_policy())
            .build()
            .expect("an HTTP client with default TLS settings");
        Arc::new(JwksVerifier {
            verifier: JwtVerifier::new(jwt),
            config,
            client,
            state: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                missing: HashMap::new(),
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

    /// A token named `kid`, which the keys do not have: refetch unless the
    /// kid is known to be missing (within the cooldown) or a fetch happened
    /// within a tenth of the cooldown (module docs). Returns whether the
    /// kid is now known.
    async fn look_for(&self, kid: &str) -> bool {
        let mut state = self.state.lock().await;
        if self.verifier.keys().get(kid).is_some() {
            // Another request's fetch found it meanwhile.
            return true;
        }
        let cooldown = self.config.cooldown;
        if state
            .missing
            .get(kid)
            .is_some_and(|at| at.elapsed() < cooldown)
        {
            return false;
        }
        let recent = state
            .last_attempt
            .is_some_and(|t| t.elapsed() < cooldown / 10);
        if recent {
            // Not remembered: the kid was not looked for.
            return false;
        }
        let fetched = self.refresh_locked(&mut state).await.is_ok();
        let found = self.verifier.keys().get(kid).is_some();
        if fetched && !found {
            if state.missing.len() >= MAX_MISSING {
                state.missing.retain(|_, at| at.elapsed() < cooldown);
            }
            if state.missing.len() < MAX_MISSING {
                state.missing.insert(kid.to_owned(), Instant::now());
            }
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

#[cfg(test)]
mod tests {
    use super::{JwksConfig, redirect_allowed};

    #[test]
    fn plain_http_is_flagged_unless_it_stays_on_this_machine() {
        let flagged = |u: &str| JwksConfig::new(u).is_plain_http_to_another_host();
        assert!(flagged("http://shield.default.svc.cluster.local/jwks.json"));
        assert!(flagged("HTTP://10.0.0.1:8000/jwks.json"));
        assert!(!flagged("https://shield.materi.dev/.well-known/jwks.json"));
        assert!(!flagged("http://127.0.0.1:8081/.well-known/jwks.json"));
        assert!(!flagged("http://localhost:8081/.well-known/jwks.json"));
        assert!(!flagged("http://[::1]:8081/.well-known/jwks.json"));
    }

    fn urls(list: &[&str]) -> Vec<reqwest::Url> {
        list.iter().map(|u| u.parse().unwrap()).collect()
    }

    #[test]
    fn a_redirect_never_leaves_https() {
        let next = |u: &str| u.parse::<reqwest::Url>().unwrap();
        let https = urls(&["https://idp.example/jwks"]);
        assert!(redirect_allowed(&https, &next("https://cdn.example/jwks")));
        assert!(!redirect_allowed(&https, &next("http://idp.example/jwks")));
        assert!(!redirect_allowed(&https, &next("ftp://idp.example/jwks")));
        // Once https, always https, however many hops later.
        let chain = urls(&["https://idp.example/a", "https://idp.example/b"]);
        assert!(!redirect_allowed(&chain, &next("http://idp.example/c")));
        // A plain-HTTP JWKS (development) may be redirected, to either.
        let plain = urls(&["http://devkeys:8081/jwks"]);
        assert!(redirect_allowed(&plain, &next("http://devkeys:8081/other")));
        assert!(redirect_allowed(&plain, &next("https://idp.example/jwks")));
    }
}
