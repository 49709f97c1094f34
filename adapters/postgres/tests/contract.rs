//! The outbound ports' contract suites against PostgreSQL (a fresh database
//! per test process; see `relay_adapter_postgres::testdb`).

use relay_adapter_postgres::{PgPermissions, PgPool, PgStore, PoolSettings, testdb};
use relay_domain::{DocumentId, UserId};
use relay_ports::contract;

fn pool() -> PgPool {
    PgPool::new(&testdb::test_database(), &PoolSettings::default()).expect("pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_operation_store_contract() {
    contract::store::run_all(&async || PgStore::new(pool()), &|t| {
        tokio::spawn(t);
    })
    .await;
}

/// The same with the store's own checks off: the data reaches PostgreSQL,
/// which refuses the statement; the committer retries its batches one by
/// one, so still only the bad one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_a_statement_fails_only_the_batch_it_refuses() {
    contract::store::a_batch_with_data_the_store_cannot_hold_fails_alone(
        &async || PgStore::without_data_checks(pool()),
        &|t| {
            tokio::spawn(t);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_permission_source_keeps_the_granted_source_contract() {
    contract::permissions::granted_source(
        &async || PgPermissions::new(pool()),
        &async |p: &PgPermissions, user, doc, role| match role {
            Some(r) => p.grant(user, doc, r).await.expect("grant"),
            None => p.revoke(user, doc).await.expect("revoke"),
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

/// The migration that moved each document's head onto its row: a database
/// that held operations under the first schema gets every head from its
/// log, and appends then continue from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_migration_takes_each_head_from_the_log() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use relay_domain::{ClientId, CommittedOp, Delta, Seq, Version};
    use relay_ports::{Append, OperationStore};

    let url = testdb::create_empty_database(&testdb::admin_url(), &testdb::fresh_name())
        .await
        .expect("database");
    let pool = PgPool::new(&url, &PoolSettings::default()).expect("pool");
    let first = pool.run_next_migration().await.expect("first migration");
    assert_eq!(first.as_deref(), Some("20261127000001"));
    let (busy, empty) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let user = uuid::Uuid::new_v4();
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    diesel::sql_query(format!(
        "INSERT INTO documents (id) VALUES ('{busy}'), ('{empty}')"
    ))
    .execute(&mut conn)
    .await
    .expect("documents under the first schema");
    diesel::sql_query(format!(
        "INSERT INTO operations (id, document_id, version, actor_id, client_id, seq,
                                 operation_type, position, vector_clock, delta)
         SELECT gen_random_uuid(), '{busy}', v, '{user}', 'c', v, 'insert', 0, '{{}}',
                '[{{\"insert\":\"x\"}}]'
         FROM generate_series(1, 3) v"
    ))
    .execute(&mut conn)
    .await
    .expect("operations under the first schema");

    let rest = pool.run_migrations().await.expect("later migrations");
    assert_eq!(rest, vec!["20261127000002".to_owned()]);
    let store = PgStore::new(pool);
    assert_eq!(
        store.head(DocumentId::new(busy)).await,
        Ok(Version::from(3))
    );
    assert_eq!(
        store.head(DocumentId::new(empty)).await,
        Ok(Version::from(0))
    );

    let next = |version: u64| {
        let mut delta = Delta::new();
        delta.retain(version as usize - 1).insert("y");
        CommittedOp {
            version: Version::new(version).unwrap(),
            user: UserId::new(user),
            client_id: ClientId::new("c").expect("id"),
            seq: Seq::new(100 + version).unwrap(),
            delta,
        }
    };
    assert_eq!(
        store.append(DocumentId::new(busy), None, &[next(3)]).await,
        Ok(Append::Conflict {
            current: Version::from(3)
        })
    );
    assert_eq!(
        store.append(DocumentId::new(busy), None, &[next(4)]).await,
        Ok(Append::Committed)
    );
    assert_eq!(
        store.append(DocumentId::new(empty), None, &[next(1)]).await,
        Ok(Append::Committed)
    );
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct SeedColumns {
    #[diesel(sql_type = diesel::sql_types::Text)]
    operation_type: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    position: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    content: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    bold: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    clock: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    delta_type: String,
}

/// The seed's columns hold real JSON derived from each delta, not JSON
/// text in a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_holds_the_seed_columns_derived_from_its_delta() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use relay_domain::{Attributes, ClientId, CommittedOp, Delta, Seq, Version};
    use relay_ports::{Append, OperationStore};

    let store = PgStore::new(pool());
    let document = DocumentId::new(uuid::Uuid::new_v4());
    let user = UserId::new(uuid::Uuid::new_v4());
    let client_id = ClientId::new("tab").expect("id");
    let op = |version: u64, seq: u64, delta: Delta| CommittedOp {
        version: Version::new(version).unwrap(),
        user,
        client_id: client_id.clone(),
        seq: Seq::new(seq).unwrap(),
        delta,
    };
    let mut first = Delta::new();
    first.insert("hello");
    let mut second = Delta::new();
    second
        .retain(2)
        .insert_with("yy", Attributes::default().with("bold", true));
    let mut third = Delta::new();
    third.retain(1).delete(3);
    assert_eq!(
        store
            .append(
                document,
                None,
                &[op(1, 7, first), op(2, 8, second), op(3, 9, third)]
            )
            .await,
        Ok(Append::Committed)
    );

    let mut conn = AsyncPgConnection::establish(&testdb::test_database())
        .await
        .expect("connect");
    let rows: Vec<SeedColumns> = diesel::sql_query(
        "SELECT operation_type, position, content, attributes->>'bold' AS bold,
                vector_clock::text AS clock, jsonb_typeof(delta) AS delta_type
         FROM operations WHERE document_id = $1 ORDER BY version",
    )
    .bind::<diesel::sql_types::Uuid, _>(*document.as_uuid())
    .load(&mut conn)
    .await
    .expect("rows");
    let row =
        |t: &str, position, content: Option<&str>, bold: Option<&str>, clock: &str| SeedColumns {
            operation_type: t.into(),
            position,
            content: content.map(Into::into),
            bold: bold.map(Into::into),
            clock: clock.into(),
            delta_type: "array".into(),
        };
    assert_eq!(
        rows,
        vec![
            row(
                "insert",
                0,
                Some("hello"),
                None,
                r#"{"client": 7, "server": 0}"#
            ),
            row(
                "insert",
                2,
                Some("yy"),
                Some("true"),
                r#"{"client": 8, "server": 1}"#
            ),
            row("delete", 1, None, None, r#"{"client": 9, "server": 2}"#),
        ]
    );
}

/// With a call timeout far below what PostgreSQL needs, many appends give
/// up waiting - and every answer is still true: `Unavailable` only for a
/// batch that is not in the store (now or later), `Committed` for one that
/// is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tiny_call_timeout_unavailable_still_means_nothing_was_written() {
    use relay_domain::{ClientId, CommittedOp, Delta, Seq, Version};
    use relay_ports::{Append, OperationStore, StoreError};
    use std::sync::Arc;
    use std::time::Duration;
    let tiny = PoolSettings {
        call_timeout: Duration::from_millis(3),
        ..PoolSettings::default()
    };
    let url = testdb::test_database();
    let store = Arc::new(PgStore::new(PgPool::new(&url, &tiny).expect("pool")));
    let client = ClientId::new("tiny").unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        // In waves, so some find the committers busy and some idle.
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (store, client) = (store.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let document = DocumentId::new(uuid::Uuid::new_v4());
            let user = UserId::new(uuid::Uuid::new_v4());
            let mut delta = Delta::new();
            delta.insert("x");
            let op = CommittedOp {
                version: Version::from(1),
                user,
                client_id: client.clone(),
                seq: Seq::from(1),
                delta,
            };
            let started = std::time::Instant::now();
            let answer = store
                .append(document, None, std::slice::from_ref(&op))
                .await;
            (document, user, answer, started.elapsed())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    // Give anything still in flight time to land, then read with a store
    // that waits normally.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reader = PgStore::new(pool());
    let (mut committed, mut unavailable, mut late) = (0, 0, 0);
    for (document, user, answer, took) in answers {
        if took > tiny.call_timeout {
            late += 1;
        }
        let found = reader
            .find(document, user, &client, Seq::from(1))
            .await
            .expect("find");
        match answer {
            Ok(Append::Committed) => {
                committed += 1;
                assert_eq!(found, Some(Version::from(1)));
            }
            Err(StoreError::Unavailable(why)) => {
                unavailable += 1;
                assert_eq!(
                    found, None,
                    "answered unavailable ({why}) but it was written"
                );
            }
            Err(StoreError::Unknown(_)) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    println!(
        "{committed} committed, {unavailable} unavailable of 200; {late} outlived the call timeout"
    );
    assert!(
        late > 0,
        "some appends must outlive the call timeout for the test to mean anything"
    );
}

/// Two instances (two stores, two commit pipelines) append to the same
/// documents at the same moments, each batch naming them in the opposite
/// order: the statements lock documents in id order, so they wait for each
/// other instead of deadlocking (PostgreSQL would abort one of them, after a
/// second, with "deadlock detected").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_committing_overlapping_documents_never_deadlock() {
    use relay_domain::{ClientId, CommittedOp, Delta, Seq, Version};
    use relay_ports::{Append, OperationStore, StoreError};
    use std::sync::Arc;
    const DOCS: usize = 16;
    const ROUNDS: u64 = 40;
    let (one, two) = (
        Arc::new(PgStore::new(pool())),
        Arc::new(PgStore::new(pool())),
    );
    let documents: Vec<DocumentId> = (0..DOCS)
        .map(|_| DocumentId::new(uuid::Uuid::new_v4()))
        .collect();
    let op = |version: u64, who: &str| {
        let mut delta = Delta::new();
        delta
            .retain(usize::try_from(version - 1).unwrap())
            .insert("x");
        CommittedOp {
            version: Version::new(version).unwrap(),
            user: UserId::new(uuid::Uuid::from_u128(1)),
            client_id: ClientId::new(who).unwrap(),
            seq: Seq::new(version).unwrap(),
            delta,
        }
    };
    // Every document gets a first op, so the rounds update existing rows.
    for d in &documents {
        assert_eq!(
            one.append(*d, None, &[op(1, "seed")]).await,
            Ok(Append::Committed)
        );
    }
    let mut deadlocks = 0;
    for round in 2..ROUNDS + 2 {
        let mut tasks = Vec::new();
        for (store, who, reverse) in [(one.clone(), "one", false), (two.clone(), "two", true)] {
            let mut order = documents.clone();
            if reverse {
                order.reverse();
            }
            for d in order {
                let store = store.clone();
                let o = op(round, who);
                tasks.push(tokio::spawn(
                    async move { store.append(d, None, &[o]).await },
                ));
            }
        }
        for t in tasks {
            match t.await.expect("task") {
                Err(StoreError::Unavailable(why)) if why.to_string().contains("deadlock") => {
                    deadlocks += 1
                }
                _ => {}
            }
        }
        // Whoever lost a version catches up: move every document's head on.
        for d in &documents {
            let head = one.head(*d).await.expect("head");
            if head < Version::new(round).unwrap() {
                let _ = one.append(*d, None, &[op(round, "fill")]).await;
            }
        }
    }
    assert_eq!(deadlocks, 0, "statements deadlocked {deadlocks} times");
}

fn keyed_op(version: u64, client: &str) -> relay_domain::CommittedOp {
    use relay_domain::{ClientId, CommittedOp, Delta, Seq, Version};
    let mut delta = Delta::new();
    delta
        .retain(usize::try_from(version - 1).unwrap())
        .insert("x");
    CommittedOp {
        version: Version::new(version).unwrap(),
        user: UserId::new(uuid::Uuid::from_u128(7)),
        client_id: ClientId::new(client).unwrap(),
        seq: Seq::new(version).unwrap(),
        delta,
    }
}

/// A head whose op row is gone (trimmed) passes the identity check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_whose_op_was_trimmed_passes_the_identity_check() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use relay_domain::{ClientId, OpKey, Seq, Version};
    use relay_ports::{Append, OperationStore};
    let store = PgStore::new(pool());
    let document = DocumentId::new(uuid::Uuid::new_v4());
    let ops = [keyed_op(1, "trim"), keyed_op(2, "trim")];
    assert_eq!(
        store.append(document, None, &ops).await,
        Ok(Append::Committed)
    );
    let mut conn = AsyncPgConnection::establish(&testdb::test_database())
        .await
        .expect("connect");
    diesel::sql_query("DELETE FROM operations WHERE document_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(*document.as_uuid())
        .execute(&mut conn)
        .await
        .expect("trim");
    let stranger = OpKey {
        user: UserId::new(uuid::Uuid::new_v4()),
        client_id: ClientId::new("stranger").unwrap(),
        seq: Seq::from(1),
    };
    assert_eq!(
        store
            .append(document, Some(stranger), &[keyed_op(3, "trim")])
            .await,
        Ok(Append::Committed)
    );
    assert_eq!(store.head(document).await, Ok(Version::from(3)));
}

/// Our append waits on the document's row lock while another writer
/// commits the very version our batch builds on: our statement's snapshot
/// predates that op's row, so it cannot check it there. The document is
/// written again alone with a fresh snapshot, which finds the other
/// writer's op is not the one we name: `Diverged`, nothing written -
/// never `Committed` on an unchecked head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_committed_at_the_head_while_waiting_for_the_lock_is_still_checked() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use relay_domain::Version;
    use relay_ports::{Append, OperationStore};
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    let store = Arc::new(PgStore::new(pool()));
    let document = DocumentId::new(uuid::Uuid::new_v4());
    let doc = *document.as_uuid();
    assert_eq!(
        store.append(document, None, &[keyed_op(1, "ours")]).await,
        Ok(Append::Committed)
    );
    let (ours_at_2, theirs_at_2) = (keyed_op(2, "ours"), keyed_op(2, "theirs"));

    // The other writer: version 2 in an open transaction, the row locked.
    let url = testdb::test_database();
    let mut other = AsyncPgConnection::establish(&url).await.expect("connect");
    diesel::sql_query("BEGIN")
        .execute(&mut other)
        .await
        .expect("begin");
    diesel::sql_query("UPDATE documents SET head = 2 WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(doc)
        .execute(&mut other)
        .await
        .expect("head");
    diesel::sql_query(
        "INSERT INTO operations (id, document_id, version, actor_id, client_id, seq,
                                 operation_type, position, vector_clock, delta)
         VALUES (gen_random_uuid(), $1, 2, $2, 'theirs', 2, 'insert', 1, '{}',
                 '[{\"retain\":1},{\"insert\":\"x\"}]')",
    )
    .bind::<diesel::sql_types::Uuid, _>(doc)
    .bind::<diesel::sql_types::Uuid, _>(*theirs_at_2.user.as_uuid())
    .execute(&mut other)
    .await
    .expect("their op");

    // Ours: version 3 on our version 2, which the store does not hold.
    let append = {
        let store = store.clone();
        let prev = Some(ours_at_2.key());
        tokio::spawn(async move { store.append(document, prev, &[keyed_op(3, "ours")]).await })
    };
    let mut watcher = AsyncPgConnection::establish(&url).await.expect("connect");
    let mut waiting = false;
    for _ in 0..200 {
        let c: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE 'WITH b AS%'",
        )
        .get_result(&mut watcher)
        .await
        .expect("activity");
        if c.n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        waiting,
        "our append must wait for the other writer's row lock"
    );
    diesel::sql_query("COMMIT")
        .execute(&mut other)
        .await
        .expect("commit");

    let answer = tokio::time::timeout(Duration::from_secs(10), append)
        .await
        .expect("bounded")
        .expect("task");
    assert_eq!(
        answer,
        Ok(Append::Diverged {
            current: Version::from(2)
        })
    );
    assert_eq!(store.head(document).await, Ok(Version::from(2)));
    let held = store.read(document, Version::ZERO, 10).await.expect("read");
    assert_eq!(held.len(), 2);
    assert_eq!(held[1].key(), theirs_at_2.key());
}
