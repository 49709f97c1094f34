//! End-to-end on PostgreSQL: real WebSocket clients, the real app, a fresh
//! database per test process.

use relay_adapter_postgres::{PgPool, PgStore, PoolSettings};
use relay_app::config::Config;
use relay_domain::{DocumentId, Version};
use relay_ports::OperationStore;
use relay_ports::protocol::ServerMessage;
use relay_tests::pg::{Proxy, database_url, spawn_pg_app};
use relay_tests::*;
use std::time::Duration;
use uuid::Uuid;

fn store() -> PgStore {
    PgStore::new(PgPool::new(&database_url(), &PoolSettings::default()).expect("pool"))
}

async fn fresh_text(app: &TestApp, doc: DocumentId) -> (String, Version) {
    let user = Uuid::new_v4();
    let e = Editor::join(
        app,
        doc,
        user,
        &format!("reader-{}", Uuid::new_v4().simple()),
        &app.editor_token(user),
    )
    .await;
    (e.text(), e.client.version())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_editors_converge_and_every_acked_op_survives_a_restart() {
    let doc = new_document();
    let mut config = Config::default();
    config.shutdown.grace = Duration::ZERO;
    let app = spawn_pg_app(config.clone()).await;
    let (ua, ub) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    for i in 0..20 {
        a.insert(0, &format!("a{i} ")).await;
        let end = b.client.document().len();
        b.insert(end, &format!("b{i}🙂")).await;
        if i % 5 == 4 {
            a.settle().await;
            b.settle().await;
        }
    }
    a.settle().await;
    b.settle().await;
    let version = a.client.version().max(b.client.version());
    a.catch_up_to(version).await;
    b.catch_up_to(version).await;
    assert_eq!(a.text(), b.text());
    let expected = a.text();
    let acked = a.acks.len() + b.acks.len();
    assert_eq!(
        version,
        Version::new(acked as u64).unwrap(),
        "every op was acked exactly once"
    );

    app.relay.shutdown().await;
    drop((a, b, app));
    let again = spawn_pg_app(config).await;
    assert_eq!(fresh_text(&again, doc).await, (expected, version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_reopen_from_the_latest_snapshot_plus_the_tail() {
    let doc = new_document();
    let mut config = Config::default();
    config.store.snapshot_every = 5;
    let app = spawn_pg_app(config.clone()).await;
    let user = Uuid::new_v4();
    let mut e = Editor::join(&app, doc, user, "tab", &app.editor_token(user)).await;
    for i in 0..12 {
        e.insert(0, &i.to_string()).await;
        e.settle().await;
    }
    let expected = e.text();
    // As if this instance crashed now: nothing more is written.
    let loaded = store().load(doc).await.expect("load");
    let snapshot = loaded.snapshot.expect("a snapshot was written");
    assert_eq!(snapshot.version, Version::from(10));
    assert_eq!(
        loaded.tail.iter().map(|o| o.version).collect::<Vec<_>>(),
        vec![Version::from(11), Version::from(12)]
    );
    // Another instance opens the document from snapshot + tail.
    let other = spawn_pg_app(config).await;
    assert_eq!(fresh_text(&other, doc).await, (expected, Version::from(12)));
    drop(e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_unreachable_nothing_is_acknowledged_nor_called_unavailable_and_service_resumes()
 {
    let (proxy, url) = Proxy::to_test_database().await;
    let mut config = Config::default();
    config.store.database_url = Some(url);
    let app = spawn_pg_app(config).await;
    let doc = new_document();
    let user = Uuid::new_v4();
    let token = app.editor_token(user);
    let mut e = Editor::join(&app, doc, user, "tab", &token).await;
    e.insert(0, "durable ").await;
    e.settle().await;

    proxy.cut();
    e.insert(8, "lost?").await;
    let seq = e.client.inflight().expect("in flight").seq;
    // No ack for an op that is not durable, and no `unavailable` either:
    // with the store unreadable, whether an earlier attempt of this seq
    // committed cannot be known, so the client is sent to reconnect (1013)
    // and re-send - each time, while the store is down.
    for attempt in 0..2 {
        match e.conn.recv().await {
            Received::Closed(code) => assert_eq!(code, Some(1013), "attempt {attempt}"),
            other => panic!("attempt {attempt}: expected 1013, got {other:?}"),
        }
        if attempt == 0 {
            e.rejoin(&app, &token).await;
        }
    }
    assert_eq!(e.acks.len(), 1);
    let ready = http_get(app.addr, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains(r#""database":"error""#), "{ready}");

    proxy.restore();
    // The client resumes once more and re-sends: committed exactly once.
    e.rejoin(&app, &token).await;
    e.settle().await;
    assert_eq!(e.text(), "durable lost?");
    let ops = store()
        .read(doc, Version::from(0), 100)
        .await
        .expect("read");
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[1].seq, seq);
    // `/ready` runs its checks at most once a second: the answer from
    // before the restore may be served for up to a second more.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ready = http_get(app.addr, "/ready").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not ready 5 s after the database returned: {ready}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    out
}

/// The database stops answering while an append is in flight (packets
/// dropped, connections left open): the outcome is unknown, so the client
/// is never told `unavailable` - it is sent to reconnect (1013) - and
/// `/ready` reports the stuck writes within the statement timeout. When
/// the network returns, the re-sent submit commits exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_mid_append_is_never_reported_as_nothing_committed() {
    let (proxy, url) = Proxy::to_test_database().await;
    let mut config = Config::default();
    config.store.database_url = Some(url);
    config.store.pool.statement_timeout = Duration::from_millis(300);
    let app = spawn_pg_app(config).await;
    let doc = new_document();
    let user = Uuid::new_v4();
    let token = app.editor_token(user);
    let mut e = Editor::join(&app, doc, user, "tab", &token).await;
    e.insert(0, "durable ").await;
    e.settle().await;

    proxy.stall();
    e.insert(8, "unknown").await;
    let seq = e.client.inflight().expect("in flight").seq;
    // Writes are stuck: once the statement timeout has passed with the
    // append pending and nothing finished, `/ready` says so at once - before
    // the committer gives up on the statement (a second later), and without
    // waiting for a ping of the database (which would hang for the call
    // timeout, 5 s).
    tokio::time::sleep(Duration::from_millis(350)).await;
    let stuck = tokio::time::timeout(Duration::from_millis(600), http_get(app.addr, "/ready"))
        .await
        .expect("/ready answers at once while writes are stuck");
    assert!(stuck.starts_with("HTTP/1.1 503"), "{stuck}");
    assert!(stuck.contains(r#""database":"error""#), "{stuck}");
    // No answer would be true: the connection is closed with 1013.
    match e.conn.recv_within(Duration::from_secs(20)).await {
        Some(Received::Closed(code)) => assert_eq!(code, Some(1013)),
        other => panic!("expected a 1013 close, got {other:?}"),
    }
    assert_eq!(e.acks.len(), 1);

    proxy.cut();
    proxy.restore();
    e.rejoin(&app, &token).await;
    e.settle().await;
    assert_eq!(e.text(), "durable unknown");
    let ops = store()
        .read(doc, Version::from(0), 100)
        .await
        .expect("read");
    assert_eq!(ops.len(), 2, "committed exactly once");
    assert_eq!(ops[1].seq, seq);
    // `/ready` runs its checks at most once a second: the answer from
    // before the restore may be served for up to a second more.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ready = http_get(app.addr, "/ready").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not ready 5 s after the database returned: {ready}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_submit_on_a_base_before_the_snapshot_is_rebased_over_edits_in_the_middle() {
    // Review 2026-12-07 F4: ops read back from PostgreSQL lack their
    // trailing retain; a stale base in the middle of a document must still
    // rebase, as PROTOCOL.md promises (it used to be `stale_base`).
    let mut config = Config::default();
    config.store.snapshot_every = 2;
    config.limits.room_idle = Duration::from_secs(1);
    let app = spawn_pg_app(config).await;
    let doc = new_document();
    let (uw, ur) = (Uuid::new_v4(), Uuid::new_v4());
    let mut w = Editor::join(&app, doc, uw, "writer", &app.editor_token(uw)).await;
    w.insert(0, "hello world").await;
    w.settle().await;
    let r_token = app.editor_token(ur);
    let mut r = Conn::connect(&app.url(doc)).await;
    r.join("reader", Some(&r_token), None).await;
    let since = match r.message().await {
        ServerMessage::Joined { version, .. } => version,
        other => panic!("expected joined, got {other:?}"),
    };
    assert_eq!(since, Version::from(1u32));
    // Three edits in the middle, then everyone leaves: the room snapshots
    // and closes.
    for (pos, text) in [(5, ","), (6, " dear"), (0, ">")] {
        w.insert(pos, text).await;
        w.settle().await;
    }
    assert_eq!(w.text(), ">hello, dear world");
    w.conn.close().await;
    r.close().await;
    app.await_health("active_documents", 0).await;
    // The reader resumes and re-sends its submit as first sent: "!" at the
    // end of "hello world", at version 1.
    let mut r = Conn::connect(&app.url(doc)).await;
    r.join("reader", Some(&r_token), Some(since)).await;
    assert!(matches!(r.message().await, ServerMessage::Joined { .. }));
    r.send_text(submit(
        1,
        1,
        serde_json::json!([{"retain": 11}, {"insert": "!"}]),
    ))
    .await;
    match answer(&mut r).await {
        ServerMessage::Ack { version, .. } => assert_eq!(version, Version::from(5u32)),
        other => panic!("expected the ack, got {other:?}"),
    }
    let (text, _) = fresh_text(&app, doc).await;
    assert_eq!(text, ">hello, dear world!");
}
