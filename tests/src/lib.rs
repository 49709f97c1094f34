//! End-to-end test support: the real application on port 0 with in-memory
//! adapters ([`TestApp`]), a raw WebSocket connection ([`Conn`]) and a Rust
//! editing client built on the domain's OT client state machine
//! ([`Editor`]), which the load tool will reuse.
//!
//! The tests themselves are in `tests/tests/`.

use futures::{SinkExt, StreamExt};
use relay_adapters::jwt::{DevKeys, TokenRequest};
use relay_adapters::memory::MemoryMetrics;
use relay_adapters::ws::{self, WsConfig};
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
    pub async fn spawn_with(config: Config) -> TestApp {
        let keys = DevKeys::from_seed([7; 32]);
        let ws_config = WsConfig {
            max_message_bytes: config.max_message_bytes,
            auth_timeout: config.auth_timeout,
            heartbeat_interval: config.heartbeat_interval,
            heartbeat_timeout: config.heartbeat_timeout,
            allowed_origins: config.allowed_origins.clone(),
            ..WsConfig::default()
        };
        let wired = relay_app::wiring::in_memory(config, &keys);
        let service: Arc<dyn CollaborationService> = Arc::new(wired.relay.clone());
        let routes = ws::routes(service, ws_config, wired.jwks);
        let (listener, addr) = ws::bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ws::serve(listener, routes, async move {
            let _ = stopped.await;
        }));
        TestApp {
            addr,
            relay: wired.relay,
            keys,
            metrics: wired.metrics,
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

impl Conn {
    pub async fn open(url: &str, options: ConnectOptions) -> Connect {
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
        loop {
            let next = tokio::time::timeout(wait, self.ws.next()).await.ok()?;
            return Some(match next {
                None => Received::Closed(None),
                Some(Ok(Message::Text(t))) => Received::Message(
                    ServerMessage::decode(t.as_str())
                        .unwrap_or_else(|e| panic!("undecodable server message {t}: {e}")),
                ),
                Some(Ok(Message::Close(frame))) => {
                    Received::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
                Some(Ok(_)) => continue,
                Some(Err(_)) => Received::Closed(None),
            });
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
        let mut conn = Conn::connect(&app.url(document)).await;
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
            UserId(user),
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
        }
    }

    /// Reconnects (after the old connection was dropped) with `since` = the
    /// client's version, applies the catch-up and re-sends the in-flight
    /// submit with its original seq.
    pub async fn rejoin(&mut self, app: &TestApp, token: &str) {
        let mut conn = Conn::connect(&app.url(self.document)).await;
        let since = self.client.version();
        conn.join(self.client.client_id().as_str(), Some(token), Some(since))
            .await;
        let joined = conn.message().await;
        self.conn = conn;
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
        if let Some(out) = self.client.resend() {
            self.submit(out).await;
        }
    }

    pub async fn submit(&mut self, out: Outgoing) {
        let msg = ClientMessage::Submit {
            seq: out.seq,
            base: out.base,
            delta: out.delta,
        };
        self.conn.send(&msg).await;
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

    async fn apply_op(&mut self, op: CommittedOp) {
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
        if let Received::Message(m) = &r {
            match m.clone() {
                ServerMessage::Ack { seq, version } => {
                    self.acks.push((seq.0, version));
                    if let Some(out) = self
                        .client
                        .ack(seq, version)
                        .unwrap_or_else(|e| panic!("ack: {e}"))
                    {
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
                        .push((code.as_str().to_owned(), seq.map(|s| s.0)));
                }
                _ => {}
            }
        }
        r
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
    DocumentId(Uuid::new_v4())
}
