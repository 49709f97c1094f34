//! Relay's ports: the contract between the application and the outside.
//!
//! # Layout
//!
//! - [`protocol`]: the wire protocol (PROTOCOL.md) - client and server
//!   messages, error and close codes, JSON encoding and decoding.
//! - [`inbound`]: what drives Relay - the [`CollaborationService`] and its
//!   per-connection [`Session`], driven by the WebSocket adapter.
//! - [`error`]: [`Cause`], the adapter's error a port error carries as its
//!   source, and [`Chain`] to log an error with its sources.
//! - Outbound, what Relay drives (each trait documents which outcome an
//!   adapter must return in which case; expected outcomes are values):
//!   - [`store`]: [`OperationStore`], the durable log and snapshots;
//!   - [`bus`]: [`FanOut`], ops and presence between instances;
//!   - [`presence`]: [`PresenceRegistry`], who is here across instances;
//!   - [`auth`]: [`TokenVerifier`] and [`PermissionSource`];
//!   - [`metrics`]: [`Metrics`], with the deployment document's names;
//!   - [`clock`]: the [`Clock`].
//! - `contract` (feature `contract`): one test suite per outbound port,
//!   written once and run against every adapter.
//!
//! With the `mocks` feature every outbound trait has a mockall mock
//! (`MockOperationStore`, ...), and [`store::Tapped`] wraps a real store to
//! watch or hold its calls.

pub mod auth;
pub mod bus;
pub mod clock;
#[cfg(feature = "contract")]
pub mod contract;
pub mod error;
pub mod inbound;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod store;

pub use auth::{
    AuthError, ClaimName, Claims, DocsClaim, InvalidToken, PermissionError, PermissionSource,
    TokenVerifier,
};
pub use bus::{BusError, BusEvent, BusMessage, Envelope, FanOut, InstanceId, Subscription};
pub use clock::Clock;
pub use error::{Cause, Chain};
pub use inbound::{
    CloseOrder, CollaborationService, ConnectionSlot, Dependency, Health, JoinRefusal, JoinedFrame,
    Outbound, OutboundQueue, OutboundSender, QueueRefusal, Readiness, Refusal, Session, Started,
    outbound_queue,
};
pub use metrics::{Metrics, NoMetrics, OpStatus, OperationType};
pub use presence::{Held, PresenceError, PresenceRegistry};
pub use protocol::{ClientMessage, DecodeError, ErrorCode, Join, Role, ServerMessage};
pub use store::{Append, Loaded, OperationStore, Snapshot, StoreError};
