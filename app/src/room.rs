//! A room: the one task that owns an open document on this instance.
//!
//! It holds the [`Sequencer`], the presence roster and the local sessions'
//! outbound queues, and runs the write path: dedup, rebase, append at the
//! next version (group commit: submits that arrive while an append is in
//! flight go into the next batch), on conflict load what was missed and try
//! again (bounded), and only after the append: `ack` to the submitter, `ops`
//! to the other local sessions, a publish on the bus for other instances.
//! Ops from other instances arrive on the bus; a version gap is filled from
//! the store. A room with no session closes after `ROOM_IDLE_SECS`.

use crate::deps::Deps;
use crate::sink::Sink;
use relay_domain::{
    ClientId, CommittedOp, CursorThrottle, Document, DocumentId, PresenceEntry, Proposed,
    RateLimiter, Rejection, Roster, Seq, Sequencer, Submission, Timestamp, TypingDebounce, UserId,
    Version,
};
use relay_ports::bus::{BusEvent, BusMessage, Envelope};
use relay_ports::protocol::{
    Departed, ErrorCode, Role, ServerMessage, UserInfo, encode_op, encode_ops_frame,
};
use relay_ports::{Append, OpStatus, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How many times a batch is retried after losing the race for a version.
const MAX_APPEND_ATTEMPTS: usize = 8;
/// Catch-up ops beyond the in-memory history are read from the store up to
/// this many; past it `joined` carries the content instead.
const MAX_CATCH_UP_FROM_STORE: usize = 10_000;
/// How many store lookups of new clients a room has in flight at once
/// (a few: more only open pool connections).
const LOOKUPS_AT_ONCE: usize = 4;
/// How many commands are taken from the mailbox per turn (the group-commit
/// window is whatever arrived during the previous append).
const MAILBOX_TURN: usize = 512;

/// Who a session is, as the room needs it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub id: u64,
    pub user: UserId,
    pub client_id: ClientId,
    pub name: Option<String>,
    pub role: Role,
}

/// A failed join.
#[derive(Debug)]
pub(crate) enum JoinError {
    Unavailable(String),
}

pub(crate) enum Command {
    Join {
        member: Member,
        since: Option<Version>,
        sink: Sink,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Submit {
        session: u64,
        submission: Submission,
        received: Instant,
    },
    Cursor {
        session: u64,
        version: Version,
        selection: Option<(usize, usize)>,
    },
    Typing {
        session: u64,
    },
    Leave {
        session: u64,
        reason: String,
    },
    /// Tell every session the server is draining.
    Shutdown {
        reconnect_in_ms: u64,
    },
    /// Close every session now (1001).
    CloseAll,
    /// Snapshot and stop (the server is shutting down).
    Stop,
}

struct Local {
    member: Member,
    sink: Sink,
    /// The submit waiting for its ack (one per connection).
    awaiting: Option<(Seq, Instant)>,
    /// The last submit answered `ack` as a duplicate (already committed).
    duplicate_acked: Option<Seq>,
    limiter: RateLimiter,
    /// Holds the latest cursor as received (version and positions at that
    /// version) until its turn: it is rebased only when it is sent.
    cursor: CursorThrottle<(Version, Option<(usize, usize)>)>,
    typing: TypingDebounce,
}

struct Pending {
    session: u64,
    submission: Submission,
    received: Instant,
    /// Arrived while the session's submit with this seq was still in the
    /// batch: admitted only if that one turns out to be a duplicate (see
    /// [`Room::admit_deferred`]).
    after: Option<Seq>,
}

pub(crate) struct Room {
    document: DocumentId,
    deps: Arc<Deps>,
    seq: Sequencer,
    roster: Roster,
    sessions: HashMap<u64, Local>,
    last_snapshot: Version,
    idle_since: Option<Instant>,
    stopping: bool,
    next_presence_refresh: Instant,
}

/// Starts a room on the service's task tracker, supervised: a room that
/// panics has its sessions closed with 1011 (see `Drop for Room`), is
/// logged with its cause and forgotten, so the next join opens the document
/// afresh from the store.
pub(crate) fn spawn(
    document: DocumentId,
    deps: Arc<Deps>,
    mailbox: mpsc::Receiver<Command>,
    generation: u64,
) {
    use futures::FutureExt;
    let tasks = deps.tasks.clone();
    tasks.spawn(async move {
        let room = std::panic::AssertUnwindSafe(run(document, deps.clone(), mailbox, generation));
        if let Err(panic) = room.catch_unwind().await {
            let cause = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            tracing::error!(%document, %cause, "room failed: its sessions were closed with 1011; the next join reopens the document from the store");
            deps.rooms.forget(document, generation);
        }
    });
}

/// Runs a room until it has been idle long enough, then asks the registry
/// to forget it.
async fn run(
    document: DocumentId,
    deps: Arc<Deps>,
    mut mailbox: mpsc::Receiver<Command>,
    generation: u64,
) {
    let mut room = match Room::open(document, deps.clone()).await {
        Ok(room) => room,
        Err(e) => {
            warn!(%document, error = %e, "cannot open document");
            deps.rooms.forget(document, generation);
            // Answer whoever is waiting, then stop.
            mailbox.close();
            while let Some(cmd) = mailbox.recv().await {
                if let Command::Join { reply, .. } = cmd {
                    let _ = reply.send(Err(JoinError::Unavailable(e.to_string())));
                }
            }
            return;
        }
    };
    let mut bus = match deps.bus.subscribe(document).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(%document, error = %e, "bus subscription failed; this room will not see other instances");
            None
        }
    };
    loop {
        let deadline = room.next_deadline();
        let mut batch = Vec::new();
        tokio::select! {
            cmd = mailbox.recv() => {
                let Some(cmd) = cmd else { break };
                room.handle(cmd, &mut batch).await;
                // Everything that queued up while we were busy joins this turn.
                for _ in 0..MAILBOX_TURN {
                    match mailbox.try_recv() {
                        Ok(cmd) => room.handle(cmd, &mut batch).await,
                        Err(_) => break,
                    }
                }
            }
            event = recv_bus(&mut bus) => {
                match event {
                    Some(BusEvent::Message(env)) => room.remote(env).await,
                    Some(BusEvent::Lagged) => room.catch_up_logged().await,
                    None => {
                        warn!(%document, "bus subscription ended");
                        bus = None;
                    }
                }
            }
            _ = sleep_until(deadline) => {}
        }
        room.commit_batches(batch).await;
        room.fire_timers().await;
        if room.stopping {
            break;
        }
        if room.idle_expired() {
            // Close only if nothing arrived meanwhile, under the registry's
            // lock so a concurrent join finds a closed mailbox and starts a
            // new room instead.
            if deps.rooms.forget_if_idle(document, generation, &mailbox) {
                room.close().await;
                return;
            }
        }
    }
    room.close().await;
    deps.rooms.forget(document, generation);
}

