//! The public port before the join (PROTOCOL.md, "Connection" / "Before
//! the join"; issue 21 items 1-6, review findings F1, F2, F9, F10), and
//! large messages written in fragments. Real sockets against the real
//! application on 127.0.0.1:0; attackers and bystanders on different
//! addresses of 127.0.0.0/8 (a client socket bound before it connects).
//!
//! Every wait is bounded and fails with what it waited for. Where a
//! deadline is the point, the test measures from the moment the server
//! accepted (or upgraded) and asserts the bound the protocol gives, plus
//! one second for the test's own polling.

use futures::StreamExt;
use relay_adapter_ws as ws;
use relay_app::config::Config;
use relay_ports::metrics::names;
use relay_ports::protocol::ServerMessage;
use relay_ports::{CollaborationService, ConnectionSlot, Health, Readiness, Refusal};
use relay_tests::*;
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Helpers

/// A TCP connection to `addr` from `from` (any address of 127.0.0.0/8),
/// with a kernel receive buffer of `recv_buffer` bytes if given.
async fn connect_from(from: Ipv4Addr, addr: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind the client address");
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    }
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const BYSTANDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const PROXY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// The start of an upgrade request, without the blank line that ends it.
fn half_sent_head() -> String {
    format!("GET /collab/{} HTTP/1.1\r\nHost: x\r\n", Uuid::new_v4())
}

/// Reads until the server closes the connection (EOF or reset); returns
/// what arrived, or `None` if it was still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

/// Completes a WebSocket upgrade by hand on `stream`; panics unless `101`.
async fn upgrade_raw(stream: &mut TcpStream, document: relay_domain::DocumentId) {
    let request = format!(
        "GET /collab/{document} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("101 in time")
            .expect("read 101");
        assert!(
            n == 1,
            "closed during the upgrade: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

/// A client frame (masked with a zero key: legal, and the payload stays
/// readable).
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![opcode | if fin { 0x80 } else { 0 }];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// One server frame: (FIN, opcode, payload).
async fn server_frame(stream: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let read = async {
        let mut h = [0u8; 2];
        stream.read_exact(&mut h).await?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b).await?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                stream.read_exact(&mut b).await?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let mut payload = vec![0u8; usize::try_from(len).expect("frame length")];
        stream.read_exact(&mut payload).await?;
        std::io::Result::Ok((h[0] & 0x80 != 0, h[0] & 0x0f, payload))
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a frame in time")
        .expect("read a frame")
}

/// `/health`'s `active_connections`.
async fn active(app: &TestApp) -> u64 {
    app.health().await["active_connections"]
        .as_u64()
        .expect("active_connections")
}

/// Polls `/health` until `active_connections` is `n`; panics after
/// `within`. Returns when it was seen.
async fn await_active(app: &TestApp, n: u64, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let now = active(app).await;
        if now == n {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "active_connections stayed {now} (waited {within:?} for {n})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rejected(app: &TestApp, reason: &str) -> f64 {
    app.metrics.samples().sum(
        names::CONNECTIONS_REJECTED.exported,
        &[(names::REASON, reason)],
    )
}

/// Joins `document` from `from` with a fresh editor token; the connection
/// and `joined`.
async fn join_from(
    app: &TestApp,
    from: Ipv4Addr,
    document: relay_domain::DocumentId,
    client_id: &str,
) -> (tokio_tungstenite::WebSocketStream<TcpStream>, ServerMessage) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let stream = connect_from(from, app.addr, None).await;
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(app.url(document), stream),
    )
    .await
    .expect("upgrade in time")
    .expect("upgrade");
    let token = app.editor_token(Uuid::new_v4());
    let join = json!({"type": "join", "client_id": client_id, "token": token, "since": null});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send join");
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("joined in time")
            .expect("open")
            .expect("a message");
        if let Message::Text(t) = next {
            let m = ServerMessage::decode(t.as_str()).expect("a server message");
            assert!(matches!(m, ServerMessage::Joined { .. }), "{m:?}");
            return (ws, m);
        }
    }
}

fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    edit(&mut c);
    c
}

