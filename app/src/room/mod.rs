//! A room: the one task that owns an open document on this instance.
//!
//! It holds the [`Sequencer`], the presence roster and the local sessions'
//! outbound queues, and runs the write path: dedup, rebase, append at the
//! next version (group commit: submits that arrive while an append is in
//! flight go into the next batch), on conflict load what was missed and try
//! again (bounded), and only after the append: `ack` to the submitter, `ops`
//! to the other local sessions, a publish on the bus for other instances.
//! Ops from other instances arrive on the bus; a version gap is filled from
//! the store, and the instance's head watch (`crate::heads`) wakes a room
//! the bus left behind. A room with no session closes after `ROOM_IDLE_SECS`.
//!
//! # Layout
//!
//! - this file: the room's state, its task (the command loop, timers, the
//!   bus subscription) and its lifecycle (open, idle close, supervision).
//! - `write`: the write path (submits, group commit, the append and its
//!   answers, fan-out after commit); `attempt`: one round of it, proposing
//!   and appending, and what came of it; `answer`: acks, errors and the
//!   fan-out after a commit.
//! - `catch_up`: every way a room learns ops it did not commit (memory or
//!   the store) and which it uses when.
//! - `deadlines`: the room's timers, by name, on one time base.
//! - `mailbox`: what a room is sent ([`Command`]), who a session is
//!   ([`Member`], [`SessionId`]): a leaf, so the registry and the service
//!   name a room's mail without the room.
//! - `join`: joins.
//! - `remote`: what other instances publish on the bus.
//! - `presence`: local clients' cursors, typing and departures, and who
//!   holds each client (this instance, others), reconciled with the
//!   registry; `registry_writer`: the registry calls, beside the loop.

mod answer;
mod attempt;
mod catch_up;
mod deadlines;
mod join;
mod mailbox;
mod presence;
mod registry_writer;
mod remote;
mod write;

#[cfg(test)]
pub(crate) use presence::test_counters;
use presence::{cursor_message, entry_key};
use relay_ports::Cause;
use relay_ports::Chain;

use crate::ports::Instance;
use crate::registry::{Inbox, RoomLease};
use crate::sink::Sink;
use deadlines::{Deadlines, Timer};
pub(crate) use mailbox::{Command, JoinError, Member, SessionId};
use relay_domain::CommittedOp;
use relay_domain::{
    ClientId, CursorThrottle, Document, DocumentId, Roster, Selection, Seq, Sequencer, Submission,
    Timestamp, TypingDebounce, UserId, Version,
};
use relay_ports::StoreError;
use relay_ports::bus::{BusEvent, BusMessage, Envelope, InstanceId};
use relay_ports::protocol::{CloseCode, ServerMessage};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

/// What a client is told when the store could not be used and nothing was
/// committed (the cause goes to the log, never to the client).
const STORE_UNAVAILABLE: &str = "storage unavailable: nothing was committed; retry the same submit";
/// Why a session is closed with 1013 when the store could not tell whether
/// its submit is committed (PROTOCOL.md: `unavailable` only when nothing
/// was): it reconnects and re-sends, which commits exactly once.
const UNSURE: &str =
    "the store cannot tell whether your submit is committed: reconnect and re-send it";
/// How many times a batch is retried after losing the race for a version.
const MAX_APPEND_ATTEMPTS: usize = 16;
/// Catch-up ops beyond the in-memory history are read from the store up to
/// this many; past it `joined` carries the content instead.
const MAX_CATCH_UP_FROM_STORE: usize = 10_000;
/// How many store lookups of new clients a room has in flight at once
/// (a few: more only open pool connections).
const LOOKUPS_AT_ONCE: usize = 4;
/// Opening a document reads its tail in chunks of at most this many ops...
const LOAD_CHUNK_OPS: usize = 1000;
/// ...and this many bytes of them (at least one op, however large).
const LOAD_CHUNK_BYTES: usize = 8 << 20;
/// How long opening a document waits for the registry's listing (beside
/// the load) before it lists again beside the loop.
const OPEN_LIST_WAIT: Duration = Duration::from_millis(500);
/// How many commands are taken from the mailbox per turn (the group-commit
/// window is whatever arrived during the previous append).
const MAILBOX_TURN: usize = 512;