async fn recv_bus(bus: &mut Option<relay_ports::Subscription>) -> Option<BusEvent> {
    match bus {
        Some(s) => s.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Room {
    async fn open(document: DocumentId, deps: Arc<Deps>) -> Result<Room, StoreError> {
        let loaded = deps.store.load(document).await?;
        let (doc, last_snapshot) = match &loaded.snapshot {
            Some(s) => (
                Document::from_content(&s.content, s.version)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                s.version,
            ),
            None => (Document::new(), Version::ZERO),
        };
        let mut seq = Sequencer::new(doc, deps.config.sequencer());
        let now = deps.clock.now();
        for op in loaded.tail {
            let v = op.version;
            seq.apply_remote(op, now)
                .map_err(|e| StoreError::Corrupt(format!("op {v}: {e}")))?;
        }
        let mut roster = Roster::new();
        if let Ok(entries) = deps.presence.list(document).await {
            for e in entries {
                roster.join(e);
            }
        }
        debug!(%document, version = %seq.version(), "room opened");
        Ok(Room {
            document,
            next_presence_refresh: Instant::now() + deps.presence_refresh(),
            deps,
            seq,
            roster,
            sessions: HashMap::new(),
            last_snapshot,
            idle_since: Some(Instant::now()),
            stopping: false,
        })
    }

    fn now(&self) -> Timestamp {
        self.deps.clock.now()
    }

    async fn handle(&mut self, cmd: Command, batch: &mut Vec<Pending>) {
        match cmd {
            Command::Join {
                member,
                since,
                sink,
                reply,
            } => {
                let r = self.join(member, since, sink).await;
                let _ = reply.send(r);
            }
            Command::Submit {
                session,
                submission,
                received,
            } => self.submit(session, submission, received, batch),
            Command::Cursor {
                session,
                version,
                selection,
            } => self.cursor(session, version, selection).await,
            Command::Typing { session } => self.typing(session).await,
            Command::Leave { session, reason } => self.leave(session, &reason).await,
            Command::Shutdown { reconnect_in_ms } => {
                let frame: Arc<str> = ServerMessage::Shutdown { reconnect_in_ms }.encode().into();
                for s in self.sessions.values() {
                    s.sink.send(frame.clone());
                }
            }
            Command::Stop => self.stopping = true,
            Command::CloseAll => {
                let ids: Vec<u64> = self.sessions.keys().copied().collect();
                for id in ids {
                    if let Some(s) = self.sessions.get(&id) {
                        s.sink.order_close(
                            relay_ports::protocol::close::GOING_AWAY,
                            "server shutting down",
                        );
                    }
                    self.leave(id, "server shutting down").await;
                }
            }
        }
    }

    async fn join(
        &mut self,
        member: Member,
        since: Option<Version>,
        sink: Sink,
    ) -> Result<(), JoinError> {
        let version = self.seq.version();
        let catch_up = match since {
            Some(v) if v <= version => self.catch_up_ops(v).await?,
            _ => None,
        };
        // The ops unless they are larger than both 4 x MAX_MESSAGE_BYTES
        // and the content, so `joined` is never larger than a document
        // Relay accepts (a client that missed most of a large document gets
        // the document), while an ordinary catch-up stays ops.
        let (content, ops) = match catch_up {
            Some(ops) => {
                let doc = self.seq.document();
                let ops_bytes = ops
                    .iter()
                    .map(|op| encode_op(op).len() + 1)
                    .fold(0usize, usize::saturating_add);
                if ops_bytes <= self.deps.config.max_op_bytes() || ops_bytes <= doc.len_bytes() {
                    (None, Some(ops))
                } else if ops_bytes > doc.content_json_bound() {
                    (Some(doc.to_delta()), None)
                } else {
                    // In between the bounds: measure the content.
                    let content = doc.to_delta();
                    let content_bytes = serde_json::to_string(&content).map_or(0, |s| s.len());
                    if ops_bytes <= content_bytes {
                        (None, Some(ops))
                    } else {
                        (Some(content), None)
                    }
                }
            }
            None => (Some(self.seq.document().to_delta()), None),
        };
        let entry = PresenceEntry {
            user: member.user,
            client_id: member.client_id.clone(),
            name: member.name.clone(),
            anchor: None,
            head: None,
            version,
        };
        let presence = self
            .roster
            .entries()
            .filter(|e| !(e.user == member.user && e.client_id == member.client_id))
            .cloned()
            .collect();
        let joined = ServerMessage::Joined {
            session: format!("{:016x}", member.id),
            user: UserInfo {
                id: member.user,
                name: member.name.clone(),
            },
            role: member.role,
            version,
            content,
            ops,
            presence,
            limits: self.deps.config.limits(),
        };
        if !sink.send(joined.encode().into()) {
            return Ok(());
        }
        info!(document = %self.document, user = %member.user, client_id = %member.client_id, role = member.role.as_str(), "joined");
        let config = &self.deps.config;
        let local = Local {
            sink,
            awaiting: None,
            duplicate_acked: None,
            limiter: RateLimiter::new(config.submit_burst, config.submit_rate_per_sec),
            cursor: CursorThrottle::new(config.cursor_throttle_ms),
            typing: TypingDebounce::new(config.typing_debounce_ms),
            member,
        };
        self.sessions.insert(local.member.id, local);
        self.idle_since = None;
        self.roster.join(entry.clone());
        self.broadcast_local(
            &ServerMessage::Presence {
                joined: vec![entry.clone()],
                left: vec![],
            },
            Some(entry_key(&entry)),
        );
        if let Err(e) = self
            .deps
            .presence
            .upsert(self.document, entry.clone(), self.deps.presence_ttl())
            .await
        {
            warn!(document = %self.document, error = %e, "presence registry");
        }
        self.publish(BusMessage::Joined { entry }).await;
        Ok(())
    }

    /// The ops after `since`, from memory or the store; `None` if too many
    /// or no longer available (then `joined` carries the content).
    async fn catch_up_ops(
        &mut self,
        since: Version,
    ) -> Result<Option<Vec<CommittedOp>>, JoinError> {
        if let Some(ops) = self.seq.ops_since(since) {
            return Ok(Some(ops.cloned().collect()));
        }
        let missing = usize::try_from(self.seq.version().since(since)).unwrap_or(usize::MAX);
        if missing > MAX_CATCH_UP_FROM_STORE {
            return Ok(None);
        }
        let ops = self
            .deps
            .store
            .read(self.document, since, missing)
            .await
            .map_err(|e| JoinError::Unavailable(e.to_string()))?;
        let complete = ops.len() == missing
            && ops.iter().enumerate().all(|(i, op)| {
                u64::try_from(i + 1).ok().and_then(|n| since.checked_add(n)) == Some(op.version)
            });
        Ok(complete.then_some(ops))
    }

    fn submit(
        &mut self,
        session: u64,
        submission: Submission,
        received: Instant,
        batch: &mut Vec<Pending>,
    ) {
        let now = self.now();
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
        if !s.limiter.try_acquire(now) {
            s.sink.error(
                ErrorCode::RateLimited,
                "too many submits: slow down",
                Some(submission.seq),
            );
            self.deps.metrics.operation("rejected", OpStatus::Rejected);
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
    /// `in_flight` (or `rate_limited`).
    fn admit_deferred(&mut self, p: &mut Pending) -> bool {
        let Some(after) = p.after else {
            return true;
        };
        let now = self.now();
        let Some(s) = self.sessions.get_mut(&p.session) else {
            return false;
        };
        let seq = p.submission.seq;
        if s.awaiting.is_some() || s.duplicate_acked != Some(after) {
            let msg = format!("seq {after} is not acknowledged yet: one submit at a time");
            s.sink.error(ErrorCode::InFlight, &msg, Some(seq));
            return false;
        }
        if !s.limiter.try_acquire(now) {
            s.sink.error(
                ErrorCode::RateLimited,
                "too many submits: slow down",
                Some(seq),
            );
            self.deps.metrics.operation("rejected", OpStatus::Rejected);
            return false;
        }
        s.awaiting = Some((seq, p.received));
        p.after = None;
        true
    }

    /// Commits the batch in chunks of at most OPERATION_BATCH_SIZE.
    async fn commit_batches(&mut self, mut batch: Vec<Pending>) {
        let size = self.deps.config.operation_batch_size;
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(size));
            self.commit_batch(batch).await;
            batch = rest;
        }
    }

    async fn commit_batch(&mut self, mut batch: Vec<Pending>) {
        self.learn_clients(&batch).await;
        for attempt in 1..=MAX_APPEND_ATTEMPTS {
            let mut proposed = Vec::with_capacity(batch.len());
            for mut p in batch {
                if self.admit_deferred(&mut p) && self.propose(&p).await {
                    proposed.push(p);
                }
            }
            if self.seq.pending().is_empty() {
                return;
            }
            let outcome = self
                .deps
                .store
                .append(self.document, self.seq.pending())
                .await;
            match outcome {
                Ok(Append::Committed) => {
                    let ops = self.seq.pending().to_vec();
                    let through = ops.last().map_or(self.seq.version(), |o| o.version);
                    self.seq.commit(through, self.now());
                    self.committed(&ops, true).await;
                    return;
                }
                Ok(Append::Conflict { .. }) | Ok(Append::Duplicate { .. }) => {
                    self.seq.abort_pending();
                    debug!(document = %self.document, attempt, "lost the race for a version; catching up");
                    if let Err(e) = self.catch_up().await {
                        self.fail(&proposed, ErrorCode::Unavailable, &format!("storage: {e}"));
                        return;
                    }
                    batch = proposed;
                }
                Err(StoreError::Rejected(reason)) => {
                    self.seq.abort_pending();
                    if proposed.len() > 1 {
                        // One op's data is refused: commit them one at a
                        // time, so only that one fails.
                        warn!(document = %self.document, %reason, ops = proposed.len(), "the store refused a batch; committing its ops one by one");
                        for p in proposed {
                            Box::pin(self.commit_batch(vec![p])).await;
                        }
                        return;
                    }
                    tracing::error!(document = %self.document, %reason, "the store refused an operation's data");
                    self.fail(
                        &proposed,
                        ErrorCode::Internal,
                        "the operation store refused this operation: it will never be committed",
                    );
                    return;
                }
                Err(e) => {
                    self.seq.abort_pending();
                    self.resolve_failed_append(&proposed, e).await;
                    return;
                }
            }
        }
        self.seq.abort_pending();
        warn!(document = %self.document, "gave up after {MAX_APPEND_ATTEMPTS} conflicting appends");
        self.fail(
            &batch,
            ErrorCode::Unavailable,
            "the document is too busy: nothing was committed; retry the same submit",
        );
    }

    /// Asks the store what it knows of the batch's clients the sequencer
    /// has not seen, before proposing: see [`Room::learn`]. A failed lookup
    /// is left to [`Room::propose`], which asks again and answers that
    /// submit.
    async fn learn_clients(&mut self, batch: &[Pending]) {
        let mut unknown: Vec<(UserId, ClientId)> = Vec::new();
        for p in batch {
            let (user, client) = (p.submission.user, &p.submission.client_id);
            if !self.seq.knows_client(user, client)
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
    async fn learn(&mut self, clients: &[(UserId, ClientId)]) -> Result<(), StoreError> {
        let (store, document) = (&self.deps.store, self.document);
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
                Ok(last) => self.seq.remember_client(*user, client, last, now),
                Err(e) => outcome = outcome.and(Err(e)),
            }
        }
        outcome
    }

    /// Proposes one submit. Returns whether it is now pending (answered
    /// later); otherwise it has been answered.
    async fn propose(&mut self, p: &Pending) -> bool {
        let sub = &p.submission;
        if !self.seq.knows_client(sub.user, &sub.client_id)
            && let Err(e) = self.learn(&[(sub.user, sub.client_id.clone())]).await
        {
            self.fail(
                std::slice::from_ref(p),
                ErrorCode::Unavailable,
                &format!("storage: {e}"),
            );
            return false;
        }
        let kind = relay_ports::metrics::operation_type(&sub.delta);
        match self.seq.propose(sub) {
            Ok(Proposed::New(_)) | Ok(Proposed::Pending(_)) => true,
            Ok(Proposed::Duplicate(version)) => {
                self.deps.metrics.operation(kind, OpStatus::Duplicate);
                self.ack(p.session, sub.seq, version);
                false
            }
            Err(Rejection::OutOfOrder { seq, last }) => {
                // An older op that left the in-memory history: the store
                // still knows whether it was committed.
                match self
                    .deps
                    .store
                    .find(self.document, sub.user, &sub.client_id, seq)
                    .await
                {
                    Ok(Some(version)) => {
                        self.deps.metrics.operation(kind, OpStatus::Duplicate);
                        self.ack(p.session, seq, version);
                    }
                    Ok(None) => {
                        self.deps.metrics.operation(kind, OpStatus::Rejected);
                        let r = Rejection::OutOfOrder { seq, last };
                        self.fail(
                            std::slice::from_ref(p),
                            ErrorCode::OutOfOrder,
                            &r.to_string(),
                        );
                    }
                    Err(e) => self.fail(
                        std::slice::from_ref(p),
                        ErrorCode::Unavailable,
                        &format!("storage: {e}"),
                    ),
                }
                false
            }
            Err(r) => {
                self.deps.metrics.operation(kind, OpStatus::Rejected);
                self.fail(std::slice::from_ref(p), ErrorCode::of(&r), &r.to_string());
                false
            }
        }
    }

    /// Answers a re-sent submit whose op is already committed.
    fn ack(&mut self, session: u64, seq: Seq, version: Version) {
        if let Some(s) = self.sessions.get_mut(&session)
            && s.awaiting.map(|a| a.0) == Some(seq)
        {
            s.awaiting = None;
            s.duplicate_acked = Some(seq);
            s.sink
                .send(ServerMessage::Ack { seq, version }.encode().into());
        }
    }

    /// Answers submits with an error (non-fatal) and frees their sessions.
    fn fail(&mut self, pending: &[Pending], code: ErrorCode, message: &str) {
        for p in pending {
            if code == ErrorCode::Unavailable {
                self.deps.metrics.operation(
                    relay_ports::metrics::operation_type(&p.submission.delta),
                    OpStatus::Error,
                );
            }
            if let Some(s) = self.sessions.get_mut(&p.session)
                && s.awaiting.map(|a| a.0) == Some(p.submission.seq)
            {
                s.awaiting = None;
                s.sink.error(code, message, Some(p.submission.seq));
            }
        }
    }

    /// After ops became durable (here, or on another instance): acks to
    /// their submitters, `ops` frames to everyone else, in version order.
    /// A frame holds at most OPERATION_BATCH_SIZE ops and at most
    /// MAX_MESSAGE_BYTES of them (or a single op, if one is larger).
    async fn committed(&mut self, ops: &[CommittedOp], ours: bool) {
        if ops.is_empty() {
            return;
        }
        for op in ops {
            self.roster.apply(op);
        }
        let encoded: Vec<String> = ops.iter().map(encode_op).collect();
        let batch = self.deps.config.operation_batch_size;
        let budget = self.deps.config.max_message_bytes;
        let now = Instant::now();
        let mut dead = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            let mut run: Vec<&str> = Vec::new();
            let mut run_bytes = 0;
            let mut alive = true;
            for (op, json) in ops.iter().zip(&encoded) {
                let own = op.user == s.member.user
                    && op.client_id == s.member.client_id
                    && s.awaiting.map(|a| a.0) == Some(op.seq);
                if own {
                    alive &= flush(&s.sink, &mut run);
                    run_bytes = 0;
                    let (_, received) = s.awaiting.take().expect("checked");
                    self.deps
                        .metrics
                        .operation_latency(now.duration_since(received).as_secs_f64());
                    alive &= s.sink.send(
                        ServerMessage::Ack {
                            seq: op.seq,
                            version: op.version,
                        }
                        .encode()
                        .into(),
                    );
                } else {
                    if !run.is_empty() && run_bytes + json.len() > budget {
                        alive &= flush(&s.sink, &mut run);
                        run_bytes = 0;
                    }
                    run.push(json);
                    run_bytes += json.len() + 1;
                    if run.len() == batch {
                        alive &= flush(&s.sink, &mut run);
                        run_bytes = 0;
                    }
                }
            }
            alive &= flush(&s.sink, &mut run);
            if !alive {
                dead.push(*id);
            }
        }
        if ours {
            for op in ops {
                self.deps.metrics.operation(
                    relay_ports::metrics::operation_type(&op.delta),
                    OpStatus::Ok,
                );
            }
            self.publish(BusMessage::Ops { ops: ops.to_vec() }).await;
            self.maybe_snapshot(false).await;
        }
        for id in dead {
            self.leave(id, "slow consumer").await;
        }
    }

    async fn maybe_snapshot(&mut self, closing: bool) {
        let version = self.seq.version();
        let due = version.since(self.last_snapshot) >= self.deps.config.snapshot_every;
        if !(due || (closing && version > self.last_snapshot)) {
            return;
        }
        let snapshot = relay_ports::Snapshot {
            version,
            content: self.seq.document().to_delta(),
        };
        match self.deps.store.save_snapshot(self.document, snapshot).await {
            Ok(()) => self.last_snapshot = version,
            Err(e) => warn!(document = %self.document, error = %e, "snapshot not saved"),
        }
    }

    /// Reads and applies every op the store has after our version.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        self.catch_up_finding(|_| false).await.map(|_| ())
    }

    /// [`Room::catch_up`], returning the applied ops that `mine` picks
    /// (after an append whose answer was lost: the batch's own ops, found
    /// committed).
    async fn catch_up_finding(
        &mut self,
        mine: impl Fn(&CommittedOp) -> bool,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        let mut found = Vec::new();
        loop {
            let ops = self
                .deps
                .store
                .read(self.document, self.seq.version(), 1000)
                .await?;
            if ops.is_empty() {
                return Ok(found);
            }
            let mut applied = Vec::with_capacity(ops.len());
            for op in ops {
                match self.seq.apply_remote(op, self.deps.clock.now()) {
                    // As applied: the delta fitted to the document.
                    Ok(true) => applied.extend(self.seq.last_committed().cloned()),
                    Ok(false) => {}
                    Err(e) => return Err(StoreError::Corrupt(e.to_string())),
                }
            }
            found.extend(applied.iter().filter(|op| mine(op)).cloned());
            self.committed(&applied, false).await;
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
    async fn resolve_failed_append(&mut self, proposed: &[Pending], error: StoreError) {
        let nothing_written = matches!(error, StoreError::Unavailable(_));
        warn!(document = %self.document, error = %error, "append failed; finding out what the store holds");
        let ours = |op: &CommittedOp| {
            proposed.iter().any(|p| {
                p.submission.user == op.user
                    && p.submission.client_id == op.client_id
                    && p.submission.seq == op.seq
            })
        };
        match self.catch_up_finding(ours).await {
            Ok(found) if !found.is_empty() => {
                for op in &found {
                    self.deps.metrics.operation(
                        relay_ports::metrics::operation_type(&op.delta),
                        OpStatus::Ok,
                    );
                }
                self.publish(BusMessage::Ops { ops: found }).await;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(document = %self.document, error = %e, "the store cannot be read either");
            }
        }
        // Whoever is still waiting was not found committed (`fail` and the
        // loop below skip the sessions the catch-up acknowledged).
        if nothing_written {
            self.fail(
                proposed,
                ErrorCode::Unavailable,
                "storage unavailable: nothing was committed; retry the same submit",
            );
            return;
        }
        for p in proposed {
            if let Some(s) = self.sessions.get_mut(&p.session)
                && s.awaiting.map(|a| a.0) == Some(p.submission.seq)
            {
                s.awaiting = None;
                self.deps.metrics.operation(
                    relay_ports::metrics::operation_type(&p.submission.delta),
                    OpStatus::Error,
                );
                s.sink.order_close(
                    relay_ports::protocol::close::TRY_AGAIN_LATER,
                    "the outcome of your submit is unknown: reconnect and re-send it",
                );
            }
        }
    }

    async fn catch_up_logged(&mut self) {
        if let Err(e) = self.catch_up().await {
            warn!(document = %self.document, error = %e, "catch-up from the store failed");
        }
    }

    async fn remote(&mut self, env: Envelope) {
        if env.origin == self.deps.instance || env.document != self.document {
            return;
        }
        match env.message {
            BusMessage::Ops { ops } => {
                let mut applied = Vec::new();
                for op in ops {
                    if op.version <= self.seq.version() {
                        continue;
                    }
                    if Some(op.version) != self.seq.version().next() {
                        // A gap: the store has what we missed (and this op).
                        self.committed(&applied, false).await;
                        self.catch_up_logged().await;
                        return;
                    }
                    match self.seq.apply_remote(op, self.now()) {
                        Ok(_) => applied.extend(self.seq.last_committed().cloned()),
                        Err(e) => {
                            warn!(document = %self.document, error = %e, "remote op refused");
                            break;
                        }
                    }
                }
                self.committed(&applied, false).await;
            }
            BusMessage::Joined { entry } => {
                if self.roster.join(entry.clone()) {
                    self.broadcast_local(
                        &ServerMessage::Presence {
                            joined: vec![entry],
                            left: vec![],
                        },
                        None,
                    );
                }
            }
            BusMessage::Left { departed } => {
                if self
                    .roster
                    .leave(departed.user, &departed.client_id)
                    .is_some()
                {
                    self.broadcast_local(
                        &ServerMessage::Presence {
                            joined: vec![],
                            left: vec![departed],
                        },
                        None,
                    );
                }
            }
            BusMessage::Cursor { mut entry } => {
                self.rebase_entry(&mut entry);
                self.roster.join(entry.clone());
                self.broadcast_local(&cursor_message(&entry), None);
            }
            BusMessage::Typing {
                user,
                client_id,
                active,
            } => {
                self.broadcast_local(
                    &ServerMessage::Typing {
                        user,
                        client_id,
                        active,
                    },
                    None,
                );
            }
        }
    }

    fn rebase_entry(&self, entry: &mut PresenceEntry) {
        let current = self.seq.version();
        if entry.version >= current {
            return;
        }
        let moved = |p: Option<usize>| {
            p.and_then(|p| {
                self.seq
                    .rebase_position(p, entry.version, relay_domain::Bias::Before)
            })
        };
        match (moved(entry.anchor), moved(entry.head)) {
            (Some(a), Some(h)) => {
                entry.anchor = Some(a);
                entry.head = Some(h);
            }
            _ => {
                entry.anchor = None;
                entry.head = None;
            }
        }
        entry.version = current;
    }

    /// A cursor from a local client: checked, then throttled before any
    /// work - at most one per CURSOR_THROTTLE_MS is rebased and sent, the
    /// latest held for its turn.
    async fn cursor(&mut self, session: u64, version: Version, selection: Option<(usize, usize)>) {
        let current = self.seq.version();
        let now = self.now();
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if version > current {
            s.sink.error(
                ErrorCode::BadMessage,
                &format!("cursor version {version} is ahead of the document ({current})"),
                None,
            );
            return;
        }
        if let Some((version, selection)) = s.cursor.offer((version, selection), now) {
            self.place_cursor(session, version, selection).await;
        }
    }

    /// Rebases a cursor taken at `version` to the current version, records
    /// it and broadcasts it.
    async fn place_cursor(
        &mut self,
        session: u64,
        version: Version,
        selection: Option<(usize, usize)>,
    ) {
        #[cfg(test)]
        test_counters::count_rebase(self.document);
        let current = self.seq.version();
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let len = self.seq.document().len();
        let selection = match selection {
            None => None,
            Some((a, h)) => {
                let bias = relay_domain::Bias::Before;
                match (
                    self.seq.rebase_position(a, version, bias),
                    self.seq.rebase_position(h, version, bias),
                ) {
                    (Some(a), Some(h)) => Some((a.min(len), h.min(len))),
                    // Taken at a version no longer in history: drop it; the
                    // client will send a fresher one.
                    _ => return,
                }
            }
        };
        let (user, client_id) = (s.member.user, s.member.client_id.clone());
        self.roster
            .set_selection(user, &client_id, selection, current);
        self.send_cursor(session).await;
    }

    /// Broadcasts a session's current selection (from the roster, so it is
    /// up to date with every op applied since it was offered).
    async fn send_cursor(&mut self, session: u64) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let Some(entry) = self.roster.get(s.member.user, &s.member.client_id).cloned() else {
            return;
        };
        self.broadcast_local(&cursor_message(&entry), Some(entry_key(&entry)));
        self.deps.metrics.presence_broadcast();
        self.publish(BusMessage::Cursor { entry }).await;
    }

    async fn typing(&mut self, session: u64) {
        let now = self.now();
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.typing.signal(now) == Some(true) {
            self.send_typing(session, true).await;
        }
    }

    async fn send_typing(&mut self, session: u64, active: bool) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let (user, client_id) = (s.member.user, s.member.client_id.clone());
        self.broadcast_local(
            &ServerMessage::Typing {
                user,
                client_id: client_id.clone(),
                active,
            },
            Some((user, client_id.clone())),
        );
        self.deps.metrics.presence_broadcast();
        self.publish(BusMessage::Typing {
            user,
            client_id,
            active,
        })
        .await;
    }

    async fn leave(&mut self, session: u64, reason: &str) {
        let Some(mut s) = self.sessions.remove(&session) else {
            return;
        };
        info!(document = %self.document, user = %s.member.user, client_id = %s.member.client_id, reason, "left");
        if s.typing.stop().is_some() {
            // Tell the others typing stopped (the session is gone already).
            self.broadcast_local(
                &ServerMessage::Typing {
                    user: s.member.user,
                    client_id: s.member.client_id.clone(),
                    active: false,
                },
                None,
            );
        }
        // Another connection of the same tab may still be here (a reconnect
        // racing the old connection's close): then it has not left.
        let still_here = self
            .sessions
            .values()
            .any(|o| o.member.user == s.member.user && o.member.client_id == s.member.client_id);
        if !still_here {
            self.roster.leave(s.member.user, &s.member.client_id);
            let departed = Departed {
                user: s.member.user,
                client_id: s.member.client_id.clone(),
            };
            self.broadcast_local(
                &ServerMessage::Presence {
                    joined: vec![],
                    left: vec![departed.clone()],
                },
                None,
            );
            if let Err(e) = self
                .deps
                .presence
                .remove(self.document, s.member.user, &s.member.client_id)
                .await
            {
                warn!(document = %self.document, error = %e, "presence registry");
            }
            self.publish(BusMessage::Left { departed }).await;
        }
        if self.sessions.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }

    /// Sends a message to every local session except `except` (by user and
    /// client id). Sessions whose queue overflowed are closed by their sink.
    fn broadcast_local(&self, message: &ServerMessage, except: Option<(UserId, ClientId)>) {
        let mut frame: Option<Arc<str>> = None;
        for s in self.sessions.values() {
            if let Some((u, c)) = &except
                && s.member.user == *u
                && s.member.client_id == *c
            {
                continue;
            }
            let f = frame.get_or_insert_with(|| message.encode().into()).clone();
            s.sink.send(f);
        }
    }

    async fn publish(&mut self, message: BusMessage) {
        let env = Envelope {
            origin: self.deps.instance,
            document: self.document,
            message,
        };
        if let Err(e) = self.deps.bus.publish(env).await {
            debug!(document = %self.document, error = %e, "bus publish failed; other instances will catch up from the store");
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let now_ts = self.now();
        let now = Instant::now();
        let to_instant = |t: Timestamp| now + Duration::from_millis(t.0.saturating_sub(now_ts.0));
        let mut next = Some(self.next_presence_refresh);
        let mut consider = |d: Instant| {
            next = Some(next.map_or(d, |n| n.min(d)));
        };
        for s in self.sessions.values() {
            if let Some(d) = s.cursor.deadline() {
                consider(to_instant(d));
            }
            if let Some(d) = s.typing.deadline() {
                consider(to_instant(d));
            }
        }
        if let Some(idle) = self.idle_since {
            consider(idle + self.deps.config.room_idle);
        }
        next
    }

    async fn fire_timers(&mut self) {
        let now = self.now();
        let mut cursors = Vec::new();
        let mut typing_done = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            if let Some((version, selection)) = s.cursor.poll(now) {
                cursors.push((*id, version, selection));
            }
            if s.typing.poll(now) == Some(false) {
                typing_done.push(*id);
            }
        }
        for (id, version, selection) in cursors {
            self.place_cursor(id, version, selection).await;
        }
        for id in typing_done {
            self.send_typing(id, false).await;
        }
        if Instant::now() >= self.next_presence_refresh {
            self.next_presence_refresh = Instant::now() + self.deps.presence_refresh();
            self.refresh_presence().await;
        }
    }

    /// Keeps this instance's registry entries alive and forgets remote
    /// entries whose instance stopped refreshing them.
    async fn refresh_presence(&mut self) {
        let ttl = self.deps.presence_ttl();
        let mut local = Vec::new();
        for s in self.sessions.values() {
            if let Some(e) = self.roster.get(s.member.user, &s.member.client_id) {
                local.push(e.clone());
            }
        }
        for e in local {
            if let Err(e) = self.deps.presence.upsert(self.document, e, ttl).await {
                warn!(document = %self.document, error = %e, "presence refresh");
                return;
            }
        }
        if let Ok(listed) = self.deps.presence.list(self.document).await {
            let gone: Vec<PresenceEntry> = self
                .roster
                .entries()
                .filter(|e| {
                    !listed
                        .iter()
                        .any(|l| l.user == e.user && l.client_id == e.client_id)
                })
                .cloned()
                .collect();
            for e in gone {
                self.roster.leave(e.user, &e.client_id);
                self.broadcast_local(
                    &ServerMessage::Presence {
                        joined: vec![],
                        left: vec![Departed {
                            user: e.user,
                            client_id: e.client_id,
                        }],
                    },
                    None,
                );
            }
        }
    }

    fn idle_expired(&self) -> bool {
        self.idle_since.is_some_and(|t| {
            self.sessions.is_empty() && Instant::now() >= t + self.deps.config.room_idle
        })
    }

    async fn close(&mut self) {
        self.maybe_snapshot(true).await;
        debug!(document = %self.document, version = %self.seq.version(), "room closed");
    }
}

