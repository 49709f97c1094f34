//! What one hostile or unlucky client can send, end to end over real
//! sockets (PROTOCOL.md "Bounds" and "Canonical form"), the frames Relay
//! sends when documents are large, and latency against a client that only
//! listens. `.ci/test` builds it like a release (`--profile ci-release`: no
//! debug assertions, no overflow checks), where integer overflow wraps
//! silently instead of panicking, and runs it on PostgreSQL too.

use relay_app::config::Config;
use relay_domain::{DocumentId, Version};
use relay_ports::protocol::{ErrorCode, ServerMessage};
use relay_tests::*;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

async fn joined(app: &TestApp, document: DocumentId, client_id: &str) -> (Conn, ServerMessage) {
    let mut conn = Conn::connect(&app.url(document)).await;
    let token = app.editor_token(Uuid::new_v4());
    conn.join(client_id, Some(&token), None).await;
    let joined = conn.message().await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    (conn, joined)
}

async fn text_of(app: &TestApp, document: DocumentId) -> (Version, String) {
    let (_, joined) = joined(app, document, "reader").await;
    let ServerMessage::Joined {
        version, content, ..
    } = joined
    else {
        unreachable!()
    };
    (
        version,
        content.expect("content").apply_to_str("").expect("inserts"),
    )
}

