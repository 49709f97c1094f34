//! The [`OperationStore`] contract.
//!
//! Each case takes a factory for a store (async, so a PostgreSQL adapter
//! can connect) and works on fresh documents. [`run_all`] runs every case;
//! the concurrent ones race tasks started through its [`Spawn`], so run it
//! on a multi-threaded runtime.

use super::{PATIENCE, Spawn, client, fresh_document, fresh_user, within};
use crate::store::{Append, Loaded, OperationStore, Snapshot, StoreError};
use relay_domain::{
    ClientId, CommittedOp, Delta, Document, DocumentId, OpKey, Seq, Side, Timestamp, UserId,
    Version, rebase_over_log,
};
use std::sync::Arc;
use tokio::sync::{Barrier, mpsc};

/// Runs every case, the concurrent ones included (their tasks started
/// through `spawn`).
pub async fn run_all<S: OperationStore>(make: &impl AsyncFn() -> S, spawn: &Spawn) {
    appending_at_the_next_version_commits(make).await;
    an_empty_append_commits_nothing(make).await;
    appending_at_a_taken_version_conflicts(make).await;
    appending_past_the_next_version_conflicts(make).await;
    a_committed_idempotency_key_is_a_duplicate_and_writes_nothing(make).await;
    a_batch_is_written_whole_or_not_at_all(make).await;
    a_retried_op_whose_version_is_taken_writes_nothing(make).await;
    reads_return_ranges_in_order_up_to_the_limit(make).await;
    an_unknown_document_is_empty(make).await;
    find_answers_the_version_of_an_idempotency_key(make).await;
    last_seq_is_the_highest_seq_of_a_client(make).await;
    load_without_a_snapshot_returns_every_op(make).await;
    load_with_a_snapshot_returns_it_and_only_the_tail_after_it(make).await;
    saving_a_snapshot_at_or_below_the_latest_changes_nothing(make).await;
    a_snapshot_past_the_head_is_corrupt(make).await;
    ping_answers(make).await;
    the_op_at_the_head_must_be_the_one_the_caller_applied(make).await;
    heads_answer_each_document_in_order(make).await;
    reads_within_a_budget_stop_at_the_ops_or_bytes_limit(make).await;
    the_latest_snapshot_is_read_alone(make).await;
    first_since_finds_the_first_version_committed_at_or_after_a_time(make).await;
    ops_read_back_from_the_store_rebase_a_stale_base_in_the_middle_of_a_document(make).await;
    exactly_one_concurrent_append_wins(make, spawn).await;
    concurrent_appends_to_many_documents_each_get_their_own_answer(make, spawn).await;
    a_batch_with_data_the_store_cannot_hold_fails_alone(make, spawn).await;
}

/// An op at `version` inserting `text` at the end of a document that grew
/// by one character per version.
fn op_with(version: u64, user: UserId, client_id: &ClientId, seq: u64, text: &str) -> CommittedOp {
    let mut delta = Delta::new();
    delta
        .retain(version.saturating_sub(1) as usize)
        .insert(text);
    CommittedOp {
        version: Version::new(version).unwrap(),
        user,
        client_id: client_id.clone(),
        seq: Seq::new(seq).unwrap(),
        delta,
    }
}

fn op(version: u64, user: UserId, client_id: &ClientId, seq: u64) -> CommittedOp {
    op_with(version, user, client_id, seq, "x")
}

fn snapshot(version: u64, text: &str) -> Snapshot {
    let mut content = Delta::new();
    content.insert(text);
    Snapshot {
        version: Version::new(version).unwrap(),
        content,
    }
}

async fn append<S: OperationStore>(store: &S, document: DocumentId, ops: &[CommittedOp]) -> Append {
    store
        .append(document, None, ops)
        .await
        .expect("append must not fail on a reachable store")
}

async fn all<S: OperationStore>(store: &S, document: DocumentId) -> Vec<CommittedOp> {
    store
        .read(document, Version::ZERO, usize::MAX)
        .await
        .expect("read must not fail on a reachable store")
}

async fn head<S: OperationStore>(store: &S, document: DocumentId) -> Version {
    store
        .head(document)
        .await
        .expect("head must not fail on a reachable store")
}

/// A document with `n` ops by one client, seqs 1..=n at versions 1..=n.
async fn document_with<S: OperationStore>(
    store: &S,
    n: u64,
) -> (DocumentId, UserId, ClientId, Vec<CommittedOp>) {
    let (document, user, client_id) = (fresh_document(), fresh_user(), client("writer"));
    let ops: Vec<CommittedOp> = (1..=n).map(|v| op(v, user, &client_id, v)).collect();
    for op in &ops {
        assert_eq!(
            append(store, document, std::slice::from_ref(op)).await,
            Append::Committed,
            "appending version {} at head + 1 must commit",
            op.version
        );
    }
    (document, user, client_id, ops)
}

