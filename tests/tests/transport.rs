//! The transport end to end (PROTOCOL.md, "Connection"): upgrade rules,
//! frame rules, heartbeat, the plain HTTP routes, presence as another
//! client sees it, and slow consumers. Real WebSocket clients over TCP
//! against the real application on port 0.
//!
//! Nothing here sleeps hoping something happened: every wait is for an
//! event, bounded by [`WAIT`]; where time must pass (heartbeat, throttle,
//! debounce) the durations are configured short and the test waits for the
//! event they cause.

use relay_adapter_jwt::{DevKeys, JwtConfig, JwtVerifier, KeySet};
use relay_app::config::Config;
use relay_domain::{Client, ClientId, Delta, Document, DocumentId, Selection, UserId, Version};
use relay_ports::ClientMessage;
use relay_ports::protocol::{ErrorCode, Role, ServerMessage};
use relay_tests::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Helpers

/// Connects (offering `relay.v1`) and joins `document` as `client_id` of
/// `user` with `role` on every document; returns the connection and `joined`.
async fn join_as(
    app: &TestApp,
    document: DocumentId,
    user: Uuid,
    client_id: &str,
    role: Role,
) -> (Conn, ServerMessage) {
    let mut conn = Conn::connect(&app.url(document)).await;
    let token = app.token(user, &[("*", role)]);
    conn.join(client_id, Some(&token), None).await;
    let joined = conn.message().await;
    assert!(
        matches!(joined, ServerMessage::Joined { .. }),
        "expected joined, got {joined:?}"
    );
    (conn, joined)
}

async fn join(app: &TestApp, document: DocumentId, client_id: &str) -> (Conn, ServerMessage) {
    join_as(app, document, Uuid::new_v4(), client_id, Role::Editor).await
}

fn cursor(version: u64, anchor: usize, head: usize) -> ClientMessage {
    ClientMessage::Cursor {
        version: Version::new(version).unwrap(),
        selection: Some(Selection { anchor, head }),
    }
}

fn is_from(client_id: &str) -> impl Fn(&ClientId) -> bool + '_ {
    move |c: &ClientId| c.as_str() == client_id
}

