//! Unit tests of the write path against a mocked operation store: what a
//! client is told when the store is down or another instance wins a
//! version. (End-to-end behaviour is tested in `tests/`.)

use crate::config::Config;
use crate::deps::Adapters;
use crate::service::Relay;
use mockall::predicate::always;
use relay_adapters::jwt::{DevKeys, JwtConfig, JwtVerifier, TokenRequest};
use relay_adapters::memory::{
    ClaimsPermissions, MemoryBus, MemoryMetrics, MemoryPresence, TokioClock,
};
use relay_domain::{ClientId, CommittedOp, Delta, DocumentId, Seq, UserId, Version};
use relay_ports::protocol::{ErrorCode, Join, Role, ServerMessage};
use relay_ports::store::{MockOperationStore, Tap, Tapped};
use relay_ports::{
    Append, ClientMessage, CollaborationService, Loaded, OperationStore, Outbound, StoreError,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn relay_with(store: MockOperationStore, keys: &DevKeys) -> Relay {
    relay_on(Arc::new(store), keys)
}

fn relay_on(store: Arc<dyn OperationStore>, keys: &DevKeys) -> Relay {
    let clock = Arc::new(TokioClock::new());
    let verifier = JwtVerifier::new(JwtConfig::default());
    verifier.set_keys(keys.key_set());
    let adapters = Adapters {
        store,
        bus: Arc::new(MemoryBus::new()),
        presence: Arc::new(MemoryPresence::new(clock.clone())),
        permissions: Arc::new(ClaimsPermissions),
        verifier: Arc::new(verifier),
        metrics: Arc::new(MemoryMetrics::default()),
        clock,
    };
    Relay::new(Config::default(), adapters, Vec::new())
}

fn token(keys: &DevKeys, user: Uuid) -> String {
    let mut docs = BTreeMap::new();
    docs.insert("*".to_owned(), Role::Editor);
    keys.mint(&TokenRequest {
        sub: user,
        name: None,
        docs,
        ttl_secs: 600,
    })
    .unwrap()
}

async fn next(outbound: &mut tokio::sync::mpsc::Receiver<Outbound>) -> ServerMessage {
    match tokio::time::timeout(Duration::from_secs(5), outbound.recv()).await {
        Ok(Some(Outbound::Text(t))) => ServerMessage::decode(&t).unwrap(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn insert(text: &str) -> Delta {
    let mut d = Delta::new();
    d.insert(text);
    d
}

fn empty_document(store: &mut MockOperationStore) {
    store.expect_load().returning(|_| Ok(Loaded::default()));
    store.expect_last_seq().returning(|_, _, _| Ok(None));
    store.expect_save_snapshot().returning(|_, _| Ok(()));
}

#[tokio::test]
async fn a_store_outage_is_answered_unavailable_and_nothing_is_acknowledged() {
    let keys = DevKeys::from_seed([1; 32]);
    let mut store = MockOperationStore::new();
    empty_document(&mut store);
    let mut calls = 0;
    store
        .expect_append()
        .with(always(), always())
        .returning(move |_, ops| {
            calls += 1;
            if calls == 1 {
                Err(StoreError::Unavailable("connection refused".into()))
            } else {
                assert_eq!(ops.len(), 1);
                assert_eq!(ops[0].version, Version::from(1));
                Ok(Append::Committed)
            }
        });
    let relay = relay_with(store, &keys);
    let user = Uuid::new_v4();
    let join = Join {
        client_id: ClientId::new("tab").unwrap(),
        token: Some(token(&keys, user)),
        since: None,
    };
    let slot = relay.admit().unwrap();
    let mut started = relay
        .join(slot, DocumentId::new(Uuid::new_v4()), None, join)
        .await
        .unwrap();
    assert!(matches!(
        next(&mut started.outbound).await,
        ServerMessage::Joined { .. }
    ));
    let submit = ClientMessage::Submit {
        seq: Seq::from(1),
        base: Version::from(0),
        delta: insert("hi"),
    };
    started.session.handle(submit.clone()).await;
    match next(&mut started.outbound).await {
        ServerMessage::Error {
            code, seq, fatal, ..
        } => {
            assert_eq!(
                (code, seq, fatal),
                (ErrorCode::Unavailable, Some(Seq::from(1)), false)
            );
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    // The same submit again, once the store is back: committed once.
    started.session.handle(submit).await;
    assert_eq!(
        next(&mut started.outbound).await,
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
    empty_document(&mut store);
    let mut calls = 0;
    store.expect_append().returning(move |_, ops| {
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
    let remote = theirs.clone();
    store.expect_read().returning(move |_, after, _| {
        Ok(if after == Version::from(0) {
            vec![remote.clone()]
        } else {
            vec![]
        })
    });
    let relay = relay_with(store, &keys);
    let user = Uuid::new_v4();
    let join = Join {
        client_id: ClientId::new("tab").unwrap(),
        token: Some(token(&keys, user)),
        since: None,
    };
    let slot = relay.admit().unwrap();
    let mut started = relay
        .join(slot, DocumentId::new(Uuid::new_v4()), None, join)
        .await
        .unwrap();
    next(&mut started.outbound).await;
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
        next(&mut started.outbound).await,
        ServerMessage::Ops { ops: vec![theirs] }
    );
    assert_eq!(
        next(&mut started.outbound).await,
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
        inner: relay_adapters::memory::MemoryStore::new(),
        tap: LookupsTogether(tokio::sync::Barrier::new(CLIENTS)),
    });
    let relay = relay_on(store.clone(), &keys);
    let document = DocumentId::new(Uuid::new_v4());
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let join = Join {
            client_id: ClientId::new(format!("tab-{i}")).unwrap(),
            token: Some(token(&keys, Uuid::new_v4())),
            since: None,
        };
        let mut started = relay
            .join(relay.admit().unwrap(), document, None, join)
            .await
            .unwrap();
        assert!(matches!(
            next(&mut started.outbound).await,
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
            match next(&mut c.outbound).await {
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
