//! Catching up: how a room learns ops it did not commit itself, and which
//! source it reads them from.
//!
//! - In memory: the sequencer's history answers a join's `since` and a
//!   client's base when it still holds them.
//! - The bus brings other instances' ops as they commit (`remote`).
//! - The store, the source of truth, for everything else - a gap on the
//!   bus, a lag, the bus down, the head watch finding the room behind, a
//!   client showing a version the room has not reached:
//!   [`Room::catch_up`] reads to its head; [`Room::catch_up_finding`] also
//!   returns the ops an append whose answer was lost had written;
//!   [`Room::rebase_from_store`] rebases a base older than the history.
//!   A join's `ops` come from memory only ([`Room::catch_up_ops`]).
//!
//! Every read is bounded in ops ([`STORE_CHUNK`]) and is the plain, cheap
//! one where the room waits on it; opening a document and rebasing a stale base read with a byte
//! bound as well (`read_within`). Every op is applied by
//! [`Room::apply_one`]; a read counts only when it is [`contiguous_from`]
//! the version asked, and starts one op early where the room holds that
//! op, so a log that contradicts the room's history is seen
//! ([`Room::contradicted`]).

use super::{MAX_CATCH_UP_FROM_STORE, Room, Timer};
use relay_domain::{CommittedOp, RemoteError, Submission, Version};
use relay_ports::metrics::GapSource;
use relay_ports::{Cause, Chain, StoreError};
use tracing::{debug, warn};

/// The most ops one store read asks for.
const STORE_CHUNK: usize = 1000;

/// An op's length in an `ops` list: its JSON and a comma.
pub(super) fn op_json_len(op: &CommittedOp) -> usize {
    relay_ports::protocol::encode_op(op).len() + 1
}

/// Each recent op's length as JSON in an `ops` list (its encoding and a
/// comma), recorded when it is fanned out (encoded then anyway), so a
/// join measures its catch-up without encoding it again. Kept for the ops
/// the sequencer's history holds; an op without a length (applied when the
/// room opened) is measured when asked.
#[derive(Default)]
pub(super) struct OpLengths {
    /// Consecutive versions from the first one's.
    lens: std::collections::VecDeque<(Version, usize)>,
}

impl OpLengths {
    /// Records the lengths of ops applied in order after those recorded;
    /// forgets those before `oldest` (the history's oldest base).
    pub(super) fn record<'a>(
        &mut self,
        ops: impl IntoIterator<Item = (&'a CommittedOp, usize)>,
        oldest: Version,
    ) {
        for (op, len) in ops {
            if self
                .lens
                .back()
                .is_some_and(|(v, _)| v.next() != Some(op.version))
            {
                self.lens.clear();
            }
            self.lens.push_back((op.version, len));
        }
        while self.lens.front().is_some_and(|(v, _)| *v <= oldest) {
            self.lens.pop_front();
        }
    }

    /// `op`'s length as JSON in an `ops` list: cached, or measured.
    pub(super) fn get(&self, op: &CommittedOp) -> usize {
        let cached = self.lens.front().and_then(|(first, _)| {
            let i = usize::try_from(op.version.since(*first)).ok()?;
            (op.version >= *first)
                .then(|| self.lens.get(i))
                .flatten()
                .filter(|(v, _)| *v == op.version)
                .map(|(_, len)| *len)
        });
        cached.unwrap_or_else(|| op_json_len(op))
    }
}

/// Whether `ops` are exactly the `count` ops after `base`, in order.
pub(super) fn contiguous_from(base: Version, count: usize, ops: &[CommittedOp]) -> bool {
    ops.len() == count
        && ops.iter().enumerate().all(|(i, op)| {
            u64::try_from(i + 1).ok().and_then(|n| base.checked_add(n)) == Some(op.version)
        })
}

impl Room {
    /// Applies an op another writer committed; the op as applied (its
    /// delta fitted to the document), `None` if the room had it already.
    pub(super) fn apply_one(
        &mut self,
        op: CommittedOp,
    ) -> Result<Option<CommittedOp>, RemoteError> {
        Ok(
            if self
                .sequencer
                .apply_remote(op, self.instance.ports.clock.now())?
            {
                self.sequencer.last_committed().cloned()
            } else {
                None
            },
        )
    }

