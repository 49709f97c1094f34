//! Delivery latency: how long an edit takes to reach every other client of
//! its document, with and without `TCP_NODELAY` on the server's sockets, in
//! one run (so the two are compared on the same machine at the same time).
//!
//! The real application serves in process on loopback with in-memory
//! adapters; relay-load's library does the rest, as the `relay-load` tool
//! does (see docs/performance.md, "Load: relay-load"): `clients` WebSocket
//! clients over `documents` documents, each typing `rate` edits per second
//! on a fixed schedule through the domain's OT client (open loop: one
//! submit in flight, edits due meanwhile go in the next submit, latency
//! counted from when an edit was due), no carets or typing signals. The
//! first 2 s of typing are not measured; then `seconds` are. Delivery
//! latency is from an edit's due time to its arrival at each other client
//! of the document, matched by `client_id` and `seq`; ack latency from due
//! time to the ack. Every row must pass relay-load's convergence and
//! delivery-count check.
//!
//! ```text
//! cargo build --release -p relay-tests --bin relay-delivery
//! target/release/relay-delivery [--clients 200] [--documents 20] [--seconds 10] [--rates 2,20,40]
//! ```
//!
//! The "nagle" rows bind the listener without TCP_NODELAY (what Relay did
//! before it set it); the "nodelay" rows with it, as `relay` does now.

use relay_adapter_jwt::DevKeys;
use relay_adapter_ws as ws;
use relay_app::config::Config;
use relay_load::summary::summary;
use relay_load::{Options, Scenario, Tokens};
use relay_ports::CollaborationService;
use std::net::SocketAddr;
use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Typing before the measured seconds.
const WARMUP_SECS: f64 = 2.0;

struct Args {
    clients: usize,
    documents: usize,
    seconds: u64,
    rates: Vec<u32>,
}

fn args() -> Args {
    let mut a = Args {
        clients: 200,
        documents: 20,
        seconds: 10,
        rates: vec![2, 20, 40],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--clients" => a.clients = value.parse().expect("--clients N"),
            "--documents" => a.documents = value.parse().expect("--documents N"),
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            "--rates" => {
                a.rates = value
                    .split(',')
                    .map(|r| r.parse().expect("--rates A,B"))
                    .collect()
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Serves the app on 127.0.0.1:0; `nodelay` as `ws::bind` sets it, or not.
async fn serve(nodelay: bool, keys: &DevKeys) -> SocketAddr {
    let mut config = Config::default();
    // A client typing 40 edits/s never meets the submit limit.
    config.limits.submit_rate_per_sec = 1000;
    config.limits.submit_burst = 1000;
    let wired = relay_app::wiring::in_memory(config.clone(), keys);
    let service: Arc<dyn CollaborationService> = Arc::new(wired.relay);
    let routes = ws::routes(service, wired.metrics, config.limits.ws(), wired.jwks);
    let listener = if nodelay {
        ws::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind")
            .0
    } else {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
    };
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(ws::serve(listener, routes, std::future::pending()));
    addr
}

async fn row(args: &Args, rate: u32, nodelay: bool) {
    let keys = Arc::new(DevKeys::from_seed([9; 32]));
    let addr = serve(nodelay, &keys).await;
    let sockets = if nodelay { "nodelay" } else { "nagle" };
    let scenario = Scenario {
        name: format!("delivery-{sockets}-{rate}"),
        url: format!("ws://{addr}"),
        connections: args.clients,
        documents: args.documents,
        rate: f64::from(rate),
        duration_secs: WARMUP_SECS + args.seconds as f64,
        warmup_secs: WARMUP_SECS,
        cursors: false,
        typing: false,
        ..Scenario::default()
    };
    let r = relay_load::run(Options {
        scenario,
        tokens: Tokens::Keys(keys),
        // The server is this process: its CPU would be the tool's too.
        server_pids: Vec::new(),
        progress: false,
        corrupt_slot: None,
        beside: None,
    })
    .await
    .expect("run");
    let (text, pass) = summary(&r);
    assert!(pass, "the {sockets} run at {rate} edits/s failed:\n{text}");
    let t = &r.typing;
    println!(
        "| {sockets} | {rate} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} |",
        t.edits_per_sec,
        t.deliveries_per_sec,
        t.delivery.p50_ms,
        t.delivery.p95_ms,
        t.delivery.p99_ms,
        t.delivery.max_ms,
        t.ack.p50_ms,
        t.ack.p99_ms,
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    println!(
        "{} clients over {} documents, {} s measured per row; latency in ms from when an edit was due",
        args.clients, args.documents, args.seconds
    );
    println!(
        "| sockets | edits/s per client | edits/s | deliveries/s | delivery p50 | p95 | p99 | max | ack p50 | ack p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &rate in &args.rates {
        for nodelay in [false, true] {
            row(&args, rate, nodelay).await;
        }
    }
}
