//! The task that owns this instance's one pub/sub connection: it
//! subscribes and releases document channels as rooms come and go, routes
//! each message to its document's subscribers only, notices a lost
//! connection (every subscription gets `Disconnected`), reconnects with
//! backoff and jitter, resubscribes and tells every subscription `Lagged`.
//!
//! A connection is lost when it closes, and also when it goes silent: a
//! SUBSCRIBE, UNSUBSCRIBE or PING (sent on this connection every
//! [`PING_EVERY`]) not answered within the call timeout. So a link that
//! drops packets without a RST is noticed within a few seconds, and no
//! call on Redis holds the task longer than the call timeout; while it has
//! no connection (connecting included) it answers every control message at
//! once.

use super::{PREFIX, Wire, channel, now_ms};
use futures::{FutureExt, StreamExt};
use rand::Rng;
use redis::aio::{PubSubSink, PubSubStream};
use relay_domain::DocumentId;
use relay_ports::{BusEvent, Envelope, InstanceId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// How often the task PINGs Redis on the pub/sub connection; an answer
/// must come within the call timeout, so a link that silently stopped
/// carrying packets is noticed within this plus the call timeout.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a new pub/sub connection may take (TCP, TLS, AUTH).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Channels per SUBSCRIBE when resubscribing after a reconnect: one round
/// trip for many documents, each bounded by the call timeout.
const RESUBSCRIBE_BATCH: usize = 256;

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

/// The pub/sub connection's sink, every call on it bounded by `wait`.
struct Link {
    sink: PubSubSink,
    wait: Duration,
}

impl Link {
    /// Subscribes `channels`; `false` if the connection failed or Redis
    /// did not confirm within `wait`.
    async fn subscribe(&mut self, channels: &[String]) -> bool {
        matches!(
            tokio::time::timeout(self.wait, self.sink.subscribe(channels)).await,
            Ok(Ok(()))
        )
    }

    /// Unsubscribes the channels of `documents`; `false` if the connection
    /// failed or Redis did not confirm within `wait`.
    async fn release(&mut self, documents: Vec<DocumentId>) -> bool {
        // UNSUBSCRIBE with no channel would release them all.
        if documents.is_empty() {
            return true;
        }
        let channels: Vec<String> = documents.into_iter().map(channel).collect();
        matches!(
            tokio::time::timeout(self.wait, self.sink.unsubscribe(&channels)).await,
            Ok(Ok(()))
        )
    }
}

/// PINGs Redis on the pub/sub connection itself every [`PING_EVERY`] and
/// returns once one is not answered within `wait` (or the connection
/// failed): the link is dead, though no RST may ever come.
async fn watchdog(mut sink: PubSubSink, wait: Duration) {
    let mut every = tokio::time::interval(PING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !matches!(
            tokio::time::timeout(wait, sink.ping::<redis::Value>()).await,
            Ok(Ok(_))
        ) {
            return;
        }
    }
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

/// Runs `until` while answering control messages as while Redis is down
/// (a new subscription starts `Disconnected` and is subscribed on the next
/// connection); `None` once the bus is gone.
async fn while_down<F: Future>(
    until: F,
    control: &mut mpsc::Receiver<Control>,
    subs: &mut Subscribers,
    tasks: &TaskTracker,
) -> Option<F::Output> {
    tokio::pin!(until);
    loop {
        tokio::select! {
            out = &mut until => return Some(out),
            c = control.recv() => match c {
                None => return None,
                Some(c) => on_control_down(subs, c, tasks),
            },
        }
    }
}

/// Owns the pub/sub connection: subscribes and unsubscribes, routes
/// messages, reconnects and resubscribes. `wait` (the call timeout) bounds
/// every SUBSCRIBE, UNSUBSCRIBE and PING on the connection.
pub(super) async fn subscriber(
    client: redis::Client,
    mut control: mpsc::Receiver<Control>,
    connected: tokio::sync::watch::Sender<bool>,
    metrics: Arc<dyn relay_ports::Metrics>,
    tasks: TaskTracker,
    wait: Duration,
) {
    let mut subs: Subscribers = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        // Down until connected and resubscribed: subscriptions are answered
        // at once meanwhile (they start disconnected).
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub());
        let Some(pubsub) = while_down(connect, &mut control, &mut subs, &tasks).await else {
            return;
        };
        let resubscribed = match pubsub {
            Ok(Ok(pubsub)) => {
                let (sink, stream) = pubsub.split();
                let mut link = Link { sink, wait };
                let channels: Vec<String> = subs.keys().map(|d| channel(*d)).collect();
                let mut ok = true;
                for batch in channels.chunks(RESUBSCRIBE_BATCH) {
                    if !link.subscribe(batch).await {
                        ok = false;
                        break;
                    }
                }
                ok.then_some((link, stream))
            }
            _ => None,
        };
        let Some((mut link, mut stream)) = resubscribed else {
            if while_down(pause(backoff), &mut control, &mut subs, &tasks)
                .await
                .is_none()
            {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        connected.send_replace(true);
        backoff = Duration::from_millis(50);
        // Whatever was published while these were not subscribed (Redis
        // was down, or they subscribed meanwhile) is in the store.
        let emptied = deliver_all(&mut subs, None, &BusEvent::Lagged);
        let lost = if link.release(emptied).await {
            match serve(
                &mut link,
                &mut stream,
                &mut control,
                &mut subs,
                &*metrics,
                &tasks,
            )
            .await
            {
                Some(why) => why,
                None => return,
            }
        } else {
            UNANSWERED
        };
        connected.send_replace(false);
        tracing::warn!(why = lost, "redis pub/sub connection lost; reconnecting");
        // The connection is gone, and with it every channel: the documents
        // left with no subscriber are not resubscribed.
        let _ = deliver_all(&mut subs, None, &BusEvent::Disconnected);
    }
}

const UNANSWERED: &str = "a SUBSCRIBE or UNSUBSCRIBE failed or was not answered in time";

/// Serves the subscriptions on a connected link: subscribes and releases
/// channels as asked and routes what arrives, until the link is lost
/// (`Some(why)`) or the bus is gone (`None`).
async fn serve(
    link: &mut Link,
    stream: &mut PubSubStream,
    control: &mut mpsc::Receiver<Control>,
    subs: &mut Subscribers,
    metrics: &dyn relay_ports::Metrics,
    tasks: &TaskTracker,
) -> Option<&'static str> {
    let watchdog = watchdog(link.sink.clone(), link.wait);
    tokio::pin!(watchdog);
    loop {
        tokio::select! {
            () = &mut watchdog => return Some("no answer to a PING in time"),
            c = control.recv() => match c {
                None => return None,
                Some(Control::Subscribe { document, id, events, done }) => {
                    let new = !subs.contains_key(&document);
                    if new && !link.subscribe(&[channel(document)]).await {
                        // Answered now; it gets `Disconnected` with the
                        // others, and is resubscribed on the reconnect.
                        subs.entry(document).or_default().push(Subscriber::new(id, events, tasks.clone()));
                        let _ = done.send(());
                        return Some(UNANSWERED);
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
                        if let Some(env) = envelope(&msg, metrics) {
                            let doc = env.document;
                            let emptied = deliver_all(subs, Some(doc), &BusEvent::Message(env));
                            if !link.release(emptied).await {
                                lost = true;
                                break;
                            }
                        }
                    }
                    let list = subs.entry(document).or_default();
                    list.push(Subscriber::new(id, events, tasks.clone()));
                    if lost {
                        let _ = done.send(());
                        return Some(UNANSWERED);
                    }
                    if done.send(()).is_err()
                        && let Some(s) = list.last_mut()
                    {
                        // `subscribe` stopped waiting (the call timeout)
                        // and returned before the channel was subscribed:
                        // what was published in between is in the store.
                        s.deliver(BusEvent::Lagged);
                    }
                }
                Some(Control::Unsubscribe { document, id }) => {
                    if let Some(list) = subs.get_mut(&document) {
                        list.retain(|s| s.id != id);
                        if list.is_empty() {
                            subs.remove(&document);
                            if !link.release(vec![document]).await {
                                return Some(UNANSWERED);
                            }
                        }
                    }
                }
            },
            m = stream.next() => match m {
                None => return Some("the connection closed"),
                Some(msg) => {
                    if let Some(env) = envelope(&msg, metrics) {
                        let document = env.document;
                        let emptied = deliver_all(subs, Some(document), &BusEvent::Message(env));
                        if !link.release(emptied).await {
                            return Some(UNANSWERED);
                        }
                    }
                }
            },
        }
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
