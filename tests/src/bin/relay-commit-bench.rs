//! Committed operations per second and commit latency on PostgreSQL.
//!
//! Runs the real application layer in process (rooms, sequencer, group
//! commit) on the PostgreSQL store, with writers that behave like clients:
//! one submit in flight each, based on the last version they know (so the
//! server rebases). Latency is submit to ack, which includes the durable
//! append. Scenarios:
//!
//! 1. one hot document, 50 writers, closed loop (the next submit on the ack);
//! 2. 100 documents with 5 writers each, closed loop;
//! 3. the hot document offered 5,000 ops/s (open loop, 100 ops/s per writer);
//! 4. the 100 documents offered 20,000 ops/s (40 ops/s per writer).
//!
//! Every writer joins and commits one unmeasured submit before the clock
//! starts.
//!
//! ```text
//! cargo build --release -p relay-tests --bin relay-commit-bench
//! target/release/relay-commit-bench [SCENARIO...] [timeline]   # RELAY_TEST_DATABASE_URL or local PostgreSQL
//! RELAY_BENCH_METRICS=none|memory|otel target/release/relay-commit-bench ...
//! ```
//!
//! `RELAY_BENCH_METRICS` picks what the service records to: `otel` (the
//! default, as the `relay` binary does: OpenTelemetry with the Prometheus
//! exporter), `none` (nothing), or `memory` (every record behind one
//! mutex, what production ran before). Each scenario prints the process's
//! CPU time per committed op, so the metrics' cost is the difference.

use relay_adapter_jwt::{DevKeys, TokenRequest};
use relay_adapter_postgres::{PgPool, PgStore, PoolSettings, testdb};
use relay_app::Relay;
use relay_app::config::Config;
use relay_app::{testing, wiring};
use relay_domain::{ClientId, CommittedOp, Delta, DocumentId, Seq, Version};
use relay_load::procfs;
use relay_load::stats::Percentiles;
use relay_ports::protocol::{Join, Role};
use relay_ports::store::{Tap, Tapped};
use relay_ports::{Append, ClientMessage, CollaborationService, Outbound, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

// The allocator the `relay` binary uses, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Counts committed appends and their ops (group-commit batch sizes).
#[derive(Default)]
struct Counting {
    appends: AtomicU64,
    ops: AtomicU64,
    largest: AtomicU64,
}

impl Tap for Counting {
    fn after_append(&self, ops: &[CommittedOp], outcome: &Result<Append, StoreError>) {
        if matches!(outcome, Ok(Append::Committed)) {
            self.appends.fetch_add(1, Ordering::Relaxed);
            self.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
            self.largest.fetch_max(ops.len() as u64, Ordering::Relaxed);
        }
    }
}

struct Outcome {
    /// When each submit was due (since the clock started) and its latency.
    latencies: Vec<(Duration, Duration)>,
    /// The unmeasured first submit's latency (all writers at once, while
    /// the others join).
    first: Duration,
}

/// How a writer submits.
#[derive(Clone, Copy)]
enum Pace {
    /// The next submit as soon as the previous one is acked: the load the
    /// server can sustain (closed loop).
    Closed,
    /// One submit every `1/rate` seconds (open loop); a submit whose time
    /// comes while the previous one is still unacked goes out on the ack,
    /// and its latency counts from when it was due, so a slow server
    /// cannot hide its queueing.
    Rate(f64),
}

async fn writer(
    relay: Relay,
    keys: Arc<DevKeys>,
    doc: DocumentId,
    ops: usize,
    pace: Pace,
    start: Arc<tokio::sync::Barrier>,
) -> Outcome {
    let user = Uuid::new_v4();
    let mut docs = BTreeMap::new();
    docs.insert("*".to_owned(), Role::Editor);
    let token = keys
        .mint(&TokenRequest {
            sub: user,
            name: None,
            docs,
            ttl_secs: 3600,
        })
        .expect("token");
    let join = Join {
        client_id: ClientId::new(format!("w-{}", Uuid::new_v4().simple())).expect("id"),
        token: Some(token),
        since: None,
    };
    let mut started = relay
        .join(relay.admit().expect("slot"), doc, None, join)
        .await
        .unwrap_or_else(|f| panic!("join: {f}"));
    let joined = next(&mut started.outbound).await;
    assert_eq!(joined.kind, "joined", "expected joined, got {joined:?}");
    let mut base = Version::new(joined.version.expect("joined has a version")).unwrap();
    // One unmeasured submit first: a client's first submit also makes the
    // room look up what the store knows of it.
    let sent = tokio::time::Instant::now();
    base = submit(&mut started, Seq::from(1), base).await;
    let first = sent.elapsed();
    start.wait().await;
    let began = tokio::time::Instant::now();
    let phase = Duration::from_secs_f64(rand_unit(user) * period(pace).as_secs_f64());
    let mut latencies = Vec::with_capacity(ops);
    for i in 0..ops {
        let due = match pace {
            Pace::Closed => tokio::time::Instant::now(),
            Pace::Rate(_) => {
                let due = began + phase + period(pace) * i as u32;
                tokio::time::sleep_until(due).await;
                due
            }
        };
        base = submit(&mut started, Seq::new(i as u64 + 2).unwrap(), base).await;
        latencies.push((due - began, due.elapsed()));
    }
    started.session.close("done").await;
    Outcome { latencies, first }
}

fn period(pace: Pace) -> Duration {
    match pace {
        Pace::Closed => Duration::ZERO,
        Pace::Rate(r) => Duration::from_secs_f64(1.0 / r),
    }
}

/// A number in [0, 1) from a writer's id, to spread writers' phases.
fn rand_unit(id: Uuid) -> f64 {
    (id.as_u128() % 1_000_000) as f64 / 1_000_000.0
}

/// Submits one insert and waits for its ack; returns the newest version
/// seen.
async fn submit(started: &mut relay_ports::Started, seq: Seq, mut base: Version) -> Version {
    let mut delta = Delta::new();
    delta.insert("x");
    started
        .session
        .handle(ClientMessage::Submit { seq, base, delta })
        .await;
    loop {
        let frame = next(&mut started.outbound).await;
        match frame.kind.as_str() {
            "ack" => return Version::new(frame.version.expect("an ack has a version")).unwrap(),
            "ops" => {
                if let Some(last) = frame.ops.as_deref().and_then(<[FrameOp]>::last) {
                    base = base.max(Version::new(last.version).unwrap());
                }
            }
            "error" => panic!("submit refused: {frame:?}"),
            _ => {}
        }
    }
}

/// What a writer reads of a frame: the bench decodes only the fields it
/// needs, so its own CPU time stays small next to the server's.
#[derive(Debug, serde::Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    version: Option<u64>,
    #[serde(default)]
    ops: Option<Vec<FrameOp>>,
}

