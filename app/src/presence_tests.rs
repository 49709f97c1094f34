//! Cursor throttle and typing debounce as another client observes them,
//! on tokio's paused clock (the service in process, no sockets), so the
//! timeline is exact.

use crate::config::Config;
use crate::test_support::drain;
use crate::testing;
use relay_adapter_jwt::DevKeys;
use relay_domain::{ClientId, DocumentId, Selection, UserId, Version};
use relay_ports::protocol::{Join, ServerMessage};
use relay_ports::{ClientMessage, CollaborationService, PresenceRegistry, Session, Started};
use std::time::Duration;
use uuid::Uuid;

async fn join(
    relay: &crate::Relay,
    keys: &DevKeys,
    doc: DocumentId,
    client: &str,
) -> (Box<dyn Session>, relay_ports::OutboundQueue) {
    let token = keys.editor_token(UserId::new(Uuid::new_v4()), Duration::from_secs(3600));
    let join = Join {
        client_id: ClientId::new(client).unwrap(),
        token: Some(token),
        since: None,
    };
    let Started {
        session, outbound, ..
    } = relay
        .join(relay.admit().unwrap(), doc, None, join)
        .await
        .unwrap();
    (session, outbound)
}

/// Lets the room run without moving the clock.
async fn idle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn cursors(msgs: &[ServerMessage]) -> Vec<(Option<usize>, Option<usize>)> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMessage::Cursor { selection, .. } => {
                Some((selection.map(|s| s.anchor), selection.map(|s| s.head)))
            }
            _ => None,
        })
        .collect()
}

fn typing(msgs: &[ServerMessage]) -> Vec<bool> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMessage::Typing { active, .. } => Some(*active),
            _ => None,
        })
        .collect()
}

fn setup() -> (crate::Relay, DevKeys) {
    let keys = DevKeys::from_seed([3; 32]);
    let mut config = Config::default();
    config.presence.cursor_throttle_ms = 50;
    config.presence.typing_debounce_ms = 500;
    (testing::in_memory(config, &keys).0.relay, keys)
}

