//! The fan-out bus on Redis pub/sub.

use super::Commands;
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use relay_domain::{CommittedOp, DocumentId, Version};
use relay_ports::Cause;
use relay_ports::{BusError, BusEvent, BusMessage, Envelope, FanOut, InstanceId, Subscription};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// A [`FanOut`] shared by every instance through Redis.
///
/// Each open document is one Redis channel, `relay:doc:<uuid>`, subscribed
/// on this instance's single pub/sub connection while a room holds a
/// subscription and released when the last one is dropped. Publishing is a
/// `PUBLISH` of the envelope as JSON (its ops carry their versions, and the
/// envelope its origin instance).
///
/// The pub/sub connection is owned by one task. When it drops (a Redis
/// restart, a network cut), every subscription gets
/// [`BusEvent::Disconnected`] - its room then polls the store - and the task
/// reconnects with exponential backoff and jitter, resubscribes every open
/// document and sends each subscription [`BusEvent::Lagged`], so what was
/// published meanwhile is read from the store. A subscription whose queue is
/// full loses messages and gets `Lagged` before the next one it receives.
/// Nothing here is the source of truth.
///
/// The ops of each document are also kept, by version, in a sorted set
/// `relay:ops:<uuid>` (written in the publish's transaction; at most
/// `history_ops`, none over `history_op_bytes`, expiring `history_ttl`
/// after the last publish), so a room that sees a gap fills it from
/// [`FanOut::recent`] before going to PostgreSQL.
#[derive(Clone)]
pub struct RedisBus {
    commands: Commands,
    control: mpsc::Sender<Control>,
    connected: tokio::sync::watch::Receiver<bool>,
    queue: usize,
    next_id: Arc<AtomicU64>,
    history: History,
    /// Stops the subscriber task (and its helpers, on one tracker) when
    /// the last clone of the bus is dropped.
    _stop: Arc<DropGuard>,
    /// Not read on publish; kept so the bus holds what its task records to.
    #[allow(dead_code)]
    metrics: Arc<dyn relay_ports::Metrics>,
}

/// What the bus keeps of each document's recent ops.
#[derive(Clone, Copy, Debug)]
struct History {
    ops: usize,
    op_bytes: usize,
    ttl_ms: u64,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
}

enum Control {
    Subscribe {
        document: DocumentId,
        id: u64,
        events: mpsc::Sender<BusEvent>,
        done: oneshot::Sender<()>,
    },
    Unsubscribe {
        document: DocumentId,
        id: u64,
    },
}