/// Waits for a `presence` message announcing that `client_id` joined.
async fn await_joined(conn: &mut Conn, client_id: &str) {
    conn.until(|m| match m {
        ServerMessage::Presence { joined, .. }
            if joined.iter().any(|e| is_from(client_id)(&e.client_id)) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
}

/// Waits for a `presence` message announcing that `client_id` left.
async fn await_left(conn: &mut Conn, client_id: &str) {
    conn.until(|m| match m {
        ServerMessage::Presence { left, .. }
            if left.iter().any(|d| is_from(client_id)(&d.client_id)) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
}

/// Reads whatever arrives within `quiet`; fails if `forbidden` matches one.
async fn assert_nothing_within(
    conn: &mut Conn,
    quiet: Duration,
    what: &str,
    forbidden: impl Fn(&ServerMessage) -> bool,
) {
    while let Some(r) = conn.recv_within(quiet).await {
        match r {
            Received::Message(m) => assert!(!forbidden(&m), "unexpected {what}: {m:?}"),
            Received::Closed(c) => panic!("closed ({c:?}) while checking that no {what} arrives"),
        }
    }
}

/// Polls `/health` until `active_connections` is `n` (bounded by [`WAIT`]),
/// meanwhile reading `conn` so that it answers pings; returns what `conn`
/// received. Panics if `conn` is closed.
async fn await_connections_while_reading(
    app: &TestApp,
    n: u64,
    conn: &mut Conn,
) -> Vec<ServerMessage> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        match conn.recv_within(Duration::from_millis(100)).await {
            Some(Received::Closed(c)) => panic!("the reading client was closed ({c:?})"),
            Some(Received::Message(m)) => seen.push(m),
            None => {}
        }
        let h = app.health().await;
        if h["active_connections"] == n {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "active_connections stayed {} (waited for {n})",
            h["active_connections"]
        );
    }
}

fn options(protocols: Option<&str>, origin: Option<&str>) -> ConnectOptions {
    ConnectOptions {
        bearer: None,
        protocols: protocols.map(str::to_owned),
        origin: origin.map(str::to_owned),
    }
}

// ---------------------------------------------------------------------------
// 1. Upgrade rules

#[tokio::test]
async fn a_document_id_that_is_not_a_uuid_is_refused_with_400() {
    let app = TestApp::spawn().await;
    for id in ["not-a-uuid", "123", "6f1c0000-0000-0000-0000-00000000000g"] {
        let url = format!("ws://{}/collab/{id}", app.addr);
        let (status, _) = Conn::handshake(&url, &ConnectOptions::default())
            .await
            .refused();
        assert_eq!(status, 400, "document id {id:?}");
    }
}

#[tokio::test]
async fn offering_only_other_subprotocols_is_refused_with_400() {
    let app = TestApp::spawn().await;
    for offered in ["chat", "chat, relay.v2", "relay"] {
        let (status, _) = Conn::handshake(&app.url(new_document()), &options(Some(offered), None))
            .await
            .refused();
        assert_eq!(status, 400, "offering {offered:?}");
    }
}

#[tokio::test]
async fn offering_relay_v1_gets_it_selected() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    for offered in [None, Some("relay.v1"), Some("chat, relay.v1")] {
        let (mut conn, headers) = Conn::handshake(&app.url(doc), &options(offered, None))
            .await
            .accepted();
        let selected: Vec<_> = headers.get_all("sec-websocket-protocol").iter().collect();
        assert_eq!(selected, ["relay.v1"], "offering {offered:?}");
        let user = Uuid::new_v4();
        conn.join("tab", Some(&app.editor_token(user)), None).await;
        assert!(matches!(conn.message().await, ServerMessage::Joined { .. }));
    }
}

#[tokio::test]
async fn offering_no_subprotocol_is_accepted_and_none_is_selected() {
    let app = TestApp::spawn().await;
    let (mut conn, headers) = Conn::handshake(&app.url(new_document()), &options(Some(""), None))
        .await
        .accepted();
    assert!(
        headers.get("sec-websocket-protocol").is_none(),
        "{headers:?}"
    );
    conn.join("tab", Some(&app.editor_token(Uuid::new_v4())), None)
        .await;
    assert!(matches!(conn.message().await, ServerMessage::Joined { .. }));
}

#[tokio::test]
async fn with_allowed_origins_a_foreign_origin_is_refused_with_403_and_an_allowed_one_works() {
    let app = TestApp::spawn_with({
        let mut config = Config::default();
        config.limits.allowed_origins = Some(vec![
            "https://app.example".to_owned(),
            "https://other.example".to_owned(),
        ]);
        config
    })
    .await;
    let url = app.url(new_document());
    for foreign in [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil",
        "null",
    ] {
        let (status, _) = Conn::handshake(&url, &options(None, Some(foreign)))
            .await
            .refused();
        assert_eq!(status, 403, "origin {foreign:?}");
    }
    for allowed in ["https://app.example", "https://other.example"] {
        let (mut conn, _) = Conn::handshake(&url, &options(None, Some(allowed)))
            .await
            .accepted();
        conn.join("tab", Some(&app.editor_token(Uuid::new_v4())), None)
            .await;
        assert!(
            matches!(conn.message().await, ServerMessage::Joined { .. }),
            "origin {allowed:?}"
        );
    }
    // A client that sends no Origin (not a browser) is not refused.
    let (conn, _) = Conn::handshake(&url, &options(None, None)).await.accepted();
    conn.close().await;
}

#[tokio::test]
async fn a_token_in_the_url_query_is_refused_with_400() {
    let app = TestApp::spawn().await;
    let token = app.editor_token(Uuid::new_v4());
    let base = app.url(new_document());
    for query in [
        format!("?token={token}"),
        format!("?v=1&token={token}"),
        format!("?access_token={token}"),
    ] {
        let (status, _) = Conn::handshake(&format!("{base}{query}"), &ConnectOptions::default())
            .await
            .refused();
        assert_eq!(status, 400, "query {query:?}");
    }
}

#[tokio::test]
async fn at_max_connections_the_next_upgrade_gets_503_with_retry_after_until_one_closes() {
    let app = TestApp::spawn_with({
        let mut config = Config::default();
        config.limits.max_connections = 2;
        config
    })
    .await;
    let doc = new_document();
    let (first, _) = join(&app, doc, "tab-1").await;
    let (mut second, _) = Conn::handshake(&app.url(doc), &ConnectOptions::default())
        .await
        .accepted();

    let (status, headers) = Conn::handshake(&app.url(doc), &ConnectOptions::default())
        .await
        .refused();
    assert_eq!(status, 503);
    let retry_after = headers
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .expect("ASCII");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s > 0),
        "Retry-After: {retry_after:?}"
    );
    // Refused upgrades do not take a slot.
    assert_eq!(app.health().await["active_connections"], 2);

    first.close().await;
    app.await_health("active_connections", 1).await;
    let (mut third, _) = Conn::handshake(&app.url(doc), &ConnectOptions::default())
        .await
        .accepted();
    third
        .join("tab-3", Some(&app.editor_token(Uuid::new_v4())), None)
        .await;
    assert!(matches!(
        third.message().await,
        ServerMessage::Joined { .. }
    ));
    // The second connection, upgraded earlier, still works too.
    second
        .join("tab-2", Some(&app.editor_token(Uuid::new_v4())), None)
        .await;
    assert!(matches!(
        second.message().await,
        ServerMessage::Joined { .. }
    ));
}