    /// The ops after `since` for a join, with their size as JSON (an upper
    /// bound), from the in-memory history only; `None` if it no longer
    /// holds them all or they are more than `max_bytes` (then `joined`
    /// carries the content, encoded once per version and shared). A join
    /// never reads the store for them: the room would wait on that read,
    /// and every submit on the document behind it (review 2026-12-07 F5a).
    ///
    /// They are measured by the lengths cached when they were fanned out,
    /// before anything is copied.
    pub(super) fn catch_up_ops(
        &mut self,
        since: Version,
        max_bytes: usize,
    ) -> Option<(Vec<CommittedOp>, usize)> {
        let ops = self.sequencer.ops_since(since)?;
        let mut bytes = 0usize;
        for op in ops {
            bytes = bytes.saturating_add(self.op_lens.get(op));
            if bytes > max_bytes {
                return None;
            }
        }
        let ops = self.sequencer.ops_since(since)?.cloned().collect();
        Some((ops, bytes))
    }

    /// Catches up toward `target` (a version a joining client showed),
    /// reading at most `max_ops` ops and `max_bytes` of them (in memory)
    /// from the store; the rest, if any, is left to the room's next
    /// catch-up.
    pub(super) async fn catch_up_within(
        &mut self,
        target: Version,
        max_ops: u64,
        max_bytes: usize,
    ) -> Result<(), StoreError> {
        let (mut ops_read, mut bytes_read) = (0u64, 0usize);
        while self.sequencer.version() < target && ops_read < max_ops && bytes_read <= max_bytes {
            let want = target
                .since(self.sequencer.version())
                .min(max_ops - ops_read)
                .min(STORE_CHUNK as u64);
            let Some(ops) = self.read_checked(want as usize).await? else {
                break;
            };
            ops_read += ops.len() as u64;
            bytes_read = bytes_read.saturating_add(ops.iter().map(CommittedOp::memory_bytes).sum());
            self.apply_read(ops).await?;
        }
        if self.sequencer.version() < target {
            // Whatever the store has beyond what was read: soon, once.
            self.deadlines
                .set_in_unless_set(Timer::SettleCheck, self.instance.config.bus.down_poll);
        }
        Ok(())
    }

    /// The next ops after the room's version from the store (at most
    /// `max_ops`; the callers bound the bytes they take across reads),
    /// `None` when there are none. The read
    /// starts at the op the room holds last, when history has it: if the
    /// store holds another op there, the room's history is contradicted
    /// (reopened, and an error).
    async fn read_checked(
        &mut self,
        max_ops: usize,
    ) -> Result<Option<Vec<CommittedOp>>, StoreError> {
        let version = self.sequencer.version();
        let ours = self.sequencer.op_at(version).map(CommittedOp::key);
        let after = match (&ours, version.prev()) {
            (Some(_), Some(before)) => before,
            _ => version,
        };
        let extra = usize::from(after != version);
        let mut ops = self
            .instance
            .ports
            .store
            .read(self.document, after, max_ops + extra)
            .await?;
        if !contiguous_from(after, ops.len(), &ops) {
            return Err(StoreError::Corrupt(Cause::msg(format!(
                "the store's ops after {after} are not consecutive"
            ))));
        }
        if extra == 1 {
            match ops.first() {
                Some(first) if Some(first.key()) == ours => {
                    ops.remove(0);
                }
                Some(_) => {
                    self.contradicted(version, "the store's op at the room's version");
                    return Err(StoreError::Corrupt(Cause::msg(format!(
                        "the store holds another op at version {version} than this room applied"
                    ))));
                }
                // Not there any more (or never was): the head moved back.
                None => {}
            }
        }
        Ok((!ops.is_empty()).then_some(ops))
    }

