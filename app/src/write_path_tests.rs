//! Unit tests of the write path against a mocked operation store: what a
//! client is told when the store is down or another instance wins a
//! version. (End-to-end behaviour is tested in `tests/`.)

use crate::config::Config;
use crate::ports::Ports;
use crate::service::Relay;
use crate::test_support::{drain, next_message};
use mockall::predicate::always;
use relay_adapter_jwt::{DevKeys, JwtConfig, JwtVerifier};
use relay_adapter_memory::{
    ClaimsPermissions, MemoryBus, MemoryMetrics, MemoryPresence, TokioClock,
};
use relay_domain::{ClientId, CommittedOp, Delta, DocumentId, Seq, UserId, Version};
use relay_ports::Cause;
use relay_ports::protocol::{ErrorCode, Join, ServerMessage};
use relay_ports::store::{MockOperationStore, Tap, Tapped};
use relay_ports::{
    Append, ClientMessage, CollaborationService, OperationStore, Outbound, StoreError,
};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn relay_with(store: MockOperationStore, keys: &DevKeys) -> Relay {
    relay_on(Arc::new(store), keys)
}

fn relay_on(store: Arc<dyn OperationStore>, keys: &DevKeys) -> Relay {
    relay_on_bus(store, Arc::new(MemoryBus::new()), keys)
}

fn insert(text: &str) -> Delta {
    let mut d = Delta::new();
    d.insert(text);
    d
}

/// What opening a new document asks of the mock store (no snapshot, no
/// ops, nothing committed within the history's age), and the snapshot a
/// closing room saves.
fn opens_empty(store: &mut MockOperationStore) {
    store.expect_snapshot().returning(|_| Ok(None));
    store.expect_first_since().returning(|_, _| Ok(None));
    store.expect_save_snapshot().returning(|_, _| Ok(()));
    store
        .expect_read_within()
        .returning(|_, _, _, _| Ok(Vec::new()));
}

/// A new document as the mock store answers for opening it (no snapshot,
/// no ops) and for the rest the room asks; reads after opening are the
/// test's (`after_open`: once an append was tried).
fn empty_document(
    store: &mut MockOperationStore,
    after_open: impl Fn(Version) -> Result<Vec<CommittedOp>, StoreError> + Send + 'static,
) -> Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let appended = Arc::new(AtomicBool::new(false));
    opens_empty(store);
    store.expect_last_seq().returning(|_, _, _| Ok(None));
    // Opening reads in bounded chunks; catch-ups read plainly.
    let opened = appended.clone();
    store.expect_read().returning(move |_, after, _| {
        if opened.load(Ordering::SeqCst) {
            after_open(after)
        } else {
            Ok(Vec::new())
        }
    });
    appended
}

#[tokio::test]
async fn a_store_outage_sends_the_submitter_away_to_re_send_and_acknowledges_nothing() {
    let keys = DevKeys::from_seed([1; 32]);
    let mut store = MockOperationStore::new();
    // Reads fail too while the store is down (the room tries one to find
    // out whether the failed append was written), until it is back.
    let back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = back.clone();
    let appended = empty_document(&mut store, move |_| {
        if up.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(Vec::new())
        } else {
            Err(StoreError::Unavailable(Cause::msg("connection refused")))
        }
    });
    let is_back = back.clone();
    store
        .expect_append()
        .with(always(), always(), always())
        .returning(move |_, _, ops| {
            appended.store(true, std::sync::atomic::Ordering::SeqCst);
            if !is_back.load(std::sync::atomic::Ordering::SeqCst) {
                Err(StoreError::Unavailable(Cause::msg("connection refused")))
            } else {
                assert_eq!(ops.len(), 1);
                assert_eq!(ops[0].version, Version::from(1));
                Ok(Append::Committed)
            }
        });
    let relay = relay_with(store, &keys);
    let user = Uuid::new_v4();
    let document = DocumentId::new(Uuid::new_v4());
    let mut started = join_as(&relay, &keys, user, document, "tab", None).await;
    assert!(matches!(
        next_message(&mut started.outbound).await,
        ServerMessage::Joined { .. }
    ));
    let submit = ClientMessage::Submit {
        seq: Seq::from(1),
        base: Version::from(0),
        delta: insert("hi"),
    };
    started.session.handle(submit.clone()).await;
    // Not `unavailable`: the store could not be read either, so whether an
    // earlier attempt of this seq (another connection, another instance)
    // committed it is unknown. No ack, no error: 1013.
    assert_eq!(close_code(&mut started).await, 1013);
    assert!(
        drain(&mut started.outbound)
            .iter()
            .all(|m| !matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. })),
        "nothing but the close"
    );
    // The client resumes and re-sends once the store is back: committed
    // once.
    back.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut again = join_as(&relay, &keys, user, document, "tab", Some(Version::ZERO)).await;
    assert!(matches!(
        next_message(&mut again.outbound).await,
        ServerMessage::Joined { .. }
    ));
    again.session.handle(submit).await;
    assert_eq!(
        next_message(&mut again.outbound).await,
        ServerMessage::Ack {
            seq: Seq::from(1),
            version: Version::from(1)
        }
    );
}

#[tokio::test]
async fn losing_a_version_to_another_instance_catches_up_and_commits_at_the_next() {
    let keys = DevKeys::from_seed([2; 32]);
    let theirs = CommittedOp {
        version: Version::from(1),
        user: UserId::new(Uuid::new_v4()),
        client_id: ClientId::new("elsewhere").unwrap(),
        seq: Seq::from(1),
        delta: insert("B"),
    };
    let mut store = MockOperationStore::new();
    let remote = theirs.clone();
    let appended = empty_document(&mut store, move |after| {
        Ok(if after == Version::from(0) {
            vec![remote.clone()]
        } else {
            vec![]
        })
    });
    let mut calls = 0;
    store.expect_append().returning(move |_, _, ops| {
        appended.store(true, std::sync::atomic::Ordering::SeqCst);
        calls += 1;
        match calls {
            1 => Ok(Append::Conflict {
                current: Version::from(1),
            }),
            _ => {
                assert_eq!(ops[0].version, Version::from(2));
                Ok(Append::Committed)
            }
        }
    });
    let relay = relay_with(store, &keys);
    let user = Uuid::new_v4();
    let join = Join {
        client_id: ClientId::new("tab").unwrap(),
        token: Some(keys.editor_token(UserId::new(user), Duration::from_secs(600))),
        since: None,
    };
    let slot = relay.admit().unwrap();
    let mut started = relay
        .join(slot, DocumentId::new(Uuid::new_v4()), None, join)
        .await
        .unwrap();
    next_message(&mut started.outbound).await;
    started
        .session
        .handle(ClientMessage::Submit {
            seq: Seq::from(1),
            base: Version::from(0),
            delta: insert("A"),
        })
        .await;
    // The op it missed first, then the ack at the next version.
    assert_eq!(
        next_message(&mut started.outbound).await,
        ServerMessage::Ops { ops: vec![theirs] }
    );
    assert_eq!(
        next_message(&mut started.outbound).await,
        ServerMessage::Ack {
            seq: Seq::from(1),
            version: Version::from(2)
        }
    );
}

