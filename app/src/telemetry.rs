//! Logs, metrics and spans, set up once by the binary.
//!
//! - Logs: `tracing` to stdout, filtered by RUST_LOG (default `info`),
//!   plain text or, with LOG_FORMAT=json, one JSON object per line. Each
//!   connection logs one line when it opens and one when it closes (target
//!   `relay::connection`: document, user, client, duration, messages, close
//!   code and reason). No line carries a token or a delta's text at info.
//! - Metrics: [`OtelMetrics`], served at `/metrics` on METRICS_PORT, and
//!   pushed over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
//! - Spans of the submit path (target `relay::submit`: `receive`,
//!   `sequence`, `commit`, `fanout`), exported over OTLP when an endpoint
//!   is set; never printed as logs.

use crate::config::Config;
use relay_adapter_otel::otlp::{OtlpSettings, SpanExport};
use relay_adapter_otel::{OtelMetrics, OtelSettings};
use relay_adapter_ws as ws;
use relay_ports::Chain;
use std::sync::Arc;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::filter::{EnvFilter, FilterFn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The target of the submit path's spans.
pub const SUBMIT_SPANS: &str = "relay::submit";

/// Why logging, metrics or span export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("RUST_LOG: {0}")]
    Filter(tracing_subscriber::filter::ParseError),
    #[error("logging: {0}")]
    Logging(tracing_subscriber::util::TryInitError),
    #[error(transparent)]
    Otel(#[from] relay_adapter_otel::OtelError),
    #[error("METRICS_PORT: cannot bind {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    pub metrics: Arc<OtelMetrics>,
    spans: Option<SpanExport>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("otlp_traces", &self.spans.is_some())
            .finish_non_exhaustive()
    }
}

/// `try_init` bridges the `log` crate at TRACE, so every `log::trace!` of
/// a dependency (tungstenite logs each frame) builds a record and asks the
/// subscriber, only to be filtered out: about 4% of the server's CPU under
/// load (perf, `relay-load`). Caps the bridge at what RUST_LOG can show.
fn cap_log_crate(hint: Option<LevelFilter>) {
    let level = match hint {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    log::set_max_level(level);
}

/// Sets up logging only (for the subcommands other than `serve`).
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(json, filter))
        .try_init();
}

fn fmt_layer<S>(
    json: bool,
    filter: EnvFilter,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // The submit spans are for OTLP only: the log lines neither show nor
    // pay for them.
    let not_spans = FilterFn::new(|m| m.target() != SUBMIT_SPANS);
    let layer = tracing_subscriber::fmt::layer().with_target(false);
    if json {
        layer
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter.and(not_spans))
            .boxed()
    } else {
        layer.with_filter(filter.and(not_spans)).boxed()
    }
}

/// Logging, metrics and (with an OTLP endpoint) span export, from the
/// configuration and the standard OTEL_* variables. Call before the
/// runtime starts: the OTLP exporters run on threads of their own.
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    let otlp = OtlpSettings::from_env(|k| std::env::var(k).ok());
    let metrics = Arc::new(OtelMetrics::new(&OtelSettings {
        document_series: config.listen.metrics_document_series,
        otlp: otlp.clone(),
    })?);
    let export = match &otlp {
        Some(o) => SpanExport::new(o)?,
        None => None,
    };
    let spans = export.as_ref().map(|export| {
        export
            .layer()
            .with_filter(FilterFn::new(|m| m.target() == SUBMIT_SPANS))
            .with_filter(LevelFilter::INFO)
    });
    let filter = EnvFilter::try_new(&config.listen.rust_log).map_err(TelemetryError::Filter)?;
    let hint = filter.max_level_hint();
    tracing_subscriber::registry()
        .with(fmt_layer(config.listen.log_json, filter))
        .with(spans)
        .try_init()
        .map_err(TelemetryError::Logging)?;
    cap_log_crate(hint);
    if let Some(o) = &otlp {
        tracing::info!(metrics = o.metrics, traces = o.traces, "OTLP export on");
    }
    Ok(Telemetry {
        metrics,
        spans: export,
    })
}

impl Telemetry {
    /// Pushes what is left (metrics, spans) to OTLP and stops the
    /// exporters. Blocking: call off the runtime, or at exit.
    pub fn shutdown(&self) {
        self.metrics.shutdown();
        if let Some(t) = &self.spans
            && let Err(e) = t.shutdown()
        {
            tracing::debug!(error = %Chain(&e), "span exporter shutdown");
        }
    }
}

/// Serves `/metrics` on `addr` until `stop` completes (HTTP/1.1 only, a
/// request head within `header_timeout`, as on the public port); returns
/// the bound address (port 0 picks one).
pub async fn serve_metrics(
    metrics: Arc<OtelMetrics>,
    addr: std::net::SocketAddr,
    header_timeout: std::time::Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(std::net::SocketAddr, impl std::future::Future<Output = ()>), TelemetryError> {
    let (listener, bound) = ws::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let routes = ws::metrics::routes(Arc::new(move || metrics.prometheus_text()))
        .header_timeout(header_timeout);
    Ok((bound, ws::serve(listener, routes, stop)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_bridge_is_capped_at_what_the_filter_can_show() {
        let hint = EnvFilter::new("warn").max_level_hint();
        cap_log_crate(hint);
        assert_eq!(log::max_level(), log::LevelFilter::Warn);
        cap_log_crate(EnvFilter::new("info,relay=debug").max_level_hint());
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        cap_log_crate(None);
        assert_eq!(log::max_level(), log::LevelFilter::Trace);
    }
}
