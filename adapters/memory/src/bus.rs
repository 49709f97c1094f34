//! The fan-out bus within one process.

use async_trait::async_trait;
use relay_domain::DocumentId;
use relay_ports::{BusError, BusEvent, Envelope, FanOut, Subscription};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Envelopes a document's channel holds for its slowest subscriber.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 128;
/// Events a subscription holds before its forwarding stops pulling from
/// the channel.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;

/// A [`FanOut`] for one process: fine in production for a single
/// instance, but it cannot reach other instances, so it must not be used
/// when several run side by side (they would never see each other's ops).
///
/// Each document with subscribers has a tokio broadcast channel of bounded
/// capacity; each subscription has a task forwarding from the channel into
/// its own bounded queue. A subscriber that stops reading fills its queue,
/// then the channel overwrites what it has not taken, and it gets
/// [`BusEvent::Lagged`] before the next envelope it does get. Publishing
/// never waits for a subscriber.
///
/// Cloning gives another handle to the same bus.
#[derive(Clone, Debug)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    channels: Mutex<HashMap<DocumentId, Channel>>,
    channel_capacity: usize,
    queue_capacity: usize,
    /// The subscriptions' forwarding tasks.
    tasks: TaskTracker,
}

#[derive(Debug)]
struct Channel {
    sender: broadcast::Sender<Envelope>,
    /// Live subscriptions. The channel goes when the last one is dropped,
    /// counted here rather than by `receiver_count` because an aborted
    /// forwarding task drops its receiver only later.
    subscriptions: usize,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new()
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        MemoryBus::with_capacity(DEFAULT_CHANNEL_CAPACITY, DEFAULT_QUEUE_CAPACITY)
    }

    /// A bus whose document channels hold `channel` envelopes and whose
    /// subscriptions queue `queue` events.
    ///
    /// # Panics
    ///
    /// If either is zero.
    pub fn with_capacity(channel: usize, queue: usize) -> Self {
        assert!(channel > 0 && queue > 0, "bus capacities must be positive");
        MemoryBus {
            inner: Arc::new(Inner {
                channels: Mutex::new(HashMap::new()),
                channel_capacity: channel,
                queue_capacity: queue,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// How many envelopes published to a subscriber that does not read are
    /// sure to overflow it: the channel, the queue and the one envelope
    /// its forwarding task holds, plus one.
    pub fn overflow_after(&self) -> usize {
        self.inner.channel_capacity + self.inner.queue_capacity + 2
    }
}

impl Inner {
    /// Held only for map lookups, never across an `.await`, and nothing
    /// panics while it is held: a poisoned lock is safe to keep using.
    fn channels(&self) -> MutexGuard<'_, HashMap<DocumentId, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A subscription's guard: stops its forwarding task and releases the
/// document's channel when the subscription is dropped.
struct Unsubscribe {
    /// Stops the forwarding task.
    stop: CancellationToken,
    inner: Arc<Inner>,
    document: DocumentId,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Entry::Occupied(mut channel) = self.inner.channels().entry(self.document) {
            channel.get_mut().subscriptions -= 1;
            if channel.get().subscriptions == 0 {
                channel.remove();
            }
        }
    }
}

async fn forward(mut channel: broadcast::Receiver<Envelope>, events: mpsc::Sender<BusEvent>) {
    loop {
        let event = match channel.recv().await {
            Ok(envelope) => BusEvent::Message(envelope),
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "bus subscriber lagged");
                BusEvent::Lagged
            }
            Err(RecvError::Closed) => return,
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl FanOut for MemoryBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        if let Some(channel) = self.inner.channels().get(&envelope.document) {
            // Fails only without receivers, which is no one to tell.
            let _ = channel.sender.send(envelope);
        }
        Ok(())
    }

    async fn subscribe(&self, document: DocumentId) -> Result<Subscription, BusError> {
        // Subscribed before returning: whatever is published next arrives.
        let receiver = {
            let mut channels = self.inner.channels();
            let channel = channels.entry(document).or_insert_with(|| Channel {
                sender: broadcast::channel(self.inner.channel_capacity).0,
                subscriptions: 0,
            });
            channel.subscriptions += 1;
            channel.sender.subscribe()
        };
        let (events, queue) = mpsc::channel(self.inner.queue_capacity);
        let stop = CancellationToken::new();
        self.inner.tasks.spawn(
            stop.clone()
                .run_until_cancelled_owned(forward(receiver, events)),
        );
        let guard = Unsubscribe {
            stop,
            inner: self.inner.clone(),
            document,
        };
        Ok(Subscription::new(queue, Some(Box::new(guard))))
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_domain::{ClientId, UserId};
    use relay_ports::{BusMessage, InstanceId};
    use std::time::Duration;
    use uuid::Uuid;

    fn typing(document: DocumentId, n: usize) -> Envelope {
        Envelope {
            origin: InstanceId::from_uuid(Uuid::nil()),
            document,
            message: BusMessage::Typing {
                user: UserId::new(Uuid::nil()),
                client_id: ClientId::new(format!("c{n}")).unwrap(),
                active: true,
            },
        }
    }

    #[tokio::test]
    async fn the_last_dropped_subscription_releases_the_documents_channel() {
        let bus = MemoryBus::new();
        let document = DocumentId::new(Uuid::new_v4());
        let first = bus.subscribe(document).await.unwrap();
        let second = bus.subscribe(document).await.unwrap();
        assert_eq!(bus.inner.channels()[&document].subscriptions, 2);
        drop(first);
        assert_eq!(bus.inner.channels()[&document].subscriptions, 1);
        drop(second);
        assert!(bus.inner.channels().is_empty());
    }

    /// Paused time: the timeout fires only if nothing else can run, that
    /// is if the expected envelope will never come.
    #[tokio::test(start_paused = true)]
    async fn a_lagged_subscriber_gets_lagged_then_the_envelopes_the_channel_kept() {
        let bus = MemoryBus::with_capacity(4, 2);
        let document = DocumentId::new(Uuid::new_v4());
        let mut subscription = bus.subscribe(document).await.unwrap();
        let total = bus.overflow_after() + 10;
        for n in 0..total {
            bus.publish(typing(document, n)).await.unwrap();
        }
        let last = BusEvent::Message(typing(document, total - 1));
        let mut events = Vec::new();
        while events.last() != Some(&last) {
            let next = tokio::time::timeout(Duration::from_secs(1), subscription.events.recv());
            events.push(next.await.expect("the last envelope arrives").unwrap());
        }
        // On this single-threaded runtime the forwarding task first runs
        // after every publish: it has lost all but the channel's last four.
        let mut expected = vec![BusEvent::Lagged];
        expected.extend((total - 4..total).map(|n| BusEvent::Message(typing(document, n))));
        assert_eq!(events, expected);
    }

    #[test]
    #[should_panic(expected = "bus capacities must be positive")]
    fn zero_capacity_is_refused() {
        let _ = MemoryBus::with_capacity(0, 1);
    }
}
