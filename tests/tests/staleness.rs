//! Views and presence across instances (PROTOCOL.md): two `relay`
//! processes, A and B, on this test process's PostgreSQL and a Redis of the
//! test's own, with the project's `Proxy` in front of Redis (or PostgreSQL)
//! for one of them. Each test breaks the fan-out in one way and checks what
//! the protocol promises whatever the fan-out does:
//! - every client receives every committed op within 5 s of its commit,
//!   never twice, never with a gap (the `Editor`'s model client fails on a
//!   duplicate or a gap);
//! - presence is per (user, client_id), survives a move to another
//!   instance, and comes back within PRESENCE_TTL_SECS after Redis lost it;
//! - Redis being slow does not hold back acks;
//! - `unavailable` only when nothing was committed.
//!
//! Every wait is bounded and names what did not happen.

use relay_domain::{DocumentId, Selection, Version};
use relay_ports::ClientMessage;
use relay_ports::protocol::{ErrorCode, ServerMessage};
use relay_tests::instances::{Cluster, RedisServer, redis_cli};
use relay_tests::pg::{Proxy, store_log};
use relay_tests::{Conn, Editor, Received, new_document, submit};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What the protocol allows between a commit and every client having it.
const DELIVERY: Duration = Duration::from_secs(5);

/// PROTOCOL.md: from the upgrade to `joined` at most AUTH_TIMEOUT_SECS
/// (default 10) + 2 s.
const JOIN_BOUND: Duration = Duration::from_secs(12);

const A: usize = 0;
const B: usize = 1;

/// Instances A and B; instance `proxied`'s Redis link goes through the
/// returned proxy.
async fn two_with_proxy(proxied: usize, extra: &[(&str, &str)]) -> (Cluster, Proxy) {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    let url = format!("redis://{}", proxy.addr);
    let cluster =
        Cluster::start_with(2, redis, extra, |i| (i == proxied).then(|| url.clone())).await;
    (cluster, proxy)
}

/// A new editor (user and client id of its own) joined on instance `at`.
async fn editor(cluster: &Cluster, at: usize, document: DocumentId, name: &str) -> Editor {
    let user = Uuid::new_v4();
    let token = cluster.token(user);
    let url = cluster.instances[at].url(document);
    tokio::time::timeout(
        Duration::from_secs(10),
        Editor::join_url(&url, document, user, name, &token),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{name}: no joined from {} in 10 s",
            cluster.instances[at].name
        )
    })
}

/// One edit by `w`, acknowledged (at most 10 s); its version.
async fn commit_one(w: &mut Editor, text: &str) -> Version {
    w.insert(0, text).await;
    tokio::time::timeout(Duration::from_secs(10), w.settle())
        .await
        .unwrap_or_else(|_| panic!("{}: no ack in 10 s", w.client.client_id()));
    w.acks.last().expect("an ack").1
}

/// Handles what `e` receives until its client has `version`; panics if
/// that takes longer than `within` (or the connection closes).
async fn await_version(e: &mut Editor, version: Version, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    while e.client.version() < version {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match e.conn.recv_within(left).await {
            Some(Received::Message(m)) => e.handle_received(&Received::Message(m)).await,
            Some(Received::Closed(c)) => panic!("{what}: closed ({c:?}) at {}", e.client.version()),
            None => panic!(
                "{what}: {} is at {} after {within:?}, version {version} was committed",
                e.client.client_id(),
                e.client.version()
            ),
        }
    }
    start.elapsed()
}

/// Handles everything `e` receives for `wait` (a duplicate or a gap fails
/// the `Editor`); the messages.
async fn drain_for(e: &mut Editor, wait: Duration) -> Vec<ServerMessage> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match e.conn.recv_within(left).await {
            Some(Received::Message(m)) => {
                e.handle_received(&Received::Message(m.clone())).await;
                got.push(m);
            }
            Some(Received::Closed(c)) => panic!("{}: closed ({c:?})", e.client.client_id()),
            None => return got,
        }
    }
}

