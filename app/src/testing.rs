//! What tests build by hand (feature `testing`, and the app's own tests):
//! the in-memory ports with a handle on their metrics, and the service on
//! them. The binary's wiring builds its ports from the configuration
//! instead ([`crate::wiring::build_with`]).

use crate::config::Config;
use crate::ports::Ports;
use crate::service::Relay;
use crate::wiring::{Background, Wired, dev_verifier};
use relay_adapter_jwt::DevKeys;
use relay_adapter_memory::{
    ClaimsPermissions, MemoryBus, MemoryMetrics, MemoryPresence, MemoryStore, TokioClock,
};
use relay_ports::TokenVerifier;
use std::sync::Arc;

/// The in-memory ports around a token verifier, and the metrics they
/// record to. Tests swap fields (the permission source, the clock) before
/// building a [`Relay`].
pub fn memory_ports(verifier: Arc<dyn TokenVerifier>) -> (Ports, Arc<MemoryMetrics>) {
    let clock = Arc::new(TokioClock::new());
    let metrics = Arc::new(MemoryMetrics::default());
    let ports = Ports {
        store: Arc::new(MemoryStore::with_clock(clock.clone())),
        bus: Arc::new(MemoryBus::new()),
        presence: Arc::new(MemoryPresence::new(clock.clone())),
        permissions: Arc::new(ClaimsPermissions),
        verifier,
        metrics: metrics.clone(),
        clock,
    };
    (ports, metrics)
}

/// Everything in memory, tokens signed by `dev` (what most end-to-end
/// tests run against), and the metrics it records to.
pub fn in_memory(config: Config, dev: &DevKeys) -> (Wired, Arc<MemoryMetrics>) {
    let (ports, metrics) = memory_ports(dev_verifier(&config, dev));
    let wired = Wired {
        relay: Relay::new(config, ports, Vec::new()),
        jwks: Some(dev.jwks_json().into()),
        metrics: metrics.clone(),
        jwks_verifier: None,
        background: Background::default(),
    };
    (wired, metrics)
}
