//! Every exported metric name and fixed label value, once: the adapters
//! record under these, and the tests read them back by the same constants.
//! The names are the deployment document's, byte for byte
//! (`exported_names_are_the_deployment_documents` below pins them).

/// A counter. OpenTelemetry's instrument is named without `_total`, which
/// the Prometheus exporter appends; Prometheus reads the exported name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The instrument's name, without `_total`.
    pub instrument: &'static str,
    /// The name Prometheus reads: the instrument's plus `_total`.
    pub exported: &'static str,
}

/// A histogram, and its `_count` and `_sum` series as Prometheus reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub name: &'static str,
    pub count: &'static str,
    pub sum: &'static str,
    pub bucket: &'static str,
}

macro_rules! counter {
    ($name:literal) => {
        Counter {
            instrument: $name,
            exported: concat!($name, "_total"),
        }
    };
}

macro_rules! histogram {
    ($name:literal) => {
        Histogram {
            name: $name,
            count: concat!($name, "_count"),
            sum: concat!($name, "_sum"),
            bucket: concat!($name, "_bucket"),
        }
    };
}

/// Gauge: open WebSocket connections, by [`DOCUMENT_ID`].
pub const WEBSOCKET_CONNECTIONS_ACTIVE: &str = "materi_websocket_connections_active";
/// By [`OPERATION_TYPE`] and [`STATUS`].
pub const OPERATIONS_PROCESSED: Counter = counter!("materi_operations_processed");
pub const OPERATION_LATENCY: Histogram = histogram!("materi_operation_latency_seconds");
pub const PRESENCE_BROADCASTS: Counter = counter!("materi_presence_broadcasts");
/// By [`REASON`].
pub const CONNECTIONS_REJECTED: Counter = counter!("materi_connections_rejected");
pub const WEBSOCKET_MESSAGES_RECEIVED: Counter = counter!("materi_websocket_messages_received");
pub const WEBSOCKET_RECEIVED_BYTES: Counter = counter!("materi_websocket_received_bytes");
pub const WEBSOCKET_MESSAGES_SENT: Counter = counter!("materi_websocket_messages_sent");
pub const WEBSOCKET_SENT_BYTES: Counter = counter!("materi_websocket_sent_bytes");
pub const COMMIT_LATENCY: Histogram = histogram!("materi_commit_latency_seconds");
pub const COMMIT_BATCH_OPS: Histogram = histogram!("materi_commit_batch_ops");
pub const COMMIT_CONFLICTS: Counter = counter!("materi_commit_conflicts");
pub const COMMIT_RETRIES: Counter = counter!("materi_commit_retries");
pub const BUS_LAG: Histogram = histogram!("materi_bus_lag_seconds");
/// By [`SOURCE`].
pub const BUS_GAP_REPAIRS: Counter = counter!("materi_bus_gap_repairs");
pub const OUTBOUND_QUEUE_CLOSES: Counter = counter!("materi_outbound_queue_closes");
/// By [`RESULT`]: [`OK`] or [`ERROR`].
pub const JWKS_REFRESHES: Counter = counter!("materi_jwks_refreshes");
/// By [`RESULT`]: [`HIT`] or [`MISS`].
pub const PERMISSION_CACHE_LOOKUPS: Counter = counter!("materi_permission_cache_lookups");
/// Gauge (an up-down counter, so no `_total`).
pub const DOCUMENTS_OPEN: &str = "materi_documents_open";
pub const ROOMS_FAILED: Counter = counter!("materi_rooms_failed");

/// Label: the document of [`WEBSOCKET_CONNECTIONS_ACTIVE`].
pub const DOCUMENT_ID: &str = "document_id";
/// Label: an [`OperationType`](super::OperationType).
pub const OPERATION_TYPE: &str = "operation_type";
/// Label: an [`OpStatus`](super::OpStatus).
pub const STATUS: &str = "status";
/// Label: a [`RejectReason`](super::RejectReason).
pub const REASON: &str = "reason";
/// Label: a [`GapSource`](super::GapSource).
pub const SOURCE: &str = "source";
/// Label of [`JWKS_REFRESHES`] and [`PERMISSION_CACHE_LOOKUPS`].
pub const RESULT: &str = "result";

