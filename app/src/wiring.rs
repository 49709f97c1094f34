//! The composition root: which adapter serves each port for a given
//! configuration.

use crate::config::Config;
use crate::deps::Adapters;
use crate::service::Relay;
use relay_adapters::jwt::{DevKeys, JwtConfig, JwtVerifier};
use relay_adapters::memory::{
    ClaimsPermissions, MemoryBus, MemoryMetrics, MemoryPresence, MemoryStore, TokioClock,
};
use std::sync::Arc;

/// A wired service and what the transport needs besides.
#[derive(Debug)]
pub struct Wired {
    pub relay: Relay,
    /// The JWKS document to serve at `/.well-known/jwks.json` (development).
    pub jwks: Option<Arc<str>>,
    pub metrics: Arc<MemoryMetrics>,
}

/// Everything in memory, tokens signed by `dev` (the development mode, and
/// what end-to-end tests run against).
pub fn in_memory(config: Config, dev: &DevKeys) -> Wired {
    let clock = Arc::new(TokioClock::new());
    // Development tokens carry no `iss` or `aud`: JWT_ISSUER / JWT_AUDIENCE
    // apply to a real identity provider's keys only.
    let verifier = JwtVerifier::new(JwtConfig {
        leeway_secs: config.jwt_leeway_secs,
        ..JwtConfig::default()
    });
    verifier.set_keys(dev.key_set());
    let metrics = Arc::new(MemoryMetrics::default());
    let adapters = Adapters {
        store: Arc::new(MemoryStore::new()),
        bus: Arc::new(MemoryBus::new()),
        presence: Arc::new(MemoryPresence::new(clock.clone())),
        permissions: Arc::new(ClaimsPermissions),
        verifier: Arc::new(verifier),
        metrics: metrics.clone(),
        clock,
    };
    Wired {
        relay: Relay::new(config, adapters, Vec::new()),
        jwks: Some(dev.jwks_json().into()),
        metrics,
    }
}

/// The adapters the configuration asks for. Only the in-memory mode exists
/// so far: a configuration naming PostgreSQL, Redis or a JWKS URL is refused
/// with the variable that is not supported yet, rather than half-served.
pub fn build(config: Config, dev: Option<&DevKeys>) -> anyhow::Result<Wired> {
    for (variable, set) in [
        ("DATABASE_URL", config.database_url.is_some()),
        ("REDIS_URL", config.redis_url.is_some()),
        ("JWT_PUBLIC_KEY_URL", config.jwt_public_key_url.is_some()),
    ] {
        if set {
            anyhow::bail!(
                "{variable}: this build of relay does not have that adapter yet; unset it to run in memory"
            );
        }
    }
    let dev = dev.ok_or_else(|| anyhow::anyhow!("development mode needs a development key"))?;
    Ok(in_memory(config, dev))
}
