//! The wire contract (PROTOCOL.md) end to end: real WebSocket clients over
//! TCP against the real application on port 0.

use futures::FutureExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use relay_adapter_jwt::{DevKeys, TokenRequest};
use relay_app::config::Config;
use relay_domain::{CommittedOp, Component, Delta, Document, DocumentId, Seq, Version};
use relay_ports::CollaborationService;
use relay_ports::protocol::{ErrorCode, Role, ServerMessage};
use relay_tests::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Helpers

// Constants, so they can be matched in patterns.
const V1: Version = Version::from_u32(1);
const V2: Version = Version::from_u32(2);
const S1: Seq = Seq::from_u32(1);
const S2: Seq = Seq::from_u32(2);

async fn expect_ack(conn: &mut Conn, seq: u64, version: u64) {
    let m = answer(conn).await;
    assert_eq!(
        m,
        ServerMessage::Ack {
            seq: Seq::new(seq).unwrap(),
            version: Version::new(version).unwrap()
        }
    );
}

/// The next answer must be the non-fatal error `code` for `seq`.
async fn expect_error(conn: &mut Conn, code: ErrorCode, seq: Option<u64>) {
    match answer(conn).await {
        ServerMessage::Error {
            code: c,
            seq: s,
            fatal,
            message,
        } => assert_eq!(
            (c, s, fatal),
            (code, seq.map(|n| Seq::new(n).unwrap()), false),
            "error message: {message}"
        ),
        other => panic!("expected error {code:?} for seq {seq:?}, got {other:?}"),
    }
}

/// Connects and joins; returns the connection and its `joined`.
async fn join_raw(
    app: &TestApp,
    doc: DocumentId,
    client_id: &str,
    token: &str,
    since: Option<u64>,
) -> (Conn, ServerMessage) {
    let mut conn = Conn::connect(&app.url(doc)).await;
    conn.join(
        client_id,
        Some(token),
        since.map(|n| Version::new(n).unwrap()),
    )
    .await;
    let joined = conn.message().await;
    assert!(
        matches!(joined, ServerMessage::Joined { .. }),
        "expected joined, got {joined:?}"
    );
    (conn, joined)
}

/// The document as a newcomer sees it: its version and text.
async fn snapshot(app: &TestApp, doc: DocumentId) -> (Version, String) {
    let token = app.token(Uuid::new_v4(), &[("*", Role::Viewer)]);
    let (conn, joined) = join_raw(app, doc, "snapshot", &token, None).await;
    conn.close().await;
    let ServerMessage::Joined {
        version,
        content: Some(content),
        ops: None,
        ..
    } = joined
    else {
        panic!("a join without since gets the content, got {joined:?}");
    };
    let doc = Document::from_content(&content, version).expect("content is inserts");
    (version, doc.text())
}

/// What a newcomer joining with `since` gets: the version and the ops
/// (`content` must be null).
async fn catch_up(app: &TestApp, doc: DocumentId, since: u64) -> (Version, Vec<CommittedOp>) {
    let token = app.token(Uuid::new_v4(), &[("*", Role::Viewer)]);
    let (conn, joined) = join_raw(app, doc, "catch-up", &token, Some(since)).await;
    conn.close().await;
    match joined {
        ServerMessage::Joined {
            version,
            content: None,
            ops: Some(ops),
            ..
        } => (version, ops),
        other => panic!("expected ops and no content after since {since}, got {other:?}"),
    }
}

/// Applies `ops` to `doc` in order; each must be the next version.
fn apply_all<'a>(doc: &mut Document, ops: impl IntoIterator<Item = &'a CommittedOp>) {
    for op in ops {
        assert_eq!(
            Some(op.version),
            doc.version().next(),
            "ops must be consecutive"
        );
        let delta = op
            .delta
            .clone()
            .fit(doc.len())
            .unwrap_or_else(|e| panic!("op {} does not fit: {e}", op.version));
        doc.apply(&delta)
            .unwrap_or_else(|e| panic!("op {} does not apply: {e}", op.version));
    }
}

