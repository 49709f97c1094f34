//! The outbound ports' contract suites against PostgreSQL (a fresh database
//! per test process; see `relay_adapters::postgres::testdb`).

use relay_adapters::postgres::{PgPermissions, PgPool, PgStore, PoolSettings, testdb};
use relay_domain::{DocumentId, UserId};
use relay_ports::contract;
use relay_ports::protocol::Role;

fn pool() -> PgPool {
    PgPool::new(&testdb::test_database(), &PoolSettings::default()).expect("pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_operation_store_contract() {
    contract::store::run_all(|| async { PgStore::new(pool()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_concurrent_appends_at_a_version_wins_on_postgres() {
    contract::store::exactly_one_concurrent_append_wins(|| async { PgStore::new(pool()) }, &|t| {
        tokio::spawn(t);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_permission_source_keeps_the_granted_source_contract() {
    contract::permissions::granted_source(
        || async { PgPermissions::new(pool()) },
        |p: &PgPermissions, user: UserId, doc: DocumentId, role: Option<Role>| {
            let p = p.clone();
            async move {
                match role {
                    Some(r) => p.grant(user, doc, r).await.expect("grant"),
                    None => p.revoke(user, doc).await.expect("revoke"),
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_all_applied_and_rerunning_them_changes_nothing() {
    let pool = pool();
    assert_eq!(
        pool.pending_migrations().await.expect("pending"),
        Vec::<String>::new()
    );
    assert_eq!(
        pool.run_migrations().await.expect("run"),
        Vec::<String>::new()
    );
    assert!(pool.ping().await);
}
