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
//! - `bus`: [`RedisBus`] - one channel per open document and one pub/sub
//!   connection per instance that resubscribes after every reconnect.
//! - `presence`: [`RedisPresence`] - entries per (document, client) that
//!   expire unless refreshed.
//!
//! # Authentication and TLS
//!
//! The URL carries the credentials: `redis://:password@host:6379/0`
//! (`requirepass`) or `redis://user:password@host:6379/0` (an ACL user).
//! `rediss://` connects over TLS (rustls) and verifies the server's
//! certificate and host name against the system's CA certificates (the
//! image's `ca-certificates`), or - when [`RedisSettings::tls_ca_file`]
//! (REDIS_CA_FILE) is set - against that CA only, for a Redis with a
//! certificate from a private CA. Verification cannot be turned off
//! (`rediss://...#insecure` is refused). [`connect`] sends a `PING` before
//! it returns, so a wrong password or a server that wants one fails at
//! start, with Redis's own words (`WRONGPASS`, `NOAUTH`).

mod bus;
mod presence;

pub use bus::RedisBus;
pub use presence::RedisPresence;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use relay_ports::Cause;
use std::path::PathBuf;
use std::time::Duration;

/// How Relay talks to Redis.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Commands (publish, presence) share this many multiplexed
    /// connections (REDIS_POOL_SIZE, at most 8: each one pipelines any
    /// number of concurrent commands), besides the one pub/sub connection.
    pub connections: usize,
    /// How long a command may take before it fails. It bounds the pub/sub
    /// connection's calls too: a SUBSCRIBE, UNSUBSCRIBE or PING not
    /// answered within it counts as a lost connection; and
    /// [`relay_ports::FanOut::subscribe`] returns within it.
    pub call_timeout: Duration,
    /// Events one subscription holds before it is told it lagged.
    pub queue: usize,
    /// REDIS_CA_FILE: with a `rediss://` URL, the PEM file of the CA (or
    /// CAs) the server's certificate must chain to, instead of the system's
    /// CA certificates. Refused with a `redis://` URL.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            connections: 2,
            call_timeout: Duration::from_secs(2),
            queue: 1024,
            tls_ca_file: None,
        }
    }
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

impl RedisError {
    /// Redis's own words, with a hint where the cause is the credentials
    /// (never the URL itself, which holds the password).
    fn from_redis(e: redis::RedisError) -> RedisError {
        let auth = matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
            || e.code().is_some_and(|c| c == "NOAUTH" || c == "WRONGPASS");
        if auth {
            RedisError(format!(
                "{e} (the user and password of REDIS_URL: redis://user:password@host:port)"
            ))
        } else {
            RedisError(e.to_string())
        }
    }
}

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
                .map_err(RedisError::from_redis)?;
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
    let pubsub = client(url, &settings, Some(pubsub_tcp()))?;
    let client = client(url, &settings, None)?;
    let commands = Commands::connect(&client, &settings).await?;
    // The connection manager connects without asking anything: a missing
    // or wrong password would only show in the first command.
    let mut conn = commands.get();
    match tokio::time::timeout(
        settings.call_timeout,
        redis::cmd("PING").query_async::<()>(&mut conn),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(RedisError::from_redis(e)),
        Err(_) => return Err(RedisError("PING: no answer in time".into())),
    }
    let bus = RedisBus::start(pubsub, commands.clone(), &settings, metrics);
    if !bus.connected_within(settings.call_timeout).await {
        return Err(RedisError("the pub/sub connection did not come up".into()));
    }
    Ok((bus, RedisPresence::new(commands)))
}

/// How long the kernel lets data sent on the pub/sub connection go
/// unacknowledged before it drops the connection (`TCP_USER_TIMEOUT`,
/// Linux only).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const PUBSUB_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the pub/sub connection may be idle before TCP keepalive probes
/// start.
const PUBSUB_KEEPALIVE_IDLE: Duration = Duration::from_secs(5);

/// The pub/sub connection's TCP settings: no Nagle delay (its PINGs and
/// SUBSCRIBEs are small), keepalive after [`PUBSUB_KEEPALIVE_IDLE`] (then a
/// probe a second, three unanswered ones drop it) and, on Linux, a user
/// timeout of [`PUBSUB_USER_TIMEOUT`]. Without them a link that silently
/// drops packets (no RST) would keep the connection open for the kernel's
/// retransmission limit, about 15 minutes. The bus's own PING on that
/// connection (every second, answered within the call timeout) notices
/// such a link sooner; these are the kernel's backstop.
fn pubsub_tcp() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
    let keepalive = TcpKeepalive::new().with_time(PUBSUB_KEEPALIVE_IDLE);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(PUBSUB_USER_TIMEOUT);
    tcp
}

/// The client for `url`: over TLS for `rediss://`, trusting
/// `settings.tls_ca_file` when set, with `tcp` (else the defaults) for its
/// connections.
fn client(
    url: &str,
    settings: &RedisSettings,
    tcp: Option<redis::io::tcp::TcpSettings>,
) -> Result<redis::Client, RedisError> {
    use redis::IntoConnectionInfo;
    let mut info = url
        .into_connection_info()
        .map_err(|e| RedisError(e.to_string()))?;
    if let Some(tcp) = tcp {
        info = info.set_tcp_settings(tcp);
    }
    let Some(ca_file) = &settings.tls_ca_file else {
        return redis::Client::open(info).map_err(|e| RedisError(e.to_string()));
    };
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(RedisError(
            "REDIS_CA_FILE is set but REDIS_URL is not a rediss:// (TLS) URL".into(),
        ));
    }
    let pem = std::fs::read(ca_file)
        .map_err(|e| RedisError(format!("REDIS_CA_FILE {}: {e}", ca_file.display())))?;
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
    .map_err(|e| RedisError(format!("REDIS_CA_FILE {}: {e}", ca_file.display())))
}

/// What a `REDIS_URL` leaves open, for a warning at start: `None` when it
/// names a password, or a host on this machine; otherwise why not.
pub fn url_weakness(url: &str) -> Option<&'static str> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().ok()?;
    let host = match info.addr() {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => host,
        _ => return None,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || info.redis_settings().password().is_some() {
        return None;
    }
    Some(
        "REDIS_URL names no password: whoever can reach Redis can inject operations \
         that every instance applies; use redis://user:password@host (or rediss://)",
    )
}

#[cfg(test)]
mod tests {
    use super::url_weakness;

    #[test]
    fn a_redis_url_without_a_password_is_flagged_unless_on_this_machine() {
        assert!(url_weakness("redis://redis:6379").is_some());
        assert!(url_weakness("rediss://redis.internal:6379/0").is_some());
        assert!(url_weakness("redis://:secret@redis:6379").is_none());
        assert!(url_weakness("rediss://relay:secret@redis:6379/0").is_none());
        assert!(url_weakness("redis://127.0.0.1:6379").is_none());
        assert!(url_weakness("redis://localhost:6379").is_none());
    }
}