pub async fn appending_at_the_next_version_commits<S: OperationStore>(make: &impl AsyncFn() -> S) {
    let store = make().await;
    let (document, user, client_id, mut ops) = document_with(&store, 2).await;
    assert_eq!(head(&store, document).await, Version::from(2));
    assert_eq!(all(&store, document).await, ops);

    let batch = vec![op(3, user, &client_id, 3), op(4, user, &client_id, 4)];
    assert_eq!(
        append(&store, document, &batch).await,
        Append::Committed,
        "a batch starting at head + 1 must commit"
    );
    ops.extend(batch);
    assert_eq!(head(&store, document).await, Version::from(4));
    assert_eq!(
        all(&store, document).await,
        ops,
        "the store must give back exactly the ops it committed"
    );
}

pub async fn an_empty_append_commits_nothing<S: OperationStore>(make: &impl AsyncFn() -> S) {
    let store = make().await;
    let unknown = fresh_document();
    assert_eq!(append(&store, unknown, &[]).await, Append::Committed);
    assert_eq!(head(&store, unknown).await, Version::ZERO);

    let (document, _, _, ops) = document_with(&store, 2).await;
    assert_eq!(append(&store, document, &[]).await, Append::Committed);
    assert_eq!(all(&store, document).await, ops);
}

pub async fn appending_at_a_taken_version_conflicts<S: OperationStore>(make: &impl AsyncFn() -> S) {
    let store = make().await;
    let (document, _, _, ops) = document_with(&store, 2).await;
    let rival = (fresh_user(), client("rival"));
    for taken in [2, 1] {
        let loser = op_with(taken, rival.0, &rival.1, 1, "y");
        assert_eq!(
            append(&store, document, &[loser]).await,
            Append::Conflict {
                current: Version::from(2)
            },
            "appending at taken version {taken} must conflict with the head"
        );
    }
    assert_eq!(
        all(&store, document).await,
        ops,
        "a conflict must write nothing"
    );
    assert_eq!(
        store.find(document, rival.0, &rival.1, Seq::from(1)).await,
        Ok(None)
    );
}

pub async fn appending_past_the_next_version_conflicts<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (user, client_id) = (fresh_user(), client("gap"));

    let unknown = fresh_document();
    assert_eq!(
        append(&store, unknown, &[op(2, user, &client_id, 1)]).await,
        Append::Conflict {
            current: Version::ZERO
        },
        "version 2 on an empty document leaves a gap"
    );
    assert_eq!(head(&store, unknown).await, Version::ZERO);

    let (document, _, _, ops) = document_with(&store, 1).await;
    let gap = vec![op(3, user, &client_id, 1), op(4, user, &client_id, 2)];
    assert_eq!(
        append(&store, document, &gap).await,
        Append::Conflict {
            current: Version::from(1)
        },
        "a batch starting past head + 1 must conflict"
    );
    assert_eq!(all(&store, document).await, ops, "a gap must write nothing");
    assert_eq!(store.last_seq(document, user, &client_id).await, Ok(None));
}

pub async fn a_committed_idempotency_key_is_a_duplicate_and_writes_nothing<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (document, user, client_id, mut ops) = document_with(&store, 2).await;

    let again = op_with(3, user, &client_id, 1, "again");
    assert_eq!(
        append(&store, document, &[again]).await,
        Append::Duplicate {
            user,
            client_id: client_id.clone(),
            seq: Seq::from(1),
            version: Version::from(1),
        },
        "a committed (user, client_id, seq) must be a duplicate naming its first version"
    );
    assert_eq!(
        all(&store, document).await,
        ops,
        "a duplicate must write nothing"
    );

    // The key is the whole triple, per document.
    let other_client = op(3, user, &client("other-tab"), 1);
    let other_user = op(4, fresh_user(), &client_id, 1);
    for fresh in [other_client, other_user] {
        assert_eq!(
            append(&store, document, std::slice::from_ref(&fresh)).await,
            Append::Committed,
            "the same seq from another client or user is not a duplicate"
        );
        ops.push(fresh);
    }
    let elsewhere = fresh_document();
    assert_eq!(
        append(&store, elsewhere, &[op(1, user, &client_id, 1)]).await,
        Append::Committed,
        "the same key on another document is not a duplicate"
    );
    assert_eq!(all(&store, document).await, ops);
}

