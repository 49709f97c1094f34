//! Metrics, named as the deployment document names them, plus what an
//! operator needs besides. Every label value is one of a closed set (the
//! enums below): nothing a client sends becomes a label, except the
//! document id of `materi_websocket_connections_active`, which the adapter
//! bounds (METRICS_DOCUMENT_SERIES).
//!
//! Recording is on the hot path (every op, every frame): implementations
//! must not serialise connections on one lock.

pub mod names;
pub mod samples;

use relay_domain::DocumentId;

/// What an operation did, the `operation_type` label of
/// `materi_operations_processed_total`: the domain's kind of its delta
/// (which is also the `operation_type` column of the operations table).
pub use relay_domain::OperationKind as OperationType;

/// How an operation ended, the `status` label of
/// `materi_operations_processed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpStatus {
    /// Committed (and acknowledged).
    Ok,
    /// A re-sent op that was already committed: acknowledged again.
    Duplicate,
    /// Not committed because other writers kept winning the race for the
    /// document's next version (answered `unavailable`, nothing written).
    Conflict,
    /// Refused for the client's fault (invalid, stale, out of order...).
    Rejected,
    /// Failed for the server's fault (store down, outcome unknown...).
    Error,
}

impl OpStatus {
    pub const ALL: [OpStatus; 5] = [
        OpStatus::Ok,
        OpStatus::Duplicate,
        OpStatus::Conflict,
        OpStatus::Rejected,
        OpStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Ok => "ok",
            OpStatus::Duplicate => "duplicate",
            OpStatus::Conflict => "conflict",
            OpStatus::Rejected => "rejected",
            OpStatus::Error => "error",
        }
    }
}

/// Why a connection was refused, the `reason` label of
/// `materi_connections_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No token, or one that does not verify (HTTP 401, close 4401).
    Unauthorized,
    /// No access to the document, or an origin not allowed (403, 4403).
    Forbidden,
    /// MAX_CONNECTIONS reached (503).
    Capacity,
    /// A malformed upgrade or first message (400, 4400, 4408).
    BadRequest,
    /// Draining, or a dependency (keys, permissions, store) unavailable
    /// (503, 1013).
    Unavailable,
    /// Over a per-address or per-user limit (pending connections, joined
    /// connections, join rate: closed at once, or 4429).
    RateLimited,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::Unauthorized,
        RejectReason::Forbidden,
        RejectReason::Capacity,
        RejectReason::BadRequest,
        RejectReason::Unavailable,
        RejectReason::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::Forbidden => "forbidden",
            RejectReason::Capacity => "capacity",
            RejectReason::BadRequest => "bad_request",
            RejectReason::Unavailable => "unavailable",
            RejectReason::RateLimited => "rate_limited",
        }
    }
}

/// Where a gap in a document's ops from other instances was filled from,
/// the `source` label of `materi_bus_gap_repairs_total`: always the
/// operation store, the source of truth (the bus keeps no history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GapSource {
    /// The operation store.
    Store,
}

impl GapSource {
    pub const ALL: [GapSource; 1] = [GapSource::Store];

    pub fn as_str(self) -> &'static str {
        match self {
            GapSource::Store => "store",
        }
    }
}

/// A duration in seconds as a histogram records it: never negative or
/// NaN, and bounded so sums stay finite.
pub fn seconds(s: f64) -> f64 {
    if s.is_finite() {
        s.clamp(0.0, 1.0e6)
    } else {
        0.0
    }
}

