//! End-to-end test support: the real application on port 0 with in-memory
//! adapters ([`TestApp`]), a raw WebSocket connection ([`Conn`]) and a Rust
//! editing client built on the domain's OT client state machine
//! ([`Editor`]) for the tests (the load tool, `tests/load/`, has its own
//! open-loop client on the same state machine).
//!
//! The tests themselves are in `tests/tests/`.

pub mod attack;
pub mod auth;
pub mod instances;
pub mod pg;

use futures::{FutureExt, SinkExt, StreamExt};
use relay_adapter_jwt::{DevKeys, TokenRequest};
use relay_adapter_memory::MemoryMetrics;
use relay_adapter_ws as ws;
use relay_app::Relay;
use relay_app::config::Config;
use relay_domain::{
    Client, ClientId, CommittedOp, Delta, Document, DocumentId, Outgoing, UserId, Version,
};
use relay_ports::protocol::{Join, Role, ServerMessage};
use relay_ports::{ClientMessage, CollaborationService};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// How long a test waits for a message before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The application serving on 127.0.0.1 with in-memory adapters.
#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub relay: Relay,
    pub keys: DevKeys,
    pub metrics: Arc<MemoryMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    /// With the default configuration.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(Config::default()).await
    }

    /// With `config` (its bind address is replaced by 127.0.0.1:0).
    ///
    /// With `RELAY_E2E_STORE=postgres` the app runs on the PostgreSQL store
    /// (this process's test database), so the same end-to-end suites check
    /// both stores (`.ci/test` runs the protocol suite both ways).
    pub async fn spawn_with(config: Config) -> TestApp {
        if std::env::var("RELAY_E2E_STORE").is_ok_and(|v| v == "postgres") {
            return pg::spawn_pg_app(config).await;
        }
        let keys = DevKeys::from_seed([7; 32]);
        let (wired, metrics) = relay_app::testing::in_memory(config.clone(), &keys);
        TestApp::serve(&config, wired.relay, wired.jwks, keys, metrics).await
    }

    /// Serves `relay` on 127.0.0.1:0 with `config`'s transport settings.
    pub async fn serve(
        config: &Config,
        relay: Relay,
        jwks: Option<Arc<str>>,
        keys: DevKeys,
        metrics: Arc<MemoryMetrics>,
    ) -> TestApp {
        let service: Arc<dyn CollaborationService> = Arc::new(relay.clone());
        let routes = ws::routes(service, metrics.clone(), config.limits.ws(), jwks);
        let (listener, addr) = ws::bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ws::serve(listener, routes, async move {
            let _ = stopped.await;
        }));
        TestApp {
            addr,
            relay,
            keys,
            metrics,
            stop: Some(stop),
        }
    }

    /// A token for `user` with these `docs` entries.
    pub fn token(&self, user: Uuid, docs: &[(&str, Role)]) -> String {
        self.token_for(user, docs, 3600)
    }

    pub fn token_for(&self, user: Uuid, docs: &[(&str, Role)], ttl_secs: u64) -> String {
        let docs: BTreeMap<String, Role> =
            docs.iter().map(|(d, r)| ((*d).to_owned(), *r)).collect();
        self.keys
            .mint(&TokenRequest {
                sub: user,
                name: Some(format!("user-{}", &user.to_string()[..8])),
                docs,
                ttl_secs,
            })
            .expect("mint")
    }

    /// An editor of every document.
    pub fn editor_token(&self, user: Uuid) -> String {
        self.token(user, &[("*", Role::Editor)])
    }

    pub fn url(&self, document: DocumentId) -> String {
        format!("ws://{}/collab/{}", self.addr, document)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How a connection attempt went.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Connect {
    Open(Conn),
    /// The upgrade was refused with this status and headers.
    Refused(u16, http::HeaderMap),
}

/// Options of a WebSocket connection.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    pub bearer: Option<String>,
    /// `None` offers `relay.v1`; `Some("")` offers nothing.
    pub protocols: Option<String>,
    pub origin: Option<String>,
}

/// A raw WebSocket connection to Relay.
#[derive(Debug)]
pub struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What arrived.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Received {
    Message(ServerMessage),
    /// A close frame with its code (or the connection ended without one).
    Closed(Option<u16>),
}