/// The document rebuilt from version 0 by applying `ops`.
fn replay<'a>(ops: impl IntoIterator<Item = &'a CommittedOp>) -> Document {
    let mut doc = Document::new();
    apply_all(&mut doc, ops);
    doc
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

// ---------------------------------------------------------------------------
// 1. Convergence

const SEEDS: u64 = 20;
const CLIENTS: usize = 8;
const EDITS: usize = 30;
/// Inserted text: ASCII, accents, CJK, emoji (one and several code points),
/// newlines.
const PIECES: &[&str] = &[
    "a",
    "b",
    "c",
    "x",
    " ",
    "é",
    "中",
    "😀",
    "👍🏽",
    "🏳️‍🌈",
    "\n",
    "Ω",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_editing_one_document_at_random_converge_on_the_replay_of_the_op_log() {
    // Odd seeds: ops frames of at most 2 ops, so group commits span frames.
    let app = TestApp::spawn_with(Config::default()).await;
    let mut small_batches = Config::default();
    small_batches.limits.operation_batch_size = 2;
    let small_batches = TestApp::spawn_with(small_batches).await;
    // RELAY_SEED=<n> replays one seed, RELAY_SEEDS=<n> runs more.
    let seeds: Vec<u64> = match std::env::var("RELAY_SEED") {
        Ok(s) => vec![s.parse().expect("RELAY_SEED is a number")],
        Err(_) => (0..std::env::var("RELAY_SEEDS")
            .map_or(SEEDS, |n| n.parse().expect("RELAY_SEEDS is a number")))
            .collect(),
    };
    for seed in seeds {
        let app = if seed % 2 == 0 { &app } else { &small_batches };
        if let Err(panic) = AssertUnwindSafe(random_editing(app, seed))
            .catch_unwind()
            .await
        {
            panic!(
                "seed {seed} failed (replay it with RELAY_SEED={seed}): {}",
                panic_text(&*panic)
            );
        }
    }
}

/// One seeded run: CLIENTS editors make EDITS random edits each, sends and
/// receives interleaved at random, then settle; every text must equal every
/// other, the replay of each client's op log, and the replay of the ops a
/// newcomer joining with `since: 0` gets.
async fn random_editing(app: &TestApp, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let doc = new_document();
    let mut editors = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let user = Uuid::new_v4();
        let token = app.editor_token(user);
        editors.push(Editor::join(app, doc, user, &format!("tab-{i}"), &token).await);
    }
    let mut left = [EDITS; CLIENTS];
    // Ops received while the client had its own op in flight: each is a
    // concurrent edit the server and the client had to transform.
    let mut concurrent = 0;
    while left.iter().any(|&n| n > 0) {
        let i = rng.random_range(0..CLIENTS);
        let e = &mut editors[i];
        let busy = e.client.inflight().is_some();
        let received = match rng.random_range(0..10) {
            0..4 if left[i] > 0 => {
                random_edit(e, &mut rng).await;
                left[i] -= 1;
                None
            }
            // Whatever has arrived, if anything.
            4..7 => e.try_step().await,
            // Wait for the next message when one is owed (an ack).
            7 if busy => Some(e.step().await),
            _ => {
                tokio::task::yield_now().await;
                None
            }
        };
        match received {
            Some(Received::Closed(c)) => panic!("client {i} was closed ({c:?})"),
            Some(Received::Message(ServerMessage::Ops { .. })) if busy => concurrent += 1,
            _ => {}
        }
    }
    assert!(concurrent > 0, "no concurrent edits happened");
    eprintln!("seed {seed}: {concurrent} ops arrived while an op was in flight");
    for e in &mut editors {
        e.settle().await;
    }
    // The client that committed the last op knows the final version.
    let last = editors
        .iter()
        .map(|e| e.client.version())
        .max()
        .expect("clients");
    for e in &mut editors {
        e.catch_up_to(last).await;
    }
    let text = editors[0].text();
    for (i, e) in editors.iter().enumerate() {
        assert!(e.errors.is_empty(), "client {i} got errors {:?}", e.errors);
        assert_eq!(e.text(), text, "client {i} diverged from client 0");
        assert_eq!(
            e.log.keys().copied().collect::<Vec<_>>(),
            (1..=last.get())
                .map(|n| Version::new(n).unwrap())
                .collect::<Vec<_>>(),
            "client {i} must know every op (received or acked)"
        );
        assert_eq!(
            replay(e.log.values()).text(),
            text,
            "client {i}: the replay of its op log"
        );
        let versions: Vec<Version> = e.acks.iter().map(|a| a.1).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "client {i}: acks out of order {versions:?}"
        );
    }
    let (version, ops) = catch_up(app, doc, 0).await;
    assert_eq!(version, last);
    assert_eq!(replay(&ops).text(), text, "replay of the server's op log");
    // Each client's log is the server's log, op for op.
    for (i, e) in editors.iter().enumerate() {
        let mut at = Document::new();
        for (op, known) in ops.iter().zip(e.log.values()) {
            assert_eq!(
                (op.version, op.user, &op.client_id, op.seq),
                (known.version, known.user, &known.client_id, known.seq),
                "client {i}"
            );
            let server = op.delta.clone().fit(at.len()).expect("fits");
            let client = known.delta.clone().fit(at.len()).expect("fits");
            assert_eq!(
                server, client,
                "client {i}: delta of version {}",
                op.version
            );
            at.apply(&server).expect("applies");
        }
    }
    for e in editors {
        e.conn.close().await;
    }
}

async fn random_edit(e: &mut Editor, rng: &mut SmallRng) {
    let len = e.client.document().len();
    let mut d = Delta::new();
    if len > 0 && rng.random_bool(0.4) {
        let at = rng.random_range(0..len);
        let n = rng.random_range(1..=(len - at).min(4));
        d.retain(at).delete(n);
    } else {
        let at = rng.random_range(0..=len);
        let text: String = (0..rng.random_range(1..=3))
            .map(|_| PIECES[rng.random_range(0..PIECES.len())])
            .collect();
        d.retain(at).insert(&text);
    }
    e.edit(d).await;
}

// ---------------------------------------------------------------------------
// 2. Exactly-once submission