/// Messages `conn` receives within `wait` (a close ends it).
async fn collect(conn: &mut Conn, wait: Duration) -> Vec<ServerMessage> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.recv_within(left).await {
            Some(Received::Message(m)) => got.push(m),
            _ => return got,
        }
    }
}

/// A raw connection joined on `url` as (`user`, `client_id`); `joined`'s
/// presence.
async fn join_raw(
    cluster: &Cluster,
    url: &str,
    user: Uuid,
    client_id: &str,
    since: Option<Version>,
) -> (Conn, ServerMessage) {
    let mut conn = Conn::connect(url).await;
    conn.join(client_id, Some(&cluster.token(user)), since)
        .await;
    let joined = match conn.recv_within(Duration::from_secs(10)).await {
        Some(Received::Message(m @ ServerMessage::Joined { .. })) => m,
        other => panic!("{client_id}: expected joined from {url} within 10 s, got {other:?}"),
    };
    (conn, joined)
}

fn lists(joined: &ServerMessage, user: Uuid, client_id: &str) -> bool {
    match joined {
        ServerMessage::Joined { presence, .. } => presence
            .iter()
            .any(|e| e.user.as_uuid() == &user && e.client_id.as_str() == client_id),
        other => panic!("expected joined, got {other:?}"),
    }
}

/// 1. A room opened on A while A's Redis link is stalled (its
/// subscription cannot take effect) misses B's commit on the bus; R, who
/// joined on A then, still receives the op within 5 s, with no further
/// edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_opened_while_its_bus_link_stalls_still_gets_a_later_commit() {
    let (cluster, proxy) = two_with_proxy(A, &[]).await;
    let document = new_document();
    let mut w = editor(&cluster, B, document, "writer").await;
    proxy.stall();
    // The room on A opens now: its subscription goes nowhere.
    let mut r = editor(&cluster, A, document, "reader").await;
    let joined_at = r.client.version();
    let version = commit_one(&mut w, "hello").await;
    let committed = Instant::now();
    assert!(
        version > joined_at,
        "R joined after the commit: nothing to test"
    );
    // New connections go through again (the stalled one stays stalled).
    proxy.restore();
    let took = await_version(&mut r, version, DELIVERY, "R on A, B's commit").await;
    eprintln!("R received B's op {took:?} after its ack");
    assert!(committed.elapsed() <= DELIVERY + Duration::from_millis(500));
    assert_eq!(r.text(), "hello");
    // Nothing more, and nothing twice.
    drain_for(&mut r, Duration::from_secs(1)).await;
    assert_eq!(r.client.version(), version);
}

/// 2. A publish lost on the publisher's side: the bus is quiet (nothing
/// has been published on the document), B's Redis link is cut, W on B
/// commits once. R on A receives it within 5 s, and edits flow on after
/// the link is back, with no op twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_lost_by_the_committing_instance_still_reaches_the_other() {
    let (cluster, proxy) = two_with_proxy(B, &[]).await;
    let document = new_document();
    let mut r = editor(&cluster, A, document, "reader").await;
    let mut w = editor(&cluster, B, document, "writer").await;
    proxy.cut();
    let version = commit_one(&mut w, "lost ").await;
    await_version(
        &mut r,
        version,
        DELIVERY,
        "R on A, a commit B could not publish",
    )
    .await;
    proxy.restore();
    // B reconnects to Redis (its /ready says so), then the next edit
    // arrives by the bus; the first one never again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.instances[B].redis_ready().await != (200, "ok".to_owned()) {
        assert!(Instant::now() < deadline, "B's Redis link not back in 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = commit_one(&mut w, "found ").await;
    await_version(&mut r, next, DELIVERY, "R on A, B's next commit").await;
    drain_for(&mut r, Duration::from_secs(1)).await;
    assert_eq!(r.text(), w.text());
}

