//! The metrics adapter on OpenTelemetry: instruments of one
//! `SdkMeterProvider`, read by the Prometheus exporter (served at
//! `/metrics` on METRICS_PORT by the ws adapter, from
//! [`OtelMetrics::prometheus_text`]) and, when
//! OTEL_EXPORTER_OTLP_ENDPOINT is set, pushed over OTLP/HTTP as well
//! ([`otlp`]).
//!
//! # The hot path
//!
//! Every label value is from a closed set, so every series except the
//! per-document gauge is bound once, at start (the SDK's bound
//! instruments): recording an op is an atomic add on its series, with no
//! attribute lookup and no lock shared between connections. The
//! per-document connection counts live in [`DocumentConnections`] (sharded
//! locks, touched on connect and disconnect only) and are read by the
//! gauge's callback at each collection.
//!
//! # Names
//!
//! The Prometheus exporter is built without units, target info or scope
//! info; counters are created without the `_total` suffix, which the
//! exporter appends. So the names are exactly the deployment document's.

mod documents;
pub mod otlp;

pub use documents::{DocumentConnections, Series};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, BoundUpDownCounter, Meter, MeterProvider,
};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use relay_domain::DocumentId;
use relay_ports::Metrics;
use relay_ports::metrics::names::{self, Counter, Histogram};
use relay_ports::metrics::{GapSource, OpStatus, OperationType, RejectReason, seconds};
use std::sync::Arc;
use std::time::Duration;

/// `materi_operation_latency_seconds`'s buckets, as the deployment document
/// sets them; also `materi_commit_latency_seconds`'s.
pub const LATENCY_BUCKETS: [f64; 8] = [0.001, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250, 0.500];
/// `materi_commit_batch_ops`'s buckets.
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// `materi_bus_lag_seconds`'s buckets.
pub const BUS_LAG_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The most named document series METRICS_DOCUMENT_SERIES may ask for: the
/// SDK keeps at most 2,000 attribute sets per instrument (then it folds
/// the rest into an overflow series), and `other` needs one.
pub const MAX_DOCUMENT_SERIES: usize = 1_900;

/// The most bytes one message counts for (a bound far above any frame
/// Relay accepts or sends), so byte counters cannot wrap.
const MAX_FRAME_BYTES: usize = 1 << 32;

/// How the metrics are set up.
#[derive(Clone, Debug)]
pub struct OtelSettings {
    /// METRICS_DOCUMENT_SERIES: named `document_id` series at most.
    pub document_series: usize,
    /// Push over OTLP too (OTEL_EXPORTER_OTLP_ENDPOINT set).
    pub otlp: Option<otlp::OtlpSettings>,
}

impl Default for OtelSettings {
    fn default() -> Self {
        OtelSettings {
            document_series: 500,
            otlp: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("metrics exporter: {0}")]
    Exporter(String),
}

/// [`Metrics`] on OpenTelemetry, exported to Prometheus (and OTLP).
pub struct OtelMetrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    connections: Arc<DocumentConnections>,
    /// `[operation type][status]`, in the enums' `ALL` order.
    operations: Vec<Vec<BoundCounter<u64>>>,
    operation_latency: BoundHistogram<f64>,
    presence: BoundCounter<u64>,
    rejected: Vec<BoundCounter<u64>>,
    messages_in: BoundCounter<u64>,
    bytes_in: BoundCounter<u64>,
    messages_out: BoundCounter<u64>,
    bytes_out: BoundCounter<u64>,
    commit_latency: BoundHistogram<f64>,
    commit_batch: BoundHistogram<u64>,
    conflicts: BoundCounter<u64>,
    retries: BoundCounter<u64>,
    bus_lag: BoundHistogram<f64>,
    gaps: Vec<BoundCounter<u64>>,
    outbound_closes: BoundCounter<u64>,
    jwks_ok: BoundCounter<u64>,
    jwks_error: BoundCounter<u64>,
    permission_hit: BoundCounter<u64>,
    permission_miss: BoundCounter<u64>,
    documents_open: BoundUpDownCounter<i64>,
    rooms_failed: BoundCounter<u64>,
}

impl std::fmt::Debug for OtelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelMetrics").finish_non_exhaustive()
    }
}

fn counter(
    meter: &Meter,
    name: Counter,
    help: &'static str,
) -> opentelemetry::metrics::Counter<u64> {
    meter
        .u64_counter(name.instrument)
        .with_description(help)
        .build()
}

