//! `GET /metrics` on METRICS_PORT: every metric in Prometheus's text
//! format (version 0.0.4). Anything else is 404.

use super::OtelMetrics;
use std::sync::Arc;
use warp::Filter;
use warp::http::{Response, StatusCode, header};

/// The metrics port's routes.
pub fn routes(
    metrics: Arc<OtelMetrics>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
+ Clone
+ Send
+ Sync
+ 'static {
    warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || {
            let body = metrics.prometheus_text();
            Response::builder()
                .header(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
                .body(body.into())
                .unwrap_or_default()
        })
        .or(warp::any().map(|| {
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body("not found: the metrics are at /metrics\n".into())
                .unwrap_or_default()
        }))
        .unify()
}
