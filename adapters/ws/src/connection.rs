//! One WebSocket connection: the join, then frames both ways until close.
//!
//! Size: about 410 lines of code, kept in one file on purpose: the join
//! phase and the frame pump share the stream, the close-frame and
//! read-error helpers and the `Ended` record, and every bound of a
//! connection (deadlines, stalls, heartbeats, expiry) is read here in order.

use super::WsConfig;
use crate::admission::PendingPlace;
use crate::first_frame::{FirstFrameLimit, is_too_big};
use futures::{SinkExt, StreamExt};
use relay_domain::DocumentId;
use relay_ports::metrics::RejectReason;
use relay_ports::protocol::{CloseCode, ErrorCode, ServerMessage};
use relay_ports::{
    ClientMessage, CollaborationService, ConnectionSlot, Metrics, Outbound, OutboundQueue, Session,
    Started,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as WsCloseCode, Data, OpCode,
};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, info};

/// Frames written per flush at most, so one busy connection cannot hog the
/// task.
const WRITE_BATCH: usize = 64;

/// The largest WebSocket frame the server writes: a larger message goes
/// out as fragments of this size, each written once the previous one is
/// flushed, so a client that does not read holds at most about one
/// fragment of its own (a `joined`'s shared content is not copied per
/// connection).
pub(super) const FRAGMENT_BYTES: usize = 64 << 10;

/// What tungstenite may buffer beyond its write buffer: one frame of at
/// most [`FRAGMENT_BYTES`] plus its header, a pong and a close frame.
pub(super) const MAX_WRITE_AHEAD: usize = FRAGMENT_BYTES + 1024;

/// The longest any single write before the join may take: a client that
/// does not take a small error or close frame in this time is not reading.
const PREJOIN_WRITE: Duration = Duration::from_secs(1);

/// What the join phase may take beyond AUTH_TIMEOUT_SECS: to answer the
/// join (or refuse it) and close.
const PREJOIN_CLOSE: Duration = Duration::from_secs(2);

/// The WebSocket stream of one connection.
type Ws<S> = WebSocketStream<FirstFrameLimit<S>>;

/// What an upgraded connection holds until it joins.
pub(super) struct Admitted {
    /// Its slot under MAX_CONNECTIONS (the service keeps it once joined).
    pub(super) slot: ConnectionSlot,
    /// Its place in its address's pending budget, freed once joined.
    pub(super) pending: Option<PendingPlace>,
    /// When the upgrade completed: the join phase's deadlines count from
    /// here.
    pub(super) upgraded_at: Instant,
}

enum First {
    Text(String),
    Closed(&'static str),
    Fail(CloseCode, &'static str),
}

async fn first_frame<S>(stream: &mut Ws<S>) -> First
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match stream.next().await {
            None => return First::Closed("closed before join"),
            Some(Ok(Message::Text(t))) => return First::Text(t.to_string()),
            Some(Ok(Message::Binary(_))) => {
                return First::Fail(CloseCode::UnsupportedData, "binary frames are not accepted");
            }
            Some(Ok(Message::Close(_))) => return First::Closed("closed before join"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return read_error(&e),
        }
    }
}

fn read_error(e: &WsError) -> First {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            First::Fail(CloseCode::TooBig, "message too big")
        }
        WsError::Utf8(_) => First::Fail(CloseCode::UnsupportedData, "text frame is not UTF-8"),
        WsError::Protocol(_) => First::Fail(CloseCode::Policy, "WebSocket protocol error"),
        WsError::Io(e) if is_too_big(e) => First::Fail(CloseCode::TooBig, "join too big"),
        _ => First::Closed("connection error"),
    }
}