#[tokio::test]
async fn a_submit_committed_before_the_connection_dropped_is_found_in_the_catch_up_and_committed_once()
 {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (ua, ub) = (Uuid::new_v4(), Uuid::new_v4());
    let token_a = app.editor_token(ua);
    let mut a = Editor::join(&app, doc, ua, "tab-a", &token_a).await;
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    a.insert(0, "Hello").await;
    a.settle().await;

    // Committed (the other client sees it), but its ack is never read.
    a.insert(5, " world").await;
    let inflight = a.client.inflight().cloned().expect("in flight");
    assert_eq!(
        (inflight.seq, inflight.base),
        (Seq::from(2), Version::from(1))
    );
    b.catch_up_to(Version::from(2)).await;
    assert_eq!(b.text(), "Hello world");

    // Drop without reading the ack, rejoin with since = 1.
    a.rejoin(&app, &token_a).await;
    let ServerMessage::Joined {
        version,
        content,
        ops: Some(ops),
        ..
    } = &a.joined
    else {
        panic!("expected a catch-up, got {:?}", a.joined);
    };
    assert_eq!(*version, Version::from(2));
    assert_eq!(*content, None);
    assert_eq!(
        ops.iter()
            .map(|o| (o.version, *o.user.as_uuid(), o.client_id.as_str(), o.seq))
            .collect::<Vec<_>>(),
        [(Version::from(2), ua, "tab-a", Seq::from(2))],
        "the catch-up holds the client's own op"
    );
    assert!(a.client.is_synchronized(), "own op recognised as the ack");
    assert_eq!(
        (a.client.version(), a.text()),
        (Version::from(2), "Hello world".into())
    );

    // Re-sending it anyway is answered with the original version, whatever
    // base and delta it carries.
    a.conn
        .send_text(submit(2, 1, json!([{"retain": 5}, {"insert": " world"}])))
        .await;
    expect_ack(&mut a.conn, 2, 2).await;
    a.conn
        .send_text(submit(2, 2, json!([{"insert": "something else"}])))
        .await;
    expect_ack(&mut a.conn, 2, 2).await;

    // One commit only: the next op is version 3 and the text has no copy.
    a.insert(11, "!").await;
    a.settle().await;
    assert_eq!(a.acks.last(), Some(&(3, Version::from(3))));
    b.catch_up_to(Version::from(3)).await;
    assert_eq!(b.text(), "Hello world!");
    assert_eq!(b.log.len(), 3);
    let (version, all) = catch_up(&app, doc, 0).await;
    assert_eq!(version, Version::from(3));
    assert_eq!(
        all.iter()
            .map(|o| (o.client_id.as_str(), o.seq.get()))
            .collect::<Vec<_>>(),
        [("tab-a", 1), ("tab-a", 2), ("tab-a", 3)]
    );
    assert_eq!(replay(&all).text(), "Hello world!");
}

#[tokio::test]
async fn a_resent_submit_that_was_committed_is_acked_with_its_first_version_whatever_base_and_delta_it_carries()
 {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let user = Uuid::new_v4();
    let token = app.editor_token(user);
    let ub = Uuid::new_v4();
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;

    let (mut first, _) = join_raw(&app, doc, "tab-r", &token, None).await;
    first
        .send_text(submit(7, 0, json!([{"insert": "abc"}])))
        .await;
    b.catch_up_to(Version::from(1)).await;
    // Committed; the ack is lost with the connection.
    first.drop_abruptly();

    let (mut second, joined) = join_raw(&app, doc, "tab-r", &token, Some(0)).await;
    let ServerMessage::Joined {
        version: V1,
        content: None,
        ops: Some(ops),
        ..
    } = joined
    else {
        panic!("expected the catch-up of version 1, got {joined:?}");
    };
    assert_eq!(
        ops.iter()
            .map(|o| (o.version, *o.user.as_uuid(), o.client_id.as_str(), o.seq))
            .collect::<Vec<_>>(),
        [(Version::from(1), user, "tab-r", Seq::from(7))]
    );

    // As first sent, then with other bases and deltas: always the original
    // version, nothing committed.
    second
        .send_text(submit(7, 0, json!([{"insert": "abc"}])))
        .await;
    expect_ack(&mut second, 7, 1).await;
    second
        .send_text(submit(7, 1, json!([{"retain": 3}, {"insert": "zzz"}])))
        .await;
    expect_ack(&mut second, 7, 1).await;
    second
        .send_text(submit(7, 0, json!([{"insert": "other"}])))
        .await;
    expect_ack(&mut second, 7, 1).await;
    // A base the document never had, a delta that spans too much.
    second
        .send_text(submit(7, 99, json!([{"insert": "future"}])))
        .await;
    expect_ack(&mut second, 7, 1).await;
    second
        .send_text(submit(7, 0, json!([{"retain": 50}, {"insert": "long"}])))
        .await;
    expect_ack(&mut second, 7, 1).await;

    second
        .send_text(submit(8, 1, json!([{"retain": 3}, {"insert": "!"}])))
        .await;
    expect_ack(&mut second, 8, 2).await;
    b.catch_up_to(Version::from(2)).await;
    assert_eq!(b.text(), "abc!");
    assert_eq!(
        b.log
            .values()
            .map(|o| (o.version.get(), o.client_id.as_str(), o.seq.get()))
            .collect::<Vec<_>>(),
        [(1, "tab-r", 7), (2, "tab-r", 8)]
    );
    assert_eq!(snapshot(&app, doc).await, (Version::from(2), "abc!".into()));
}

