//! Metrics counted in memory, for tests to read back.

use relay_domain::DocumentId;
use relay_ports::Metrics;
use relay_ports::metrics::samples::{Sample, Samples};
use relay_ports::metrics::{GapSource, OpStatus, OperationType, RejectReason};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

type Key = (&'static str, Vec<(&'static str, String)>);

/// [`Metrics`] that only count, in memory, under the exported names, for
/// tests to read through [`MemoryMetrics::samples`]. Nothing is exported,
/// and every record takes one lock: not for production (the binary uses
/// `OtelMetrics` (relay-adapter-otel)).
#[derive(Debug, Default)]
pub struct MemoryMetrics {
    values: Mutex<HashMap<Key, f64>>,
}

impl MemoryMetrics {
    pub fn new() -> Self {
        MemoryMetrics::default()
    }

    /// Every value so far, as the Prometheus exporter would name it
    /// (histograms as `_count` and `_sum` only).
    pub fn samples(&self) -> Samples {
        Samples(
            self.values()
                .iter()
                .map(|((name, labels), v)| Sample {
                    name: (*name).to_owned(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), v.clone()))
                        .collect::<BTreeMap<_, _>>(),
                    value: *v,
                })
                .collect(),
        )
    }

    /// Open connections on `document`.
    pub fn connections(&self, document: DocumentId) -> f64 {
        self.samples().sum(
            "materi_websocket_connections_active",
            &[("document_id", &document.to_string())],
        )
    }

    /// Operations counted with these labels.
    pub fn operations(&self, operation_type: OperationType, status: OpStatus) -> f64 {
        self.samples().sum(
            "materi_operations_processed_total",
            &[
                ("operation_type", operation_type.as_str()),
                ("status", status.as_str()),
            ],
        )
    }

    /// Never held across an `.await`; nothing panics while it is held.
    fn values(&self) -> MutexGuard<'_, HashMap<Key, f64>> {
        self.values.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, name: &'static str, labels: Vec<(&'static str, String)>, v: f64) {
        *self.values().entry((name, labels)).or_insert(0.0) += v;
    }

    fn observe(&self, name: &'static str, v: f64) {
        let v = if v.is_finite() {
            v.clamp(0.0, 1.0e6)
        } else {
            0.0
        };
        let (count, sum) = match name {
            "materi_operation_latency_seconds" => (
                "materi_operation_latency_seconds_count",
                "materi_operation_latency_seconds_sum",
            ),
            "materi_commit_latency_seconds" => (
                "materi_commit_latency_seconds_count",
                "materi_commit_latency_seconds_sum",
            ),
            "materi_commit_batch_ops" => (
                "materi_commit_batch_ops_count",
                "materi_commit_batch_ops_sum",
            ),
            _ => ("materi_bus_lag_seconds_count", "materi_bus_lag_seconds_sum"),
        };
        self.add(count, Vec::new(), 1.0);
        self.add(sum, Vec::new(), v);
    }

    fn connections_by(&self, document: DocumentId, delta: f64) {
        let key = (
            "materi_websocket_connections_active",
            vec![("document_id", document.to_string())],
        );
        let mut values = self.values();
        match values.get_mut(&key) {
            Some(n) => {
                *n += delta;
                if *n <= 0.0 {
                    values.remove(&key);
                }
            }
            None if delta > 0.0 => {
                values.insert(key, delta);
            }
            None => {}
        }
    }
}

impl Metrics for MemoryMetrics {
    fn connection_opened(&self, document: DocumentId) {
        self.connections_by(document, 1.0);
    }

    fn connection_closed(&self, document: DocumentId) {
        self.connections_by(document, -1.0);
    }

    fn operation(&self, operation_type: OperationType, status: OpStatus) {
        self.add(
            "materi_operations_processed_total",
            vec![
                ("operation_type", operation_type.as_str().to_owned()),
                ("status", status.as_str().to_owned()),
            ],
            1.0,
        );
    }

    fn operation_latency(&self, seconds: f64) {
        self.observe("materi_operation_latency_seconds", seconds);
    }

    fn presence_broadcast(&self) {
        self.add("materi_presence_broadcasts_total", Vec::new(), 1.0);
    }

    fn connection_rejected(&self, reason: RejectReason) {
        self.add(
            "materi_connections_rejected_total",
            vec![("reason", reason.as_str().to_owned())],
            1.0,
        );
    }

    fn message_received(&self, bytes: usize) {
        self.add("materi_websocket_messages_received_total", Vec::new(), 1.0);
        self.add(
            "materi_websocket_received_bytes_total",
            Vec::new(),
            bytes as f64,
        );
    }

    fn message_sent(&self, bytes: usize) {
        self.add("materi_websocket_messages_sent_total", Vec::new(), 1.0);
        self.add(
            "materi_websocket_sent_bytes_total",
            Vec::new(),
            bytes as f64,
        );
    }

    fn commit(&self, ops: usize, seconds: f64) {
        self.observe("materi_commit_latency_seconds", seconds);
        self.observe("materi_commit_batch_ops", ops as f64);
    }

    fn commit_conflict(&self, retried: bool) {
        self.add("materi_commit_conflicts_total", Vec::new(), 1.0);
        if retried {
            self.add("materi_commit_retries_total", Vec::new(), 1.0);
        }
    }

    fn bus_lag(&self, seconds: f64) {
        self.observe("materi_bus_lag_seconds", seconds);
    }

    fn gap_repair(&self, source: GapSource) {
        self.add(
            "materi_bus_gap_repairs_total",
            vec![("source", source.as_str().to_owned())],
            1.0,
        );
    }

    fn outbound_queue_closed(&self) {
        self.add("materi_outbound_queue_closes_total", Vec::new(), 1.0);
    }

    fn jwks_refresh(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.add(
            "materi_jwks_refreshes_total",
            vec![("result", result.to_owned())],
            1.0,
        );
    }

    fn permission_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.add(
            "materi_permission_cache_lookups_total",
            vec![("result", result.to_owned())],
            1.0,
        );
    }

    fn document_opened(&self) {
        self.add("materi_documents_open", Vec::new(), 1.0);
    }

    fn document_closed(&self) {
        self.add("materi_documents_open", Vec::new(), -1.0);
    }

    fn room_failed(&self) {
        self.add("materi_rooms_failed_total", Vec::new(), 1.0);
    }
}