pub async fn a_batch_is_written_whole_or_not_at_all<S: OperationStore>(make: &impl AsyncFn() -> S) {
    let store = make().await;
    let (document, user, client_id, mut ops) = document_with(&store, 1).await;
    let newcomer = (fresh_user(), client("newcomer"));

    let batch = vec![
        op(2, newcomer.0, &newcomer.1, 1),
        op_with(3, user, &client_id, 1, "again"),
    ];
    assert_eq!(
        append(&store, document, &batch).await,
        Append::Duplicate {
            user,
            client_id: client_id.clone(),
            seq: Seq::from(1),
            version: Version::from(1),
        },
        "a batch whose second op is a duplicate must be reported as a duplicate"
    );
    assert_eq!(
        all(&store, document).await,
        ops,
        "a batch with a duplicate must write none of its ops"
    );
    assert_eq!(
        store
            .find(document, newcomer.0, &newcomer.1, Seq::from(1))
            .await,
        Ok(None),
        "the batch's first op must not have been written"
    );

    let batch = vec![
        op(2, newcomer.0, &newcomer.1, 1),
        op(3, user, &client_id, 2),
        op(4, newcomer.0, &newcomer.1, 2),
    ];
    assert_eq!(append(&store, document, &batch).await, Append::Committed);
    ops.extend(batch);
    assert_eq!(all(&store, document).await, ops);
}

/// The outcome of a retry is unknown to the caller, so it may resend an op
/// that is in fact committed, at the version it had. Both conditions hold;
/// the trait does not rank them, so either answer is accepted, but it must
/// be accurate and write nothing.
pub async fn a_retried_op_whose_version_is_taken_writes_nothing<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (document, user, client_id, ops) = document_with(&store, 2).await;
    let answer = append(&store, document, &ops[1..]).await;
    let accurate = match &answer {
        Append::Conflict { current } => *current == Version::from(2),
        Append::Duplicate {
            user: u,
            client_id: c,
            seq,
            version,
        } => *u == user && *c == client_id && *seq == Seq::from(2) && *version == Version::from(2),
        Append::Committed | Append::Diverged { .. } => false,
    };
    assert!(
        accurate,
        "resending the op committed at version 2 answered {answer:?}"
    );
    assert_eq!(all(&store, document).await, ops);
}

pub async fn reads_return_ranges_in_order_up_to_the_limit<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (document, _, _, ops) = document_with(&store, 5).await;
    let cases: [(u64, usize, std::ops::Range<usize>); 8] = [
        (0, 10, 0..5),
        (0, 5, 0..5),
        (0, 2, 0..2),
        (2, 2, 2..4),
        (4, 10, 4..5),
        (5, 10, 5..5),
        (9, 10, 5..5),
        (1, 0, 1..1),
    ];
    for (after, limit, expected) in cases {
        assert_eq!(
            store
                .read(document, Version::new(after).unwrap(), limit)
                .await,
            Ok(ops[expected].to_vec()),
            "read(after {after}, limit {limit})"
        );
    }
    assert_eq!(
        store.read(fresh_document(), Version::ZERO, 10).await,
        Ok(vec![])
    );
}

pub async fn an_unknown_document_is_empty<S: OperationStore>(make: &impl AsyncFn() -> S) {
    let store = make().await;
    let document = fresh_document();
    let (user, client_id) = (fresh_user(), client("nobody"));
    assert_eq!(store.load(document).await, Ok(Loaded::default()));
    assert_eq!(store.head(document).await, Ok(Version::ZERO));
    assert_eq!(store.read(document, Version::ZERO, 10).await, Ok(vec![]));
    assert_eq!(
        store.find(document, user, &client_id, Seq::from(1)).await,
        Ok(None)
    );
    assert_eq!(store.last_seq(document, user, &client_id).await, Ok(None));
}

pub async fn find_answers_the_version_of_an_idempotency_key<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (document, user, client_id, _) = document_with(&store, 3).await;
    for v in 1..=3 {
        assert_eq!(
            store
                .find(document, user, &client_id, Seq::new(v).unwrap())
                .await,
            Ok(Some(Version::new(v).unwrap()))
        );
    }
    assert_eq!(
        store.find(document, user, &client_id, Seq::from(4)).await,
        Ok(None)
    );
    assert_eq!(
        store
            .find(document, user, &client("other"), Seq::from(1))
            .await,
        Ok(None)
    );
    assert_eq!(
        store
            .find(document, fresh_user(), &client_id, Seq::from(1))
            .await,
        Ok(None)
    );
    assert_eq!(
        store
            .find(fresh_document(), user, &client_id, Seq::from(1))
            .await,
        Ok(None)
    );
}