impl OtelMetrics {
    /// The instruments, the Prometheus registry they are exported to (with
    /// the process collector: `process_resident_memory_bytes`...), and the
    /// OTLP exporter when asked for.
    pub fn new(settings: &OtelSettings) -> Result<OtelMetrics, OtelError> {
        let registry = prometheus::Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .map_err(|e| OtelError::Exporter(e.to_string()))?;
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| OtelError::Exporter(e.to_string()))?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(otlp::resource())
            .with_reader(exporter);
        if let Some(reader) = settings
            .otlp
            .as_ref()
            .map(otlp::metric_reader)
            .transpose()?
            .flatten()
        {
            builder = builder.with_reader(reader);
        }
        let provider = builder.build();
        let meter = provider.meter("relay");

        let connections = Arc::new(DocumentConnections::default());
        let limit = settings.document_series.min(MAX_DOCUMENT_SERIES);
        let observed = connections.clone();
        // Kept alive by the provider once built; the handle is not needed.
        let _gauge = meter
            .i64_observable_gauge(names::WEBSOCKET_CONNECTIONS_ACTIVE)
            .with_description("Active WebSocket connections")
            .with_callback(move |observer| {
                let series = observed.series(limit);
                for (document, n) in series.named {
                    observer.observe(
                        i64::try_from(n).unwrap_or(i64::MAX),
                        &[KeyValue::new(names::DOCUMENT_ID, document.to_string())],
                    );
                }
                if let Some(n) = series.other {
                    observer.observe(
                        i64::try_from(n).unwrap_or(i64::MAX),
                        &[KeyValue::new(names::DOCUMENT_ID, names::OTHER_DOCUMENTS)],
                    );
                }
            })
            .build();

        let processed = counter(
            &meter,
            names::OPERATIONS_PROCESSED,
            "Total operations processed",
        );
        let operations = OperationType::ALL
            .iter()
            .map(|t| {
                OpStatus::ALL
                    .iter()
                    .map(|s| {
                        processed.bind(&[
                            KeyValue::new(names::OPERATION_TYPE, t.as_str()),
                            KeyValue::new(names::STATUS, s.as_str()),
                        ])
                    })
                    .collect()
            })
            .collect();
        let histogram = |name: Histogram, help: &'static str, buckets: &[f64]| {
            meter
                .f64_histogram(name.name)
                .with_description(help)
                .with_boundaries(buckets.to_vec())
                .build()
                .bind(&[])
        };
        let rejected_counter = counter(
            &meter,
            names::CONNECTIONS_REJECTED,
            "Connections refused, by reason",
        );
        let gap_counter = counter(
            &meter,
            names::BUS_GAP_REPAIRS,
            "Gaps in another instance's ops filled from the operation store",
        );
        let jwks = counter(&meter, names::JWKS_REFRESHES, "JWKS fetches, by result");
        let permission = counter(
            &meter,
            names::PERMISSION_CACHE_LOOKUPS,
            "Open sessions' permission checks, answered from the cache (hit) or the source (miss)",
        );
        let metrics = OtelMetrics {
            operation_latency: histogram(
                names::OPERATION_LATENCY,
                "Operation processing latency",
                &LATENCY_BUCKETS,
            ),
            presence: counter(
                &meter,
                names::PRESENCE_BROADCASTS,
                "Total presence broadcast events",
            )
            .bind(&[]),
            rejected: RejectReason::ALL
                .iter()
                .map(|r| rejected_counter.bind(&[KeyValue::new(names::REASON, r.as_str())]))
                .collect(),
            messages_in: counter(
                &meter,
                names::WEBSOCKET_MESSAGES_RECEIVED,
                "WebSocket messages received",
            )
            .bind(&[]),
            bytes_in: counter(
                &meter,
                names::WEBSOCKET_RECEIVED_BYTES,
                "WebSocket payload bytes received",
            )
            .bind(&[]),
            messages_out: counter(
                &meter,
                names::WEBSOCKET_MESSAGES_SENT,
                "WebSocket messages sent",
            )
            .bind(&[]),
            bytes_out: counter(
                &meter,
                names::WEBSOCKET_SENT_BYTES,
                "WebSocket payload bytes sent",
            )
            .bind(&[]),
            commit_latency: histogram(
                names::COMMIT_LATENCY,
                "Time of one append to the operation store",
                &LATENCY_BUCKETS,
            ),
            commit_batch: meter
                .u64_histogram(names::COMMIT_BATCH_OPS.name)
                .with_description("Ops committed per append to the operation store")
                .with_boundaries(BATCH_BUCKETS.to_vec())
                .build()
                .bind(&[]),
            conflicts: counter(
                &meter,
                names::COMMIT_CONFLICTS,
                "Appends that lost the race for a version to another writer",
            )
            .bind(&[]),
            retries: counter(
                &meter,
                names::COMMIT_RETRIES,
                "Batches rebased and appended again after a lost race",
            )
            .bind(&[]),
            bus_lag: histogram(
                names::BUS_LAG,
                "Published on another instance to received here",
                &BUS_LAG_BUCKETS,
            ),
            gaps: GapSource::ALL
                .iter()
                .map(|s| gap_counter.bind(&[KeyValue::new(names::SOURCE, s.as_str())]))
                .collect(),
            outbound_closes: counter(
                &meter,
                names::OUTBOUND_QUEUE_CLOSES,
                "Sessions closed because their outbound queue was full",
            )
            .bind(&[]),
            jwks_ok: jwks.bind(&[KeyValue::new(names::RESULT, names::OK)]),
            jwks_error: jwks.bind(&[KeyValue::new(names::RESULT, names::ERROR)]),
            permission_hit: permission.bind(&[KeyValue::new(names::RESULT, names::HIT)]),
            permission_miss: permission.bind(&[KeyValue::new(names::RESULT, names::MISS)]),
            documents_open: meter
                .i64_up_down_counter(names::DOCUMENTS_OPEN)
                .with_description("Documents open on this instance")
                .build()
                .bind(&[]),
            rooms_failed: counter(
                &meter,
                names::ROOMS_FAILED,
                "Document rooms that failed (panicked)",
            )
            .bind(&[]),
            operations,
            provider,
            registry,
            connections,
        };
        metrics.start_at_zero();
        Ok(metrics)
    }

    /// Every counter's series exists from the start, at 0, so `rate()` and
    /// `increase()` count its first events (a series that appears at 1 is
    /// not an increase to Prometheus).
    fn start_at_zero(&self) {
        let all = self
            .operations
            .iter()
            .flatten()
            .chain(&self.rejected)
            .chain(&self.gaps)
            .chain([
                &self.presence,
                &self.messages_in,
                &self.bytes_in,
                &self.messages_out,
                &self.bytes_out,
                &self.conflicts,
                &self.retries,
                &self.outbound_closes,
                &self.jwks_ok,
                &self.jwks_error,
                &self.permission_hit,
                &self.permission_miss,
                &self.rooms_failed,
            ]);
        for counter in all {
            counter.add(0);
        }
        self.documents_open.add(0);
    }

    /// The Prometheus registry the metrics are exported to.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Every metric in Prometheus's text format (what `/metrics` serves).
    pub fn prometheus_text(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }

    /// Pushes what is recorded to the OTLP endpoint now (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = timeout;
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "metrics flush");
        }
    }

    /// Flushes and stops the exporters.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "metrics shutdown");
        }
    }
}