// ---------------------------------------------------------------------------
// 1. The accept loop: header timeout, head cap, HTTP/1.1 only, idle
//    keep-alive, counted from accept

#[tokio::test]
async fn half_sent_heads_count_against_max_connections_and_are_closed_by_the_header_timeout() {
    let header_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(config(|c| {
        c.limits.header_timeout = header_timeout;
        c.limits.max_connections = 30;
    }))
    .await;
    let mut heads = Vec::new();
    let mut opened = Vec::new();
    for _ in 0..30 {
        let mut s = connect_from(ATTACKER, app.addr, None).await;
        s.write_all(half_sent_head().as_bytes())
            .await
            .expect("send");
        opened.push(Instant::now());
        heads.push(s);
    }
    // Counted from accept (the asker's own connection is left out).
    await_active(&app, 30, WAIT).await;
    // At capacity: /health still answers (above), an upgrade gets 503 with
    // Retry-After.
    let (status, headers) = Conn::handshake(&app.url(new_document()), &ConnectOptions::default())
        .await
        .refused();
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    // Each is closed by the header timeout (plus a second of slack).
    for (s, at) in heads.iter_mut().zip(&opened) {
        let left = (*at + header_timeout + Duration::from_secs(1))
            .saturating_duration_since(Instant::now());
        assert!(
            closed_within(s, left).await.is_some(),
            "a half-sent head was still open {header_timeout:?} + 1 s after it was sent"
        );
    }
    await_active(&app, 0, WAIT).await;
}