#[tokio::test]
async fn a_submit_whose_fate_is_unknown_when_the_connection_drops_is_committed_exactly_once_after_the_rejoin()
 {
    const ROUNDS: u64 = 30;
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (ua, ub) = (Uuid::new_v4(), Uuid::new_v4());
    let token_a = app.editor_token(ua);
    let mut a = Editor::join(&app, doc, ua, "tab-a", &token_a).await;
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    // Dropping right after the send: the server may or may not have
    // committed it, while another client keeps editing. Either way the
    // rejoin ends with exactly one copy.
    let mut found_in_catch_up = 0;
    for round in 0..ROUNDS {
        b.insert(0, "·").await;
        // Odd rounds open the new connection first, so the join races the
        // submit; even rounds open it after the submit.
        let fresh = if round % 2 == 1 {
            Some(Conn::connect(&app.url(doc)).await)
        } else {
            None
        };
        let at = a.client.document().len();
        a.insert(at, &format!("<{round}>")).await;
        let seq = a.client.inflight().expect("in flight").seq;
        match fresh {
            Some(conn) => a.rejoin_on(conn, &token_a).await,
            None => a.rejoin(&app, &token_a).await,
        }
        if let ServerMessage::Joined { ops: Some(ops), .. } = &a.joined
            && ops
                .iter()
                .any(|o| o.client_id.as_str() == "tab-a" && o.seq == seq)
        {
            found_in_catch_up += 1;
        }
        a.settle().await;
        while b.try_step().await.is_some() {}
    }
    eprintln!("{found_in_catch_up} of {ROUNDS} submits were in the catch-up");
    b.settle().await;
    let last = a.client.version().max(b.client.version());
    a.catch_up_to(last).await;
    b.catch_up_to(last).await;
    assert_eq!(a.text(), b.text());
    assert!(a.errors.is_empty() && b.errors.is_empty());
    for round in 0..ROUNDS {
        assert_eq!(
            a.text().matches(&format!("<{round}>")).count(),
            1,
            "{}",
            a.text()
        );
    }
    let (version, all) = catch_up(&app, doc, 0).await;
    assert_eq!(version, last);
    let mut a_seqs: Vec<u64> = all
        .iter()
        .filter(|o| o.client_id.as_str() == "tab-a")
        .map(|o| o.seq.get())
        .collect();
    a_seqs.sort_unstable();
    assert_eq!(
        a_seqs,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "one commit per submit"
    );
    assert_eq!(replay(&all).text(), a.text());
}