fn index<T: PartialEq>(all: &[T], v: T) -> usize {
    all.iter().position(|x| *x == v).unwrap_or(0)
}

impl Metrics for OtelMetrics {
    fn connection_opened(&self, document: DocumentId) {
        self.connections.opened(document);
    }

    fn connection_closed(&self, document: DocumentId) {
        self.connections.closed(document);
    }

    fn operation(&self, operation_type: OperationType, status: OpStatus) {
        let t = index(&OperationType::ALL, operation_type);
        let s = index(&OpStatus::ALL, status);
        self.operations[t][s].add(1);
    }

    fn operation_latency(&self, s: f64) {
        self.operation_latency.record(seconds(s));
    }

    fn presence_broadcast(&self) {
        self.presence.add(1);
    }

    fn connection_rejected(&self, reason: RejectReason) {
        self.rejected[index(&RejectReason::ALL, reason)].add(1);
    }

    fn message_received(&self, bytes: usize) {
        self.messages_in.add(1);
        self.bytes_in.add(bytes.min(MAX_FRAME_BYTES) as u64);
    }

    fn message_sent(&self, bytes: usize) {
        self.messages_out.add(1);
        self.bytes_out.add(bytes.min(MAX_FRAME_BYTES) as u64);
    }

    fn commit(&self, ops: usize, s: f64) {
        self.commit_latency.record(seconds(s));
        // Bounded so the histogram's sum cannot overflow.
        self.commit_batch.record(ops.min(1 << 20) as u64);
    }

    fn commit_conflict(&self, retried: bool) {
        self.conflicts.add(1);
        if retried {
            self.retries.add(1);
        }
    }

    fn bus_lag(&self, s: f64) {
        self.bus_lag.record(seconds(s));
    }

    fn gap_repair(&self, source: GapSource) {
        self.gaps[index(&GapSource::ALL, source)].add(1);
    }

    fn outbound_queue_closed(&self) {
        self.outbound_closes.add(1);
    }

    fn jwks_refresh(&self, ok: bool) {
        if ok { &self.jwks_ok } else { &self.jwks_error }.add(1);
    }

    fn permission_lookup(&self, hit: bool) {
        if hit {
            &self.permission_hit
        } else {
            &self.permission_miss
        }
        .add(1);
    }

    fn document_opened(&self) {
        self.documents_open.add(1);
    }

    fn document_closed(&self) {
        self.documents_open.add(-1);
    }

    fn room_failed(&self) {
        self.rooms_failed.add(1);
    }
}
