//! In-memory adapters.
//!
//! Every outbound port has one, so the whole service runs, and is tested
//! end to end, with no outside server. Each type says how far it can be
//! trusted:
//!
//! - [`MemoryStore`]: the operation store, for development and tests only
//!   (nothing survives a restart);
//! - [`MemoryBus`]: the fan-out bus, fine in production for a single
//!   instance, blind to other instances;
//! - [`MemoryPresence`]: the presence registry, single instance, with TTLs
//!   read from an injected [`Clock`](relay_ports::Clock);
//! - [`ClaimsPermissions`]: roles from the token's `docs` claim (production,
//!   `PERMISSION_SOURCE=claims`); [`MemoryPermissions`]: grants set by tests;
//! - [`MemoryMetrics`]: counts kept in memory, read back by tests;
//! - [`clock`]: [`SystemClock`], [`TokioClock`] (follows tokio's paused
//!   time) and [`ManualClock`].

pub mod bus;
pub mod clock;
pub mod metrics;
pub mod permissions;
pub mod presence;
pub mod store;

pub use bus::MemoryBus;
pub use clock::{ManualClock, SystemClock, TokioClock};
pub use metrics::MemoryMetrics;
pub use permissions::{ClaimsPermissions, MemoryPermissions};
pub use presence::MemoryPresence;
pub use store::MemoryStore;
