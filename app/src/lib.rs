//! Relay's application layer: the collaboration service (the inbound port's
//! implementation) and the composition root of the `relay` binary.
//!
//! # Layout
//!
//! - [`config`]: every variable of the deployment document, validated.
//! - `service`: [`Relay`] - admission, authentication, routing sessions to
//!   rooms, readiness, graceful shutdown.
//! - `session`: one connection's session (permission checks, the submit
//!   and presence rates, forwarding).
//! - `users`: each user's connections and joins on this instance.
//! - `permissions`: the join cache of roles, and the re-checks of open
//!   sessions' roles.
//! - `room`: one task per open document owning its sequencer - the write
//!   path with group commit and the compare-and-set loop, fan-out, presence,
//!   cursor throttle and typing debounce.
//! - `registry`: the registry of open rooms.
//! - `sink`: a session's bounded outbound queue and close order.
//! - `ports`: [`Ports`], the adapter behind each outbound port, and the
//!   `Instance` rooms and sessions share (the ports, this instance's id,
//!   the configuration, the room tasks).
//! - [`wiring`]: builds the ports a configuration asks for, and the service
//!   on them.
//! - `testing` (feature `testing`): the in-memory ports tests build by
//!   hand, with a handle on their metrics.

pub mod config;
mod heads;
#[cfg(test)]
mod join_cost_tests;
#[cfg(test)]
mod permission_tests;
mod permissions;
mod ports;
#[cfg(test)]
mod presence_tests;
mod registry;
mod room;
mod service;
mod session;
mod sink;
pub mod telemetry;
#[cfg(test)]
mod test_support;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod users;
pub mod wiring;
#[cfg(test)]
mod write_path_tests;

pub use ports::Ports;
pub use service::{Check, Relay};
