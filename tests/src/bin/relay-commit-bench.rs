//! Committed operations per second and commit latency on PostgreSQL.
//!
//! Runs the real application layer in process (rooms, sequencer, group
//! commit) on the PostgreSQL store, with writers that behave like clients:
//! one submit in flight each, the next sent when the ack arrives, based on
//! the last version they know (so the server rebases). Latency is submit to
//! ack, which includes the durable append. Scenarios: one hot document with
//! 50 writers, and 100 documents with 5 writers each.
//!
//! ```text
//! cargo build --release -p relay-tests --bin relay-commit-bench
//! target/release/relay-commit-bench            # RELAY_TEST_DATABASE_URL or local PostgreSQL
//! ```

use async_trait::async_trait;
use relay_adapters::jwt::{DevKeys, TokenRequest};
use relay_adapters::postgres::{PgPool, PgStore, PoolSettings, testdb};
use relay_app::Relay;
use relay_app::config::Config;
use relay_app::wiring;
use relay_domain::{ClientId, CommittedOp, Delta, DocumentId, Seq, UserId, Version};
use relay_ports::protocol::{Join, Role};
use relay_ports::{
    Append, ClientMessage, CollaborationService, Loaded, OperationStore, Outbound, Snapshot,
    StoreError,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The PostgreSQL store, counting appends and appended ops.
struct Counting {
    inner: PgStore,
    appends: AtomicU64,
    ops: AtomicU64,
    largest: AtomicU64,
}

#[async_trait]
impl OperationStore for Counting {
    async fn append(&self, d: DocumentId, ops: &[CommittedOp]) -> Result<Append, StoreError> {
        let r = self.inner.append(d, ops).await;
        if matches!(r, Ok(Append::Committed)) {
            self.appends.fetch_add(1, Ordering::Relaxed);
            self.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
            self.largest.fetch_max(ops.len() as u64, Ordering::Relaxed);
        }
        r
    }
    async fn load(&self, d: DocumentId) -> Result<Loaded, StoreError> {
        self.inner.load(d).await
    }
    async fn read(
        &self,
        d: DocumentId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        self.inner.read(d, after, limit).await
    }
    async fn head(&self, d: DocumentId) -> Result<Version, StoreError> {
        self.inner.head(d).await
    }
    async fn find(
        &self,
        d: DocumentId,
        u: UserId,
        c: &ClientId,
        s: Seq,
    ) -> Result<Option<Version>, StoreError> {
        self.inner.find(d, u, c, s).await
    }
    async fn last_seq(
        &self,
        d: DocumentId,
        u: UserId,
        c: &ClientId,
    ) -> Result<Option<(Seq, Version)>, StoreError> {
        self.inner.last_seq(d, u, c).await
    }
    async fn save_snapshot(&self, d: DocumentId, s: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(d, s).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

struct Outcome {
    latencies: Vec<Duration>,
}

async fn writer(relay: Relay, keys: Arc<DevKeys>, doc: DocumentId, ops: usize) -> Outcome {
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
        .unwrap_or_else(|f| panic!("join: {}", f.reason));
    let joined = next(&mut started.outbound).await;
    assert_eq!(joined.kind, "joined", "expected joined, got {joined:?}");
    let mut base = Version(joined.version.expect("joined has a version"));
    let mut latencies = Vec::with_capacity(ops);
    for i in 1..=ops {
        let mut delta = Delta::new();
        delta.insert("x");
        let sent = Instant::now();
        started
            .session
            .handle(ClientMessage::Submit {
                seq: Seq(i as u64),
                base,
                delta,
            })
            .await;
        loop {
            let frame = next(&mut started.outbound).await;
            match frame.kind.as_str() {
                "ack" => {
                    latencies.push(sent.elapsed());
                    base = Version(frame.version.expect("an ack has a version"));
                    break;
                }
                "ops" => {
                    if let Some(last) = frame.ops.as_deref().and_then(<[FrameOp]>::last) {
                        base = base.max(Version(last.version));
                    }
                }
                "error" => panic!("submit refused: {frame:?}"),
                _ => {}
            }
        }
    }
    started.session.close("done").await;
    Outcome { latencies }
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

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Outbound>) -> Frame {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(Outbound::Text(t))) => serde_json::from_str(&t).expect("decode"),
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn scenario(
    name: &str,
    documents: usize,
    writers_per_doc: usize,
    ops_per_writer: usize,
    url: &str,
) {
    let keys = Arc::new(DevKeys::from_seed([5; 32]));
    let config = Config {
        submit_rate_per_sec: 1_000_000,
        submit_burst: 1_000_000,
        outbound_queue: 4096,
        ..Config::default()
    };
    let store = Arc::new(Counting {
        inner: PgStore::new(PgPool::new(url, &PoolSettings::default()).expect("pool")),
        appends: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        largest: AtomicU64::new(0),
    });
    let (mut adapters, _) = wiring::memory_adapters(wiring::dev_verifier(&config, &keys));
    adapters.store = store.clone();
    let relay = Relay::new(config, adapters, Vec::new());
    let docs: Vec<DocumentId> = (0..documents).map(|_| DocumentId(Uuid::new_v4())).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for doc in &docs {
        for _ in 0..writers_per_doc {
            tasks.push(tokio::spawn(writer(
                relay.clone(),
                keys.clone(),
                *doc,
                ops_per_writer,
            )));
        }
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("writer").latencies);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let total = latencies.len();
    let appends = store.appends.load(Ordering::Relaxed).max(1);
    println!(
        "{name}: {total} ops committed in {:.2} s = {:.0} ops/s; commit latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         group commit: {} appends, {:.1} ops per append on average, largest {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(&latencies, 0.50),
        pct(&latencies, 0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        appends,
        store.ops.load(Ordering::Relaxed) as f64 / appends as f64,
        store.largest.load(Ordering::Relaxed),
    );
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
    runtime.block_on(async {
        scenario("one hot document, 50 writers", 1, 50, 400, &url).await;
        scenario("100 documents, 5 writers each", 100, 5, 60, &url).await;
    });
}
