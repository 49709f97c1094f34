//! The metrics port's contract: what an adapter is told is what it
//! reports, under the deployment document's names, as Prometheus would
//! read it; every call is accepted in any order and from many threads; no
//! value, however large, panics (metrics must not break the service).
//!
//! An adapter is read back through [`Samples`]: the exported samples
//! (`name{labels} value`), e.g. parsed from its Prometheus text. A counter
//! or histogram never recorded may be absent (read as 0).

use crate::Metrics;
pub use crate::metrics::samples::{Sample, Samples};
use crate::metrics::{GapSource, OpStatus, OperationType, RejectReason};
use relay_domain::DocumentId;

/// Runs every case against `metrics`, reading back with `read`.
pub fn run_all<M: Metrics>(metrics: &M, read: &dyn Fn(&M) -> Samples) {
    connections_are_counted_per_document(metrics, read);
    operations_are_counted_by_kind_and_status(metrics, read);
    histograms_count_and_sum(metrics, read);
    operator_counters_count(metrics, read);
    many_threads_lose_nothing(metrics, read);
    no_value_panics(metrics);
}

const CONNECTIONS: &str = "materi_websocket_connections_active";
const OPERATIONS: &str = "materi_operations_processed_total";

fn doc() -> DocumentId {
    DocumentId::new(uuid::Uuid::new_v4())
}

pub fn connections_are_counted_per_document<M: Metrics>(m: &M, read: &dyn Fn(&M) -> Samples) {
    let (a, b) = (doc(), doc());
    let (sa, sb) = (a.to_string(), b.to_string());
    let before = read(m).sum(CONNECTIONS, &[]);
    m.connection_opened(a);
    m.connection_opened(a);
    m.connection_opened(b);
    let s = read(m);
    assert_eq!(s.sum(CONNECTIONS, &[("document_id", &sa)]), 2.0, "two on a");
    assert_eq!(s.sum(CONNECTIONS, &[("document_id", &sb)]), 1.0, "one on b");
    assert_eq!(s.sum(CONNECTIONS, &[]) - before, 3.0, "the sum is exact");
    m.connection_closed(a);
    m.connection_closed(b);
    let s = read(m);
    assert_eq!(s.sum(CONNECTIONS, &[("document_id", &sa)]), 1.0);
    assert!(
        !s.has(CONNECTIONS, &[("document_id", &sb)]),
        "a document's series disappears with its last connection"
    );
    m.connection_closed(a);
    // A stray close (never opened) neither goes below zero nor shows up.
    m.connection_closed(a);
    let s = read(m);
    assert!(!s.has(CONNECTIONS, &[("document_id", &sa)]));
    assert_eq!(s.sum(CONNECTIONS, &[]), before);
}

pub fn operations_are_counted_by_kind_and_status<M: Metrics>(m: &M, read: &dyn Fn(&M) -> Samples) {
    let before = read(m);
    let mut n = 0;
    for (i, t) in OperationType::ALL.iter().enumerate() {
        for (j, s) in OpStatus::ALL.iter().enumerate() {
            for _ in 0..(i * 5 + j + 1) {
                m.operation(*t, *s);
                n += 1;
            }
        }
    }
    let after = read(m);
    for (i, t) in OperationType::ALL.iter().enumerate() {
        for (j, s) in OpStatus::ALL.iter().enumerate() {
            let labels = [("operation_type", t.as_str()), ("status", s.as_str())];
            assert_eq!(
                after.sum(OPERATIONS, &labels) - before.sum(OPERATIONS, &labels),
                (i * 5 + j + 1) as f64,
                "{labels:?}"
            );
        }
    }
    assert_eq!(
        after.sum(OPERATIONS, &[]) - before.sum(OPERATIONS, &[]),
        n as f64
    );
    for s in after.matching(OPERATIONS, &[]) {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["operation_type", "status"], "only the seed's labels");
    }
}

pub fn histograms_count_and_sum<M: Metrics>(m: &M, read: &dyn Fn(&M) -> Samples) {
    let delta = |name: &str, f: &dyn Fn()| {
        let before = read(m);
        f();
        let after = read(m);
        (
            after.sum(&format!("{name}_count"), &[]) - before.sum(&format!("{name}_count"), &[]),
            after.sum(&format!("{name}_sum"), &[]) - before.sum(&format!("{name}_sum"), &[]),
        )
    };
    let (count, sum) = delta("materi_operation_latency_seconds", &|| {
        m.operation_latency(0.002);
        m.operation_latency(0.2);
    });
    assert_eq!(count, 2.0);
    assert!((sum - 0.202).abs() < 1e-9, "{sum}");
    let (count, sum) = delta("materi_commit_latency_seconds", &|| m.commit(7, 0.004));
    assert_eq!(count, 1.0);
    assert!((sum - 0.004).abs() < 1e-9);
    let (count, sum) = delta("materi_commit_batch_ops", &|| m.commit(7, 0.004));
    assert_eq!((count, sum), (1.0, 7.0));
    let (count, sum) = delta("materi_bus_lag_seconds", &|| m.bus_lag(0.003));
    assert_eq!(count, 1.0);
    assert!((sum - 0.003).abs() < 1e-9);
}

