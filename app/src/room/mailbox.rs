//! What a room is sent, and who a session is: the room's mailbox type,
//! named by the service and the sessions, knowing nothing of the room.

use crate::sink::Sink;
use relay_domain::{ClientId, Selection, Submission, UserId, Version};
use relay_ports::StoreError;
use relay_ports::protocol::Role;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A session of this instance, numbered by the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SessionId(u64);

impl SessionId {
    pub(crate) fn new(n: u64) -> SessionId {
        SessionId(n)
    }
}

/// The `joined.session` the client sees: 16 hex digits.
impl std::fmt::LowerHex for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who a session is, as the room needs it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub id: SessionId,
    pub user: UserId,
    pub client_id: ClientId,
    pub name: Option<String>,
    pub role: Role,
}

/// A failed join: the store could not be read (the cause is logged).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("the document cannot be opened")]
    Unavailable(#[source] StoreError),
}

pub(crate) enum Command {
    Join {
        member: Member,
        since: Option<Version>,
        sink: Sink,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Submit {
        session: SessionId,
        submission: Submission,
        received: Instant,
    },
    Cursor {
        session: SessionId,
        version: Version,
        selection: Option<Selection>,
    },
    Typing {
        session: SessionId,
    },
    Leave {
        session: SessionId,
        reason: String,
    },
    /// Tell every session the server is draining: each reconnects after
    /// `min_ms` plus a random share of `spread_ms`.
    Shutdown {
        min_ms: u64,
        spread_ms: u64,
    },
    /// Close every session now (1001).
    CloseAll,
    /// Snapshot and stop (the server is shutting down).
    Stop,
}

/// What a command holds in memory while it waits in the mailbox: a
/// submit's delta (up to MAX_MESSAGE_BYTES of JSON), a few bytes else.
impl crate::registry::Weigh for Command {
    fn weight(&self) -> usize {
        std::mem::size_of::<Command>()
            + match self {
                Command::Submit { submission, .. } => {
                    submission.delta.heap_bytes() + submission.client_id.as_str().len()
                }
                Command::Join { member, .. } => {
                    member.client_id.as_str().len() + member.name.as_ref().map_or(0, String::len)
                }
                Command::Leave { reason, .. } => reason.len(),
                _ => 0,
            }
    }
}
