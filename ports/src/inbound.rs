//! The inbound port: the collaboration service that a transport (the
//! WebSocket adapter) drives, one [`Session`] per connection.
//!
//! The transport owns the socket: framing, size limits, heartbeats, the
//! join timeout and close frames. The service owns everything the protocol
//! means: authentication, rooms, sequencing, presence. Everything the
//! service says to a client arrives on the session's bounded outbound queue
//! in order; the transport writes it out and closes when told to.

use crate::auth::AuthError;
use crate::metrics::RejectReason;
use crate::protocol::{ClientMessage, CloseCode, DecodeError, ErrorCode, Join};
use async_trait::async_trait;
use relay_domain::DocumentId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Something to write to the client. Kept to two words: every connection's
/// queue holds blocks of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// One text message (a JSON object).
    Text(Arc<str>),
    /// One text message made of three pieces, whose middle is shared: a
    /// `joined` whose document content is encoded once per version for
    /// every client joining at it. The transport writes the pieces as one
    /// message without joining them into a copy.
    Joined(Box<JoinedFrame>),
    /// Close the connection with this code after what came before.
    Close(Box<CloseOrder>),
}

/// A text message of `head`, `shared` and `tail`, in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedFrame {
    pub head: String,
    pub shared: Arc<str>,
    pub tail: String,
}

impl JoinedFrame {
    /// The whole message (for tests and in-process clients).
    pub fn text(&self) -> String {
        [self.head.as_str(), &self.shared, &self.tail].concat()
    }

    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.shared.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Outbound {
    /// The bytes this item holds for its connection alone, counted against
    /// OUTBOUND_QUEUE_BYTES: a text's length, a `joined`'s own pieces (its
    /// shared content is one allocation for all joiners at that version).
    pub fn charge(&self) -> usize {
        match self {
            Outbound::Text(t) => t.len(),
            Outbound::Joined(j) => j.head.len() + j.tail.len(),
            Outbound::Close(_) => 0,
        }
    }

    /// The text message, whole (`None` for a close).
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Outbound::Text(t) => Some(std::borrow::Cow::Borrowed(t)),
            Outbound::Joined(j) => Some(std::borrow::Cow::Owned(j.text())),
            Outbound::Close(_) => None,
        }
    }
}

/// The two ends of one connection's outbound queue: at most `frames` items,
/// and at most `bytes` of [`Outbound::charge`] waiting at once.
pub fn outbound_queue(frames: usize, bytes: usize) -> (OutboundSender, OutboundQueue) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let charged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (
        OutboundSender {
            tx,
            charged: charged.clone(),
            limit: bytes,
        },
        OutboundQueue { rx, charged },
    )
}

/// Why an item did not enter an outbound queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The queue holds its most items, or its most bytes: the client is not
    /// keeping up.
    Full,
    /// The transport's end is gone.
    Closed,
}

/// The service's end of an outbound queue.
#[derive(Clone, Debug)]
pub struct OutboundSender {
    tx: mpsc::Sender<Outbound>,
    charged: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

impl OutboundSender {
    /// Queues `item` unless that would pass the item or byte bound.
    pub fn try_send(&self, item: Outbound) -> Result<(), QueueRefusal> {
        use std::sync::atomic::Ordering;
        let charge = item.charge();
        let before = self.charged.fetch_add(charge, Ordering::AcqRel);
        if before.saturating_add(charge) > self.limit {
            self.charged.fetch_sub(charge, Ordering::AcqRel);
            return Err(QueueRefusal::Full);
        }
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.charged.fetch_sub(charge, Ordering::AcqRel);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => QueueRefusal::Full,
                    mpsc::error::TrySendError::Closed(_) => QueueRefusal::Closed,
                })
            }
        }
    }

    /// Bytes charged to the queue now.
    pub fn charged(&self) -> usize {
        self.charged.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The transport's end of an outbound queue.
#[derive(Debug)]
pub struct OutboundQueue {
    rx: mpsc::Receiver<Outbound>,
    charged: Arc<std::sync::atomic::AtomicUsize>,
}

impl OutboundQueue {
    fn taken(&self, item: Option<Outbound>) -> Option<Outbound> {
        if let Some(item) = &item {
            self.charged
                .fetch_sub(item.charge(), std::sync::atomic::Ordering::AcqRel);
        }
        item
    }

    /// The next item; `None` once the service's ends are all gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await;
        self.taken(item)
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let item = self.rx.try_recv().ok();
        self.taken(item)
    }
}

