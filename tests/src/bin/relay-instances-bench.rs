//! Several instances, one document: cross-instance delivery latency, and a
//! hot document sequenced through one instance versus two.
//!
//! Real `relay` processes (the build's own binary) on PostgreSQL (a fresh
//! database on `RELAY_TEST_DATABASE_URL` or the local server) and a
//! `redis-server` of the benchmark's own, clients typing on a fixed
//! schedule (see `relay_tests::load`).
//!
//! ```text
//! cargo build --release -p relay-app --bin relay
//! cargo build --release -p relay-tests --bin relay-instances-bench
//! target/release/relay-instances-bench [--seconds 10]
//! ```
//!
//! 1. Cross-instance: 20 documents, 4 clients each (2 on each of 2
//!    instances), at 5 and 20 edits/s per client: delivery latency to
//!    clients on the sender's instance and on the other one.
//! 2. Hot document: 20 clients on one document at 10 edits/s each, all on
//!    one instance, then split over two: commits/s, ack latency, how often
//!    an instance lost the race for a version (compare-and-set conflicts,
//!    counted from the instances' debug logs) and `unavailable` answers.

use relay_tests::instances::{Cluster, log_to};
use relay_tests::load::{Due, Samples, Typist, pct, type_open_loop};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

async fn run(
    cluster: &Cluster,
    documents: usize,
    per_document: usize,
    instances: usize,
    rate: u32,
    seconds: u64,
) -> Samples {
    let docs: Vec<Uuid> = (0..documents).map(|_| Uuid::new_v4()).collect();
    let due: Due = Default::default();
    let start = Instant::now() + Duration::from_secs(2);
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        for c in 0..per_document {
            let instance = c % instances;
            let document = relay_domain::DocumentId::new(*doc);
            tasks.push(tokio::spawn(type_open_loop(
                Typist {
                    url: cluster.instances[instance].url(document),
                    instance,
                    name: format!("d{d}c{c}"),
                    token: cluster.token(Uuid::new_v4()),
                    rate,
                    start,
                    until,
                },
                due.clone(),
            )));
        }
    }
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await.expect("client"));
    }
    all.sort();
    all
}

fn lost_races(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("log dir").flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        n += text.matches("lost the race for a version").count();
    }
    n
}

fn clear_logs(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).expect("log dir").flatten() {
        let _ = std::fs::write(entry.path(), "");
    }
}

#[tokio::main]
async fn main() {
    let mut seconds = 10u64;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--seconds", Some(v)) => seconds = v.parse().expect("--seconds N"),
            (other, _) => panic!("unknown argument {other}"),
        }
    }
    let dir = std::env::temp_dir().join(format!("relay-instances-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("log dir");
    log_to(dir.clone());
    let cluster = Cluster::start(
        2,
        &[
            (
                "RUST_LOG",
                "warn,relay_app::room::write=debug,relay_app::room::remote=debug",
            ),
            ("TOKIO_WORKER_THREADS", "2"),
            ("DB_POOL_SIZE", "10"),
        ],
    )
    .await;

    println!(
        "## Cross-instance delivery: 20 documents x 4 clients (2 per instance), {seconds} s a row, ms from when an edit was due"
    );
    println!(
        "| edits/s per client | edits/s | delivery p50 same instance | p99 | delivery p50 other instance | p99 | max | ack p50 | ack p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for rate in [5, 20] {
        let s = run(&cluster, 20, 4, 2, rate, seconds).await;
        println!(
            "| {rate} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} |",
            s.edits as f64 / seconds as f64,
            pct(&s.delivery, 0.5),
            pct(&s.delivery, 0.99),
            pct(&s.delivery_cross, 0.5),
            pct(&s.delivery_cross, 0.99),
            pct(&s.delivery_cross, 1.0),
            pct(&s.ack, 0.5),
            pct(&s.ack, 0.99),
        );
    }

    println!();
    println!("## Hot document: all clients on one document, {seconds} s a row");
    println!(
        "| clients x edits/s | instances | edits/s | commits/s | ack p50 | ack p99 | delivery p99 | lost races (CAS conflicts) | unavailable |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (clients, rate, instances) in [
        (20, 10, 1),
        (20, 10, 2),
        (40, 25, 1),
        (40, 25, 2),
        (50, 50, 1),
        (50, 50, 2),
    ] {
        clear_logs(&dir);
        let s = run(&cluster, 1, clients, instances, rate, seconds).await;
        let mut delivery = s.delivery.clone();
        delivery.extend(s.delivery_cross.iter().copied());
        delivery.sort();
        println!(
            "| {clients} x {rate} | {instances} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            s.edits as f64 / seconds as f64,
            s.ack.len() as f64 / seconds as f64,
            pct(&s.ack, 0.5),
            pct(&s.ack, 0.99),
            pct(&delivery, 0.99),
            lost_races(&dir),
            s.unavailable,
        );
    }
    if std::env::var_os("RELAY_BENCH_KEEP_LOGS").is_some() {
        eprintln!("instance logs in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
