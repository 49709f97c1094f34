//! Relay's domain: the pure core of the collaboration service.
//!
//! Nothing here does I/O, awaits, or reads a clock; time is a parameter
//! ([`Timestamp`]). Everything that talks to the outside world sits behind
//! the ports crate.
//!
//! # Layout
//!
//! - [`attributes`]: formatting attribute maps and how they compose,
//!   transform and invert.
//! - [`delta`]: the operation type ([`Delta`] of [`Component`]s), its
//!   normalising builder, its JSON wire form and its [`OperationKind`].
//! - [`json_size`]: bytes as JSON (one counting writer) and the byte
//!   bounds the size limits are built from.
//! - [`ot`]: compose, transform (with an explicit [`Side`]) and position
//!   transformation ([`Bias`]); the laws are stated there.
//! - [`document`]: a [`Document`] - rope text, formatting runs, version -
//!   and `Delta::invert` against it.
//! - [`sequencer`]: the per-document [`Sequencer`]: dedup, rebase, propose,
//!   commit, and the compare-and-set loop with other instances.
//! - [`client`]: the client-side OT state machine ([`Client`]).
//! - [`selection`]: a caret or [`Selection`] (`anchor` and `head`).
//! - [`presence`]: the [`Roster`] of clients and their selections.
//! - [`throttle`]: [`CursorThrottle`], [`TypingDebounce`], [`RateLimiter`].
//! - [`ids`]: validated identifiers ([`ClientId`], [`UserId`], ...) and
//!   counters ([`Version`], [`Seq`]), [`Timestamp`] and [`Role`].
//! - [`wire_name`]: the name serde gives an enum's unit variant, for
//!   `as_str` methods that must say what the wire says.
//! - `testing` (feature `testing`): checks shared by the domain's tests
//!   and the fuzz targets (`testing::assert_normal`).

pub mod attributes;
pub mod client;
pub mod delta;
pub mod document;
pub mod ids;
pub mod json_size;
pub mod ot;
pub mod presence;
pub mod selection;
pub mod sequencer;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;
pub mod wire_name;

pub use attributes::Attributes;
pub use client::{Client, ClientError, Outgoing, Refused};
pub use delta::{Component, Delta, DeltaError, OperationKind};
pub use document::Document;
pub use ids::{ClientId, DocumentId, InvalidClientId, Role, Seq, Timestamp, UserId, Version};
pub use ot::{Bias, Side};
pub use presence::{Departed, PresenceEntry, Roster};
pub use selection::Selection;
pub use sequencer::{
    CommittedOp, OpKey, Proposed, Rejection, RemoteError, Sequencer, SequencerConfig, Submission,
    rebase_over_log,
};
pub use throttle::{CursorThrottle, RateLimiter, TypingDebounce};
