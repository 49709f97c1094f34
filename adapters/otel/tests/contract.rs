//! The OpenTelemetry metrics adapter: the metrics contract read back
//! through its Prometheus text, the exact names, types and buckets of the
//! deployment document, and the bounded document series.

use relay_adapter_otel::{OtelMetrics, OtelSettings};
use relay_domain::DocumentId;
use relay_ports::Metrics;
use relay_ports::contract::metrics::Samples;
use relay_ports::metrics::{OpStatus, OperationType};

fn metrics(document_series: usize) -> OtelMetrics {
    OtelMetrics::new(&OtelSettings {
        document_series,
        otlp: None,
    })
    .expect("metrics")
}

fn read(m: &OtelMetrics) -> Samples {
    Samples::parse_prometheus(&m.prometheus_text())
}

#[test]
fn the_otel_metrics_keep_the_metrics_contract() {
    let m = metrics(500);
    relay_ports::contract::metrics::run_all(&m, &read);
}

#[test]
fn the_memory_metrics_keep_the_metrics_contract() {
    let m = relay_adapter_memory::MemoryMetrics::new();
    relay_ports::contract::metrics::run_all(&m, &|m| m.samples());
}

#[test]
fn names_types_and_buckets_are_the_deployment_documents() {
    let m = metrics(500);
    let doc = DocumentId::new(uuid::Uuid::new_v4());
    m.connection_opened(doc);
    m.operation(OperationType::Insert, OpStatus::Ok);
    m.operation_latency(0.003);
    m.operation_latency(0.3);
    m.operation_latency(2.0);
    m.presence_broadcast();
    m.commit(3, 0.002);
    m.bus_lag(0.004);
    m.document_opened();
    let text = m.prometheus_text();
    for line in [
        "# TYPE materi_websocket_connections_active gauge",
        "# TYPE materi_operations_processed_total counter",
        "# TYPE materi_operation_latency_seconds histogram",
        "# TYPE materi_presence_broadcasts_total counter",
        "# HELP materi_websocket_connections_active Active WebSocket connections",
        "# HELP materi_operations_processed_total Total operations processed",
        "# HELP materi_operation_latency_seconds Operation processing latency",
        "# HELP materi_presence_broadcasts_total Total presence broadcast events",
        "# TYPE materi_documents_open gauge",
        "# TYPE materi_commit_batch_ops histogram",
        "# TYPE process_resident_memory_bytes gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("target_info"), "no target_info");
    assert!(!text.contains("otel_scope"), "no scope labels");
    let s = Samples::parse_prometheus(&text);
    let buckets: Vec<(String, f64)> = s
        .matching("materi_operation_latency_seconds_bucket", &[])
        .map(|x| (x.labels["le"].clone(), x.value))
        .collect();
    let les: Vec<&str> = buckets.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        les,
        [
            "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "+Inf"
        ]
    );
    // Cumulative: 0.003 is in every bucket from 0.005, 0.3 from +Inf... no,
    // 0.3 <= 0.5; 2.0 only in +Inf.
    let counts: Vec<f64> = buckets.iter().map(|(_, v)| *v).collect();
    assert_eq!(counts, [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0]);
    for sample in &s.0 {
        if sample.name.starts_with("materi_")
            && sample.name != "materi_websocket_connections_active"
        {
            assert!(
                !sample.labels.contains_key("document_id"),
                "{} carries no document id",
                sample.name
            );
        }
    }
}

#[test]
fn every_counter_is_exported_at_zero_from_the_start() {
    let s = read(&metrics(500));
    for name in [
        "materi_presence_broadcasts_total",
        "materi_rooms_failed_total",
        "materi_outbound_queue_closes_total",
        "materi_commit_conflicts_total",
        "materi_commit_retries_total",
        "materi_websocket_messages_received_total",
        "materi_documents_open",
    ] {
        assert!(s.has(name, &[]), "{name} absent at start");
        assert_eq!(s.sum(name, &[]), 0.0);
    }
    assert_eq!(
        s.matching("materi_operations_processed_total", &[]).count(),
        25
    );
    assert_eq!(
        s.matching("materi_connections_rejected_total", &[]).count(),
        relay_ports::metrics::RejectReason::ALL.len()
    );
}

#[test]
fn document_series_are_bounded_and_the_rest_is_other() {
    let m = metrics(3);
    let docs: Vec<DocumentId> = (0..10)
        .map(|_| DocumentId::new(uuid::Uuid::new_v4()))
        .collect();
    // Document i has i + 1 connections: 55 in all.
    for (i, d) in docs.iter().enumerate() {
        for _ in 0..=i {
            m.connection_opened(*d);
        }
    }
    let s = read(&m);
    let name = "materi_websocket_connections_active";
    assert_eq!(s.matching(name, &[]).count(), 4, "3 named + other");
    assert_eq!(s.sum(name, &[]), 55.0, "the sum stays exact");
    for d in &docs[7..] {
        assert!(
            s.has(name, &[("document_id", &d.to_string())]),
            "the largest are named"
        );
    }
    assert_eq!(s.sum(name, &[("document_id", "other")]), 28.0);
    // Everything closes: no series left, not even `other`.
    for (i, d) in docs.iter().enumerate() {
        for _ in 0..=i {
            m.connection_closed(*d);
        }
    }
    assert_eq!(read(&m).matching(name, &[]).count(), 0);
}
