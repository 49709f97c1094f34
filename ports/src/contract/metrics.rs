//! The metrics port's contract: what an adapter is told is what it
//! reports, under the deployment document's names, as Prometheus would
//! read it; every call is accepted in any order and from many threads; no
//! value, however large, panics (metrics must not break the service).
//!
//! An adapter is read back through [`Samples`]: the exported samples
//! (`name{labels} value`), e.g. parsed from its Prometheus text. A counter
//! or histogram never recorded may be absent (read as 0).

use crate::Metrics;
use crate::metrics::names::{self, Histogram};
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

const CONNECTIONS: &str = names::WEBSOCKET_CONNECTIONS_ACTIVE;
const OPERATIONS: &str = names::OPERATIONS_PROCESSED.exported;

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
    assert_eq!(
        s.sum(CONNECTIONS, &[(names::DOCUMENT_ID, &sa)]),
        2.0,
        "two on a"
    );
    assert_eq!(
        s.sum(CONNECTIONS, &[(names::DOCUMENT_ID, &sb)]),
        1.0,
        "one on b"
    );
    assert_eq!(s.sum(CONNECTIONS, &[]) - before, 3.0, "the sum is exact");
    m.connection_closed(a);
    m.connection_closed(b);
    let s = read(m);
    assert_eq!(s.sum(CONNECTIONS, &[(names::DOCUMENT_ID, &sa)]), 1.0);
    assert!(
        !s.has(CONNECTIONS, &[(names::DOCUMENT_ID, &sb)]),
        "a document's series disappears with its last connection"
    );
    m.connection_closed(a);
    // A stray close (never opened) neither goes below zero nor shows up.
    m.connection_closed(a);
    let s = read(m);
    assert!(!s.has(CONNECTIONS, &[(names::DOCUMENT_ID, &sa)]));
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
            let labels = [
                (names::OPERATION_TYPE, t.as_str()),
                (names::STATUS, s.as_str()),
            ];
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
        assert_eq!(
            keys,
            [names::OPERATION_TYPE, names::STATUS],
            "only the seed's labels"
        );
    }
}

pub fn histograms_count_and_sum<M: Metrics>(m: &M, read: &dyn Fn(&M) -> Samples) {
    let delta = |h: Histogram, f: &dyn Fn()| {
        let before = read(m);
        f();
        let after = read(m);
        (
            after.sum(h.count, &[]) - before.sum(h.count, &[]),
            after.sum(h.sum, &[]) - before.sum(h.sum, &[]),
        )
    };
    let (count, sum) = delta(names::OPERATION_LATENCY, &|| {
        m.operation_latency(0.002);
        m.operation_latency(0.2);
    });
    assert_eq!(count, 2.0);
    assert!((sum - 0.202).abs() < 1e-9, "{sum}");
    let (count, sum) = delta(names::COMMIT_LATENCY, &|| m.commit(7, 0.004));
    assert_eq!(count, 1.0);
    assert!((sum - 0.004).abs() < 1e-9);
    let (count, sum) = delta(names::COMMIT_BATCH_OPS, &|| m.commit(7, 0.004));
    assert_eq!((count, sum), (1.0, 7.0));
    let (count, sum) = delta(names::BUS_LAG, &|| m.bus_lag(0.003));
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
    assert_eq!(d(names::PRESENCE_BROADCASTS.exported, &[]), 1.0);
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        assert_eq!(
            d(
                names::CONNECTIONS_REJECTED.exported,
                &[(names::REASON, r.as_str())]
            ),
            (i + 1) as f64
        );
    }
    assert_eq!(d(names::WEBSOCKET_MESSAGES_RECEIVED.exported, &[]), 2.0);
    assert_eq!(d(names::WEBSOCKET_RECEIVED_BYTES.exported, &[]), 15.0);
    assert_eq!(d(names::WEBSOCKET_MESSAGES_SENT.exported, &[]), 1.0);
    assert_eq!(d(names::WEBSOCKET_SENT_BYTES.exported, &[]), 100.0);
    assert_eq!(d(names::COMMIT_CONFLICTS.exported, &[]), 2.0);
    assert_eq!(d(names::COMMIT_RETRIES.exported, &[]), 1.0);
    assert_eq!(
        d(
            names::BUS_GAP_REPAIRS.exported,
            &[(names::SOURCE, GapSource::Store.as_str())]
        ),
        2.0
    );
    assert_eq!(d(names::OUTBOUND_QUEUE_CLOSES.exported, &[]), 1.0);
    assert_eq!(
        d(
            names::JWKS_REFRESHES.exported,
            &[(names::RESULT, names::OK)]
        ),
        1.0
    );
    assert_eq!(
        d(
            names::JWKS_REFRESHES.exported,
            &[(names::RESULT, names::ERROR)]
        ),
        2.0
    );
    assert_eq!(
        d(
            names::PERMISSION_CACHE_LOOKUPS.exported,
            &[(names::RESULT, names::HIT)]
        ),
        1.0
    );
    assert_eq!(
        d(
            names::PERMISSION_CACHE_LOOKUPS.exported,
            &[(names::RESULT, names::MISS)]
        ),
        2.0
    );
    assert_eq!(d(names::DOCUMENTS_OPEN, &[]), 1.0);
    assert_eq!(d(names::ROOMS_FAILED.exported, &[]), 1.0);
    m.document_closed();
}

pub fn many_threads_lose_nothing<M: Metrics>(m: &M, read: &dyn Fn(&M) -> Samples) {
    let docs: Vec<DocumentId> = (0..8).map(|_| doc()).collect();
    let labels = [
        (names::OPERATION_TYPE, OperationType::Insert.as_str()),
        (names::STATUS, OpStatus::Ok.as_str()),
    ];
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
    let sent = names::WEBSOCKET_SENT_BYTES.exported;
    assert_eq!(after.sum(sent, &[]) - before.sum(sent, &[]), 8000.0);
    for d in &docs {
        assert_eq!(
            after.sum(CONNECTIONS, &[(names::DOCUMENT_ID, &d.to_string())]),
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
