//! What rooms and sessions are wired with: the outbound [`Ports`], and the
//! [`Instance`] around them (who this instance is, its configuration and
//! the tracker of its room tasks).

use crate::config::Config;
use relay_ports::{
    Clock, FanOut, InstanceId, Metrics, OperationStore, PermissionSource, PresenceRegistry,
    TokenVerifier,
};
use std::sync::Arc;
use std::time::Duration;

/// The adapter behind each outbound port: what the wiring builds from the
/// configuration (and what a test builds by hand).
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn OperationStore>,
    pub bus: Arc<dyn FanOut>,
    pub presence: Arc<dyn PresenceRegistry>,
    pub permissions: Arc<dyn PermissionSource>,
    pub verifier: Arc<dyn TokenVerifier>,
    pub metrics: Arc<dyn Metrics>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ports")
    }
}

/// This instance, as its rooms and sessions share it: the ports, and what
/// is not a port.
pub(crate) struct Instance {
    pub ports: Arc<Ports>,
    /// Who this instance is on the bus (its own envelopes come back).
    pub id: InstanceId,
    pub config: Arc<Config>,
    /// Every room task, so shutdown can wait for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// The check of every open room against its document's head in the
    /// store (bounded staleness).
    pub heads: Arc<crate::heads::HeadWatch>,
}

impl Instance {
    /// How long a presence entry lives without a refresh.
    pub(crate) fn presence_ttl(&self) -> Duration {
        self.config.presence_ttl()
    }

    /// How often this instance refreshes its entries.
    pub(crate) fn presence_refresh(&self) -> Duration {
        self.presence_ttl() / 3
    }
}
