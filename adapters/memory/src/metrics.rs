//! Metrics counted in memory, for tests to read back.

use relay_domain::DocumentId;
use relay_ports::Metrics;
use relay_ports::metrics::names::{self, Histogram};
use relay_ports::metrics::samples::{Sample, Samples};
use relay_ports::metrics::{GapSource, OpStatus, OperationType, RejectReason, seconds};
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
            names::WEBSOCKET_CONNECTIONS_ACTIVE,
            &[(names::DOCUMENT_ID, &document.to_string())],
        )
    }

    /// Operations counted with these labels.
    pub fn operations(&self, operation_type: OperationType, status: OpStatus) -> f64 {
        self.samples().sum(
            names::OPERATIONS_PROCESSED.exported,
            &[
                (names::OPERATION_TYPE, operation_type.as_str()),
                (names::STATUS, status.as_str()),
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

    /// One observation of `histogram` (clamped as every histogram's values
    /// are, [`seconds`]).
    fn observe(&self, histogram: Histogram, v: f64) {
        self.add(histogram.count, Vec::new(), 1.0);
        self.add(histogram.sum, Vec::new(), seconds(v));
    }

    fn connections_by(&self, document: DocumentId, delta: f64) {
        let key = (
            names::WEBSOCKET_CONNECTIONS_ACTIVE,
            vec![(names::DOCUMENT_ID, document.to_string())],
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
            names::OPERATIONS_PROCESSED.exported,
            vec![
                (names::OPERATION_TYPE, operation_type.as_str().to_owned()),
                (names::STATUS, status.as_str().to_owned()),
            ],
            1.0,
        );
    }

    fn operation_latency(&self, seconds: f64) {
        self.observe(names::OPERATION_LATENCY, seconds);
    }

    fn presence_broadcast(&self) {
        self.add(names::PRESENCE_BROADCASTS.exported, Vec::new(), 1.0);
    }

    fn connection_rejected(&self, reason: RejectReason) {
        self.add(
            names::CONNECTIONS_REJECTED.exported,
            vec![(names::REASON, reason.as_str().to_owned())],
            1.0,
        );
    }

    fn message_received(&self, bytes: usize) {
        self.add(names::WEBSOCKET_MESSAGES_RECEIVED.exported, Vec::new(), 1.0);
        self.add(
            names::WEBSOCKET_RECEIVED_BYTES.exported,
            Vec::new(),
            bytes as f64,
        );
    }

    fn message_sent(&self, bytes: usize) {
        self.add(names::WEBSOCKET_MESSAGES_SENT.exported, Vec::new(), 1.0);
        self.add(
            names::WEBSOCKET_SENT_BYTES.exported,
            Vec::new(),
            bytes as f64,
        );
    }

    fn commit(&self, ops: usize, seconds: f64) {
        self.observe(names::COMMIT_LATENCY, seconds);
        self.observe(names::COMMIT_BATCH_OPS, ops as f64);
    }

    fn commit_conflict(&self, retried: bool) {
        self.add(names::COMMIT_CONFLICTS.exported, Vec::new(), 1.0);
        if retried {
            self.add(names::COMMIT_RETRIES.exported, Vec::new(), 1.0);
        }
    }

    fn bus_lag(&self, seconds: f64) {
        self.observe(names::BUS_LAG, seconds);
    }

    fn gap_repair(&self, source: GapSource) {
        self.add(
            names::BUS_GAP_REPAIRS.exported,
            vec![(names::SOURCE, source.as_str().to_owned())],
            1.0,
        );
    }

    fn outbound_queue_closed(&self) {
        self.add(names::OUTBOUND_QUEUE_CLOSES.exported, Vec::new(), 1.0);
    }

    fn jwks_refresh(&self, ok: bool) {
        let result = if ok { names::OK } else { names::ERROR };
        self.add(
            names::JWKS_REFRESHES.exported,
            vec![(names::RESULT, result.to_owned())],
            1.0,
        );
    }

    fn permission_lookup(&self, hit: bool) {
        let result = if hit { names::HIT } else { names::MISS };
        self.add(
            names::PERMISSION_CACHE_LOOKUPS.exported,
            vec![(names::RESULT, result.to_owned())],
            1.0,
        );
    }

    fn document_opened(&self) {
        self.add(names::DOCUMENTS_OPEN, Vec::new(), 1.0);
    }

    fn document_closed(&self) {
        self.add(names::DOCUMENTS_OPEN, Vec::new(), -1.0);
    }

    fn room_failed(&self) {
        self.add(names::ROOMS_FAILED.exported, Vec::new(), 1.0);
    }
}
