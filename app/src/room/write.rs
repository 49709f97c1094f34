//! The write path: submits batched per turn (group commit), dedup and
//! rebase in the sequencer, the append at the next version with the
//! compare-and-set loop, and only after it: acks, `ops` to the other local
//! sessions, the publish for other instances. A failed append is resolved
//! against the store before anyone is answered.

use super::attempt::{Attempt, Proposal};
use super::{
    LOOKUPS_AT_ONCE, MAX_APPEND_ATTEMPTS, Pending, Room, STORE_UNAVAILABLE, SessionId, UNSURE,
};
use relay_domain::{ClientId, CommittedOp, Proposed, Rejection, Submission, UserId};
use relay_ports::protocol::ErrorCode;
use relay_ports::{Chain, OpStatus, OperationType, StoreError};
use tokio::time::Instant;
use tracing::{Instrument, warn};

impl Room {
    pub(super) fn submit(
        &mut self,
        session: SessionId,
        submission: Submission,
        received: Instant,
        batch: &mut Vec<Pending>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if let Some((seq, _)) = s.awaiting {
            // The previous submit is still in this turn's batch. It may be
            // the re-sent copy of an op that another connection of this
            // client committed and that this client has since seen in `ops`
            // (so it rightly sent its next submit): that copy is answered
            // `ack` when proposed. Whether this one is early (`in_flight`)
            // is decided then, in order.
            batch.push(Pending {
                session,
                submission,
                received,
                after: Some(seq),
            });
            return;
        }
        s.awaiting = Some((submission.seq, received));
        batch.push(Pending {
            session,
            submission,
            received,
            after: None,
        });
    }

    /// A submit that arrived while the session's previous one (`after`) was
    /// unanswered: if that one has just been acked as a duplicate, this one
    /// becomes the session's submit (`true`); otherwise it is answered
    /// `in_flight`.
    pub(super) fn admit_deferred(&mut self, p: &mut Pending) -> bool {
        let Some(after) = p.after else {
            return true;
        };
        let Some(s) = self.sessions.get_mut(&p.session) else {
            return false;
        };
        let seq = p.submission.seq;
        if s.awaiting.is_some() || s.duplicate_acked != Some(after) {
            let msg = format!("seq {after} is not acknowledged yet: one submit at a time");
            s.sink.error(ErrorCode::InFlight, &msg, Some(seq));
            return false;
        }
        s.awaiting = Some((seq, p.received));
        p.after = None;
        true
    }

