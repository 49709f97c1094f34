//! One load client: a WebSocket from a chosen loopback source address, the
//! domain's OT client (one submit in flight, later edits composed into the
//! next), an open-loop typing schedule replaying a trace slice, carets and
//! typing signals, and the end-of-run convergence check.
//!
//! Size: about 680 lines of code; an operator tool, not the server. One
//! client's state machine (joining, typing, resuming, checking) reads as
//! one file; its wire and schedule helpers are in `stats` and `trace`.

use crate::scenario::Scenario;
use crate::stats::{DueTable, Recorder, client_id, parse_client_id};
use crate::trace::{Replay, Trace};
use futures::{SinkExt, StreamExt};
use relay_domain::{Client, ClientError, ClientId, Document, Outgoing, Selection, UserId};
use relay_ports::protocol::{ClientMessage, ErrorCode, Join, ServerMessage};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    /// Connected clients wait.
    Connecting,
    /// Editors type every edit due in `[start + offset, until)`, the first
    /// due at `start` plus their offset.
    Run { start: Instant, until: Instant },
    /// Editors stop typing and settle what is in flight.
    Stop,
}

/// A document's final state as a late joiner saw it.
#[derive(Clone, Debug)]
pub struct Final {
    pub version: u64,
    pub text: String,
}

/// What every client shares.
#[derive(Debug)]
pub struct Shared {
    pub scenario: Scenario,
    /// Each instance's address and base URL.
    pub servers: Vec<(SocketAddr, String)>,
    pub recorder: Recorder,
    pub dues: DueTable,
    pub trace: Arc<Trace>,
    pub phase: watch::Receiver<Phase>,
    pub finals: watch::Receiver<Option<Arc<HashMap<Uuid, Final>>>>,
    /// Clients joined, refused or failed so far.
    pub joined: AtomicUsize,
    pub failed: AtomicUsize,
    /// Clients with nothing left in flight after `Phase::Stop`.
    pub settled: AtomicUsize,
    /// Connections per local address the kernel actually used.
    pub sources_used: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    /// For the tool's own test: one client changes its local text at the
    /// end, so the convergence check must fail.
    pub corrupt_slot: Option<usize>,
}

/// Who a client is.
#[derive(Clone, Debug)]
pub struct Spec {
    pub slot: usize,
    /// Which of [`Shared::servers`] it connects to.
    pub instance: usize,
    pub generation: u32,
    pub document: Uuid,
    pub user: Uuid,
    pub token: String,
    pub editor: bool,
    pub source: Ipv4Addr,
    /// Where in the trace its slice starts.
    pub trace_start: usize,
    /// Its schedule's offset within one period (0 to 1), so clients do not
    /// type in waves.
    pub offset: f64,
}

/// How a client ended.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub slot: usize,
    pub document: Uuid,
    pub joined: bool,
    /// Left on purpose before the end (churn).
    pub left: bool,
    /// Checked against the late joiner: `None` when it could not be
    /// (not joined, closed, left).
    pub converged: Option<bool>,
    pub problem: Option<String>,
    pub version: u64,
    pub length: usize,
}

type Ws = WebSocketStream<TcpStream>;

fn config() -> WebSocketConfig {
    // Small buffers: 10,000 clients in one process.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens the TCP connection from `source` and upgrades it.
async fn connect(shared: &Shared, spec: &Spec) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(spec.source.into(), 0))
        .map_err(|e| format!("bind {}: {e}", spec.source))?;
    socket
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let (addr, base) = &shared.servers[spec.instance % shared.servers.len()];
    let stream = socket
        .connect(*addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    if let Ok(local) = stream.local_addr() {
        let mut used = shared.sources_used.lock().expect("sources");
        *used.entry(local.ip().to_string()).or_default() += 1;
    }
    let url = format!("{base}/collab/{}", spec.document);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                format!("handshake: HTTP {}", r.status().as_u16())
            }
            other => format!("handshake: {other}"),
        })?;
    Ok(ws)
}

/// The state of one connected client.
struct Live {
    ws: Ws,
    client: Client,
    slot: usize,
    /// Which of [`Shared::servers`] it is connected to.
    instance: usize,
    generation: u32,
    shard: usize,
    /// Due time of the submit in flight, and of the oldest buffered edit.
    inflight_due: Option<Instant>,
    buffer_due: Option<Instant>,
    /// Re-sends of the in-flight submit after `unavailable` or
    /// `rate_limited`.
    retries: u32,
    retry_at: Option<Instant>,
    /// A problem that stops this client (refused op, version gap...).
    broken: Option<String>,
    closed: Option<String>,
    cursor_every: Duration,
    last_cursor: Option<Instant>,
    last_typing: Option<Instant>,
    caret: usize,
}

