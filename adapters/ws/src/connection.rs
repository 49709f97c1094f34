//! One WebSocket connection: the join, then frames both ways until close.
//!
//! Size: about 410 lines of code, kept in one file on purpose: the join
//! phase and the frame pump share the stream, the close-frame and
//! read-error helpers and the `Ended` record, and every bound of a
//! connection (deadlines, stalls, heartbeats, expiry) is read here in order.

use super::WsConfig;
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
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tracing::{debug, info};

/// Frames written per flush at most, so one busy connection cannot hog the
/// task.
const WRITE_BATCH: usize = 64;

enum First {
    Text(String),
    Closed(&'static str),
    Fail(CloseCode, &'static str),
}

async fn first_frame<S>(stream: &mut WebSocketStream<S>) -> First
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
        _ => First::Closed("connection error"),
    }
}

/// Sends a close frame and waits briefly for the peer's. A peer that does
/// not take the frame within `stall` (it stopped reading: the socket is
/// full) is dropped without it.
async fn send_close<S>(
    stream: &mut WebSocketStream<S>,
    code: CloseCode,
    reason: &str,
    stall: Duration,
) where
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
    mut stream: WebSocketStream<S>,
    service: Arc<dyn CollaborationService>,
    config: &WsConfig,
    metrics: &dyn Metrics,
    document: DocumentId,
    bearer: Option<String>,
    slot: ConnectionSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let opened = Instant::now();
    // The join phase is boxed: its state (timeouts, close handshakes) is
    // freed once joined instead of sizing every idle connection's task.
    let Some(started) = Box::pin(join_phase(
        &mut stream,
        &*service,
        config,
        metrics,
        document,
        bearer,
        slot,
    ))
    .await
    else {
        return;
    };
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

/// Waits for the `join` (within AUTH_TIMEOUT) and hands it to the service.
async fn join_phase<S>(
    stream: &mut WebSocketStream<S>,
    service: &dyn CollaborationService,
    config: &WsConfig,
    metrics: &dyn Metrics,
    document: DocumentId,
    bearer: Option<String>,
    slot: ConnectionSlot,
) -> Option<Started>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let first = match tokio::time::timeout(config.auth_timeout, first_frame(stream)).await {
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
            send_close(stream, code, why, config.heartbeat_timeout).await;
            return None;
        }
    };
    metrics.message_received(text.len());
    let join = match ClientMessage::decode(&text) {
        Ok(ClientMessage::Join(j)) => j,
        Ok(_) => {
            metrics.connection_rejected(RejectReason::BadRequest);
            bad_first(stream, "the first message must be `join`", config).await;
            return None;
        }
        Err(e) => {
            metrics.connection_rejected(RejectReason::BadRequest);
            bad_first(stream, &e.message, config).await;
            return None;
        }
    };
    match service.join(slot, document, bearer, join).await {
        Ok(s) => Some(s),
        Err(refusal) => {
            // Counted by the service, which knows why.
            let reason = refusal.to_string();
            info!(target: "relay::connection", %document, close_code = refusal.close_code().as_u16(), %reason, "join refused");
            if let Some(code) = refusal.error_code() {
                let frame = ServerMessage::error(code, &reason, None, true).encode();
                let send = stream.send(Message::text(frame));
                let _ = tokio::time::timeout(config.heartbeat_timeout, send).await;
            }
            send_close(
                stream,
                refusal.close_code(),
                &reason,
                config.heartbeat_timeout,
            )
            .await;
            None
        }
    }
}

async fn bad_first<S>(stream: &mut WebSocketStream<S>, message: &str, config: &WsConfig)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = ServerMessage::error(ErrorCode::BadMessage, message, None, true).encode();
    let _ = stream.send(Message::text(frame)).await;
    send_close(
        stream,
        CloseCode::BadFirstMessage,
        "the first message must be a valid join",
        config.heartbeat_timeout,
    )
    .await;
}

/// Moves frames until the connection ends; returns why.
async fn pump<S>(
    stream: &mut WebSocketStream<S>,
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
    stream: &mut WebSocketStream<S>,
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
/// flushes. A write that makes no progress for `stall` means the client
/// stopped reading (it is not answering pings either, and the heartbeat
/// cannot fire while a write is pending): the connection is dropped rather
/// than holding its task, slot and socket buffers forever. Returns a reason
/// if the connection ended.
async fn write_batch<S>(
    stream: &mut WebSocketStream<S>,
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
        match out {
            Outbound::Text(_) | Outbound::Joined(_) => {
                let frame = out.text().unwrap_or_default();
                match timeout(stall, stream.feed(Message::text(frame.as_ref()))).await {
                    Ok(Ok(())) => {
                        metrics.message_sent(frame.len());
                        counts.sent += 1;
                    }
                    Ok(Err(_)) => return Some(Ended::dropped("connection error")),
                    Err(_) => return Some(Ended::dropped(STALLED)),
                }
            }
            Outbound::Close(order) => {
                if let Err(_) | Ok(Err(_)) = timeout(stall, stream.flush()).await {
                    return Some(Ended::dropped(order.reason));
                }
                Box::pin(send_close(stream, order.code, &order.reason, stall)).await;
                return Some(Ended::sent(order.code, order.reason));
            }
        }
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