/// A reserved connection slot; dropping it frees the slot.
pub struct ConnectionSlot(#[allow(dead_code)] Box<dyn Send + Sync>);

impl ConnectionSlot {
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        ConnectionSlot(Box::new(guard))
    }
}

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionSlot")
    }
}

/// Why a connection is refused before the upgrade.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("at MAX_CONNECTIONS")]
    AtCapacity { retry_after_secs: u64 },
    #[error("draining for shutdown")]
    Draining { retry_after_secs: u64 },
}

/// Why a join was refused. The transport sends an `error` frame when
/// [`error_code`](Self::error_code) has one, then closes with
/// [`close_code`](Self::close_code). Every text is fixed: nothing of the
/// client's input and no internal error is in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("no token: send `Authorization: Bearer` or `join.token`")]
    NoToken,
    #[error("{0}")]
    Token(AuthError),
    #[error("token keys unavailable; try again later")]
    KeysUnavailable,
    #[error("no access to this document")]
    Forbidden,
    #[error("permissions unavailable; try again later")]
    PermissionsUnavailable,
    #[error("the document cannot be opened right now; try again later")]
    DocumentUnavailable,
    /// The document's room closed under every join attempt.
    #[error("could not open the document; try again")]
    RoomUnreachable,
    /// The user has MAX_CONNECTIONS_PER_USER joined connections on this
    /// instance.
    #[error("too many connections for this user; retry later")]
    TooManyConnections,
    /// The user joined faster than JOIN_RATE_PER_SEC (burst JOIN_BURST) on
    /// this instance.
    #[error("too many joins for this user; retry later")]
    JoinRateExceeded,
}

impl JoinRefusal {
    /// How the connection is closed.
    pub fn close_code(&self) -> CloseCode {
        match self {
            JoinRefusal::NoToken => CloseCode::Unauthenticated,
            JoinRefusal::Token(AuthError::Unavailable) => CloseCode::TryAgainLater,
            JoinRefusal::Token(_) => CloseCode::Unauthenticated,
            JoinRefusal::Forbidden => CloseCode::Forbidden,
            JoinRefusal::TooManyConnections | JoinRefusal::JoinRateExceeded => {
                CloseCode::TooManyRequests
            }
            JoinRefusal::KeysUnavailable
            | JoinRefusal::PermissionsUnavailable
            | JoinRefusal::DocumentUnavailable
            | JoinRefusal::RoomUnreachable => CloseCode::TryAgainLater,
        }
    }

    /// The `error` frame's code sent before the close, if any.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            JoinRefusal::DocumentUnavailable => Some(ErrorCode::Unavailable),
            JoinRefusal::RoomUnreachable => Some(ErrorCode::Internal),
            _ => None,
        }
    }

    /// What the refusal counts as in `materi_websocket_connections_rejected_total`.
    pub fn reject_reason(&self) -> RejectReason {
        match self.close_code() {
            CloseCode::Unauthenticated => RejectReason::Unauthorized,
            CloseCode::Forbidden => RejectReason::Forbidden,
            CloseCode::TooManyRequests => RejectReason::RateLimited,
            _ => RejectReason::Unavailable,
        }
    }
}

/// An order to close a connection now, skipping whatever is still queued
/// (the client cannot keep up, or the server is going away).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseOrder {
    pub code: CloseCode,
    pub reason: String,
}