/// The upgrade request for `url` with `options`' headers.
fn upgrade_request(
    url: &str,
    options: &ConnectOptions,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("request");
    let h = request.headers_mut();
    match options.protocols.as_deref() {
        None => {
            h.insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("relay.v1"),
            );
        }
        Some("") => {}
        Some(p) => {
            h.insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(p).expect("header"),
            );
        }
    }
    if let Some(b) = &options.bearer {
        h.insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {b}")).expect("header"),
        );
    }
    if let Some(o) = &options.origin {
        h.insert("Origin", HeaderValue::from_str(o).expect("header"));
    }
    request
}

impl Conn {
    pub async fn open(url: &str, options: ConnectOptions) -> Connect {
        let request = upgrade_request(url, &options);
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        match tokio_tungstenite::connect_async_with_config(request, Some(config), false).await {
            Ok((ws, _)) => Connect::Open(Conn { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Connect::Refused(resp.status().as_u16(), resp.headers().clone())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Opens with `relay.v1` and no bearer; `None` if the server cannot be
    /// reached or refuses.
    pub async fn try_connect(url: &str) -> Option<Conn> {
        let request = upgrade_request(url, &ConnectOptions::default());
        let connect = tokio_tungstenite::connect_async_with_config(request, None, false);
        match tokio::time::timeout(WAIT, connect).await {
            Ok(Ok((ws, _))) => Some(Conn { ws }),
            _ => None,
        }
    }

    /// Opens with `relay.v1` and no bearer; panics if refused.
    pub async fn connect(url: &str) -> Conn {
        match Conn::open(url, ConnectOptions::default()).await {
            Connect::Open(c) => c,
            Connect::Refused(s, _) => panic!("upgrade refused with {s}"),
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send(&mut self, message: &ClientMessage) {
        self.send_text(message.encode()).await;
    }

    /// Sends, saying whether it could (the connection may be gone).
    pub async fn try_send(&mut self, message: &ClientMessage) -> bool {
        self.ws.send(Message::text(message.encode())).await.is_ok()
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    pub async fn join(&mut self, client_id: &str, token: Option<&str>, since: Option<Version>) {
        let join = ClientMessage::Join(Join {
            client_id: ClientId::new(client_id).expect("client id"),
            token: token.map(str::to_owned),
            since,
        });
        self.send(&join).await;
    }

    /// The next message or close (pings are answered, pongs skipped).
    pub async fn recv(&mut self) -> Received {
        self.recv_within(WAIT)
            .await
            .expect("nothing arrived in time")
    }

    /// The next message or close within `wait`, `None` if nothing came.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Received> {
        // One deadline for the whole call: pings (skipped here) arriving
        // more often than `wait` must not extend it.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            if let Some(r) = received(next) {
                return Some(r);
            }
        }
    }

    /// A message or close that has already arrived, without waiting; `None`
    /// if nothing is there yet.
    pub fn try_recv(&mut self) -> Option<Received> {
        loop {
            let next = self.ws.next().now_or_never()?;
            if let Some(r) = received(next) {
                return Some(r);
            }
        }
    }

    /// Sends several text frames in one write (they reach the server
    /// together, back to back).
    pub async fn send_all(&mut self, texts: &[String]) {
        for t in texts {
            self.ws.feed(Message::text(t.clone())).await.expect("send");
        }
        self.ws.flush().await.expect("flush");
    }

    /// The next text frame as sent (pings answered, pongs skipped); panics
    /// on a close or after [`WAIT`].
    pub async fn text_frame(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next message; panics on a close.
    pub async fn message(&mut self) -> ServerMessage {
        match self.recv().await {
            Received::Message(m) => m,
            Received::Closed(c) => panic!("connection closed ({c:?}) while a message was expected"),
        }
    }

    /// Skips messages until a close arrives; returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(c) = self.recv().await {
                return c;
            }
        }
    }

    /// Skips messages until one satisfies `f`.
    pub async fn until<T>(&mut self, mut f: impl FnMut(&ServerMessage) -> Option<T>) -> T {
        loop {
            let m = self.message().await;
            if let Some(t) = f(&m) {
                return t;
            }
        }
    }

    /// Drops the TCP connection without a close handshake.
    pub fn drop_abruptly(self) {
        drop(self.ws);
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// What one frame read from the socket means (`None`: a ping or pong).
fn received(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<Received> {
    Some(match next {
        None => Received::Closed(None),
        Some(Ok(Message::Text(t))) => Received::Message(
            ServerMessage::decode(t.as_str())
                .unwrap_or_else(|e| panic!("undecodable server message {t}: {e}")),
        ),
        Some(Ok(Message::Close(frame))) => Received::Closed(frame.map(|f| u16::from(f.code))),
        Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
        Some(Ok(_)) => return None,
        Some(Err(_)) => Received::Closed(None),
    })
}

/// A Rust editing client: a connection plus the domain's OT client.
pub struct Editor {
    pub conn: Conn,
    pub client: Client,
    pub joined: ServerMessage,
    pub document: DocumentId,
    /// Acks received: (seq, version).
    pub acks: Vec<(u64, Version)>,
    /// Errors received: (code, seq).
    pub errors: Vec<(String, Option<u64>)>,
    /// The operation log as this client learned it: every op received
    /// (in `ops` or a catch-up) and its own ops when acknowledged (with the
    /// delta as the server committed it: the in-flight delta rebased over
    /// everything received before the ack).
    pub log: BTreeMap<Version, CommittedOp>,
    /// A submit on a dead connection is not a failure (the op stays in
    /// flight and is re-sent on rejoin): for tests that kill servers.
    pub lenient_sends: bool,
}

impl std::fmt::Debug for Editor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Editor")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Editor {
    /// Connects and joins `document` as a new client with `token`.
    pub async fn join(
        app: &TestApp,
        document: DocumentId,
        user: Uuid,
        client_id: &str,
        token: &str,
    ) -> Editor {
        Editor::join_url(&app.url(document), document, user, client_id, token).await
    }

    /// [`Editor::join`] at a WebSocket URL (another process, say).
    pub async fn join_url(
        url: &str,
        document: DocumentId,
        user: Uuid,
        client_id: &str,
        token: &str,
    ) -> Editor {
        let mut conn = Conn::connect(url).await;
        conn.join(client_id, Some(token), None).await;
        let joined = conn.message().await;
        let ServerMessage::Joined {
            content: Some(content),
            version,
            ..
        } = &joined
        else {
            panic!("expected joined with content, got {joined:?}");
        };
        let doc = Document::from_content(content, *version).expect("content is inserts");
        let client = Client::new(
            UserId::new(user),
            ClientId::new(client_id).expect("client id"),
            doc,
        );
        Editor {
            conn,
            client,
            joined,
            document,
            acks: Vec::new(),
            errors: Vec::new(),
            log: BTreeMap::new(),
            lenient_sends: false,
        }
    }

    /// Drops the connection abruptly (no close handshake, whatever was not
    /// read yet is lost), reconnects with `since` = the client's version,
    /// applies the catch-up and re-sends the in-flight submit with its
    /// original seq.
    pub async fn rejoin(&mut self, app: &TestApp, token: &str) {
        let conn = Conn::connect(&app.url(self.document)).await;
        self.rejoin_on(conn, token).await;
    }

    /// [`Editor::rejoin`] on `conn`, a connection opened (not joined)
    /// beforehand, so the join follows the drop at once.
    pub async fn rejoin_on(&mut self, conn: Conn, token: &str) {
        std::mem::replace(&mut self.conn, conn).drop_abruptly();
        let since = self.client.version();
        self.conn
            .join(self.client.client_id().as_str(), Some(token), Some(since))
            .await;
        let joined = self.conn.message().await;
        let before = self.client.inflight().map(|i| i.seq);
        match &joined {
            ServerMessage::Joined { ops: Some(ops), .. } => {
                for op in ops.clone() {
                    self.apply_op(op).await;
                }
            }
            ServerMessage::Joined {
                content: Some(content),
                version,
                ..
            } => {
                let doc = Document::from_content(content, *version).expect("content");
                self.client.reset(doc);
            }
            other => panic!("expected joined, got {other:?}"),
        }
        self.joined = joined;
        // The submit in flight before the rejoin goes again; one the
        // catch-up released from the buffer has just been sent (twice would
        // be answered twice).
        if self.client.inflight().map(|i| i.seq) == before
            && let Some(out) = self.client.resend()
        {
            self.submit(out).await;
        }
    }

    pub async fn submit(&mut self, out: Outgoing) {
        let msg = ClientMessage::Submit {
            seq: out.seq,
            base: out.base,
            delta: out.delta,
        };
        if self.lenient_sends {
            self.conn.try_send(&msg).await;
        } else {
            self.conn.send(&msg).await;
        }
    }

    /// A local edit; sends a submit if nothing is in flight.
    pub async fn edit(&mut self, delta: Delta) {
        if let Some(out) = self.client.edit(delta).expect("local edit applies") {
            self.submit(out).await;
        }
    }

    /// Inserts `text` at `pos` of the local document.
    pub async fn insert(&mut self, pos: usize, text: &str) {
        let mut d = Delta::new();
        d.retain(pos).insert(text);
        self.edit(d).await;
    }

    /// Adds an op to [`Editor::log`]. A version arrives once: the same op
    /// twice is a duplicate delivery, another op at a known version a
    /// contradiction (PROTOCOL.md: no client receives an operation twice).
    fn record(&mut self, op: CommittedOp) {
        if let Some(known) = self.log.get(&op.version) {
            assert_eq!(
                (known.user, &known.client_id, known.seq),
                (op.user, &op.client_id, op.seq),
                "{}: two different ops at version {}",
                self.client.client_id(),
                op.version
            );
            panic!(
                "{}: version {} ({} seq {}) delivered twice",
                self.client.client_id(),
                op.version,
                op.client_id,
                op.seq
            );
        }
        self.log.insert(op.version, op);
    }

    async fn apply_op(&mut self, op: CommittedOp) {
        self.record(op.clone());
        let out = self
            .client
            .receive(&op)
            .unwrap_or_else(|e| panic!("receive: {e}"));
        if let Some(out) = out {
            self.submit(out).await;
        }
    }

    /// Handles one message from the server; returns it.
    pub async fn step(&mut self) -> Received {
        let r = self.conn.recv().await;
        self.handle(&r).await;
        r
    }

    /// Handles a message that has already arrived, if any, without waiting.
    pub async fn try_step(&mut self) -> Option<Received> {
        let r = self.conn.try_recv()?;
        self.handle(&r).await;
        Some(r)
    }

    /// Handles a message received by other means (`conn.recv_within`).
    pub async fn handle_received(&mut self, r: &Received) {
        self.handle(r).await;
    }

    async fn handle(&mut self, r: &Received) {
        if let Received::Message(m) = r {
            match m.clone() {
                ServerMessage::Ack { seq, version } => {
                    self.acks.push((seq.get(), version));
                    let inflight = self.client.inflight().cloned();
                    let before = self.client.version();
                    let out = self
                        .client
                        .ack(seq, version)
                        .unwrap_or_else(|e| panic!("ack: {e}"));
                    if let Some(i) = inflight
                        && self.client.version() > before
                    {
                        self.record(CommittedOp {
                            version,
                            user: self.client.user(),
                            client_id: self.client.client_id().clone(),
                            seq: i.seq,
                            delta: i.delta,
                        });
                    }
                    if let Some(out) = out {
                        self.submit(out).await;
                    }
                }
                ServerMessage::Ops { ops } => {
                    for op in ops {
                        self.apply_op(op).await;
                    }
                }
                ServerMessage::Error { code, seq, .. } => {
                    self.errors
                        .push((code.as_str().to_owned(), seq.map(|s| s.get())));
                }
                _ => {}
            }
        }
    }

    /// Processes messages until nothing is in flight.
    pub async fn settle(&mut self) {
        while !self.client.is_synchronized() {
            if let Received::Closed(c) = self.step().await {
                panic!("closed ({c:?}) while settling");
            }
        }
    }

    /// Processes messages until the client reaches `version`.
    pub async fn catch_up_to(&mut self, version: Version) {
        while self.client.version() < version || !self.client.is_synchronized() {
            if let Received::Closed(c) = self.step().await {
                panic!("closed ({c:?}) while catching up");
            }
        }
    }

    pub fn text(&self) -> String {
        self.client.document().text()
    }
}

/// A fresh random document id.
pub fn new_document() -> DocumentId {
    DocumentId::new(Uuid::new_v4())
}

/// A `submit` frame, as the text a client sends.
pub fn submit(seq: u64, base: u64, delta: serde_json::Value) -> String {
    serde_json::json!({"type": "submit", "seq": seq, "base": base, "delta": delta}).to_string()
}

/// The next `ack` or `error`, skipping what other clients cause (`ops`,
/// presence, cursors, typing).
pub async fn answer(conn: &mut Conn) -> ServerMessage {
    conn.until(|m| match m {
        ServerMessage::Ack { .. } | ServerMessage::Error { .. } => Some(m.clone()),
        _ => None,
    })
    .await
}

// --- Transport support (used by tests/tests/transport.rs) -----------------

/// How an upgrade went, with the response's headers either way.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Handshake {
    /// `101 Switching Protocols`, with its headers.
    Accepted(Conn, http::HeaderMap),
    /// The upgrade was refused with this status and headers.
    Refused(u16, http::HeaderMap),
}

impl Handshake {
    /// The connection; panics if the upgrade was refused.
    pub fn accepted(self) -> (Conn, http::HeaderMap) {
        match self {
            Handshake::Accepted(c, h) => (c, h),
            Handshake::Refused(s, h) => panic!("upgrade refused with {s} ({h:?})"),
        }
    }

    /// The refusal's status and headers; panics if the upgrade succeeded.
    pub fn refused(self) -> (u16, http::HeaderMap) {
        match self {
            Handshake::Refused(s, h) => (s, h),
            Handshake::Accepted(_, h) => panic!("upgrade accepted ({h:?}), a refusal was expected"),
        }
    }
}

impl Conn {
    /// Like [`Conn::open`], also returning the handshake response's headers.
    pub async fn handshake(url: &str, options: &ConnectOptions) -> Handshake {
        Conn::handshake_with(url, options, None).await
    }

    /// Like [`Conn::handshake`], on a socket whose kernel receive buffer is
    /// set to `recv_buffer` bytes (before connecting, so the advertised
    /// window stays small): a client that stops reading backs up the
    /// server's writes quickly.
    pub async fn handshake_with(
        url: &str,
        options: &ConnectOptions,
        recv_buffer: Option<u32>,
    ) -> Handshake {
        let request = upgrade_request(url, options);
        let authority = request.uri().authority().expect("authority").to_string();
        let addr: SocketAddr = tokio::net::lookup_host(&authority)
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        let stream = socket.connect(addr).await.expect("connect");
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        match tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        {
            Ok((ws, response)) => Handshake::Accepted(Conn { ws }, response.headers().clone()),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Handshake::Refused(resp.status().as_u16(), resp.headers().clone())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Reads (answering pings) until `n` pings have arrived; returns the
    /// messages that arrived meanwhile. `Err` with the close code if the
    /// connection closed first; panics if they did not arrive within `wait`.
    pub async fn await_pings(
        &mut self,
        n: usize,
        wait: Duration,
    ) -> Result<Vec<ServerMessage>, Option<u16>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = 0;
        let mut messages = Vec::new();
        while seen < n {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{seen} of {n} pings arrived in {wait:?}"));
            match next {
                Some(Ok(Message::Ping(_))) => seen += 1,
                Some(Ok(Message::Text(t))) => messages.push(
                    ServerMessage::decode(t.as_str())
                        .unwrap_or_else(|e| panic!("undecodable server message {t}: {e}")),
                ),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                None | Some(Err(_)) => return Err(None),
                Some(Ok(_)) => {}
            }
        }
        // Let the last pong go out.
        let _ = self.ws.flush().await;
        Ok(messages)
    }
}

/// A plain HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// `GET path` over a fresh TCP connection (`Connection: close`).
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII headers");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').expect("header line");
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v.trim()).expect("header value"),
        );
    }
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size_line = std::str::from_utf8(&rest[..eol]).expect("chunk size");
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .expect("hex chunk size");
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = decoded;
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

impl TestApp {
    /// `GET path` on the app.
    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path).await
    }

    /// `/health` as JSON.
    pub async fn health(&self) -> serde_json::Value {
        let r = self.get("/health").await;
        assert_eq!(r.status, 200, "/health: {}", r.body);
        r.json()
    }

    /// Polls `/health` (every 50 ms, at most `WAIT` long) until `field`
    /// equals `value`; panics with the last value otherwise.
    pub async fn await_health(&self, field: &str, value: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let h = self.health().await;
            if h[field].as_u64() == Some(value) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("/health {field} stayed {} (waited for {value})", h[field]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
