//! Every port's contract suite against the in-memory adapters.

use relay_adapter_memory::{
    ClaimsPermissions, ManualClock, MemoryBus, MemoryPermissions, MemoryPresence, MemoryStore,
};
use relay_domain::Timestamp;
use relay_ports::contract::{bus, permissions, presence, store};
use std::sync::Arc;
use std::time::Duration;

async fn memory_store() -> MemoryStore {
    MemoryStore::new()
}

/// Small capacities, so overflowing a subscriber takes few messages.
async fn small_bus() -> MemoryBus {
    MemoryBus::with_capacity(16, 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_store_contract() {
    store::run_all(&memory_store, &|task| {
        tokio::spawn(task);
    })
    .await;
}

#[tokio::test]
async fn the_memory_bus_keeps_the_bus_contract() {
    let overflow_after = small_bus().await.overflow_after();
    bus::run_all(&small_bus, overflow_after).await;
}

#[tokio::test]
async fn the_memory_bus_with_default_capacities_keeps_the_bus_contract() {
    let overflow_after = MemoryBus::new().overflow_after();
    bus::run_all(&async || MemoryBus::new(), overflow_after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_bus_keeps_the_bus_contract_across_threads() {
    let overflow_after = small_bus().await.overflow_after();
    bus::run_all(&small_bus, overflow_after).await;
}

#[tokio::test]
async fn the_memory_presence_registry_keeps_the_presence_contract() {
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    presence::run_all(
        &async || MemoryPresence::new(Arc::new(clock.clone())),
        &async |by| clock.advance(by),
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test]
async fn claims_permissions_keep_the_claims_contract() {
    permissions::claims_source(&async || ClaimsPermissions::new()).await;
}

#[tokio::test]
async fn memory_permissions_keep_the_granted_contract() {
    permissions::granted_source(
        &async || MemoryPermissions::new(),
        &async |source: &MemoryPermissions, user, document, role| match role {
            Some(role) => source.grant(user, document, role),
            None => source.revoke(user, document),
        },
    )
    .await;
}

#[test]
fn the_clocks_keep_the_clock_contract() {
    use relay_adapter_memory::{ManualClock, SystemClock, TokioClock};
    relay_ports::contract::clock::wall_clock(&SystemClock::new());
    relay_ports::contract::clock::monotonic(&ManualClock::new(
        relay_domain::Timestamp::from_millis(5),
    ));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { relay_ports::contract::clock::wall_clock(&TokioClock::new()) });
}

#[tokio::test]
async fn the_jwt_verifier_keeps_the_verifier_contract() {
    use relay_adapter_jwt::{DevKeys, JwtConfig, JwtVerifier, TokenRequest};
    let keys = DevKeys::from_seed([11; 32]);
    let verifier = JwtVerifier::new(JwtConfig::default());
    verifier.set_keys(keys.key_set());
    let user = uuid::Uuid::new_v4();
    let mint = |k: &DevKeys, ttl| {
        k.mint(&TokenRequest {
            sub: user,
            name: None,
            docs: Default::default(),
            ttl_secs: ttl,
        })
        .unwrap()
    };
    let good = mint(&keys, 600);
    let foreign = mint(&DevKeys::from_seed([12; 32]), 600);
    let mut tampered = good.clone();
    tampered.pop();
    relay_ports::contract::verifier::verifies_and_refuses(
        &verifier,
        &good,
        user,
        &[foreign, tampered],
    )
    .await;
}
