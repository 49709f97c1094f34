//! One WebSocket connection: the join, then frames both ways until close.

use super::WsConfig;
use futures::{SinkExt, StreamExt};
use relay_domain::DocumentId;
use relay_ports::protocol::{ErrorCode, ServerMessage, close};
use relay_ports::{
    ClientMessage, CollaborationService, ConnectionSlot, Outbound, Session, Started,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::debug;

/// Frames written per flush at most, so one busy connection cannot hog the
/// task.
const WRITE_BATCH: usize = 64;

enum First {
    Text(String),
    Closed(&'static str),
    Fail(u16, &'static str),
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
                return First::Fail(close::UNSUPPORTED_DATA, "binary frames are not accepted");
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
            First::Fail(close::TOO_BIG, "message too big")
        }
        WsError::Utf8(_) => First::Fail(close::UNSUPPORTED_DATA, "text frame is not UTF-8"),
        WsError::Protocol(_) => First::Fail(close::POLICY, "WebSocket protocol error"),
        _ => First::Closed("connection error"),
    }
}

async fn send_close<S>(stream: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A close reason is limited to 123 bytes.
    let mut reason = reason.to_owned();
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = stream.send(Message::Close(Some(frame))).await;
    // Wait briefly for the peer's close so the close frame is not lost to a
    // reset; a peer that does not answer is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

pub(super) async fn run<S>(
    mut stream: WebSocketStream<S>,
    service: Arc<dyn CollaborationService>,
    config: &WsConfig,
    document: DocumentId,
    bearer: Option<String>,
    slot: ConnectionSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The join phase is boxed: its state (timeouts, close handshakes) is
    // freed once joined instead of sizing every idle connection's task.
    let Some(started) = Box::pin(join_phase(
        &mut stream,
        &*service,
        config,
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
    } = started;
    let reason = pump(
        &mut stream,
        &mut *session,
        &mut outbound,
        &mut close_rx,
        config,
    )
    .await;
    session.close(&reason).await;
}

/// Waits for the `join` (within AUTH_TIMEOUT) and hands it to the service.
async fn join_phase<S>(
    stream: &mut WebSocketStream<S>,
    service: &dyn CollaborationService,
    config: &WsConfig,
    document: DocumentId,
    bearer: Option<String>,
    slot: ConnectionSlot,
) -> Option<Started>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let first = match tokio::time::timeout(config.auth_timeout, first_frame(stream)).await {
        Err(_) => First::Fail(close::JOIN_TIMEOUT, "no join in time"),
        Ok(f) => f,
    };
    let text = match first {
        First::Text(t) => t,
        First::Closed(why) => {
            debug!(%document, why, "connection ended before join");
            return None;
        }
        First::Fail(code, why) => {
            debug!(%document, code, why, "connection refused before join");
            send_close(stream, code, why).await;
            return None;
        }
    };
    let join = match ClientMessage::decode(&text) {
        Ok(ClientMessage::Join(j)) => j,
        Ok(_) => {
            bad_first(stream, "the first message must be `join`").await;
            return None;
        }
        Err(e) => {
            bad_first(stream, &e.message).await;
            return None;
        }
    };
    match service.join(slot, document, bearer, join).await {
        Ok(s) => Some(s),
        Err(f) => {
            debug!(%document, code = f.close_code, reason = %f.reason, "join refused");
            if let Some(frame) = f.frame {
                let _ = stream.send(Message::text(frame.as_ref())).await;
            }
            send_close(stream, f.close_code, &f.reason).await;
            None
        }
    }
}

async fn bad_first<S>(stream: &mut WebSocketStream<S>, message: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = ServerMessage::error(ErrorCode::BadMessage, message, None, true).encode();
    let _ = stream.send(Message::text(frame)).await;
    send_close(
        stream,
        close::BAD_FIRST_MESSAGE,
        "the first message must be a valid join",
    )
    .await;
}

/// Moves frames until the connection ends; returns why.
async fn pump<S>(
    stream: &mut WebSocketStream<S>,
    session: &mut dyn Session,
    outbound: &mut tokio::sync::mpsc::Receiver<Outbound>,
    close_rx: &mut tokio::sync::watch::Receiver<Option<relay_ports::CloseOrder>>,
    config: &WsConfig,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
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
                    Box::pin(send_close(stream, order.code, &order.reason)).await;
                    return order.reason;
                }
            }
            out = outbound.recv() => {
                let Some(out) = out else {
                    Box::pin(send_close(stream, close::GOING_AWAY, "session ended")).await;
                    return "session ended".into();
                };
                if let Some(reason) = write_batch(stream, outbound, out).await {
                    return reason;
                }
            }
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    None => return "client went away".into(),
                    Some(Ok(Message::Text(t))) => match ClientMessage::decode(t.as_str()) {
                        Ok(m) => session.handle(m).await,
                        Err(e) => session.reject(e),
                    },
                    Some(Ok(Message::Binary(_))) => {
                        Box::pin(send_close(stream, close::UNSUPPORTED_DATA, "binary frames are not accepted")).await;
                        return "binary frame".into();
                    }
                    Some(Ok(Message::Close(_))) => return "client closed".into(),
                    // Pings are answered by tungstenite; pongs count as life.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        return match read_error(&e) {
                            First::Fail(code, why) => {
                                Box::pin(send_close(stream, code, why)).await;
                                why.into()
                            }
                            _ => "connection error".into(),
                        };
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= config.heartbeat_timeout {
                    Box::pin(send_close(stream, close::POLICY, "heartbeat timeout")).await;
                    return "heartbeat timeout".into();
                }
                if stream.send(Message::Ping(Default::default())).await.is_err() {
                    return "connection error".into();
                }
            }
            _ = &mut expires => {
                Box::pin(send_close(stream, close::UNAUTHENTICATED, "token expired")).await;
                return "token expired".into();
            }
        }
    }
}

/// Writes one outbound item and whatever else is already queued, then
/// flushes. Returns a reason if the connection ended.
async fn write_batch<S>(
    stream: &mut WebSocketStream<S>,
    outbound: &mut tokio::sync::mpsc::Receiver<Outbound>,
    first: Outbound,
) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut next = Some(first);
    let mut written = 0;
    while let Some(out) = next.take() {
        match out {
            Outbound::Text(frame) => {
                if stream.feed(Message::text(frame.as_ref())).await.is_err() {
                    return Some("connection error".into());
                }
            }
            Outbound::Close(order) => {
                let _ = stream.flush().await;
                Box::pin(send_close(stream, order.code, &order.reason)).await;
                return Some(order.reason);
            }
        }
        written += 1;
        if written < WRITE_BATCH {
            next = outbound.try_recv().ok();
        }
    }
    if stream.flush().await.is_err() {
        return Some("connection error".into());
    }
    None
}
