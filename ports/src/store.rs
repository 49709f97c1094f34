//! The operation store: the durable, ordered log of each document's
//! operations, with snapshots. It is the source of truth: nothing is
//! acknowledged to a client before [`OperationStore::append`] answered
//! [`Append::Committed`].

use crate::error::Cause;
use async_trait::async_trait;
use relay_domain::{
    ClientId, CommittedOp, Delta, DocumentId, OpKey, Seq, Timestamp, UserId, Version,
};

/// A document's content at a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub version: Version,
    /// A delta of inserts only.
    pub content: Delta,
}

/// What opening a document finds: the latest snapshot (if any) and every op
/// after it, in version order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub snapshot: Option<Snapshot>,
    pub tail: Vec<CommittedOp>,
}

/// The answer to an append. Losing a race is a value, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Append {
    /// Every op of the batch is durable.
    Committed,
    /// The first op's version is taken (another instance won it) or not the
    /// next one: nothing was written. `current` is the head version.
    Conflict { current: Version },
    /// The head is the version before the first op, as the caller expected,
    /// but the op the store holds there is not the one the caller applied
    /// (its key is not the `prev` given): the store's log is not the
    /// caller's - it lost or rewrote acknowledged ops (a failover that lost
    /// commits, a restore). Nothing was written. `current` is the head
    /// version. The caller must not build on its own view of the document.
    Diverged { current: Version },
    /// An op of the batch has an idempotency key `(user, client_id, seq)`
    /// that is already committed, at `version`: nothing was written.
    Duplicate {
        user: UserId,
        client_id: ClientId,
        seq: Seq,
        version: Version,
    },
}

