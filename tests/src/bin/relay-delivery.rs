//! Delivery latency: how long an edit takes to reach every other client of
//! its document, with and without `TCP_NODELAY` on the server's sockets, in
//! one run (so the two are compared on the same machine at the same time).
//!
//! The real application serves in process on loopback with in-memory
//! adapters; `clients` WebSocket clients over `documents` documents each
//! type `rate` edits per second on a fixed schedule (open loop: one submit
//! in flight, edits due meanwhile go in the next submit, latency counted
//! from when an edit was due). Delivery latency is from an edit's due time
//! to its arrival at each other client of the document, matched by
//! `client_id` and `seq`; ack latency from due time to the ack.
//!
//! ```text
//! cargo build --release -p relay-tests --bin relay-delivery
//! target/release/relay-delivery [--clients 200] [--documents 20] [--seconds 10] [--rates 2,20,40]
//! ```
//!
//! The "nagle" rows bind the listener without TCP_NODELAY (what Relay did
//! before it set it); the "nodelay" rows with it, as `relay` does now.

use relay_adapter_jwt::{DevKeys, TokenRequest};
use relay_adapter_ws as ws;
use relay_app::config::Config;
use relay_ports::CollaborationService;
use relay_ports::protocol::Role;
use relay_tests::load::{Due, Samples, Typist, pct, type_open_loop};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let config = Config {
        // A client typing 40 edits/s never meets the submit limit.
        submit_rate_per_sec: 1000,
        submit_burst: 1000,
        ..Config::default()
    };
    let wired = relay_app::wiring::in_memory(config.clone(), keys);
    let service: Arc<dyn CollaborationService> = Arc::new(wired.relay);
    let routes = ws::routes(service, wired.metrics, config.ws(), wired.jwks);
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

async fn scenario(args: &Args, rate: u32, nodelay: bool) {
    let keys = DevKeys::from_seed([9; 32]);
    let addr = serve(nodelay, &keys).await;
    let documents: Vec<Uuid> = (0..args.documents).map(|_| Uuid::new_v4()).collect();
    let due: Due = Arc::default();
    let start = Instant::now() + Duration::from_secs(2);
    let until = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let mut docs = BTreeMap::new();
        docs.insert("*".to_owned(), Role::Editor);
        let token = keys
            .mint(&TokenRequest {
                sub: Uuid::new_v4(),
                name: None,
                docs,
                ttl_secs: 3600,
            })
            .expect("token");
        let typist = Typist {
            url: format!("ws://{addr}/collab/{}", documents[i % documents.len()]),
            instance: 0,
            name: format!("c{i}"),
            token,
            rate,
            start,
            until,
        };
        tasks.push(tokio::spawn(type_open_loop(typist, due.clone())));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await.expect("client"));
    }
    all.sort();
    println!(
        "| {} | {rate} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} |",
        if nodelay { "nodelay" } else { "nagle" },
        all.edits as f64 / args.seconds as f64,
        all.delivery.len() as f64 / args.seconds as f64,
        pct(&all.delivery, 0.5),
        pct(&all.delivery, 0.95),
        pct(&all.delivery, 0.99),
        pct(&all.delivery, 1.0),
        pct(&all.ack, 0.5),
        pct(&all.ack, 0.99),
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    println!(
        "{} clients over {} documents, {} s per row; latency in ms from when an edit was due",
        args.clients, args.documents, args.seconds
    );
    println!(
        "| sockets | edits/s per client | edits/s | deliveries/s | delivery p50 | p95 | p99 | max | ack p50 | ack p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &rate in &args.rates {
        for nodelay in [false, true] {
            scenario(&args, rate, nodelay).await;
        }
    }
}