/// An envelope on the wire.
#[derive(Serialize, Deserialize)]
struct Wire {
    origin: Uuid,
    document: DocumentId,
    message: BusMessage,
    /// When it was published, milliseconds since the Unix epoch (the
    /// publisher's wall clock): for `materi_bus_lag_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent_at_ms: Option<u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

const PREFIX: &str = "relay:doc:";

fn channel(document: DocumentId) -> String {
    format!("{PREFIX}{document}")
}

fn history_key(document: DocumentId) -> String {
    format!("relay:ops:{document}")
}

async fn query<T: redis::FromRedisValue>(
    commands: &Commands,
    pipe: &redis::Pipeline,
) -> Result<T, BusError> {
    let mut conn = commands.get();
    match tokio::time::timeout(commands.call_timeout, pipe.query_async::<T>(&mut conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BusError::Unavailable(Cause::new(e))),
        Err(_) => Err(BusError::Unavailable(Cause::msg(
            "redis did not answer in time",
        ))),
    }
}

impl RedisBus {
    pub(super) fn start(
        client: redis::Client,
        commands: Commands,
        settings: &super::RedisSettings,
        metrics: Arc<dyn relay_ports::Metrics>,
    ) -> RedisBus {
        let (control, rx) = mpsc::channel(1024);
        let (up, connected) = tokio::sync::watch::channel(false);
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        tasks.spawn(stop.clone().run_until_cancelled_owned(subscriber(
            client,
            rx,
            up,
            metrics.clone(),
            tasks.clone(),
        )));
        RedisBus {
            _stop: Arc::new(stop.drop_guard()),
            metrics,
            commands,
            control,
            connected,
            queue: settings.queue.max(1),
            next_id: Default::default(),
            history: History {
                ops: settings.history_ops,
                op_bytes: settings.history_op_bytes,
                ttl_ms: u64::try_from(settings.history_ttl.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }

    /// Waits (up to `wait`) for the pub/sub connection to be up.
    pub(super) async fn connected_within(&self, wait: Duration) -> bool {
        let mut connected = self.connected.clone();
        tokio::time::timeout(wait, connected.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Releases a subscription when it is dropped.
struct Release {
    control: mpsc::Sender<Control>,
    document: DocumentId,
    id: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        // If the control queue is full the subscriber task finds the
        // closed queue later and forgets it then.
        let _ = self.control.try_send(Control::Unsubscribe {
            document: self.document,
            id: self.id,
        });
    }
}

#[async_trait]
impl FanOut for RedisBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let document = envelope.document;
        let mut pipe = redis::pipe();
        // Ops are kept (by version) in the same transaction as the publish,
        // so a subscriber that sees a message finds every op before it kept
        // too (unless too large or trimmed).
        if let BusMessage::Ops { ops } = &envelope.message
            && self.history.ops > 0
        {
            let key = history_key(document);
            pipe.atomic();
            for op in ops {
                let json =
                    serde_json::to_string(op).map_err(|e| BusError::Unavailable(Cause::new(e)))?;
                if json.len() <= self.history.op_bytes {
                    pipe.cmd("ZADD")
                        .arg(&key)
                        .arg(op.version.get())
                        .arg(json)
                        .ignore();
                }
            }
            let keep = i64::try_from(self.history.ops).unwrap_or(i64::MAX);
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(-keep - 1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(self.history.ttl_ms)
                .ignore();
        }
        let payload = serde_json::to_string(&Wire {
            origin: *envelope.origin.as_uuid(),
            document,
            message: envelope.message,
            sent_at_ms: Some(now_ms()),
        })
        .map_err(|e| BusError::Unavailable(Cause::new(e)))?;
        pipe.cmd("PUBLISH").arg(channel(document)).arg(payload);
        query::<(i64,)>(&self.commands, &pipe).await.map(|_| ())
    }

    async fn recent(
        &self,
        document: DocumentId,
        after: Version,
        through: Version,
    ) -> Result<Option<Vec<CommittedOp>>, BusError> {
        if through <= after {
            return Ok(Some(Vec::new()));
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE")
            .arg(history_key(document))
            .arg(after.get().saturating_add(1))
            .arg(through.get())
            .arg("BYSCORE");
        let (kept,): (Vec<String>,) = query(&self.commands, &pipe).await?;
        let mut ops = Vec::with_capacity(kept.len());
        let mut expected = after.next();
        for json in kept {
            let Ok(op) = serde_json::from_str::<CommittedOp>(&json) else {
                return Ok(None);
            };
            // The same version twice (a re-publish) is the same op.
            if ops
                .last()
                .is_some_and(|o: &CommittedOp| o.version == op.version)
            {
                continue;
            }
            if Some(op.version) != expected {
                return Ok(None);
            }
            expected = op.version.next();
            ops.push(op);
        }
        Ok((ops.last().map(|o| o.version) == Some(through)).then_some(ops))
    }

    async fn subscribe(&self, document: DocumentId) -> Result<Subscription, BusError> {
        let (events, rx) = mpsc::channel(self.queue);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, subscribed) = oneshot::channel();
        self.control
            .send(Control::Subscribe {
                document,
                id,
                events,
                done,
            })
            .await
            .map_err(|_| BusError::Unavailable(Cause::msg("the subscriber task stopped")))?;
        // Subscribed once Redis confirmed it, so nothing published after
        // this returns is missed; while Redis is down the subscription is
        // made on reconnect (and starts with `Disconnected`).
        let _ = tokio::time::timeout(self.commands.call_timeout, subscribed).await;
        let release = Release {
            control: self.control.clone(),
            document,
            id,
        };
        Ok(Subscription::new(rx, Some(Box::new(release))))
    }

    async fn ping(&self) -> Result<(), BusError> {
        if !*self.connected.borrow() {
            return Err(BusError::Unavailable(Cause::msg(
                "the pub/sub connection is down",
            )));
        }
        let mut conn = self.commands.get();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.commands.call_timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(Cause::new(e))),
            Err(_) => Err(BusError::Unavailable(Cause::msg(
                "redis did not answer in time",
            ))),
        }
    }
}

/// One subscription as the subscriber task holds it.
struct Subscriber {
    id: u64,
    events: mpsc::Sender<BusEvent>,
    /// Where the wait to queue `Lagged` runs.
    tasks: TaskTracker,
    /// Its queue overflowed and `Lagged` waits for room in it: until it is
    /// queued, later events are dropped (they are in the store, which the
    /// room reads when it gets `Lagged`).
    lagging: Arc<AtomicBool>,
}

impl Subscriber {
    fn new(id: u64, events: mpsc::Sender<BusEvent>, tasks: TaskTracker) -> Self {
        Subscriber {
            id,
            events,
            tasks,
            lagging: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Delivers without waiting; `false` once the subscription is gone.
    fn deliver(&mut self, event: BusEvent) -> bool {
        use mpsc::error::TrySendError;
        if self.events.is_closed() {
            return false;
        }
        if self.lagging.load(Ordering::Acquire) {
            return true;
        }
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                // Told as soon as it reads again, even if nothing more is
                // published.
                self.lagging.store(true, Ordering::Release);
                let (events, lagging) = (self.events.clone(), self.lagging.clone());
                self.tasks.spawn(async move {
                    let _ = events.send(BusEvent::Lagged).await;
                    lagging.store(false, Ordering::Release);
                });
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

type Subscribers = HashMap<DocumentId, Vec<Subscriber>>;

/// Delivers `event` to the subscribers of `document` (of every document
/// when `None`), forgetting those that are gone; returns the documents left
/// with none, whose channels are to be released.
#[must_use]
fn deliver_all(
    subs: &mut Subscribers,
    document: Option<DocumentId>,
    event: &BusEvent,
) -> Vec<DocumentId> {
    let mut emptied = Vec::new();
    let mut deliver = |doc: DocumentId, list: &mut Vec<Subscriber>| {
        list.retain_mut(|s| s.deliver(event.clone()));
        if list.is_empty() {
            emptied.push(doc);
        }
    };
    match document {
        // One document's message: only its subscribers, not a walk over
        // every open document.
        Some(doc) => {
            if let Some(list) = subs.get_mut(&doc) {
                deliver(doc, list);
            }
        }
        None => {
            for (doc, list) in subs.iter_mut() {
                deliver(*doc, list);
            }
        }
    }
    for doc in &emptied {
        subs.remove(doc);
    }
    emptied
}

/// Unsubscribes the channels of `documents`; `false` if the connection
/// failed.
async fn release(sink: &mut redis::aio::PubSubSink, documents: Vec<DocumentId>) -> bool {
    for document in documents {
        if sink.unsubscribe(channel(document)).await.is_err() {
            return false;
        }
    }
    true
}

/// The envelope in a pub/sub message, if it is one of ours.
fn envelope(msg: &redis::Msg, metrics: &dyn relay_ports::Metrics) -> Option<Envelope> {
    let document = msg.get_channel_name().strip_prefix(PREFIX)?;
    let wire: Wire = serde_json::from_slice(msg.get_payload_bytes()).ok()?;
    if wire.document.to_string() != document {
        return None;
    }
    if let Some(sent) = wire.sent_at_ms {
        // This instance's own messages come back too and are counted:
        // the same path through Redis.
        metrics.bus_lag(now_ms().saturating_sub(sent) as f64 / 1000.0);
    }
    Some(Envelope {
        origin: InstanceId::from_uuid(wire.origin),
        document: wire.document,
        message: wire.message,
    })
}

/// Waits `base` plus up to half of it again, so instances that lost Redis
/// together do not all reconnect in the same instant.
async fn pause(base: Duration) {
    let jitter = rand::rng().random_range(0.0..0.5);
    tokio::time::sleep(base.mul_f64(1.0 + jitter)).await;
}

/// Owns the pub/sub connection: subscribes and unsubscribes, routes
/// messages, reconnects and resubscribes.
async fn subscriber(
    client: redis::Client,
    mut control: mpsc::Receiver<Control>,
    connected: tokio::sync::watch::Sender<bool>,
    metrics: Arc<dyn relay_ports::Metrics>,
    tasks: TaskTracker,
) {
    let mut subs: Subscribers = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = pubsub else {
            // Down: answer subscriptions at once (they start disconnected)
            // while waiting to try again.
            let wait = pause(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    c = control.recv() => match c {
                        None => return,
                        Some(c) => on_control_down(&mut subs, c, &tasks),
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut ok = true;
        for document in subs.keys() {
            if sink.subscribe(channel(*document)).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            pause(backoff).await;
            continue;
        }
        connected.send_replace(true);
        backoff = Duration::from_millis(50);
        // Whatever was published while these were not subscribed (Redis
        // was down, or they subscribed meanwhile) is in the store.
        let emptied = deliver_all(&mut subs, None, &BusEvent::Lagged);
        if !release(&mut sink, emptied).await {
            connected.send_replace(false);
            continue;
        }
        loop {
            tokio::select! {
                c = control.recv() => match c {
                    None => return,
                    Some(Control::Subscribe { document, id, events, done }) => {
                        let new = !subs.contains_key(&document);
                        if new && sink.subscribe(channel(document)).await.is_err() {
                            // Answered after the reconnect resubscribes it.
                            subs.entry(document).or_default().push(Subscriber::new(id, events, tasks.clone()));
                            let _ = done.send(());
                            break;
                        }
                        // What Redis sent before confirming (or, on a channel
                        // already subscribed, before now) was published
                        // before this subscription: it is already in the
                        // stream's buffer, so route it first, to the
                        // subscribers there were. A channel whose last
                        // subscriber just left may still carry messages
                        // published before this subscribe.
                        let mut lost = false;
                        while let Some(m) = stream.next().now_or_never() {
                            let Some(msg) = m else {
                                lost = true;
                                break;
                            };
                            if let Some(env) = envelope(&msg, &*metrics) {
                                let doc = env.document;
                                let emptied = deliver_all(&mut subs, Some(doc), &BusEvent::Message(env));
                                if !release(&mut sink, emptied).await {
                                    lost = true;
                                    break;
                                }
                            }
                        }
                        subs.entry(document).or_default().push(Subscriber::new(id, events, tasks.clone()));
                        let _ = done.send(());
                        if lost {
                            break;
                        }
                    }
                    Some(Control::Unsubscribe { document, id }) => {
                        if let Some(list) = subs.get_mut(&document) {
                            list.retain(|s| s.id != id);
                            if list.is_empty() {
                                subs.remove(&document);
                                if !release(&mut sink, vec![document]).await {
                                    break;
                                }
                            }
                        }
                    }
                },
                m = stream.next() => match m {
                    None => break,
                    Some(msg) => {
                        if let Some(env) = envelope(&msg, &*metrics) {
                            let document = env.document;
                            let emptied = deliver_all(&mut subs, Some(document), &BusEvent::Message(env));
                            if !release(&mut sink, emptied).await {
                                break;
                            }
                        }
                    }
                },
            }
        }
        connected.send_replace(false);
        tracing::warn!("redis pub/sub connection lost; reconnecting");
        // The connection is gone, and with it every channel: the documents
        // left with no subscriber are not resubscribed.
        let _ = deliver_all(&mut subs, None, &BusEvent::Disconnected);
    }
}

/// A control message while Redis is down.
fn on_control_down(subs: &mut Subscribers, c: Control, tasks: &TaskTracker) {
    match c {
        Control::Subscribe {
            document,
            id,
            events,
            done,
        } => {
            let mut s = Subscriber::new(id, events, tasks.clone());
            s.deliver(BusEvent::Disconnected);
            subs.entry(document).or_default().push(s);
            let _ = done.send(());
        }
        Control::Unsubscribe { document, id } => {
            if let Some(list) = subs.get_mut(&document) {
                list.retain(|s| s.id != id);
                if list.is_empty() {
                    subs.remove(&document);
                }
            }
        }
    }
}