/// Holds each `last_seq` until `N` lookups are in flight together: a room
/// that looked its clients up one after another would wait forever.
struct LookupsTogether(tokio::sync::Barrier);

#[async_trait::async_trait]
impl Tap for LookupsTogether {
    async fn before_last_seq(&self) {
        self.0.wait().await;
    }
}

#[tokio::test]
async fn new_clients_first_submits_in_one_turn_are_looked_up_together_and_each_committed_once() {
    const CLIENTS: usize = 3;
    let keys = DevKeys::from_seed([3; 32]);
    let store = Arc::new(Tapped {
        inner: relay_adapter_memory::MemoryStore::new(),
        tap: LookupsTogether(tokio::sync::Barrier::new(CLIENTS)),
    });
    let relay = relay_on(store.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let join = Join {
            client_id: ClientId::new(format!("tab-{i}")).unwrap(),
            token: Some(keys.editor_token(UserId::new(Uuid::new_v4()), Duration::from_secs(600))),
            since: None,
        };
        let mut started = relay
            .join(relay.admit().unwrap(), document, None, join)
            .await
            .unwrap();
        assert!(matches!(
            next_message(&mut started.outbound).await,
            ServerMessage::Joined { .. }
        ));
        clients.push(started);
    }
    // Every first submit is in the room's mailbox before the room runs.
    for c in &mut clients {
        c.session
            .handle(ClientMessage::Submit {
                seq: Seq::from(1),
                base: Version::from(0),
                delta: insert("x"),
            })
            .await;
    }
    let mut versions = Vec::new();
    for c in &mut clients {
        loop {
            match next_message(&mut c.outbound).await {
                ServerMessage::Ack { seq, version } => {
                    assert_eq!(seq, Seq::from(1));
                    versions.push(version);
                    break;
                }
                ServerMessage::Ops { .. } | ServerMessage::Presence { .. } => {}
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    }
    versions.sort();
    assert_eq!(
        versions,
        vec![Version::from(1), Version::from(2), Version::from(3)]
    );
    assert_eq!(store.head(document).await, Ok(Version::from(3)));
}

/// A bug in the write path: panics right after the first append committed.
struct PanicAfterFirstAppend(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl Tap for PanicAfterFirstAppend {
    fn after_append(&self, _ops: &[CommittedOp], _outcome: &Result<Append, StoreError>) {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("a bug in the write path");
        }
    }
}

async fn join_as(
    relay: &Relay,
    keys: &DevKeys,
    user: Uuid,
    document: DocumentId,
    client: &str,
    since: Option<Version>,
) -> relay_ports::Started {
    let join = Join {
        client_id: ClientId::new(client).unwrap(),
        token: Some(keys.editor_token(UserId::new(user), Duration::from_secs(600))),
        since,
    };
    relay
        .join(relay.admit().unwrap(), document, None, join)
        .await
        .unwrap()
}

async fn close_code(started: &mut relay_ports::Started) -> u16 {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(order) = started.close.borrow_and_update().clone() {
                return order.code.as_u16();
            }
            started.close.changed().await.expect("close order");
        }
    })
    .await
    .expect("the session was closed")
}

#[tokio::test]
async fn a_room_that_panics_closes_its_sessions_with_1011_and_the_document_reopens_from_the_store()
{
    let keys = DevKeys::from_seed([4; 32]);
    let store = Arc::new(Tapped {
        inner: relay_adapter_memory::MemoryStore::new(),
        tap: PanicAfterFirstAppend(Default::default()),
    });
    let relay = relay_on(store, &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let (ua, ub) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = join_as(&relay, &keys, ua, document, "tab-a", None).await;
    let mut b = join_as(&relay, &keys, ub, document, "tab-b", None).await;
    assert!(matches!(
        next_message(&mut a.outbound).await,
        ServerMessage::Joined { .. }
    ));
    assert!(matches!(
        next_message(&mut b.outbound).await,
        ServerMessage::Joined { .. }
    ));
    let submit = ClientMessage::Submit {
        seq: Seq::from(1),
        base: Version::from(0),
        delta: insert("hi"),
    };
    a.session.handle(submit.clone()).await;
    // The op is durable, then the room's task panics before answering.
    assert_eq!(close_code(&mut a).await, 1011);
    assert_eq!(close_code(&mut b).await, 1011);
    // A new join opens the document again, from the store.
    let mut c = join_as(&relay, &keys, ub, document, "tab-c", None).await;
    match next_message(&mut c.outbound).await {
        ServerMessage::Joined {
            version, content, ..
        } => {
            assert_eq!(version, Version::from(1));
            assert_eq!(content.unwrap().apply_to_str("").unwrap(), "hi");
        }
        other => panic!("expected joined, got {other:?}"),
    }
    // The client whose op it was resumes and re-sends it: committed once.
    let mut a2 = join_as(&relay, &keys, ua, document, "tab-a", Some(Version::ZERO)).await;
    match next_message(&mut a2.outbound).await {
        ServerMessage::Joined { ops: Some(ops), .. } => assert_eq!(ops.len(), 1),
        other => panic!("expected the catch-up, got {other:?}"),
    }
    a2.session.handle(submit).await;
    loop {
        match next_message(&mut a2.outbound).await {
            ServerMessage::Ack { seq, version } => {
                assert_eq!((seq, version), (Seq::from(1), Version::from(1)));
                break;
            }
            ServerMessage::Presence { .. } => {}
            other => panic!("expected the duplicate's ack, got {other:?}"),
        }
    }
}

/// Plays a store whose answer to the first append is lost: the batch is
/// (or is not) written, and the caller is told `answer`.
struct LostAnswer {
    write: bool,
    answer: StoreError,
    used: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Tap for LostAnswer {
    fn refuse_append(&self, _ops: &[CommittedOp]) -> Option<StoreError> {
        (!self.write && !self.used.swap(true, std::sync::atomic::Ordering::SeqCst))
            .then(|| self.answer.clone())
    }
    fn answer_append(
        &self,
        _ops: &[CommittedOp],
        outcome: Result<Append, StoreError>,
    ) -> Result<Append, StoreError> {
        if self.write && !self.used.swap(true, std::sync::atomic::Ordering::SeqCst) {
            assert_eq!(outcome, Ok(Append::Committed));
            return Err(self.answer.clone());
        }
        outcome
    }
}

async fn first_submit_with(
    tap: LostAnswer,
) -> (Vec<ServerMessage>, Option<u16>, Vec<ServerMessage>) {
    let keys = DevKeys::from_seed([5; 32]);
    let store = Arc::new(Tapped {
        inner: relay_adapter_memory::MemoryStore::new(),
        tap,
    });
    let relay = relay_on(store, &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut a = join_as(&relay, &keys, Uuid::new_v4(), document, "tab-a", None).await;
    let mut b = join_as(&relay, &keys, Uuid::new_v4(), document, "tab-b", None).await;
    assert!(matches!(
        next_message(&mut a.outbound).await,
        ServerMessage::Joined { .. }
    ));
    assert!(matches!(
        next_message(&mut b.outbound).await,
        ServerMessage::Joined { .. }
    ));
    a.session
        .handle(ClientMessage::Submit {
            seq: Seq::from(1),
            base: Version::from(0),
            delta: insert("hi"),
        })
        .await;
    // Whatever A is told (or its close), and what B sees.
    let mut told = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            tokio::select! {
                frame = a.outbound.recv() => match frame {
                    Some(item @ (Outbound::Text(_) | Outbound::Joined(_))) => {
                        let m = ServerMessage::decode(&item.text().unwrap()).unwrap();
                        let done = matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. });
                        told.push(m);
                        if done { return None; }
                    }
                    _ => return None,
                },
                _ = a.close.changed() => return a.close.borrow().as_ref().map(|c| c.code.as_u16()),
            }
        }
    })
    .await
    .unwrap_or(None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut seen = drain(&mut b.outbound);
    told.retain(|m| !matches!(m, ServerMessage::Presence { .. }));
    seen.retain(|m| !matches!(m, ServerMessage::Presence { .. }));
    (told, closed, seen)
}