#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait Metrics: Send + Sync + 'static {
    /// `materi_websocket_connections_active{document_id}` goes up.
    fn connection_opened(&self, document: DocumentId);
    /// ... and down.
    fn connection_closed(&self, document: DocumentId);
    /// `materi_operations_processed_total{operation_type, status}`.
    fn operation(&self, operation_type: OperationType, status: OpStatus);
    /// `materi_operation_latency_seconds`: submit received to ack sent.
    fn operation_latency(&self, seconds: f64);
    /// `materi_presence_broadcasts_total`.
    fn presence_broadcast(&self);

    /// `materi_connections_rejected_total{reason}`.
    fn connection_rejected(&self, reason: RejectReason);
    /// `materi_websocket_messages_received_total` and
    /// `materi_websocket_received_bytes_total`.
    fn message_received(&self, bytes: usize);
    /// `materi_websocket_messages_sent_total` and
    /// `materi_websocket_sent_bytes_total`.
    fn message_sent(&self, bytes: usize);
    /// One append to the store that committed `ops` ops:
    /// `materi_commit_latency_seconds`, `materi_commit_batch_ops`.
    fn commit(&self, ops: usize, seconds: f64);
    /// `materi_commit_conflicts_total`: an append lost the race for a
    /// version to another writer; `retried` also counts
    /// `materi_commit_retries_total` (the batch is rebased and appended
    /// again).
    fn commit_conflict(&self, retried: bool);
    /// `materi_bus_lag_seconds`: published (by any instance, this one
    /// included) to received here through the bus; wall clocks, so skew
    /// between hosts shows up.
    fn bus_lag(&self, seconds: f64);
    /// `materi_bus_gap_repairs_total{source}`.
    fn gap_repair(&self, source: GapSource);
    /// `materi_outbound_queue_closes_total`: a session closed because its
    /// outbound queue was full (a client that does not read).
    fn outbound_queue_closed(&self);
    /// `materi_jwks_refreshes_total{result}`.
    fn jwks_refresh(&self, ok: bool);
    /// `materi_permission_cache_lookups_total{result}`: an open session's
    /// role was answered from its cached permission (`hit`) or asked of the
    /// permission source again (`miss`).
    fn permission_lookup(&self, hit: bool);
    /// `materi_documents_open` goes up...
    fn document_opened(&self);
    /// ... and down.
    fn document_closed(&self);
    /// `materi_rooms_failed_total`: a document's room panicked.
    fn room_failed(&self);
}

/// Metrics that record nothing: for measuring what recording costs, and
/// for tools that need none.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetrics;

impl Metrics for NoMetrics {
    fn connection_opened(&self, _: DocumentId) {}
    fn connection_closed(&self, _: DocumentId) {}
    fn operation(&self, _: OperationType, _: OpStatus) {}
    fn operation_latency(&self, _: f64) {}
    fn presence_broadcast(&self) {}
    fn connection_rejected(&self, _: RejectReason) {}
    fn message_received(&self, _: usize) {}
    fn message_sent(&self, _: usize) {}
    fn commit(&self, _: usize, _: f64) {}
    fn commit_conflict(&self, _: bool) {}
    fn bus_lag(&self, _: f64) {}
    fn gap_repair(&self, _: GapSource) {}
    fn outbound_queue_closed(&self) {}
    fn jwks_refresh(&self, _: bool) {}
    fn permission_lookup(&self, _: bool) {}
    fn document_opened(&self) {}
    fn document_closed(&self) {}
    fn room_failed(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_distinct() {
        let names = |v: Vec<&str>| {
            let n = v.len();
            let set: std::collections::HashSet<_> = v.into_iter().collect();
            assert_eq!(set.len(), n);
        };
        names(OperationType::ALL.iter().map(|t| t.as_str()).collect());
        names(OpStatus::ALL.iter().map(|t| t.as_str()).collect());
        names(RejectReason::ALL.iter().map(|t| t.as_str()).collect());
        names(GapSource::ALL.iter().map(|t| t.as_str()).collect());
    }

    #[test]
    fn seconds_are_finite_and_never_negative() {
        assert_eq!(seconds(0.25), 0.25);
        assert_eq!(seconds(-1.0), 0.0);
        assert_eq!(seconds(f64::NAN), 0.0);
        assert_eq!(seconds(f64::INFINITY), 0.0);
        assert_eq!(seconds(f64::NEG_INFINITY), 0.0);
        assert_eq!(seconds(1e300), 1.0e6);
    }
}