#[tokio::test]
async fn the_next_submit_right_after_a_resent_one_seen_committed_in_ops_is_not_in_flight() {
    // A reconnect racing the old connection: the new one joined before the
    // old one's submit committed, so it gets that op in `ops` (which the
    // client takes as its ack) while its re-sent copy is still on the way.
    // The client then submits its next op at once; the re-sent copy is a
    // duplicate (acked), so the next one is not early. Both frames in one
    // write on a single-threaded runtime: they reach the room in one turn.
    let app = TestApp::spawn().await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    let (mut old, _) = join_raw(&app, doc, "tab-x", &token, None).await;
    let (mut new, _) = join_raw(&app, doc, "tab-x", &token, Some(0)).await;
    old.send_text(submit(1, 0, json!([{"insert": "a"}]))).await;
    let ops = new
        .until(|m| match m {
            ServerMessage::Ops { ops } => Some(ops.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        ops.iter()
            .map(|o| (o.version.get(), o.client_id.as_str(), o.seq.get()))
            .collect::<Vec<_>>(),
        [(1, "tab-x", 1)]
    );
    old.drop_abruptly();
    new.send_all(&[
        submit(1, 0, json!([{"insert": "a"}])),
        submit(2, 1, json!([{"retain": 1}, {"insert": "b"}])),
    ])
    .await;
    expect_ack(&mut new, 1, 1).await;
    expect_ack(&mut new, 2, 2).await;
    assert_eq!(snapshot(&app, doc).await, (Version::from(2), "ab".into()));
}

#[tokio::test]
async fn a_submit_never_committed_before_the_drop_is_committed_once_when_resent_after_the_rejoin() {
    // One submit per second per connection: the second is refused
    // (`rate_limited`: nothing committed) and stays in flight.
    let mut config = Config::default();
    config.limits.submit_burst = 1;
    config.limits.submit_rate_per_sec = 1;
    let app = TestApp::spawn_with(config).await;
    let doc = new_document();
    let (ua, ub) = (Uuid::new_v4(), Uuid::new_v4());
    let token_a = app.editor_token(ua);
    let mut a = Editor::join(&app, doc, ua, "tab-a", &token_a).await;
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    a.insert(0, "a").await;
    a.settle().await;
    a.insert(1, "b").await;
    while a.errors.is_empty() {
        a.step().await;
    }
    assert_eq!(a.errors, [("rate_limited".to_owned(), Some(2))]);
    assert_eq!(snapshot(&app, doc).await, (Version::from(1), "a".into()));

    a.rejoin(&app, &token_a).await;
    let ServerMessage::Joined { ops: Some(ops), .. } = &a.joined else {
        panic!("expected a catch-up, got {:?}", a.joined);
    };
    assert!(ops.is_empty(), "nothing was committed: {ops:?}");
    a.settle().await;
    assert_eq!(a.acks.last(), Some(&(2, Version::from(2))));
    b.catch_up_to(Version::from(2)).await;
    assert_eq!((a.text(), b.text()), ("ab".into(), "ab".into()));
    assert_eq!(b.log.len(), 2);
    assert_eq!(snapshot(&app, doc).await, (Version::from(2), "ab".into()));
}

#[tokio::test]
async fn a_resent_submit_is_deduplicated_by_the_store_after_the_document_was_closed_and_reopened() {
    let mut config = Config::default();
    config.limits.room_idle = Duration::ZERO;
    let app = TestApp::spawn_with(config).await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    let (mut first, _) = join_raw(&app, doc, "tab-r", &token, None).await;
    first
        .send_text(submit(1, 0, json!([{"insert": "ab"}])))
        .await;
    expect_ack(&mut first, 1, 1).await;
    first
        .send_text(submit(2, 1, json!([{"retain": 2}, {"insert": "c"}])))
        .await;
    expect_ack(&mut first, 2, 2).await;
    first.drop_abruptly();
    // The last client left: the document closes (its room forgets the
    // client's seqs and ops).
    let closed = tokio::time::timeout(WAIT, async {
        while app.relay.health().active_documents > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle document never closed");

    // The reopened room holds no history: the content at version 2 (a join
    // never reads old ops from the store).
    let (mut second, joined) = join_raw(&app, doc, "tab-r", &token, Some(0)).await;
    let ServerMessage::Joined {
        version: V2,
        content: Some(content),
        ops: None,
        ..
    } = joined
    else {
        panic!("expected the content at version 2, got {joined:?}");
    };
    assert_eq!(Document::from_content(&content, V2).unwrap().text(), "abc");
    // The last seq and an earlier one, with other bases and deltas.
    second
        .send_text(submit(2, 0, json!([{"insert": "zzz"}])))
        .await;
    expect_ack(&mut second, 2, 2).await;
    second
        .send_text(submit(1, 2, json!([{"insert": "zzz"}])))
        .await;
    expect_ack(&mut second, 1, 1).await;
    second
        .send_text(submit(3, 2, json!([{"insert": ">"}])))
        .await;
    expect_ack(&mut second, 3, 3).await;
    assert_eq!(snapshot(&app, doc).await, (Version::from(3), ">abc".into()));
}

// ---------------------------------------------------------------------------
// 3. Catch-up and submit errors

#[tokio::test]
async fn a_join_with_since_gets_the_ops_after_it_and_no_content() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let ua = Uuid::new_v4();
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    a.insert(0, "Hel").await;
    a.settle().await;
    a.insert(3, "lo 😀").await;
    a.settle().await;
    let mut d = Delta::new();
    d.delete(1).insert("J");
    a.edit(d).await;
    a.settle().await;
    assert_eq!(a.text(), "Jello 😀");

    let (version, ops) = catch_up(&app, doc, 1).await;
    assert_eq!(version, Version::from(3));
    assert_eq!(
        ops.iter()
            .map(|o| (
                o.version.get(),
                *o.user.as_uuid(),
                o.client_id.as_str(),
                o.seq.get()
            ))
            .collect::<Vec<_>>(),
        [(2, ua, "tab-a", 2), (3, ua, "tab-a", 3)]
    );
    let mut at_1 = Document::from_text("Hel", Version::from(1));
    apply_all(&mut at_1, &ops);
    assert_eq!(at_1.text(), a.text());

    // Sent deltas omit the trailing retain (docs/protocol.md, "Relay's choices").
    for op in &ops {
        assert!(
            !matches!(
                op.delta.components().last(),
                Some(Component::Retain { attributes, .. }) if attributes.is_empty()
            ),
            "trailing retain in {op:?}"
        );
    }
    let (_, all) = catch_up(&app, doc, 0).await;
    assert_eq!(replay(&all).text(), a.text());
    assert_eq!(all[1..], ops[..]);
    let (version, none) = catch_up(&app, doc, 3).await;
    assert_eq!((version, none.len()), (Version::from(3), 0));
}

#[tokio::test]
async fn a_join_with_since_older_than_the_kept_history_gets_the_content() {
    let mut config = Config::default();
    config.limits.operation_history_max = 2;
    let app = TestApp::spawn_with(config).await;
    let doc = new_document();
    let ua = Uuid::new_v4();
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    for i in 0..6 {
        a.insert(0, &i.to_string()).await;
        a.settle().await;
    }
    // Within the kept history: ops.
    let (version, ops) = catch_up(&app, doc, 4).await;
    assert_eq!((version, ops.len()), (Version::from(6), 2));
    // Older: the content (a join never reads old ops from the store).
    let token = app.token(Uuid::new_v4(), &[("*", Role::Viewer)]);
    let (conn, joined) = join_raw(&app, doc, "older", &token, Some(1)).await;
    conn.close().await;
    match joined {
        ServerMessage::Joined {
            version,
            content: Some(content),
            ops: None,
            ..
        } => {
            assert_eq!(version, Version::from(6));
            assert_eq!(
                Document::from_content(&content, version).unwrap().text(),
                "543210"
            );
        }
        other => panic!("expected the content, got {other:?}"),
    }
}

#[tokio::test]
async fn a_join_with_since_too_far_behind_gets_the_content_and_a_stale_resend_is_still_deduplicated()
 {
    // docs/protocol.md: `joined.ops` comes from the kept history in memory;
    // past it `content` is sent.
    const KEPT: u64 = 50;
    let mut config = Config::default();
    config.limits.operation_history_max = KEPT as usize;
    config.limits.submit_rate_per_sec = 1_000_000;
    config.limits.submit_burst = 1_000_000;
    let app = TestApp::spawn_with(config).await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    let (mut writer, _) = join_raw(&app, doc, "tab-w", &token, None).await;

    // A client's op is committed (the writer sees it), its ack is lost.
    let (mut lost, _) = join_raw(&app, doc, "tab-r", &token, None).await;
    lost.send_text(submit(1, 0, json!([{"insert": "y"}]))).await;
    writer
        .until(|m| matches!(m, ServerMessage::Ops { .. }).then_some(()))
        .await;
    lost.drop_abruptly();

    // Then more ops than the history keeps.
    for i in 1..=KEPT + 1 {
        writer
            .send_text(submit(i, i, json!([{"insert": "x"}])))
            .await;
        expect_ack(&mut writer, i, i + 1).await;
    }
    let last = KEPT + 2;
    let text = format!("{}y", "x".repeat(KEPT as usize + 1));

    // Exactly KEPT behind: still ops.
    let (version, ops) = catch_up(&app, doc, last - KEPT).await;
    assert_eq!(version, Version::new(last).unwrap());
    assert_eq!(ops.len() as u64, KEPT);
    assert_eq!(ops[0].version, Version::new(last - KEPT + 1).unwrap());

    // Further behind: the content at the current version, no ops.
    let (mut back, joined) = join_raw(&app, doc, "tab-r", &token, Some(0)).await;
    let ServerMessage::Joined {
        version,
        content: Some(content),
        ops: None,
        ..
    } = joined
    else {
        panic!("expected content and no ops, got {joined:?}");
    };
    assert_eq!(version, Version::new(last).unwrap());
    assert_eq!(
        Document::from_content(&content, version).unwrap().text(),
        text
    );
    // The lost submit re-sent on its old base: a duplicate, not stale_base.
    back.send_text(submit(1, 0, json!([{"insert": "y"}]))).await;
    expect_ack(&mut back, 1, 1).await;
    assert_eq!(
        snapshot(&app, doc).await,
        (Version::new(last).unwrap(), text)
    );
}

#[tokio::test]
async fn a_join_with_since_ahead_of_the_document_gets_the_content() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    let (mut c, _) = join_raw(&app, doc, "tab-c", &token, None).await;
    c.send_text(submit(1, 0, json!([{"insert": "hi"}]))).await;
    expect_ack(&mut c, 1, 1).await;
    let (_, joined) = join_raw(&app, doc, "tab-d", &token, Some(9)).await;
    let ServerMessage::Joined {
        version: V1,
        content: Some(content),
        ops: None,
        ..
    } = joined
    else {
        panic!("expected content at version 1, got {joined:?}");
    };
    assert_eq!(
        Document::from_content(&content, Version::from(1))
            .unwrap()
            .text(),
        "hi"
    );
}

#[tokio::test]
async fn a_base_older_than_the_kept_history_is_answered_stale_base() {
    let mut config = Config::default();
    config.limits.operation_history_max = 3;
    let app = TestApp::spawn_with(config).await;
    let doc = new_document();
    let ua = Uuid::new_v4();
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    for i in 0..5 {
        a.insert(0, &i.to_string()).await;
        a.settle().await;
    }
    let (mut c, _) = join_raw(&app, doc, "tab-c", &app.editor_token(ua), None).await;
    c.send_text(submit(1, 0, json!([{"insert": "late"}]))).await;
    expect_error(&mut c, ErrorCode::StaleBase, Some(1)).await;
    c.send_text(submit(2, 1, json!([{"insert": "late"}]))).await;
    expect_error(&mut c, ErrorCode::StaleBase, Some(2)).await;
    assert_eq!(
        snapshot(&app, doc).await,
        (Version::from(5), "43210".into())
    );
    // The oldest base still kept (ops 3..5 are) is accepted and rebased.
    c.send_text(submit(3, 2, json!([{"retain": 2}, {"insert": "!"}])))
        .await;
    expect_ack(&mut c, 3, 6).await;
    assert_eq!(
        snapshot(&app, doc).await,
        (Version::from(6), "43210!".into())
    );
}

#[tokio::test]
async fn a_base_ahead_of_the_document_is_answered_future_base() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    let (mut c, _) = join_raw(&app, doc, "tab-c", &token, None).await;
    c.send_text(submit(1, 1, json!([{"insert": "x"}]))).await;
    expect_error(&mut c, ErrorCode::FutureBase, Some(1)).await;
    assert_eq!(snapshot(&app, doc).await, (Version::from(0), String::new()));
    c.send_text(submit(2, 0, json!([{"insert": "x"}]))).await;
    expect_ack(&mut c, 2, 1).await;
}

#[tokio::test]
async fn a_second_submit_before_the_ack_is_answered_in_flight() {
    // Single-threaded runtime and one write carrying both frames: the server
    // reads the second before the room can commit the first.
    let app = TestApp::spawn().await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    let (mut c, _) = join_raw(&app, doc, "tab-c", &token, None).await;
    c.send_all(&[
        submit(1, 0, json!([{"insert": "a"}])),
        submit(2, 0, json!([{"insert": "b"}])),
    ])
    .await;
    let mut answers = [answer(&mut c).await, answer(&mut c).await];
    answers.sort_by_key(|m| matches!(m, ServerMessage::Error { .. }));
    match &answers[..] {
        [
            ServerMessage::Ack {
                seq: S1,
                version: V1,
            },
            ServerMessage::Error {
                code: ErrorCode::InFlight,
                seq: Some(S2),
                fatal: false,
                ..
            },
        ] => {}
        other => panic!("expected ack 1 and in_flight for 2, got {other:?}"),
    }
    assert_eq!(snapshot(&app, doc).await, (Version::from(1), "a".into()));
    // Seq 2 never committed: sent again after the ack, it is.
    c.send_text(submit(2, 1, json!([{"insert": "b"}]))).await;
    expect_ack(&mut c, 2, 2).await;
    assert_eq!(snapshot(&app, doc).await, (Version::from(2), "ba".into()));
}

#[tokio::test]
async fn a_seq_not_greater_than_the_last_committed_and_not_a_duplicate_is_answered_out_of_order() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    let (mut c, _) = join_raw(&app, doc, "tab-c", &token, None).await;
    c.send_text(submit(5, 0, json!([{"insert": "x"}]))).await;
    expect_ack(&mut c, 5, 1).await;
    c.send_text(submit(3, 1, json!([{"retain": 1}, {"insert": "new"}])))
        .await;
    expect_error(&mut c, ErrorCode::OutOfOrder, Some(3)).await;
    c.send_text(submit(4, 0, json!([{"insert": "new"}]))).await;
    expect_error(&mut c, ErrorCode::OutOfOrder, Some(4)).await;
    assert_eq!(snapshot(&app, doc).await, (Version::from(1), "x".into()));
    // Another connection of the same client id is held to the same order.
    let (mut d, _) = join_raw(&app, doc, "tab-c", &token, Some(1)).await;
    d.send_text(submit(2, 1, json!([{"insert": "new"}]))).await;
    expect_error(&mut d, ErrorCode::OutOfOrder, Some(2)).await;
    c.send_text(submit(6, 1, json!([{"retain": 1}, {"insert": "y"}])))
        .await;
    expect_ack(&mut c, 6, 2).await;
    assert_eq!(snapshot(&app, doc).await, (Version::from(2), "xy".into()));
}

