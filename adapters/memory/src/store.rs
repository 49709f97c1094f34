//! The operation store in process memory.

use crate::clock::SystemClock;
use async_trait::async_trait;
use relay_domain::{ClientId, CommittedOp, DocumentId, OpKey, Seq, Timestamp, UserId, Version};
use relay_ports::{Append, Loaded, OperationStore, Snapshot, StoreError};
use relay_ports::{Cause, Clock};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// An [`OperationStore`] in process memory, for development and tests.
///
/// It keeps nothing across restarts: every document is gone when the
/// process stops, so it must never back a deployment that acknowledges
/// users' work. Within a process it holds to the same rules as the
/// database: one op per `(document, version)`, one per
/// `(document, user, client_id, seq)`, and a batch is written whole or not
/// at all, so the application behaves against it as against PostgreSQL.
///
/// State sits behind a `std` mutex rather than an async one: it is never
/// held across an `.await` and every critical section is short, so
/// blocking briefly is cheaper than an async lock (mini-redis does the
/// same).
///
/// Each op's commit time comes from the store's [`Clock`] (the wall clock
/// unless built [`with_clock`](MemoryStore::with_clock)), as PostgreSQL
/// stamps each row with its `created_at`.
pub struct MemoryStore {
    documents: Mutex<HashMap<DocumentId, Log>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_clock(Arc::new(SystemClock))
    }
}

/// One document's log: `ops[i]` is at version `i + 1`.
#[derive(Debug, Default)]
struct Log {
    ops: Vec<CommittedOp>,
    /// `committed[i]` is when `ops[i]` was committed (never decreasing,
    /// even if the clock goes back) and the size of its delta as JSON.
    committed: Vec<(Timestamp, usize)>,
    /// The idempotency keys, as the database's unique index.
    keys: HashMap<(UserId, ClientId, Seq), Version>,
    /// The highest seq of each client and its version.
    last_seqs: HashMap<(UserId, ClientId), (Seq, Version)>,
    snapshot: Option<Snapshot>,
}

impl Log {
    fn head(&self) -> Version {
        // `ops[i]` is at version `i + 1`, so the last op's is the head.
        self.ops.last().map_or(Version::ZERO, |op| op.version)
    }

    /// Decides a batch without changing anything.
    fn check(&self, prev: Option<&OpKey>, ops: &[CommittedOp]) -> Option<Append> {
        let head = self.head();
        if Some(ops[0].version) != head.next() {
            return Some(Append::Conflict { current: head });
        }
        // The op at the head, if there is one, must be the caller's.
        if let (Some(prev), Some(at_head)) = (prev, self.ops.last())
            && at_head.key() != *prev
        {
            return Some(Append::Diverged { current: head });
        }
        ops.iter().find_map(|op| {
            let version = self.keys.get(&key(op))?;
            Some(Append::Duplicate {
                user: op.user,
                client_id: op.client_id.clone(),
                seq: op.seq,
                version: *version,
            })
        })
    }

    fn commit(&mut self, ops: &[CommittedOp], now: Timestamp) {
        // Commit times never go back within a log, as versions do not.
        let at = self
            .committed
            .last()
            .map_or(now, |(last, _)| now.max(*last));
        for op in ops {
            self.committed.push((at, json_size(op)));
            self.keys.insert(key(op), op.version);
            let last = self
                .last_seqs
                .entry((op.user, op.client_id.clone()))
                .or_insert((op.seq, op.version));
            if op.seq >= last.0 {
                *last = (op.seq, op.version);
            }
        }
        self.ops.extend_from_slice(ops);
    }
}

/// Where the op at version `v + 1` sits in a log (saturating: a version
/// past the end is past every op).
fn index(v: Version) -> usize {
    usize::try_from(v.get()).unwrap_or(usize::MAX)
}

fn key(op: &CommittedOp) -> (UserId, ClientId, Seq) {
    (op.user, op.client_id.clone(), op.seq)
}

/// The size of an op's delta as JSON, what [`OperationStore::read_within`]
/// counts.
fn json_size(op: &CommittedOp) -> usize {
    serde_json::to_string(&op.delta).map_or(0, |json| json.len())
}