/// A failure of the store itself. Expected outcomes are [`Append`] values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused to run the statement:
    /// nothing was written. Retry later.
    #[error("operation store unavailable")]
    Unavailable(#[source] Cause),
    /// The outcome of an append is unknown: the store stopped answering
    /// after the batch was sent, so it may have been written, or may still
    /// be. The caller reads the store to find out before telling anyone
    /// anything, and never says "nothing was committed" on this alone.
    #[error("operation store outcome unknown")]
    Unknown(#[source] Cause),
    /// The store refuses this batch's data (what [`check_storable`]
    /// catches, or a data error of the database): nothing was written, and
    /// writing the same ops again fails again. Other batches are not
    /// affected.
    #[error("operation store refused the data")]
    Rejected(#[source] Cause),
    /// The store returned something that cannot be right.
    #[error("operation store corrupt")]
    Corrupt(#[source] Cause),
}

/// Checks that a batch can be appended as one: consecutive versions and no
/// idempotency key twice. Adapters refuse other batches as `Corrupt` (the
/// application never builds them).
pub fn check_batch(ops: &[CommittedOp]) -> Result<(), StoreError> {
    let Some(first) = ops.first().map(|op| op.version) else {
        return Ok(());
    };
    let mut keys = std::collections::HashSet::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let expected = u64::try_from(i).ok().and_then(|i| first.checked_add(i));
        if Some(op.version) != expected {
            return Err(StoreError::Corrupt(Cause::msg(format!(
                "refused a batch whose op {i} is at version {} instead of {first} + {i}",
                op.version,
            ))));
        }
        if !keys.insert((op.user, &op.client_id, op.seq)) {
            return Err(StoreError::Corrupt(Cause::msg(format!(
                "refused a batch that repeats seq {} of client {}",
                op.seq, op.client_id
            ))));
        }
    }
    Ok(())
}

/// Checks that every op of a batch can be stored: no U+0000 in inserted
/// text or in attribute names and values (PostgreSQL's `text` and `jsonb`
/// cannot hold it), lengths and positions at most 2^53 - 1. Every adapter
/// runs it, so the in-memory store refuses exactly what PostgreSQL would,
/// with [`StoreError::Rejected`]. Deltas parsed from the wire always pass
/// ([`Delta::from_json`] enforces the same bounds); this guards the store
/// against any other way of building one.
pub fn check_storable(ops: &[CommittedOp]) -> Result<(), StoreError> {
    for op in ops {
        op.delta.check_storable().map_err(|why| {
            StoreError::Rejected(Cause::msg(format!(
                "op {} (seq {} of client {}): {why}",
                op.version, op.seq, op.client_id
            )))
        })?;
    }
    Ok(())
}

/// The durable log of operations.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait OperationStore: Send + Sync + 'static {
    /// Appends `ops` (consecutive versions, the first one `head + 1`) in one
    /// transaction, if the op at the head is the one the caller holds there.
    ///
    /// `prev` is the key ([`CommittedOp::key`]) of the op at version
    /// `ops[0].version - 1` as the caller applied it; `None` when the caller
    /// does not know it (or `ops[0]` is version 1). The compare-and-set
    /// covers the head's version and, given `prev`, its identity: a store
    /// that lost or rewrote acknowledged ops is noticed even when its head
    /// came back to the caller's version. A head without an op the store
    /// still holds (trimmed, or version 0) passes the identity check.
    ///
    /// Adapters must answer (after [`check_batch`] and [`check_storable`]):
    /// - `Committed` when every op was written;
    /// - `Conflict` when `ops[0].version` is not `head + 1` (including when
    ///   another writer took that version first), writing nothing;
    /// - `Diverged` when the head is `ops[0].version - 1` but the op the
    ///   store holds there has another key than `prev` (`Some`), writing
    ///   nothing;
    /// - `Duplicate` when an op's `(user, client_id, seq)` already exists
    ///   for the document, writing nothing (the head and `prev` matched);
    /// - `Err(Rejected)` when the store refuses the batch's data, writing
    ///   nothing and affecting no other batch;
    /// - `Err(Unavailable)` when nothing was written: the store could not be
    ///   reached, refused to run the statement, or the batch was withdrawn
    ///   before it was sent;
    /// - `Err(Unknown)` when the batch was sent and no answer came back in
    ///   time.
    ///
    /// An empty `ops` is `Committed`.
    async fn append(
        &self,
        document: DocumentId,
        prev: Option<OpKey>,
        ops: &[CommittedOp],
    ) -> Result<Append, StoreError>;

    /// The latest snapshot and every op after it (all ops if there is no
    /// snapshot). An unknown document is `Loaded::default()`.
    async fn load(&self, document: DocumentId) -> Result<Loaded, StoreError>;

    /// Ops with versions `after + 1 ..`, in order, at most `limit` of them.
    async fn read(
        &self,
        document: DocumentId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<CommittedOp>, StoreError>;

    /// Ops with versions `after + 1 ..`, in order: at most `max_ops` of
    /// them, and no more than fit in `max_bytes` - the total size of their
    /// deltas as JSON (the wire and storage form) - except that the first
    /// op comes back whatever its size (so a single large op can be read).
    /// Nothing beyond that is transferred from the store. An empty answer
    /// means there is no op after `after` (or `max_ops` is 0).
    async fn read_within(
        &self,
        document: DocumentId,
        after: Version,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<CommittedOp>, StoreError>;

    /// The latest snapshot, if any (opening a document: this, then the
    /// tail after it in bounded chunks with [`Self::read_within`]).
    async fn snapshot(&self, document: DocumentId) -> Result<Option<Snapshot>, StoreError>;

    /// The head version (0 for an unknown document).
    async fn head(&self, document: DocumentId) -> Result<Version, StoreError>;

    /// The head of each of `documents`, in the same order (0 for an unknown
    /// document), in one round trip where the store has round trips. Up to
    /// at least 10,000 documents per call.
    async fn heads(&self, documents: &[DocumentId]) -> Result<Vec<Version>, StoreError> {
        let mut heads = Vec::with_capacity(documents.len());
        for document in documents {
            heads.push(self.head(*document).await?);
        }
        Ok(heads)
    }

    /// The lowest version committed at or after the wall-clock time `at`
    /// (the store's commit time of each op), `None` if none was. Every
    /// instance gets the same answer, so an age limit on history does not
    /// depend on which instance holds a document.
    async fn first_since(
        &self,
        document: DocumentId,
        at: Timestamp,
    ) -> Result<Option<Version>, StoreError>;

    /// The version at which `(user, client_id, seq)` was committed, if it was.
    async fn find(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
        seq: Seq,
    ) -> Result<Option<Version>, StoreError>;

    /// The highest seq committed for `(user, client_id)` and its version.
    async fn last_seq(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<Option<(Seq, Version)>, StoreError>;

    /// Stores a snapshot. Saving one at or below the latest saved version
    /// changes nothing. A snapshot past the head is refused as `Corrupt`.
    async fn save_snapshot(
        &self,
        document: DocumentId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError>;

    /// Whether the store answers (for `/ready`).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// What a [`Tapped`] store does around the calls it passes on.
#[cfg(feature = "mocks")]
#[async_trait]
pub trait Tap: Send + Sync + 'static {
    /// Runs before every `last_seq` (may wait).
    async fn before_last_seq(&self) {}
    /// Sees every `append` and its outcome.
    fn after_append(&self, _ops: &[CommittedOp], _outcome: &Result<Append, StoreError>) {}
    /// Refuses an `append` before it reaches the store (to play a database
    /// that rejects some data).
    fn refuse_append(&self, _ops: &[CommittedOp]) -> Option<StoreError> {
        None
    }
    /// What the caller is told of an `append` that reached the store (to
    /// play an answer lost after a commit).
    fn answer_append(
        &self,
        _ops: &[CommittedOp],
        outcome: Result<Append, StoreError>,
    ) -> Result<Append, StoreError> {
        outcome
    }
}

/// A test double: an operation store that passes every call to `inner`,
/// with `tap` watching or holding some of them (to count group-commit
/// batches, or to make lookups wait for each other).
#[cfg(feature = "mocks")]
#[derive(Debug)]
pub struct Tapped<S, T> {
    pub inner: S,
    pub tap: T,
}

#[cfg(feature = "mocks")]
#[async_trait]
impl<S: OperationStore, T: Tap> OperationStore for Tapped<S, T> {
    async fn append(
        &self,
        document: DocumentId,
        prev: Option<OpKey>,
        ops: &[CommittedOp],
    ) -> Result<Append, StoreError> {
        if let Some(refusal) = self.tap.refuse_append(ops) {
            return Err(refusal);
        }
        let outcome = self.inner.append(document, prev, ops).await;
        self.tap.after_append(ops, &outcome);
        self.tap.answer_append(ops, outcome)
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
        self.inner.read(document, after, limit).await
    }
    async fn read_within(
        &self,
        document: DocumentId,
        after: Version,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        self.inner
            .read_within(document, after, max_ops, max_bytes)
            .await
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
        self.tap.before_last_seq().await;
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
