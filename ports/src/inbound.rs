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
    /// One text frame (a JSON message).
    Text(Arc<str>),
    /// Close the connection with this code after what came before.
    Close(Box<CloseOrder>),
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
}

impl JoinRefusal {
    /// How the connection is closed.
    pub fn close_code(&self) -> CloseCode {
        match self {
            JoinRefusal::NoToken => CloseCode::Unauthenticated,
            JoinRefusal::Token(AuthError::Unavailable) => CloseCode::TryAgainLater,
            JoinRefusal::Token(_) => CloseCode::Unauthenticated,
            JoinRefusal::Forbidden => CloseCode::Forbidden,
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
    pub outbound: mpsc::Receiver<Outbound>,
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