impl MemoryStore {
    /// A store stamping commits with the wall clock.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A store stamping commits with `clock` (the one the application
    /// reads, so tests that drive time drive commit times too).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            documents: Mutex::default(),
            clock,
        }
    }

    /// Every mutation happens after all checks, so a panic while the lock
    /// is held cannot leave half a batch behind: a poisoned lock is safe to
    /// keep using.
    fn documents(&self) -> MutexGuard<'_, HashMap<DocumentId, Log>> {
        self.documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn with_log<T>(&self, document: DocumentId, f: impl FnOnce(&Log) -> T) -> T {
        let documents = self.documents();
        match documents.get(&document) {
            Some(log) => f(log),
            None => f(&Log::default()),
        }
    }
}

#[async_trait]
impl OperationStore for MemoryStore {
    async fn append(
        &self,
        document: DocumentId,
        prev: Option<OpKey>,
        ops: &[CommittedOp],
    ) -> Result<Append, StoreError> {
        if ops.is_empty() {
            return Ok(Append::Committed);
        }
        relay_ports::store::check_batch(ops)?;
        relay_ports::store::check_storable(ops)?;
        let now = self.clock.now();
        let mut documents = self.documents();
        // An unknown document gets a log only when something is written.
        match documents.entry(document) {
            Entry::Occupied(mut log) => {
                if let Some(refusal) = log.get().check(prev.as_ref(), ops) {
                    return Ok(refusal);
                }
                log.get_mut().commit(ops, now);
            }
            Entry::Vacant(vacant) => {
                let mut log = Log::default();
                if let Some(refusal) = log.check(prev.as_ref(), ops) {
                    return Ok(refusal);
                }
                log.commit(ops, now);
                vacant.insert(log);
            }
        }
        Ok(Append::Committed)
    }

    async fn load(&self, document: DocumentId) -> Result<Loaded, StoreError> {
        Ok(self.with_log(document, |log| {
            let after = log.snapshot.as_ref().map_or(0, |s| index(s.version));
            Loaded {
                snapshot: log.snapshot.clone(),
                tail: log.ops[after..].to_vec(),
            }
        }))
    }

    async fn read(
        &self,
        document: DocumentId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        Ok(self.with_log(document, |log| {
            let start = index(after).min(log.ops.len());
            let end = start.saturating_add(limit).min(log.ops.len());
            log.ops[start..end].to_vec()
        }))
    }

    async fn read_within(
        &self,
        document: DocumentId,
        after: Version,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        Ok(self.with_log(document, |log| {
            let start = index(after).min(log.ops.len());
            let end = start.saturating_add(max_ops).min(log.ops.len());
            let mut total = 0usize;
            let within = log.committed[start..end]
                .iter()
                .enumerate()
                .take_while(|(i, (_, size))| {
                    total = total.saturating_add(*size);
                    *i == 0 || total <= max_bytes
                })
                .count();
            log.ops[start..start + within].to_vec()
        }))
    }

