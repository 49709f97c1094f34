//! Relay's own accept loop over the routes (instead of `warp::serve`,
//! which sets no timer, so hyper applies no header timeout, and which also
//! speaks h2c).
//!
//! Each accepted TCP connection:
//!
//! - is admitted before a byte is read (public port): its address's place
//!   under MAX_PENDING_PER_IP (trusted proxies are exempt; over it the
//!   socket is closed at once, counted as `rate_limited`), then a slot
//!   under MAX_CONNECTIONS from the service. When the service has no slot
//!   (at capacity, or draining), the connection is still served - so
//!   `/health` and `/ready` answer and an upgrade gets `503` with
//!   `Retry-After`, as PROTOCOL.md says - but only as one of at most
//!   [`OVERFLOW_CONNECTIONS`], for one request, whose head must arrive
//!   within [`OVERFLOW_HEADER_TIMEOUT`] (a probe or an honest client sends
//!   it at once; an attacker filling the overflow is cycled out quickly);
//!   beyond those it is closed at once (counted as `capacity`).
//! - is served HTTP/1.1 only, by hyper's own HTTP/1 connection (no version
//!   sniffing, which would read the first bytes without a deadline, and no
//!   h2c: an HTTP/2 preface is a parse error that closes the connection):
//!   the request head must be complete within HEADER_TIMEOUT_SECS and at
//!   most [`MAX_HEAD_BYTES`] (over it: `431`); an idle keep-alive
//!   connection is closed after HEADER_TIMEOUT_SECS too (hyper's header
//!   timer runs while it waits for the next head).
//! - carries what it holds ([`AdmissionCell`]) as an extension of every
//!   request, so the upgrade hands the slot to the WebSocket connection.
//!
//! On shutdown the loop stops accepting, asks every HTTP connection to
//! finish (idle ones close at once, a request in progress completes), and
//! cuts those still open after [`DRAIN_LIMIT`]: a half-sent request
//! cannot hold the process. Upgraded WebSocket connections are not HTTP
//! connections any more; the service and [`crate::Connections`] end them.

use crate::admission::{Admission, AdmissionCell, PendingTable};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use relay_ports::metrics::RejectReason;
use relay_ports::{CollaborationService, Metrics};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

/// The largest request head, in bytes: an upgrade with an 8 KiB token in
/// `Authorization` fits. Larger: `431` (hyper's minimum is 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 << 10;

/// Connections served while the service has no slot (at MAX_CONNECTIONS,
/// or draining), one request each: enough for probes and for `503`s to
/// reach clients, small enough to cost nothing.
pub const OVERFLOW_CONNECTIONS: usize = 64;

/// The header timeout of a connection served without a slot.
pub const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long shutdown waits for HTTP connections to finish before cutting
/// them.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// The header timeout of a port without a configured one (the metrics
/// port).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Routes and how their port admits connections; [`crate::serve`] serves
/// them.
#[derive(Clone)]
pub struct Port<F> {
    pub(crate) filter: F,
    pub(crate) header_timeout: Duration,
    pub(crate) admission: Option<PublicAdmission>,
}

impl<F> std::fmt::Debug for Port<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("header_timeout", &self.header_timeout)
            .field("admission", &self.admission.is_some())
            .finish_non_exhaustive()
    }
}

impl<F> Port<F> {
    /// The same routes with another header timeout (and idle keep-alive
    /// limit).
    #[must_use]
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }
}

/// The public port's admission at accept.
#[derive(Clone)]
pub(crate) struct PublicAdmission {
    pub(crate) service: Arc<dyn CollaborationService>,
    pub(crate) metrics: Arc<dyn Metrics>,
    pub(crate) pending: Arc<PendingTable>,
    pub(crate) overflow: Arc<Semaphore>,
}

/// How an accepted connection is served, or `None` to close it at once.
enum Accepted {
    /// With a slot (or on a port without admission).
    Full(Option<AdmissionCell>),
    /// Without a slot: one request, no keep-alive.
    Overflow(AdmissionCell, tokio::sync::OwnedSemaphorePermit),
}

impl PublicAdmission {
    fn admit(&self, peer: SocketAddr) -> Option<Accepted> {
        let pending = match self.pending.enter(peer.ip()) {
            Ok(place) => place,
            Err(_) => {
                self.metrics.connection_rejected(RejectReason::RateLimited);
                return None;
            }
        };
        match self.service.admit() {
            Ok(slot) => Some(Accepted::Full(Some(AdmissionCell::new(Admission {
                slot: Some(slot),
                refused: None,
                pending,
            })))),
            Err(refusal) => {
                let Ok(permit) = self.overflow.clone().try_acquire_owned() else {
                    self.metrics.connection_rejected(reject_reason(&refusal));
                    return None;
                };
                Some(Accepted::Overflow(
                    AdmissionCell::new(Admission {
                        slot: None,
                        refused: Some(refusal),
                        pending,
                    }),
                    permit,
                ))
            }
        }
    }
}

/// What a refusal at accept counts as.
fn reject_reason(refusal: &relay_ports::Refusal) -> RejectReason {
    match refusal {
        relay_ports::Refusal::AtCapacity { .. } => RejectReason::Capacity,
        relay_ports::Refusal::Draining { .. } => RejectReason::Unavailable,
    }
}

/// Serves `port` on `listener` until `shutdown` completes, then lets the
/// HTTP connections finish for at most [`DRAIN_LIMIT`] and cuts the rest.
/// Connections already upgraded keep running (the service closes them).
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    port: Port<F>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(port.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let mut one_request = http.clone();
    one_request
        .keep_alive(false)
        .header_read_timeout(port.header_timeout.min(OVERFLOW_HEADER_TIMEOUT));
    let routes = TowerToHyperService::new(warp::service(port.filter));
    let tasks = TaskTracker::new();
    let finish = CancellationToken::new();
    let cut = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: the
                    // connections being served will free some.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let accepted = match &port.admission {
            None => Accepted::Full(None),
            Some(admission) => match admission.admit(peer) {
                Some(a) => a,
                None => {
                    drop(tcp);
                    continue;
                }
            },
        };
        let (builder, cell, permit) = match accepted {
            Accepted::Full(cell) => (&http, cell, None),
            Accepted::Overflow(cell, permit) => (&one_request, Some(cell), Some(permit)),
        };
        let routes = routes.clone();
        let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            if let Some(cell) = &cell {
                request.extensions_mut().insert(cell.clone());
            }
            hyper::service::Service::call(&routes, request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let (finish, cut) = (finish.clone(), cut.clone());
        tasks.spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            tokio::select! {
                biased;
                () = cut.cancelled() => return,
                r = connection.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "HTTP connection ended");
                    }
                    return;
                }
                () = finish.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                () = cut.cancelled() => {}
                _ = connection => {}
            }
        });
    }
    drop(listener);
    finish.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN_LIMIT, tasks.wait())
        .await
        .is_err()
    {
        tracing::info!(
            connections = tasks.len(),
            "HTTP connections still open after the drain limit: cut"
        );
        cut.cancel();
        tasks.wait().await;
    }
}
