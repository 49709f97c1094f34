//! Helpers shared by the app's unit tests: reading what a session is sent.

use relay_ports::Outbound;
use relay_ports::OutboundQueue as Receiver;
use relay_ports::protocol::ServerMessage;
use std::time::Duration;

/// How long a test waits for the next frame before it fails.
const FRAME_WAIT: Duration = Duration::from_secs(5);

/// The next frame a session is sent; panics when none comes within 5 s
/// or the queue is closed.
pub(crate) async fn next_frame(rx: &mut Receiver) -> Outbound {
    tokio::time::timeout(FRAME_WAIT, rx.recv())
        .await
        .expect("a frame in time")
        .expect("queue open")
}

/// The next frame, which must be a message.
pub(crate) async fn next_message(rx: &mut Receiver) -> ServerMessage {
    match next_frame(rx).await {
        Outbound::Close(c) => panic!("expected a message, got a close: {c:?}"),
        text => ServerMessage::decode(&text.text().expect("a text")).unwrap(),
    }
}

/// Every message queued for a session right now (up to the first frame
/// that is not one).
pub(crate) fn drain(rx: &mut Receiver) -> Vec<ServerMessage> {
    let mut out = Vec::new();
    while let Some(item) = rx.try_recv() {
        let Some(text) = item.text() else { break };
        out.push(ServerMessage::decode(&text).unwrap());
    }
    out
}
