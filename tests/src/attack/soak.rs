//! The soak slice: the tokenless attacks of the suite in a loop, against
//! any relay (its own in the `soak_slice` test, or the instances relay-load
//! drives, through `relay-attack-loop` beside it). Every outcome is
//! asserted as in the cases; a failure panics, naming the attack.

use super::net::{Ending, Raw, Ws, exchange, read_until_closed, tcp_from, upgrade};
use relay_domain::DocumentId;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// The HTTP/2 connection preface and an empty SETTINGS frame.
pub fn h2_preface() -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    b.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    b
}

/// An HTTP status line's code (0 if there is none).
pub fn status_of(bytes: &[u8]) -> u16 {
    String::from_utf8_lossy(bytes)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The address the soak's round `i` attacks from: 127.0.1.2 to 127.0.1.201
/// in turn (away from the cases' and relay-load's addresses).
pub fn soak_address(i: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, (i % 200) as u8 + 2)
}

/// How long a half-sent head or a never-reading client may stay open in
/// the soak: the production defaults (HEADER_TIMEOUT_SECS and
/// AUTH_TIMEOUT_SECS, 10 s) with room to spare.
pub const LEFTOVER_LIMIT: Duration = Duration::from_secs(40);

/// One round of the tokenless attacks on `addr` from `ip`. What must end
/// later (half-sent heads, a never-reading client) is checked by tasks
/// left in `later`.
pub async fn round(addr: SocketAddr, ip: Ipv4Addr, later: &mut JoinSet<()>) {
    let path = format!("/collab/{}", DocumentId::new(Uuid::new_v4()));
    // Half-sent heads, left open: the server must close them.
    for _ in 0..4 {
        let mut s = tcp_from(ip, addr, None).await;
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        later.spawn(async move {
            let (_, closed) = read_until_closed(&mut s, LEFTOVER_LIMIT).await;
            assert!(
                closed,
                "soak: a half-sent head is open after {LEFTOVER_LIMIT:?}"
            );
        });
    }
    // A head over 16 KiB.
    let big = format!("X-Big: {}\r\n", "a".repeat(17 * 1024));
    let stream = tcp_from(ip, addr, None).await;
    assert!(
        upgrade(stream, addr, &path, &big).await.is_err(),
        "soak: a 17 KiB head was upgraded"
    );
    // h2c prior knowledge.
    let (got, _) = exchange(ip, addr, &h2_preface(), Duration::from_secs(3)).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 "),
        "soak: HTTP/2 was spoken"
    );
    // A 1 MiB unknown type from a client that never reads (until later).
    let mut raw = Raw::connect(ip, addr, &path, Some(4096)).await;
    let _ = raw
        .text(&format!("{{\"type\":\"{}\"}}", "\u{85}".repeat(524_000)))
        .await;
    later.spawn(async move {
        tokio::time::sleep(LEFTOVER_LIMIT / 2).await;
        let (ending, _) = raw.ending_within(LEFTOVER_LIMIT / 2).await;
        assert_ne!(
            ending,
            Ending::Open,
            "soak: a never-reading client is open after {LEFTOVER_LIMIT:?}"
        );
    });
    // Bad first frames.
    for (frame, want) in [
        (
            r#"{"type":"submit","seq":1,"base":0,"delta":[{"insert":"x"}]}"#.to_owned(),
            4400,
        ),
        (
            format!(
                "{{\"type\":\"join\",\"client_id\":\"x\",\"token\":\"{}\"}}",
                "a".repeat(20 * 1024)
            ),
            1009,
        ),
        (
            r#"{"type":"join","client_id":"x","token":"not.a.jwt","since":null}"#.to_owned(),
            4401,
        ),
        (
            r#"{"type":"join","client_id":"tab\r\nforged","since":null}"#.to_owned(),
            4400,
        ),
    ] {
        let mut ws = Ws::connect(ip, addr, &path).await;
        ws.send_text(frame).await;
        let (_, code) = ws.errors_then_close(Duration::from_secs(15)).await;
        assert_eq!(code, Some(want), "soak: a bad first frame");
    }
    // A binary first frame.
    let mut ws = Ws::connect(ip, addr, &path).await;
    ws.send_binary(b"{}".to_vec()).await;
    let (code, _) = ws.closed_within(Duration::from_secs(5)).await;
    assert_eq!(code, Some(1003), "soak: a binary first frame");
}

/// Rounds against `addrs` in turn for `soak` (`None`: until the process is
/// stopped), one every `RELAY_ATTACK_ROUND_MS` (default 200) at most; the
/// number of rounds. Panics with the first failed check.
pub async fn run_loop(addrs: &[SocketAddr], soak: Option<Duration>) -> u64 {
    assert!(!addrs.is_empty(), "no relay to attack");
    let started = Instant::now();
    let mut later = JoinSet::new();
    let mut rounds = 0;
    let pace = Duration::from_millis(
        std::env::var("RELAY_ATTACK_ROUND_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    );
    while soak.is_none_or(|s| started.elapsed() < s) {
        let began = Instant::now();
        let addr = addrs[rounds as usize % addrs.len()];
        round(addr, soak_address(rounds), &mut later).await;
        rounds += 1;
        // A steady background, not a flood that only measures the CPU.
        tokio::time::sleep(pace.saturating_sub(began.elapsed())).await;
        while let Some(done) = later.try_join_next() {
            if let Err(e) = done {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
    while let Some(done) = later.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    rounds
}