pub async fn last_seq_is_the_highest_seq_of_a_client<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let document = fresh_document();
    let (user, tab, other_tab) = (fresh_user(), client("tab"), client("other-tab"));
    let other_user = fresh_user();
    let ops = vec![
        op(1, user, &tab, 1),
        op(2, user, &tab, 2),
        op(3, user, &other_tab, 7),
        op(4, user, &tab, 5),
        op(5, other_user, &tab, 9),
    ];
    assert_eq!(append(&store, document, &ops).await, Append::Committed);
    assert_eq!(
        store.last_seq(document, user, &tab).await,
        Ok(Some((Seq::from(5), Version::from(4))))
    );
    assert_eq!(
        store.last_seq(document, user, &other_tab).await,
        Ok(Some((Seq::from(7), Version::from(3))))
    );
    assert_eq!(
        store.last_seq(document, other_user, &tab).await,
        Ok(Some((Seq::from(9), Version::from(5))))
    );
    assert_eq!(
        store.last_seq(document, other_user, &other_tab).await,
        Ok(None)
    );
}

pub async fn load_without_a_snapshot_returns_every_op<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (document, _, _, ops) = document_with(&store, 3).await;
    assert_eq!(
        store.load(document).await,
        Ok(Loaded {
            snapshot: None,
            tail: ops
        })
    );
}

pub async fn load_with_a_snapshot_returns_it_and_only_the_tail_after_it<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (document, _, _, ops) = document_with(&store, 5).await;
    store
        .save_snapshot(document, snapshot(3, "xxx"))
        .await
        .expect("a snapshot below the head must be saved");
    assert_eq!(
        store.load(document).await,
        Ok(Loaded {
            snapshot: Some(snapshot(3, "xxx")),
            tail: ops[3..].to_vec(),
        })
    );
    assert_eq!(
        all(&store, document).await,
        ops,
        "a snapshot must not remove ops from the log"
    );

    store
        .save_snapshot(document, snapshot(5, "xxxxx"))
        .await
        .expect("a snapshot at the head must be saved");
    assert_eq!(
        store.load(document).await,
        Ok(Loaded {
            snapshot: Some(snapshot(5, "xxxxx")),
            tail: vec![],
        })
    );
}

pub async fn saving_a_snapshot_at_or_below_the_latest_changes_nothing<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (document, _, _, ops) = document_with(&store, 4).await;
    store
        .save_snapshot(document, snapshot(3, "xxx"))
        .await
        .expect("save");
    for older in [snapshot(3, "yyy"), snapshot(2, "zz")] {
        assert_eq!(
            store.save_snapshot(document, older.clone()).await,
            Ok(()),
            "saving {older:?} at or below the latest is not an error"
        );
    }
    assert_eq!(
        store.load(document).await,
        Ok(Loaded {
            snapshot: Some(snapshot(3, "xxx")),
            tail: ops[3..].to_vec(),
        }),
        "saving at or below the latest snapshot must change nothing"
    );
}