const MAX_RETRIES: u32 = 50;

/// A send that makes no progress for this long means the server stopped
/// reading this connection: the client gives up on it rather than waiting
/// for ever.
const SEND_STALL: Duration = Duration::from_secs(10);

impl Live {
    async fn send(&mut self, m: &ClientMessage) {
        if self.closed.is_some() {
            return;
        }
        match tokio::time::timeout(SEND_STALL, self.ws.send(Message::text(m.encode()))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.closed = Some("send failed".into()),
            Err(_) => {
                self.closed = Some(format!(
                    "a send made no progress for {} s: the server is not reading",
                    SEND_STALL.as_secs()
                ))
            }
        }
    }

    async fn submit(&mut self, shared: &Shared, out: Outgoing, due: Instant) {
        shared
            .dues
            .set(self.slot, self.generation, out.seq.get(), due);
        shared
            .recorder
            .count_at(self.shard, due, |w| w.submits += 1);
        self.inflight_due = Some(due);
        self.send(&ClientMessage::Submit {
            seq: out.seq,
            base: out.base,
            delta: out.delta,
        })
        .await;
    }

    fn region(&self) -> (usize, usize) {
        match self.client.selection() {
            Some(s) => (
                s.anchor.min(s.head),
                s.anchor.max(s.head) - s.anchor.min(s.head),
            ),
            None => (self.client.document().len(), 0),
        }
    }

    /// The next patch of the trace, due at `due`.
    async fn edit(&mut self, shared: &Shared, replay: &mut Replay, due: Instant) {
        if self.broken.is_some() || self.closed.is_some() {
            return;
        }
        let (start, len) = self.region();
        let doc_len = self.client.document().len();
        // A patch clamped to the region can come out empty (a delete in an
        // empty region): the next one then, so every due edit edits.
        let mut e = replay.next_edit(
            &shared.trace,
            start,
            len,
            doc_len,
            shared.scenario.max_insert,
        );
        for _ in 0..64 {
            if !e.delta.is_noop() {
                break;
            }
            e = replay.next_edit(
                &shared.trace,
                start,
                len,
                doc_len,
                shared.scenario.max_insert,
            );
        }
        let start = start.min(doc_len);
        if e.delta.is_noop() {
            // A long run of deletes in an empty region: type one character
            // instead, so the schedule's rate holds.
            let mut d = relay_domain::Delta::new();
            d.retain(start).insert(" ");
            e = crate::trace::Edit {
                delta: d.fit(doc_len).expect("start is within the document"),
                region_len: len.min(doc_len - start) + 1,
                caret: 1,
            };
        }
        match self.client.edit(e.delta) {
            Ok(out) => {
                shared.recorder.count_at(self.shard, due, |w| w.edits += 1);
                self.client.set_selection(Some(Selection {
                    anchor: start,
                    head: start + e.region_len,
                }));
                self.caret = start + e.caret;
                match out {
                    Some(out) => self.submit(shared, out, due).await,
                    None => {
                        self.buffer_due.get_or_insert(due);
                    }
                }
            }
            Err(err) => self.broken = Some(format!("local edit refused: {err}")),
        }
        let now = Instant::now();
        if shared.scenario.typing
            && self
                .last_typing
                .is_none_or(|t| now - t >= Duration::from_millis(250))
        {
            self.last_typing = Some(now);
            shared.recorder.count(self.shard, |w| w.typing_sent += 1);
            self.send(&ClientMessage::Typing).await;
        }
        self.cursor(shared).await;
    }

    /// The caret, when nothing is in flight (then the local document is
    /// the server's at `version`, so the position is true there).
    async fn cursor(&mut self, shared: &Shared) {
        if !shared.scenario.cursors || !self.client.is_synchronized() {
            return;
        }
        let now = Instant::now();
        if self
            .last_cursor
            .is_some_and(|t| now - t < self.cursor_every)
        {
            return;
        }
        self.last_cursor = Some(now);
        let caret = self.caret.min(self.client.document().len());
        shared.recorder.count(self.shard, |w| w.cursors_sent += 1);
        let version = self.client.version();
        self.send(&ClientMessage::Cursor {
            version,
            selection: Some(Selection {
                anchor: caret,
                head: caret,
            }),
        })
        .await;
    }

