//! `GET /metrics` on METRICS_PORT: the metrics in Prometheus's text format
//! (version 0.0.4), as the metrics adapter renders them. Anything else is
//! 404.

use std::sync::Arc;
use warp::Filter;
use warp::http::{Response, StatusCode, header};

/// Renders every metric as Prometheus text.
pub type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// The content type of Prometheus's text exposition format 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// The metrics port's routes, served like the public port (HTTP/1.1 only,
/// the header timeout, the head cap) without its admission: the port is
/// for the monitoring system, not the internet.
pub fn routes(
    text: MetricsText,
) -> crate::Port<
    impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    let filter = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || {
            Response::builder()
                .header(header::CONTENT_TYPE, TEXT_FORMAT)
                .body(text().into())
                .unwrap_or_default()
        })
        .or(warp::any().map(|| {
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body("not found: the metrics are at /metrics\n".into())
                .unwrap_or_default()
        }))
        .unify();
    crate::Port {
        filter,
        header_timeout: crate::server::DEFAULT_HEADER_TIMEOUT,
        admission: None,
    }
}