// ---------------------------------------------------------------------------
// 1. Lengths that overflow, 2. integers past 2^53 - 1, 4. canonical form

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_whose_lengths_overflow_are_refused_and_the_document_is_untouched() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (mut c, _) = joined(&app, doc, "tab").await;
    c.send_text(submit(1, 0, json!([{"insert": "hello"}])))
        .await;
    assert!(matches!(answer(&mut c).await, ServerMessage::Ack { .. }));
    c.send_text(submit(2, 1, json!([{"retain": 5}, {"insert": "!"}])))
        .await;
    assert!(matches!(answer(&mut c).await, ServerMessage::Ack { .. }));
    let max = relay_domain::ids::MAX_WIRE_INT;
    let hostile = [
        // Wraps a 64-bit base length to 5 in a release build.
        json!([{"delete": u64::MAX}, {"retain": 6}]),
        json!([{"retain": u64::MAX}, {"retain": 2, "attributes": {"bold": true}}]),
        json!([{"delete": max}, {"retain": max}]),
        json!([{"retain": max}, {"insert": "x"}]),
        json!([{"retain": 3}, {"delete": u64::MAX - 2}]),
    ];
    for (i, delta) in hostile.iter().enumerate() {
        // At the current base and at an old one (rebased over history).
        for base in [2, 1] {
            let seq = 3 + 2 * i as u64 + (2 - base);
            c.send_text(submit(seq, base, delta.clone())).await;
            match answer(&mut c).await {
                ServerMessage::Error { code, fatal, .. } => {
                    assert_eq!((code, fatal), (ErrorCode::InvalidDelta, false), "{delta}")
                }
                other => panic!("{delta} at base {base}: expected invalid_delta, got {other:?}"),
            }
        }
    }
    // Nothing changed, and the document still takes edits.
    c.send_text(submit(100, 2, json!([{"retain": 6}, {"insert": "?"}])))
        .await;
    assert!(matches!(answer(&mut c).await, ServerMessage::Ack { .. }));
    assert_eq!(
        text_of(&app, doc).await,
        (Version::from(3), "hello!?".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_past_two_to_the_fifty_three_are_bad_messages() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (mut c, _) = joined(&app, doc, "tab").await;
    let over = relay_domain::ids::MAX_WIRE_INT + 1;
    for text in [
        format!(r#"{{"type":"submit","seq":{over},"base":0,"delta":[{{"insert":"x"}}]}}"#),
        format!(r#"{{"type":"submit","seq":1,"base":{over},"delta":[{{"insert":"x"}}]}}"#),
        format!(r#"{{"type":"cursor","version":0,"anchor":{over},"head":0}}"#),
        r#"{"type":"submit","seq":-1,"base":0,"delta":[{"insert":"x"}]}"#.to_owned(),
    ] {
        c.send_text(text.clone()).await;
        match c.message().await {
            ServerMessage::Error { code, fatal, .. } => {
                assert_eq!((code, fatal), (ErrorCode::BadMessage, false), "{text}")
            }
            other => panic!("{text}: expected bad_message, got {other:?}"),
        }
    }
    c.send_text(submit(1, 0, json!([{"insert": "ok"}]))).await;
    assert!(matches!(answer(&mut c).await, ServerMessage::Ack { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_followed_by_an_insert_is_refused_naming_the_canonical_form() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (mut c, _) = joined(&app, doc, "tab").await;
    c.send_text(submit(1, 0, json!([{"insert": "abcdef"}])))
        .await;
    assert!(matches!(answer(&mut c).await, ServerMessage::Ack { .. }));
    c.send_text(submit(
        2,
        1,
        json!([{"retain": 2}, {"delete": 3}, {"insert": "XY"}]),
    ))
    .await;
    match answer(&mut c).await {
        ServerMessage::Error {
            code,
            message,
            seq,
            fatal,
        } => {
            assert_eq!(
                (code, seq, fatal),
                (
                    ErrorCode::InvalidDelta,
                    Some(relay_domain::Seq::from(2)),
                    false
                )
            );
            assert!(message.contains("the insert comes first"), "{message}");
        }
        other => panic!("expected invalid_delta, got {other:?}"),
    }
    // The canonical form of the same edit is taken.
    c.send_text(submit(
        2,
        1,
        json!([{"retain": 2}, {"insert": "XY"}, {"delete": 3}]),
    ))
    .await;
    assert!(matches!(answer(&mut c).await, ServerMessage::Ack { .. }));
    assert_eq!(text_of(&app, doc).await.1, "abXYf");
}

// ---------------------------------------------------------------------------
// 3. and 8. Data the store cannot hold fails only its own submit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_the_store_cannot_hold_fails_alone_while_other_documents_commit() {
    // Also on PostgreSQL with RELAY_E2E_STORE=postgres (see .ci/test).
    let app = TestApp::spawn().await;
    let bad_doc = new_document();
    let (mut bad, _) = joined(&app, bad_doc, "bad").await;
    let mut good = Vec::new();
    for i in 0..20 {
        let (c, _) = joined(&app, new_document(), &format!("good-{i}")).await;
        good.push(c);
    }
    let bad_deltas = [
        json!([{"insert": "a\u{0}b"}]),
        json!([{"insert": "x", "attributes": {"color": "re\u{0}d"}}]),
        json!([{"insert": "x", "attributes": {"b\u{0}": true}}]),
        json!([{"insert": "x", "attributes": {"big": "v".repeat(5000)}}]),
        json!([{"insert": "x", "attributes": (0..33).map(|i| (format!("k{i}"), json!(1))).collect::<serde_json::Map<_, _>>()}]),
    ];
    for (i, delta) in bad_deltas.iter().enumerate() {
        bad.send_text(submit(i as u64 + 1, 0, delta.clone())).await;
        for g in &mut good {
            g.send_text(submit(i as u64 + 1, i as u64, json!([{"insert": "g"}])))
                .await;
        }
        match answer(&mut bad).await {
            ServerMessage::Error { code, fatal, .. } => {
                assert_eq!((code, fatal), (ErrorCode::InvalidDelta, false), "{delta}")
            }
            other => panic!("{delta}: expected invalid_delta, got {other:?}"),
        }
        for g in &mut good {
            assert!(matches!(answer(g).await, ServerMessage::Ack { .. }));
        }
    }
    bad.send_text(submit(9, 0, json!([{"insert": "fine"}])))
        .await;
    assert!(matches!(answer(&mut bad).await, ServerMessage::Ack { .. }));
}

// ---------------------------------------------------------------------------
// 11. Outbound frames bounded by bytes: every accepted document can be
// joined and resumed

/// Text of about `n` bytes in one insert.
fn chunk(n: usize, tag: char) -> String {
    std::iter::repeat_n(tag, n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_larger_than_four_messages_can_be_joined_and_resumed() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (mut w, _) = joined(&app, doc, "writer").await;
    // 6 x 900 KB = 5.4 MB: more than 4 x MAX_MESSAGE_BYTES.
    for seq in 1..=6u64 {
        w.send_text(submit(
            seq,
            seq - 1,
            json!([{"insert": chunk(900_000, 'a')}]),
        ))
        .await;
        assert!(matches!(answer(&mut w).await, ServerMessage::Ack { .. }));
    }
    let (version, text) = text_of(&app, doc).await;
    assert_eq!((version, text.len()), (Version::from(6), 5_400_000));
    // A client that saw nothing resumes: the six ops would be larger than
    // the content, so it gets the content.
    let mut r = Conn::connect(&app.url(doc)).await;
    let token = app.editor_token(Uuid::new_v4());
    r.join("resumer", Some(&token), Some(Version::ZERO)).await;
    match r.message().await {
        ServerMessage::Joined {
            version,
            content: Some(content),
            ops: None,
            ..
        } => {
            assert_eq!(version, Version::from(6));
            assert_eq!(content.apply_to_str("").unwrap().len(), 5_400_000);
        }
        other => panic!(
            "expected content, got a different joined: {}",
            short(&other)
        ),
    }
    // One that missed one op gets that op.
    let mut r = Conn::connect(&app.url(doc)).await;
    r.join("resumer-2", Some(&token), Some(Version::from(5)))
        .await;
    match r.message().await {
        ServerMessage::Joined {
            ops: Some(ops),
            content: None,
            ..
        } => assert_eq!(ops.len(), 1),
        other => panic!("expected one op, got {}", short(&other)),
    }
}

fn short(m: &ServerMessage) -> String {
    let mut s = format!("{m:?}");
    s.truncate(300);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_frames_are_split_by_bytes_as_well_as_count() {
    let config = Config::default();
    let budget = config.limits.max_message_bytes;
    let app = TestApp::spawn_with(config).await;
    let doc = new_document();
    let (mut listener, _) = joined(&app, doc, "listener").await;
    let mut writers = Vec::new();
    for i in 0..4 {
        let (w, _) = joined(&app, doc, &format!("w{i}")).await;
        writers.push(w);
    }
    // Four 400 KB ops sent at once: committed together, delivered in
    // frames of at most MAX_MESSAGE_BYTES of ops.
    let frames: Vec<String> = writers
        .iter()
        .map(|_| submit(1, 0, json!([{"insert": chunk(400_000, 'b')}])))
        .collect();
    for (w, f) in writers.iter_mut().zip(&frames) {
        w.send_text(f.clone()).await;
    }
    let mut seen = 0;
    while seen < 4 {
        let frame = listener.text_frame().await;
        let Ok(ServerMessage::Ops { ops }) = ServerMessage::decode(&frame) else {
            continue;
        };
        seen += ops.len();
        assert!(
            ops.len() == 1 || frame.len() <= budget + 64,
            "a frame of {} ops is {} bytes",
            ops.len(),
            frame.len()
        );
    }
}

// ---------------------------------------------------------------------------
// 12. Latency against a client that only listens (TCP_NODELAY)

/// Without TCP_NODELAY on the server's sockets, Nagle's algorithm holds
/// each `ops` frame to a client that only listens while the previous one is
/// unacknowledged - until its delayed ACK, about 40 ms, a kernel constant -
/// so the listener's delivery latency is many times the writer's round
/// trip. Compared as a ratio within this run, not in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_to_a_client_that_only_listens_are_not_held_back() {
    const OPS: u64 = 60;
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (mut writer, _) = joined(&app, doc, "writer").await;
    let (mut listener, _) = joined(&app, doc, "listener").await;
    writer
        .until(|m| matches!(m, ServerMessage::Presence { .. }).then_some(()))
        .await;
    let arrivals = tokio::spawn(async move {
        let mut at = std::collections::HashMap::new();
        while (at.len() as u64) < OPS {
            if let ServerMessage::Ops { ops } = listener.message().await {
                for op in ops {
                    at.insert(op.version, std::time::Instant::now());
                }
            }
        }
        at
    });
    let mut sent = Vec::new();
    let mut round_trips = Vec::new();
    for seq in 1..=OPS {
        let started = std::time::Instant::now();
        writer
            .send_text(submit(seq, seq - 1, json!([{"insert": "x"}])))
            .await;
        writer
            .until(|m| matches!(m, ServerMessage::Ack { .. }).then_some(()))
            .await;
        round_trips.push(started.elapsed());
        sent.push((Version::new(seq).unwrap(), started));
    }
    let arrivals = tokio::time::timeout(WAIT, arrivals)
        .await
        .expect("every op reaches the listener")
        .expect("listener");
    let mut delivery: Vec<Duration> = sent
        .iter()
        .map(|(v, at)| arrivals[v].saturating_duration_since(*at))
        .collect();
    round_trips.sort();
    delivery.sort();
    let rt = round_trips[round_trips.len() / 2];
    let p90 = delivery[delivery.len() * 9 / 10];
    println!("median round trip {rt:?}, p90 delivery {p90:?}");
    // Generous: the failure this catches is 40 ms against well under 1 ms.
    assert!(
        p90 < rt * 10 + Duration::from_millis(5),
        "delivery p90 {p90:?} against a writer round trip of {rt:?}"
    );
}
