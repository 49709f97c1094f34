//! The attack suite's soak slice in a loop, against running relays: the
//! command a soak runs beside relay-load (`relay-load --beside
//! relay-attack-loop`, which sets RELAY_URLS), or by hand:
//!
//! ```sh
//! RELAY_URLS=ws://127.0.0.1:8081 RELAY_ATTACK_SOAK_SECS=120 \
//!   target/ci-release/relay-attack-loop
//! ```
//!
//! It runs until RELAY_ATTACK_SOAK_SECS pass (unset: until it is stopped)
//! and exits non-zero at the first outcome that is not the protocol's (a
//! half-sent head or a never-reading client left open, HTTP/2 spoken, a
//! bad first frame not refused as PROTOCOL.md says). See docs/testing.md,
//! "The attack suite".

use std::net::SocketAddr;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let urls =
        std::env::var("RELAY_URLS").expect("RELAY_URLS: the relays' ws:// URLs, comma separated");
    let addrs: Vec<SocketAddr> = urls
        .split(',')
        .map(|u| {
            let rest = u
                .trim()
                .trim_start_matches("ws://")
                .trim_start_matches("http://");
            let authority = rest.split('/').next().unwrap_or(rest);
            authority
                .parse()
                .unwrap_or_else(|e| panic!("RELAY_URLS: {u}: not ws://ip:port ({e})"))
        })
        .collect();
    let soak = std::env::var("RELAY_ATTACK_SOAK_SECS")
        .ok()
        .map(|s| Duration::from_secs(s.parse().expect("RELAY_ATTACK_SOAK_SECS: seconds")));
    let rounds = relay_tests::attack::soak::run_loop(&addrs, soak).await;
    eprintln!("relay-attack-loop: {rounds} rounds against {urls}, every outcome as expected");
}
