//! Plain HTTP routes: `/health`, `/ready`, `/.well-known/jwks.json`.

use crate::admission::AdmissionCell;
use relay_ports::{CollaborationService, Readiness};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// `/health`: the seed's liveness JSON. `active_connections` counts every
/// connection holding a slot (joined, or accepted and not yet joined)
/// except the one asking.
pub(super) fn health(
    service: Arc<dyn CollaborationService>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path("health")
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::ext::optional::<AdmissionCell>())
        .map(move |asker: Option<AdmissionCell>| {
            let h = service.health();
            let own = usize::from(asker.is_some_and(|a| a.holds_slot()));
            warp::reply::json(&json!({
                "status": "healthy",
                "version": h.version,
                "uptime_seconds": h.uptime_seconds,
                "active_connections": h.active_connections.saturating_sub(own),
                "active_documents": h.active_documents,
            }))
            .into_response()
        })
}

/// How long one run of `/ready`'s dependency checks answers for.
pub(super) const READY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// `/ready`'s dependency checks, run at most once per
/// [`READY_CHECK_EVERY`]: one request runs them while the others wait for
/// its result (a public endpoint must not turn each request into a
/// database query and a Redis round trip).
struct ReadyChecks {
    service: Arc<dyn CollaborationService>,
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Readiness)>>,
}

impl ReadyChecks {
    async fn get(&self) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = &*last
            && at.elapsed() < READY_CHECK_EVERY
        {
            return r.clone();
        }
        let r = self.service.readiness().await;
        *last = Some((tokio::time::Instant::now(), r.clone()));
        r
    }
}

/// `/ready`: 200 when every dependency answers and the server is not
/// draining, 503 otherwise. A connection accepted while the server drains
/// always sees it draining, whatever the shared result says.
pub(super) fn ready(
    service: Arc<dyn CollaborationService>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let checks = Arc::new(ReadyChecks {
        service,
        last: tokio::sync::Mutex::new(None),
    });
    warp::path("ready")
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::ext::optional::<AdmissionCell>())
        .then(move |asker: Option<AdmissionCell>| {
            let checks = checks.clone();
            async move {
                let mut r = checks.get().await;
                if asker.is_some_and(|a| a.draining()) {
                    r.draining = true;
                }
                let checks: serde_json::Map<String, serde_json::Value> = r
                    .checks
                    .iter()
                    .map(|(dependency, ok)| {
                        (
                            dependency.name().to_owned(),
                            json!(if *ok { "ok" } else { "error" }),
                        )
                    })
                    .collect();
                let ready = r.is_ready();
                let mut body = json!({
                    "status": if ready { "ready" } else { "not_ready" },
                    "checks": checks,
                });
                if r.draining {
                    body["draining"] = json!(true);
                }
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                warp::reply::with_status(warp::reply::json(&body), status).into_response()
            }
        })
}

/// `/.well-known/jwks.json` when Relay signs its own development tokens.
pub(super) fn jwks(
    jwks: Option<Arc<str>>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and_then(move || {
            let jwks = jwks.clone();
            async move {
                match jwks {
                    Some(body) => Ok(warp::reply::with_header(
                        body.to_string(),
                        "content-type",
                        "application/json",
                    )
                    .into_response()),
                    None => Err(warp::reject::not_found()),
                }
            }
        })
}

/// Turns rejections into plain responses.
pub(super) async fn rejection(r: warp::Rejection) -> Result<Response, Infallible> {
    let status = if r.is_not_found() {
        StatusCode::NOT_FOUND
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok(warp::reply::with_status(
        status.canonical_reason().unwrap_or("error").to_owned(),
        status,
    )
    .into_response())
}
