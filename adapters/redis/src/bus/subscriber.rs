//! The task that owns this instance's one pub/sub connection: it
//! subscribes and releases document channels as rooms come and go, routes
//! each message to its document's subscribers only, notices a dropped
//! connection (every subscription gets `Disconnected`), reconnects with
//! backoff and jitter, resubscribes and tells every subscription `Lagged`.

use super::{PREFIX, Wire, channel, now_ms};
use futures::{FutureExt, StreamExt};
use rand::Rng;
use relay_domain::DocumentId;
use relay_ports::{BusEvent, Envelope, InstanceId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// What the bus asks of the subscriber task.
pub(super) enum Control {
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
pub(super) async fn subscriber(
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