/// 3. A's Redis link stalls (packets dropped, no reset): W on B commits,
/// R on A receives it within 5 s; then, still stalled, 200 documents are
/// opened and closed on A, and every join is answered within
/// AUTH_TIMEOUT_SECS + 2 s (PROTOCOL.md's bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_bus_link_neither_hides_commits_nor_hangs_joins() {
    let (cluster, proxy) = two_with_proxy(A, &[]).await;
    let document = new_document();
    let mut r = editor(&cluster, A, document, "reader").await;
    let mut w = editor(&cluster, B, document, "writer").await;
    proxy.stall();
    let version = commit_one(&mut w, "stalled").await;
    await_version(&mut r, version, DELIVERY, "R on A behind a stalled link").await;
    // 200 documents, 40 at a time, each joiner a user of its own (JOIN_BURST
    // is per user).
    let url_of = |d: DocumentId| cluster.instances[A].url(d);
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for batch in 0..5 {
        let joins: Vec<_> = (0..40)
            .map(|k| {
                let url = url_of(new_document());
                let token = cluster.token(Uuid::new_v4());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let mut conn = Conn::connect(&url).await;
                    conn.join(&format!("tab-{batch}-{k}"), Some(&token), None)
                        .await;
                    let got = conn.recv_within(JOIN_BOUND).await;
                    let took = t.elapsed();
                    conn.close().await;
                    (got, took)
                })
            })
            .collect();
        for (k, j) in joins.into_iter().enumerate() {
            let (got, took) = j.await.expect("join task");
            assert!(
                matches!(got, Some(Received::Message(ServerMessage::Joined { .. }))),
                "join {} on A (Redis link stalled) not answered with joined within {JOIN_BOUND:?} (took {took:?}): {got:?}",
                batch * 40 + k
            );
            slowest = slowest.max(took);
        }
    }
    eprintln!(
        "200 documents opened and closed on A in {:?}, slowest join {slowest:?}",
        start.elapsed()
    );
    // And R still hears B.
    let next = commit_one(&mut w, "still ").await;
    await_version(&mut r, next, DELIVERY, "R on A after the 200 documents").await;
}

/// 4. kill -9 between a commit and its publish: B stops every room right
/// after its first commit (RELAY_TEST_PAUSE_AFTER_COMMIT), W's submit is
/// committed but neither acked nor published; B is killed. R on A receives
/// the op within 5 s; W, on A, re-sends the same seq and is acked once, at
/// the committed version, and the store holds the op once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_committed_by_an_instance_killed_before_publishing_still_arrives() {
    let redis = RedisServer::start().await;
    let mut cluster = Cluster::start_each(
        2,
        redis,
        &[],
        |_| None,
        |i| {
            if i == B {
                vec![("RELAY_TEST_PAUSE_AFTER_COMMIT".into(), "true".into())]
            } else {
                Vec::new()
            }
        },
    )
    .await;
    let document = new_document();
    let mut r = editor(&cluster, A, document, "reader").await;
    let user = Uuid::new_v4();
    let url_b = cluster.instances[B].url(document);
    let (mut w, _) = join_raw(&cluster, &url_b, user, "writer", None).await;
    let delta = serde_json::json!([{"insert": "orphan"}]);
    w.send_text(submit(1, 0, delta.clone())).await;
    // Committed...
    let deadline = Instant::now() + Duration::from_secs(10);
    let op = loop {
        let log = store_log(&cluster.database_url, document).await;
        if let Some(op) = log.first() {
            break op.clone();
        }
        assert!(
            Instant::now() < deadline,
            "W's submit not committed by B in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let committed = Instant::now();
    assert_eq!((op.client_id.as_str(), op.seq.get()), ("writer", 1));
    // ...and not acked (B paused before answering).
    let before_kill = collect(&mut w, Duration::from_millis(300)).await;
    assert!(
        !before_kill
            .iter()
            .any(|m| matches!(m, ServerMessage::Ack { .. })),
        "B acked the op: it did not pause between commit and publish ({before_kill:?})"
    );
    cluster.instances[B].kill9();
    let took = await_version(&mut r, op.version, DELIVERY, "R on A, the orphaned commit").await;
    eprintln!(
        "R received the op {took:?} after the kill, {:?} after the commit",
        committed.elapsed()
    );
    // W reconnects to A and re-sends seq 1 as first sent.
    let url_a = cluster.instances[A].url(document);
    let (mut w, joined) = join_raw(&cluster, &url_a, user, "writer", None).await;
    let ServerMessage::Joined { version, .. } = joined else {
        unreachable!()
    };
    assert!(version >= op.version, "A's join is behind the committed op");
    w.send_text(submit(1, 0, delta)).await;
    let answers: Vec<ServerMessage> = collect(&mut w, Duration::from_secs(3))
        .await
        .into_iter()
        .filter(|m| matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. }))
        .collect();
    assert_eq!(
        answers,
        vec![ServerMessage::Ack {
            seq: relay_domain::Seq::new(1).unwrap(),
            version: op.version
        }],
        "the re-sent seq: one ack, at the committed version"
    );
    let log = store_log(&cluster.database_url, document).await;
    assert_eq!(log.len(), 1, "the store holds the op once: {log:?}");
    drain_for(&mut r, Duration::from_millis(500)).await;
    assert_eq!(r.text(), "orphan");
}

