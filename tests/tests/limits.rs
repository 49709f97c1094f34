//! End to end: per-user budgets (4429), the join cache of roles, and
//! revocation reaching open sessions (4403) on the database's permissions.

use async_trait::async_trait;
use relay_adapter_jwt::DevKeys;
use relay_adapter_memory::MemoryPermissions;
use relay_adapter_postgres::{PgPermissions, PgPool, PoolSettings};
use relay_app::config::{Config, PermissionSourceKind};
use relay_domain::{DocumentId, UserId};
use relay_ports::protocol::{ErrorCode, Role, ServerMessage};
use relay_ports::{Claims, PermissionError, PermissionSource};
use relay_tests::pg::{database_url, spawn_pg_app};
use relay_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// A connection of `token` to `doc` that sent its `join`; the first thing
/// it receives says how the join went.
async fn join(app: &TestApp, doc: DocumentId, token: &str) -> (Conn, Received) {
    let mut conn = Conn::connect(&app.url(doc)).await;
    conn.join(
        &format!("tab-{}", Uuid::new_v4().simple()),
        Some(token),
        None,
    )
    .await;
    let first = conn.recv().await;
    (conn, first)
}

fn joined(r: &Received) -> bool {
    matches!(r, Received::Message(ServerMessage::Joined { .. }))
}

