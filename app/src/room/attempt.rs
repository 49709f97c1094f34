//! One round of the write path: propose the batch, append it at the next
//! version, and say what came of it. [`Room::commit_batch`] runs rounds
//! until one is [`Attempt::Done`], at most MAX_APPEND_ATTEMPTS.

use super::{MAX_APPEND_ATTEMPTS, Pending, Room, UNSURE};
use relay_ports::protocol::ErrorCode;
use relay_ports::{Append, Chain, OpStatus, OperationType, StoreError};
use tracing::{Instrument, debug, warn};

/// What became of one submit in a batch ([`Room::propose`]).
pub(super) enum Proposal {
    /// Pending in the sequencer: answered when the append is.
    Pending,
    /// Answered already (an ack or an error).
    Answered,
    /// A duplicate committed at a version this room has not reached: the
    /// room catches up, then proposes it again.
    Behind,
}

/// What one round came to.
pub(super) enum Attempt {
    /// Every submit of the batch is answered (acked, refused, failed or
    /// sent away).
    Done,
    /// The room caught up to a duplicate ahead of it: propose these again.
    Again(Vec<Pending>),
    /// Another writer won the version; the room caught up: propose these
    /// again.
    Lost(Vec<Pending>),
}

impl Room {
    /// Proposes `batch` and appends what the sequencer holds pending.
    pub(super) async fn append_once(&mut self, batch: Vec<Pending>, attempt: usize) -> Attempt {
        if self.discarded {
            // The room gave up its view of the document (reopening):
            // nothing more is appended onto it.
            self.send_away(
                &batch,
                "the document is reopening from the store: reconnect and re-send",
            );
            return Attempt::Done;
        }
        let mut proposed = Vec::with_capacity(batch.len());
        let mut behind = false;
        for mut p in batch {
            if !self.admit_deferred(&mut p) {
                continue;
            }
            match self.propose(&mut p).await {
                Proposal::Pending => proposed.push(p),
                Proposal::Answered => {}
                Proposal::Behind => {
                    behind = true;
                    proposed.push(p);
                }
            }
        }
        if behind {
            // A duplicate committed at a version this room has not
            // delivered yet: its ack must come after the ops below it, so
            // catch up and propose the batch again.
            self.sequencer.abort_pending();
            if let Err(e) = self.catch_up().await {
                warn!(document = %self.document, error = %Chain(&e), "cannot catch up to a duplicate's version");
                self.send_away(
                    &proposed,
                    "the document is behind the store and cannot catch up: reconnect",
                );
                return Attempt::Done;
            }
            return Attempt::Again(proposed);
        }
        if self.sequencer.pending().is_empty() {
            return Attempt::Done;
        }
        let started = std::time::Instant::now();
        let span = tracing::info_span!(target: crate::telemetry::SUBMIT_SPANS, "commit", document = %self.document, ops = self.sequencer.pending().len());
        // The op this room holds at the head: the store checks it is the
        // one it holds there too.
        let prev = self
            .sequencer
            .op_at(self.sequencer.version())
            .map(|op| op.key());
        let outcome = self
            .instance
            .ports
            .store
            .append(self.document, prev, self.sequencer.pending())
            .instrument(span)
            .await;
        match outcome {
            Ok(Append::Committed) => {
                self.instance.ports.metrics.commit(
                    self.sequencer.pending().len(),
                    started.elapsed().as_secs_f64(),
                );
                if self.instance.config.store.pause_after_commit {
                    // RELAY_TEST_PAUSE_AFTER_COMMIT: committed, neither
                    // acknowledged nor published - until the process dies.
                    tracing::warn!(document = %self.document, "RELAY_TEST_PAUSE_AFTER_COMMIT: this room stops after its commit");
                    std::future::pending::<()>().await;
                }
                let ops = self.sequencer.pending().to_vec();
                let through = ops.last().map_or(self.sequencer.version(), |o| o.version);
                self.sequencer.commit(through, self.now());
                self.committed(&ops, true).await;
                Attempt::Done
            }
            Ok(Append::Conflict { current }) if current < self.sequencer.version() => {
                // The store is behind this room (restored, failed over):
                // what the room holds is not the document any more.
                self.sequencer.abort_pending();
                tracing::error!(document = %self.document, store = %current, room = %self.sequencer.version(), "the store's head is behind the room: reopening the document from the store");
                self.send_away(
                    &proposed,
                    "the document is reopening from the store: reconnect and re-send",
                );
                self.reopen();
                Attempt::Done
            }
            Ok(Append::Diverged { current }) => {
                // The store's head is where the room's is, with another op:
                // it lost or rewrote acknowledged ops.
                self.sequencer.abort_pending();
                self.send_away(
                    &proposed,
                    "the document is reopening from the store: reconnect and re-send",
                );
                self.contradicted(current, "the store's op at the head");
                Attempt::Done
            }
            Ok(Append::Conflict { .. }) | Ok(Append::Duplicate { .. }) => {
                self.sequencer.abort_pending();
                self.instance
                    .ports
                    .metrics
                    .commit_conflict(attempt < MAX_APPEND_ATTEMPTS);
                debug!(document = %self.document, attempt, "lost the race for a version; catching up");
                // From the store: the winner published moments ago at
                // best, so Redis would rarely have it yet.
                if let Err(e) = self.catch_up().await {
                    // What the winner committed is unread: it may hold
                    // these very ops (sent before, on another connection).
                    warn!(document = %self.document, error = %Chain(&e), "cannot catch up after a lost race");
                    self.send_away(&proposed, UNSURE);
                    return Attempt::Done;
                }
                Attempt::Lost(proposed)
            }
            Err(StoreError::Rejected(reason)) => {
                self.sequencer.abort_pending();
                if proposed.len() > 1 {
                    // One op's data is refused: commit them one at a time,
                    // so only that one fails.
                    warn!(document = %self.document, reason = %Chain(&reason), ops = proposed.len(), "the store refused a batch; committing its ops one by one");
                    for p in proposed {
                        Box::pin(self.commit_batch(vec![p])).await;
                    }
                    return Attempt::Done;
                }
                tracing::error!(document = %self.document, reason = %Chain(&reason), "the store refused an operation's data");
                self.fail(
                    &proposed,
                    ErrorCode::Internal,
                    "the operation store refused this operation: it will never be committed",
                );
                Attempt::Done
            }
            Err(e) => {
                self.sequencer.abort_pending();
                self.resolve_failed_append(&proposed, e).await;
                Attempt::Done
            }
        }
    }

    /// MAX_APPEND_ATTEMPTS rounds lost the race: nothing was committed.
    pub(super) fn give_up(&mut self, batch: Vec<Pending>) {
        self.sequencer.abort_pending();
        warn!(document = %self.document, "gave up after {MAX_APPEND_ATTEMPTS} conflicting appends");
        for p in &batch {
            self.instance
                .ports
                .metrics
                .operation(OperationType::of(&p.submission.delta), OpStatus::Conflict);
        }
        self.fail_as(
            &batch,
            ErrorCode::Unavailable,
            "the document is too busy: nothing was committed; retry the same submit",
        );
    }
}