#[tokio::test]
async fn a_draining_server_refuses_upgrades_with_503_and_is_not_ready() {
    let app = TestApp::spawn().await;
    app.relay.shutdown().await;
    let (status, headers) = Conn::handshake(&app.url(new_document()), &ConnectOptions::default())
        .await
        .refused();
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    let ready = app.get("/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "not_ready");
}

// ---------------------------------------------------------------------------
// 2. Frames

fn small_frames() -> Config {
    let mut config = Config::default();
    config.limits.max_message_bytes = 4096;
    config
}

/// A text frame of valid JSON that is `bytes` long.
fn padded_typing(bytes: usize) -> String {
    let skeleton = json!({"type": "typing", "pad": ""}).to_string();
    let pad = "x".repeat(bytes - skeleton.len());
    let text = json!({"type": "typing", "pad": pad}).to_string();
    assert_eq!(text.len(), bytes);
    text
}

/// The text of a `joined` that carries the content.
fn joined_text(joined: &ServerMessage) -> String {
    match joined {
        ServerMessage::Joined {
            content: Some(content),
            version,
            ..
        } => Document::from_content(content, *version)
            .expect("content is inserts")
            .text(),
        other => panic!("expected joined with content, got {other:?}"),
    }
}

fn is_typing_from(m: &ServerMessage, client_id: &str) -> Option<bool> {
    match m {
        ServerMessage::Typing {
            client_id: c,
            active,
            ..
        } if c.as_str() == client_id => Some(*active),
        _ => None,
    }
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003_and_other_clients_are_unaffected() {
    let app = TestApp::spawn_with(small_frames()).await;
    let doc = new_document();
    let ub = Uuid::new_v4();
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    let (mut a, _) = join(&app, doc, "tab-a").await;
    await_joined(&mut b.conn, "tab-a").await;

    a.send_binary(br#"{"type":"typing"}"#.to_vec()).await;
    assert_eq!(a.closed().await, Some(1003));

    await_left(&mut b.conn, "tab-a").await;
    b.insert(0, "still here").await;
    b.settle().await;
    let (_, joined) = join(&app, doc, "tab-c").await;
    assert_eq!(joined_text(&joined), "still here");
}

#[tokio::test]
async fn a_frame_larger_than_max_message_bytes_closes_with_1009_and_other_clients_are_unaffected() {
    let app = TestApp::spawn_with(small_frames()).await;
    let doc = new_document();
    let ub = Uuid::new_v4();
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    let (mut a, _) = join(&app, doc, "tab-a").await;
    await_joined(&mut b.conn, "tab-a").await;

    // At the limit is fine (unknown fields are ignored: this is `typing`).
    a.send_text(padded_typing(4096)).await;
    let active = b.conn.until(|m| is_typing_from(m, "tab-a")).await;
    assert!(active);
    // One byte over closes the connection.
    a.send_text(padded_typing(4097)).await;
    assert_eq!(a.closed().await, Some(1009));

    await_left(&mut b.conn, "tab-a").await;
    b.insert(0, "still here").await;
    b.settle().await;
    let (_, joined) = join(&app, doc, "tab-c").await;
    assert_eq!(joined_text(&joined), "still here");
}

#[tokio::test]
async fn the_frame_rules_hold_for_the_first_frame_too() {
    let app = TestApp::spawn_with(small_frames()).await;
    let doc = new_document();
    let mut binary = Conn::connect(&app.url(doc)).await;
    binary.send_binary(vec![0, 1, 2]).await;
    assert_eq!(binary.closed().await, Some(1003));

    let mut big = Conn::connect(&app.url(doc)).await;
    let token = app.editor_token(Uuid::new_v4());
    let join = json!({"type": "join", "client_id": "tab", "token": token, "since": null,
                      "pad": "x".repeat(5000)});
    big.send_text(join.to_string()).await;
    assert_eq!(big.closed().await, Some(1009));
}

// ---------------------------------------------------------------------------
// 3. Heartbeat

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_with_1008_while_a_live_one_stays() {
    let app = TestApp::spawn_with({
        let mut config = Config::default();
        config.limits.heartbeat_interval = Duration::from_secs(1);
        config.limits.heartbeat_timeout = Duration::from_secs(2);
        config
    })
    .await;
    let doc = new_document();
    // `silent` is never read again after `joined`: no pong goes out.
    let (mut silent, _) = join(&app, doc, "tab-silent").await;
    let (mut live, _) = join(&app, doc, "tab-live").await;
    assert_eq!(app.health().await["active_connections"], 2);

    // Keep `live` reading (so answering pings) while watching the server
    // drop `silent`, without touching `silent`'s socket.
    let seen = await_connections_while_reading(&app, 1, &mut live).await;
    let mut saw_left = seen.iter().any(|m| {
        matches!(m, ServerMessage::Presence { left, .. }
            if left.iter().any(|d| d.client_id.as_str() == "tab-silent"))
    });
    // `live` stays well past the timeout: three more pings (3 s > 2 s).
    let meanwhile = live
        .await_pings(3, WAIT)
        .await
        .unwrap_or_else(|c| panic!("the live client was closed ({c:?})"));
    assert_eq!(app.health().await["active_connections"], 1);
    saw_left |= meanwhile.iter().any(|m| {
        matches!(m, ServerMessage::Presence { left, .. }
            if left.iter().any(|d| d.client_id.as_str() == "tab-silent"))
    });
    if !saw_left {
        await_left(&mut live, "tab-silent").await;
    }
    assert_eq!(silent.closed().await, Some(1008));
}

// ---------------------------------------------------------------------------
// 4. Plain HTTP routes

#[tokio::test]
async fn health_reports_exactly_the_seed_keys_with_live_counts() {
    let app = TestApp::spawn_with({
        let mut config = Config::default();
        config.limits.room_idle = Duration::from_secs(1);
        config
    })
    .await;
    let r = app.get("/health").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let h = r.json();
    let keys: BTreeSet<&str> = h
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "status",
            "version",
            "uptime_seconds",
            "active_connections",
            "active_documents"
        ])
    );
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_seconds"].is_u64());
    assert_eq!(h["active_connections"], 0);
    assert_eq!(h["active_documents"], 0);

    let (d1, d2) = (new_document(), new_document());
    let (a, _) = join(&app, d1, "tab-a").await;
    let (_b, _) = join(&app, d1, "tab-b").await;
    let (c, _) = join(&app, d2, "tab-c").await;
    let h = app.health().await;
    assert_eq!(
        (&h["active_connections"], &h["active_documents"]),
        (&json!(3), &json!(2))
    );

    c.close().await;
    app.await_health("active_connections", 2).await;
    // The emptied document's room closes after ROOM_IDLE_SECS.
    app.await_health("active_documents", 1).await;
    a.close().await;
    app.await_health("active_connections", 1).await;
    assert_eq!(app.health().await["active_documents"], 1);
}

