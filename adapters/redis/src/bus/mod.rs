//! The fan-out bus on Redis pub/sub: [`RedisBus`] publishes and hands out
//! subscriptions; `subscriber` is the task
//! that owns the pub/sub connection, routes what arrives and PINGs Redis on
//! that connection so a silent link counts as lost within seconds.

mod subscriber;

use super::Commands;
use async_trait::async_trait;
use relay_domain::DocumentId;
use relay_ports::Cause;
use relay_ports::{BusError, BusMessage, Envelope, FanOut, Subscription};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use subscriber::{Control, subscriber};
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
/// The pub/sub connection is owned by one task. When it is lost (a Redis
/// restart, a network cut, or a link that silently stopped carrying
/// packets: a PING sent on it every second, or a SUBSCRIBE or UNSUBSCRIBE,
/// not answered within the call timeout), every subscription gets
/// [`relay_ports::BusEvent::Disconnected`] - its room then polls the store -
/// and the task reconnects with exponential backoff and jitter,
/// resubscribes every open document and sends each subscription
/// [`relay_ports::BusEvent::Lagged`], so what was published meanwhile is
/// read from the store. The connection also has TCP keepalive and (Linux) a
/// TCP user timeout of a few seconds. A subscription whose queue is full
/// loses messages and gets `Lagged` before the next one it receives.
/// Nothing here is the source of truth.
///
/// [`FanOut::subscribe`] returns within the call timeout: confirmed by
/// Redis; or, while the connection is down, at once, starting with
/// `Disconnected`; or unconfirmed when the task is behind, and then
/// `Lagged` follows once the channel is subscribed. If the task cannot
/// even take the request within the call timeout it fails with
/// [`BusError::Unavailable`] (the room then polls the store).
///
/// The bus keeps nothing in Redis but the channels: a room that sees a gap
/// reads the missing ops from the operation store.
#[derive(Clone)]
pub struct RedisBus {
    commands: Commands,
    control: mpsc::Sender<Control>,
    connected: tokio::sync::watch::Receiver<bool>,
    queue: usize,
    next_id: Arc<AtomicU64>,
    /// Stops the subscriber task (and its helpers, on one tracker) when
    /// the last clone of the bus is dropped.
    _stop: Arc<DropGuard>,
    /// Not read on publish; kept so the bus holds what its task records to.
    #[allow(dead_code)]
    metrics: Arc<dyn relay_ports::Metrics>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
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

async fn query<T: redis::FromRedisValue>(
    commands: &Commands,
    pipe: &redis::Pipeline,
) -> Result<T, BusError> {
    commands
        .query(pipe)
        .await
        .map_err(|e| BusError::Unavailable(e.into()))
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
            settings.call_timeout,
        )));
        RedisBus {
            _stop: Arc::new(stop.drop_guard()),
            metrics,
            commands,
            control,
            connected,
            queue: settings.queue.max(1),
            next_id: Default::default(),
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
        let payload = serde_json::to_string(&Wire {
            origin: *envelope.origin.as_uuid(),
            document,
            message: envelope.message,
            sent_at_ms: Some(now_ms()),
        })
        .map_err(|e| BusError::Unavailable(Cause::new(e)))?;
        // One round trip: a plain PUBLISH.
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(channel(document)).arg(payload);
        query::<(i64,)>(&self.commands, &pipe).await.map(|_| ())
    }

    async fn subscribe(&self, document: DocumentId) -> Result<Subscription, BusError> {
        let (events, rx) = mpsc::channel(self.queue);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, subscribed) = oneshot::channel();
        // Never longer than the call timeout in all: the task waits on
        // Redis for at most that long, but requests may queue behind it.
        let deadline = tokio::time::Instant::now() + self.commands.call_timeout;
        let request = Control::Subscribe {
            document,
            id,
            events,
            done,
        };
        match tokio::time::timeout_at(deadline, self.control.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(BusError::Unavailable(Cause::msg(
                    "the subscriber task stopped",
                )));
            }
            Err(_) => {
                return Err(BusError::Unavailable(Cause::msg(
                    "the bus's subscriber task took no request within the call timeout",
                )));
            }
        }
        // Subscribed once Redis confirmed it, so nothing published after
        // this returns is missed; while Redis is down the subscription is
        // made on reconnect (and starts with `Disconnected`). Unconfirmed
        // by the deadline, the task sends `Lagged` once it has subscribed.
        let _ = tokio::time::timeout_at(deadline, subscribed).await;
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