pub async fn a_snapshot_past_the_head_is_corrupt<S: OperationStore>(make: &impl AsyncFn() -> S) {
    let store = make().await;
    let (document, _, _, ops) = document_with(&store, 2).await;
    assert!(
        matches!(
            store.save_snapshot(document, snapshot(3, "xxx")).await,
            Err(StoreError::Corrupt(_))
        ),
        "a snapshot past the head must be refused as Corrupt"
    );
    assert!(matches!(
        store
            .save_snapshot(fresh_document(), snapshot(1, "x"))
            .await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(
        store.load(document).await,
        Ok(Loaded {
            snapshot: None,
            tail: ops
        })
    );
}

pub async fn ping_answers<S: OperationStore>(make: &impl AsyncFn() -> S) {
    assert_eq!(make().await.ping().await, Ok(()));
}

/// The compare-and-set covers the identity of the op at the head: with
/// `prev` naming the op the caller applied there, a matching one commits,
/// another one is `Diverged` (the head as `current`) and writes nothing;
/// no `prev` or no op at the head passes. A wrong version is still a
/// `Conflict` and a committed key still a `Duplicate`.
pub async fn the_op_at_the_head_must_be_the_one_the_caller_applied<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let (document, user, client_id, mut ops) = document_with(&store, 2).await;
    let stranger = OpKey {
        user: fresh_user(),
        client_id: client("stranger"),
        seq: Seq::from(2),
    };

    let next = op(3, user, &client_id, 3);
    assert_eq!(
        store
            .append(document, Some(ops[1].key()), std::slice::from_ref(&next))
            .await,
        Ok(Append::Committed),
        "the op at the head is the caller's: the append commits"
    );
    ops.push(next);

    for other in [stranger.clone(), ops[1].key()] {
        let batch = vec![op(4, user, &client_id, 4), op(5, user, &client_id, 5)];
        assert_eq!(
            store.append(document, Some(other.clone()), &batch).await,
            Ok(Append::Diverged {
                current: Version::from(3)
            }),
            "the head is at the expected version but holds another op than {other:?}"
        );
        assert_eq!(
            all(&store, document).await,
            ops,
            "a diverged append writes nothing"
        );
        assert_eq!(head(&store, document).await, Version::from(3));
        assert_eq!(
            store.find(document, user, &client_id, Seq::from(4)).await,
            Ok(None)
        );
    }

    // A wrong version is a conflict whatever the prev; a committed key
    // with the right prev is a duplicate.
    assert_eq!(
        store
            .append(
                document,
                Some(stranger.clone()),
                &[op(3, user, &client_id, 9)]
            )
            .await,
        Ok(Append::Conflict {
            current: Version::from(3)
        })
    );
    assert_eq!(
        store
            .append(
                document,
                Some(ops[2].key()),
                &[op_with(4, user, &client_id, 1, "again")]
            )
            .await,
        Ok(Append::Duplicate {
            user,
            client_id: client_id.clone(),
            seq: Seq::from(1),
            version: Version::from(1),
        })
    );

    let next = op(4, user, &client_id, 4);
    assert_eq!(
        store
            .append(document, None, std::slice::from_ref(&next))
            .await,
        Ok(Append::Committed),
        "without a prev only the version is checked"
    );
    ops.push(next);
    assert_eq!(all(&store, document).await, ops);

    // No op at the head (version 0): nothing to check.
    let fresh = fresh_document();
    let first = op(1, user, &client_id, 1);
    assert_eq!(
        store
            .append(fresh, Some(stranger), std::slice::from_ref(&first))
            .await,
        Ok(Append::Committed),
        "a head without an op passes the identity check"
    );
    assert_eq!(all(&store, fresh).await, vec![first]);
}

pub async fn heads_answer_each_document_in_order<S: OperationStore>(make: &impl AsyncFn() -> S) {
    let store = make().await;
    let (three, ..) = document_with(&store, 3).await;
    let (one, ..) = document_with(&store, 1).await;
    let unknown = fresh_document();
    assert_eq!(
        store.heads(&[three, unknown, one, three]).await,
        Ok(vec![
            Version::from(3),
            Version::ZERO,
            Version::from(1),
            Version::from(3)
        ]),
        "each document's head in the order asked, 0 for an unknown one"
    );
    assert_eq!(store.heads(&[]).await, Ok(vec![]));
    let many: Vec<DocumentId> = (0..2_000)
        .map(|i| if i % 2 == 0 { one } else { fresh_document() })
        .collect();
    let answer = store.heads(&many).await.expect("heads of many documents");
    assert_eq!(answer.len(), many.len());
    for (i, h) in answer.iter().enumerate() {
        let expected = if i % 2 == 0 { 1 } else { 0 };
        assert_eq!(
            *h,
            Version::from(expected),
            "document {i} of {}",
            many.len()
        );
    }
}

/// A document of five ops, each inserting 1,000 characters (so each
/// delta is a bit over 1,000 bytes as JSON, however the store formats it).
pub async fn reads_within_a_budget_stop_at_the_ops_or_bytes_limit<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let document = fresh_document();
    let (user, client_id) = (fresh_user(), client("large"));
    let ops: Vec<CommittedOp> = (1..=5u64)
        .map(|v| {
            let text: String = std::iter::repeat_n(char::from(b'a' + v as u8), 1_000).collect();
            let mut delta = Delta::new();
            delta.retain((v as usize - 1) * 1_000).insert(&text);
            CommittedOp {
                version: Version::new(v).unwrap(),
                user,
                client_id: client_id.clone(),
                seq: Seq::new(v).unwrap(),
                delta,
            }
        })
        .collect();
    assert_eq!(append(&store, document, &ops).await, Append::Committed);
    let cases: [(u64, usize, usize, std::ops::Range<usize>); 9] = [
        (0, 10, usize::MAX, 0..5),
        (0, 2, usize::MAX, 0..2),
        (0, 10, 2_500, 0..2),
        (1, 10, 2_500, 1..3),
        (0, 10, 3_500, 0..3),
        (0, 1, 3_500, 0..1),
        // The first op comes back even when it alone is over the budget.
        (0, 10, 500, 0..1),
        (3, 10, 0, 3..4),
        (5, 10, usize::MAX, 5..5),
    ];
    for (after, max_ops, max_bytes, expected) in cases {
        assert_eq!(
            store
                .read_within(document, Version::new(after).unwrap(), max_ops, max_bytes)
                .await,
            Ok(ops[expected].to_vec()),
            "read_within(after {after}, {max_ops} ops, {max_bytes} bytes)"
        );
    }
    assert_eq!(
        store
            .read_within(document, Version::ZERO, 0, usize::MAX)
            .await,
        Ok(vec![])
    );
    assert_eq!(
        store
            .read_within(fresh_document(), Version::ZERO, 10, 10_000)
            .await,
        Ok(vec![])
    );
}