#[tokio::test]
async fn a_request_head_over_16_kib_is_refused_with_431() {
    let app = TestApp::spawn().await;
    let pad = "a".repeat(17 << 10);
    let mut s = connect_from(BYSTANDER, app.addr, None).await;
    let request = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    // The server may stop reading (and reset) once it has refused; the
    // answer is what matters.
    let _ = s.write_all(request.as_bytes()).await;
    let got = closed_within(&mut s, WAIT)
        .await
        .expect("closed after the answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    // A head just under the cap is served.
    let pad = "a".repeat(15 << 10);
    let mut s = connect_from(BYSTANDER, app.addr, None).await;
    let request =
        format!("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {pad}\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("send");
    let got = closed_within(&mut s, WAIT).await.expect("answered");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// The HTTP/2 connection preface and an empty SETTINGS frame, as a
/// prior-knowledge h2c client sends them.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn assert_no_h2(addr: SocketAddr, port: &str) {
    let mut s = connect_from(BYSTANDER, addr, None).await;
    s.write_all(H2_PREFACE).await.expect("send the preface");
    let got = closed_within(&mut s, WAIT).await.expect("closed in time");
    // An HTTP/2 server answers with its own SETTINGS frame (type 4).
    assert!(
        !(got.len() >= 9 && got[3] == 4),
        "the {port} port answered HTTP/2: {got:?}"
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 "),
        "the {port} port answered {got:?}"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_refused_on_the_public_and_the_metrics_ports() {
    let app = TestApp::spawn().await;
    assert_no_h2(app.addr, "public").await;
    let (listener, metrics_addr) = ws::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let routes = ws::metrics::routes(Arc::new(|| "up 1\n".to_owned()));
    tokio::spawn(ws::serve(listener, routes, std::future::pending()));
    assert_no_h2(metrics_addr, "metrics").await;
    // Both still speak HTTP/1.1.
    assert_eq!(app.get("/health").await.status, 200);
    assert_eq!(http_get(metrics_addr, "/metrics").await.status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let header_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config(|c| c.limits.header_timeout = header_timeout)).await;
    let mut s = connect_from(BYSTANDER, app.addr, None).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    // The answer, kept alive.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"status\"") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, header_timeout + Duration::from_secs(1))
            .await
            .is_some(),
        "an idle keep-alive connection was still open {:?} after its answer",
        answered.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2, 5. Pending connections per address; bystanders; trusted proxies

#[tokio::test]
async fn pending_connections_per_address_are_capped_while_others_join_and_probes_answer() {
    let app = TestApp::spawn_with(config(|c| c.limits.max_pending_per_ip = 5)).await;
    let doc = new_document();
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from(ATTACKER, app.addr, None).await;
        s.write_all(half_sent_head().as_bytes())
            .await
            .expect("send");
        held.push(s);
    }
    await_active(&app, 5, WAIT).await;
    let before = rejected(&app, "rate_limited");
    // The sixth from that address is closed at once, unanswered.
    let mut sixth = connect_from(ATTACKER, app.addr, None).await;
    let _ = sixth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = closed_within(&mut sixth, WAIT)
        .await
        .expect("the sixth pending connection was not closed");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(rejected(&app, "rate_limited"), before + 1.0);
    // Others join, and the probes answer, meanwhile.
    let (_bystander, _) = join_from(&app, BYSTANDER, doc, "bystander").await;
    let ready = app.get("/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    // A joined connection is no longer pending: the attacker's address may
    // upgrade and join again once one of its pending connections ends.
    drop(held.pop());
    let (_joined, _) = join_from(&app, ATTACKER, doc, "attacker-joined").await;
    let (_again, _) = join_from(&app, ATTACKER, doc, "attacker-joined-2").await;
}

#[tokio::test]
async fn a_trusted_proxy_is_exempt_from_the_pending_cap() {
    let app = TestApp::spawn_with(config(|c| {
        c.limits.max_pending_per_ip = 2;
        c.limits.trusted_proxies = vec!["127.0.0.4/32".parse().expect("cidr")];
    }))
    .await;
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut s = connect_from(PROXY, app.addr, None).await;
        s.write_all(half_sent_head().as_bytes())
            .await
            .expect("send");
        held.push(s);
    }
    await_active(&app, 6, WAIT).await;
    let (_joined, _) = join_from(&app, PROXY, new_document(), "through-the-proxy").await;
    assert_eq!(rejected(&app, "rate_limited"), 0.0);
}

// ---------------------------------------------------------------------------
// 3, 4. One deadline for the join phase; the first frame's size

/// A server that is not reading fills the client's small receive window;
/// the client never reads.
const SMALL_RCVBUF: u32 = 4096;

/// Pings enough to fill the pipe back to a client that never reads with
/// pongs (on loopback the server's send buffer grows to a few MiB at
/// once), then `then` if given; written in the background (the server may
/// stop reading).
fn ping_flood(
    write: tokio::net::tcp::OwnedWriteHalf,
    then: Option<Vec<u8>>,
) -> tokio::task::JoinHandle<tokio::net::tcp::OwnedWriteHalf> {
    let ping = client_frame(0x9, true, &[b'p'; 125]);
    let mut bytes: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 100_000)
        .collect();
    bytes.extend(then.unwrap_or_default());
    tokio::spawn(async move {
        let mut write = write;
        let _ = write.write_all(&bytes).await;
        write
    })
}

#[tokio::test]
async fn a_1_mib_first_frame_from_a_client_that_never_reads_is_freed_within_auth_timeout_plus_2_s()
{
    let auth_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(config(|c| c.limits.auth_timeout = auth_timeout)).await;
    let mut s = connect_from(ATTACKER, app.addr, Some(SMALL_RCVBUF)).await;
    upgrade_raw(&mut s, new_document()).await;
    let upgraded = Instant::now();
    // U+0085 is 2 bytes, and 6 once escaped: the old error echo tripled it.
    let payload = format!("{{\"type\":\"{}\"}}", "\u{85}".repeat(524_000));
    let frame = client_frame(1, true, payload.as_bytes());
    // The pipe back is full of pongs when the frame arrives: the answer to
    // it cannot be delivered.
    let (_read, write) = s.into_split();
    let sender = ping_flood(write, Some(frame));
    let freed = await_active(&app, 0, auth_timeout + Duration::from_secs(3)).await;
    assert!(
        freed - upgraded <= auth_timeout + Duration::from_secs(3),
        "freed after {:?}",
        freed - upgraded
    );
    sender.abort();
}

#[tokio::test]
async fn a_first_frame_over_16_kib_is_closed_with_1009_and_one_under_it_joins() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let token = app.editor_token(Uuid::new_v4());
    // A join padded with JSON whitespace: valid, and 20 KiB.
    let padded = |bytes: usize| {
        let join =
            json!({"type": "join", "client_id": "tab", "token": token, "since": null}).to_string();
        let pad = " ".repeat(bytes - join.len());
        format!("{}{pad}{}", &join[..1], &join[1..])
    };
    let mut big = Conn::connect(&app.url(doc)).await;
    big.send_text(padded(20 << 10)).await;
    assert_eq!(big.closed().await, Some(1009));
    let mut fits = Conn::connect(&app.url(doc)).await;
    fits.send_text(padded(16 << 10)).await;
    assert!(matches!(fits.message().await, ServerMessage::Joined { .. }));
}

#[tokio::test]
async fn a_client_that_fills_the_pipe_with_pongs_before_joining_is_freed_within_auth_timeout_plus_2_s()
 {
    let auth_timeout = Duration::from_secs(1);
    // HEARTBEAT_TIMEOUT stays at its 60 s default: the old close waited
    // that long for a client that does not read.
    let app = TestApp::spawn_with(config(|c| c.limits.auth_timeout = auth_timeout)).await;
    let mut s = connect_from(ATTACKER, app.addr, Some(SMALL_RCVBUF)).await;
    upgrade_raw(&mut s, new_document()).await;
    let upgraded = Instant::now();
    let (_read, write) = s.into_split();
    let sender = ping_flood(write, None);
    let freed = await_active(&app, 0, auth_timeout + Duration::from_secs(3)).await;
    assert!(
        freed - upgraded <= auth_timeout + Duration::from_secs(3),
        "freed after {:?}",
        freed - upgraded
    );
    sender.abort();
}

// ---------------------------------------------------------------------------
// 5. /ready's checks are shared

/// A service whose readiness check is counted and takes 200 ms.
struct CountingService {
    checks: AtomicUsize,
}

#[async_trait::async_trait]
impl CollaborationService for CountingService {
    fn admit(&self) -> Result<ConnectionSlot, Refusal> {
        Ok(ConnectionSlot::new(()))
    }

    async fn join(
        &self,
        _slot: ConnectionSlot,
        _document: relay_domain::DocumentId,
        _bearer: Option<String>,
        _join: relay_ports::protocol::Join,
    ) -> Result<relay_ports::Started, relay_ports::JoinRefusal> {
        Err(relay_ports::JoinRefusal::NoToken)
    }

    fn health(&self) -> Health {
        Health {
            version: "test",
            uptime_seconds: 0,
            active_connections: 0,
            active_documents: 0,
        }
    }

    async fn readiness(&self) -> Readiness {
        self.checks.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Readiness {
            checks: vec![(relay_ports::Dependency::Database, true)],
            draining: false,
        }
    }
}

#[tokio::test]
async fn ready_runs_its_checks_once_for_50_concurrent_requests() {
    let service = Arc::new(CountingService {
        checks: AtomicUsize::new(0),
    });
    let metrics = Arc::new(relay_adapter_memory::MemoryMetrics::new());
    let routes = ws::routes(service.clone(), metrics, ws::WsConfig::default(), None);
    let (listener, addr) = ws::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    tokio::spawn(ws::serve(listener, routes, std::future::pending()));
    let asks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { http_get(addr, "/ready").await }))
        .collect();
    for ask in asks {
        let r = ask.await.expect("request task");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["checks"]["database"], "ok");
    }
    assert_eq!(service.checks.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// 7. Large messages in fragments

#[tokio::test]
async fn a_joined_of_several_mib_arrives_intact_in_fragments_of_at_most_64_kib() {
    let app = TestApp::spawn_with(config(|c| c.limits.max_message_bytes = 8 << 20)).await;
    let doc = new_document();
    // 3 MiB and more of text with 2- and 4-byte characters, so fragment
    // boundaries fall inside UTF-8 sequences.
    let text: String = "ab\u{e9}\u{1F600}".repeat(400_000);
    let mut editor = Conn::connect(&app.url(doc)).await;
    editor
        .join("writer", Some(&app.editor_token(Uuid::new_v4())), None)
        .await;
    assert!(matches!(
        editor.message().await,
        ServerMessage::Joined { .. }
    ));
    editor
        .send_text(submit(1, 0, json!([{"insert": text}])))
        .await;
    assert!(
        matches!(answer(&mut editor).await, ServerMessage::Ack { .. }),
        "the big insert was not acknowledged"
    );
    // A tungstenite client reassembles the fragments and checks the UTF-8
    // of the whole message.
    let mut reader = Conn::connect(&app.url(doc)).await;
    reader
        .join("reader", Some(&app.editor_token(Uuid::new_v4())), None)
        .await;
    match reader.message().await {
        ServerMessage::Joined {
            content: Some(content),
            version,
            ..
        } => {
            let got = relay_domain::Document::from_content(&content, version)
                .expect("content is inserts")
                .text();
            assert!(got == text, "the content arrived altered");
        }
        other => panic!("expected joined with content, got {other:?}"),
    }
    // On the wire: a text frame without FIN, continuations of at most
    // 64 KiB, the last with FIN.
    let mut raw = connect_from(BYSTANDER, app.addr, None).await;
    upgrade_raw(&mut raw, doc).await;
    let join = json!({"type": "join", "client_id": "raw", "since": null,
                      "token": app.editor_token(Uuid::new_v4())});
    raw.write_all(&client_frame(1, true, join.to_string().as_bytes()))
        .await
        .expect("send join");
    let mut message = Vec::new();
    let mut fragments = 0;
    loop {
        let (fin, opcode, payload) = server_frame(&mut raw).await;
        if opcode >= 8 {
            continue;
        }
        assert_eq!(
            opcode,
            if fragments == 0 { 1 } else { 0 },
            "frame {fragments}"
        );
        assert!(
            payload.len() <= 64 << 10,
            "a fragment of {} bytes",
            payload.len()
        );
        fragments += 1;
        message.extend_from_slice(&payload);
        if fin {
            break;
        }
    }
    assert!(fragments > 40, "{fragments} fragments");
    let joined = ServerMessage::decode(std::str::from_utf8(&message).expect("UTF-8"))
        .expect("a server message");
    assert!(matches!(joined, ServerMessage::Joined { .. }));
}

// ---------------------------------------------------------------------------
// 6. SIGTERM with half-sent requests open

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_in_time_with_half_sent_requests_open_on_both_ports() {
    let grace = 2;
    // A header timeout far beyond the wait below: only the bounded drain
    // can end these connections in time.
    let mut cluster = relay_tests::instances::Cluster::start(
        1,
        &[
            ("SHUTDOWN_GRACE_SECS", &grace.to_string()),
            ("HEADER_TIMEOUT_SECS", "120"),
        ],
    )
    .await;
    let instance = &mut cluster.instances[0];
    let mut public = connect_from(ATTACKER, instance.addr, None).await;
    public
        .write_all(half_sent_head().as_bytes())
        .await
        .expect("send");
    let mut metrics = connect_from(ATTACKER, instance.metrics_addr(), None).await;
    metrics
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    // Both are being served (the public one holds a slot).
    let deadline = Instant::now() + WAIT;
    while instance.get("/health").await.json()["active_connections"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the half-sent request was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let terminated = Instant::now();
    instance.terminate();
    // SHUTDOWN_GRACE_SECS, then at most DRAIN_LIMIT per port and the
    // rooms' stop: a few seconds.
    let status = instance.wait_exit(Duration::from_secs(grace + 8)).await;
    assert!(status.success(), "exit status {status}");
    eprintln!("exited {:?} after SIGTERM", terminated.elapsed());
}