struct Local {
    member: Member,
    sink: Sink,
    /// The submit waiting for its ack (one per connection).
    awaiting: Option<(Seq, Instant)>,
    /// The last submit answered `ack` as a duplicate (already committed).
    duplicate_acked: Option<Seq>,
    /// Holds the latest cursor as received (version and positions at that
    /// version) until its turn: it is rebased only when it is sent.
    cursor: CursorThrottle<(Version, Option<Selection>)>,
    typing: TypingDebounce,
}

struct Pending {
    session: SessionId,
    submission: Submission,
    received: Instant,
    /// Arrived while the session's submit with this seq was still in the
    /// batch: admitted only if that one turns out to be a duplicate (see
    /// [`Room::admit_deferred`]).
    after: Option<Seq>,
}

pub(crate) struct Room {
    document: DocumentId,
    instance: Arc<Instance>,
    sequencer: Sequencer,
    roster: Roster,
    sessions: HashMap<SessionId, Local>,
    last_snapshot: Version,
    stopping: bool,
    /// The room's state is not to be saved (see [`Room::reopen`]).
    discarded: bool,
    /// The room's timers (presence refresh, store poll, settle check,
    /// idle close).
    deadlines: Deadlines,
    /// Envelopes on their way to the bus, published in order by the
    /// room's publisher task, so a slow or unreachable bus never holds up
    /// the room (a full queue drops: other instances find the gap).
    publisher: Publisher,
    /// The content as JSON at a version (the current one, or stale and
    /// replaced at the next join): shared by every `joined` at it.
    content_cache: Option<(Version, Arc<str>)>,
    /// The recent ops' lengths as JSON (for measuring a join's catch-up).
    op_lens: catch_up::OpLengths,
    /// How many local sessions each client (user, client id) has here: its
    /// presence ends with its last one.
    local_clients: HashMap<(UserId, ClientId), usize>,
    /// The other instances that hold each remote client, and when this room
    /// last heard of each (a bus message or the registry): a client leaves
    /// when no instance holds it any more.
    holders: HashMap<(UserId, ClientId), HashMap<InstanceId, Instant>>,
    /// The registry calls, made beside the loop in order.
    registry: registry_writer::RegistryWriter,
}

/// Envelopes a room's publisher holds before it drops new ones...
const PUBLISH_QUEUE: usize = 1024;
/// ...and the bytes they may hold (their ops in memory, see
/// [`envelope_bytes`]), the one being published included: 16 MiB, some
/// four ops of the largest size or thousands of ordinary ones. Past
/// either bound new envelopes are dropped; other instances find the gap.
const PUBLISH_QUEUE_BYTES: usize = 16 << 20;

/// What an envelope holds in memory, for [`PUBLISH_QUEUE_BYTES`].
fn envelope_bytes(message: &BusMessage) -> usize {
    let entry = |e: &relay_domain::PresenceEntry| {
        e.client_id.as_str().len() + e.name.as_ref().map_or(0, String::len)
    };
    std::mem::size_of::<Envelope>()
        + match message {
            BusMessage::Ops { ops, .. } => ops.iter().map(CommittedOp::memory_bytes).sum(),
            BusMessage::Joined { entry: e } | BusMessage::Cursor { entry: e } => entry(e),
            BusMessage::Left { departed } => departed.client_id.as_str().len(),
            BusMessage::Typing { client_id, .. } => client_id.as_str().len(),
        }
}

