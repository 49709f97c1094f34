//! Roles at join and in open sessions, per-user budgets and the submit
//! rate, with the service in process (tokio's paused clock: time moves
//! only when every task waits, so a test of minutes runs at once).

use crate::config::{Config, PermissionSourceKind};
use crate::service::Relay;
use crate::test_support::{drain, next_frame, next_message};
use crate::{testing, wiring};
use async_trait::async_trait;
use relay_adapter_jwt::{DevKeys, TokenRequest};
use relay_adapter_memory::{MemoryPermissions, MemoryPresence, MemoryStore};
use relay_domain::{ClientId, Delta, DocumentId, PresenceEntry, Seq, UserId, Version};
use relay_ports::protocol::{CloseCode, ErrorCode, Join, Role, ServerMessage};
use relay_ports::{
    Cause, Claims, ClientMessage, CollaborationService, Held, InstanceId, JoinRefusal, Outbound,
    PermissionError, PermissionSource, PresenceError, PresenceRegistry, Started,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(300);

fn submit(seq: u64, base: u64, text: &str) -> ClientMessage {
    let mut d = Delta::new();
    d.insert(text);
    ClientMessage::Submit {
        seq: Seq::new(seq).unwrap(),
        base: Version::new(base).unwrap(),
        delta: d,
    }
}

/// The in-memory permission source, counting the lookups; it can be made
/// to fail or to take a while.
#[derive(Clone, Default)]
struct Counting {
    grants: MemoryPermissions,
    lookups: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    slow: Arc<AtomicBool>,
}

impl Counting {
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl PermissionSource for Counting {
    async fn role(
        &self,
        claims: &Claims,
        document: DocumentId,
    ) -> Result<Option<Role>, PermissionError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(PermissionError::Unavailable(Cause::msg("down")));
        }
        self.grants.role(claims, document).await
    }
}

/// A store whose lookups of a client's last seq wait while the gate is
/// shut: a room with a new client's submit waits on it, busy, reading
/// nothing.
struct GatedLookups {
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

#[async_trait]
impl relay_ports::store::Tap for GatedLookups {
    async fn before_last_seq(&self) {
        let _ = self.open.subscribe().wait_for(|open| *open).await;
    }
}

/// A presence registry whose `upsert` waits while the gate is shut (a
/// stalled Redis).
struct Gated {
    inner: MemoryPresence,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

#[async_trait]
impl PresenceRegistry for Gated {
    async fn upsert(
        &self,
        document: DocumentId,
        instance: InstanceId,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        self.inner.upsert(document, instance, entry, ttl).await
    }

    async fn remove(
        &self,
        document: DocumentId,
        instance: InstanceId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<(), PresenceError> {
        self.inner.remove(document, instance, user, client_id).await
    }

    async fn list(&self, document: DocumentId) -> Result<Vec<Held>, PresenceError> {
        self.inner.list(document).await
    }
}

#[derive(Clone)]
struct Setup {
    relay: Relay,
    keys: Arc<DevKeys>,
    source: Counting,
}

/// The service on in-memory adapters with the counting source as a
/// database source would be used (answers shared by user and document).
fn setup(config: Config) -> Setup {
    setup_with(config, |_| {})
}

fn setup_with(mut config: Config, adapt: impl FnOnce(&mut crate::Ports)) -> Setup {
    let keys = DevKeys::from_seed([4; 32]);
    config.auth.permission_source = PermissionSourceKind::Database;
    let (mut ports, _) = testing::memory_ports(wiring::dev_verifier(&config, &keys));
    let source = Counting::default();
    ports.permissions = Arc::new(source.clone());
    adapt(&mut ports);
    Setup {
        relay: Relay::new(config, ports, Vec::new()),
        keys: Arc::new(keys),
        source,
    }
}

fn config_ttl(ttl: Duration) -> Config {
    let mut config = Config::default();
    config.auth.permission_cache_ttl = ttl;
    config
}

impl Setup {
    fn grant(&self, user: Uuid, doc: DocumentId, role: Role) {
        self.source.grants.grant(UserId::new(user), doc, role);
    }

