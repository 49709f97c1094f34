//! The composition root: which adapter serves each port for a given
//! configuration.

use crate::config::{self, Config, PermissionSourceKind, ServingRefusal};
use crate::ports::Ports;
use crate::service::{Check, Relay};
use relay_adapter_jwt::{DevKeys, JwksVerifier, JwtVerifier};
use relay_adapter_memory::{ClaimsPermissions, MemoryBus, MemoryPresence, MemoryStore, TokioClock};
use relay_adapter_postgres::{PgError, PgPermissions, PgPool, PgStore};
use relay_adapter_redis::RedisError;
use relay_ports::{
    Dependency, FanOut, Metrics, OperationStore, PermissionSource, PresenceRegistry, TokenVerifier,
};
use std::sync::Arc;

/// A wired service and what the transport needs besides.
pub struct Wired {
    pub relay: Relay,
    /// The JWKS document to serve at `/.well-known/jwks.json` (development).
    pub jwks: Option<Arc<str>>,
    /// What the service records to (the binary's: OpenTelemetry).
    pub metrics: Arc<dyn Metrics>,
    /// The JWKS verifier, when keys come from JWT_PUBLIC_KEY_URL: the one
    /// port a test needs as its concrete type (to see its fetches), which
    /// the service holds only as a `dyn TokenVerifier`.
    #[cfg(any(test, feature = "testing"))]
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

/// A verifier for tokens signed by the development key.
pub fn dev_verifier(config: &Config, dev: &DevKeys) -> Arc<JwtVerifier> {
    let verifier = JwtVerifier::new(config.auth.development_jwt());
    verifier.set_keys(dev.key_set());
    Arc::new(verifier)
}

/// Why the adapters a configuration asks for could not be built. Each
/// names the variable to look at, with the adapter's error.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Serving(#[from] ServingRefusal),
    #[error("DATABASE_URL: {0}")]
    Pool(PgError),
    #[error("DATABASE_URL: cannot read the schema version: {0}")]
    SchemaVersion(PgError),
    #[error(
        "the database schema is out of date ({} pending: {}): run `relay migrate`, or set RUN_MIGRATIONS=true",
        .0.len(),
        .0.join(", ")
    )]
    SchemaOutOfDate(Vec<String>),
    #[error("RUN_MIGRATIONS: {0}")]
    Migrations(PgError),
    #[error("REDIS_URL: {0}")]
    Redis(RedisError),
}

/// The database pool a configuration asks for (DATABASE_URL and the pool
/// variables).
pub fn pg_pool(config: &Config) -> Result<Option<PgPool>, WiringError> {
    let Some(url) = &config.store.database_url else {
        return Ok(None);
    };
    Ok(Some(
        PgPool::new(url, &config.store.pool).map_err(WiringError::Pool)?,
    ))
}

/// Checks the schema is current; applies pending migrations only when
/// RUN_MIGRATIONS=true.
pub async fn ensure_schema(pool: &PgPool, run_migrations: bool) -> Result<(), WiringError> {
    let pending = pool
        .pending_migrations()
        .await
        .map_err(WiringError::SchemaVersion)?;
    if pending.is_empty() {
        return Ok(());
    }
    if !run_migrations {
        return Err(WiringError::SchemaOutOfDate(pending));
    }
    let applied = pool
        .run_migrations()
        .await
        .map_err(WiringError::Migrations)?;
    tracing::info!(?applied, "migrations applied");
    Ok(())
}

/// What a production configuration should not leave as it is, logged as
/// warnings at start: a Redis without a password, a plain-HTTP key set,
/// and tokens whose audience or issuer nobody checks (hosts on this machine
/// excepted: tests, sidecars). Development mode has none of them.
pub fn startup_warnings(config: &Config) -> Vec<String> {
    let mut warnings: Vec<String> = config
        .bus
        .redis_url
        .as_deref()
        .and_then(relay_adapter_redis::url_weakness)
        .map(str::to_owned)
        .into_iter()
        .collect();
    let Some(jwks) = config.auth.jwks() else {
        return warnings;
    };
    if jwks.is_plain_http_to_another_host() {
        warnings.push(
            "JWT_PUBLIC_KEY_URL is plain http://: whoever can answer in the identity service's \
             place can hand out keys and mint valid tokens; use https://"
                .to_owned(),
        );
    }
    if config.auth.jwt.audience.is_none() {
        warnings.push(
            "JWT_AUDIENCE is unset: any token the identity service issued, for any client \
             (ID tokens included), is accepted; set it to the audience of Relay's tokens"
                .to_owned(),
        );
    }
    if config.auth.jwt.issuer.is_none() {
        warnings.push(
            "JWT_ISSUER is unset: tokens are not checked for their issuer; set it to the \
             identity service's issuer"
                .to_owned(),
        );
    }
    warnings
}

