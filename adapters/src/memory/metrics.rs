//! Metrics counted in memory, for tests to read back.

use relay_domain::DocumentId;
use relay_ports::{Metrics, OpStatus};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`Metrics`] that only count, in memory, for tests to read through
/// [`MemoryMetrics::snapshot`]. Nothing is exported.
#[derive(Debug, Default)]
pub struct MemoryMetrics {
    counts: Mutex<MetricsSnapshot>,
}

/// What [`MemoryMetrics`] has counted so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Open connections per document (the gauge
    /// `materi_websocket_connections_active`); a document whose count is
    /// back to zero is left out.
    pub connections: HashMap<DocumentId, i64>,
    /// `materi_operations_processed_total` by `(operation_type, status)`.
    pub operations: HashMap<(&'static str, OpStatus), u64>,
    /// How many `materi_operation_latency_seconds` observations, and their
    /// sum.
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
    /// `materi_presence_broadcasts_total`.
    pub presence_broadcasts: u64,
}

impl MetricsSnapshot {
    /// Open connections on `document`.
    pub fn connections(&self, document: DocumentId) -> i64 {
        self.connections.get(&document).copied().unwrap_or(0)
    }

    /// Operations counted with these labels.
    pub fn operations(&self, operation_type: &str, status: OpStatus) -> u64 {
        self.operations
            .iter()
            .filter(|((t, s), _)| *t == operation_type && *s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

impl MemoryMetrics {
    pub fn new() -> Self {
        MemoryMetrics::default()
    }

    /// A copy of every count so far.
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.counts().clone()
    }

    /// Never held across an `.await`; nothing panics while it is held.
    fn counts(&self) -> MutexGuard<'_, MetricsSnapshot> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add_connections(&self, document: DocumentId, delta: i64) {
        let mut counts = self.counts();
        let open = counts.connections.entry(document).or_insert(0);
        *open += delta;
        if *open == 0 {
            counts.connections.remove(&document);
        }
    }
}

impl Metrics for MemoryMetrics {
    fn connection_opened(&self, document: DocumentId) {
        self.add_connections(document, 1);
    }

    fn connection_closed(&self, document: DocumentId) {
        self.add_connections(document, -1);
    }

    fn operation(&self, operation_type: &'static str, status: OpStatus) {
        *self
            .counts()
            .operations
            .entry((operation_type, status))
            .or_insert(0) += 1;
    }

    fn operation_latency(&self, seconds: f64) {
        let mut counts = self.counts();
        counts.latency_count += 1;
        counts.latency_sum_seconds += seconds;
    }

    fn presence_broadcast(&self) {
        self.counts().presence_broadcasts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn connections_are_counted_per_document_and_closed_ones_forgotten() {
        let metrics = MemoryMetrics::new();
        let (a, b) = (
            DocumentId::new(Uuid::new_v4()),
            DocumentId::new(Uuid::new_v4()),
        );
        metrics.connection_opened(a);
        metrics.connection_opened(a);
        metrics.connection_opened(b);
        metrics.connection_closed(a);
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.connections(a), snapshot.connections(b)), (1, 1));
        metrics.connection_closed(a);
        metrics.connection_closed(b);
        assert!(metrics.snapshot().connections.is_empty());
        metrics.connection_closed(b);
        assert_eq!(
            metrics.snapshot().connections(b),
            -1,
            "closing more than was opened shows"
        );
    }

    #[test]
    fn operations_latencies_and_broadcasts_are_counted() {
        let metrics = MemoryMetrics::new();
        metrics.operation("insert", OpStatus::Ok);
        metrics.operation("insert", OpStatus::Ok);
        metrics.operation("insert", OpStatus::Duplicate);
        metrics.operation("delete", OpStatus::Rejected);
        metrics.operation_latency(0.25);
        metrics.operation_latency(0.5);
        metrics.presence_broadcast();
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.operations("insert", OpStatus::Ok), 2);
        assert_eq!(snapshot.operations("insert", OpStatus::Duplicate), 1);
        assert_eq!(snapshot.operations("delete", OpStatus::Rejected), 1);
        assert_eq!(snapshot.operations("delete", OpStatus::Ok), 0);
        assert_eq!(snapshot.latency_count, 2);
        assert_eq!(snapshot.latency_sum_seconds, 0.75);
        assert_eq!(snapshot.presence_broadcasts, 1);
    }
}
