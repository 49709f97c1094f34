//! Catching up: how a room learns ops it did not commit itself, and which
//! source it reads them from.
//!
//! - In memory: the sequencer's history answers a join's `since` and a
//!   client's base when it still holds them.
//! - The bus's recent history ([`Room::apply_from_bus`]): a gap on the bus
//!   ([`Room::fill_gap_from_bus`]) or a target a client showed
//!   ([`Room::catch_up_to`]) is filled from it when it holds every op.
//! - The store, the source of truth, for everything else:
//!   [`Room::catch_up`] reads to its head; [`Room::catch_up_finding`] also
//!   returns the ops an append whose answer was lost had written;
//!   [`Room::catch_up_ops`] serves a join; [`Room::rebase_from_store`]
//!   rebases a base older than the history.
//!
//! Every op is applied by [`Room::apply_one`]; a read from the store counts
//! only when it is [`contiguous_from`] the version asked.

use super::{JoinError, MAX_CATCH_UP_FROM_STORE, Room, Timer};
use relay_domain::{CommittedOp, RemoteError, Side, Submission, Version};
use relay_ports::metrics::GapSource;
use relay_ports::{Cause, Chain, StoreError};
use tracing::{debug, warn};

/// The first store read of a join's catch-up, in ops (the next ones are
/// sized by the bytes seen).
const FIRST_STORE_CHUNK: usize = 64;
/// The most ops one store read of a join's catch-up asks for.
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
        Ok(if self.sequencer.apply_remote(op, self.deps.clock.now())? {
            self.sequencer.last_committed().cloned()
        } else {
            None
        })
    }

    /// The ops after `since` for a join, with their size as JSON (an upper
    /// bound), from memory or the store; `None` if they are more than
    /// MAX_CATCH_UP_FROM_STORE ops or `max_bytes`, or no longer available
    /// (then `joined` carries the content).
    ///
    /// In memory they are measured by the lengths cached when they were
    /// fanned out, before anything is copied. From the store they are read
    /// in chunks sized by what is left of `max_bytes` over the largest op
    /// seen so far, and the reading stops as soon as they pass it.
    pub(super) async fn catch_up_ops(
        &mut self,
        since: Version,
        max_bytes: usize,
    ) -> Result<Option<(Vec<CommittedOp>, usize)>, JoinError> {
        if let Some(ops) = self.sequencer.ops_since(since) {
            let mut bytes = 0usize;
            for op in ops {
                bytes = bytes.saturating_add(self.op_lens.get(op));
                if bytes > max_bytes {
                    return Ok(None);
                }
            }
            let ops = self
                .sequencer
                .ops_since(since)
                .map(|ops| ops.cloned().collect());
            return Ok(ops.map(|ops| (ops, bytes)));
        }
        let missing = usize::try_from(self.sequencer.version().since(since)).unwrap_or(usize::MAX);
        if missing > MAX_CATCH_UP_FROM_STORE {
            return Ok(None);
        }
        let mut ops: Vec<CommittedOp> = Vec::new();
        let (mut bytes, mut largest) = (0usize, 0usize);
        while ops.len() < missing {
            let left = missing - ops.len();
            let chunk = if ops.is_empty() {
                FIRST_STORE_CHUNK
            } else {
                (max_bytes.saturating_sub(bytes) / largest.max(1)).clamp(1, STORE_CHUNK)
            }
            .min(left);
            let after = ops.last().map_or(since, |op| op.version);
            let read = self
                .deps
                .store
                .read(self.document, after, chunk)
                .await
                .map_err(JoinError::Unavailable)?;
            if !contiguous_from(after, chunk, &read) {
                return Ok(None);
            }
            for op in &read {
                let len = op_json_len(op);
                largest = largest.max(len);
                bytes = bytes.saturating_add(len);
            }
            if bytes > max_bytes {
                return Ok(None);
            }
            ops.extend(read);
        }
        Ok(Some((ops, bytes)))
    }

    /// Catches up toward `target` (a version a joining client showed),
    /// reading at most `max_ops` ops and `max_bytes` of them (in memory)
    /// from the bus's recent history or the store; the rest, if any, is
    /// left to the room's next catch-up.
    pub(super) async fn catch_up_within(
        &mut self,
        target: Version,
        max_ops: u64,
        max_bytes: usize,
    ) -> Result<(), StoreError> {
        let mut applied = Vec::new();
        let from_bus = self.apply_from_bus(target, &mut applied).await;
        self.committed(&applied, false).await;
        if from_bus {
            return Ok(());
        }
        let (mut ops_read, mut bytes_read) = (0u64, 0usize);
        while self.sequencer.version() < target && ops_read < max_ops && bytes_read <= max_bytes {
            let want = target
                .since(self.sequencer.version())
                .min(max_ops - ops_read)
                .min(STORE_CHUNK as u64);
            let ops = self
                .deps
                .store
                .read(self.document, self.sequencer.version(), want as usize)
                .await?;
            if ops.is_empty() {
                break;
            }
            ops_read += ops.len() as u64;
            let mut applied = Vec::with_capacity(ops.len());
            for op in ops {
                bytes_read = bytes_read.saturating_add(op.memory_bytes());
                match self.apply_one(op) {
                    Ok(op) => applied.extend(op),
                    Err(e) => return Err(StoreError::Corrupt(Cause::new(e))),
                }
            }
            self.committed(&applied, false).await;
        }
        if self.sequencer.version() < target {
            // Whatever the store has beyond what was read: soon, once.
            self.deadlines
                .set_in_unless_set(Timer::SettleCheck, self.deps.config.bus.down_poll);
        }
        Ok(())
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
        loop {
            let ops = self
                .deps
                .store
                .read(self.document, self.sequencer.version(), 1000)
                .await?;
            if ops.is_empty() {
                return Ok(found);
            }
            let mut applied = Vec::with_capacity(ops.len());
            for op in ops {
                match self.apply_one(op) {
                    Ok(op) => applied.extend(op),
                    Err(e) => return Err(StoreError::Corrupt(Cause::new(e))),
                }
            }
            found.extend(applied.iter().filter(|op| mine(op)).cloned());
            self.committed(&applied, false).await;
        }
    }

    /// Catches up to at least `target` (a version a client or the store
    /// showed): from the bus's recent ops when it holds every one up to
    /// it, else from the store.
    pub(super) async fn catch_up_to(&mut self, target: Version) -> Result<(), StoreError> {
        let mut applied = Vec::new();
        let from_bus = self.apply_from_bus(target, &mut applied).await;
        self.committed(&applied, false).await;
        if from_bus {
            return Ok(());
        }
        self.catch_up().await
    }

    /// Applies the ops after the room's version through `through` from the
    /// bus's recent history, onto `applied`; whether the room reached
    /// `through` (if not, the store has the rest).
    pub(super) async fn apply_from_bus(
        &mut self,
        through: Version,
        applied: &mut Vec<CommittedOp>,
    ) -> bool {
        if through <= self.sequencer.version() {
            return true;
        }
        let ops = match self
            .deps
            .bus
            .recent(self.document, self.sequencer.version(), through)
            .await
        {
            Ok(Some(ops)) => ops,
            Ok(None) => return false,
            Err(e) => {
                debug!(document = %self.document, error = %Chain(&e), "bus history unavailable; reading the store");
                return false;
            }
        };
        for op in ops {
            match self.apply_one(op) {
                Ok(op) => applied.extend(op),
                Err(e) => {
                    warn!(document = %self.document, error = %Chain(&e), "an op from the bus history was refused; reading the store");
                    return false;
                }
            }
        }
        self.sequencer.version() >= through
    }

    /// Catches up with what others committed that the bus did not bring
    /// (a gap, a lag, the bus down, the settle check); one that finds ops
    /// counts as a gap repair from the store.
    pub(super) async fn catch_up_logged(&mut self) {
        let before = self.sequencer.version();
        match self.catch_up().await {
            Ok(_) if self.sequencer.version() > before => {
                self.deps.metrics.gap_repair(GapSource::Store);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(document = %self.document, error = %Chain(&e), "catch-up from the store failed");
            }
        }
    }

    /// A gap before `next`: the ops between come from the bus's recent
    /// history if it holds them all (applied onto `applied`); `false` if
    /// it does not (the caller reads the store).
    pub(super) async fn fill_gap_from_bus(
        &mut self,
        next: Version,
        applied: &mut Vec<CommittedOp>,
    ) -> bool {
        let Some(through) = next.prev() else {
            return false;
        };
        let from = self.sequencer.version();
        let filled = self.apply_from_bus(through, applied).await
            && Some(next) == self.sequencer.version().next();
        debug!(document = %self.document, %from, %next, filled, "a gap on the bus");
        if filled {
            self.deps.metrics.gap_repair(GapSource::Bus);
        }
        filled
    }

    /// `sub` rebased from `base` to `oldest` over the store's ops in
    /// between (each transformed with the committed op first, as the
    /// sequencer does); `None` if the store cannot give them all (the
    /// submit is then refused `stale_base`).
    pub(super) async fn rebase_from_store(
        &mut self,
        sub: &Submission,
        base: Version,
        oldest: Version,
    ) -> Option<Submission> {
        let missing = usize::try_from(oldest.since(base)).ok()?;
        if missing == 0 || missing > MAX_CATCH_UP_FROM_STORE {
            return None;
        }
        // Only a base the history would still hold had this room been open
        // all along (within OPERATION_HISTORY_MAX of the head): older bases
        // stay `stale_base`, as PROTOCOL.md says - the limit is the same
        // whichever instance the client lands on.
        let behind = usize::try_from(self.sequencer.version().since(base)).unwrap_or(usize::MAX);
        if behind > self.deps.config.limits.operation_history_max {
            return None;
        }
        let ops = match self.deps.store.read(self.document, base, missing).await {
            Ok(ops) => ops,
            Err(e) => {
                warn!(document = %self.document, error = %Chain(&e), "cannot read the ops to rebase a stale base");
                return None;
            }
        };
        if !contiguous_from(base, missing, &ops) {
            return None;
        }
        let first_len = ops.first()?.delta.base_len();
        let mut delta = sub.delta.clone().fit(first_len).ok()?;
        for op in &ops {
            delta = delta.transform(&op.delta, Side::Right).ok()?;
        }
        debug!(document = %self.document, %base, %oldest, "rebased a stale base over the store's ops");
        Some(Submission {
            base: oldest,
            delta,
            ..sub.clone()
        })
    }
}
