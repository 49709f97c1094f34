//! What a join and a room cost: one encoding of the content per version
//! shared by every joiner, `since` that cannot make a join read without
//! bound, a catch-up that fits the client's queue, a client that does not
//! read closed at its byte budget.

use crate::config::Config;
use crate::ports::Ports;
use crate::service::Relay;
use crate::test_support::{drain, next_frame, next_message};
use relay_adapter_jwt::{DevKeys, JwtConfig, JwtVerifier};
use relay_adapter_memory::{
    ClaimsPermissions, MemoryBus, MemoryMetrics, MemoryPresence, MemoryStore, TokioClock,
};
use relay_domain::{
    ClientId, CommittedOp, Delta, DocumentId, OpKey, Seq, Timestamp, UserId, Version,
};
use relay_ports::protocol::{Join, ServerMessage};
use relay_ports::{
    Append, ClientMessage, CollaborationService, Loaded, OperationStore, Outbound, Snapshot,
    Started, StoreError,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// A memory store that counts its reads and the rows they returned.
#[derive(Default)]
pub(crate) struct CountingStore {
    inner: MemoryStore,
    reads: AtomicUsize,
    rows: AtomicUsize,
}

impl CountingStore {
    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
    fn rows(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }
    /// Counts from zero again (after the room opened, to count a join's
    /// reads alone).
    fn reset(&self) {
        self.reads.store(0, Ordering::SeqCst);
        self.rows.store(0, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl OperationStore for CountingStore {
    async fn append(
        &self,
        document: DocumentId,
        prev: Option<OpKey>,
        ops: &[CommittedOp],
    ) -> Result<Append, StoreError> {
        self.inner.append(document, prev, ops).await
    }
    async fn load(&self, document: DocumentId) -> Result<Loaded, StoreError> {
        self.inner.load(document).await
    }
    async fn read(
        &self,
        document: DocumentId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        let ops = self.inner.read(document, after, limit).await?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.rows.fetch_add(ops.len(), Ordering::SeqCst);
        Ok(ops)
    }
    async fn read_within(
        &self,
        document: DocumentId,
        after: Version,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        let ops = self
            .inner
            .read_within(document, after, max_ops, max_bytes)
            .await?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.rows.fetch_add(ops.len(), Ordering::SeqCst);
        Ok(ops)
    }
    async fn snapshot(&self, document: DocumentId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.snapshot(document).await
    }
    async fn head(&self, document: DocumentId) -> Result<Version, StoreError> {
        self.inner.head(document).await
    }
    async fn heads(&self, documents: &[DocumentId]) -> Result<Vec<Version>, StoreError> {
        self.inner.heads(documents).await
    }
    async fn first_since(
        &self,
        document: DocumentId,
        at: Timestamp,
    ) -> Result<Option<Version>, StoreError> {
        self.inner.first_since(document, at).await
    }
    async fn find(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
        seq: Seq,
    ) -> Result<Option<Version>, StoreError> {
        self.inner.find(document, user, client_id, seq).await
    }
    async fn last_seq(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<Option<(Seq, Version)>, StoreError> {
        self.inner.last_seq(document, user, client_id).await
    }
    async fn save_snapshot(
        &self,
        document: DocumentId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.save_snapshot(document, snapshot).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

fn relay(config: Config, store: Arc<dyn OperationStore>, keys: &DevKeys) -> Relay {
    let clock = Arc::new(TokioClock::new());
    let verifier = JwtVerifier::new(JwtConfig::default());
    verifier.set_keys(keys.key_set());
    Relay::new(
        config,
        Ports {
            store,
            bus: Arc::new(MemoryBus::new()),
            presence: Arc::new(MemoryPresence::new(clock.clone())),
            permissions: Arc::new(ClaimsPermissions),
            verifier: Arc::new(verifier),
            metrics: Arc::new(MemoryMetrics::default()),
            clock,
        },
        Vec::new(),
    )
}

async fn join(
    relay: &Relay,
    keys: &DevKeys,
    document: DocumentId,
    client: &str,
    since: Option<Version>,
) -> Started {
    let join = Join {
        client_id: ClientId::new(client).unwrap(),
        token: Some(keys.editor_token(UserId::new(Uuid::new_v4()), Duration::from_secs(600))),
        since,
    };
    relay
        .join(relay.admit().unwrap(), document, None, join)
        .await
        .expect("joined")
}

/// Submits `n` inserts of `chars` characters at the start, each acked.
async fn type_ops(editor: &mut Started, n: u64, chars: usize) {
    for i in 1..=n {
        let mut delta = Delta::new();
        delta.insert(&"x".repeat(chars));
        editor
            .session
            .handle(ClientMessage::Submit {
                seq: Seq::from(u32::try_from(i).unwrap()),
                base: Version::from(u32::try_from(i - 1).unwrap()),
                delta,
            })
            .await;
        loop {
            match next_message(&mut editor.outbound).await {
                ServerMessage::Ack { version, .. } => {
                    assert_eq!(version.get(), i);
                    break;
                }
                ServerMessage::Presence { .. } => {}
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    }
}

fn shared_of(frame: &Outbound) -> Arc<str> {
    match frame {
        Outbound::Joined(j) => j.shared.clone(),
        other => panic!(
            "expected a joined frame with shared content, got {}",
            format!("{other:?}").chars().take(200).collect::<String>()
        ),
    }
}

/// A message as a failure shows it (a catch-up can be long).
fn short(message: &ServerMessage) -> String {
    format!("{message:?}").chars().take(400).collect()
}

/// How a close order reads, if one was given.
fn closed_with(started: &Started) -> Option<u16> {
    started.close.borrow().as_ref().map(|c| c.code.as_u16())
}

#[tokio::test]
async fn joiners_at_one_version_share_one_encoding_of_the_content_and_read_the_same_joined() {
    let keys = DevKeys::from_seed([41; 32]);
    let relay = relay(Config::default(), Arc::new(MemoryStore::new()), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut editor = join(&relay, &keys, document, "editor", None).await;
    next_message(&mut editor.outbound).await;
    type_ops(&mut editor, 3, 1000).await;
    let mut a = join(&relay, &keys, document, "tab-a", None).await;
    let mut b = join(&relay, &keys, document, "tab-b", None).await;
    let (fa, fb) = (
        next_frame(&mut a.outbound).await,
        next_frame(&mut b.outbound).await,
    );
    let (sa, sb) = (shared_of(&fa), shared_of(&fb));
    assert!(Arc::ptr_eq(&sa, &sb), "one encoding for both joiners");
    assert_eq!(
        fa.charge(),
        fa.text().unwrap().len() - sa.len(),
        "the shared content is not charged to the client"
    );
    // The frame reads exactly as `joined` did when it was encoded whole.
    let decoded = ServerMessage::decode(&fa.text().unwrap()).expect("a joined frame is JSON");
    let ServerMessage::Joined {
        session,
        user,
        role,
        version,
        presence,
        ..
    } = decoded.clone()
    else {
        panic!("expected joined, got {decoded:?}");
    };
    let mut content = Delta::new();
    content.insert(&"x".repeat(3000));
    let whole = ServerMessage::Joined {
        session,
        user,
        role,
        version,
        content: Some(content),
        ops: None,
        presence,
        limits: relay.config().joined_limits(),
    };
    assert_eq!(version, Version::from(3));
    assert_eq!(decoded, whole);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&fa.text().unwrap()).unwrap(),
        serde_json::from_str::<serde_json::Value>(&whole.encode()).unwrap(),
    );
    // A new version: a new encoding, shared again.
    type_ops_from(&mut editor, 4, 10).await;
    let mut c = join(&relay, &keys, document, "tab-c", None).await;
    let mut d = join(&relay, &keys, document, "tab-d", None).await;
    let (sc, sd) = (
        shared_of(&next_frame(&mut c.outbound).await),
        shared_of(&next_frame(&mut d.outbound).await),
    );
    assert!(!Arc::ptr_eq(&sa, &sc), "the content at version 4 is new");
    assert!(Arc::ptr_eq(&sc, &sd));
}

/// Submits one more insert as op `version`.
async fn type_ops_from(editor: &mut Started, version: u32, chars: usize) {
    let mut delta = Delta::new();
    delta.insert(&"y".repeat(chars));
    editor
        .session
        .handle(ClientMessage::Submit {
            seq: Seq::from(version),
            base: Version::from(version - 1),
            delta,
        })
        .await;
    loop {
        match next_message(&mut editor.outbound).await {
            ServerMessage::Ack { version: v, .. } => {
                assert_eq!(v, Version::from(version));
                break;
            }
            ServerMessage::Presence { .. } => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_since_far_ahead_of_the_document_reads_nothing_from_the_store() {
    let keys = DevKeys::from_seed([42; 32]);
    let store = Arc::new(CountingStore::default());
    let mut config = Config::default();
    // The room's own check of the store (once, later) stays out of the
    // count.
    config.bus.down_poll = Duration::from_secs(600);
    let relay = relay(config, store.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut editor = join(&relay, &keys, document, "editor", None).await;
    next_message(&mut editor.outbound).await;
    type_ops(&mut editor, 2, 5).await;
    let before = store.reads();
    let far = Version::new(relay_domain::ids::MAX_LEN as u64).unwrap();
    for i in 0..20 {
        let mut c = join(&relay, &keys, document, &format!("tab-{i}"), Some(far)).await;
        match next_message(&mut c.outbound).await {
            ServerMessage::Joined {
                version,
                content: Some(_),
                ops: None,
                ..
            } => assert_eq!(version, Version::from(2)),
            other => panic!("expected the content, got {}", short(&other)),
        }
    }
    assert_eq!(
        store.reads() - before,
        0,
        "no store read for since = 2^53-1"
    );
}

/// `n` ops, each replacing the document's 300 characters with 300 others:
/// ops far larger together than the document.
async fn churned_document(store: &CountingStore, document: DocumentId, n: u32) {
    let user = UserId::new(Uuid::new_v4());
    let client_id = ClientId::new("writer").unwrap();
    for v in 1..=n {
        let mut delta = Delta::new();
        delta.insert(&char::from(b'a' + (v % 26) as u8).to_string().repeat(300));
        if v > 1 {
            delta.delete(300);
        }
        let op = CommittedOp {
            version: Version::from(v),
            user,
            client_id: client_id.clone(),
            seq: Seq::from(v),
            delta,
        };
        assert_eq!(
            store.append(document, None, &[op]).await,
            Ok(Append::Committed)
        );
    }
}

#[tokio::test]
async fn a_since_behind_the_history_reads_nothing_from_the_store_and_gets_the_content() {
    let keys = DevKeys::from_seed([43; 32]);
    let store = Arc::new(CountingStore::default());
    let document = DocumentId::new(Uuid::new_v4());
    churned_document(&store, document, 400).await;
    let mut config = Config::default();
    // The room keeps few ops in memory: a join from version 0 is served
    // from the store.
    config.limits.operation_history_max = 5;
    // Ops larger than 4 x MAX_MESSAGE_BYTES together and than the content
    // are sent as the content.
    config.limits.max_message_bytes = 1024;
    let relay = relay(config, store.clone(), &keys);
    // The room opens (reading the whole tail, in bounded chunks) with a
    // first client; then the join counted.
    let _first = join(&relay, &keys, document, "first", None).await;
    store.reset();
    let mut c = join(&relay, &keys, document, "tab", Some(Version::ZERO)).await;
    match next_message(&mut c.outbound).await {
        ServerMessage::Joined {
            version,
            content: Some(content),
            ops: None,
            ..
        } => {
            assert_eq!(version, Version::from(400));
            assert_eq!(content.apply_to_str("").unwrap().chars().count(), 300);
        }
        other => panic!("expected the content, got {}", short(&other)),
    }
    // The ops are no longer in memory: the join reads nothing (the room
    // would wait on it, and every submit behind it).
    assert_eq!(
        (store.reads(), store.rows()),
        (0, 0),
        "a join that gets the content read the store"
    );
}

#[tokio::test]
async fn a_catch_up_larger_than_the_clients_queue_gets_the_content_instead() {
    let keys = DevKeys::from_seed([44; 32]);
    let mut config = Config::default();
    config.limits.outbound_queue_bytes = 16 << 10;
    let relay = relay(config, Arc::new(MemoryStore::new()), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut editor = join(&relay, &keys, document, "editor", None).await;
    next_message(&mut editor.outbound).await;
    // 30 ops of 1,000 characters: 30 KB of catch-up, within the other
    // bounds (under 4 x MAX_MESSAGE_BYTES), over the 16 KiB queue.
    type_ops(&mut editor, 30, 1000).await;
    let mut c = join(&relay, &keys, document, "tab", Some(Version::ZERO)).await;
    let frame = next_frame(&mut c.outbound).await;
    assert!(frame.charge() <= 16 << 10, "charged {}", frame.charge());
    match ServerMessage::decode(&frame.text().expect("a message")).unwrap() {
        ServerMessage::Joined {
            version,
            content: Some(_),
            ops: None,
            ..
        } => assert_eq!(version, Version::from(30)),
        other => panic!("expected the content, got {}", short(&other)),
    }
    assert_eq!(closed_with(&c), None, "not closed");
    // A small catch-up is still ops.
    let mut d = join(&relay, &keys, document, "tab-d", Some(Version::from(29))).await;
    match next_message(&mut d.outbound).await {
        ServerMessage::Joined {
            ops: Some(ops),
            content: None,
            ..
        } => assert_eq!(ops.len(), 1),
        other => panic!("expected ops, got {}", short(&other)),
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_at_most_its_byte_budget_then_is_closed_1013() {
    const BUDGET: usize = 16 << 10;
    let keys = DevKeys::from_seed([45; 32]);
    let mut config = Config::default();
    config.limits.outbound_queue_bytes = BUDGET;
    config.limits.outbound_queue = 100_000;
    config.limits.submit_rate_per_sec = 1_000_000;
    config.limits.submit_burst = 1_000_000;
    let relay = relay(config, Arc::new(MemoryStore::new()), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut editor = join(&relay, &keys, document, "editor", None).await;
    next_message(&mut editor.outbound).await;
    type_ops(&mut editor, 5, 4000).await;
    // Joins at version 5 and never reads: its joined (the content, shared)
    // and every op after it wait in its queue.
    let mut idle = join(&relay, &keys, document, "idle", None).await;
    for v in 6..=40 {
        type_ops_from(&mut editor, v, 1000).await;
    }
    assert_eq!(closed_with(&idle), Some(1013), "closed as a slow consumer");
    let mut held = 0;
    let mut joined = 0;
    while let Some(item) = idle.outbound.try_recv() {
        held += item.charge();
        joined += usize::from(matches!(item, Outbound::Joined(_)));
    }
    assert_eq!(joined, 1);
    assert!(held <= BUDGET, "held {held} bytes over {BUDGET}");
    assert!(held > BUDGET / 2, "held {held}: the queue filled");
    // The editor was never held up.
    assert!(
        drain(&mut editor.outbound)
            .iter()
            .all(|m| !matches!(m, ServerMessage::Error { .. }))
    );
}