/// 5. Presence after a move: C (user u, "tab-1") on A opens a second
/// socket on B, then its socket to A closes. Nobody is told C left; fresh
/// joiners on A and on B list C; C's cursor on B reaches O on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_to_another_instance_stays_present() {
    let cluster = Cluster::start(2, &[("PRESENCE_TTL_SECS", "3")]).await;
    let document = new_document();
    let url_a = cluster.instances[A].url(document);
    let url_b = cluster.instances[B].url(document);
    let (o_user, c_user) = (Uuid::new_v4(), Uuid::new_v4());
    let (mut o, _) = join_raw(&cluster, &url_a, o_user, "observer", None).await;
    let (c_a, _) = join_raw(&cluster, &url_a, c_user, "tab-1", None).await;
    let (mut c_b, joined_b) = join_raw(&cluster, &url_b, c_user, "tab-1", None).await;
    assert!(
        lists(&joined_b, o_user, "observer"),
        "C's join on B lists O: {joined_b:?}"
    );
    // The old socket is noticed after A has heard of the new one (a
    // network change, a laptop resume): C's cursor from B reaching O on A
    // shows A knows B holds C. (A close within the milliseconds before
    // that may show O a `left` and a `joined` again: A cannot know yet.)
    c_b.send(&ClientMessage::Cursor {
        version: relay_domain::Version::ZERO,
        selection: Some(relay_domain::Selection::caret(0)),
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(5),
        o.until(|m| match m {
            ServerMessage::Cursor { user, .. } if user.as_uuid() == &c_user => Some(()),
            _ => None,
        }),
    )
    .await
    .expect("C's cursor from B reached O on A");
    c_a.close().await;
    let is_left_of_c = |m: &ServerMessage| match m {
        ServerMessage::Presence { left, .. } => left
            .iter()
            .any(|d| d.user.as_uuid() == &c_user && d.client_id.as_str() == "tab-1"),
        _ => false,
    };
    let (seen_o, seen_c) = tokio::join!(
        collect(&mut o, Duration::from_secs(3)),
        collect(&mut c_b, Duration::from_secs(3))
    );
    assert!(
        !seen_o.iter().any(is_left_of_c),
        "O on A was told C left, while C is on B: {seen_o:?}"
    );
    assert!(
        !seen_c.iter().any(is_left_of_c),
        "C on B was told it left: {seen_c:?}"
    );
    for (name, url) in [("A", &url_a), ("B", &url_b)] {
        let (fresh, joined) = join_raw(&cluster, url, Uuid::new_v4(), "fresh", None).await;
        assert!(
            lists(&joined, c_user, "tab-1"),
            "a fresh joiner on {name} does not list C: {joined:?}"
        );
        fresh.close().await;
    }
    c_b.send(&ClientMessage::Cursor {
        version: Version::ZERO,
        selection: Some(Selection { anchor: 0, head: 0 }),
    })
    .await;
    let deadline = tokio::time::Instant::now() + DELIVERY;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match o.recv_within(left).await {
            Some(Received::Message(ServerMessage::Cursor {
                client_id, user, ..
            })) if client_id.as_str() == "tab-1" && user.as_uuid() == &c_user => {
                break;
            }
            Some(Received::Message(m)) => assert!(!is_left_of_c(&m), "O was told C left: {m:?}"),
            other => panic!("C's cursor on B did not reach O on A within 5 s: {other:?}"),
        }
    }
}

