//! The composition root: which adapter serves each port for a given
//! configuration.

use crate::config::{Config, PermissionSourceKind};
use crate::deps::Adapters;
use crate::service::{Check, Relay};
use relay_adapter_jwt::{DevKeys, JwksConfig, JwksVerifier, JwtConfig, JwtVerifier};
use relay_adapter_memory::{
    ClaimsPermissions, MemoryBus, MemoryMetrics, MemoryPresence, MemoryStore, TokioClock,
};
use relay_adapter_postgres::{PgPermissions, PgPool, PgStore, PoolSettings};
use relay_adapter_redis::RedisSettings;
use relay_ports::{Metrics, TokenVerifier};
use std::sync::Arc;
use std::time::Duration;

/// A wired service and what the transport needs besides.
pub struct Wired {
    pub relay: Relay,
    /// The JWKS document to serve at `/.well-known/jwks.json` (development).
    pub jwks: Option<Arc<str>>,
    /// What the service records to (the binary's: OpenTelemetry).
    pub metrics: Arc<dyn Metrics>,
    /// The same, when they are in-memory metrics tests can read.
    pub memory_metrics: Option<Arc<MemoryMetrics>>,
    /// The JWKS verifier, when keys come from JWT_PUBLIC_KEY_URL.
    pub jwks_verifier: Option<Arc<JwksVerifier>>,
    /// Background tasks (the JWKS refresher), stopped when dropped.
    pub background: Background,
}

impl std::fmt::Debug for Wired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wired")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// The wiring's background tasks on a tracker, with the token that stops
/// them: [`Background::stop`] awaits them; dropping it cancels them.
#[derive(Debug, Default)]
pub struct Background {
    pub tasks: tokio_util::task::TaskTracker,
    pub stop: tokio_util::sync::CancellationToken,
}

impl Background {
    /// Cancels every task and waits for them to end.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
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
        metrics: metrics.clone(),
        memory_metrics: Some(metrics),
        jwks_verifier: None,
        background: Background::default(),
    }
}

/// The database pool a configuration asks for (DATABASE_URL and the pool
/// variables).
pub fn pg_pool(config: &Config) -> anyhow::Result<Option<PgPool>> {
    let Some(url) = &config.database_url else {
        return Ok(None);
    };
    let settings = PoolSettings {
        size: config.db_pool_size,
        max_lifetime: config.db_max_lifetime,
        idle_timeout: config.db_idle_timeout,
        statement_timeout: config.db_statement_timeout,
        ..PoolSettings::default()
    };
    Ok(Some(
        PgPool::new(url, &settings).map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?,
    ))
}

/// Checks the schema is current; applies pending migrations only when
/// RUN_MIGRATIONS=true.
pub async fn ensure_schema(pool: &PgPool, run_migrations: bool) -> anyhow::Result<()> {
    let pending = pool
        .pending_migrations()
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: cannot read the schema version: {e}"))?;
    if pending.is_empty() {
        return Ok(());
    }
    if !run_migrations {
        anyhow::bail!(
            "the database schema is out of date ({} pending: {}): run `relay migrate`, or set RUN_MIGRATIONS=true",
            pending.len(),
            pending.join(", ")
        );
    }
    let applied = pool
        .run_migrations()
        .await
        .map_err(|e| anyhow::anyhow!("RUN_MIGRATIONS: {e}"))?;
    tracing::info!(?applied, "migrations applied");
    Ok(())
}

/// The adapters the configuration asks for. Must be called inside the
/// runtime (it starts the JWKS refresher).
///
/// - DATABASE_URL set: operations in PostgreSQL (the schema must be current,
///   see [`ensure_schema`]); PERMISSION_SOURCE=database reads roles there.
/// - JWT_PUBLIC_KEY_URL set: tokens are verified against that JWKS;
///   otherwise against `dev` (development mode).
/// - REDIS_URL set: instances share ops and presence through Redis (the
///   fan-out bus and the presence registry, REDIS_POOL_SIZE command
///   connections, at most 8); it needs DATABASE_URL, since the store is
///   what instances agree on.
pub async fn build(config: Config, dev: Option<&DevKeys>) -> anyhow::Result<Wired> {
    let metrics = Arc::new(MemoryMetrics::new());
    let mut wired = build_with(config, dev, metrics.clone()).await?;
    wired.memory_metrics = Some(metrics);
    Ok(wired)
}

/// [`build`], recording to `metrics`.
pub async fn build_with(
    config: Config,
    dev: Option<&DevKeys>,
    metrics: Arc<dyn Metrics>,
) -> anyhow::Result<Wired> {
    if config.redis_url.is_some() && config.database_url.is_none() {
        anyhow::bail!(
            "REDIS_URL needs DATABASE_URL: several instances share a document through PostgreSQL (Redis only carries what was committed there)"
        );
    }
    let pool = pg_pool(&config)?;
    if config.permission_source == PermissionSourceKind::Database && pool.is_none() {
        anyhow::bail!("PERMISSION_SOURCE=database needs DATABASE_URL");
    }
    if let Some(pool) = &pool {
        ensure_schema(pool, config.run_migrations).await?;
    }
    let background = Background::default();
    let mut jwks_verifier = None;
    let mut jwks = None;
    let verifier: Arc<dyn TokenVerifier> = match config.jwt_public_key_url.clone() {
        None => {
            let dev = dev.ok_or_else(|| {
                anyhow::anyhow!(
                    "JWT_PUBLIC_KEY_URL is required when DATABASE_URL or REDIS_URL is set"
                )
            })?;
            jwks = Some(dev.jwks_json().into());
            dev_verifier(&config, dev)
        }
        Some(url) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                anyhow::bail!("JWT_PUBLIC_KEY_URL: expected an http(s) URL, got {url:?}");
            }
            let v = JwksVerifier::new(
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
            v.record_to(metrics.clone());
            background
                .tasks
                .spawn(v.refresher(background.stop.child_token()));
            jwks_verifier = Some(v.clone());
            v
        }
    };
    let (mut adapters, _) = memory_adapters(verifier);
    adapters.metrics = metrics.clone();
    let mut checks: Vec<(&'static str, Check)> = Vec::new();
    if let Some(pool) = pool {
        let store = Arc::new(PgStore::new(pool.clone()));
        adapters.store = store.clone();
        if config.permission_source == PermissionSourceKind::Database {
            adapters.permissions = Arc::new(PgPermissions::new(pool.clone()));
        }
        // The store's ping: the database answers and the committers are not
        // stuck (appends waiting with none finished in the statement
        // timeout).
        let check: Check = Arc::new(move || {
            let store = store.clone();
            Box::pin(async move { relay_ports::OperationStore::ping(&*store).await.is_ok() })
        });
        checks.push(("database", check));
    }
    if let Some(url) = &config.redis_url {
        let settings = RedisSettings {
            connections: config.redis_pool_size.min(8),
            history_ops: config.redis_history_ops,
            history_ttl: config.operation_history_ttl,
            ..RedisSettings::default()
        };
        let (bus, presence) =
            relay_adapter_redis::connect_with_metrics(url, settings, metrics.clone())
                .await
                .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
        let bus = Arc::new(bus);
        adapters.bus = bus.clone();
        adapters.presence = Arc::new(presence);
        let check: Check = Arc::new(move || {
            let bus = bus.clone();
            Box::pin(async move { relay_ports::FanOut::ping(&*bus).await.is_ok() })
        });
        checks.push(("redis", check));
    }
    Ok(Wired {
        relay: Relay::new(config, adapters, checks),
        jwks,
        metrics,
        memory_metrics: None,
        jwks_verifier,
        background,
    })
}
