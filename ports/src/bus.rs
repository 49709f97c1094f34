//! The fan-out bus: how instances tell each other about committed ops and
//! presence. It is a latency path, never the source of truth: a subscriber
//! that lags or loses messages is told so ([`BusEvent::Lagged`]) and fills
//! gaps from the operation store.

use async_trait::async_trait;
use relay_domain::{ClientId, CommittedOp, Departed, DocumentId, PresenceEntry, UserId};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Identifies a Relay instance, so it can ignore its own messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceId(Uuid);

impl InstanceId {
    /// A new, random instance id.
    pub fn new_v4() -> InstanceId {
        InstanceId(Uuid::new_v4())
    }

    /// The id another instance sent (as read off the bus).
    pub fn from_uuid(id: Uuid) -> InstanceId {
        InstanceId(id)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

/// What instances publish about a document.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusMessage {
    /// Ops committed by the publisher, consecutive versions; `prev` is the
    /// identity of the op before the first, as the publisher holds it
    /// (absent when it no longer does): a subscriber whose history holds
    /// another op there knows the store lost or rewrote acknowledged ops.
    Ops {
        ops: Vec<CommittedOp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev: Option<relay_domain::OpKey>,
    },
    Joined {
        entry: PresenceEntry,
    },
    Left {
        departed: Departed,
    },
    Cursor {
        entry: PresenceEntry,
    },
    Typing {
        user: UserId,
        client_id: ClientId,
        active: bool,
    },
}

/// A message with where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub origin: InstanceId,
    pub document: DocumentId,
    pub message: BusMessage,
}

/// What a subscription delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    Message(Envelope),
    /// Messages were lost (slow subscriber, reconnect): resynchronise from
    /// the store.
    Lagged,
    /// The bus is down: nothing arrives until it is back (then `Lagged`).
    /// Meanwhile the subscriber polls the store for what others commit.
    Disconnected,
}

/// A document's subscription. Dropping it unsubscribes (and drops the
/// adapter's guard, e.g. aborting a forwarding task).
pub struct Subscription {
    pub events: mpsc::Receiver<BusEvent>,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl Subscription {
    pub fn new(events: mpsc::Receiver<BusEvent>, guard: Option<Box<dyn Send + Sync>>) -> Self {
        Subscription {
            events,
            _guard: guard,
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("fan-out bus unavailable")]
    Unavailable(#[source] crate::error::Cause),
}

#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait FanOut: Send + Sync + 'static {
    /// Sends to every subscriber of the document, this instance's included
    /// (they skip their own by `origin`). `Err(Unavailable)` when the bus is
    /// down; the message is then lost, which subscribers detect as a gap.
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError>;

    /// Subscribes to a document. Delivery is in publish order per
    /// publisher. When the subscriber falls behind (its bounded queue is
    /// full) or the connection is re-established, it receives `Lagged`.
    async fn subscribe(&self, document: DocumentId) -> Result<Subscription, BusError>;

    /// Whether the bus answers (for `/ready`).
    async fn ping(&self) -> Result<(), BusError>;
}
