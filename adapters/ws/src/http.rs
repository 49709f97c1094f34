//! Plain HTTP routes: `/health`, `/ready`, `/.well-known/jwks.json`.

use relay_ports::CollaborationService;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// `/health`: the seed's liveness JSON.
pub(super) fn health(
    service: Arc<dyn CollaborationService>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path("health")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || {
            let h = service.health();
            warp::reply::json(&json!({
                "status": "healthy",
                "version": h.version,
                "uptime_seconds": h.uptime_seconds,
                "active_connections": h.active_connections,
                "active_documents": h.active_documents,
            }))
            .into_response()
        })
}

/// `/ready`: 200 when every dependency answers and the server is not
/// draining, 503 otherwise.
pub(super) fn ready(
    service: Arc<dyn CollaborationService>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path("ready")
        .and(warp::path::end())
        .and(warp::get())
        .then(move || {
            let service = service.clone();
            async move {
                let r = service.readiness().await;
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