    /// Applies ops read from the store and fans them out; ops applied
    /// before one that fails are fanned out too (no local session is left
    /// with a gap).
    async fn apply_read(&mut self, ops: Vec<CommittedOp>) -> Result<Vec<CommittedOp>, StoreError> {
        let mut applied = Vec::with_capacity(ops.len());
        let mut failed = None;
        for op in ops {
            match self.apply_one(op) {
                Ok(op) => applied.extend(op),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.committed(&applied, false).await;
        match failed {
            Some(e) => Err(StoreError::Corrupt(Cause::new(e))),
            None => Ok(applied),
        }
    }

    /// Reads and applies every op the store has after our version.
    pub(super) async fn catch_up(&mut self) -> Result<(), StoreError> {
        self.catch_up_finding(|_| false).await.map(|_| ())
    }

    /// [`Room::catch_up`], returning the applied ops that `mine` picks
    /// (after an append whose answer was lost: the batch's own ops, found
    /// committed).
    pub(super) async fn catch_up_finding(
        &mut self,
        mine: impl Fn(&CommittedOp) -> bool,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        let mut found = Vec::new();
        while let Some(ops) = self.read_checked(STORE_CHUNK).await? {
            let applied = self.apply_read(ops).await?;
            found.extend(applied.into_iter().filter(|op| mine(op)));
        }
        Ok(found)
    }

    /// Catches up to at least `target` (a version a client or the store
    /// showed), from the store.
    pub(super) async fn catch_up_to(&mut self, target: Version) -> Result<(), StoreError> {
        if target <= self.sequencer.version() {
            return Ok(());
        }
        self.catch_up().await
    }

    /// Catches up with what others committed that the bus did not bring
    /// (a gap, a lag, the bus down, the settle check, the head watch); one
    /// that finds ops counts as a gap repair from the store. One that fails
    /// is tried again after BUS_DOWN_POLL_MS (and the head watch keeps
    /// waking the room while it is behind).
    pub(super) async fn catch_up_logged(&mut self) {
        let before = self.sequencer.version();
        match self.catch_up().await {
            Ok(_) if self.sequencer.version() > before => {
                self.instance.ports.metrics.gap_repair(GapSource::Store);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(document = %self.document, error = %Chain(&e), "catch-up from the store failed; trying again");
                self.deadlines
                    .set_in_unless_set(Timer::SettleCheck, self.instance.config.bus.down_poll);
            }
        }
    }

    /// `sub` rebased from `base` to `oldest` over the store's ops in
    /// between (each fitted to the document's length at its base, worked
    /// back from the length at `oldest`, and transformed over as the
    /// sequencer does); `None` if the base is not within the kept history
    /// as the log defines it, or the store cannot give the ops (the submit
    /// is then refused `stale_base`).
    ///
    /// The kept history is the same on every instance whatever this room
    /// holds in memory: the last OPERATION_HISTORY_MAX ops, committed no
    /// longer than OPERATION_HISTORY_TTL ago (by the log's commit times),
    /// and at most OPERATION_HISTORY_BYTES of them.
    pub(super) async fn rebase_from_store(
        &mut self,
        sub: &Submission,
        base: Version,
        oldest: Version,
    ) -> Option<Submission> {
        let limits = &self.instance.config.limits;
        let missing = usize::try_from(oldest.since(base)).ok()?;
        let behind = usize::try_from(self.sequencer.version().since(base)).unwrap_or(usize::MAX);
        if missing == 0
            || missing > MAX_CATCH_UP_FROM_STORE
            || behind > limits.operation_history_max
        {
            return None;
        }
        let in_memory = self.sequencer.history_bytes();
        let budget = limits.operation_history_bytes.checked_sub(in_memory)?;
        let len_at_oldest = self.sequencer.len_at(oldest)?;
        let ttl = u64::try_from(limits.operation_history_ttl.as_millis()).unwrap_or(u64::MAX);
        let cutoff =
            relay_domain::Timestamp::from_millis(self.now().as_millis().saturating_sub(ttl));
        let store = self.instance.ports.store.clone();
        match store.first_since(self.document, cutoff).await {
            // The op right after `base` must be young enough.
            Ok(Some(first)) if Some(first) <= base.next() => {}
            Ok(_) => return None,
            Err(e) => {
                warn!(document = %self.document, error = %Chain(&e), "cannot read the log's age to rebase a stale base");
                return None;
            }
        }
        let ops = match store
            .read_within(self.document, base, missing, budget)
            .await
        {
            Ok(ops) => ops,
            Err(e) => {
                warn!(document = %self.document, error = %Chain(&e), "cannot read the ops to rebase a stale base");
                return None;
            }
        };
        if !contiguous_from(base, missing, &ops)
            || ops.iter().map(CommittedOp::memory_bytes).sum::<usize>() > budget
        {
            return None;
        }
        let delta = relay_domain::rebase_over_log(sub.delta.clone(), &ops, len_at_oldest).ok()?;
        debug!(document = %self.document, %base, %oldest, "rebased a stale base over the store's ops");
        Some(Submission {
            base: oldest,
            delta,
            ..sub.clone()
        })
    }
}