/// Sends a close frame and waits briefly for the peer's. A peer that does
/// not take the frame within `stall` (it stopped reading: the socket is
/// full) is dropped without it.
async fn send_close<S>(stream: &mut Ws<S>, code: CloseCode, reason: &str, stall: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A close reason is limited to 123 bytes.
    let mut reason = reason.to_owned();
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame {
        code: WsCloseCode::from(code.as_u16()),
        reason: reason.into(),
    };
    match tokio::time::timeout(stall, stream.send(Message::Close(Some(frame)))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => return,
    }
    // Wait briefly for the peer's close so the close frame is not lost to a
    // reset; a peer that does not answer is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// How a joined connection ended.
struct Ended {
    /// The close code sent (or the client's, when it closed); `None` when
    /// the connection was dropped without a close frame.
    code: Option<u16>,
    reason: String,
}

impl Ended {
    fn sent(code: CloseCode, reason: impl Into<String>) -> Ended {
        Ended {
            code: Some(code.as_u16()),
            reason: reason.into(),
        }
    }

    fn dropped(reason: impl Into<String>) -> Ended {
        Ended {
            code: None,
            reason: reason.into(),
        }
    }
}

/// Messages one connection moved, for its close line.
struct Counts {
    received: u64,
    sent: u64,
}

pub(super) async fn run<S>(
    mut stream: Ws<S>,
    service: Arc<dyn CollaborationService>,
    config: &WsConfig,
    metrics: &dyn Metrics,
    document: DocumentId,
    bearer: Option<String>,
    admitted: Admitted,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let opened = Instant::now();
    // One deadline for the whole join phase, whatever the client reads or
    // does not: AUTH_TIMEOUT_SECS for the join to arrive, and at most
    // PREJOIN_CLOSE more to answer or close (PROTOCOL.md, "Before the
    // join").
    let end = admitted.upgraded_at + config.auth_timeout + PREJOIN_CLOSE;
    let pending = admitted.pending;
    // The join phase is boxed: its state (timeouts, close handshakes) is
    // freed once joined instead of sizing every idle connection's task.
    let phase = Box::pin(join_phase(
        &mut stream,
        &*service,
        config,
        metrics,
        document,
        bearer,
        admitted.slot,
        admitted.upgraded_at,
    ));
    let started = match tokio::time::timeout_at(end, phase).await {
        Ok(Some(started)) => started,
        Ok(None) => return,
        Err(_) => {
            debug!(%document, "join phase over its deadline: dropped");
            return;
        }
    };
    // Joined: no longer pending, and later messages may be up to
    // MAX_MESSAGE_BYTES.
    drop(pending);
    stream.get_mut().lift();
    let Started {
        mut session,
        mut outbound,
        close: mut close_rx,
        user,
        client_id,
    } = started;
    info!(target: "relay::connection", %document, %user, %client_id, "connection opened");
    // The join was the first message received.
    let mut counts = Counts {
        received: 1,
        sent: 0,
    };
    let ended = pump(
        &mut stream,
        &mut *session,
        &mut outbound,
        &mut close_rx,
        config,
        metrics,
        &mut counts,
    )
    .await;
    session.close(&ended.reason).await;
    info!(
        target: "relay::connection",
        %document,
        %user,
        %client_id,
        duration_ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX),
        messages_received = counts.received,
        messages_sent = counts.sent,
        close_code = ended.code,
        reason = %ended.reason,
        "connection closed"
    );
}