fn one_op(seen: &[ServerMessage]) -> bool {
    matches!(seen, [ServerMessage::Ops { ops }] if ops.len() == 1 && ops[0].version == Version::from(1))
}

#[tokio::test]
async fn an_append_that_committed_but_was_answered_unavailable_is_acknowledged() {
    let (told, closed, seen) = first_submit_with(LostAnswer {
        write: true,
        answer: StoreError::Unavailable(Cause::msg("the answer was lost")),
        used: Default::default(),
    })
    .await;
    assert_eq!(
        told,
        vec![ServerMessage::Ack {
            seq: Seq::from(1),
            version: Version::from(1)
        }],
        "never `unavailable` for an op that is in the store"
    );
    assert_eq!(closed, None);
    assert!(one_op(&seen), "{seen:?}");
}

#[tokio::test]
async fn an_append_of_unknown_outcome_found_committed_is_acknowledged() {
    let (told, closed, seen) = first_submit_with(LostAnswer {
        write: true,
        answer: StoreError::Unknown(Cause::msg("timed out")),
        used: Default::default(),
    })
    .await;
    assert!(
        matches!(&told[..], [ServerMessage::Ack { version, .. }] if *version == Version::from(1)),
        "{told:?}"
    );
    assert_eq!(closed, None);
    assert!(one_op(&seen), "{seen:?}");
}

