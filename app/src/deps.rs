//! What the application is wired with: the outbound ports and the
//! configuration.

use crate::config::Config;
use relay_ports::{
    Clock, FanOut, InstanceId, Metrics, OperationStore, PermissionSource, PresenceRegistry,
    TokenVerifier,
};
use std::sync::Arc;
use std::time::Duration;

/// The adapters behind each outbound port.
#[derive(Clone)]
pub struct Adapters {
    pub store: Arc<dyn OperationStore>,
    pub bus: Arc<dyn FanOut>,
    pub presence: Arc<dyn PresenceRegistry>,
    pub permissions: Arc<dyn PermissionSource>,
    pub verifier: Arc<dyn TokenVerifier>,
    pub metrics: Arc<dyn Metrics>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Adapters")
    }
}

pub(crate) struct Deps {
    pub store: Arc<dyn OperationStore>,
    pub bus: Arc<dyn FanOut>,
    pub presence: Arc<dyn PresenceRegistry>,
    pub metrics: Arc<dyn Metrics>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub instance: InstanceId,
    /// Every room task, so shutdown can wait for them.
    pub tasks: tokio_util::task::TaskTracker,
}

impl Deps {
    /// How long a presence entry lives without a refresh.
    pub(crate) fn presence_ttl(&self) -> Duration {
        self.config.presence_ttl()
    }

    /// How often this instance refreshes its entries.
    pub(crate) fn presence_refresh(&self) -> Duration {
        self.presence_ttl() / 3
    }
}
