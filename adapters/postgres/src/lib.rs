//! PostgreSQL adapters on diesel-async: the operation store and the
//! permission source, a connection pool sized as the deployment document's
//! `PoolConfig`, and the embedded migrations (`relay migrate`).
//!
//! Every call is bounded by a timeout; a database that is down or slow
//! makes calls fail with `Unavailable` quickly instead of piling up.

mod append;
mod commit;
mod error;
mod permissions;
mod schema;
mod store;
pub mod testdb;

pub use permissions::PgPermissions;
pub use store::PgStore;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Hook, HookError, Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use relay_ports::{Cause, PermissionError, StoreError};
use std::time::Duration;

/// The SQL migrations of `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Pool settings (DB_POOL_SIZE, DB_MAX_LIFETIME_SECS, DB_IDLE_TIMEOUT_SECS).
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub size: usize,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    /// How long a call may take (checkout plus query) before it is
    /// `Unavailable`.
    pub call_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection
    /// (DB_STATEMENT_TIMEOUT_MS): a statement stuck on a lock or a slow
    /// disk fails instead of stalling every write of the instance.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            size: 20,
            max_lifetime: Duration::from_secs(1800),
            idle_timeout: Duration::from_secs(600),
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// A connection taken from the pool.
pub(crate) type PooledConnection = Object<AsyncPgConnection>;

/// A connection pool.
#[derive(Clone)]
pub struct PgPool {
    pool: Pool<AsyncPgConnection>,
    pub(crate) call_timeout: Duration,
    pub(crate) statement_timeout: Duration,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("status", &self.pool.status())
            .finish()
    }
}

/// Why one timed call ([`PgPool::with_conn`]) did not get its answer.
#[derive(Debug)]
pub(crate) enum PgCallError {
    /// No connection from the pool.
    Pool(PoolError),
    /// Checkout and call took longer than the call timeout.
    Timeout,
}

impl From<PgCallError> for Cause {
    fn from(e: PgCallError) -> Cause {
        match e {
            PgCallError::Pool(e) => Cause::new(e),
            PgCallError::Timeout => Cause::msg("database call timed out"),
        }
    }
}

impl From<PgCallError> for StoreError {
    fn from(e: PgCallError) -> StoreError {
        StoreError::Unavailable(e.into())
    }
}

impl From<PgCallError> for PermissionError {
    fn from(e: PgCallError) -> PermissionError {
        PermissionError::Unavailable(e.into())
    }
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("pool: {0}")]
    Pool(String),
    #[error("migrations: {0}")]
    Migrations(String),
}

impl PgPool {
    /// A pool for `url`. Connections are made lazily.
    pub fn new(url: &str, settings: &PoolSettings) -> Result<PgPool, PgError> {
        let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
        // A ping per checkout would double the round trips of every commit;
        // broken connections are detected by their errors instead.
        manager_config.recycling_method = RecyclingMethod::Fast;
        let timeout_ms = settings.statement_timeout.as_millis().max(1);
        manager_config.custom_setup = Box::new(move |url| {
            let url = url.to_owned();
            Box::pin(async move {
                use diesel_async::{AsyncConnection, RunQueryDsl};
                let mut conn = AsyncPgConnection::establish(&url).await?;
                diesel::sql_query(format!("SET statement_timeout = {timeout_ms}"))
                    .execute(&mut conn)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            })
        });
        let manager = AsyncDieselConnectionManager::new_with_config(url, manager_config);
        let (max_lifetime, idle_timeout) = (settings.max_lifetime, settings.idle_timeout);
        let pool = Pool::builder(manager)
            .max_size(settings.size)
            .wait_timeout(Some(settings.call_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.call_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                if metrics.age() > max_lifetime || metrics.last_used() > idle_timeout {
                    return Err(HookError::message(
                        "connection past its lifetime or idle timeout",
                    ));
                }
                Ok(())
            }))
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))?;
        Ok(PgPool {
            pool,
            call_timeout: settings.call_timeout,
            statement_timeout: settings.statement_timeout,
        })
    }

    pub(crate) async fn get(&self) -> Result<PooledConnection, PoolError> {
        self.pool.get().await
    }

    /// Runs `f` with a connection, checkout and call together bounded by
    /// the call timeout. Failing to get a connection in time is
    /// [`PgCallError`], which the caller's error turns into its
    /// `Unavailable`.
    pub(crate) async fn with_conn<T, E: From<PgCallError>>(
        &self,
        f: impl AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, E>,
    ) -> Result<T, E> {
        let deadline = tokio::time::Instant::now() + self.call_timeout;
        let mut conn = tokio::time::timeout_at(deadline, self.get())
            .await
            .map_err(|_| PgCallError::Timeout)?
            .map_err(PgCallError::Pool)?;
        match tokio::time::timeout_at(deadline, f(&mut conn)).await {
            Ok(r) => r,
            Err(_) => {
                // A connection that stopped answering goes nowhere but
                // away: back in the pool it would hang the next call too.
                drop(Object::take(conn));
                Err(PgCallError::Timeout.into())
            }
        }
    }

    /// `SELECT 1` (for `/ready`).
    pub async fn ping(&self) -> bool {
        use diesel_async::RunQueryDsl;
        let check = async {
            let mut conn = self.get().await.ok()?;
            diesel::sql_query("SELECT 1").execute(&mut *conn).await.ok()
        };
        matches!(
            tokio::time::timeout(self.call_timeout, check).await,
            Ok(Some(_))
        )
    }

    /// Migrations not yet applied, by name.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, PgError> {
        self.with_harness(|h| {
            h.pending_migrations(MIGRATIONS)
                .map(|m| m.iter().map(|m| m.name().to_string()).collect())
        })
        .await
    }

    /// Applies pending migrations; returns their names.
    pub async fn run_migrations(&self) -> Result<Vec<String>, PgError> {
        self.with_harness(|h| {
            h.run_pending_migrations(MIGRATIONS)
                .map(|v| v.iter().map(|m| m.to_string()).collect())
        })
        .await
    }

    /// Applies the oldest pending migration only; returns its name, or
    /// `None` when none is pending (for stepping through the schema's
    /// history, e.g. to test a migration against data the previous schema
    /// held).
    pub async fn run_next_migration(&self) -> Result<Option<String>, PgError> {
        self.with_harness(|h| {
            if h.has_pending_migration(MIGRATIONS)? {
                h.run_next_migration(MIGRATIONS)
                    .map(|m| Some(m.to_string()))
            } else {
                Ok(None)
            }
        })
        .await
    }

    async fn with_harness<T: Send + 'static>(
        &self,
        f: impl FnOnce(
            &mut diesel_async::AsyncMigrationHarness<Object<AsyncPgConnection>>,
        ) -> Result<T, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + 'static,
    ) -> Result<T, PgError> {
        let conn = self.get().await.map_err(|e| PgError::Pool(e.to_string()))?;
        // The harness blocks on the async connection: run it where blocking
        // is allowed.
        tokio::task::spawn_blocking(move || {
            let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
            f(&mut harness).map_err(|e| PgError::Migrations(e.to_string()))
        })
        .await
        .map_err(|e| PgError::Migrations(e.to_string()))?
    }
}