/// Waits for the `join` (within AUTH_TIMEOUT of the upgrade) and hands it
/// to the service. Every write here is bounded by [`PREJOIN_WRITE`]; the
/// caller bounds the whole by AUTH_TIMEOUT + [`PREJOIN_CLOSE`].
#[allow(clippy::too_many_arguments)]
async fn join_phase<S>(
    stream: &mut Ws<S>,
    service: &dyn CollaborationService,
    config: &WsConfig,
    metrics: &dyn Metrics,
    document: DocumentId,
    bearer: Option<String>,
    slot: ConnectionSlot,
    upgraded_at: Instant,
) -> Option<Started>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let auth_deadline = upgraded_at + config.auth_timeout;
    let first = match tokio::time::timeout_at(auth_deadline, first_frame(stream)).await {
        Err(_) => First::Fail(CloseCode::JoinTimeout, "no join in time"),
        Ok(f) => f,
    };
    let text = match first {
        First::Text(t) => t,
        First::Closed(why) => {
            debug!(%document, why, "connection ended before join");
            return None;
        }
        First::Fail(code, why) => {
            debug!(%document, code = code.as_u16(), why, "connection refused before join");
            metrics.connection_rejected(RejectReason::BadRequest);
            send_close(stream, code, why, PREJOIN_WRITE).await;
            return None;
        }
    };
    metrics.message_received(text.len());
    let join = match ClientMessage::decode(&text) {
        Ok(ClientMessage::Join(j)) => j,
        Ok(_) => {
            drop(text);
            metrics.connection_rejected(RejectReason::BadRequest);
            bad_first(stream, "the first message must be `join`").await;
            return None;
        }
        Err(e) => {
            drop(text);
            metrics.connection_rejected(RejectReason::BadRequest);
            bad_first(stream, &e.message).await;
            return None;
        }
    };
    drop(text);
    // The service has until the join phase's end less one write to answer.
    let answer_by = auth_deadline + PREJOIN_CLOSE - PREJOIN_WRITE;
    let joined = tokio::time::timeout_at(answer_by, service.join(slot, document, bearer, join));
    match joined.await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(refusal)) => {
            // Counted by the service, which knows why.
            let reason = refusal.to_string();
            info!(target: "relay::connection", %document, close_code = refusal.close_code().as_u16(), %reason, "join refused");
            if let Some(code) = refusal.error_code() {
                let frame = ServerMessage::error(code, &reason, None, true).encode();
                let send = stream.send(Message::text(frame));
                let _ = tokio::time::timeout(PREJOIN_WRITE, send).await;
            }
            send_close(stream, refusal.close_code(), &reason, PREJOIN_WRITE).await;
            None
        }
        Err(_) => {
            info!(target: "relay::connection", %document, "join not answered in time");
            metrics.connection_rejected(RejectReason::Unavailable);
            send_close(
                stream,
                CloseCode::TryAgainLater,
                "join not answered in time; try again",
                PREJOIN_WRITE,
            )
            .await;
            None
        }
    }
}

/// Refuses a first message that is not a valid `join`: an `error`, then
/// close 4400, each write bounded by [`PREJOIN_WRITE`].
async fn bad_first<S>(stream: &mut Ws<S>, message: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = ServerMessage::error(ErrorCode::BadMessage, message, None, true).encode();
    let _ = tokio::time::timeout(PREJOIN_WRITE, stream.send(Message::text(frame))).await;
    send_close(
        stream,
        CloseCode::BadFirstMessage,
        "the first message must be a valid join",
        PREJOIN_WRITE,
    )
    .await;
}