/// A room's queue to the bus: bounded in envelopes and in bytes, drained
/// in order by its own task, so a slow or unreachable bus never holds up
/// the room.
struct Publisher {
    tx: mpsc::Sender<(Envelope, tokio::sync::OwnedSemaphorePermit)>,
    bytes: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl Publisher {
    /// Publishes envelopes one after another, in order, until the room is
    /// gone and the queue is empty.
    fn spawn(
        bus: Arc<dyn relay_ports::FanOut>,
        tasks: &tokio_util::task::TaskTracker,
        document: DocumentId,
        (envelopes, bytes): (usize, usize),
    ) -> Publisher {
        let (tx, mut rx) =
            mpsc::channel::<(Envelope, tokio::sync::OwnedSemaphorePermit)>(envelopes.max(1));
        let limit = bytes.clamp(1, u32::MAX as usize);
        tasks.spawn(async move {
            while let Some((env, _bytes)) = rx.recv().await {
                if let Err(e) = bus.publish(env).await {
                    debug!(%document, error = %Chain(&e), "bus publish failed; other instances will catch up from the store");
                }
            }
        });
        Publisher {
            tx,
            bytes: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    /// Queues an envelope; `false` if the queue is full (in envelopes or
    /// bytes) and it was dropped.
    fn try_send(&self, env: Envelope) -> bool {
        let weight = envelope_bytes(&env.message).min(self.limit);
        let Ok(bytes) = self
            .bytes
            .clone()
            .try_acquire_many_owned(u32::try_from(weight).unwrap_or(u32::MAX))
        else {
            return false;
        };
        self.tx.try_send((env, bytes)).is_ok()
    }
}

/// Starts a room on the service's task tracker, supervised: a room that
/// panics has its sessions closed with 1011 (see `Drop for Room`), is
/// logged with its cause and forgotten, so the next join opens the document
/// afresh from the store.
pub(crate) fn spawn(
    document: DocumentId,
    instance: Arc<Instance>,
    mailbox: Inbox<Command>,
    lease: RoomLease<Command>,
) {
    use futures::FutureExt;
    let tasks = instance.tasks.clone();
    tasks.spawn(async move {
        instance.ports.metrics.document_opened();
        let room = std::panic::AssertUnwindSafe(run(document, instance.clone(), mailbox, lease));
        let ended = room.catch_unwind().await;
        instance.ports.metrics.document_closed();
        if let Err(panic) = ended {
            instance.ports.metrics.room_failed();
            let cause = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            // The room's lease was dropped with it: the next join starts a
            // new room.
            tracing::error!(%document, %cause, "room failed: its sessions were closed with 1011; the next join reopens the document from the store");
        }
    });
}

/// Runs a room until it has been idle long enough, then releases its
/// registry entry.
async fn run(
    document: DocumentId,
    instance: Arc<Instance>,
    mut mailbox: Inbox<Command>,
    mut lease: RoomLease<Command>,
) {
    // The subscription and the load go on together (a join waits for the
    // slower of the two, not for both), then the room reads the store once
    // more: whatever another instance committed before the subscription
    // took effect is found then, what it commits after arrives on the bus,
    // and what the bus loses the head watch finds. Bounded: a bus that does
    // not answer leaves the room reading the store.
    let wait = instance.config.bus.redis.call_timeout + Duration::from_secs(1);
    // Who is here on other instances, so the first `joined` lists them:
    // asked beside the rest, and waited for only briefly (a stalled
    // registry is listed again beside the loop instead).
    let (subscribed, opened, listed_at_open) = tokio::join!(
        tokio::time::timeout(wait, instance.ports.bus.subscribe(document)),
        Room::open(document, instance.clone()),
        tokio::time::timeout(OPEN_LIST_WAIT, instance.ports.presence.list(document)),
    );
    let (mut room, mut listed) = match opened {
        Ok(room) => room,
        Err(e) => {
            warn!(%document, error = %Chain(&e), "cannot open document");
            lease.release();
            // Answer whoever is waiting, then stop.
            mailbox.close();
            while let Some(letter) = mailbox.recv().await {
                if let Command::Join { reply, .. } = letter.open() {
                    let _ = reply.send(Err(JoinError::Unavailable(e.clone())));
                }
            }
            return;
        }
    };
    let mut bus = match subscribed {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            warn!(%document, error = %Chain(&e), "bus subscription failed; this room reads other instances' ops from the store");
            room.poll_store_from_now();
            None
        }
        Err(_) => {
            warn!(%document, "no bus subscription in time; this room reads other instances' ops from the store");
            room.poll_store_from_now();
            None
        }
    };
    match listed_at_open {
        Ok(Ok(held)) => room.reconcile(held),
        _ => room.registry.refresh(Vec::new()),
    }
    room.catch_up_logged().await;
    if room.stopping {
        // The store contradicted what was just loaded: whoever waits to
        // join finds the mailbox closed and starts a fresh room.
        lease.release();
        return;
    }
    let watch = instance.heads.register(document, room.sequencer.version());
    loop {
        let deadline = room.next_deadline();
        let mut batch = Vec::new();
        tokio::select! {
            cmd = mailbox.recv() => {
                let Some(letter) = cmd else { break };
                room.handle(letter.open(), &mut batch).await;
                // Everything that queued up while we were busy joins this turn.
                for _ in 0..MAILBOX_TURN {
                    match mailbox.try_recv() {
                        Ok(letter) => room.handle(letter.open(), &mut batch).await,
                        Err(_) => break,
                    }
                }
            }
            event = recv_bus(&mut bus) => {
                match event {
                    Some(BusEvent::Message(env)) => {
                        if matches!(env.message, BusMessage::Ops { .. }) {
                            watch.heard();
                        }
                        room.remote(env).await;
                    }
                    Some(BusEvent::Lagged) => {
                        // The bus is back (or lost messages): what it
                        // missed is in the store.
                        room.deadlines.clear(Timer::StorePoll);
                        room.catch_up_logged().await;
                    }
                    Some(BusEvent::Disconnected) => room.poll_store_from_now(),
                    None => {
                        warn!(%document, "bus subscription ended; reading the store for other instances' ops");
                        bus = None;
                        room.poll_store_from_now();
                    }
                }
            }
            () = watch.behind() => {
                // The store's head passed this room: something the bus did
                // not bring.
                room.catch_up_logged().await;
            }
            Some(held) = listed.recv() => room.reconcile(held),
            _ = sleep_until(deadline) => {}
        }
        room.commit_batches(batch).await;
        room.fire_timers().await;
        watch.holds(room.sequencer.version());
        if room.stopping {
            break;
        }
        if room.idle_expired() {
            // Close only if nothing arrived meanwhile, under the registry's
            // lock so a concurrent join finds a closed mailbox and starts a
            // new room instead.
            if lease.release_if_idle(&mailbox) {
                room.close().await;
                return;
            }
        }
    }
    room.close().await;
    lease.release();
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
    /// Opens the document: its latest snapshot, then the ops after it in
    /// chunks bounded in ops and bytes ([`LOAD_CHUNK_OPS`],
    /// [`LOAD_CHUNK_BYTES`]: each read is short, so a document with a long
    /// tail can always be opened), and the room's registry task. A tail longer than SNAPSHOT_EVERY is
    /// snapshotted at once, so the next open reads less.
    async fn open(
        document: DocumentId,
        instance: Arc<Instance>,
    ) -> Result<(Room, registry_writer::Listed), StoreError> {
        let store = &instance.ports.store;
        let snapshot = store.snapshot(document).await?;
        let (doc, last_snapshot) = match &snapshot {
            Some(s) => (
                Document::from_content(&s.content, s.version)
                    .map_err(|e| StoreError::Corrupt(Cause::new(e)))?,
                s.version,
            ),
            None => (Document::new(), Version::ZERO),
        };
        drop(snapshot);
        let mut sequencer = Sequencer::new(doc, instance.config.limits.sequencer());
        let now = instance.ports.clock.now();
        loop {
            let after = sequencer.version();
            let chunk = store
                .read_within(document, after, LOAD_CHUNK_OPS, LOAD_CHUNK_BYTES)
                .await?;
            if !catch_up::contiguous_from(after, chunk.len(), &chunk) {
                return Err(StoreError::Corrupt(Cause::msg(format!(
                    "the ops after {after} are not consecutive"
                ))));
            }
            if chunk.is_empty() {
                break;
            }
            for op in chunk {
                let v = op.version;
                sequencer
                    .apply_remote(op, now)
                    .map_err(|e| StoreError::Corrupt(Cause::msg(format!("op {v}: {e}"))))?;
            }
        }
        // History is kept by the log's time, the same on every instance: ops
        // committed longer than OPERATION_HISTORY_TTL ago are not history
        // here either (those loaded are otherwise as old as this room).
        let ttl = instance.config.limits.operation_history_ttl;
        let cutoff = Timestamp::from_millis(
            now.as_millis()
                .saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        );
        match store.first_since(document, cutoff).await? {
            Some(first) => sequencer.forget_before(first),
            None => sequencer.forget_before(Version::MAX),
        }
        debug!(%document, version = %sequencer.version(), "room opened");
        let mut deadlines = Deadlines::default();
        deadlines.set_in(Timer::PresenceRefresh, instance.presence_refresh());
        deadlines.set_in(Timer::Idle, instance.config.limits.room_idle);
        let (registry, listed) = registry_writer::RegistryWriter::spawn(
            instance.ports.presence.clone(),
            &instance.tasks,
            document,
            instance.id,
            instance.presence_ttl(),
        );
        let mut room = Room {
            document,
            deadlines,
            publisher: Publisher::spawn(
                instance.ports.bus.clone(),
                &instance.tasks,
                document,
                (PUBLISH_QUEUE, PUBLISH_QUEUE_BYTES),
            ),
            instance,
            sequencer,
            roster: Roster::new(),
            sessions: HashMap::new(),
            last_snapshot,
            stopping: false,
            discarded: false,
            content_cache: None,
            op_lens: Default::default(),
            local_clients: HashMap::new(),
            holders: HashMap::new(),
            registry,
        };
        // A long tail (snapshots failed, or the room that wrote them died):
        // snapshot now rather than read it all again next time.
        room.maybe_snapshot(false).await;
        Ok((room, listed))
    }

    fn now(&self) -> Timestamp {
        self.instance.ports.clock.now()
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
            Command::Shutdown { min_ms, spread_ms } => {
                use rand::Rng;
                let mut rng = rand::rng();
                for s in self.sessions.values() {
                    let reconnect_in_ms = min_ms.saturating_add(rng.random_range(0..=spread_ms));
                    s.sink
                        .send(ServerMessage::Shutdown { reconnect_in_ms }.encode().into());
                }
            }
            Command::Stop => self.stopping = true,
            Command::CloseAll => {
                let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
                for id in ids {
                    if let Some(s) = self.sessions.get(&id) {
                        s.sink
                            .order_close(CloseCode::GoingAway, "server shutting down");
                    }
                    self.leave(id, "server shutting down").await;
                }
            }
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
            origin: self.instance.id,
            document: self.document,
            message,
        };
        if !self.publisher.try_send(env) {
            debug!(document = %self.document, "bus publish queue full; other instances will catch up from the store");
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        // The throttles' deadlines are clock timestamps: converted here,
        // once, to the room's time base.
        let (now_ts, now) = (self.now(), Instant::now());
        let to_instant = |t: Timestamp| {
            now + Duration::from_millis(t.as_millis().saturating_sub(now_ts.as_millis()))
        };
        let throttles = self.sessions.values().flat_map(|s| {
            [s.cursor.deadline(), s.typing.deadline()]
                .into_iter()
                .flatten()
                .map(to_instant)
        });
        self.deadlines.next(throttles)
    }

    /// Reads the store every `BUS_DOWN_POLL_MS` until the bus is back.
    fn poll_store_from_now(&mut self) {
        self.deadlines
            .set_in_unless_set(Timer::StorePoll, self.instance.config.bus.down_poll);
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
        if self.deadlines.due(Timer::PresenceRefresh) {
            self.deadlines
                .set_in(Timer::PresenceRefresh, self.instance.presence_refresh());
            self.refresh_presence();
        }
        if self.deadlines.due(Timer::SettleCheck) {
            self.deadlines.clear(Timer::SettleCheck);
            self.catch_up_logged().await;
        }
        if self.deadlines.due(Timer::StorePoll) {
            self.deadlines
                .set_in(Timer::StorePoll, self.instance.config.bus.down_poll);
            self.catch_up_logged().await;
        }
    }

    /// Gives up this room's view of the document (the store disagrees with
    /// it): every session is closed with 1013 and the room stops without a
    /// snapshot, so the next join opens the document afresh from the store.
    fn reopen(&mut self) {
        for s in self.sessions.values() {
            s.sink.order_close(
                CloseCode::TryAgainLater,
                "the document was reopened from the store: reconnect",
            );
        }
        self.discarded = true;
        self.stopping = true;
    }

    fn idle_expired(&self) -> bool {
        self.sessions.is_empty() && self.deadlines.due(Timer::Idle)
    }

    async fn close(&mut self) {
        if !self.discarded {
            self.maybe_snapshot(true).await;
        }
        debug!(document = %self.document, version = %self.sequencer.version(), "room closed");
    }
}

/// A room that unwinds (a bug: a panic in its task) closes its sessions
/// with 1011 on the way out, so no client waits on a room that is gone; they
/// reconnect and resume on a fresh room.
impl Drop for Room {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in self.sessions.values() {
                s.sink
                    .order_close(CloseCode::Internal, "internal error: reconnect to resume");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_domain::{Delta, Seq};
    use relay_ports::{BusError, FanOut, InstanceId, Subscription};

    /// A bus whose publishes never finish.
    struct StalledBus;

    #[async_trait::async_trait]
    impl FanOut for StalledBus {
        async fn publish(&self, _envelope: Envelope) -> Result<(), BusError> {
            std::future::pending().await
        }
        async fn subscribe(&self, _document: DocumentId) -> Result<Subscription, BusError> {
            std::future::pending().await
        }
        async fn ping(&self) -> Result<(), BusError> {
            Ok(())
        }
    }

    fn ops_of(bytes: usize, version: u32) -> Envelope {
        let mut delta = Delta::new();
        delta.insert(&"x".repeat(bytes));
        Envelope {
            origin: InstanceId::new_v4(),
            document: DocumentId::new(uuid::Uuid::nil()),
            message: BusMessage::Ops {
                ops: vec![CommittedOp {
                    version: Version::from(version),
                    user: UserId::new(uuid::Uuid::nil()),
                    client_id: ClientId::new("tab").unwrap(),
                    seq: Seq::from(version),
                    delta,
                }],
                prev: None,
            },
        }
    }

    #[tokio::test]
    async fn the_publish_queue_is_bounded_in_bytes_as_well_as_envelopes() {
        const BYTES: usize = 64 << 10;
        let tasks = tokio_util::task::TaskTracker::new();
        let publisher = Publisher::spawn(
            Arc::new(StalledBus),
            &tasks,
            DocumentId::new(uuid::Uuid::nil()),
            (1024, BYTES),
        );
        let weight = envelope_bytes(&ops_of(4000, 1).message);
        assert!(weight >= 4000);
        let mut accepted = 0;
        for v in 1..=100 {
            if publisher.try_send(ops_of(4000, v)) {
                accepted += 1;
            }
        }
        // The one being published holds its bytes too.
        assert_eq!(accepted, BYTES / weight, "as many as fit {BYTES} bytes");
        assert!(accepted < 100, "not bounded by the count alone");
        tasks.close();
    }
}