/// [`DOCUMENT_ID`] of the documents beyond METRICS_DOCUMENT_SERIES.
pub const OTHER_DOCUMENTS: &str = "other";
/// [`RESULT`] of a JWKS fetch that worked.
pub const OK: &str = "ok";
/// [`RESULT`] of a JWKS fetch that failed.
pub const ERROR: &str = "error";
/// [`RESULT`] of a permission answered from the cache.
pub const HIT: &str = "hit";
/// [`RESULT`] of a permission asked of the source again.
pub const MISS: &str = "miss";

#[cfg(test)]
mod tests {
    use super::*;

    /// The names dashboards and alerts query: changing one is a breaking
    /// change for operators, so it must be changed here on purpose.
    #[test]
    fn exported_names_are_the_deployment_documents() {
        let counters = [
            (OPERATIONS_PROCESSED, "materi_operations_processed_total"),
            (PRESENCE_BROADCASTS, "materi_presence_broadcasts_total"),
            (CONNECTIONS_REJECTED, "materi_connections_rejected_total"),
            (
                WEBSOCKET_MESSAGES_RECEIVED,
                "materi_websocket_messages_received_total",
            ),
            (
                WEBSOCKET_RECEIVED_BYTES,
                "materi_websocket_received_bytes_total",
            ),
            (
                WEBSOCKET_MESSAGES_SENT,
                "materi_websocket_messages_sent_total",
            ),
            (WEBSOCKET_SENT_BYTES, "materi_websocket_sent_bytes_total"),
            (COMMIT_CONFLICTS, "materi_commit_conflicts_total"),
            (COMMIT_RETRIES, "materi_commit_retries_total"),
            (BUS_GAP_REPAIRS, "materi_bus_gap_repairs_total"),
            (OUTBOUND_QUEUE_CLOSES, "materi_outbound_queue_closes_total"),
            (JWKS_REFRESHES, "materi_jwks_refreshes_total"),
            (
                PERMISSION_CACHE_LOOKUPS,
                "materi_permission_cache_lookups_total",
            ),
            (ROOMS_FAILED, "materi_rooms_failed_total"),
        ];
        for (c, exported) in counters {
            assert_eq!(c.exported, exported);
            assert_eq!(Some(c.instrument), exported.strip_suffix("_total"));
        }
        let histograms = [
            (OPERATION_LATENCY, "materi_operation_latency_seconds"),
            (COMMIT_LATENCY, "materi_commit_latency_seconds"),
            (COMMIT_BATCH_OPS, "materi_commit_batch_ops"),
            (BUS_LAG, "materi_bus_lag_seconds"),
        ];
        for (h, name) in histograms {
            assert_eq!(h.name, name);
            assert_eq!(h.count, format!("{name}_count"));
            assert_eq!(h.sum, format!("{name}_sum"));
            assert_eq!(h.bucket, format!("{name}_bucket"));
        }
        assert_eq!(
            WEBSOCKET_CONNECTIONS_ACTIVE,
            "materi_websocket_connections_active"
        );
        assert_eq!(DOCUMENTS_OPEN, "materi_documents_open");
        assert_eq!(
            [DOCUMENT_ID, OPERATION_TYPE, STATUS, REASON, SOURCE, RESULT],
            [
                "document_id",
                "operation_type",
                "status",
                "reason",
                "source",
                "result"
            ]
        );
        assert_eq!(
            [OTHER_DOCUMENTS, OK, ERROR, HIT, MISS],
            ["other", "ok", "error", "hit", "miss"]
        );
    }
}
