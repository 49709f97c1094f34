//! Fresh databases for tests: each test process gets its own database on
//! the server named by `RELAY_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), migrated, so test runs
//! never share state. Databases such runs left behind more than an hour ago
//! are dropped when the next one starts.

use super::{PgError, PgPool, PoolSettings};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The server tests use.
pub fn admin_url() -> String {
    std::env::var("RELAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(admin: &str, name: &str) -> String {
    match admin.rfind('/') {
        Some(i) => format!("{}/{name}", &admin[..i]),
        None => format!("{admin}/{name}"),
    }
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    datname: String,
}

/// A database name no other test run uses, which a later run may drop once
/// it is an hour old.
pub fn fresh_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("relay_test_{now}_{}", uuid::Uuid::new_v4().simple())
}

/// Creates and migrates a database named `name`; returns its URL.
pub async fn create_database(admin: &str, name: &str) -> Result<String, PgError> {
    let url = create_empty_database(admin, name).await?;
    let pool = PgPool::new(&url, &PoolSettings::default())?;
    pool.run_migrations().await?;
    Ok(url)
}

/// Creates a database named `name` without any schema; returns its URL.
pub async fn create_empty_database(admin: &str, name: &str) -> Result<String, PgError> {
    let mut conn = AsyncPgConnection::establish(admin)
        .await
        .map_err(|e| PgError::Pool(format!("{admin}: {e}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let old: Vec<Name> =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'relay_test_%'")
            .load(&mut conn)
            .await
            .unwrap_or_default();
    for db in old {
        let stamp = db
            .datname
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok());
        if stamp.is_some_and(|s| s + 3600 < now) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                db.datname
            ))
            .execute(&mut conn)
            .await;
        }
    }
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .map_err(|e| PgError::Pool(format!("CREATE DATABASE {name}: {e}")))?;
    Ok(with_database(admin, name))
}

/// This process's test database, created on first use.
pub fn test_database() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        // Its own runtime on its own thread: callers may be inside any
        // runtime, and connections must not outlive the runtime that made
        // them.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(create_database(&admin_url(), &fresh_name()))
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot create the test database (is PostgreSQL running? see .ci/test): {e}"
                    )
                })
        })
        .join()
        .expect("test database thread")
    })
    .clone()
}
