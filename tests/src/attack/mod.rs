//! The standing attack suite's harness (`tests/tests/attack.rs`; see
//! `docs/testing.md`, "The attack suite"): a release-built `relay` process
//! per case on loopback ([`target`]), attackers and bystanders on different
//! addresses of 127.0.0.0/8 ([`net`]), honest editors measuring their ack
//! latency before and during the attack ([`bystander`]) and the checks
//! every case shares ([`case`]).

pub mod bystander;
pub mod case;
pub mod net;
pub mod soak;
pub mod target;

pub use case::{ATTACKER, ATTACKER_2, CHECKER, Ctx, HONEST, run, run_prepared};
pub use net::{Ending, Got, Raw, Refused, Ws, op};
pub use target::{Setup, Target};