/// 6. Presence lost in Redis (FLUSHALL) comes back within
/// PRESENCE_TTL_SECS: at PRESENCE_TTL_SECS + 2 s after the flush, fresh
/// joiners on both instances list X (on A) and Y (on B), and X and Y each
/// see the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_flushed_from_redis_is_restored_within_the_ttl() {
    const TTL: u64 = 3;
    let cluster = Cluster::start(2, &[("PRESENCE_TTL_SECS", "3")]).await;
    let document = new_document();
    let url_a = cluster.instances[A].url(document);
    let url_b = cluster.instances[B].url(document);
    let (xu, yu) = (Uuid::new_v4(), Uuid::new_v4());
    let (mut x, _) = join_raw(&cluster, &url_a, xu, "x", None).await;
    let (mut y, joined_y) = join_raw(&cluster, &url_b, yu, "y", None).await;
    assert!(lists(&joined_y, xu, "x"), "Y's join lists X: {joined_y:?}");
    x.until(|m| match m {
        ServerMessage::Presence { joined, .. } => joined
            .iter()
            .any(|e| e.client_id.as_str() == "y")
            .then_some(()),
        _ => None,
    })
    .await;
    redis_cli(cluster.redis.port, &["FLUSHALL"]).await;
    let flushed = Instant::now();
    // Until TTL + 2 s after the flush, what X and Y are told.
    let until = Duration::from_secs(TTL + 2);
    let (seen_x, seen_y) = tokio::join!(collect(&mut x, until), collect(&mut y, until));
    assert!(flushed.elapsed() >= until);
    // Each one's view of the other, replayed: present at the end.
    let present = |seen: &[ServerMessage], id: &str| {
        seen.iter().fold(true, |here, m| match m {
            ServerMessage::Presence { joined, left } => {
                if left.iter().any(|d| d.client_id.as_str() == id) {
                    false
                } else if joined.iter().any(|e| e.client_id.as_str() == id) {
                    true
                } else {
                    here
                }
            }
            _ => here,
        })
    };
    assert!(present(&seen_x, "y"), "X no longer sees Y: {seen_x:?}");
    assert!(present(&seen_y, "x"), "Y no longer sees X: {seen_y:?}");
    for (name, url) in [("A", &url_a), ("B", &url_b)] {
        let (fresh, joined) = join_raw(&cluster, url, Uuid::new_v4(), "fresh", None).await;
        assert!(
            lists(&joined, xu, "x") && lists(&joined, yu, "y"),
            "{TTL} + 2 s after FLUSHALL a fresh joiner on {name} does not list both X and Y: {joined:?}"
        );
        fresh.close().await;
    }
    // Restored in Redis too, not only in the rooms.
    let keys = redis_cli(cluster.redis.port, &["KEYS", "*"]).await;
    assert!(
        !keys.trim().is_empty(),
        "nothing back in Redis after {until:?}"
    );
}

