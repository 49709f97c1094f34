//! Redis adapters: the fan-out bus on Redis pub/sub and the presence
//! registry, shared by every Relay instance of a deployment.
//!
//! Redis is a latency path and a registry of who is here, never the source
//! of truth: a lost message, a Redis restart or a resubscription shows up
//! as [`relay_ports::BusEvent::Lagged`] (or `Disconnected` while Redis is
//! down) and the room fills the gap from the operation store.
//!
//! # Layout
//!
//! - `bus`: [`RedisBus`] - one channel per open document, one pub/sub
//!   connection per instance that resubscribes after every reconnect, and
//!   the recent ops of each document (bounded in count, size and time) for
//!   filling a gap without reading PostgreSQL.
//! - `presence`: [`RedisPresence`] - entries per (document, client) that
//!   expire unless refreshed.

mod bus;
mod presence;

pub use bus::RedisBus;
pub use presence::RedisPresence;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use relay_ports::Cause;
use std::time::Duration;

/// How Relay talks to Redis.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Commands (publish, presence) share this many multiplexed
    /// connections (REDIS_POOL_SIZE, at most 8: each one pipelines any
    /// number of concurrent commands), besides the one pub/sub connection.
    pub connections: usize,
    /// How long a command may take before it fails.
    pub call_timeout: Duration,
    /// Events one subscription holds before it is told it lagged.
    pub queue: usize,
    /// Recent ops kept per document for catch-up (a sorted set by
    /// version): at most this many...
    pub history_ops: usize,
    /// ...none larger than this as JSON (a larger one is not kept, and a
    /// catch-up across it reads the store)...
    pub history_op_bytes: usize,
    /// ...for this long after the document's last publish
    /// (OPERATION_HISTORY_TTL).
    pub history_ttl: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            connections: 2,
            call_timeout: Duration::from_secs(2),
            queue: 1024,
            history_ops: 500,
            history_op_bytes: 8192,
            history_ttl: Duration::from_secs(600),
        }
    }
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

/// Command connections (reconnecting with backoff) used round-robin.
#[derive(Clone)]
pub(crate) struct Commands {
    connections: Vec<ConnectionManager>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) call_timeout: Duration,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("connections", &self.connections.len())
            .finish()
    }
}

impl Commands {
    async fn connect(client: &redis::Client, settings: &RedisSettings) -> Result<Self, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.call_timeout))
            .set_connection_timeout(Some(settings.call_timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let mut connections = Vec::new();
        for _ in 0..settings.connections.clamp(1, 8) {
            let c = client
                .get_connection_manager_with_config(config.clone())
                .await
                .map_err(|e| RedisError(e.to_string()))?;
            connections.push(c);
        }
        Ok(Commands {
            connections,
            next: Default::default(),
            call_timeout: settings.call_timeout,
        })
    }

    pub(crate) fn get(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.connections[i % self.connections.len()].clone()
    }

    /// Runs `pipe` on the next connection, failing after `call_timeout`.
    /// The caller maps the failure to its port's error (through [`Cause`]).
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisCallError> {
        let mut conn = self.get();
        match tokio::time::timeout(self.call_timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RedisCallError::Redis(e)),
            Err(_) => Err(RedisCallError::Timeout),
        }
    }
}

/// Why one timed Redis call failed.
#[derive(Debug)]
pub(crate) enum RedisCallError {
    /// Redis (or the connection to it) answered with an error.
    Redis(redis::RedisError),
    /// No answer within `call_timeout`.
    Timeout,
}

impl From<RedisCallError> for Cause {
    fn from(e: RedisCallError) -> Cause {
        match e {
            RedisCallError::Redis(e) => Cause::new(e),
            RedisCallError::Timeout => Cause::msg("redis did not answer in time"),
        }
    }
}

/// Connects to Redis at `url`: the bus and the presence registry, sharing
/// the command connections.
pub async fn connect(
    url: &str,
    settings: RedisSettings,
) -> Result<(RedisBus, RedisPresence), RedisError> {
    connect_with_metrics(url, settings, std::sync::Arc::new(relay_ports::NoMetrics)).await
}

/// [`connect`], recording `materi_bus_lag_seconds` (publish on another
/// instance to receipt here) into `metrics`.
pub async fn connect_with_metrics(
    url: &str,
    settings: RedisSettings,
    metrics: std::sync::Arc<dyn relay_ports::Metrics>,
) -> Result<(RedisBus, RedisPresence), RedisError> {
    let client = redis::Client::open(url).map_err(|e| RedisError(e.to_string()))?;
    let commands = Commands::connect(&client, &settings).await?;
    let bus = RedisBus::start(client, commands.clone(), &settings, metrics);
    if !bus.connected_within(settings.call_timeout).await {
        return Err(RedisError("the pub/sub connection did not come up".into()));
    }
    Ok((bus, RedisPresence::new(commands)))
}