// ---------------------------------------------------------------------------
// 4. Authentication and roles

#[tokio::test]
async fn a_viewer_submit_is_answered_forbidden_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let ua = Uuid::new_v4();
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    a.insert(0, "hi").await;
    a.settle().await;
    let viewer = app.token(Uuid::new_v4(), &[(&doc.to_string(), Role::Viewer)]);
    let (mut v, joined) = join_raw(&app, doc, "tab-v", &viewer, None).await;
    assert!(
        matches!(
            joined,
            ServerMessage::Joined {
                role: Role::Viewer,
                version: V1,
                ..
            }
        ),
        "{joined:?}"
    );
    v.send_text(submit(4, 1, json!([{"insert": "nope"}]))).await;
    expect_error(&mut v, ErrorCode::Forbidden, Some(4)).await;
    assert_eq!(snapshot(&app, doc).await, (Version::from(1), "hi".into()));
    // Still connected, and receiving the others' ops.
    a.insert(2, "!").await;
    a.settle().await;
    let ops = v
        .until(|m| match m {
            ServerMessage::Ops { ops } => Some(ops.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ops.iter().map(|o| o.version.get()).collect::<Vec<_>>(), [2]);
}

/// Joins with `token` (or none) and returns what comes first.
async fn first_answer(app: &TestApp, doc: DocumentId, token: Option<&str>) -> Received {
    let mut c = Conn::connect(&app.url(doc)).await;
    c.join("tab-x", token, None).await;
    c.recv().await
}

#[tokio::test]
async fn a_token_without_an_entry_for_the_document_is_closed_4403() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let other = new_document().to_string();
    let token = app.token(Uuid::new_v4(), &[(&other, Role::Owner)]);
    assert_eq!(
        first_answer(&app, doc, Some(&token)).await,
        Received::Closed(Some(4403))
    );
}