/// 7. Redis asleep (DEBUG SLEEP 5) while five clients join and leave
/// document D on A and an editor submits there: every ack within 2 s of
/// its submit (a commit is PostgreSQL's; Redis's answers are not awaited
/// by the room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_redis_does_not_hold_back_acks() {
    let cluster = Cluster::start(2, &[]).await;
    let document = new_document();
    let mut e = editor(&cluster, A, document, "editor").await;
    commit_one(&mut e, "warm ").await;
    let port = cluster.redis.port;
    let asleep = Instant::now();
    let sleep = tokio::spawn(async move {
        redis_cli(port, &["DEBUG", "SLEEP", "5"]).await;
        Instant::now()
    });
    // Five clients joining and leaving D on A throughout.
    let url = cluster.instances[A].url(document);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn: Vec<_> = (0..5)
        .map(|k| {
            let (url, token, stop) = (url.clone(), cluster.token(Uuid::new_v4()), stop.clone());
            tokio::spawn(async move {
                let mut rounds = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let Some(mut conn) = Conn::try_connect(&url).await else {
                        break;
                    };
                    conn.join(&format!("churn-{k}"), Some(&token), None).await;
                    let _ = conn.recv_within(Duration::from_secs(10)).await;
                    let _ = conn.try_send(&ClientMessage::Leave).await;
                    let _ = conn.recv_within(Duration::from_secs(10)).await;
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let mut latencies = Vec::new();
    while asleep.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        let version = commit_one(&mut e, "x").await;
        let took = t.elapsed();
        assert!(
            took <= Duration::from_secs(2),
            "the ack of version {version} came {took:?} after its submit, {:?} into Redis's sleep",
            t.duration_since(asleep)
        );
        latencies.push(took);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut rounds = 0;
    for c in churn {
        rounds += c.await.expect("churn task");
    }
    let woke = sleep.await.expect("DEBUG SLEEP");
    // It did sleep through the submits.
    assert!(
        woke.duration_since(asleep) >= Duration::from_millis(4500),
        "DEBUG SLEEP returned after {:?}",
        woke.duration_since(asleep)
    );
    eprintln!(
        "{} acks while Redis slept (slowest {:?}), {rounds} joins and leaves",
        latencies.len(),
        latencies.iter().max()
    );
    assert!(
        latencies.len() >= 5,
        "too few submits to tell: {latencies:?}"
    );
    assert!(rounds >= 5, "the clients did not join and leave: {rounds}");
}

/// 8. PostgreSQL cut for A: a submit of a client A has not seen before
/// gets no ack and no `unavailable` (A cannot read the store to know
/// whether that seq was committed: it closes with 1013); after the
/// restore the re-sent submit is acked exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_only_said_when_nothing_was_committed() {
    let (db_proxy, db_url) = Proxy::to_test_database().await;
    let redis = RedisServer::start().await;
    let cluster = Cluster::start_each(
        2,
        redis,
        &[],
        |_| None,
        |i| {
            if i == A {
                vec![("DATABASE_URL".into(), db_url.clone())]
            } else {
                Vec::new()
            }
        },
    )
    .await;
    let document = new_document();
    let url_a = cluster.instances[A].url(document);
    let user = Uuid::new_v4();
    let (mut w, _) = join_raw(&cluster, &url_a, user, "writer", None).await;
    db_proxy.cut();
    let delta = serde_json::json!([{"insert": "once"}]);
    w.send_text(submit(1, 0, delta.clone())).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let close = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.recv_within(left).await {
            Some(Received::Message(m @ ServerMessage::Ack { .. })) => {
                panic!("acked with the store cut: {m:?}")
            }
            Some(Received::Message(
                m @ ServerMessage::Error {
                    code: ErrorCode::Unavailable,
                    ..
                },
            )) => panic!(
                "`unavailable` (nothing committed) though A cannot read the store to know: {m:?}"
            ),
            Some(Received::Message(_)) => {}
            Some(Received::Closed(c)) => break c,
            None => panic!("no answer to the submit in 20 s with the store cut"),
        }
    };
    assert_eq!(close, Some(1013), "the submit's fate unknown: close 1013");
    db_proxy.restore();
    // Rejoin (A's store is back within a few seconds) and re-send seq 1.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut w = loop {
        let mut conn = Conn::connect(&url_a).await;
        conn.join("writer", Some(&cluster.token(user)), None).await;
        match conn.recv_within(Duration::from_secs(10)).await {
            Some(Received::Message(ServerMessage::Joined { .. })) => break conn,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no join on A after the restore: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    w.send_text(submit(1, 0, delta)).await;
    let answers: Vec<ServerMessage> = collect(&mut w, Duration::from_secs(3))
        .await
        .into_iter()
        .filter(|m| matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. }))
        .collect();
    let log = store_log(&cluster.database_url, document).await;
    assert_eq!(log.len(), 1, "the op once in the store: {log:?}");
    assert_eq!(
        answers,
        vec![ServerMessage::Ack {
            seq: relay_domain::Seq::new(1).unwrap(),
            version: log[0].version
        }],
        "the re-sent submit: acked once"
    );
}
