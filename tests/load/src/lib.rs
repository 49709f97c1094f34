//! `relay-load`: the load tool operators size Relay with.
//!
//! N WebSocket connections over M documents, a share of them viewers, opened
//! at a set rate from several loopback source addresses; editors replay
//! slices of real editing traces on an open-loop schedule through the
//! domain's OT client, with carets and typing signals. It measures ack and
//! delivery latency from when each edit was due, throughput, errors and
//! close codes, and the server's RSS and CPU from `/proc`; at the end every
//! client must hold what a late joiner gets. Results go to a JSON file and
//! plots. See docs/performance.md and `scenarios/`.

pub mod client;
pub mod plot;
pub mod procfs;
pub mod run;
pub mod scenario;
pub mod server;
pub mod stats;
pub mod summary;
pub mod trace;

pub use run::{Options, RunResult, Tokens, run};
pub use scenario::{Churn, Scenario};
