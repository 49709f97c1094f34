//! The clock: the only way the application reads time, so tests can drive
//! it (a manual clock, or tokio's paused time).

use relay_domain::Timestamp;

#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}