/// Moves frames until the connection ends; returns why.
async fn pump<S>(
    stream: &mut Ws<S>,
    session: &mut dyn Session,
    outbound: &mut OutboundQueue,
    close_rx: &mut tokio::sync::watch::Receiver<Option<relay_ports::CloseOrder>>,
    config: &WsConfig,
    metrics: &dyn Metrics,
    counts: &mut Counts,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // A write that makes no progress for this long means the client stopped
    // reading (it is not answering pings either): drop it.
    let stall = config.heartbeat_timeout;
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        Instant::now() + config.heartbeat_interval,
        config.heartbeat_interval,
    );
    let expiry = session.until_expiry().map(|d| Instant::now() + d);
    let expires = async move {
        match expiry {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expires);
    loop {
        tokio::select! {
            biased;
            changed = close_rx.changed() => {
                let order = if changed.is_ok() { close_rx.borrow().clone() } else { None };
                if let Some(order) = order {
                    Box::pin(send_close(stream, order.code, &order.reason, stall)).await;
                    return Ended::sent(order.code, order.reason);
                }
            }
            out = outbound.recv() => {
                let Some(out) = out else {
                    Box::pin(send_close(stream, CloseCode::GoingAway, "session ended", stall)).await;
                    return Ended::sent(CloseCode::GoingAway, "session ended");
                };
                let written = Box::pin(write_guarded(stream, outbound, out, close_rx, stall, metrics, counts)).await;
                if let Some(ended) = written {
                    return ended;
                }
            }
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    None => return Ended::dropped("client went away"),
                    Some(Ok(Message::Text(t))) => {
                        metrics.message_received(t.len());
                        counts.received += 1;
                        match ClientMessage::decode(t.as_str()) {
                            Ok(m) => session.handle(m).await,
                            Err(e) => session.reject(e),
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        Box::pin(send_close(stream, CloseCode::UnsupportedData, "binary frames are not accepted", stall)).await;
                        return Ended::sent(CloseCode::UnsupportedData, "binary frame");
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ended {
                            code: frame.map(|f| u16::from(f.code)),
                            reason: "client closed".into(),
                        };
                    }
                    // Pings are answered by tungstenite; pongs count as life.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        return match read_error(&e) {
                            First::Fail(code, why) => {
                                Box::pin(send_close(stream, code, why, stall)).await;
                                Ended::sent(code, why)
                            }
                            _ => Ended::dropped("connection error"),
                        };
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= config.heartbeat_timeout {
                    Box::pin(send_close(stream, CloseCode::Policy, "heartbeat timeout", stall)).await;
                    return Ended::sent(CloseCode::Policy, "heartbeat timeout");
                }
                // Boxed like the other rare paths, so an idle connection's
                // task stays small.
                let send_ping = tokio::time::timeout(stall, stream.send(Message::Ping(Default::default())));
                match Box::pin(send_ping).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Ended::dropped("connection error"),
                    Err(_) => return Ended::dropped(STALLED),
                }
            }
            _ = &mut expires => {
                Box::pin(send_close(stream, CloseCode::Unauthenticated, "token expired", stall)).await;
                return Ended::sent(CloseCode::Unauthenticated, "token expired");
            }
        }
    }
}

/// Why a connection whose writes stopped making progress was dropped.
const STALLED: &str = "write stalled: the client is not reading";

/// [`write_batch`], unless a close order comes while the client is not
/// taking frames (the room gave up on it, e.g. 1013 for a slow consumer):
/// then the stuck write is abandoned and the close is sent instead.
/// Returns a reason if the connection ended.
async fn write_guarded<S>(
    stream: &mut Ws<S>,
    outbound: &mut OutboundQueue,
    first: Outbound,
    close_rx: &mut tokio::sync::watch::Receiver<Option<relay_ports::CloseOrder>>,
    stall: Duration,
    metrics: &dyn Metrics,
    counts: &mut Counts,
) -> Option<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let order = tokio::select! {
        biased;
        ended = write_batch(stream, outbound, first, stall, metrics, counts) => return ended,
        order = close_ordered(close_rx) => order,
    };
    // Abandoning the write is safe: tungstenite keeps whole frames in its
    // buffer, so the close frame follows what was already taken.
    send_close(stream, order.code, &order.reason, stall).await;
    Some(Ended::sent(order.code, order.reason))
}