pub async fn the_latest_snapshot_is_read_alone<S: OperationStore>(make: &impl AsyncFn() -> S) {
    let store = make().await;
    assert_eq!(store.snapshot(fresh_document()).await, Ok(None));
    let (document, ..) = document_with(&store, 4).await;
    assert_eq!(store.snapshot(document).await, Ok(None));
    for v in [2, 3] {
        store
            .save_snapshot(document, snapshot(v, &"x".repeat(v as usize)))
            .await
            .expect("save");
    }
    assert_eq!(
        store.snapshot(document).await,
        Ok(Some(snapshot(3, "xxx"))),
        "the latest snapshot"
    );
}

fn wall_clock() -> Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Commit times are the store's (the wall clock here, a database's own
/// clock there): the gap between the two appends is wide enough for a
/// store on another host with a clock a little off.
pub async fn first_since_finds_the_first_version_committed_at_or_after_a_time<S: OperationStore>(
    make: &impl AsyncFn() -> S,
) {
    const GAP: std::time::Duration = std::time::Duration::from_millis(300);
    let store = make().await;
    let before = wall_clock();
    let (document, user, client_id, _) = document_with(&store, 2).await;
    assert_eq!(
        store.first_since(document, before.plus_ms(0)).await,
        Ok(Some(Version::from(1)))
    );
    tokio::time::sleep(GAP).await;
    let between = wall_clock();
    assert_eq!(
        store.first_since(document, between).await,
        Ok(None),
        "nothing committed since"
    );
    tokio::time::sleep(GAP).await;
    let later = vec![op(3, user, &client_id, 3), op(4, user, &client_id, 4)];
    assert_eq!(append(&store, document, &later).await, Append::Committed);
    assert_eq!(
        store.first_since(document, between).await,
        Ok(Some(Version::from(3))),
        "the first op committed after {between:?}"
    );
    assert_eq!(
        store.first_since(document, Timestamp::from_millis(0)).await,
        Ok(Some(Version::from(1)))
    );
    assert_eq!(
        store
            .first_since(document, wall_clock().plus_ms(60_000))
            .await,
        Ok(None)
    );
    assert_eq!(
        store
            .first_since(document, Timestamp::from_millis(u64::MAX))
            .await,
        Ok(None)
    );
    assert_eq!(store.first_since(fresh_document(), before).await, Ok(None));
}

/// A client's delta made at version 1 of "hello world", re-sent after three
/// others inserted in the middle of the text (as clients send them: no
/// trailing retain). Rebased over the ops read back from the store, given
/// the length now, it must be what rebasing over the full-length originals
/// gives, and land where the text says. A store may give deltas back
/// without their trailing retain, so the first op's `base_len` is not the
/// document's length: rebasing must not take it as one.
pub async fn ops_read_back_from_the_store_rebase_a_stale_base_in_the_middle_of_a_document<
    S: OperationStore,
>(
    make: &impl AsyncFn() -> S,
) {
    let store = make().await;
    let document = fresh_document();
    let (user, client_id) = (fresh_user(), client("middle"));
    let at = |version: u64, delta: Delta| CommittedOp {
        version: Version::new(version).unwrap(),
        user,
        client_id: client_id.clone(),
        seq: Seq::new(version).unwrap(),
        delta,
    };
    let mut first = Delta::new();
    first.insert("hello world");
    let mut big = Delta::new();
    big.retain(5).insert(" big");
    let mut bad = Delta::new();
    bad.retain(9).insert(" bad");
    let mut xx = Delta::new();
    xx.retain(2).insert("XX");
    let middle = vec![at(2, big), at(3, bad), at(4, xx)];
    assert_eq!(
        append(&store, document, &[at(1, first.clone())]).await,
        Append::Committed
    );
    assert_eq!(append(&store, document, &middle).await, Append::Committed);

    let mut text = Document::new();
    text.apply(&first).expect("first");
    let mut full = Vec::new();
    for op in &middle {
        let fitted = op.delta.clone().fit(text.len()).expect("fits the document");
        text.apply(&fitted).expect("applies");
        full.push(fitted);
    }
    let len_after = text.len();
    assert_eq!(text.text(), "heXXllo big bad world");

    let mut client_delta = Delta::new();
    client_delta.retain(6).insert("dear ");
    let mut expected = client_delta.clone().fit(11).expect("client delta");
    for op in &full {
        expected = expected.transform(op, Side::Right).expect("transform");
    }

    let read_back = store
        .read(document, Version::from(1), 10)
        .await
        .expect("read");
    assert_eq!(read_back.len(), 3);
    for (got, sent) in read_back.iter().zip(&middle) {
        assert_eq!(got.key(), sent.key());
        assert_eq!(got.version, sent.version);
    }
    let rebased = rebase_over_log(client_delta, &read_back, len_after)
        .expect("ops read back from the store rebase a base in the middle");
    assert_eq!(rebased, expected, "the same as over the full-length ops");
    text.apply(&rebased).expect("the rebased delta applies");
    assert_eq!(text.text(), "heXXllo big bad dear world");
}