/// A room that unwinds (a bug: a panic in its task) closes its sessions
/// with 1011 on the way out, so no client waits on a room that is gone; they
/// reconnect and resume on a fresh room.
impl Drop for Room {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in self.sessions.values() {
                s.sink.order_close(
                    relay_ports::protocol::close::INTERNAL,
                    "internal error: reconnect to resume",
                );
            }
        }
    }
}

fn flush(sink: &Sink, run: &mut Vec<&str>) -> bool {
    if run.is_empty() {
        return true;
    }
    let frame = encode_ops_frame(run.iter().copied());
    run.clear();
    sink.send(frame.into())
}

fn entry_key(e: &PresenceEntry) -> (UserId, ClientId) {
    (e.user, e.client_id.clone())
}

fn cursor_message(e: &PresenceEntry) -> ServerMessage {
    ServerMessage::Cursor {
        user: e.user,
        client_id: e.client_id.clone(),
        version: e.version,
        anchor: e.anchor,
        head: e.head,
    }
}

/// How many cursors each document's rooms rebased (tests check that the
/// throttle comes before the work).
#[cfg(test)]
pub(crate) mod test_counters {
    use relay_domain::DocumentId;
    use std::collections::HashMap;
    use std::sync::Mutex;

    static REBASES: Mutex<Option<HashMap<DocumentId, u64>>> = Mutex::new(None);

    pub(crate) fn count_rebase(document: DocumentId) {
        let mut map = REBASES.lock().unwrap_or_else(|e| e.into_inner());
        *map.get_or_insert_with(HashMap::new)
            .entry(document)
            .or_default() += 1;
    }

    pub(crate) fn rebases(document: DocumentId) -> u64 {
        let map = REBASES.lock().unwrap_or_else(|e| e.into_inner());
        map.as_ref()
            .and_then(|m| m.get(&document).copied())
            .unwrap_or(0)
    }
}