#[tokio::test]
async fn a_garbage_token_is_closed_4401() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    assert_eq!(
        first_answer(&app, doc, Some("not-a-jwt")).await,
        Received::Closed(Some(4401))
    );
    assert_eq!(
        first_answer(&app, doc, Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")).await,
        Received::Closed(Some(4401))
    );
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_closed_4401() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let token = DevKeys::from_seed([9; 32])
        .mint(&TokenRequest {
            sub: Uuid::new_v4(),
            name: None,
            docs: BTreeMap::from([("*".to_owned(), Role::Owner)]),
            ttl_secs: 3600,
        })
        .expect("mint");
    assert_eq!(
        first_answer(&app, doc, Some(&token)).await,
        Received::Closed(Some(4401))
    );
}

#[tokio::test]
async fn a_join_without_any_token_is_closed_4401() {
    let app = TestApp::spawn().await;
    assert_eq!(
        first_answer(&app, new_document(), None).await,
        Received::Closed(Some(4401))
    );
}

#[tokio::test]
async fn no_join_within_the_auth_timeout_is_closed_4408() {
    let mut config = Config::default();
    config.limits.auth_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    let mut c = Conn::connect(&app.url(new_document())).await;
    assert_eq!(c.recv().await, Received::Closed(Some(4408)));
}

#[tokio::test]
async fn a_first_message_that_is_not_a_join_is_closed_4400() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    for first in [
        submit(1, 0, json!([{"insert": "x"}])),
        "hello".to_owned(),
        json!({"type": "join"}).to_string(),
    ] {
        let mut c = Conn::connect(&app.url(doc)).await;
        c.send_text(first.clone()).await;
        match c.recv().await {
            Received::Message(ServerMessage::Error {
                code: ErrorCode::BadMessage,
                fatal: true,
                ..
            }) => {}
            other => panic!("{first}: expected a fatal bad_message, got {other:?}"),
        }
        assert_eq!(c.recv().await, Received::Closed(Some(4400)), "{first}");
    }
}