#[tokio::test]
async fn an_append_of_unknown_outcome_not_found_is_never_called_unavailable() {
    let (told, closed, seen) = first_submit_with(LostAnswer {
        write: false,
        answer: StoreError::Unknown(Cause::msg("timed out")),
        used: Default::default(),
    })
    .await;
    // The op may still land: no answer is true, so the client is sent
    // away to reconnect and re-send it.
    assert!(told.is_empty(), "{told:?}");
    assert_eq!(closed, Some(1013));
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn an_append_known_not_written_is_answered_unavailable() {
    let (told, closed, _) = first_submit_with(LostAnswer {
        write: false,
        answer: StoreError::Unavailable(Cause::msg("connection refused")),
        used: Default::default(),
    })
    .await;
    assert!(
        matches!(
            &told[..],
            [ServerMessage::Error {
                code: ErrorCode::Unavailable,
                fatal: false,
                ..
            }]
        ),
        "{told:?}"
    );
    assert_eq!(closed, None);
}

/// A store that refuses any batch holding an insert of "poison".
struct RefusesPoison;

#[async_trait::async_trait]
impl Tap for RefusesPoison {
    fn refuse_append(&self, ops: &[CommittedOp]) -> Option<StoreError> {
        let poisoned = ops.iter().any(|op| {
            op.delta.components().iter().any(|c| {
                matches!(c, relay_domain::Component::Insert { text, .. } if text.contains("poison"))
            })
        });
        poisoned.then(|| StoreError::Rejected(Cause::msg("invalid byte sequence")))
    }
}

#[tokio::test]
async fn a_batch_the_store_refuses_fails_only_the_op_it_refuses() {
    let keys = DevKeys::from_seed([6; 32]);
    let store = Arc::new(Tapped {
        inner: relay_adapter_memory::MemoryStore::new(),
        tap: RefusesPoison,
    });
    let relay = relay_on(store, &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut clients = Vec::new();
    for name in ["tab-a", "tab-b", "tab-c"] {
        let mut c = join_as(&relay, &keys, Uuid::new_v4(), document, name, None).await;
        assert!(matches!(
            next_message(&mut c.outbound).await,
            ServerMessage::Joined { .. }
        ));
        clients.push(c);
    }
    // All three in one turn of the room: one batch.
    for (c, text) in clients.iter_mut().zip(["good ", "poison ", "fine "]) {
        c.session
            .handle(ClientMessage::Submit {
                seq: Seq::from(1),
                base: Version::from(0),
                delta: insert(text),
            })
            .await;
    }
    let mut answers = Vec::new();
    for c in &mut clients {
        loop {
            if let m @ (ServerMessage::Ack { .. } | ServerMessage::Error { .. }) =
                next_message(&mut c.outbound).await
            {
                answers.push(m);
                break;
            }
        }
    }
    assert!(
        matches!(answers[0], ServerMessage::Ack { .. }),
        "{answers:?}"
    );
    assert!(
        matches!(
            answers[1],
            ServerMessage::Error {
                code: ErrorCode::Internal,
                fatal: false,
                ..
            }
        ),
        "{answers:?}"
    );
    assert!(
        matches!(answers[2], ServerMessage::Ack { .. }),
        "{answers:?}"
    );
}

// ---------------------------------------------------------------------------
// Another writer: two instances on one store, not connected by a bus (or
// their messages lost). The store is the source of truth.

/// Joins, and commits `texts` one after another at the end of the document
/// (each acked before the next); returns the session.
async fn commit_all(
    relay: &Relay,
    keys: &DevKeys,
    document: DocumentId,
    client: &str,
    texts: &[&str],
) -> relay_ports::Started {
    let mut s = join_as(relay, keys, Uuid::new_v4(), document, client, None).await;
    let ServerMessage::Joined { mut version, .. } = next_message(&mut s.outbound).await else {
        panic!("joined")
    };
    let mut len = 0;
    for (i, t) in texts.iter().enumerate() {
        let mut d = Delta::new();
        d.retain(len).insert(t);
        len += t.chars().count();
        s.session
            .handle(ClientMessage::Submit {
                seq: Seq::new(i as u64 + 1).unwrap(),
                base: version,
                delta: d,
            })
            .await;
        loop {
            match next_message(&mut s.outbound).await {
                ServerMessage::Ack { version: v, .. } => {
                    version = v;
                    break;
                }
                ServerMessage::Presence { .. } | ServerMessage::Ops { .. } => {}
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    }
    s
}

#[tokio::test]
async fn a_join_with_a_version_only_the_store_has_catches_up_instead_of_going_backwards() {
    let keys = DevKeys::from_seed([7; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let (a, b) = (relay_on(store.clone(), &keys), relay_on(store, &keys));
    let document = DocumentId::new(Uuid::new_v4());
    // A opens the document at version 0; B then commits three ops.
    let _watcher = commit_all(&a, &keys, document, "watcher", &[]).await;
    let _writer = commit_all(&b, &keys, document, "writer", &["a", "b", "c"]).await;
    // A client that saw version 3 on B rejoins on A.
    let mut moved = join_as(
        &a,
        &keys,
        Uuid::new_v4(),
        document,
        "mover",
        Some(Version::from(3)),
    )
    .await;
    match next_message(&mut moved.outbound).await {
        ServerMessage::Joined { version, ops, .. } => {
            assert_eq!(
                version,
                Version::from(3),
                "never behind what the client saw"
            );
            assert_eq!(ops.map(|o| o.len()), Some(0));
        }
        other => panic!("expected joined, got {other:?}"),
    }
}

#[tokio::test]
async fn a_base_only_the_store_has_is_caught_up_to_not_refused_as_future() {
    let keys = DevKeys::from_seed([8; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let (a, b) = (
        relay_on(store.clone(), &keys),
        relay_on(store.clone(), &keys),
    );
    let document = DocumentId::new(Uuid::new_v4());
    let mut mover = commit_all(&a, &keys, document, "mover", &[]).await;
    let _writer = commit_all(&b, &keys, document, "writer", &["x", "y"]).await;
    // The mover saw version 2 elsewhere and submits on it, here.
    let mut d = Delta::new();
    d.retain(2).insert("!");
    mover
        .session
        .handle(ClientMessage::Submit {
            seq: Seq::from(1),
            base: Version::from(2),
            delta: d,
        })
        .await;
    let mut seen = Vec::new();
    loop {
        match next_message(&mut mover.outbound).await {
            ServerMessage::Ops { ops } => seen.extend(ops.into_iter().map(|o| o.version)),
            ServerMessage::Ack { version, .. } => {
                assert_eq!(version, Version::from(3));
                break;
            }
            ServerMessage::Presence { .. } => {}
            other => panic!("expected the ack, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![Version::from(1), Version::from(2)],
        "the ops below its ack first"
    );
    let all = store.read(document, Version::ZERO, 10).await.unwrap();
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn a_duplicate_committed_elsewhere_is_acked_after_the_ops_below_it() {
    let keys = DevKeys::from_seed([9; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let (a, b) = (
        relay_on(store.clone(), &keys),
        relay_on(store.clone(), &keys),
    );
    let document = DocumentId::new(Uuid::new_v4());
    let user = Uuid::new_v4();
    // A opens the document; on B, someone commits v1, then our client
    // commits its seq 1 as v2 - and loses the ack with its connection.
    let _watcher = commit_all(&a, &keys, document, "watcher", &[]).await;
    let _other = commit_all(&b, &keys, document, "other", &["o"]).await;
    let mut first = join_as(&b, &keys, user, document, "tab", None).await;
    assert!(matches!(
        next_message(&mut first.outbound).await,
        ServerMessage::Joined { .. }
    ));
    let submit = ClientMessage::Submit {
        seq: Seq::from(1),
        base: Version::from(1),
        delta: {
            let mut d = Delta::new();
            d.retain(1).insert("t");
            d
        },
    };
    first.session.handle(submit.clone()).await;
    while !matches!(
        next_message(&mut first.outbound).await,
        ServerMessage::Ack { .. }
    ) {}
    drop(first);
    // It rejoins on A (still at version 0 in memory), having seen nothing,
    // and re-sends.
    let mut again = join_as(&a, &keys, user, document, "tab", Some(Version::ZERO)).await;
    assert!(matches!(
        next_message(&mut again.outbound).await,
        ServerMessage::Joined { .. }
    ));
    again.session.handle(submit).await;
    let mut order = Vec::new();
    loop {
        match next_message(&mut again.outbound).await {
            ServerMessage::Ops { ops } => {
                order.extend(ops.into_iter().map(|o| format!("op {}", o.version)))
            }
            ServerMessage::Ack { seq, version } => {
                assert_eq!(seq, Seq::from(1));
                order.push(format!("ack {version}"));
                break;
            }
            ServerMessage::Presence { .. } => {}
            other => panic!("expected ops then the ack, got {other:?}"),
        }
    }
    assert_eq!(order, vec!["op 1".to_owned(), "ack 2".to_owned()]);
    assert_eq!(
        store.read(document, Version::ZERO, 10).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_store_behind_the_room_reopens_the_document_from_the_store() {
    let keys = DevKeys::from_seed([10; 32]);
    let mut store = MockOperationStore::new();
    let appended = empty_document(&mut store, |_| Ok(Vec::new()));
    let mut appends = 0;
    store.expect_append().returning(move |_, _, _| {
        appended.store(true, std::sync::atomic::Ordering::SeqCst);
        appends += 1;
        // The first commits; then the store is restored to version 0.
        Ok(if appends == 1 {
            Append::Committed
        } else {
            Append::Conflict {
                current: Version::ZERO,
            }
        })
    });
    let relay = relay_with(store, &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut s = commit_all(&relay, &keys, document, "tab", &["a"]).await;
    s.session
        .handle(ClientMessage::Submit {
            seq: Seq::from(2),
            base: Version::from(1),
            delta: insert("b"),
        })
        .await;
    // Whether that submit is in the store the room cannot tell (the store
    // is not the log the room built on): no answer, 1013.
    assert_eq!(close_code(&mut s).await, 1013);
    assert!(
        drain(&mut s.outbound)
            .iter()
            .all(|m| !matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. })),
        "nothing but the close"
    );
    // The next join sees the store's document, not the room's.
    let mut again = join_as(&relay, &keys, Uuid::new_v4(), document, "later", None).await;
    match next_message(&mut again.outbound).await {
        ServerMessage::Joined { version, .. } => assert_eq!(version, Version::ZERO),
        other => panic!("expected joined, got {other:?}"),
    }
}

/// A bus the test drives: it hands out subscriptions and sends them what
/// the test says (publishing goes nowhere).
#[derive(Default)]
struct ManualBus {
    subscribers: std::sync::Mutex<Vec<tokio::sync::mpsc::Sender<relay_ports::BusEvent>>>,
    /// Publishing never returns (a bus that stopped answering), counted.
    stalled: std::sync::atomic::AtomicBool,
    publishes: std::sync::atomic::AtomicUsize,
}

impl ManualBus {
    async fn send(&self, event: relay_ports::BusEvent) {
        let subs = self.subscribers.lock().unwrap().clone();
        for s in subs {
            s.send(event.clone()).await.unwrap();
        }
    }
}

#[async_trait::async_trait]
impl relay_ports::FanOut for ManualBus {
    async fn publish(&self, _: relay_ports::Envelope) -> Result<(), relay_ports::BusError> {
        use std::sync::atomic::Ordering;
        self.publishes.fetch_add(1, Ordering::SeqCst);
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
    async fn subscribe(
        &self,
        _: DocumentId,
    ) -> Result<relay_ports::Subscription, relay_ports::BusError> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        self.subscribers.lock().unwrap().push(tx);
        Ok(relay_ports::Subscription::new(rx, None))
    }
    async fn ping(&self) -> Result<(), relay_ports::BusError> {
        Ok(())
    }
}

/// Whether `s` receives an op within `wait` (paused time: no real wait).
async fn receives_op(s: &mut relay_ports::Started, wait: Duration) -> Option<Version> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.outbound.recv()).await {
            Ok(Some(item @ (Outbound::Text(_) | Outbound::Joined(_)))) => {
                if let ServerMessage::Ops { ops } =
                    ServerMessage::decode(&item.text().unwrap()).unwrap()
                {
                    return ops.last().map(|o| o.version);
                }
            }
            Ok(other) => panic!("expected a frame, got {other:?}"),
            Err(_) => return None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn commits_the_bus_never_brings_reach_another_instance_within_the_head_check() {
    let keys = DevKeys::from_seed([16; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    // A's bus is up and says nothing at all: every message to A is lost.
    let bus = Arc::new(ManualBus::default());
    let a = relay_on_bus(store.clone(), bus, &keys);
    let b = relay_on(store, &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut watcher = commit_all(&a, &keys, document, "watcher", &[]).await;
    let check = Config::default().bus.head_check;
    let _writer = commit_all(&b, &keys, document, "writer", &["a"]).await;
    assert_eq!(
        receives_op(&mut watcher, check * 3).await,
        Some(Version::from(1)),
        "found by the head check"
    );
    // Not once: every time the store moves on without the bus.
    let _later = commit_all(&b, &keys, document, "later", &["b", "c"]).await;
    assert_eq!(
        receives_op(&mut watcher, check * 3).await,
        Some(Version::from(3))
    );
    assert_eq!(receives_op(&mut watcher, check * 5).await, None);
}

#[tokio::test(start_paused = true)]
async fn while_the_bus_is_down_other_instances_ops_arrive_from_the_store() {
    let keys = DevKeys::from_seed([11; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let bus = Arc::new(ManualBus::default());
    let a = relay_on_bus_with(without_head_check(), store.clone(), bus.clone(), &keys);
    let b = relay_on(store, &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut watcher = commit_all(&a, &keys, document, "watcher", &[]).await;
    let poll = Config::default().bus.down_poll;

    // The bus is up but says nothing (B is not on it) and the head check
    // is off: nothing arrives (see the next test for the head check).
    let _writer = commit_all(&b, &keys, document, "writer", &["a"]).await;
    assert_eq!(receives_op(&mut watcher, poll * 5).await, None);

    // The bus goes down: A reads the store's head until it is back.
    bus.send(relay_ports::BusEvent::Disconnected).await;
    assert_eq!(
        receives_op(&mut watcher, poll * 2).await,
        Some(Version::from(1))
    );
    let _later = commit_all(&b, &keys, document, "later", &["b"]).await;
    assert_eq!(
        receives_op(&mut watcher, poll * 2).await,
        Some(Version::from(2))
    );

    // Back (`Lagged`): A catches up once and stops polling.
    let _third = commit_all(&b, &keys, document, "third", &["c"]).await;
    bus.send(relay_ports::BusEvent::Lagged).await;
    assert_eq!(
        receives_op(&mut watcher, Duration::from_millis(1)).await,
        Some(Version::from(3))
    );
    let _fourth = commit_all(&b, &keys, document, "fourth", &["d"]).await;
    assert_eq!(receives_op(&mut watcher, poll * 5).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_lost_last_message_is_found_in_the_store_once_the_bus_is_quiet() {
    let keys = DevKeys::from_seed([12; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let bus = Arc::new(ManualBus::default());
    let a = relay_on_bus_with(without_head_check(), store.clone(), bus.clone(), &keys);
    let b = relay_on(store.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut watcher = commit_all(&a, &keys, document, "watcher", &[]).await;
    let poll = Config::default().bus.down_poll;
    // B commits two ops; the bus brings A the first only.
    let _writer = commit_all(&b, &keys, document, "writer", &["a", "b"]).await;
    let ops = store.read(document, Version::ZERO, 10).await.unwrap();
    assert_eq!(ops.len(), 2);
    bus.send(relay_ports::BusEvent::Message(relay_ports::Envelope {
        origin: relay_ports::InstanceId::new_v4(),
        document,
        message: relay_ports::BusMessage::Ops {
            ops: vec![ops[0].clone()],
            prev: None,
        },
    }))
    .await;
    assert_eq!(
        receives_op(&mut watcher, Duration::from_millis(1)).await,
        Some(Version::from(1)),
        "from the bus"
    );
    assert_eq!(
        receives_op(&mut watcher, poll * 2).await,
        Some(Version::from(2)),
        "from the store, once the bus was quiet"
    );
    // One read, not a poll (the head check is off here): nothing more
    // happens.
    let _later = commit_all(&b, &keys, document, "later", &["c"]).await;
    assert_eq!(receives_op(&mut watcher, poll * 5).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_gap_on_the_bus_is_filled_from_the_store_at_once() {
    let keys = DevKeys::from_seed([13; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let bus = Arc::new(ManualBus::default());
    let a = relay_on_bus_with(without_head_check(), store.clone(), bus.clone(), &keys);
    let b = relay_on(store.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut watcher = commit_all(&a, &keys, document, "watcher", &[]).await;
    let _writer = commit_all(&b, &keys, document, "writer", &["a", "b"]).await;
    let ops = store.read(document, Version::ZERO, 10).await.unwrap();
    // Version 1's message was lost; version 2's arrives.
    bus.send(relay_ports::BusEvent::Message(relay_ports::Envelope {
        origin: relay_ports::InstanceId::new_v4(),
        document,
        message: relay_ports::BusMessage::Ops {
            ops: vec![ops[1].clone()],
            prev: Some(ops[0].key()),
        },
    }))
    .await;
    assert_eq!(
        receives_op(&mut watcher, Duration::from_millis(1)).await,
        Some(Version::from(2)),
        "both, read from the store on the gap, without waiting for a timer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_join_beyond_the_room_catches_up_from_the_store_first() {
    let keys = DevKeys::from_seed([14; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let bus = Arc::new(ManualBus::default());
    let a = relay_on_bus_with(without_head_check(), store.clone(), bus, &keys);
    let b = relay_on(store, &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let _watcher = commit_all(&a, &keys, document, "watcher", &[]).await;
    let _writer = commit_all(&b, &keys, document, "writer", &["a", "b"]).await;
    // A client that saw version 2 on the other instance moves here.
    let mut moved = join_as(
        &a,
        &keys,
        Uuid::new_v4(),
        document,
        "mover",
        Some(Version::from(2)),
    )
    .await;
    match next_message(&mut moved.outbound).await {
        ServerMessage::Joined { version, ops, .. } => {
            assert_eq!(version, Version::from(2));
            assert_eq!(ops.map(|o| o.len()), Some(0));
        }
        other => panic!("expected joined, got {other:?}"),
    }
}

/// Version `v` as another instance committed it: `text` at the end of a
/// document of `v - 1` characters.
fn elsewhere(v: u64, text: &str) -> CommittedOp {
    let mut delta = Delta::new();
    delta.retain(v as usize - 1).insert(text);
    CommittedOp {
        version: Version::new(v).unwrap(),
        user: UserId::new(Uuid::new_v4()),
        client_id: ClientId::new("elsewhere").unwrap(),
        seq: Seq::new(v).unwrap(),
        delta,
    }
}

fn relay_on_bus(
    store: Arc<dyn OperationStore>,
    bus: Arc<dyn relay_ports::FanOut>,
    keys: &DevKeys,
) -> Relay {
    relay_on_bus_with(Config::default(), store, bus, keys)
}

/// A configuration whose head check never comes in a test: only the bus,
/// the gaps it shows and its own timers bring a room other instances' ops.
fn without_head_check() -> Config {
    let mut config = Config::default();
    config.bus.head_check = Duration::from_secs(24 * 3600);
    config
}

fn relay_on_bus_with(
    config: Config,
    store: Arc<dyn OperationStore>,
    bus: Arc<dyn relay_ports::FanOut>,
    keys: &DevKeys,
) -> Relay {
    let clock = Arc::new(TokioClock::new());
    let verifier = JwtVerifier::new(JwtConfig::default());
    verifier.set_keys(keys.key_set());
    Relay::new(
        config,
        Ports {
            store,
            bus,
            presence: Arc::new(MemoryPresence::new(clock.clone())),
            permissions: Arc::new(ClaimsPermissions),
            verifier: Arc::new(verifier),
            metrics: Arc::new(MemoryMetrics::default()),
            clock,
        },
        Vec::new(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_bus_that_stops_answering_never_holds_up_commits() {
    let keys = DevKeys::from_seed([15; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let bus = Arc::new(ManualBus::default());
    bus.stalled.store(true, std::sync::atomic::Ordering::SeqCst);
    let a = relay_on_bus(store.clone(), bus.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    // Each op is acked, though no publish ever returns.
    let texts: Vec<String> = (0..20).map(|i| format!("{i},")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let writing = commit_all(&a, &keys, document, "writer", &texts);
    let _writer = tokio::time::timeout(Duration::from_secs(60), writing)
        .await
        .expect("commits were held up by the bus");
    assert_eq!(
        store
            .read(document, Version::ZERO, 100)
            .await
            .unwrap()
            .len(),
        20
    );
    assert!(
        bus.publishes.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the publisher tried"
    );
}

#[tokio::test]
async fn a_base_older_than_a_fresh_rooms_history_is_rebased_over_the_stores_ops() {
    // After a failover the new room opens from the latest snapshot, so its
    // history starts there; a client whose op was in flight on the old
    // instance re-sends it on a base before the snapshot.
    let keys = DevKeys::from_seed([12; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let document = DocumentId::new(Uuid::new_v4());
    let ops: Vec<CommittedOp> = (1..=5)
        .map(|v| elsewhere(v, &"abcde"[v as usize - 1..v as usize]))
        .collect();
    assert_eq!(
        store.append(document, None, &ops).await.unwrap(),
        Append::Committed
    );
    let mut content = Delta::new();
    content.insert("abcde");
    store
        .save_snapshot(
            document,
            relay_ports::Snapshot {
                version: Version::from(5),
                content,
            },
        )
        .await
        .unwrap();
    let relay = relay_on(store.clone(), &keys);
    let mut mover = join_as(
        &relay,
        &keys,
        Uuid::new_v4(),
        document,
        "mover",
        Some(Version::from(2)),
    )
    .await;
    assert!(matches!(
        next_message(&mut mover.outbound).await,
        ServerMessage::Joined { .. }
    ));
    // Its op: "!" at the start of "ab", the document at version 2.
    let mut d = Delta::new();
    d.insert("!").retain(2);
    mover
        .session
        .handle(ClientMessage::Submit {
            seq: Seq::from(1),
            base: Version::from(2),
            delta: d,
        })
        .await;
    loop {
        match next_message(&mut mover.outbound).await {
            ServerMessage::Ack { version, .. } => {
                assert_eq!(version, Version::from(6));
                break;
            }
            ServerMessage::Presence { .. } | ServerMessage::Ops { .. } => {}
            other => panic!("expected the ack, got {other:?}"),
        }
    }
    let all = store.read(document, Version::ZERO, 10).await.unwrap();
    let mut text = relay_domain::Document::new();
    for op in &all {
        text.apply(&op.delta.clone().fit(text.len()).unwrap())
            .unwrap();
    }
    assert_eq!(text.text(), "!abcde", "rebased over versions 3 to 5");
}

/// `op` as another writer committed it at the same version: another key.
fn impostor(op: &CommittedOp) -> CommittedOp {
    CommittedOp {
        client_id: ClientId::new("impostor").unwrap(),
        ..op.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn an_op_on_the_bus_that_contradicts_the_rooms_history_reopens_the_document() {
    let keys = DevKeys::from_seed([17; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let bus = Arc::new(ManualBus::default());
    let a = relay_on_bus_with(without_head_check(), store.clone(), bus.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut writer = commit_all(&a, &keys, document, "writer", &["a"]).await;
    let ours = store.read(document, Version::ZERO, 1).await.unwrap();
    // Another instance says version 1 is another op (the store lost ours
    // and took another): the room must not go on from its own.
    bus.send(relay_ports::BusEvent::Message(relay_ports::Envelope {
        origin: relay_ports::InstanceId::new_v4(),
        document,
        message: relay_ports::BusMessage::Ops {
            ops: vec![impostor(&ours[0])],
            prev: None,
        },
    }))
    .await;
    assert_eq!(close_code(&mut writer).await, 1013);
}

#[tokio::test(start_paused = true)]
async fn ops_whose_prev_is_not_the_op_the_room_holds_are_not_applied_and_the_room_reopens() {
    let keys = DevKeys::from_seed([18; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let bus = Arc::new(ManualBus::default());
    let a = relay_on_bus_with(without_head_check(), store.clone(), bus.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut watcher = commit_all(&a, &keys, document, "watcher", &["a"]).await;
    let ours = store.read(document, Version::ZERO, 1).await.unwrap();
    bus.send(relay_ports::BusEvent::Message(relay_ports::Envelope {
        origin: relay_ports::InstanceId::new_v4(),
        document,
        message: relay_ports::BusMessage::Ops {
            ops: vec![elsewhere(2, "b")],
            prev: Some(impostor(&ours[0]).key()),
        },
    }))
    .await;
    assert_eq!(close_code(&mut watcher).await, 1013);
    assert!(
        drain(&mut watcher.outbound)
            .iter()
            .all(|m| !matches!(m, ServerMessage::Ops { .. })),
        "the op was applied onto a base its writer did not have"
    );
}

/// Answers the second append `Diverged` (the store holds another op at the
/// head than the room applied there).
#[derive(Default)]
struct DivergesSecond(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl Tap for DivergesSecond {
    fn refuse_append(&self, ops: &[CommittedOp]) -> Option<StoreError> {
        let _ = ops;
        None
    }
    fn answer_append(
        &self,
        ops: &[CommittedOp],
        outcome: Result<Append, StoreError>,
    ) -> Result<Append, StoreError> {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            return Ok(Append::Diverged {
                current: ops[0].version.prev().unwrap(),
            });
        }
        outcome
    }
}

#[tokio::test]
async fn an_append_the_store_finds_diverged_sends_everyone_away_and_reopens() {
    let keys = DevKeys::from_seed([19; 32]);
    let store = Arc::new(Tapped {
        inner: relay_adapter_memory::MemoryStore::new(),
        tap: DivergesSecond::default(),
    });
    let relay = relay_on(store, &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut s = commit_all(&relay, &keys, document, "tab", &["a"]).await;
    let mut other = join_as(&relay, &keys, Uuid::new_v4(), document, "other", None).await;
    s.session
        .handle(ClientMessage::Submit {
            seq: Seq::from(2),
            base: Version::from(1),
            delta: insert("b"),
        })
        .await;
    assert_eq!(close_code(&mut s).await, 1013);
    assert_eq!(close_code(&mut other).await, 1013, "every session");
    assert!(
        drain(&mut s.outbound)
            .iter()
            .all(|m| !matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. })),
        "nothing but the close"
    );
}

#[tokio::test]
async fn a_document_whose_tail_is_long_is_snapshotted_when_it_opens() {
    // Snapshots failed (or the room that wrote them died): the next room
    // to open the document snapshots at once, so the one after reads less.
    let keys = DevKeys::from_seed([23; 32]);
    let store = Arc::new(relay_adapter_memory::MemoryStore::new());
    let document = DocumentId::new(Uuid::new_v4());
    let ops: Vec<CommittedOp> = (1..=12).map(|v| elsewhere(v, "x")).collect();
    assert_eq!(
        store.append(document, None, &ops).await.unwrap(),
        Append::Committed
    );
    assert_eq!(store.snapshot(document).await.unwrap(), None);
    let mut config = Config::default();
    config.store.snapshot_every = 5;
    let relay = relay_on_bus_with(config, store.clone(), Arc::new(MemoryBus::new()), &keys);
    let mut c = join_as(&relay, &keys, Uuid::new_v4(), document, "tab", None).await;
    match next_message(&mut c.outbound).await {
        ServerMessage::Joined { version, .. } => assert_eq!(version, Version::from(12)),
        other => panic!("expected joined, got {other:?}"),
    }
    let snapshot = store.snapshot(document).await.unwrap().expect("a snapshot");
    assert_eq!(snapshot.version, Version::from(12));
}

/// A bus that keeps what is published.
#[derive(Default)]
struct RecordingBus(std::sync::Mutex<Vec<relay_ports::Envelope>>);

#[async_trait::async_trait]
impl relay_ports::FanOut for RecordingBus {
    async fn publish(&self, envelope: relay_ports::Envelope) -> Result<(), relay_ports::BusError> {
        self.0.lock().unwrap().push(envelope);
        Ok(())
    }
    async fn subscribe(
        &self,
        _: DocumentId,
    ) -> Result<relay_ports::Subscription, relay_ports::BusError> {
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        Ok(relay_ports::Subscription::new(rx, None))
    }
    async fn ping(&self) -> Result<(), relay_ports::BusError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_group_commit_of_large_ops_is_published_in_envelopes_of_at_most_a_mebibyte() {
    let keys = DevKeys::from_seed([24; 32]);
    let store: Arc<dyn OperationStore> = Arc::new(relay_adapter_memory::MemoryStore::new());
    let bus = Arc::new(RecordingBus::default());
    let relay = relay_on_bus(store, bus.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    // Eight clients' 300 KB inserts, committed together where they can be.
    let big = "y".repeat(300_000);
    let mut sessions = Vec::new();
    for i in 0..8 {
        sessions.push(
            join_as(
                &relay,
                &keys,
                Uuid::new_v4(),
                document,
                &format!("tab-{i}"),
                None,
            )
            .await,
        );
    }
    for s in &mut sessions {
        s.session
            .handle(ClientMessage::Submit {
                seq: Seq::from(1),
                base: Version::ZERO,
                delta: insert(&big),
            })
            .await;
    }
    for s in &mut sessions {
        loop {
            if let ServerMessage::Ack { .. } = next_message(&mut s.outbound).await {
                break;
            }
        }
    }
    let published = bus.0.lock().unwrap().clone();
    let mut versions = Vec::new();
    let mut previous: Option<relay_domain::OpKey> = None;
    for env in &published {
        if let relay_ports::BusMessage::Ops { ops, prev } = &env.message {
            let bytes: usize = ops.iter().map(CommittedOp::memory_bytes).sum();
            assert!(
                ops.len() == 1 || bytes <= 1 << 20,
                "an envelope of {} ops, {bytes} bytes",
                ops.len()
            );
            if let Some(p) = &previous {
                assert_eq!(
                    prev.as_ref(),
                    Some(p),
                    "each envelope names the op before it"
                );
            }
            previous = ops.last().map(CommittedOp::key);
            versions.extend(ops.iter().map(|o| o.version.get()));
        }
    }
    assert_eq!(
        versions,
        (1..=8).collect::<Vec<u64>>(),
        "every op once, in order"
    );
    let envelopes = published
        .iter()
        .filter(|e| matches!(e.message, relay_ports::BusMessage::Ops { .. }))
        .count();
    assert!(
        envelopes > 1 && envelopes < 8,
        "one group commit split into a few envelopes, not one per op nor one in all: {envelopes}"
    );
}

#[tokio::test]
async fn a_client_whose_last_seq_cannot_be_read_is_sent_away_not_told_unavailable() {
    // Whether this seq was committed before (another connection, another
    // instance) is exactly what could not be read: 1013, and the re-send
    // after the store is back commits once.
    let keys = DevKeys::from_seed([25; 32]);
    let mut store = MockOperationStore::new();
    opens_empty(&mut store);
    store.expect_read().returning(|_, _, _| Ok(Vec::new()));
    let back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = back.clone();
    store.expect_last_seq().returning(move |_, _, _| {
        if up.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(None)
        } else {
            Err(StoreError::Unavailable(Cause::msg("connection refused")))
        }
    });
    store
        .expect_append()
        .returning(|_, _, _| Ok(Append::Committed));
    let relay = relay_with(store, &keys);
    let (user, document) = (Uuid::new_v4(), DocumentId::new(Uuid::new_v4()));
    let mut s = join_as(&relay, &keys, user, document, "tab", None).await;
    assert!(matches!(
        next_message(&mut s.outbound).await,
        ServerMessage::Joined { .. }
    ));
    let submit = ClientMessage::Submit {
        seq: Seq::from(1),
        base: Version::ZERO,
        delta: insert("x"),
    };
    s.session.handle(submit.clone()).await;
    assert_eq!(close_code(&mut s).await, 1013);
    assert!(
        drain(&mut s.outbound)
            .iter()
            .all(|m| !matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. })),
        "nothing but the close"
    );
    back.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut again = join_as(&relay, &keys, user, document, "tab", Some(Version::ZERO)).await;
    assert!(matches!(
        next_message(&mut again.outbound).await,
        ServerMessage::Joined { .. }
    ));
    again.session.handle(submit).await;
    assert_eq!(
        next_message(&mut again.outbound).await,
        ServerMessage::Ack {
            seq: Seq::from(1),
            version: Version::from(1)
        }
    );
}

#[tokio::test]
async fn an_out_of_order_seq_that_cannot_be_looked_up_is_sent_away_not_told_unavailable() {
    // The store knows seq 5 of this client; a submit with seq 3 is looked
    // up to tell a duplicate from out_of_order - and the lookup fails.
    let keys = DevKeys::from_seed([26; 32]);
    let mut store = MockOperationStore::new();
    opens_empty(&mut store);
    store.expect_read().returning(|_, _, _| Ok(Vec::new()));
    store
        .expect_last_seq()
        .returning(|_, _, _| Ok(Some((Seq::from(5), Version::ZERO))));
    store
        .expect_find()
        .returning(|_, _, _, _| Err(StoreError::Unavailable(Cause::msg("connection refused"))));
    let relay = relay_with(store, &keys);
    let mut s = join_as(
        &relay,
        &keys,
        Uuid::new_v4(),
        DocumentId::new(Uuid::new_v4()),
        "tab",
        None,
    )
    .await;
    assert!(matches!(
        next_message(&mut s.outbound).await,
        ServerMessage::Joined { .. }
    ));
    s.session
        .handle(ClientMessage::Submit {
            seq: Seq::from(3),
            base: Version::ZERO,
            delta: insert("x"),
        })
        .await;
    assert_eq!(close_code(&mut s).await, 1013);
    assert!(
        drain(&mut s.outbound)
            .iter()
            .all(|m| !matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. })),
        "nothing but the close"
    );
}