/// A joined connection.
pub struct Started {
    pub session: Box<dyn Session>,
    /// What to send, starting with `joined`, in order. The queue is bounded:
    /// a client that cannot keep up gets a [`CloseOrder`] instead.
    pub outbound: OutboundQueue,
    /// Set when the connection must close at once.
    pub close: watch::Receiver<Option<CloseOrder>>,
    /// Who joined, for the transport's connection log lines.
    pub user: relay_domain::UserId,
    pub client_id: relay_domain::ClientId,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Started")
    }
}

/// The collaboration service.
#[async_trait]
pub trait CollaborationService: Send + Sync + 'static {
    /// Reserves a slot for a new connection, or refuses (`503`).
    fn admit(&self) -> Result<ConnectionSlot, Refusal>;

    /// Handles the first message. `bearer` is the token from the upgrade's
    /// `Authorization` header, if any; `join.token` is used otherwise.
    async fn join(
        &self,
        slot: ConnectionSlot,
        document: DocumentId,
        bearer: Option<String>,
        join: Join,
    ) -> Result<Started, JoinRefusal>;

    /// What `/health` reports.
    fn health(&self) -> Health;

    /// What `/ready` reports: each dependency's check, and whether the
    /// service is draining.
    async fn readiness(&self) -> Readiness;
}

/// `/health` figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub active_connections: usize,
    pub active_documents: usize,
}

/// What `/ready` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    /// The operation store (PostgreSQL) answers and its writes progress.
    Database,
    /// The fan-out bus (Redis) answers.
    Redis,
    /// A usable token verification key is loaded.
    JwtKeys,
}

impl Dependency {
    /// Its name in `/ready`'s `checks`.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::Redis => "redis",
            Dependency::JwtKeys => "jwt_keys",
        }
    }
}

/// `/ready` checks, each dependency with whether it is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub checks: Vec<(Dependency, bool)>,
    pub draining: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        !self.draining && self.checks.iter().all(|(_, ok)| *ok)
    }
}

/// One joined connection, driven by its transport.
#[async_trait]
pub trait Session: Send {
    /// A decoded client message after `join`. Replies go to the outbound
    /// queue.
    async fn handle(&mut self, message: ClientMessage);

    /// A frame that did not decode: answered with an `error` message, the
    /// connection stays open.
    fn reject(&mut self, error: DecodeError);

    /// Time left before the token expires (then the transport closes 4401).
    fn until_expiry(&self) -> Option<Duration>;

    /// The connection is gone (or being closed by the transport): leave the
    /// room. `reason` is for the log.
    async fn close(self: Box<Self>, reason: &str);
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_in_bytes_and_items_and_frees_what_is_taken() {
        let (tx, mut rx) = outbound_queue(3, 10);
        assert_eq!(tx.try_send(Outbound::Text("123456".into())), Ok(()));
        assert_eq!(
            tx.try_send(Outbound::Text("12345".into())),
            Err(QueueRefusal::Full)
        );
        assert_eq!(tx.try_send(Outbound::Text("1234".into())), Ok(()));
        assert_eq!(tx.charged(), 10);
        let joined = Outbound::Joined(Box::new(JoinedFrame {
            head: String::new(),
            shared: "x".repeat(1000).into(),
            tail: String::new(),
        }));
        assert_eq!(
            tx.try_send(joined),
            Ok(()),
            "a shared content is not charged"
        );
        assert_eq!(
            tx.try_send(Outbound::Text("".into())),
            Err(QueueRefusal::Full),
            "at 3 items"
        );
        assert_eq!(rx.try_recv(), Some(Outbound::Text("123456".into())));
        assert_eq!(tx.charged(), 4);
        assert_eq!(tx.try_send(Outbound::Text("123456".into())), Ok(()));
        drop(rx);
        assert_eq!(
            tx.try_send(Outbound::Text("".into())),
            Err(QueueRefusal::Closed)
        );
    }
}