    async fn snapshot(&self, document: DocumentId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.with_log(document, |log| log.snapshot.clone()))
    }

    async fn head(&self, document: DocumentId) -> Result<Version, StoreError> {
        Ok(self.with_log(document, Log::head))
    }

    async fn heads(&self, documents: &[DocumentId]) -> Result<Vec<Version>, StoreError> {
        let logs = self.documents();
        Ok(documents
            .iter()
            .map(|d| logs.get(d).map_or(Version::ZERO, Log::head))
            .collect())
    }

    async fn first_since(
        &self,
        document: DocumentId,
        at: Timestamp,
    ) -> Result<Option<Version>, StoreError> {
        Ok(self.with_log(document, |log| {
            // Commit times never decrease along the log.
            let i = log.committed.partition_point(|(t, _)| *t < at);
            log.ops.get(i).map(|op| op.version)
        }))
    }

    async fn find(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
        seq: Seq,
    ) -> Result<Option<Version>, StoreError> {
        let key = (user, client_id.clone(), seq);
        Ok(self.with_log(document, |log| log.keys.get(&key).copied()))
    }

    async fn last_seq(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<Option<(Seq, Version)>, StoreError> {
        let key = (user, client_id.clone());
        Ok(self.with_log(document, |log| log.last_seqs.get(&key).copied()))
    }

    async fn save_snapshot(
        &self,
        document: DocumentId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let mut documents = self.documents();
        let head = documents.get(&document).map_or(Version::ZERO, Log::head);
        if snapshot.version > head {
            return Err(StoreError::Corrupt(Cause::msg(format!(
                "refused a snapshot at version {} past the head {head} of document {document}",
                snapshot.version
            ))));
        }
        // The head is past zero here unless the snapshot is at version 0,
        // which is the empty document and not worth keeping.
        let Some(log) = documents.get_mut(&document) else {
            return Ok(());
        };
        let latest = log.snapshot.as_ref().map_or(Version::ZERO, |s| s.version);
        if snapshot.version > latest {
            log.snapshot = Some(snapshot);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_domain::Delta;
    use uuid::Uuid;

    fn op(version: u64, client_id: &str, seq: u64) -> CommittedOp {
        let mut delta = Delta::new();
        delta.retain(version as usize - 1).insert("x");
        CommittedOp {
            version: Version::new(version).unwrap(),
            user: UserId::new(Uuid::nil()),
            client_id: ClientId::new(client_id).unwrap(),
            seq: Seq::new(seq).unwrap(),
            delta,
        }
    }

    fn document() -> DocumentId {
        DocumentId::new(Uuid::new_v4())
    }

    #[tokio::test]
    async fn a_batch_with_versions_that_skip_is_refused_and_writes_nothing() {
        let store = MemoryStore::new();
        let document = document();
        let result = store
            .append(document, None, &[op(1, "a", 1), op(3, "a", 2)])
            .await;
        assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
        assert_eq!(store.head(document).await, Ok(Version::ZERO));
    }

    #[tokio::test]
    async fn a_batch_repeating_a_key_is_refused_and_writes_nothing() {
        let store = MemoryStore::new();
        let document = document();
        let result = store
            .append(document, None, &[op(1, "a", 1), op(2, "a", 1)])
            .await;
        assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
        assert_eq!(
            store
                .find(
                    document,
                    UserId::new(Uuid::nil()),
                    &ClientId::new("a").unwrap(),
                    Seq::from(1)
                )
                .await,
            Ok(None)
        );
    }

    #[tokio::test]
    async fn refused_appends_do_not_create_documents() {
        let store = MemoryStore::new();
        let document = document();
        let answer = store.append(document, None, &[op(2, "a", 1)]).await;
        assert_eq!(
            answer,
            Ok(Append::Conflict {
                current: Version::ZERO
            })
        );
        assert!(store.documents().is_empty());
    }

    #[tokio::test]
    async fn a_snapshot_at_version_zero_is_not_kept() {
        let store = MemoryStore::new();
        let document = document();
        let empty = Snapshot {
            version: Version::ZERO,
            content: Delta::new(),
        };
        assert_eq!(store.save_snapshot(document, empty.clone()).await, Ok(()));
        assert_eq!(store.load(document).await, Ok(Loaded::default()));

        store
            .append(document, None, &[op(1, "a", 1)])
            .await
            .unwrap();
        assert_eq!(store.save_snapshot(document, empty).await, Ok(()));
        assert_eq!(store.load(document).await.unwrap().snapshot, None);
    }

    #[tokio::test]
    async fn last_seq_keeps_the_highest_seq_even_if_a_lower_one_comes_later() {
        let store = MemoryStore::new();
        let document = document();
        store
            .append(document, None, &[op(1, "a", 5), op(2, "a", 3)])
            .await
            .unwrap();
        assert_eq!(
            store
                .last_seq(
                    document,
                    UserId::new(Uuid::nil()),
                    &ClientId::new("a").unwrap()
                )
                .await,
            Ok(Some((Seq::from(5), Version::from(1))))
        );
    }
}