/// The service on the ports the configuration asks for, recording to
/// `metrics`. Must be called inside the runtime (it starts the JWKS
/// refresher).
///
/// - DATABASE_URL set: operations in PostgreSQL (the schema must be current,
///   see [`ensure_schema`]); PERMISSION_SOURCE=database reads roles there.
/// - JWT_PUBLIC_KEY_URL set: tokens are verified against that JWKS;
///   otherwise against `dev` (development mode).
/// - REDIS_URL set: instances share ops and presence through Redis (the
///   fan-out bus and the presence registry, REDIS_POOL_SIZE command
///   connections, at most 8); it needs DATABASE_URL, since the store is
///   what instances agree on.
///
/// Whatever is not set is in memory: operations, the bus and presence on
/// this instance alone, roles from the token's claims.
pub async fn build_with(
    config: Config,
    dev: Option<&DevKeys>,
    metrics: Arc<dyn Metrics>,
) -> Result<Wired, WiringError> {
    config::check_serving(&config, dev.is_some())?;
    for warning in startup_warnings(&config) {
        tracing::warn!("{warning}");
    }
    let pool = pg_pool(&config)?;
    if let Some(pool) = &pool {
        ensure_schema(pool, config.store.run_migrations).await?;
    }
    let background = Background::default();
    #[cfg(any(test, feature = "testing"))]
    let mut jwks_verifier = None;
    let mut jwks = None;
    let verifier: Arc<dyn TokenVerifier> = match (config.auth.jwks(), dev) {
        (None, None) => unreachable!("config::check_serving refuses no keys at all"),
        (None, Some(dev)) => {
            jwks = Some(dev.jwks_json().into());
            dev_verifier(&config, dev)
        }
        (Some(jwks_config), _) => {
            let v = JwksVerifier::new(jwks_config, config.auth.jwt.clone());
            v.record_to(metrics.clone());
            background
                .tasks
                .spawn(v.refresher(background.stop.child_token()));
            #[cfg(any(test, feature = "testing"))]
            {
                jwks_verifier = Some(v.clone());
            }
            v
        }
    };
    let clock = Arc::new(TokioClock::new());
    let mut store: Arc<dyn OperationStore> = Arc::new(MemoryStore::with_clock(clock.clone()));
    let mut permissions: Arc<dyn PermissionSource> = Arc::new(ClaimsPermissions);
    let mut bus: Arc<dyn FanOut> = Arc::new(MemoryBus::new());
    let mut presence: Arc<dyn PresenceRegistry> = Arc::new(MemoryPresence::new(clock.clone()));
    let mut checks: Vec<(Dependency, Check)> = Vec::new();
    if let Some(pool) = pool {
        let pg = Arc::new(PgStore::new(pool.clone()));
        store = pg.clone();
        if config.auth.permission_source == PermissionSourceKind::Database {
            permissions = Arc::new(PgPermissions::new(pool.clone()));
        }
        // The store's ping: the database answers and the committers are not
        // stuck (appends waiting with none finished in the statement
        // timeout).
        let check: Check = Arc::new(move || {
            let pg = pg.clone();
            Box::pin(async move { OperationStore::ping(&*pg).await.is_ok() })
        });
        checks.push((Dependency::Database, check));
    }
    if let Some(url) = &config.bus.redis_url {
        let (redis_bus, redis_presence) = relay_adapter_redis::connect_with_metrics(
            url,
            config.bus.redis.clone(),
            metrics.clone(),
        )
        .await
        .map_err(WiringError::Redis)?;
        let redis_bus = Arc::new(redis_bus);
        bus = redis_bus.clone();
        presence = Arc::new(redis_presence);
        let check: Check = Arc::new(move || {
            let redis_bus = redis_bus.clone();
            Box::pin(async move { FanOut::ping(&*redis_bus).await.is_ok() })
        });
        checks.push((Dependency::Redis, check));
    }
    let ports = Ports {
        store,
        bus,
        presence,
        permissions,
        verifier,
        metrics: metrics.clone(),
        clock,
    };
    Ok(Wired {
        relay: Relay::new(config, ports, checks),
        jwks,
        metrics,
        #[cfg(any(test, feature = "testing"))]
        jwks_verifier,
        background,
    })
}

#[cfg(test)]
mod tests {
    use super::startup_warnings;
    use crate::config::Config;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap()
    }

    #[test]
    fn weak_production_settings_are_warned_about_at_start() {
        // Development mode: nothing to warn about.
        assert!(startup_warnings(&config(&[])).is_empty());
        // What production should look like: no warning.
        let good = [
            (
                "JWT_PUBLIC_KEY_URL",
                "https://idp.example/.well-known/jwks.json",
            ),
            ("JWT_ISSUER", "https://idp.example"),
            ("JWT_AUDIENCE", "relay"),
        ];
        assert!(startup_warnings(&config(&good)).is_empty());
        let warned = |vars: &[(&str, &str)], variable: &str| {
            let warnings = startup_warnings(&config(vars));
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].starts_with(variable), "{warnings:?}");
        };
        let mut http = good;
        http[0].1 = "http://idp.internal/.well-known/jwks.json";
        warned(&http, "JWT_PUBLIC_KEY_URL");
        // A key set on this machine (tests, a sidecar) is not flagged.
        http[0].1 = "http://127.0.0.1:8081/.well-known/jwks.json";
        assert!(startup_warnings(&config(&http)).is_empty());
        warned(&good[..2], "JWT_AUDIENCE");
        warned(&[good[0], good[2]], "JWT_ISSUER");
        let database = ("DATABASE_URL", "postgresql://relay:secret@db:5432/relay");
        let [a, b, c] = good;
        warned(
            &[a, b, c, database, ("REDIS_URL", "redis://redis:6379")],
            "REDIS_URL",
        );
        let with_password = ("REDIS_URL", "rediss://relay:secret@redis:6379/0");
        assert!(startup_warnings(&config(&[a, b, c, database, with_password])).is_empty());
    }
}