#[tokio::test]
async fn a_bearer_token_on_the_upgrade_works_without_a_token_in_the_join() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let user = Uuid::new_v4();
    let options = ConnectOptions {
        bearer: Some(app.editor_token(user)),
        ..ConnectOptions::default()
    };
    let Connect::Open(mut c) = Conn::open(&app.url(doc), options).await else {
        panic!("upgrade refused");
    };
    c.join("tab-b", None, None).await;
    match c.message().await {
        ServerMessage::Joined {
            user: u,
            role: Role::Editor,
            ..
        } => assert_eq!(*u.id.as_uuid(), user),
        other => panic!("expected joined, got {other:?}"),
    }
    c.send_text(submit(1, 0, json!([{"insert": "ok"}]))).await;
    expect_ack(&mut c, 1, 1).await;
}

// ---------------------------------------------------------------------------
// 5. Malformed messages and invalid deltas

#[tokio::test]
async fn malformed_json_and_wrong_field_types_are_answered_bad_message_and_the_connection_keeps_working()
 {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    let (mut c, _) = join_raw(&app, doc, "tab-c", &token, None).await;
    let cases: [(&str, Option<u64>); 10] = [
        ("{not json", None),
        ("[1, 2]", None),
        (r#"{"seq": 1}"#, Some(1)),
        (r#"{"type": 42}"#, None),
        (r#"{"type": "dance"}"#, None),
        (r#"{"type":"submit","seq":"one","base":0,"delta":[]}"#, None),
        (
            r#"{"type":"submit","seq":1,"base":"zero","delta":[{"insert":"a"}]}"#,
            Some(1),
        ),
        (r#"{"type":"submit","seq":1,"base":0}"#, Some(1)),
        (
            r#"{"type":"cursor","version":"now","anchor":0,"head":0}"#,
            None,
        ),
        (r#"{"type":"submit","seq":-1,"base":0,"delta":[]}"#, None),
    ];
    for (text, seq) in cases {
        c.send_text(text).await;
        match c.message().await {
            ServerMessage::Error {
                code: ErrorCode::BadMessage,
                seq: s,
                fatal: false,
                ..
            } => assert_eq!(s, seq.map(|n| Seq::new(n).unwrap()), "{text}"),
            other => panic!("{text}: expected bad_message, got {other:?}"),
        }
    }
    assert_eq!(snapshot(&app, doc).await, (Version::from(0), String::new()));
    c.send_text(submit(1, 0, json!([{"insert": "ok"}]))).await;
    expect_ack(&mut c, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_delta_is_answered_invalid_delta_and_leaves_the_document_and_other_clients_alone()
 {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (ua, ub, uc) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    a.insert(0, "Hello").await;
    a.settle().await;
    let (mut c, _) = join_raw(&app, doc, "tab-c", &app.editor_token(uc), None).await;
    // Made at version 1, where the document has 5 characters.
    let bad = [
        json!([{"retain": 10}, {"insert": "x"}]),
        json!([{"retain": 5}, {"delete": 1}]),
        json!([{"delete": 6}]),
        json!([{"retain": 0}, {"insert": "x"}]),
        json!([{"insert": ""}]),
        json!([{"delete": 0}]),
        json!([{"retain": 1.5}]),
        json!([{"bogus": 1}]),
        json!([{"insert": "x", "delete": 1}]),
        json!([{"retain": 1, "attributes": 7}]),
    ];
    for (i, delta) in bad.iter().enumerate() {
        let seq = i as u64 + 1;
        c.send_text(submit(seq, 1, delta.clone())).await;
        expect_error(&mut c, ErrorCode::InvalidDelta, Some(seq)).await;
    }
    assert_eq!(
        snapshot(&app, doc).await,
        (Version::from(1), "Hello".into())
    );

    // Again while the others keep editing: they are unaffected.
    let mut rng = SmallRng::seed_from_u64(5);
    for (i, delta) in bad.iter().enumerate() {
        let seq = (bad.len() + i) as u64 + 1;
        c.send_text(submit(seq, 1, delta.clone())).await;
        random_edit(&mut a, &mut rng).await;
        random_edit(&mut b, &mut rng).await;
        while a.try_step().await.is_some() {}
        while b.try_step().await.is_some() {}
        expect_error(&mut c, ErrorCode::InvalidDelta, Some(seq)).await;
    }
    // And a valid op from the same connection, made at version 1, commits.
    let seq = 2 * bad.len() as u64 + 1;
    c.send_text(submit(seq, 1, json!([{"retain": 5}, {"insert": "C"}])))
        .await;
    let ServerMessage::Ack { version: c_at, .. } = answer(&mut c).await else {
        panic!("expected the ack of the valid submit");
    };
    a.settle().await;
    b.settle().await;
    let last = a.client.version().max(b.client.version()).max(c_at);
    a.catch_up_to(last).await;
    b.catch_up_to(last).await;
    assert!(a.errors.is_empty() && b.errors.is_empty());
    assert_eq!(a.text(), b.text());
    assert!(a.text().contains('C'));
    let (version, ops) = catch_up(&app, doc, 0).await;
    assert_eq!(version, last);
    assert_eq!(replay(&ops).text(), a.text());
    assert_eq!(
        ops.iter()
            .filter(|o| o.client_id.as_str() == "tab-c")
            .map(|o| o.seq.get())
            .collect::<Vec<_>>(),
        [seq],
        "only the valid submit of tab-c was committed"
    );
}