pub fn operator_counters_count<M: Metrics>(m: &M, read: &dyn Fn(&M) -> Samples) {
    let before = read(m);
    m.presence_broadcast();
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        for _ in 0..=i {
            m.connection_rejected(*r);
        }
    }
    m.message_received(10);
    m.message_received(5);
    m.message_sent(100);
    m.commit_conflict(true);
    m.commit_conflict(false);
    m.gap_repair(GapSource::Bus);
    m.gap_repair(GapSource::Store);
    m.gap_repair(GapSource::Store);
    m.outbound_queue_closed();
    m.jwks_refresh(true);
    m.jwks_refresh(false);
    m.jwks_refresh(false);
    m.permission_lookup(true);
    m.permission_lookup(false);
    m.permission_lookup(false);
    m.document_opened();
    m.document_opened();
    m.document_closed();
    m.room_failed();
    let after = read(m);
    let d =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    assert_eq!(d("materi_presence_broadcasts_total", &[]), 1.0);
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        assert_eq!(
            d(
                "materi_connections_rejected_total",
                &[("reason", r.as_str())]
            ),
            (i + 1) as f64
        );
    }
    assert_eq!(d("materi_websocket_messages_received_total", &[]), 2.0);
    assert_eq!(d("materi_websocket_received_bytes_total", &[]), 15.0);
    assert_eq!(d("materi_websocket_messages_sent_total", &[]), 1.0);
    assert_eq!(d("materi_websocket_sent_bytes_total", &[]), 100.0);
    assert_eq!(d("materi_commit_conflicts_total", &[]), 2.0);
    assert_eq!(d("materi_commit_retries_total", &[]), 1.0);
    assert_eq!(d("materi_bus_gap_repairs_total", &[("source", "bus")]), 1.0);
    assert_eq!(
        d("materi_bus_gap_repairs_total", &[("source", "store")]),
        2.0
    );
    assert_eq!(d("materi_outbound_queue_closes_total", &[]), 1.0);
    assert_eq!(d("materi_jwks_refreshes_total", &[("result", "ok")]), 1.0);
    assert_eq!(
        d("materi_jwks_refreshes_total", &[("result", "error")]),
        2.0
    );
    assert_eq!(
        d(
            "materi_permission_cache_lookups_total",
            &[("result", "hit")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "materi_permission_cache_lookups_total",
            &[("result", "miss")]
        ),
        2.0
    );
    assert_eq!(d("materi_documents_open", &[]), 1.0);
    assert_eq!(d("materi_rooms_failed_total", &[]), 1.0);
    m.document_closed();
}

pub fn many_threads_lose_nothing<M: Metrics>(m: &M, read: &dyn Fn(&M) -> Samples) {
    let docs: Vec<DocumentId> = (0..8).map(|_| doc()).collect();
    let labels = [("operation_type", "insert"), ("status", "ok")];
    let before = read(m);
    std::thread::scope(|s| {
        for t in 0..8 {
            let docs = &docs;
            s.spawn(move || {
                for i in 0..1000 {
                    m.operation(OperationType::Insert, OpStatus::Ok);
                    m.message_sent(1);
                    m.connection_opened(docs[(t + i) % 8]);
                }
            });
        }
    });
    let after = read(m);
    assert_eq!(
        after.sum(OPERATIONS, &labels) - before.sum(OPERATIONS, &labels),
        8000.0
    );
    let sent = "materi_websocket_sent_bytes_total";
    assert_eq!(after.sum(sent, &[]) - before.sum(sent, &[]), 8000.0);
    for d in &docs {
        assert_eq!(
            after.sum(CONNECTIONS, &[("document_id", &d.to_string())]),
            1000.0
        );
        for _ in 0..1000 {
            m.connection_closed(*d);
        }
    }
    assert_eq!(read(m).sum(CONNECTIONS, &[]), before.sum(CONNECTIONS, &[]));
}

pub fn no_value_panics<M: Metrics>(m: &M) {
    for s in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::MAX, 1e300] {
        m.operation_latency(s);
        m.commit(usize::MAX, s);
        m.bus_lag(s);
    }
    m.message_received(usize::MAX);
    m.message_sent(usize::MAX);
}