/// How many tasks race for each version.
pub const RACERS: usize = 8;
/// How many versions they race for.
pub const ROUNDS: u64 = 5;

/// [`RACERS`] tasks append different ops at the same version at once:
/// exactly one commits, every other one gets `Conflict` with the winner's
/// version as the head, and the store holds the winner's op. Repeated for
/// [`ROUNDS`] consecutive versions. Run it on a multi-threaded runtime so
/// the racers really run in parallel.
pub async fn exactly_one_concurrent_append_wins<S: OperationStore>(
    make: &impl AsyncFn() -> S,
    spawn: &Spawn,
) {
    let store = Arc::new(make().await);
    let document = fresh_document();
    let racers: Vec<(UserId, ClientId)> = (0..RACERS)
        .map(|i| (fresh_user(), client(&format!("racer-{i}"))))
        .collect();

    for round in 1..=ROUNDS {
        let version = Version::new(round).unwrap();
        let start = Arc::new(Barrier::new(RACERS));
        let (results, mut answers) = mpsc::channel(RACERS);
        for (i, (user, client_id)) in racers.iter().enumerate() {
            let text = char::from(b'a' + i as u8).to_string();
            let op = op_with(round, *user, client_id, round, &text);
            let (store, start, results) = (store.clone(), start.clone(), results.clone());
            spawn(Box::pin(async move {
                start.wait().await;
                let answer = store
                    .append(document, None, std::slice::from_ref(&op))
                    .await;
                let _ = results.send((op, answer)).await;
            }));
        }
        drop(results);

        let mut winners = Vec::new();
        let mut answered = 0;
        while let Some((op, answer)) = within("a racing append", answers.recv()).await {
            answered += 1;
            match answer {
                Ok(Append::Committed) => winners.push(op),
                Ok(Append::Conflict { current }) => assert_eq!(
                    current, version,
                    "a loser of version {version} must see the winner's version as the head"
                ),
                other => panic!("a racer for version {version} got {other:?}"),
            }
        }
        assert_eq!(
            answered, RACERS,
            "every racer must answer (did one panic? patience {PATIENCE:?})"
        );
        assert_eq!(
            winners.len(),
            1,
            "exactly one of {RACERS} concurrent appends at version {version} must commit"
        );
        assert_eq!(
            store
                .read(document, Version::new(round - 1).unwrap(), 10)
                .await,
            Ok(winners),
            "the store must hold the winner's op at version {version}, and only it"
        );
    }
    assert_eq!(
        store.head(document).await,
        Ok(Version::new(ROUNDS).unwrap())
    );
}

/// How many documents [`concurrent_appends_to_many_documents_each_get_their_own_answer`] uses.
pub const DOCUMENTS: usize = 24;