#[tokio::test(start_paused = true)]
async fn cursor_updates_reach_others_at_most_once_per_interval_and_the_latest_always_arrives() {
    let (relay, keys) = setup();
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (_b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    let mut text = relay_domain::Delta::new();
    text.insert("hello world");
    a.handle(ClientMessage::Submit {
        seq: relay_domain::Seq::from(1),
        base: Version::from(0),
        delta: text,
    })
    .await;
    idle().await;
    assert!(
        drain(&mut a_rx)
            .iter()
            .any(|m| matches!(m, ServerMessage::Ack { .. }))
    );
    drain(&mut b_rx);
    for i in 0..5 {
        let selection = Some(Selection { anchor: i, head: i });
        a.handle(ClientMessage::Cursor {
            version: Version::from(1),
            selection,
        })
        .await;
    }
    idle().await;
    // The first goes out at once; the rest wait for the interval.
    assert_eq!(cursors(&drain(&mut b_rx)), vec![(Some(0), Some(0))]);
    tokio::time::advance(Duration::from_millis(49)).await;
    idle().await;
    assert_eq!(cursors(&drain(&mut b_rx)), vec![]);
    tokio::time::advance(Duration::from_millis(1)).await;
    idle().await;
    // Latest wins: 1, 2 and 3 were replaced by 4.
    assert_eq!(cursors(&drain(&mut b_rx)), vec![(Some(4), Some(4))]);
    tokio::time::advance(Duration::from_millis(500)).await;
    idle().await;
    assert_eq!(cursors(&drain(&mut b_rx)), vec![]);
    // Hiding the caret is a cursor update like any other.
    a.handle(ClientMessage::Cursor {
        version: Version::from(1),
        selection: None,
    })
    .await;
    idle().await;
    assert_eq!(cursors(&drain(&mut b_rx)), vec![(None, None)]);
}

#[tokio::test(start_paused = true)]
async fn typing_is_active_at_once_and_inactive_after_the_quiet_period() {
    let (relay, keys) = setup();
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (_b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    idle().await;
    drain(&mut b_rx);
    a.handle(ClientMessage::Typing).await;
    idle().await;
    assert_eq!(typing(&drain(&mut b_rx)), vec![true]);
    tokio::time::advance(Duration::from_millis(300)).await;
    a.handle(ClientMessage::Typing).await;
    idle().await;
    assert!(typing(&drain(&mut b_rx)).is_empty());
    // 500 ms after the last signal, not the first.
    tokio::time::advance(Duration::from_millis(499)).await;
    idle().await;
    assert!(typing(&drain(&mut b_rx)).is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    idle().await;
    assert_eq!(typing(&drain(&mut b_rx)), vec![false]);
    // The typist is not told about itself.
    assert!(typing(&drain(&mut a_rx)).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_cursor_taken_before_a_concurrent_edit_is_moved_through_it() {
    let (relay, keys) = setup();
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (mut b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    let submit = |seq, base, pos: usize, text: &str| {
        let mut d = relay_domain::Delta::new();
        d.retain(pos).insert(text);
        ClientMessage::Submit {
            seq: relay_domain::Seq::new(seq).unwrap(),
            base: Version::new(base).unwrap(),
            delta: d,
        }
    };
    a.handle(submit(1, 0, 0, "hello world")).await;
    idle().await;
    // B prefixes the line (version 2) while A's caret, taken at version 1,
    // sits before "world".
    b.handle(submit(1, 1, 0, ">> ")).await;
    idle().await;
    drain(&mut a_rx);
    drain(&mut b_rx);
    a.handle(ClientMessage::Cursor {
        version: Version::from(1),
        selection: Some(Selection { anchor: 6, head: 6 }),
    })
    .await;
    idle().await;
    let got: Vec<ServerMessage> = drain(&mut b_rx);
    assert_eq!(
        got.iter()
            .filter_map(|m| match m {
                ServerMessage::Cursor {
                    version, selection, ..
                } => Some((
                    *version,
                    selection.map(|s| s.anchor),
                    selection.map(|s| s.head),
                )),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![(Version::from(2), Some(9), Some(9))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_cursors_is_throttled_before_it_is_rebased() {
    let (relay, keys) = setup();
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (_b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    // Some history for a cursor taken at version 1 to be rebased over.
    for seq in 1..=20u32 {
        let mut d = relay_domain::Delta::new();
        d.insert("x");
        a.handle(ClientMessage::Submit {
            seq: relay_domain::Seq::from(seq),
            base: Version::from(seq - 1),
            delta: d,
        })
        .await;
        idle().await;
    }
    drain(&mut a_rx);
    drain(&mut b_rx);
    let before = crate::room::test_counters::rebases(doc);
    // 150 cursors within one throttle interval (under the presence rate's
    // burst of 200, so none is dropped by it).
    for i in 0..150 {
        a.handle(ClientMessage::Cursor {
            version: Version::from(1),
            selection: Some(Selection {
                anchor: i % 2,
                head: i % 2,
            }),
        })
        .await;
    }
    idle().await;
    tokio::time::advance(Duration::from_millis(50)).await;
    idle().await;
    // One sent at once, the latest when the interval is over: two rebases.
    assert_eq!(crate::room::test_counters::rebases(doc) - before, 2);
    assert_eq!(cursors(&drain(&mut b_rx)).len(), 2);
    assert!(drain(&mut a_rx).is_empty(), "nothing was refused");
}

#[tokio::test(start_paused = true)]
async fn cursor_and_typing_messages_over_the_rate_are_dropped_and_said_once() {
    let keys = DevKeys::from_seed([3; 32]);
    let mut config = Config::default();
    config.presence.rate_per_sec = 10;
    config.presence.burst = 5;
    let relay = testing::in_memory(config, &keys).0.relay;
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (_b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    idle().await;
    drain(&mut a_rx);
    drain(&mut b_rx);
    let before = crate::room::test_counters::rebases(doc);
    for _ in 0..20 {
        a.handle(ClientMessage::Typing).await;
        a.handle(ClientMessage::Cursor {
            version: Version::from(0),
            selection: None,
        })
        .await;
    }
    idle().await;
    let refused: Vec<_> = drain(&mut a_rx)
        .into_iter()
        .filter(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: relay_ports::ErrorCode::RateLimited,
                    fatal: false,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(refused.len(), 1, "told once: {refused:?}");
    // Five got through: three typing signals and two cursors, of which the
    // room rebased one (the other is held by the cursor throttle).
    assert_eq!(crate::room::test_counters::rebases(doc) - before, 1);
    assert_eq!(typing(&drain(&mut b_rx)), vec![true]);
    // The rate refills: a second later messages pass again, and the next
    // refusal is told again.
    tokio::time::advance(Duration::from_secs(1)).await;
    a.handle(ClientMessage::Cursor {
        version: Version::from(0),
        selection: Some(Selection { anchor: 0, head: 0 }),
    })
    .await;
    idle().await;
    assert!(drain(&mut a_rx).is_empty());
}

/// The in-memory registry, counting single upserts and batches.
struct CountingPresence {
    inner: relay_adapter_memory::MemoryPresence,
    upserts: std::sync::atomic::AtomicUsize,
    batches: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl relay_ports::PresenceRegistry for CountingPresence {
    async fn upsert(
        &self,
        document: DocumentId,
        instance: relay_ports::InstanceId,
        entry: relay_domain::PresenceEntry,
        ttl: Duration,
    ) -> Result<(), relay_ports::PresenceError> {
        self.upserts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.upsert(document, instance, entry, ttl).await
    }

    async fn upsert_many(
        &self,
        document: DocumentId,
        instance: relay_ports::InstanceId,
        entries: Vec<relay_domain::PresenceEntry>,
        ttl: Duration,
    ) -> Result<(), relay_ports::PresenceError> {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entries.len());
        self.inner
            .upsert_many(document, instance, entries, ttl)
            .await
    }

    async fn remove(
        &self,
        document: DocumentId,
        instance: relay_ports::InstanceId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<(), relay_ports::PresenceError> {
        self.inner.remove(document, instance, user, client_id).await
    }

    async fn list(
        &self,
        document: DocumentId,
    ) -> Result<Vec<relay_ports::Held>, relay_ports::PresenceError> {
        self.inner.list(document).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_room_refreshes_all_of_its_presence_entries_in_one_call_to_the_registry() {
    const CLIENTS: usize = 30;
    let keys = DevKeys::from_seed([7; 32]);
    let clock = std::sync::Arc::new(relay_adapter_memory::TokioClock::new());
    let presence = std::sync::Arc::new(CountingPresence {
        inner: relay_adapter_memory::MemoryPresence::new(clock.clone()),
        upserts: Default::default(),
        batches: Default::default(),
    });
    let verifier = relay_adapter_jwt::JwtVerifier::new(relay_adapter_jwt::JwtConfig::default());
    verifier.set_keys(keys.key_set());
    let mut config = Config::default();
    // Refreshed every second.
    config.presence.ttl = Some(Duration::from_secs(3));
    let relay = crate::Relay::new(
        config,
        crate::Ports {
            store: std::sync::Arc::new(relay_adapter_memory::MemoryStore::new()),
            bus: std::sync::Arc::new(relay_adapter_memory::MemoryBus::new()),
            presence: presence.clone(),
            permissions: std::sync::Arc::new(relay_adapter_memory::ClaimsPermissions),
            verifier: std::sync::Arc::new(verifier),
            metrics: std::sync::Arc::new(relay_adapter_memory::MemoryMetrics::default()),
            clock,
        },
        Vec::new(),
    );
    let doc = DocumentId::new(Uuid::new_v4());
    let user = UserId::new(Uuid::new_v4());
    let join_as = async |client: &str| {
        let join = Join {
            client_id: ClientId::new(client).unwrap(),
            token: Some(keys.editor_token(user, Duration::from_secs(3600))),
            since: None,
        };
        let started = relay
            .join(relay.admit().unwrap(), doc, None, join)
            .await
            .unwrap();
        (started.session, started.outbound)
    };
    let mut sessions = Vec::new();
    for i in 0..CLIENTS {
        sessions.push(join_as(&format!("tab-{i}")).await);
    }
    // A second connection of one tab: still one entry.
    sessions.push(join_as("tab-0").await);
    idle().await;
    let joined = presence.upserts.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(joined, CLIENTS + 1, "each join upserts its entry");
    let batches = || {
        presence
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while batches().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the room refreshed its entries within the refresh interval");
    assert_eq!(batches(), vec![CLIENTS], "one call with every client once");
    assert_eq!(
        presence.upserts.load(std::sync::atomic::Ordering::SeqCst),
        joined,
        "no upsert per entry on the refresh"
    );
    // The tab with two connections leaves only with the second.
    let (s, _) = sessions.pop().expect("the second tab-0");
    s.close("test").await;
    idle().await;
    let listed = presence.inner.list(doc).await.expect("list");
    assert_eq!(listed.len(), CLIENTS, "tab-0 is still here");
    let (s, _) = sessions.swap_remove(0);
    s.close("test").await;
    idle().await;
    let listed = presence.inner.list(doc).await.expect("list");
    assert_eq!(listed.len(), CLIENTS - 1, "tab-0 has left");
}

/// Two instances of one deployment: one store and one registry, and either
/// one bus or a bus each (then nothing crosses on the bus: presence can
/// only come through the registry).
fn two_instances(keys: &DevKeys, config: Config, one_bus: bool) -> (crate::Relay, crate::Relay) {
    use relay_adapter_memory::{
        ClaimsPermissions, MemoryBus, MemoryMetrics, MemoryPresence, MemoryStore, TokioClock,
    };
    use std::sync::Arc;
    let clock = Arc::new(TokioClock::new());
    let store = Arc::new(MemoryStore::new());
    let presence = Arc::new(MemoryPresence::new(clock.clone()));
    let shared_bus: Arc<MemoryBus> = Arc::new(MemoryBus::new());
    let relay = |bus: Arc<MemoryBus>| {
        let verifier = relay_adapter_jwt::JwtVerifier::new(relay_adapter_jwt::JwtConfig::default());
        verifier.set_keys(keys.key_set());
        crate::Relay::new(
            config.clone(),
            crate::Ports {
                store: store.clone(),
                bus,
                presence: presence.clone(),
                permissions: Arc::new(ClaimsPermissions),
                verifier: Arc::new(verifier),
                metrics: Arc::new(MemoryMetrics::default()),
                clock: clock.clone(),
            },
            Vec::new(),
        )
    };
    let a = relay(shared_bus.clone());
    let b = relay(if one_bus {
        shared_bus
    } else {
        Arc::new(MemoryBus::new())
    });
    (a, b)
}

async fn join_as_user(
    relay: &crate::Relay,
    keys: &DevKeys,
    doc: DocumentId,
    user: UserId,
    client: &str,
) -> (
    Box<dyn Session>,
    relay_ports::OutboundQueue,
    Vec<(UserId, ClientId)>,
) {
    let join = Join {
        client_id: ClientId::new(client).unwrap(),
        token: Some(keys.editor_token(user, Duration::from_secs(3600))),
        since: None,
    };
    let Started {
        session,
        mut outbound,
        ..
    } = relay
        .join(relay.admit().unwrap(), doc, None, join)
        .await
        .unwrap();
    let listed = match Some(crate::test_support::next_message(&mut outbound).await).as_ref() {
        Some(ServerMessage::Joined { presence, .. }) => presence
            .iter()
            .map(|e| (e.user, e.client_id.clone()))
            .collect(),
        other => panic!("expected joined, got {other:?}"),
    };
    (session, outbound, listed)
}

fn left_of(msgs: &[ServerMessage]) -> Vec<ClientId> {
    msgs.iter()
        .flat_map(|m| match m {
            ServerMessage::Presence { left, .. } => {
                left.iter().map(|d| d.client_id.clone()).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

fn joined_of(msgs: &[ServerMessage]) -> Vec<ClientId> {
    msgs.iter()
        .flat_map(|m| match m {
            ServerMessage::Presence { joined, .. } => {
                joined.iter().map(|e| e.client_id.clone()).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_client_that_moves_to_another_instance_stays_listed_everywhere() {
    let keys = DevKeys::from_seed([21; 32]);
    let (a, b) = two_instances(&keys, Config::default(), true);
    let doc = DocumentId::new(Uuid::new_v4());
    let (_o, mut o_rx, _) =
        join_as_user(&a, &keys, doc, UserId::new(Uuid::new_v4()), "observer").await;
    let mover = UserId::new(Uuid::new_v4());
    let (c_on_a, _c_a_rx, _) = join_as_user(&a, &keys, doc, mover, "tab-1").await;
    // Its second socket, to the other instance (a reconnect racing the old
    // socket's close).
    let (mut c_on_b, mut c_b_rx, listed) = join_as_user(&b, &keys, doc, mover, "tab-1").await;
    idle().await;
    assert!(
        listed.iter().any(|(_, c)| c.as_str() == "observer")
            || joined_of(&drain(&mut c_b_rx))
                .iter()
                .any(|c| c.as_str() == "observer"),
        "the client on B never heard of the observer"
    );
    drain(&mut o_rx);
    drain(&mut c_b_rx);
    // The old socket closes: the client is still connected, on B.
    c_on_a.close("network change").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let seen_by_o = drain(&mut o_rx);
    let seen_by_c = drain(&mut c_b_rx);
    assert!(
        !left_of(&seen_by_o).iter().any(|c| c.as_str() == "tab-1"),
        "the observer was told the client left: {seen_by_o:?}"
    );
    assert!(
        !left_of(&seen_by_c).iter().any(|c| c.as_str() == "tab-1"),
        "the client was told it left: {seen_by_c:?}"
    );
    // Listed for new joiners on both instances, and its cursor still
    // reaches the observer.
    for relay in [&a, &b] {
        let (_s, _rx, listed) =
            join_as_user(relay, &keys, doc, UserId::new(Uuid::new_v4()), "late").await;
        assert!(
            listed
                .iter()
                .any(|(u, c)| *u == mover && c.as_str() == "tab-1"),
            "a late joiner does not list the moved client: {listed:?}"
        );
    }
    c_on_b
        .handle(ClientMessage::Cursor {
            version: Version::ZERO,
            selection: Some(Selection::caret(0)),
        })
        .await;
    idle().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen_by_o = drain(&mut o_rx);
    assert!(
        seen_by_o
            .iter()
            .any(|m| matches!(m, ServerMessage::Cursor { client_id, .. } if client_id.as_str() == "tab-1")),
        "the moved client's cursor did not reach the observer: {seen_by_o:?}"
    );
    // When its last connection closes, it leaves, everywhere.
    c_on_b.close("gone").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        left_of(&drain(&mut o_rx))
            .iter()
            .any(|c| c.as_str() == "tab-1"),
        "the client left for good and the observer was not told"
    );
}

#[tokio::test(start_paused = true)]
async fn presence_the_bus_never_brought_is_added_from_the_registry_within_the_ttl() {
    let keys = DevKeys::from_seed([22; 32]);
    let mut config = Config::default();
    config.presence.ttl = Some(Duration::from_secs(3));
    // No bus between the two: only the registry tells them of each other.
    let (a, b) = two_instances(&keys, config, false);
    let doc = DocumentId::new(Uuid::new_v4());
    let (_x, mut x_rx, _) = join_as_user(&a, &keys, doc, UserId::new(Uuid::new_v4()), "x").await;
    let (_y, mut y_rx, y_listed) =
        join_as_user(&b, &keys, doc, UserId::new(Uuid::new_v4()), "y").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        joined_of(&drain(&mut x_rx))
            .iter()
            .any(|c| c.as_str() == "y"),
        "x never heard of y"
    );
    assert!(
        y_listed.iter().any(|(_, c)| c.as_str() == "x")
            || joined_of(&drain(&mut y_rx))
                .iter()
                .any(|c| c.as_str() == "x"),
        "y never heard of x (listed when y joined, or joined since)"
    );
    // And nobody leaves while both are here.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(left_of(&drain(&mut x_rx)).is_empty());
    assert!(left_of(&drain(&mut y_rx)).is_empty());
}
