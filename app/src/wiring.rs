//! The composition root: which adapter serves each port for a given
//! configuration.

use crate::config::{Config, PermissionSourceKind};
use crate::deps::Adapters;
use crate::service::Relay;
use relay_adapters::jwt::{DevKeys, JwksConfig, JwksVerifier, JwtConfig, JwtVerifier};
use relay_adapters::memory::{
    ClaimsPermissions, MemoryBus, MemoryMetrics, MemoryPresence, MemoryStore, TokioClock,
};
use relay_ports::TokenVerifier;
use std::sync::Arc;
use std::time::Duration;

/// A wired service and what the transport needs besides.
#[derive(Debug)]
pub struct Wired {
    pub relay: Relay,
    /// The JWKS document to serve at `/.well-known/jwks.json` (development).
    pub jwks: Option<Arc<str>>,
    pub metrics: Arc<MemoryMetrics>,
    /// The JWKS verifier, when keys come from JWT_PUBLIC_KEY_URL.
    pub jwks_verifier: Option<Arc<JwksVerifier>>,
    /// Background tasks (the JWKS refresher), aborted when dropped.
    pub tasks: Vec<AbortOnDrop>,
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The in-memory adapters around a token verifier. Tests swap fields (the
/// permission source, the clock) before building a [`Relay`].
pub fn memory_adapters(verifier: Arc<dyn TokenVerifier>) -> (Adapters, Arc<MemoryMetrics>) {
    let clock = Arc::new(TokioClock::new());
    let metrics = Arc::new(MemoryMetrics::default());
    let adapters = Adapters {
        store: Arc::new(MemoryStore::new()),
        bus: Arc::new(MemoryBus::new()),
        presence: Arc::new(MemoryPresence::new(clock.clone())),
        permissions: Arc::new(ClaimsPermissions),
        verifier,
        metrics: metrics.clone(),
        clock,
    };
    (adapters, metrics)
}

/// A verifier for tokens signed by the development key.
pub fn dev_verifier(config: &Config, dev: &DevKeys) -> Arc<JwtVerifier> {
    // Development tokens carry no `iss` or `aud`: JWT_ISSUER / JWT_AUDIENCE
    // apply to a real identity provider's keys only.
    let verifier = JwtVerifier::new(JwtConfig {
        leeway_secs: config.jwt_leeway_secs,
        ..JwtConfig::default()
    });
    verifier.set_keys(dev.key_set());
    Arc::new(verifier)
}

/// Everything in memory, tokens signed by `dev` (the development mode, and
/// what most end-to-end tests run against).
pub fn in_memory(config: Config, dev: &DevKeys) -> Wired {
    let (adapters, metrics) = memory_adapters(dev_verifier(&config, dev));
    Wired {
        relay: Relay::new(config, adapters, Vec::new()),
        jwks: Some(dev.jwks_json().into()),
        metrics,
        jwks_verifier: None,
        tasks: Vec::new(),
    }
}

/// The adapters the configuration asks for. Must be called inside the
/// runtime (it starts the JWKS refresher).
///
/// - JWT_PUBLIC_KEY_URL set: tokens are verified against that JWKS;
///   otherwise against `dev` (development mode).
/// - DATABASE_URL / REDIS_URL / PERMISSION_SOURCE=database: refused with the
///   variable named until their adapters exist, rather than half-served.
pub fn build(config: Config, dev: Option<&DevKeys>) -> anyhow::Result<Wired> {
    for (variable, set) in [
        ("DATABASE_URL", config.database_url.is_some()),
        ("REDIS_URL", config.redis_url.is_some()),
    ] {
        if set {
            anyhow::bail!(
                "{variable}: this build of relay does not have that adapter yet; unset it to run in memory"
            );
        }
    }
    if config.permission_source == PermissionSourceKind::Database {
        anyhow::bail!(
            "PERMISSION_SOURCE=database needs the PostgreSQL adapter, which this build does not have yet"
        );
    }
    let Some(url) = config.jwt_public_key_url.clone() else {
        let dev = dev.ok_or_else(|| anyhow::anyhow!("development mode needs a development key"))?;
        return Ok(in_memory(config, dev));
    };
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        anyhow::bail!("JWT_PUBLIC_KEY_URL: expected an http(s) URL, got {url:?}");
    }
    let jwks = JwksVerifier::new(
        JwksConfig {
            url,
            issuer: config.jwt_issuer.clone(),
            refresh: Duration::from_secs(config.jwks_refresh_secs),
            cooldown: Duration::from_secs(config.jwks_cooldown_secs),
            ..JwksConfig::new("")
        },
        JwtConfig {
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway_secs: config.jwt_leeway_secs,
            ..JwtConfig::default()
        },
    );
    let refresher = AbortOnDrop(jwks.spawn_refresher());
    let (adapters, metrics) = memory_adapters(jwks.clone());
    Ok(Wired {
        relay: Relay::new(config, adapters, Vec::new()),
        jwks: None,
        metrics,
        jwks_verifier: Some(jwks),
        tasks: vec![refresher],
    })
}