    /// Commits the batch in chunks of at most OPERATION_BATCH_SIZE.
    pub(super) async fn commit_batches(&mut self, mut batch: Vec<Pending>) {
        let size = self.instance.config.limits.operation_batch_size;
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(size));
            let span = tracing::info_span!(target: crate::telemetry::SUBMIT_SPANS, "sequence", document = %self.document, submits = batch.len());
            self.commit_batch(batch).instrument(span).await;
            batch = rest;
        }
    }

    pub(super) async fn commit_batch(&mut self, mut batch: Vec<Pending>) {
        self.learn_clients(&batch).await;
        // A base the room has not reached: another instance committed
        // versions this one has not seen. The store is the source of truth:
        // catch up before judging it `future_base`.
        let furthest = batch.iter().map(|p| p.submission.base).max();
        if let Some(base) = furthest
            && base > self.sequencer.version()
            && let Err(e) = self.catch_up_to(base).await
        {
            let (ahead, rest): (Vec<Pending>, Vec<Pending>) = batch
                .into_iter()
                .partition(|p| p.submission.base > self.sequencer.version());
            // The op may be committed already (the client saw that base on
            // the instance that committed it): no answer would be true.
            warn!(document = %self.document, error = %Chain(&e), "cannot catch up to a client's base");
            self.send_away(&ahead, UNSURE);
            batch = rest;
        }
        for attempt in 1..=MAX_APPEND_ATTEMPTS {
            match self.append_once(batch, attempt).await {
                Attempt::Done => return,
                Attempt::Again(rest) => batch = rest,
                // Another instance's room appends to this document too:
                // straight on, caught up. (A random pause here was measured
                // to hold the whole room up: a hot document shared by two
                // instances went from an ack p99 of 41 ms to 3.4 s, with
                // 800 give-ups; docs/performance.md, "Several instances".)
                Attempt::Lost(rest) => batch = rest,
            }
        }
        self.give_up(batch);
    }

    /// Asks the store what it knows of the batch's clients the sequencer
    /// has not seen, before proposing: see [`Room::learn`]. A failed lookup
    /// is left to [`Room::propose`], which asks again and answers that
    /// submit.
    pub(super) async fn learn_clients(&mut self, batch: &[Pending]) {
        let mut unknown: Vec<(UserId, ClientId)> = Vec::new();
        for p in batch {
            let (user, client) = (p.submission.user, &p.submission.client_id);
            if !self.sequencer.knows_client(user, client)
                && !unknown.iter().any(|(u, c)| *u == user && c == client)
            {
                unknown.push((user, client.clone()));
            }
        }
        if !unknown.is_empty() {
            let _ = self.learn(&unknown).await;
        }
    }

    /// Looks clients up in the store (their last committed seq),
    /// [`LOOKUPS_AT_ONCE`] at a time rather than one after another while
    /// the room waits, so a burst of new clients costs a quarter of the
    /// round trips to a remote database, and remembers the answers - also
    /// "nothing committed", so such a client is not looked up again.
    /// Returns the first failure.
    pub(super) async fn learn(&mut self, clients: &[(UserId, ClientId)]) -> Result<(), StoreError> {
        let (store, document) = (&self.instance.ports.store, self.document);
        let mut answers = Vec::with_capacity(clients.len());
        for chunk in clients.chunks(LOOKUPS_AT_ONCE) {
            answers.extend(
                futures::future::join_all(
                    chunk
                        .iter()
                        .map(|(user, client)| store.last_seq(document, *user, client)),
                )
                .await,
            );
        }
        let now = self.now();
        let mut outcome = Ok(());
        for ((user, client), answer) in clients.iter().zip(answers) {
            match answer {
                Ok(last) => self.sequencer.remember_client(*user, client, last, now),
                Err(e) => outcome = outcome.and(Err(e)),
            }
        }
        outcome
    }

    /// Proposes one submit: see [`Proposal`].
    pub(super) async fn propose(&mut self, p: &mut Pending) -> Proposal {
        let sub = &p.submission;
        if !self.sequencer.knows_client(sub.user, &sub.client_id)
            && let Err(e) = self.learn(&[(sub.user, sub.client_id.clone())]).await
        {
            // Whether this seq is committed is exactly what could not be
            // read.
            warn!(document = %self.document, error = %Chain(&e), "cannot read a client's last seq");
            self.send_away(std::slice::from_ref(p), UNSURE);
            return Proposal::Answered;
        }
        let mut proposed = self.sequencer.propose(&p.submission);
        if let Err(Rejection::StaleBase { base, oldest }) = proposed
            // The base is older than this room's history (a room opened
            // from a recent snapshot - after a failover, say - while the
            // client's op was in flight on another instance): the store
            // still has the ops in between, so rebase over them as the
            // history would have, rather than refuse an op no rejoin could
            // ever rebase.
            && let Some(rebased) = self.rebase_from_store(&p.submission, base, oldest).await
        {
            p.submission = rebased;
            proposed = self.sequencer.propose(&p.submission);
        }
        let sub = &p.submission;
        let kind = OperationType::of(&sub.delta);
        match proposed {
            Ok(Proposed::New(_)) | Ok(Proposed::Pending(_)) => Proposal::Pending,
            Ok(Proposed::Duplicate(version)) if version > self.sequencer.version() => {
                Proposal::Behind
            }
            Ok(Proposed::Duplicate(version)) => {
                self.instance
                    .ports
                    .metrics
                    .operation(kind, OpStatus::Duplicate);
                self.ack(p.session, sub.seq, version);
                Proposal::Answered
            }
            Err(Rejection::OutOfOrder { seq, last }) => {
                // An older op that left the in-memory history: the store
                // still knows whether it was committed.
                match self
                    .instance
                    .ports
                    .store
                    .find(self.document, sub.user, &sub.client_id, seq)
                    .await
                {
                    Ok(Some(version)) if version > self.sequencer.version() => {
                        return Proposal::Behind;
                    }
                    Ok(Some(version)) => {
                        self.instance
                            .ports
                            .metrics
                            .operation(kind, OpStatus::Duplicate);
                        self.ack(p.session, seq, version);
                    }
                    Ok(None) => {
                        self.instance
                            .ports
                            .metrics
                            .operation(kind, OpStatus::Rejected);
                        let r = Rejection::OutOfOrder { seq, last };
                        self.fail(
                            std::slice::from_ref(p),
                            ErrorCode::OutOfOrder,
                            &r.to_string(),
                        );
                    }
                    Err(e) => {
                        warn!(document = %self.document, error = %Chain(&e), "cannot look up an out-of-order submit");
                        self.send_away(std::slice::from_ref(p), UNSURE);
                    }
                }
                Proposal::Answered
            }
            Err(r) => {
                self.instance
                    .ports
                    .metrics
                    .operation(kind, OpStatus::Rejected);
                self.fail(std::slice::from_ref(p), ErrorCode::of(&r), &r.to_string());
                Proposal::Answered
            }
        }
    }

    pub(super) async fn maybe_snapshot(&mut self, closing: bool) {
        let version = self.sequencer.version();
        let due = version.since(self.last_snapshot) >= self.instance.config.store.snapshot_every;
        if !(due || (closing && version > self.last_snapshot)) {
            return;
        }
        let snapshot = relay_ports::Snapshot {
            version,
            content: self.sequencer.document().to_delta(),
        };
        match self
            .instance
            .ports
            .store
            .save_snapshot(self.document, snapshot)
            .await
        {
            Ok(()) => self.last_snapshot = version,
            Err(e) => warn!(document = %self.document, error = %Chain(&e), "snapshot not saved"),
        }
    }

    /// After an append failed: finds out from the store whether the batch
    /// was written before anyone is told anything (PROTOCOL.md: `unavailable`
    /// means nothing was committed). The catch-up acknowledges every op of
    /// the batch it finds (and publishes them); for the rest:
    /// - the store said `Unavailable` (nothing written): `unavailable`;
    /// - the outcome is unknown (`Unknown`, `Corrupt`) and the op is not in
    ///   the store, or the store cannot be read: the op may still land, so
    ///   no answer would be true - the session is closed with 1013 and the
    ///   client re-sends the submit after it reconnects, which commits it
    ///   exactly once either way.
    pub(super) async fn resolve_failed_append(&mut self, proposed: &[Pending], error: StoreError) {
        let nothing_written = matches!(error, StoreError::Unavailable(_));
        warn!(document = %self.document, error = %Chain(&error), "append failed; finding out what the store holds");
        let ours = |op: &CommittedOp| {
            proposed.iter().any(|p| {
                p.submission.user == op.user
                    && p.submission.client_id == op.client_id
                    && p.submission.seq == op.seq
            })
        };
        let read = match self.catch_up_finding(ours).await {
            Ok(found) => {
                for op in &found {
                    self.instance
                        .ports
                        .metrics
                        .operation(OperationType::of(&op.delta), OpStatus::Ok);
                }
                if !found.is_empty() {
                    self.publish_ops(found).await;
                }
                true
            }
            Err(e) => {
                warn!(document = %self.document, error = %Chain(&e), "the store cannot be read either");
                false
            }
        };
        // Whoever is still waiting was not found committed (`fail` and the
        // loop below skip the sessions the catch-up acknowledged) - known
        // only if the store could be read to its head: an earlier attempt
        // of the same seq (on another connection or instance) may have
        // committed it.
        if nothing_written && read {
            self.fail(proposed, ErrorCode::Unavailable, STORE_UNAVAILABLE);
            return;
        }
        for p in proposed {
            if self
                .sessions
                .get(&p.session)
                .is_some_and(|s| s.awaiting.map(|a| a.0) == Some(p.submission.seq))
            {
                self.instance
                    .ports
                    .metrics
                    .operation(OperationType::of(&p.submission.delta), OpStatus::Error);
            }
        }
        self.send_away(
            proposed,
            "the outcome of your submit is unknown: reconnect and re-send it",
        );
    }
}