    fn revoke(&self, user: Uuid, doc: DocumentId) {
        self.source.grants.revoke(UserId::new(user), doc);
    }

    async fn try_join(&self, user: Uuid, doc: DocumentId) -> Result<Started, JoinRefusal> {
        let token = self
            .keys
            .mint(&TokenRequest {
                sub: user,
                name: None,
                docs: BTreeMap::new(),
                ttl_secs: 24 * 3600,
            })
            .unwrap();
        let join = Join {
            client_id: ClientId::new(format!("tab-{}", Uuid::new_v4().simple())).unwrap(),
            token: Some(token),
            since: None,
        };
        self.relay
            .join(self.relay.admit().unwrap(), doc, None, join)
            .await
    }

    async fn join(&self, user: Uuid, doc: DocumentId) -> Started {
        let mut started = self.try_join(user, doc).await.expect("joined");
        assert!(matches!(
            next_message(&mut started.outbound).await,
            ServerMessage::Joined { .. }
        ));
        started
    }
}

fn doc() -> DocumentId {
    DocumentId::new(Uuid::new_v4())
}

/// The next answer to a submit (skipping presence frames).
async fn answer(started: &mut Started) -> ServerMessage {
    loop {
        match next_message(&mut started.outbound).await {
            ServerMessage::Presence { .. } => {}
            m => return m,
        }
    }
}

/// Waits (on the paused clock) until the session is ordered closed, or
/// `within` has passed; the close code.
async fn closed_within(started: &mut Started, within: Duration) -> Option<u16> {
    let ordered = started.close.wait_for(Option::is_some);
    match tokio::time::timeout(within, ordered).await {
        Ok(Ok(order)) => order.as_ref().map(|o| o.code.as_u16()),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_reader_whose_access_is_removed_is_closed_4403_within_the_ttl_without_sending_anything() {
    let s = setup(config_ttl(TTL));
    let (reader, other, d) = (Uuid::new_v4(), Uuid::new_v4(), doc());
    s.grant(reader, d, Role::Viewer);
    s.grant(other, d, Role::Viewer);
    let mut revoked = s.join(reader, d).await;
    let mut kept = s.join(other, d).await;
    s.revoke(reader, d);
    let start = Instant::now();
    assert_eq!(
        closed_within(&mut revoked, TTL).await,
        Some(CloseCode::Forbidden.as_u16()),
        "closed within PERMISSION_CACHE_TTL"
    );
    assert!(start.elapsed() <= TTL);
    assert!(kept.close.borrow().is_none(), "a reader with access stays");
    assert_eq!(s.relay.watched_sessions(), 2);
    revoked.session.close("closed").await;
    assert_eq!(s.relay.watched_sessions(), 1, "re-checked until it ends");
    assert!(
        closed_within(&mut kept, TTL * 2).await.is_none(),
        "and is not closed by later re-checks"
    );
}

#[tokio::test(start_paused = true)]
async fn a_role_change_reaches_the_session_without_a_lookup_of_its_own() {
    let s = setup(config_ttl(TTL));
    let (user, d) = (Uuid::new_v4(), doc());
    s.grant(user, d, Role::Editor);
    let mut started = s.join(user, d).await;
    started.session.handle(submit(1, 0, "a")).await;
    assert!(matches!(
        answer(&mut started).await,
        ServerMessage::Ack { .. }
    ));

    // Downgraded: the re-check within the TTL makes the next submit
    // forbidden, and that submit asks the source nothing itself.
    s.grant(user, d, Role::Viewer);
    tokio::time::sleep(TTL).await;
    let before = s.source.lookups();
    started.session.handle(submit(2, 1, "b")).await;
    match answer(&mut started).await {
        ServerMessage::Error {
            code, seq, fatal, ..
        } => assert_eq!(
            (code, seq, fatal),
            (ErrorCode::Forbidden, Some(Seq::from(2)), false)
        ),
        other => panic!("expected forbidden, got {other:?}"),
    }
    assert_eq!(s.source.lookups(), before, "the submit used the re-check");

    // Upgraded again: allowed from the next submit after the re-check.
    s.grant(user, d, Role::Editor);
    tokio::time::sleep(TTL).await;
    started.session.handle(submit(2, 1, "b")).await;
    assert!(matches!(
        answer(&mut started).await,
        ServerMessage::Ack { .. }
    ));
    assert!(started.close.borrow().is_none());
}

#[tokio::test(start_paused = true)]
async fn sessions_of_one_user_and_document_are_rechecked_with_one_lookup_per_ttl() {
    let s = setup(config_ttl(TTL));
    let (user, d) = (Uuid::new_v4(), doc());
    s.grant(user, d, Role::Viewer);
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(s.join(user, d).await);
    }
    assert_eq!(s.source.lookups(), 1, "the joins shared one answer");
    tokio::time::sleep(TTL * 4).await;
    let lookups = s.source.lookups() - 1;
    assert!(
        (4..=6).contains(&lookups),
        "about one re-check per TTL for all five sessions, got {lookups} in 4 TTLs"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ttl_of_zero_rechecks_every_second_and_caches_nothing() {
    let s = setup(config_ttl(Duration::ZERO));
    let (user, d) = (Uuid::new_v4(), doc());
    s.grant(user, d, Role::Viewer);
    let _a = s.join(user, d).await;
    let _b = s.join(user, d).await;
    let before = s.source.lookups();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rechecks = s.source.lookups() - before;
    assert!(
        (9..=11).contains(&rechecks),
        "once a second (one lookup for both sessions), not a spin: {rechecks} in 10 s"
    );
    s.revoke(user, d);
    let refused = s.try_join(user, d).await.unwrap_err();
    assert_eq!(refused, JoinRefusal::Forbidden, "asked afresh: no cache");
    s.grant(user, d, Role::Viewer);
    let mut joined = s.join(user, d).await;
    s.revoke(user, d);
    assert_eq!(
        closed_within(&mut joined, Duration::from_secs(2)).await,
        Some(4403)
    );
}

#[tokio::test(start_paused = true)]
async fn joins_of_one_user_and_document_within_the_ttl_cost_one_lookup() {
    let s = setup(config_ttl(TTL));
    let (user, d) = (Uuid::new_v4(), doc());
    s.grant(user, d, Role::Editor);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(s.join(user, d).await);
    }
    assert_eq!(s.source.lookups(), 1);

    // Concurrent joins wait for the one lookup in flight.
    let d2 = doc();
    s.grant(user, d2, Role::Editor);
    s.source.slow.store(true, Ordering::SeqCst);
    let joins = futures::future::join_all((0..5).map(|_| s.join(user, d2))).await;
    assert_eq!(s.source.lookups(), 2, "one more for the second document");
    held.extend(joins);
    s.source.slow.store(false, Ordering::SeqCst);

    // A user without access: the refusal is kept too.
    let (stranger, before) = (Uuid::new_v4(), s.source.lookups());
    for _ in 0..5 {
        let refused = s.try_join(stranger, d).await.unwrap_err();
        assert_eq!(refused, JoinRefusal::Forbidden);
    }
    assert_eq!(s.source.lookups(), before + 1);

    // An error is not kept: the next join asks again.
    let (late, before) = (Uuid::new_v4(), s.source.lookups());
    s.grant(late, d, Role::Viewer);
    s.source.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let refused = s.try_join(late, d).await.unwrap_err();
        assert_eq!(refused, JoinRefusal::PermissionsUnavailable);
    }
    assert_eq!(s.source.lookups(), before + 2);
    s.source.failing.store(false, Ordering::SeqCst);
    held.push(s.join(late, d).await);
    assert_eq!(s.source.lookups(), before + 3);
}

#[tokio::test(start_paused = true)]
async fn a_join_with_a_cached_answer_older_than_the_ttl_asks_again() {
    let mut config = config_ttl(TTL);
    // Only joins here: sessions leave at once, so nothing is re-checked.
    config.limits.join_burst = 100;
    let s = setup(config);
    let (user, d) = (Uuid::new_v4(), doc());
    s.grant(user, d, Role::Editor);
    drop(s.join(user, d).await);
    tokio::time::sleep(TTL - Duration::from_secs(1)).await;
    drop(s.join(user, d).await);
    assert_eq!(s.source.lookups(), 1);
    s.revoke(user, d);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        s.try_join(user, d).await.unwrap_err(),
        JoinRefusal::Forbidden
    );
    assert_eq!(s.source.lookups(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_user_over_max_connections_per_user_is_refused_4429_and_others_are_not() {
    let mut config = config_ttl(TTL);
    config.limits.max_connections_per_user = 3;
    let s = setup(config);
    let (user, other, d) = (Uuid::new_v4(), Uuid::new_v4(), doc());
    s.grant(user, d, Role::Editor);
    s.grant(other, d, Role::Editor);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(s.join(user, d).await);
    }
    let lookups = s.source.lookups();
    let refused = s.try_join(user, d).await.unwrap_err();
    assert_eq!(refused, JoinRefusal::TooManyConnections);
    assert_eq!(refused.close_code().as_u16(), 4429);
    assert_eq!(s.source.lookups(), lookups, "refused before any lookup");
    held.push(s.join(other, d).await);

    // The count is given back on every way a session ends.
    let closed = held.remove(0);
    closed.session.close("test").await;
    held.insert(0, s.join(user, d).await);
    drop(held.remove(0));
    held.insert(0, s.join(user, d).await);
    // A join refused after the count (no access here) gives it back too.
    let closed = held.remove(0);
    closed.session.close("test").await;
    let elsewhere = doc();
    assert_eq!(
        s.try_join(user, elsewhere).await.unwrap_err(),
        JoinRefusal::Forbidden
    );
    held.insert(0, s.join(user, d).await);
    assert_eq!(
        s.try_join(user, d).await.unwrap_err(),
        JoinRefusal::TooManyConnections
    );
}

#[tokio::test(start_paused = true)]
async fn joins_past_the_burst_are_refused_4429_until_the_rate_allows_one() {
    let mut config = config_ttl(TTL);
    config.limits.join_burst = 4;
    config.limits.join_rate_per_sec = 2;
    let s = setup(config);
    let (user, other, d) = (Uuid::new_v4(), Uuid::new_v4(), doc());
    s.grant(user, d, Role::Editor);
    s.grant(other, d, Role::Editor);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(s.join(user, d).await);
    }
    let refused = s.try_join(user, d).await.unwrap_err();
    assert_eq!(refused, JoinRefusal::JoinRateExceeded);
    assert_eq!(refused.close_code().as_u16(), 4429);
    held.push(s.join(other, d).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.try_join(user, d).await.unwrap_err(),
        JoinRefusal::JoinRateExceeded
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.push(s.join(user, d).await);
}

#[tokio::test(start_paused = true)]
async fn a_submit_flood_from_many_connections_is_answered_before_the_room_mailbox() {
    // The room is busy (waiting on the store for a new client's last seq)
    // and reads nothing: submits over the rate are answered `rate_limited`
    // by the sessions meanwhile, and only the burst of each connection
    // waits in the room's mailbox (1,024 places), so none of the flooders
    // blocks.
    let mut config = config_ttl(TTL);
    config.limits.submit_burst = 10;
    config.limits.submit_rate_per_sec = 1;
    let (open, _) = tokio::sync::watch::channel(true);
    let open = Arc::new(open);
    let gate = open.clone();
    let s = setup_with(config, move |ports| {
        ports.store = Arc::new(relay_ports::store::Tapped {
            inner: MemoryStore::new(),
            tap: GatedLookups { open: gate },
        });
    });
    let (user, d) = (Uuid::new_v4(), doc());
    s.grant(user, d, Role::Editor);
    let mut flooders = Vec::new();
    for _ in 0..8 {
        flooders.push(s.join(user, d).await);
    }
    open.send_replace(false);
    const SUBMITS: u32 = 200;
    let flood = async {
        for f in &mut flooders {
            for seq in 1..=SUBMITS {
                f.session.handle(submit(u64::from(seq), 0, "x")).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), flood)
        .await
        .expect("a flooder waited for a place in the room's mailbox");
    for f in &mut flooders {
        let limited: Vec<Seq> = drain(&mut f.outbound)
            .into_iter()
            .filter_map(|m| match m {
                ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    seq,
                    ..
                } => seq,
                _ => None,
            })
            .collect();
        let expected: Vec<Seq> = (11..=SUBMITS).map(Seq::from).collect();
        assert_eq!(limited, expected, "answered by the session, room busy");
    }
    open.send_replace(true);
    let first = &mut flooders[0];
    loop {
        match next_frame(&mut first.outbound).await {
            Outbound::Close(c) => panic!("closed: {c:?}"),
            frame => {
                if let ServerMessage::Ack { seq, .. } =
                    ServerMessage::decode(&frame.text().unwrap()).unwrap()
                {
                    assert_eq!(seq, Seq::from(1));
                    break;
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_sending_too_many_invalid_messages_is_closed_1008() {
    let s = setup(config_ttl(TTL));
    let (user, d) = (Uuid::new_v4(), doc());
    s.grant(user, d, Role::Editor);
    let mut started = s.join(user, d).await;
    let bad = || relay_ports::ClientMessage::decode("{\"type\":\"nope\"}").unwrap_err();
    for _ in 0..crate::session::INVALID_MESSAGES_PER_SEC {
        started.session.reject(bad());
    }
    assert!(started.close.borrow().is_none(), "within the allowance");
    started.session.reject(bad());
    assert_eq!(
        closed_within(&mut started, Duration::from_millis(1)).await,
        Some(1008)
    );
}

#[tokio::test(start_paused = true)]
async fn a_presence_registry_that_never_answers_holds_up_no_join_leave_or_ack() {
    // Every registry write waits for good (Redis stalled, DEBUG SLEEP):
    // the room's calls to it run beside its loop, so joins, leaves and the
    // editor's acks go on as if it were not there.
    let (open, _) = tokio::sync::watch::channel(false);
    let gate = Arc::new(open);
    let s = setup_with(config_ttl(TTL), move |ports| {
        ports.presence = Arc::new(Gated {
            inner: MemoryPresence::new(ports.clock.clone()),
            open: gate,
        });
    });
    let d = doc();
    let editor = Uuid::new_v4();
    s.grant(editor, d, Role::Editor);
    let mut writer = s.join(editor, d).await;
    let mut base = 0;
    for round in 0..5u64 {
        let guest = Uuid::new_v4();
        s.grant(guest, d, Role::Viewer);
        let visitor = tokio::time::timeout(Duration::from_secs(1), s.join(guest, d))
            .await
            .expect("a join was held up by the registry");
        writer.session.handle(submit(round + 1, base, "x")).await;
        let acked = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                if let ServerMessage::Ack { version, .. } = next_message(&mut writer.outbound).await
                {
                    return version;
                }
            }
        })
        .await
        .expect("an ack was held up by the registry");
        base = acked.get();
        visitor.session.close("leaving").await;
    }
    assert_eq!(base, 5);
}