#[derive(Debug, serde::Deserialize)]
struct FrameOp {
    version: u64,
}

async fn next(rx: &mut relay_ports::OutboundQueue) -> Frame {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(item @ (Outbound::Text(_) | Outbound::Joined(_)))) => {
            serde_json::from_str(&item.text().expect("a text")).expect("decode")
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

async fn scenario(
    name: &str,
    documents: usize,
    writers_per_doc: usize,
    ops_per_writer: usize,
    pace: Pace,
    url: &str,
    timeline: bool,
) {
    let keys = Arc::new(DevKeys::from_seed([5; 32]));
    let mut config = Config::default();
    config.limits.submit_rate_per_sec = 1_000_000;
    config.limits.submit_burst = 1_000_000;
    config.limits.outbound_queue = 4096;
    let store = Arc::new(Tapped {
        inner: PgStore::new(PgPool::new(url, &PoolSettings::default()).expect("pool")),
        tap: Counting::default(),
    });
    let counts = &store.tap;
    let (mut ports, _) = testing::memory_ports(wiring::dev_verifier(&config, &keys));
    ports.store = store.clone();
    ports.metrics = bench_metrics();
    let relay = Relay::new(config, ports, Vec::new());
    let docs: Vec<DocumentId> = (0..documents)
        .map(|_| DocumentId::new(Uuid::new_v4()))
        .collect();
    let writers = documents * writers_per_doc;
    // Everyone joins and warms up; the clock starts when the last is ready.
    let start = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let mut tasks = Vec::new();
    for doc in &docs {
        for _ in 0..writers_per_doc {
            tasks.push(tokio::spawn(writer(
                relay.clone(),
                keys.clone(),
                *doc,
                ops_per_writer,
                pace,
                start.clone(),
            )));
        }
    }
    start.wait().await;
    let (appends0, ops0) = (
        counts.appends.load(Ordering::Relaxed),
        counts.ops.load(Ordering::Relaxed),
    );
    counts.largest.store(0, Ordering::Relaxed);
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut firsts = Vec::new();
    for t in tasks {
        let outcome = t.await.expect("writer");
        samples.extend(outcome.latencies);
        firsts.push(outcome.first);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let latency = Percentiles::of_durations(samples.iter().map(|s| s.1));
    let total = samples.len();
    let appends = (counts.appends.load(Ordering::Relaxed) - appends0).max(1);
    let offered = match pace {
        Pace::Closed => "closed loop".to_owned(),
        Pace::Rate(r) => format!("offered {:.0} ops/s", r * writers as f64),
    };
    println!(
        "{name} ({offered}): {total} ops committed in {:.2} s = {:.0} ops/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         group commit: {} appends, {:.1} ops per append on average, largest {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms,
        appends,
        (counts.ops.load(Ordering::Relaxed) - ops0) as f64 / appends as f64,
        counts.largest.load(Ordering::Relaxed),
    );
    println!(
        "  CPU (this process: the service and its PostgreSQL client) {:.1} us per committed op ({:.2} s in all, metrics: {})",
        cpu * 1e6 / total.max(1) as f64,
        cpu,
        std::env::var("RELAY_BENCH_METRICS").unwrap_or_else(|_| "otel".into())
    );
    let firsts = Percentiles::of_durations(firsts);
    println!(
        "  warm-up (not counted above): each writer's first submit after joining, all at once: p50 {:.2} ms, max {:.2} ms",
        firsts.p50_ms, firsts.max_ms
    );
    if timeline {
        // Latency by when the submit was due, per 100 ms: a stall of the
        // whole system shows as a spike in every writer at once.
        let mut slots: BTreeMap<u128, Vec<Duration>> = BTreeMap::new();
        for (due, latency) in samples {
            slots
                .entry(due.as_millis() / 100)
                .or_default()
                .push(latency);
        }
        let line: Vec<String> = slots
            .into_iter()
            .map(|(slot, l)| {
                format!(
                    "{:.1}s:{:.0}",
                    slot as f64 / 10.0,
                    Percentiles::of_durations(l).p50_ms
                )
            })
            .collect();
        println!("  p50 ms by due time: {}", line.join(" "));
    }
}

/// What the service records to: RELAY_BENCH_METRICS (see the header).
fn bench_metrics() -> Arc<dyn relay_ports::Metrics> {
    match std::env::var("RELAY_BENCH_METRICS").as_deref() {
        Ok("none") => Arc::new(relay_ports::NoMetrics),
        Ok("memory") => Arc::new(relay_adapter_memory::MemoryMetrics::new()),
        Ok("otel") | Err(_) => Arc::new(
            relay_adapter_otel::OtelMetrics::new(&relay_adapter_otel::OtelSettings::default())
                .expect("metrics"),
        ),
        Ok(other) => panic!("RELAY_BENCH_METRICS: none, memory or otel, not {other:?}"),
    }
}

/// This process's user + system CPU time so far.
fn cpu_seconds() -> f64 {
    procfs::cpu_secs(std::process::id()).expect("this process's CPU time from /proc")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = testdb::test_database();
    println!(
        "database: a fresh database on {}",
        testdb::admin_url().rsplit('@').next().unwrap_or("")
    );
    // Scenario numbers to run (all by default); `timeline` adds latency by
    // time.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let timeline = args.iter().any(|a| a == "timeline");
    let only: Vec<usize> = args
        .iter()
        .filter(|a| *a != "timeline")
        .map(|a| {
            a.parse()
                .expect("arguments: scenario numbers 1 to 4, or `timeline`")
        })
        .collect();
    let run = |n: usize| only.is_empty() || only.contains(&n);
    runtime.block_on(async {
        let hot = "one hot document, 50 writers";
        let many = "100 documents, 5 writers each";
        if run(1) {
            scenario(hot, 1, 50, 400, Pace::Closed, &url, timeline).await;
        }
        if run(2) {
            scenario(many, 100, 5, 100, Pace::Closed, &url, timeline).await;
        }
        // The targets' rates: 5,000 ops/s on one document, 20,000 in total.
        if run(3) {
            scenario(hot, 1, 50, 400, Pace::Rate(100.0), &url, timeline).await;
        }
        if run(4) {
            scenario(many, 100, 5, 200, Pace::Rate(40.0), &url, timeline).await;
        }
    });
}
