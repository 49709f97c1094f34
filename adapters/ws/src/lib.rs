//! The WebSocket transport on warp: `GET /collab/{document_id}` upgrades to
//! a WebSocket speaking PROTOCOL.md, plus `/health`, `/ready` and (in
//! development) `/.well-known/jwks.json`.
//!
//! The upgrade is answered by our own filter rather than `warp::ws()`:
//! warp's builder cannot shrink tungstenite's 128 KiB read buffer, which is
//! allocated eagerly and would cost about 137 KB per idle connection. We
//! complete the handshake ourselves and build the stream with
//! `WebSocketStream::from_raw_socket` and small buffers (see
//! [`WsConfig::read_buffer_bytes`]).
//!
//! The routes are served by Relay's own accept loop ([`serve`]), not
//! `warp::serve`: HTTP/1.1 only, a header timeout, a head cap, and every
//! connection admitted (a slot, a place in its address's pending budget)
//! when it is accepted.
//!
//! # Layout
//!
//! - `server`: the accept loop: admission at accept, HTTP/1.1 with its
//!   timeouts, the bounded drain on shutdown.
//! - `admission`: what a connection holds until it joins (its slot, its
//!   address's pending place).
//! - `upgrade`: the handshake: path, subprotocol, origin, admission,
//!   bearer token, `101 Switching Protocols`.
//! - `connection`: one connection's loop: the join phase under one
//!   deadline, frames to and from the session, heartbeat, token expiry,
//!   close codes, large messages written in fragments.
//! - `first_frame`: the 16 KiB limit of the first message, read on the
//!   frame headers as bytes arrive.
//! - `http`: `/health`, `/ready` (its checks shared, at most once a
//!   second), JWKS.

mod admission;
mod connection;
mod first_frame;
mod http;
pub mod metrics;
mod server;
mod upgrade;

pub use server::{DRAIN_LIMIT, MAX_HEAD_BYTES, OVERFLOW_CONNECTIONS, Port, serve};

use relay_ports::{CollaborationService, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use warp::Filter;

/// Transport settings (from the environment, see the app's config).
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// MAX_MESSAGE_BYTES: larger frames close the connection with 1009.
    pub max_message_bytes: usize,
    /// AUTH_TIMEOUT_SECS: no `join` by then closes with 4408.
    pub auth_timeout: Duration,
    /// HEARTBEAT_INTERVAL_SECS: how often the server pings.
    pub heartbeat_interval: Duration,
    /// HEARTBEAT_TIMEOUT_SECS: silence this long closes the connection.
    pub heartbeat_timeout: Duration,
    /// ALLOWED_ORIGINS: when set, other origins get 403.
    pub allowed_origins: Option<Vec<String>>,
    /// HEADER_TIMEOUT_SECS: a request head must be complete within it; an
    /// idle keep-alive connection is closed after it.
    pub header_timeout: Duration,
    /// MAX_PENDING_PER_IP: connections from one address not yet joined.
    pub max_pending_per_ip: usize,
    /// TRUSTED_PROXIES: peers exempt from `max_pending_per_ip`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// tungstenite's read buffer per connection.
    pub read_buffer_bytes: usize,
    /// tungstenite's write buffer per connection.
    pub write_buffer_bytes: usize,
    /// Where the upgraded connections' tasks run.
    pub connections: Connections,
}

/// The tasks of upgraded connections: tracked, so shutdown can wait for
/// them, and cut by one token once the service has closed what it could.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    tasks: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

impl Connections {
    /// Runs `connection` on the tracker. It must end when
    /// [`stop_token`](Self::stop_token) is cancelled: the caller selects on
    /// it inside the future rather than this wrapping it, because a future
    /// taken by value into another async fn is stored twice in the task
    /// (measured: +4.2 KB per idle connection, relay-idle).
    pub(crate) fn spawn(&self, connection: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(connection);
    }

    /// Cancelled when the connections are to end.
    pub(crate) fn stop_token(&self) -> tokio_util::sync::CancellationToken {
        self.stop.clone()
    }

    /// Connections still running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Ends every connection still running (without a close frame) and
    /// waits for their tasks, at most `limit`; `false` if some were still
    /// ending then.
    pub async fn stop(&self, limit: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(limit, self.tasks.wait()).await.is_ok()
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message_bytes: 1 << 20,
            auth_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(60),
            allowed_origins: None,
            read_buffer_bytes: 1024,
            // The frames a connection's writer finds queued together (up
            // to 64, see `write_batch`) go out in one write of up to 8 KiB
            // instead of one syscall each: under load a client often has an
            // op and a caret waiting at once. Idle connections never grow
            // the buffer past their largest frame (`joined`).
            write_buffer_bytes: 8 << 10,
            header_timeout: Duration::from_secs(10),
            max_pending_per_ip: 64,
            trusted_proxies: Vec::new(),
            connections: Connections::default(),
        }
    }
}

/// Every route of the public port, admitted as `config` says.
pub fn routes(
    service: Arc<dyn CollaborationService>,
    metrics: Arc<dyn Metrics>,
    config: WsConfig,
    jwks: Option<Arc<str>>,
) -> Port<
    impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    let admission = server::PublicAdmission {
        service: service.clone(),
        metrics: metrics.clone(),
        pending: admission::PendingTable::new(
            config.max_pending_per_ip,
            config.trusted_proxies.clone(),
        ),
        overflow: Arc::new(tokio::sync::Semaphore::new(OVERFLOW_CONNECTIONS)),
    };
    let header_timeout = config.header_timeout;
    let config = Arc::new(config);
    let filter = upgrade::collab(service.clone(), config, metrics)
        .or(http::health(service.clone()))
        .unify()
        .or(http::ready(service))
        .unify()
        .or(http::jwks(jwks))
        .unify()
        .recover(http::rejection)
        .unify();
    Port {
        filter,
        header_timeout,
        admission: Some(admission),
    }
}

/// Binds `addr` (port 0 picks a free port) and returns the listener and
/// the address it got.
///
/// Every connection it accepts has `TCP_NODELAY` set: the listening socket
/// carries it and Linux copies it to each accepted socket (checked by a
/// test below). Without it Nagle's algorithm holds a small frame back while
/// an earlier one is unacknowledged - until the peer's delayed ACK, about
/// 40 ms - which is what a client that only listens sees on every other
/// frame.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn every_accepted_connection_has_tcp_nodelay() {
        let (listener, addr) = super::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        for _ in 0..3 {
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert!(
                accepted.nodelay().unwrap(),
                "the accepted socket must not use Nagle"
            );
            drop(client);
        }
    }
}