/// Resolves with the close order once there is one.
async fn close_ordered(
    close_rx: &mut tokio::sync::watch::Receiver<Option<relay_ports::CloseOrder>>,
) -> relay_ports::CloseOrder {
    loop {
        if let Some(order) = close_rx.borrow_and_update().clone() {
            return order;
        }
        if close_rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Writes one outbound item and whatever else is already queued, then
/// flushes. Small messages are fed together and flushed once (one write
/// for several frames); a message larger than [`FRAGMENT_BYTES`] is written
/// as fragments, each flushed before the next is taken (see
/// [`write_fragmented`]). A write that makes no progress for `stall` means
/// the client stopped reading (it is not answering pings either, and the
/// heartbeat cannot fire while a write is pending): the connection is
/// dropped rather than holding its task, slot and socket buffers forever.
/// Returns a reason if the connection ended.
async fn write_batch<S>(
    stream: &mut Ws<S>,
    outbound: &mut OutboundQueue,
    first: Outbound,
    stall: Duration,
    metrics: &dyn Metrics,
    counts: &mut Counts,
) -> Option<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::time::timeout;
    let mut next = Some(first);
    let mut written = 0;
    while let Some(out) = next.take() {
        let len = match &out {
            Outbound::Text(t) => t.len(),
            Outbound::Joined(j) => j.len(),
            Outbound::Close(_) => 0,
        };
        match out {
            Outbound::Close(order) => {
                if let Err(_) | Ok(Err(_)) = timeout(stall, stream.flush()).await {
                    return Some(Ended::dropped(order.reason));
                }
                Box::pin(send_close(stream, order.code, &order.reason, stall)).await;
                return Some(Ended::sent(order.code, order.reason));
            }
            out if len > FRAGMENT_BYTES => {
                let pieces = match out {
                    Outbound::Text(t) => vec![shared_bytes(t)],
                    Outbound::Joined(j) => {
                        let j = *j;
                        vec![
                            Bytes::from(j.head),
                            shared_bytes(j.shared),
                            Bytes::from(j.tail),
                        ]
                    }
                    Outbound::Close(_) => Vec::new(),
                };
                if let Some(ended) = Box::pin(write_fragmented(stream, pieces, stall)).await {
                    return Some(ended);
                }
            }
            out => {
                let frame = out.text().unwrap_or_default();
                match timeout(stall, stream.feed(Message::text(frame.as_ref()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Some(Ended::dropped("connection error")),
                    Err(_) => return Some(Ended::dropped(STALLED)),
                }
            }
        }
        metrics.message_sent(len);
        counts.sent += 1;
        written += 1;
        if written < WRITE_BATCH {
            next = outbound.try_recv();
        }
    }
    match timeout(stall, stream.flush()).await {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(Ended::dropped("connection error")),
        Err(_) => Some(Ended::dropped(STALLED)),
    }
}

/// A shared text as bytes, without copying it.
fn shared_bytes(text: Arc<str>) -> Bytes {
    struct Shared(Arc<str>);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    Bytes::from_owner(Shared(text))
}

/// Writes `pieces`, one text message, as fragments of at most
/// [`FRAGMENT_BYTES`] (RFC 6455 5.4: a text frame without FIN, then
/// continuation frames, the last with FIN). What was fed before is flushed
/// first; each fragment is a slice of its piece (no copy but tungstenite's
/// one of the fragment) and is flushed before the next, each within
/// `stall`. A fragment may end inside a UTF-8 sequence: clients check the
/// whole message.
async fn write_fragmented<S>(
    stream: &mut Ws<S>,
    pieces: Vec<Bytes>,
    stall: Duration,
) -> Option<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::time::timeout;
    let mut chunks: Vec<Bytes> = Vec::new();
    for piece in pieces {
        let mut at = 0;
        while at < piece.len() {
            let end = (at + FRAGMENT_BYTES).min(piece.len());
            chunks.push(piece.slice(at..end));
            at = end;
        }
    }
    if let Err(_) | Ok(Err(_)) = timeout(stall, stream.flush()).await {
        return Some(Ended::dropped(STALLED));
    }
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(chunk, opcode, i == last);
        match timeout(stall, stream.send(Message::Frame(frame))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Some(Ended::dropped("connection error")),
            Err(_) => return Some(Ended::dropped(STALLED)),
        }
        // A socket with room takes a whole large message without making the
        // task wait, so without this one connection's megabytes would be
        // written in one turn while every other task on the worker waits
        // (tokio's budget counts 128 writes, a 3 MB message is 48): after
        // each fragment the other tasks run first.
        if i != last {
            tokio::task::yield_now().await;
        }
    }
    None
}
