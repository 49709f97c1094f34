//! Contract test suites, one per outbound port, written once and run
//! against every adapter (in-memory, PostgreSQL, Redis...). Each suite is a
//! set of async functions taking a factory for the adapter, `make: &impl
//! AsyncFn() -> S` (an `async fn`, an async closure, or a closure returning
//! a future), and a `run_all` that runs every one of them, so an adapter
//! cannot leave a case out.
//!
//! Every case works on fresh random ids (documents, users), so a factory
//! may hand out the same store or bus each time: a shared real database or
//! Redis works as well as a fresh in-memory adapter. A case that fails
//! panics with a message saying which promise of the port was broken.
//!
//! The suites: [`store`] for the
//! [`OperationStore`](crate::OperationStore), including "exactly one of N
//! concurrent appends at version v wins"; [`bus`] for the
//! [`FanOut`](crate::FanOut); [`presence`] for the
//! [`PresenceRegistry`](crate::PresenceRegistry), with time advanced by the
//! caller; [`permissions`] for the
//! [`PermissionSource`](crate::PermissionSource), both a source reading the
//! token's `docs` claim and one holding grants.

pub mod bus;
pub mod clock;
pub mod metrics;
pub mod permissions;
pub mod presence;
pub mod store;
pub mod verifier;

use futures::future::BoxFuture;
use relay_domain::{ClientId, DocumentId, UserId};
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// Spawns a task on the caller's runtime, e.g.
/// `&|task| { tokio::spawn(task); }`. Suites that race tasks take one
/// because this crate depends on tokio without its runtime.
pub type Spawn = dyn Fn(BoxFuture<'static, ()>) + Send + Sync;

/// How long a case waits for something the port promised before failing.
/// Only a broken adapter ever waits this long.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A document no other case (or earlier run against a shared database)
/// has used.
pub fn fresh_document() -> DocumentId {
    DocumentId::new(Uuid::new_v4())
}

/// A user no other case has used.
pub fn fresh_user() -> UserId {
    UserId::new(Uuid::new_v4())
}

pub(crate) fn client(name: &str) -> ClientId {
    ClientId::new(name).expect("test client ids are 1 to 64 characters")
}

/// Awaits `future`, failing the case if it takes longer than [`PATIENCE`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing after {PATIENCE:?}"),
    }
}