#[tokio::test]
async fn ready_reports_the_jwt_keys_check() {
    let app = TestApp::spawn().await;
    let r = app.get("/ready").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": "ready", "checks": {"jwt_keys": "ok"}})
    );
}

#[tokio::test]
async fn the_jwks_document_verifies_the_apps_tokens() {
    let app = TestApp::spawn().await;
    let r = app.get("/.well-known/jwks.json").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .get("content-type")
            .is_some_and(|v| v == "application/json"),
        "{:?}",
        r.headers
    );
    let keys = KeySet::from_jwks_json(r.body.as_bytes(), None).expect("a usable JWKS");
    assert!(!keys.is_empty());
    let verifier = JwtVerifier::with_keys(JwtConfig::default(), keys);

    let user = Uuid::new_v4();
    let claims = verifier
        .verify_token(&app.editor_token(user))
        .expect("the app's token verifies");
    assert_eq!(claims.user, UserId::new(user));
    // A token signed by another key does not.
    let stranger =
        DevKeys::from_seed([8; 32]).editor_token(UserId::new(user), Duration::from_secs(600));
    assert!(verifier.verify_token(&stranger).is_err());
}

// ---------------------------------------------------------------------------
// 5. Presence, cursors, typing

#[tokio::test]
async fn presence_shows_who_is_there_and_who_joins_and_leaves() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (ua, ub, uc, ud) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let (mut a, joined_a) = join_as(&app, doc, ua, "tab-a", Role::Editor).await;
    let ServerMessage::Joined { presence, .. } = &joined_a else {
        unreachable!()
    };
    assert!(presence.is_empty(), "{presence:?}");

    let (mut b, joined_b) = join_as(&app, doc, ub, "tab-b", Role::Viewer).await;
    let ServerMessage::Joined { presence, .. } = &joined_b else {
        unreachable!()
    };
    let there: Vec<_> = presence
        .iter()
        .map(|e| (*e.user.as_uuid(), e.client_id.as_str()))
        .collect();
    assert_eq!(there, [(ua, "tab-a")]);
    let entry = a
        .until(|m| match m {
            ServerMessage::Presence { joined, left } if !joined.is_empty() => {
                assert!(left.is_empty());
                Some(joined.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(entry.len(), 1);
    assert_eq!(
        (*entry[0].user.as_uuid(), entry[0].client_id.as_str()),
        (ub, "tab-b")
    );
    assert_eq!(
        entry[0].name.as_deref(),
        Some(&*format!("user-{}", &ub.to_string()[..8]))
    );

    let (mut c, joined_c) = join_as(&app, doc, uc, "tab-c", Role::Editor).await;
    let ServerMessage::Joined { presence, .. } = &joined_c else {
        unreachable!()
    };
    let there: BTreeSet<_> = presence
        .iter()
        .map(|e| (*e.user.as_uuid(), e.client_id.as_str()))
        .collect();
    assert_eq!(there, BTreeSet::from([(ua, "tab-a"), (ub, "tab-b")]));
    await_joined(&mut a, "tab-c").await;
    await_joined(&mut b, "tab-c").await;

    // An orderly `leave`: the server closes with 1000, the others see it.
    c.send(&ClientMessage::Leave).await;
    assert_eq!(c.closed().await, Some(1000));
    for conn in [&mut a, &mut b] {
        let left = conn
            .until(|m| match m {
                ServerMessage::Presence { left, joined } if !left.is_empty() => {
                    assert!(joined.is_empty());
                    Some(left.clone())
                }
                _ => None,
            })
            .await;
        assert_eq!(left.len(), 1);
        assert_eq!(
            (*left[0].user.as_uuid(), left[0].client_id.as_str()),
            (uc, "tab-c")
        );
    }

    // A dropped connection (no close handshake) leaves too.
    let (d, _) = join_as(&app, doc, ud, "tab-d", Role::Editor).await;
    await_joined(&mut a, "tab-d").await;
    d.drop_abruptly();
    await_left(&mut a, "tab-d").await;
    await_left(&mut b, "tab-d").await;

    // And a newcomer sees exactly who is left.
    let (_e, joined_e) = join(&app, doc, "tab-e").await;
    let ServerMessage::Joined { presence, .. } = &joined_e else {
        unreachable!()
    };
    let there: BTreeSet<_> = presence.iter().map(|e| e.client_id.as_str()).collect();
    assert_eq!(there, BTreeSet::from(["tab-a", "tab-b"]));
}

/// The next `cursor` from `client_id`: (version, anchor, head).
async fn next_cursor(conn: &mut Conn, client_id: &str) -> (u64, Option<usize>, Option<usize>) {
    conn.until(|m| match m {
        ServerMessage::Cursor {
            client_id: c,
            version,
            selection,
            ..
        } if c.as_str() == client_id => Some((
            version.get(),
            selection.map(|s| s.anchor),
            selection.map(|s| s.head),
        )),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_burst_of_cursors_reaches_others_throttled_and_ends_on_the_last_selection() {
    let throttle = Duration::from_millis(1000);
    let app = TestApp::spawn_with({
        let mut config = Config::default();
        config.presence.cursor_throttle_ms = throttle.as_millis() as u64;
        config
    })
    .await;
    let doc = new_document();
    let ua = Uuid::new_v4();
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    a.insert(0, &"abcdefghij".repeat(3)).await;
    a.settle().await;
    let (mut b, _) = join(&app, doc, "tab-b").await;
    await_joined(&mut a.conn, "tab-b").await;

    let burst: Vec<String> = (0..20).map(|i| cursor(1, i, i + 5).encode()).collect();
    a.conn.send_all(&burst).await;

    let mut received = Vec::new();
    loop {
        let c = next_cursor(&mut b, "tab-a").await;
        received.push(c);
        if c == (1, Some(19), Some(24)) {
            break;
        }
    }
    // The first goes out at once, the last is always delivered, and the
    // ones between are dropped.
    assert_eq!(received[0], (1, Some(0), Some(5)));
    assert!(
        received.len() < 20,
        "{} cursor messages for a burst of 20: {received:?}",
        received.len()
    );
    // Nothing after the last selection, even once the throttle has passed.
    assert_nothing_within(&mut b, throttle + throttle / 2, "cursor", |m| {
        matches!(m, ServerMessage::Cursor { .. })
    })
    .await;
}

#[tokio::test]
async fn a_cursor_sent_at_an_older_version_is_transformed_through_later_ops() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (ua, ub) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    a.insert(0, "hello world").await;
    a.settle().await;
    assert_eq!(a.client.version(), Version::from(1));
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    // B's insert before "world" is committed (v2) before A, which has not
    // read it, selects "world" as of v1.
    b.insert(0, "XYZ").await;
    b.settle().await;
    assert_eq!(b.client.version(), Version::from(2));
    a.conn.send(&cursor(1, 6, 11)).await;
    assert_eq!(
        next_cursor(&mut b.conn, "tab-a").await,
        (2, Some(9), Some(14))
    );
    // A caret at the end of the old text moves with it too.
    a.conn.send(&cursor(1, 11, 11)).await;
    assert_eq!(
        next_cursor(&mut b.conn, "tab-a").await,
        (2, Some(14), Some(14))
    );
}

#[tokio::test]
async fn typing_starts_once_and_stops_after_the_debounce() {
    let app = TestApp::spawn_with({
        let mut config = Config::default();
        config.presence.typing_debounce_ms = 400;
        config
    })
    .await;
    let doc = new_document();
    let (mut a, _) = join(&app, doc, "tab-a").await;
    let (mut b, _) = join(&app, doc, "tab-b").await;
    await_joined(&mut a, "tab-b").await;

    a.send(&ClientMessage::Typing).await;
    assert!(b.until(|m| is_typing_from(m, "tab-a")).await);
    let repeats = vec![ClientMessage::Typing.encode(); 3];
    a.send_all(&repeats).await;
    // Repeats only push the quiet period back: the next one B hears is
    // `active=false`, then nothing.
    assert!(!b.until(|m| is_typing_from(m, "tab-a")).await);
    assert_nothing_within(&mut b, Duration::from_millis(500), "typing", |m| {
        is_typing_from(m, "tab-a").is_some()
    })
    .await;
    // A's own typing is never echoed to A.
    assert_nothing_within(&mut a, Duration::from_millis(50), "typing", |m| {
        is_typing_from(m, "tab-a").is_some()
    })
    .await;
    // Typing again starts again.
    a.send(&ClientMessage::Typing).await;
    assert!(b.until(|m| is_typing_from(m, "tab-a")).await);
}

#[tokio::test]
async fn a_viewer_may_send_cursors_and_typing() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let ue = Uuid::new_v4();
    let mut e = Editor::join(&app, doc, ue, "tab-e", &app.editor_token(ue)).await;
    e.insert(0, "read me").await;
    e.settle().await;
    let (mut v, _) = join_as(&app, doc, Uuid::new_v4(), "tab-v", Role::Viewer).await;
    await_joined(&mut e.conn, "tab-v").await;

    v.send(&cursor(1, 0, 4)).await;
    assert_eq!(
        next_cursor(&mut e.conn, "tab-v").await,
        (1, Some(0), Some(4))
    );
    v.send(&ClientMessage::Typing).await;
    assert!(e.conn.until(|m| is_typing_from(m, "tab-v")).await);
    // A submit is refused; the answer is the first error the viewer got.
    v.send_text(
        json!({"type": "submit", "seq": 1, "base": 1, "delta": [{"insert": "!"}]}).to_string(),
    )
    .await;
    let error = v
        .until(|m| match m {
            ServerMessage::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await;
    assert_eq!(error, ErrorCode::Forbidden);
}

// ---------------------------------------------------------------------------
// 6. Slow consumers

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_1013_without_slowing_the_others_and_resumes() {
    let app = TestApp::spawn_with({
        let mut config = Config::default();
        config.limits.outbound_queue = 8;
        config
    })
    .await;
    let doc = new_document();
    let (ua, ub, us) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;

    // S joins on a socket with a small receive buffer and never reads again.
    let token_s = app.editor_token(us);
    let (mut s, _) = Conn::handshake_with(&app.url(doc), &ConnectOptions::default(), Some(4096))
        .await
        .accepted();
    s.join("tab-s", Some(&token_s), None).await;
    let joined = s.message().await;
    let ServerMessage::Joined {
        content: Some(content),
        version,
        ..
    } = &joined
    else {
        panic!("expected joined with content, got {joined:?}");
    };
    let mut s_client = Client::new(
        UserId::new(us),
        ClientId::new("tab-s").expect("client id"),
        Document::from_content(content, *version).expect("content"),
    );

    // A and B edit in turns, each first catching up with the other, then
    // replacing the text and waiting for its ack, until S has been cut off
    // (they see it leave) and at least 300 ops went by. Each op is 16 KB on
    // the wire: S's socket buffers fill after a few hundred.
    const MIN_OPS: usize = 300;
    const MAX_OPS: usize = 3000;
    let mut s_left = false;
    let mut ops = 0;
    while ops < MIN_OPS || !s_left {
        assert!(
            ops < MAX_OPS,
            "the slow consumer was not cut off after {ops} ops"
        );
        let editor = if ops % 2 == 0 { &mut a } else { &mut b };
        let mut handle = |r: Received| match r {
            Received::Closed(c) => panic!("an editor was closed ({c:?})"),
            Received::Message(ServerMessage::Presence { left, .. }) => {
                if left.iter().any(|d| d.client_id.as_str() == "tab-s") {
                    s_left = true;
                }
            }
            Received::Message(_) => {}
        };
        while editor.client.version() < Version::new(ops as u64).unwrap() {
            handle(editor.step().await);
        }
        let len = editor.client.document().len();
        let mut replace = Delta::new();
        replace
            .delete(len)
            .insert(&format!("{ops:05}").repeat(16 * 1024 / 5));
        if len == 0 {
            replace = Delta::new();
            replace.insert(&format!("{ops:05}").repeat(16 * 1024 / 5));
        }
        editor.edit(replace).await;
        while !editor.client.is_synchronized() {
            handle(editor.step().await);
        }
        ops += 1;
    }
    let last = Version::new(ops as u64).unwrap();
    a.catch_up_to(last).await;
    b.catch_up_to(last).await;
    assert_eq!(a.text(), b.text());
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "{:?} {:?}",
        a.errors,
        b.errors
    );

    // S finally reads: what was queued before the cut, then 1013.
    let code = loop {
        match s.recv().await {
            Received::Message(ServerMessage::Ops { ops }) => {
                for op in ops {
                    s_client.receive(&op).expect("op applies");
                }
            }
            Received::Message(_) => {}
            Received::Closed(c) => break c,
        }
    };
    assert_eq!(code, Some(1013));
    assert!(s_client.version() < last, "S was cut off before the end");

    // S resumes from where it got to and catches up to the same text.
    let mut s = Conn::connect(&app.url(doc)).await;
    s.join("tab-s", Some(&token_s), Some(s_client.version()))
        .await;
    match s.message().await {
        ServerMessage::Joined {
            ops: Some(ops),
            content: None,
            version,
            ..
        } => {
            assert_eq!(version, last);
            for op in ops {
                s_client.receive(&op).expect("op applies");
            }
        }
        other => panic!("expected joined with ops, got {other:?}"),
    }
    assert_eq!(s_client.version(), last);
    assert_eq!(s_client.document().text(), a.text());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_even_if_it_never_reads_again() {
    let app = TestApp::spawn_with({
        let mut config = Config::default();
        config.limits.outbound_queue = 8;
        config.limits.heartbeat_interval = Duration::from_secs(1);
        config.limits.heartbeat_timeout = Duration::from_secs(3);
        config
    })
    .await;
    let doc = new_document();
    let ua = Uuid::new_v4();
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    let (mut s, _) = Conn::handshake_with(&app.url(doc), &ConnectOptions::default(), Some(4096))
        .await
        .accepted();
    s.join("tab-s", Some(&app.editor_token(Uuid::new_v4())), None)
        .await;
    assert!(matches!(s.message().await, ServerMessage::Joined { .. }));
    await_joined(&mut a.conn, "tab-s").await;

    // Large ops back S's socket up quickly; A is never held up.
    let mut s_left = false;
    let mut ops = 0;
    while !s_left {
        assert!(ops < 300, "S was not cut off after {ops} ops");
        let len = a.client.document().len();
        let mut replace = Delta::new();
        if len > 0 {
            replace.delete(len);
        }
        replace.insert(&format!("{ops:04}").repeat(64 * 1024));
        a.edit(replace).await;
        while !a.client.is_synchronized() {
            match a.step().await {
                Received::Closed(c) => panic!("A was closed ({c:?})"),
                Received::Message(ServerMessage::Presence { left, .. }) => {
                    s_left |= left.iter().any(|d| d.client_id.as_str() == "tab-s");
                }
                Received::Message(_) => {}
            }
        }
        ops += 1;
    }
    // S never reads again, yet its connection (and slot) is released.
    await_connections_while_reading(&app, 1, &mut a.conn).await;
    a.insert(0, "still fine").await;
    a.settle().await;
    drop(s);
}