/// [`DOCUMENTS`] documents, each holding two ops, get one append each at
/// the same moment: a third of them at the next version (`Committed`), a
/// third at a taken version (`Conflict`), a third re-sending a committed
/// idempotency key at the next version (`Duplicate`). A store that batches
/// appends of many documents together must still answer each one on its
/// own and write exactly the committed ones.
pub async fn concurrent_appends_to_many_documents_each_get_their_own_answer<S: OperationStore>(
    make: &impl AsyncFn() -> S,
    spawn: &Spawn,
) {
    let store = Arc::new(make().await);
    let mut documents = Vec::new();
    for _ in 0..DOCUMENTS {
        documents.push(document_with(&*store, 2).await);
    }
    let start = Arc::new(Barrier::new(DOCUMENTS));
    let (results, mut answers) = mpsc::channel(DOCUMENTS);
    for (i, (document, user, client_id, _)) in documents.iter().enumerate() {
        let batch = match i % 3 {
            0 => vec![op(3, *user, client_id, 3), op(4, *user, client_id, 4)],
            1 => vec![op(2, *user, client_id, 3)],
            _ => vec![op_with(3, *user, client_id, 1, "again")],
        };
        let (store, start, results, document) =
            (store.clone(), start.clone(), results.clone(), *document);
        spawn(Box::pin(async move {
            start.wait().await;
            let answer = store.append(document, None, &batch).await;
            let _ = results.send((i, batch, answer)).await;
        }));
    }
    drop(results);

    let mut answered = 0;
    while let Some((i, batch, answer)) = within("an append", answers.recv()).await {
        answered += 1;
        let (document, user, client_id, ops) = &documents[i];
        let expected = match i % 3 {
            0 => Append::Committed,
            1 => Append::Conflict {
                current: Version::from(2),
            },
            _ => Append::Duplicate {
                user: *user,
                client_id: client_id.clone(),
                seq: Seq::from(1),
                version: Version::from(1),
            },
        };
        assert_eq!(
            answer,
            Ok(expected),
            "document {i} of {DOCUMENTS} appended {} op(s) at version {}",
            batch.len(),
            batch[0].version
        );
        let mut held = ops.clone();
        if i % 3 == 0 {
            held.extend(batch);
        }
        assert_eq!(
            all(&*store, *document).await,
            held,
            "document {i} must hold its own ops and exactly the committed append"
        );
        assert_eq!(
            head(&*store, *document).await,
            Version::new(held.len() as u64).unwrap()
        );
    }
    assert_eq!(
        answered, DOCUMENTS,
        "every append must answer (did one panic? patience {PATIENCE:?})"
    );
}

/// How many good documents [`a_batch_with_data_the_store_cannot_hold_fails_alone`] commits.
pub const GOOD_DOCUMENTS: usize = 50;

/// The ops PostgreSQL cannot store: U+0000 in inserted text, in an
/// attribute value, in an attribute name.
fn unstorable(user: UserId, client_id: &ClientId) -> Vec<CommittedOp> {
    use relay_domain::Attributes;
    let with = |delta: Delta| CommittedOp {
        version: Version::from(1),
        user,
        client_id: client_id.clone(),
        seq: Seq::from(1),
        delta,
    };
    let mut text = Delta::new();
    text.insert("a\u{0}b");
    let mut value = Delta::new();
    value.insert_with("x", Attributes::new().with("color", "re\u{0}d"));
    let mut name = Delta::new();
    name.insert_with("x", Attributes::new().with("b\u{0}ld", true));
    vec![with(text), with(value), with(name)]
}

/// [`GOOD_DOCUMENTS`] documents append at the same moment as one whose
/// batch carries data the store cannot hold (U+0000 in text, in an
/// attribute value or name; once each): that batch is `Rejected` and
/// writes nothing, every other document commits. Every store refuses the
/// same data, so the in-memory store behaves as PostgreSQL does.
pub async fn a_batch_with_data_the_store_cannot_hold_fails_alone<S: OperationStore>(
    make: &impl AsyncFn() -> S,
    spawn: &Spawn,
) {
    let store = Arc::new(make().await);
    let (bad_user, bad_client) = (fresh_user(), client("bad"));
    for bad in unstorable(bad_user, &bad_client) {
        let bad_document = fresh_document();
        let start = Arc::new(Barrier::new(GOOD_DOCUMENTS + 1));
        let (results, mut answers) = mpsc::channel(GOOD_DOCUMENTS + 1);
        let mut batches = vec![(bad_document, vec![bad.clone()])];
        for _ in 0..GOOD_DOCUMENTS {
            let (user, client_id) = (fresh_user(), client("good"));
            batches.push((
                fresh_document(),
                vec![op_with(1, user, &client_id, 1, "fine")],
            ));
        }
        for (i, (document, batch)) in batches.iter().cloned().enumerate() {
            let (store, start, results) = (store.clone(), start.clone(), results.clone());
            spawn(Box::pin(async move {
                start.wait().await;
                let answer = store.append(document, None, &batch).await;
                let _ = results.send((i, answer)).await;
            }));
        }
        drop(results);
        let mut answered = 0;
        while let Some((i, answer)) = within("an append", answers.recv()).await {
            answered += 1;
            let (document, batch) = &batches[i];
            if i == 0 {
                assert!(
                    matches!(answer, Err(StoreError::Rejected(_))),
                    "a batch with {:?} must be refused, got {answer:?}",
                    batch[0].delta
                );
                assert_eq!(all(&*store, *document).await, vec![], "nothing written");
            } else {
                assert_eq!(answer, Ok(Append::Committed), "good document {i}");
                assert_eq!(&all(&*store, *document).await, batch);
            }
        }
        assert_eq!(answered, GOOD_DOCUMENTS + 1);
    }
}