    /// Handles one frame; false when the connection is over.
    async fn frame(
        &mut self,
        shared: &Shared,
        frame: Option<Result<Message, impl std::fmt::Display>>,
    ) -> bool {
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                let what = match c {
                    Some(c) => u16::from(c.code).to_string(),
                    None => "no code".to_owned(),
                };
                shared.recorder.close(self.shard, &what);
                self.closed = Some(format!("closed by the server ({what})"));
                return false;
            }
            Some(Ok(_)) => return true,
            Some(Err(e)) => {
                shared.recorder.close(self.shard, "reset");
                self.closed = Some(format!("connection error: {e}"));
                return false;
            }
            None => {
                shared.recorder.close(self.shard, "reset");
                self.closed = Some("connection ended without a close frame".into());
                return false;
            }
        };
        let at = Instant::now();
        let msg = match ServerMessage::decode(&text) {
            Ok(m) => m,
            Err(e) => {
                shared.recorder.error(self.shard, "undecodable");
                self.broken = Some(format!("undecodable frame: {e}"));
                return true;
            }
        };
        match msg {
            ServerMessage::Ack { seq, version } => {
                let was = self.client.inflight().map(|i| i.seq);
                match self.client.ack(seq, version) {
                    Ok(next) => {
                        if was == Some(seq) {
                            if let Some(due) = self.inflight_due.take() {
                                shared.recorder.ack(self.shard, self.instance, due, at);
                            }
                            self.retries = 0;
                            self.retry_at = None;
                        }
                        if let Some(out) = next {
                            let due = self.buffer_due.take().unwrap_or(at);
                            self.submit(shared, out, due).await;
                        }
                        self.cursor(shared).await;
                    }
                    // A second answer to one submit: counted and reported
                    // (it fails a run that allows no errors); the client's
                    // state is unchanged, so it goes on.
                    Err(ClientError::Duplicate { .. }) => {
                        shared.recorder.error(self.shard, "duplicate");
                    }
                    Err(e) => self.broken = Some(format!("ack: {e}")),
                }
            }
            ServerMessage::Ops { ops } => {
                let mut dues = Vec::with_capacity(ops.len());
                let instances = shared.servers.len();
                for op in &ops {
                    let sender = parse_client_id(op.client_id.as_str());
                    dues.push((
                        sender.and_then(|(slot, g)| shared.dues.get(slot, g, op.seq.get())),
                        sender.is_some_and(|(slot, _)| {
                            shared.scenario.instance_of(slot, instances) != self.instance
                        }),
                    ));
                    if self.broken.is_some() {
                        continue;
                    }
                    let was = self.client.inflight().map(|i| i.seq);
                    match self.client.receive(op) {
                        Ok(next) => {
                            // Our own op in the stream counts as its ack.
                            if was.is_some()
                                && self.client.inflight().map(|i| i.seq) != was
                                && let Some(due) = self.inflight_due.take()
                            {
                                shared.recorder.ack(self.shard, self.instance, due, at);
                            }
                            if let Some(out) = next {
                                let due = self.buffer_due.take().unwrap_or(at);
                                self.submit(shared, out, due).await;
                            }
                        }
                        // An op delivered twice: counted and reported, as
                        // above.
                        Err(ClientError::Duplicate { .. }) => {
                            shared.recorder.error(self.shard, "duplicate");
                        }
                        Err(e) => self.broken = Some(format!("op {}: {e}", op.version)),
                    }
                }
                shared.recorder.deliveries(self.shard, &dues, at);
            }
            ServerMessage::Error {
                code, seq, fatal, ..
            } => {
                shared.recorder.error(self.shard, code.as_str());
                if code == ErrorCode::Unavailable {
                    shared.recorder.unavailable(self.shard, self.instance);
                }
                let ours = seq.is_some() && self.client.inflight().map(|i| i.seq) == seq;
                match code {
                    ErrorCode::Unavailable | ErrorCode::RateLimited if ours => {
                        // Nothing was committed: the same submit again, later.
                        if self.retries < MAX_RETRIES {
                            self.retries += 1;
                            self.retry_at = Some(at + Duration::from_millis(100));
                        } else {
                            self.broken = Some(format!(
                                "submit refused {} times in a row ({})",
                                self.retries,
                                code.as_str()
                            ));
                        }
                    }
                    _ if ours => {
                        self.client.refuse_inflight();
                        self.broken = Some(format!("submit refused: {}", code.as_str()));
                    }
                    _ if fatal => self.broken = Some(format!("fatal error: {}", code.as_str())),
                    _ => {}
                }
            }
            ServerMessage::Cursor { .. }
            | ServerMessage::Presence { .. }
            | ServerMessage::Typing { .. } => {
                shared
                    .recorder
                    .count(self.shard, |w| w.presence_received += 1);
            }
            ServerMessage::Shutdown { .. } => {
                shared.recorder.error(self.shard, "shutdown");
            }
            ServerMessage::Joined { .. } => {}
        }
        true
    }

    async fn retry(&mut self) {
        self.retry_at = None;
        if let Some(out) = self.client.inflight().cloned() {
            self.send(&ClientMessage::Submit {
                seq: out.seq,
                base: out.base,
                delta: out.delta,
            })
            .await;
        }
    }
}