/// Joins until one is accepted, each refused one with 4429; panics after
/// `within`.
async fn join_once_allowed(app: &TestApp, doc: DocumentId, token: &str, within: Duration) -> Conn {
    let deadline = Instant::now() + within;
    loop {
        let (conn, first) = join(app, doc, token).await;
        if joined(&first) {
            return conn;
        }
        assert_eq!(
            first,
            Received::Closed(Some(4429)),
            "refused only for the limit"
        );
        assert!(Instant::now() < deadline, "still refused after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101st_connection_of_a_user_is_closed_4429_while_another_user_joins() {
    let mut config = Config::default();
    assert_eq!(config.limits.max_connections_per_user, 100, "the default");
    // Only the connection count here.
    config.limits.join_burst = 1000;
    let app = TestApp::spawn_with(config).await;
    let (user, other, doc) = (Uuid::new_v4(), Uuid::new_v4(), new_document());
    let token = app.editor_token(user);
    let mut held = Vec::new();
    for i in 0..100 {
        let (conn, first) = join(&app, doc, &token).await;
        assert!(joined(&first), "connection {i}: {first:?}");
        held.push(conn);
    }
    let (_, first) = join(&app, doc, &token).await;
    assert_eq!(first, Received::Closed(Some(4429)));
    let (_other, first) = join(&app, doc, &app.editor_token(other)).await;
    assert!(joined(&first), "another user is unaffected: {first:?}");
    // A closed connection gives its place back.
    held.pop().expect("a connection").close().await;
    held.push(join_once_allowed(&app, doc, &token, WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_burst_is_closed_4429_then_joins_again_at_the_rate() {
    let mut config = Config::default();
    config.limits.join_burst = 5;
    config.limits.join_rate_per_sec = 2;
    let app = TestApp::spawn_with(config).await;
    let (user, other, doc) = (Uuid::new_v4(), Uuid::new_v4(), new_document());
    let token = app.editor_token(user);
    let mut held = Vec::new();
    for i in 0..5 {
        let (conn, first) = join(&app, doc, &token).await;
        assert!(joined(&first), "join {i} of the burst: {first:?}");
        held.push(conn);
    }
    let (_, first) = join(&app, doc, &token).await;
    assert_eq!(first, Received::Closed(Some(4429)));
    let (_other, first) = join(&app, doc, &app.editor_token(other)).await;
    assert!(joined(&first), "another user is unaffected: {first:?}");
    // One join back every 1/2 s.
    held.push(join_once_allowed(&app, doc, &token, Duration::from_secs(3)).await);
}

/// The in-memory permission source, counting lookups.
#[derive(Clone, Default)]
struct Counting {
    grants: MemoryPermissions,
    lookups: Arc<AtomicUsize>,
}

#[async_trait]
impl PermissionSource for Counting {
    async fn role(
        &self,
        claims: &Claims,
        document: DocumentId,
    ) -> Result<Option<Role>, PermissionError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.grants.role(claims, document).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_of_one_user_and_document_within_the_ttl_cost_one_lookup() {
    let mut config = Config::default();
    config.auth.permission_source = PermissionSourceKind::Database;
    let keys = DevKeys::from_seed([7; 32]);
    let (mut adapters, metrics) =
        relay_app::wiring::memory_adapters(relay_app::wiring::dev_verifier(&config, &keys));
    let source = Counting::default();
    adapters.permissions = Arc::new(source.clone());
    let relay = relay_app::Relay::new(config.clone(), adapters, Vec::new());
    let jwks = Some(keys.jwks_json().into());
    let app = TestApp::serve(&config, relay, jwks, keys, metrics).await;
    let (user, stranger, doc) = (Uuid::new_v4(), Uuid::new_v4(), new_document());
    source.grants.grant(UserId::new(user), doc, Role::Viewer);
    let token = app.token(user, &[]);
    let mut held = Vec::new();
    for _ in 0..10 {
        let (conn, first) = join(&app, doc, &token).await;
        assert!(joined(&first), "{first:?}");
        held.push(conn);
    }
    // Refusals are kept as well.
    let token = app.token(stranger, &[]);
    for _ in 0..10 {
        let (_, first) = join(&app, doc, &token).await;
        assert_eq!(first, Received::Closed(Some(4403)));
    }
    assert_eq!(source.lookups.load(Ordering::SeqCst), 2, "one per user");
}

/// The database's permissions, for granting and revoking in the tests.
fn grants() -> PgPermissions {
    PgPermissions::new(PgPool::new(&database_url(), &PoolSettings::default()).expect("pool"))
}

fn database_permissions(ttl: Duration) -> Config {
    let mut config = Config::default();
    config.auth.permission_source = PermissionSourceKind::Database;
    config.auth.permission_cache_ttl = ttl;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_grant_is_removed_is_closed_4403_within_the_ttl_without_sending_anything() {
    let ttl = Duration::from_secs(2);
    let app = spawn_pg_app(database_permissions(ttl)).await;
    let grants = grants();
    let (reader, writer, doc) = (Uuid::new_v4(), Uuid::new_v4(), new_document());
    grants
        .grant(UserId::new(reader), doc, Role::Viewer)
        .await
        .unwrap();
    grants
        .grant(UserId::new(writer), doc, Role::Editor)
        .await
        .unwrap();
    let (mut revoked, first) = join(&app, doc, &app.token(reader, &[])).await;
    assert!(joined(&first), "{first:?}");
    let mut editor = Editor::join(&app, doc, writer, "writer", &app.token(writer, &[])).await;
    grants.revoke(UserId::new(reader), doc).await.unwrap();
    let start = Instant::now();
    // The reader sends nothing; it may still see the editor's ops until the
    // re-check closes it.
    let code = loop {
        match revoked.recv_within(ttl + Duration::from_secs(3)).await {
            Some(Received::Closed(code)) => break code,
            Some(Received::Message(_)) => {}
            None => panic!("not closed within the TTL"),
        }
    };
    assert_eq!(code, Some(4403));
    // The TTL, plus the sweeper's look each second and the lookup.
    assert!(
        start.elapsed() < ttl + Duration::from_secs(2),
        "closed after {:?}",
        start.elapsed()
    );
    // The editor, whose grant stands, goes on.
    editor.insert(0, "still here").await;
    editor.settle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_downgraded_to_viewer_gets_forbidden_on_submit() {
    let ttl = Duration::from_secs(1);
    let app = spawn_pg_app(database_permissions(ttl)).await;
    let grants = grants();
    let (user, doc) = (Uuid::new_v4(), new_document());
    grants
        .grant(UserId::new(user), doc, Role::Editor)
        .await
        .unwrap();
    let (mut conn, first) = join(&app, doc, &app.token(user, &[])).await;
    assert!(joined(&first), "{first:?}");
    conn.send_text(submit(1, 0, serde_json::json!([{"insert": "a"}])))
        .await;
    assert!(matches!(answer(&mut conn).await, ServerMessage::Ack { .. }));
    grants
        .grant(UserId::new(user), doc, Role::Viewer)
        .await
        .unwrap();
    // Submits are acked until the re-check, within the TTL, sees the
    // viewer; then forbidden, and the connection stays open.
    let deadline = Instant::now() + ttl + Duration::from_secs(3);
    let mut seq = 2;
    loop {
        conn.send_text(submit(seq, seq - 1, serde_json::json!([{"insert": "b"}])))
            .await;
        match answer(&mut conn).await {
            ServerMessage::Ack { .. } => seq += 1,
            ServerMessage::Error { code, fatal, .. } => {
                assert_eq!((code, fatal), (ErrorCode::Forbidden, false));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "still an editor after the TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(conn.recv_within(Duration::from_millis(200)).await.is_none());
}
