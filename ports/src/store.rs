//! The operation store: the durable, ordered log of each document's
//! operations, with snapshots. It is the source of truth: nothing is
//! acknowledged to a client before [`OperationStore::append`] answered
//! [`Append::Committed`].

use crate::error::Cause;
use async_trait::async_trait;
use relay_domain::{ClientId, CommittedOp, Delta, DocumentId, Seq, UserId, Version};

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
    /// transaction. Adapters must answer (after [`check_batch`] and
    /// [`check_storable`]):
    /// - `Committed` when every op was written;
    /// - `Conflict` when `ops[0].version` is not `head + 1` (including when
    ///   another writer took that version first), writing nothing;
    /// - `Duplicate` when an op's `(user, client_id, seq)` already exists
    ///   for the document, writing nothing;
    /// - `Err(Rejected)` when the store refuses the batch's data, writing
    ///   nothing and affecting no other batch;
    /// - `Err(Unavailable)` when nothing was written: the store could not be
    ///   reached, refused to run the statement, or the batch was withdrawn
    ///   before it was sent;
    /// - `Err(Unknown)` when the batch was sent and no answer came back in
    ///   time.
    ///
    /// An empty `ops` is `Committed`.
    async fn append(&self, document: DocumentId, ops: &[CommittedOp])
    -> Result<Append, StoreError>;

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

    /// The head version (0 for an unknown document).
    async fn head(&self, document: DocumentId) -> Result<Version, StoreError>;

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
        ops: &[CommittedOp],
    ) -> Result<Append, StoreError> {
        if let Some(refusal) = self.tap.refuse_append(ops) {
            return Err(refusal);
        }
        let outcome = self.inner.append(document, ops).await;
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
    async fn head(&self, document: DocumentId) -> Result<Version, StoreError> {
        self.inner.head(document).await
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
