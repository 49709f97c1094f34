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
//! - `rooms`: the registry of open rooms.
//! - `sink`: a session's bounded outbound queue and close order.
//! - [`wiring`]: builds the adapters a configuration asks for.

pub mod config;
mod deps;
#[cfg(test)]
mod join_cost_tests;
#[cfg(test)]
mod permission_tests;
mod permissions;
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
mod users;
pub mod wiring;
#[cfg(test)]
mod write_path_tests;

pub use deps::Adapters;
pub use service::{Check, Relay};