/// Connects, joins and runs one client to its end. Once `leave` is
/// cancelled the client settles what it has in flight and leaves
/// (`Report::left`), whatever phase the run is in: the run waits for the
/// clients it replaced before the late joiners look, so a leaver must never
/// wait for them.
pub async fn run(
    shared: Arc<Shared>,
    spec: Spec,
    leave: CancellationToken,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Report {
    let shard = spec.slot;
    let mut report = Report {
        slot: spec.slot,
        document: spec.document,
        ..Default::default()
    };
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        let mut ws = connect(&shared, &spec).await?;
        let id = client_id(spec.slot, spec.generation);
        let join = ClientMessage::Join(Join {
            client_id: ClientId::new(id.clone()).map_err(|e| e.to_string())?,
            token: Some(spec.token.clone()),
            since: None,
        });
        ws.send(Message::text(join.encode()))
            .await
            .map_err(|e| format!("join: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match ServerMessage::decode(&t) {
                    Ok(ServerMessage::Joined {
                        content: Some(content),
                        version,
                        limits,
                        ..
                    }) => {
                        let doc = Document::from_content(&content, version)
                            .map_err(|e| format!("joined content: {e}"))?;
                        let client = Client::new(
                            UserId::new(spec.user),
                            ClientId::new(id).map_err(|e| e.to_string())?,
                            doc,
                        );
                        return Ok((ws, client, limits.cursor_throttle_ms));
                    }
                    Ok(ServerMessage::Error { code, .. }) => {
                        return Err(format!("join refused: {}", code.as_str()));
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(c))) => {
                    return Err(format!(
                        "closed at join: {}",
                        c.map(|c| u16::from(c.code)).unwrap_or(1005)
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("join: {e}")),
                None => return Err("closed at join".into()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("join timed out after 60 s".into()));
    let (ws, client, cursor_ms) = match joined {
        Ok(j) => j,
        Err(e) => {
            let what = e.split(':').next().unwrap_or("connect").to_owned();
            shared.recorder.error(shard, &format!("join: {what}"));
            shared.failed.fetch_add(1, Ordering::Relaxed);
            shared.settled.fetch_add(1, Ordering::Relaxed);
            report.problem = Some(e);
            return report;
        }
    };
    shared.joined.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    report.joined = true;
    let mut live = Live {
        ws,
        client,
        slot: spec.slot,
        instance: spec.instance % shared.servers.len(),
        generation: spec.generation,
        shard,
        inflight_due: None,
        buffer_due: None,
        retries: 0,
        retry_at: None,
        broken: None,
        closed: None,
        cursor_every: Duration::from_millis(cursor_ms.max(50)),
        last_cursor: None,
        last_typing: None,
        caret: 0,
    };
    let doc_len = live.client.document().len();
    live.client.set_selection(Some(Selection {
        anchor: doc_len,
        head: doc_len,
    }));
    let mut replay = Replay::new(&shared.trace, spec.trace_start);
    let mut phase_rx = shared.phase.clone();
    let period =
        (shared.scenario.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / shared.scenario.rate));
    let mut next_due: Option<Instant> = None;
    let mut leaving = false;
    let mut started = false;
    // When settling must be over.
    let mut give_up: Option<Instant> = None;
    let mut until_at: Option<Instant> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);

    // Typing until Stop (or a leave), then settling what is in flight.
    loop {
        // Checked here, not only in the select below: a leave that comes
        // with the end of the run must not be missed by a client that is
        // done and stops before it selects again.
        if !leaving && leave.is_cancelled() {
            leaving = true;
            next_due = None;
        }
        let phase = *phase_rx.borrow();
        if let Phase::Run { start, until } = phase {
            until_at.get_or_insert(until);
            if spec.editor
                && !leaving
                && !started
                && let Some(p) = period
            {
                started = true;
                // A replacement (churn) starts on the schedule's next tick.
                let mut first = start + p.mul_f64(spec.offset);
                let now = Instant::now();
                if first < now {
                    let behind = (now - first).as_secs_f64() / p.as_secs_f64();
                    first += p.mul_f64(behind.ceil());
                }
                next_due = Some(first);
            }
        }
        // Every edit due before the end is made, even when the client is
        // behind its schedule when the end comes.
        if let (Some(d), Some(u)) = (next_due, until_at)
            && d >= u
        {
            next_due = None;
        }
        let stopping = (phase == Phase::Stop && next_due.is_none()) || leaving;
        let done = live.client.is_synchronized() || live.broken.is_some() || live.closed.is_some();
        if stopping && done {
            break;
        }
        if stopping && give_up.is_none() {
            give_up = Some(Instant::now() + Duration::from_secs_f64(shared.scenario.settle_secs));
        }
        if let Some(g) = give_up
            && Instant::now() >= g
        {
            live.broken = Some(format!(
                "a submit was still unacknowledged {} s after the end",
                shared.scenario.settle_secs
            ));
            break;
        }
        let wake_edit = next_due
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(far);
        let wake_retry = live
            .retry_at
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(far);
        tokio::select! {
            _ = tokio::time::sleep_until(wake_edit), if next_due.is_some() => {
                let due = next_due.expect("guarded");
                if let Some(p) = period {
                    next_due = Some(due + p);
                }
                live.edit(&shared, &mut replay, due).await;
            }
            _ = tokio::time::sleep_until(wake_retry), if live.retry_at.is_some() => {
                live.retry().await;
            }
            frame = live.ws.next() => {
                if !live.frame(&shared, frame).await {
                    break;
                }
            }
            r = phase_rx.changed() => {
                if r.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(give_up.map(tokio::time::Instant::from_std).unwrap_or_else(far)), if give_up.is_some() => {}
            _ = leave.cancelled(), if !leaving => {}
        }
    }

    if leaving {
        live.send(&ClientMessage::Leave).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = live.ws.next().await {
                if let Message::Close(_) = m {
                    break;
                }
            }
        })
        .await;
        report.left = true;
        report.version = live.client.version().get();
        return report;
    }
    // Settled, or closed or broken: either way the run need not wait for
    // this client before the late joiners look.
    shared.settled.fetch_add(1, Ordering::Relaxed);

    // The check: reach the late joiner's version, then compare texts.
    if shared.scenario.verify && live.closed.is_none() {
        let mut finals = shared.finals.clone();
        let target = loop {
            if let Some(f) = finals.borrow().as_ref() {
                break f.get(&spec.document).cloned();
            }
            tokio::select! {
                r = finals.changed() => if r.is_err() { break None },
                frame = live.ws.next() => {
                    if !live.frame(&shared, frame).await { break None }
                }
            }
        };
        if let Some(target) = target {
            let reached = tokio::time::timeout(
                Duration::from_secs_f64(shared.scenario.settle_secs.max(1.0)),
                async {
                    while live.client.version().get() < target.version
                        && live.broken.is_none()
                        && live.closed.is_none()
                    {
                        let frame = live.ws.next().await;
                        if !live.frame(&shared, frame).await {
                            break;
                        }
                    }
                },
            )
            .await;
            let mut text = live.client.document().text();
            if shared.corrupt_slot == Some(spec.slot) {
                text.push('!');
            }
            report.version = live.client.version().get();
            report.length = text.chars().count();
            let same = text == target.text && report.version == target.version;
            report.converged = Some(same && live.broken.is_none());
            if !same {
                report.problem = Some(if reached.is_err() {
                    format!(
                        "did not reach version {} within {} s (at {})",
                        target.version, shared.scenario.settle_secs, report.version
                    )
                } else {
                    let at = text
                        .chars()
                        .zip(target.text.chars())
                        .position(|(a, b)| a != b)
                        .unwrap_or(text.chars().count().min(target.text.chars().count()));
                    format!(
                        "text differs from the late joiner's at character {at} (version {} vs {}, {} vs {} characters)",
                        report.version,
                        target.version,
                        report.length,
                        target.text.chars().count()
                    )
                });
            }
        }
    }
    if let Some(b) = &live.broken {
        report.converged = Some(false);
        report.problem.get_or_insert_with(|| b.clone());
    }
    if let Some(c) = &live.closed {
        report.problem.get_or_insert_with(|| c.clone());
    } else {
        live.send(&ClientMessage::Leave).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = live.ws.next().await {
                if let Message::Close(c) = m {
                    if c.is_some_and(|c| c.code != CloseCode::Normal) {
                        shared.recorder.close(shard, "unexpected at leave");
                    }
                    break;
                }
            }
        })
        .await;
    }
    report
}
