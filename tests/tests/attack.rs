//! The standing attack suite (issue 21; `docs/testing.md`, "The attack
//! suite"): each case runs one attack against a `relay` process of its own
//! on loopback, from 127.0.0.2 (or .3), while two bystanders (127.0.0.20 on
//! another document, 127.0.0.21 on the attacked one) keep typing. Each case
//! asserts the attack's outcome; the harness (`relay_tests::attack`) then
//! asserts that the bystanders' ack p99 during the attack stayed within 3 x
//! their own baseline plus a floor, that they converged on the server's
//! document, and that no acknowledged insert is missing.
//!
//! `soak_slice` (ignored) runs the tokenless attacks in a loop for two
//! minutes; `relay-attack-loop` runs them beside relay-load.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_ports::protocol::ServerMessage;
use relay_tests::attack::net::{exchange, read_until_closed, tcp_from, upgrade};
use relay_tests::attack::soak::{self, h2_preface, status_of};
use relay_tests::attack::target::{AUDIENCE, ISSUER};
use relay_tests::attack::{
    ATTACKER, ATTACKER_2, Ctx, Ending, Got, Raw, Setup, Target, Ws, op, run, run_prepared,
};
use relay_tests::auth::{Signer, now};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use uuid::Uuid;

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// Helpers

fn auth_timeout(ctx: &Ctx) -> Duration {
    ctx.target.setup.secs("AUTH_TIMEOUT_SECS", 10)
}

fn header_timeout(ctx: &Ctx) -> Duration {
    ctx.target.setup.secs("HEADER_TIMEOUT_SECS", 10)
}

/// Joins the attacked document from the attacker's address with `join`
/// (raw JSON); the errors received and the close code.
async fn first_frame_refusal(ctx: &Ctx, join: &str) -> (Vec<String>, Option<u16>) {
    let mut ws = ctx.ws(ATTACKER).await;
    ws.send_text(join).await;
    ws.errors_then_close(auth_timeout(ctx) + Duration::from_secs(3))
        .await
}

/// A `join` with `token` must be refused with close `code`.
async fn assert_token_refused(ctx: &Ctx, token: &str, code: u16) {
    let join = json!({"type": "join", "client_id": "intruder", "token": token, "since": null});
    let (_, got) = first_frame_refusal(ctx, &join.to_string()).await;
    assert_eq!(
        got,
        Some(code),
        "{}: the token was not refused with {code}",
        ctx.name
    );
}

/// The attacker joined to the attacked document (its own editor token).
async fn attacker_joined(ctx: &Ctx) -> (Ws, u64, usize) {
    let (ws, joined) = ctx.joined(ATTACKER, "attacker", &ctx.token()).await;
    let ServerMessage::Joined {
        version, content, ..
    } = joined
    else {
        unreachable!()
    };
    let len = content.map_or(0, |c| {
        relay_domain::Document::from_content(&c, version)
            .expect("content")
            .len()
    });
    (ws, version.get(), len)
}

fn submit(seq: u64, base: u64, delta: Value) -> String {
    json!({"type": "submit", "seq": seq, "base": base, "delta": delta}).to_string()
}

/// A token signed with `claims` replacing the standard ones.
fn signed(ctx: &Ctx, claims: Value) -> String {
    ctx.target.signer.sign(&claims)
}

fn standard_claims(user: Uuid) -> Value {
    json!({"sub": user.to_string(), "exp": now() + 3600, "iat": now(),
           "iss": ISSUER, "aud": AUDIENCE, "docs": {"*": "editor"}})
}

/// The memory figures of a case, on its output (`--nocapture`).
fn report_rss(ctx: &Ctx, base: u64, peak: u64, bound: u64) {
    eprintln!(
        "{}: RSS {:.1} MiB before, peak {:.1} MiB during (bound {:.1} MiB)",
        ctx.name,
        base as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
}

/// Peak resident memory of the target while `f` runs, sampled every 50 ms.
async fn peak_rss_during<F: Future<Output = T>, T>(target: &Target, f: F) -> (T, u64) {
    let mut f = std::pin::pin!(f);
    let mut peak = target.rss();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            out = &mut f => return (out, peak.max(target.rss())),
            _ = tick.tick() => peak = peak.max(target.rss()),
        }
    }
}

/// The attacker's editing state on the attacked document: its last seq
/// and the version it last saw (an insert at 0 on it is always valid; the
/// server transforms it).
struct Writer {
    ws: Ws,
    seq: u64,
    base: u64,
}

impl Writer {
    async fn joined(ctx: &Ctx) -> Writer {
        let (ws, base, _) = attacker_joined(ctx).await;
        Writer { ws, seq: 0, base }
    }

    /// Inserts `n` characters at the start; the ack's version or the error.
    async fn insert(&mut self, n: usize) -> Result<u64, String> {
        self.seq += 1;
        let text = submit(self.seq, self.base, json!([{"insert": "a".repeat(n)}]));
        self.ws.send_text(text).await;
        let answer = self.ws.answer().await;
        if let Ok(v) = answer {
            self.base = v;
        }
        answer
    }

    /// Grows the document by `chars` characters, in inserts of at most
    /// `chunk`.
    async fn grow(&mut self, ctx: &Ctx, chars: usize, chunk: usize) {
        let mut done = 0;
        while done < chars {
            let n = chunk.min(chars - done);
            let answer = self.insert(n).await;
            assert!(
                answer.is_ok(),
                "{}: growing the document: {answer:?}",
                ctx.name
            );
            done += n;
        }
    }
}

// ---------------------------------------------------------------------------
// Before the join: HTTP (issue 21 items 1, 2, 5, 6)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_half_sent_heads_are_closed_after_the_header_timeout() {
    run("slowloris", Setup::memory(), async |ctx| {
        let mut socks = Vec::new();
        for _ in 0..12 {
            let mut s = tcp_from(ATTACKER, ctx.target.addr, None).await;
            let head = format!("GET {} HTTP/1.1\r\nHost: x\r\n", ctx.path());
            let _ = s.write_all(head.as_bytes()).await;
            socks.push(s);
        }
        // A header line every 300 ms, never the final CRLF.
        let until = Instant::now() + header_timeout(ctx) + Duration::from_secs(2);
        while Instant::now() < until {
            for s in &mut socks {
                let _ = s.write_all(b"X-Slow: 1\r\n").await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(
            ctx.target.held_from(ATTACKER),
            0,
            "slowloris sockets still held"
        );
        for mut s in socks {
            let (got, closed) = read_until_closed(&mut s, Duration::from_secs(1)).await;
            assert!(closed, "a half-sent head is still open");
            assert!(
                got.is_empty() || status_of(&got) == 408,
                "unexpected answer: {}",
                String::from_utf8_lossy(&got)
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_17_kib_request_head_is_refused() {
    run("17 KiB head", Setup::memory(), async |ctx| {
        let big = format!("X-Big: {}\r\n", "a".repeat(17 * 1024));
        let stream = tcp_from(ATTACKER, ctx.target.addr, None).await;
        match upgrade(stream, ctx.target.addr, &ctx.path(), &big).await {
            Ok(_) => panic!("a 17 KiB head was upgraded"),
            Err(r) => assert!(
                r.status == 431 || r.status == 0,
                "a 17 KiB head got {}",
                r.head
            ),
        }
        ctx.target
            .await_held_at_most(ATTACKER, 0, Duration::from_secs(2), "17 KiB head")
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_not_served_on_the_public_port() {
    run("h2c public", Setup::memory(), async |ctx| {
        let (got, closed) = exchange(
            ATTACKER,
            ctx.target.addr,
            &h2_preface(),
            Duration::from_secs(3),
        )
        .await;
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 "),
            "HTTP/2 was spoken: {:?}",
            &got[..got.len().min(32)]
        );
        assert!(closed, "the h2c connection is still open");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_not_served_on_the_metrics_port() {
    run("h2c metrics", Setup::memory(), async |ctx| {
        let (got, closed) = exchange(
            ATTACKER,
            ctx.target.metrics_addr,
            &h2_preface(),
            Duration::from_secs(3),
        )
        .await;
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 "),
            "HTTP/2 was spoken: {:?}",
            &got[..got.len().min(32)]
        );
        assert!(closed, "the h2c connection is still open");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    run("idle keep-alive", Setup::memory(), async |ctx| {
        let mut s = tcp_from(ATTACKER, ctx.target.addr, None).await;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let within = header_timeout(ctx) + Duration::from_secs(3);
        let (got, closed) = read_until_closed(&mut s, within).await;
        assert_eq!(status_of(&got), 200, "/health was not answered");
        assert!(
            closed,
            "an idle keep-alive connection is open after {within:?}"
        );
        assert_eq!(ctx.target.held_from(ATTACKER), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_pending_per_ip_are_closed_at_once_while_others_join() {
    let setup = Setup::memory()
        .env("HEADER_TIMEOUT_SECS", 10)
        .env("AUTH_TIMEOUT_SECS", 10);
    run("pending per IP", setup, async |ctx| {
        // 8 silent TCP connections and 8 upgraded ones: all pending.
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(tcp_from(ATTACKER, ctx.target.addr, None).await);
        }
        let mut upgraded = Vec::new();
        for _ in 0..8 {
            upgraded.push(Raw::connect(ATTACKER, ctx.target.addr, &ctx.path(), None).await);
        }
        ctx.eventually(Duration::from_secs(3), "16 pending held", || {
            ctx.target.held_from(ATTACKER) == 16
        })
        .await;
        // More from that address: closed at once.
        for i in 0..8 {
            let mut extra = tcp_from(ATTACKER, ctx.target.addr, None).await;
            let (_, closed) = read_until_closed(&mut extra, Duration::from_secs(1)).await;
            assert!(
                closed,
                "extra connection {i} over MAX_PENDING_PER_IP is open"
            );
        }
        assert!(ctx.target.held_from(ATTACKER) <= 16);
        // Others are served meanwhile.
        let health = ctx.target.get("/health").await;
        assert_eq!(health.status, 200);
        let ready = ctx.target.get("/ready").await;
        assert_eq!(ready.status, 200);
        ctx.honest_join().await;
        drop((held, upgraded));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_exempt_from_max_pending_per_ip() {
    let setup = Setup::memory()
        .env("HEADER_TIMEOUT_SECS", 10)
        .env("TRUSTED_PROXIES", "127.0.0.3/32");
    run("trusted proxy", setup, async |ctx| {
        let mut socks = Vec::new();
        for _ in 0..24 {
            socks.push(tcp_from(ATTACKER_2, ctx.target.addr, None).await);
        }
        ctx.eventually(Duration::from_secs(3), "24 from the proxy held", || {
            ctx.target.held_from(ATTACKER_2) == 24
        })
        .await;
        for s in &mut socks {
            let (_, closed) = read_until_closed(s, Duration::from_millis(50)).await;
            assert!(!closed, "a connection from the trusted proxy was closed");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Before the join: the first frame (items 3, 4; F1, F10)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_unknown_type_first_frame_from_never_reading_clients_frees_the_slots_in_time() {
    let setup = Setup::memory().env("MAX_PENDING_PER_IP", 64);
    run("1 MiB first frame", setup, async |ctx| {
        let n = 24u64;
        let base = ctx.target.rss();
        let payload = format!("{{\"type\":\"{}\"}}", "\u{85}".repeat(524_000));
        let (_, peak) = peak_rss_during(&ctx.target, async {
            let mut socks = Vec::new();
            let started = Instant::now();
            for _ in 0..n {
                let mut raw =
                    Raw::connect(ATTACKER, ctx.target.addr, &ctx.path(), Some(4096)).await;
                // Never read; the write may be cut short by a close.
                let _ = raw.text(&payload).await;
                socks.push(raw);
            }
            let deadline = auth_timeout(ctx) + Duration::from_secs(3);
            ctx.target
                .await_held_at_most(
                    ATTACKER,
                    0,
                    deadline.saturating_sub(started.elapsed()),
                    "1 MiB first frames",
                )
                .await;
            socks
        })
        .await;
        let bound = base + n * MIB / 4 + 32 * MIB;
        report_rss(ctx, base, peak, bound);
        assert!(
            peak <= bound,
            "RSS peaked at {} MiB (from {} MiB; bound {} MiB)",
            peak / MIB,
            base / MIB,
            bound / MIB
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_kib_first_frame_is_closed_1009() {
    run("20 KiB first frame", Setup::memory(), async |ctx| {
        let join = json!({"type": "join", "client_id": "x", "token": "a".repeat(20 * 1024), "since": null});
        let (_, code) = first_frame_refusal(ctx, &join.to_string()).await;
        assert_eq!(code, Some(1009));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pong_filling_before_the_join_does_not_extend_the_deadline() {
    run("pong filling", Setup::memory(), async |ctx| {
        let started = Instant::now();
        let mut raw = Raw::connect(ATTACKER, ctx.target.addr, &ctx.path(), Some(2048)).await;
        let ping = relay_tests::attack::net::client_frame(op::PING, true, &[7u8; 125]);
        // Pings until a write blocks (the server stopped reading) or 20,000.
        for _ in 0..20_000 {
            let w = tokio::time::timeout(Duration::from_millis(200), raw.stream.write_all(&ping));
            if !matches!(w.await, Ok(Ok(()))) {
                break;
            }
        }
        let deadline = auth_timeout(ctx) + Duration::from_secs(3);
        ctx.target
            .await_held_at_most(
                ATTACKER,
                0,
                deadline.saturating_sub(started.elapsed()),
                "pong filler",
            )
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_join_is_closed_4408() {
    run("no join", Setup::memory(), async |ctx| {
        let mut ws = ctx.ws(ATTACKER).await;
        let (code, _) = ws
            .closed_within(auth_timeout(ctx) + Duration::from_secs(2))
            .await;
        assert_eq!(code, Some(4408));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_first_frame_is_closed_1003() {
    run("binary first frame", Setup::memory(), async |ctx| {
        let mut ws = ctx.ws(ATTACKER).await;
        ws.send_binary(b"{\"type\":\"join\"}".to_vec()).await;
        let (code, _) = ws.closed_within(Duration::from_secs(3)).await;
        assert_eq!(code, Some(1003));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_utf8_first_frame_is_closed_1003() {
    run("invalid UTF-8", Setup::memory(), async |ctx| {
        let mut raw = Raw::connect(ATTACKER, ctx.target.addr, &ctx.path(), None).await;
        raw.frame(op::TEXT, true, b"{\"type\":\"join\xff\xfe\"}")
            .await;
        let (ending, _) = raw.ending_within(Duration::from_secs(3)).await;
        assert_eq!(ending, Ending::Close(Some(1003)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fragmented_first_message_does_not_extend_the_deadline() {
    run("slow fragments", Setup::memory(), async |ctx| {
        let started = Instant::now();
        let mut raw = Raw::connect(ATTACKER, ctx.target.addr, &ctx.path(), None).await;
        let join =
            json!({"type": "join", "client_id": "slow", "token": ctx.token(), "since": null})
                .to_string();
        let parts: Vec<&[u8]> = join.as_bytes().chunks(join.len() / 20 + 1).collect();
        let mut ending = Ending::Open;
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 { op::TEXT } else { op::CONTINUATION };
            if !raw.frame(opcode, i + 1 == parts.len(), part).await {
                break;
            }
            let (e, texts) = raw.ending_within(Duration::from_millis(400)).await;
            assert!(
                texts.iter().all(|t| !t.contains("\"joined\"")),
                "joined after the deadline"
            );
            ending = e;
            if ending != Ending::Open {
                break;
            }
        }
        if ending == Ending::Open {
            ending = raw.ending_within(Duration::from_secs(3)).await.0;
        }
        let limit = auth_timeout(ctx) + Duration::from_secs(2) + Duration::from_millis(500);
        assert!(
            matches!(ending, Ending::Close(Some(4408)) | Ending::Dropped),
            "ended with {ending:?}"
        );
        assert!(
            started.elapsed() <= limit,
            "closed after {:?} (limit {limit:?})",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_nesting_as_the_first_frame_is_closed_4400() {
    run("deep nesting first", Setup::memory(), async |ctx| {
        let text = format!(
            "{{\"type\":\"join\",\"client_id\":{}{}}}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        let (errors, code) = first_frame_refusal(ctx, &text).await;
        assert_eq!(code, Some(4400));
        assert_eq!(errors, ["bad_message"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_first_frame_is_answered_with_at_most_64_echoed_characters() {
    run("echo bound", Setup::memory(), async |ctx| {
        let mut ws = ctx.ws(ATTACKER).await;
        let echo = "E".repeat(10_000);
        ws.send_text(json!({"type": echo}).to_string()).await;
        let mut message = None;
        let (code, _) = loop {
            match ws.recv().await {
                Got::Msg(ServerMessage::Error { message: m, .. }) => message = Some(m),
                Got::Msg(m) => panic!("unexpected {m:?}"),
                Got::Closed(c, r) => break (c, r),
            }
        };
        assert_eq!(code, Some(4400));
        let message = message.expect("an error before the close");
        let echoed = message.chars().filter(|c| *c == 'E').count();
        assert!(echoed <= 64, "{echoed} characters echoed: {message}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_that_is_not_a_join_is_closed_4400() {
    run("submit first", Setup::memory(), async |ctx| {
        let (errors, code) =
            first_frame_refusal(ctx, &submit(1, 0, json!([{"insert": "x"}]))).await;
        assert_eq!(code, Some(4400));
        assert_eq!(errors, ["bad_message"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_with_since_past_two_to_the_53_is_closed_4400() {
    run("since 2^53", Setup::memory(), async |ctx| {
        let join = format!(
            "{{\"type\":\"join\",\"client_id\":\"x\",\"token\":\"{}\",\"since\":9007199254740992}}",
            ctx.token()
        );
        let (errors, code) = first_frame_refusal(ctx, &join).await;
        assert_eq!(
            (errors.as_slice(), code),
            (&["bad_message".to_owned()][..], Some(4400))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_with_control_characters_is_bad_message() {
    run(
        "client_id control characters",
        Setup::memory(),
        async |ctx| {
            for id in [
                "tab\r\n2026-12-07T00:00:00Z  INFO forged",
                "tab\u{1b}[31m",
                "tab\u{85}",
            ] {
                let join =
                    json!({"type": "join", "client_id": id, "token": ctx.token(), "since": null});
                let (errors, code) = first_frame_refusal(ctx, &join.to_string()).await;
                assert_eq!(code, Some(4400), "client_id {id:?}");
                assert_eq!(errors, ["bad_message"], "client_id {id:?}");
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------
// Tokens (PROTOCOL.md, "Authentication and roles")

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_without_a_token_is_closed_4401() {
    run("no token", Setup::memory(), async |ctx| {
        let join = json!({"type": "join", "client_id": "x", "since": null});
        let (_, code) = first_frame_refusal(ctx, &join.to_string()).await;
        assert_eq!(code, Some(4401));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_alg_none_token_is_closed_4401() {
    run("alg none", Setup::memory(), async |ctx| {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"rsa-a"}"#);
        let claims = URL_SAFE_NO_PAD.encode(standard_claims(ctx.attacker).to_string());
        assert_token_refused(ctx, &format!("{header}.{claims}."), 4401).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hmac_token_keyed_with_the_public_key_is_closed_4401() {
    run("HMAC", Setup::memory(), async |ctx| {
        let public = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rsa-a.pub.pem"),
        )
        .expect("fixture");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-a".into());
        let token = jsonwebtoken::encode(
            &header,
            &standard_claims(ctx.attacker),
            &EncodingKey::from_secret(&public),
        )
        .expect("sign");
        assert_token_refused(ctx, &token, 4401).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_closed_4401() {
    run("expired", Setup::memory(), async |ctx| {
        let mut c = standard_claims(ctx.attacker);
        c["exp"] = json!(now() - 3600);
        assert_token_refused(ctx, &signed(ctx, c), 4401).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_wrong_issuer_is_closed_4401() {
    run("wrong issuer", Setup::memory(), async |ctx| {
        let mut c = standard_claims(ctx.attacker);
        c["iss"] = json!("https://evil.example/");
        assert_token_refused(ctx, &signed(ctx, c), 4401).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_closed_4401() {
    run("wrong audience", Setup::memory(), async |ctx| {
        let mut c = standard_claims(ctx.attacker);
        c["aud"] = json!("another-service");
        assert_token_refused(ctx, &signed(ctx, c), 4401).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_9_kib_token_is_closed_4401() {
    run("9 KiB token", Setup::memory(), async |ctx| {
        let mut c = standard_claims(ctx.attacker);
        c["pad"] = json!("p".repeat(9 * 1024));
        assert_token_refused(ctx, &signed(ctx, c), 4401).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_token_is_closed_4401() {
    run("garbage token", Setup::memory(), async |ctx| {
        assert_token_refused(ctx, "not.a.jwt", 4401).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_a_key_not_in_the_jwks_is_closed_4401() {
    run("foreign key", Setup::memory(), async |ctx| {
        let token = Signer::fixture("rsa-b").sign(&standard_claims(ctx.attacker));
        assert_token_refused(ctx, &token, 4401).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_kids_is_refused_with_at_most_one_jwks_fetch_per_cooldown() {
    run("kid flood", Setup::memory(), async |ctx| {
        let hits = ctx.target.jwks.hits();
        let started = Instant::now();
        let mut header = Header::new(Algorithm::RS256);
        for _ in 0..60 {
            header.kid = Some(Uuid::new_v4().to_string());
            let token = jsonwebtoken::encode(
                &header,
                &standard_claims(ctx.attacker),
                &EncodingKey::from_rsa_pem(
                    &std::fs::read(
                        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rsa-a.pem"),
                    )
                    .expect("fixture"),
                )
                .expect("key"),
            )
            .expect("sign");
            let join = json!({"type": "join", "client_id": "x", "token": token, "since": null});
            let (_, code) = first_frame_refusal(ctx, &join.to_string()).await;
            assert!(
                matches!(code, Some(4401) | Some(1013)),
                "a random kid got {code:?}"
            );
        }
        // JWKS_COOLDOWN_SECS is 30 by default: one fetch at most in the flood.
        let fetched = ctx.target.jwks.hits() - hits;
        assert!(
            fetched <= 1 + started.elapsed().as_secs() as usize / 30,
            "{fetched} JWKS fetches during the flood"
        );
        ctx.honest_join().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_is_refused_with_400() {
    run("token in URL", Setup::memory(), async |ctx| {
        let stream = tcp_from(ATTACKER, ctx.target.addr, None).await;
        let path = format!("{}?token={}", ctx.path(), ctx.token());
        match upgrade(stream, ctx.target.addr, &path, "").await {
            Ok(_) => panic!("a token in the URL was upgraded"),
            Err(r) => assert_eq!(r.status, 400, "{}", r.head),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_document_is_closed_4403() {
    run("forbidden document", Setup::memory(), async |ctx| {
        let token = ctx.target.token_with(
            ctx.attacker,
            json!({ctx.other_doc.to_string(): "editor"}),
            json!({}),
        );
        assert_token_refused(ctx, &token, 4403).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// After the join: per-user limits (item 7; F3, F6)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101st_connection_of_one_user_is_closed_4429_while_another_user_joins() {
    let setup = Setup::memory()
        .env("MAX_CONNECTIONS_PER_USER", 100)
        .env("JOIN_RATE_PER_SEC", 1000)
        .env("JOIN_BURST", 1000);
    run("101 connections", setup, async |ctx| {
        let token = ctx.token();
        let mut open = Vec::new();
        for i in 0..100 {
            let (ws, _) = ctx.joined(ATTACKER, &format!("a{i}"), &token).await;
            open.push(ws);
        }
        let mut ws = ctx.ws(ATTACKER).await;
        match ws.join("a100", &token, None).await {
            Ok(_) => panic!("the 101st connection joined"),
            Err(Got::Closed(code, reason)) => {
                assert_eq!(code, Some(4429), "{reason}");
                assert!(reason.contains("connections"), "reason: {reason}");
            }
            Err(other) => panic!("{other:?}"),
        }
        ctx.honest_join().await;
        for ws in open {
            ws.close().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_over_join_burst_is_closed_4429_while_another_user_joins() {
    let setup = Setup::memory()
        .env("MAX_CONNECTIONS_PER_USER", 1000)
        .env("JOIN_RATE_PER_SEC", 10)
        .env("JOIN_BURST", 50);
    run("join burst", setup, async |ctx| {
        let token = ctx.token();
        let started = Instant::now();
        let (mut accepted, mut refused) = (0u64, 0u64);
        for i in 0..80 {
            let mut ws = ctx.ws(ATTACKER).await;
            match ws.join(&format!("j{i}"), &token, None).await {
                Ok(_) => accepted += 1,
                Err(Got::Closed(code, reason)) => {
                    assert_eq!(code, Some(4429), "{reason}");
                    assert!(reason.contains("joins"), "reason: {reason}");
                    refused += 1;
                }
                Err(other) => panic!("{other:?}"),
            }
            ws.close().await;
        }
        let allowed = 50 + 10 * started.elapsed().as_secs_f64().ceil() as u64;
        assert!(refused > 0, "no join was refused");
        assert!(
            accepted <= allowed,
            "{accepted} joins accepted (at most {allowed})"
        );
        ctx.honest_join().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_submit_is_answered_forbidden() {
    run("viewer submit", Setup::memory(), async |ctx| {
        let (mut ws, joined) = ctx
            .joined(ATTACKER, "viewer", &ctx.target.viewer(ctx.attacker))
            .await;
        let ServerMessage::Joined { version, .. } = joined else {
            unreachable!()
        };
        for seq in 1..=20 {
            ws.send_text(submit(seq, version.get(), json!([{"insert": "VIEWER"}])))
                .await;
            assert_eq!(ws.answer().await, Err("forbidden".to_owned()));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_flood_from_many_connections_of_one_user_is_rate_limited() {
    // The bystanders submit 50 a second at most.
    let (rate, burst) = (60u64, 60u64);
    let setup = Setup::memory()
        .env("SUBMIT_RATE_PER_SEC", rate)
        .env("SUBMIT_BURST", burst);
    run("submit flood", setup, async |ctx| {
        let token = ctx.token();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (mut ws, joined) = ctx.joined(ATTACKER, &format!("flood{i}"), &token).await;
            let ServerMessage::Joined { version, .. } = joined else {
                unreachable!()
            };
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let (mut acks, mut limited) = (0u64, 0u64);
                let (mut seq, mut base) = (0, version.get());
                while started.elapsed() < Duration::from_secs(2) {
                    seq += 1;
                    ws.send_text(submit(seq, base, json!([{"insert": "F"}])))
                        .await;
                    match ws.answer().await {
                        Ok(v) => {
                            acks += 1;
                            base = v;
                        }
                        Err(code) if code == "rate_limited" => limited += 1,
                        Err(code) => panic!("flood got {code}"),
                    }
                }
                ws.close().await;
                (acks, limited, started.elapsed())
            }));
        }
        let mut limited_total = 0;
        for t in tasks {
            let (acks, limited, took) = t.await.expect("flooder");
            let allowed = burst + (rate as f64 * took.as_secs_f64()).ceil() as u64 + 1;
            assert!(
                acks <= allowed,
                "a connection got {acks} acks (at most {allowed})"
            );
            limited_total += limited;
        }
        assert!(limited_total > 0, "nothing was rate limited");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_and_typing_flood_reaches_others_throttled() {
    run("cursor flood", Setup::memory(), async |ctx| {
        let (mut ws, version, _) = attacker_joined(ctx).await;
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_secs(2) {
            for _ in 0..50 {
                ws.send_text(
                    json!({"type": "cursor", "version": version, "anchor": 0, "head": 0})
                        .to_string(),
                )
                .await;
                ws.send_text(r#"{"type":"typing"}"#).await;
                sent += 2;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = started.elapsed();
        let seen = ctx.finish_bystanders().await;
        let by_same = seen.iter().find(|s| s.name == "by-same").expect("by-same");
        let cursors = by_same.cursors_from.get("attacker").copied().unwrap_or(0);
        let typing = by_same.typing_from.get("attacker").copied().unwrap_or(0);
        // CURSOR_THROTTLE_MS 50: one per 50 ms, the latest after the burst.
        let cursor_bound = (took.as_millis() / 50) as usize + 3;
        assert!(cursors >= 1, "no cursor reached the other client");
        assert!(
            cursors <= cursor_bound,
            "{cursors} cursors of {sent} sent reached the other client"
        );
        // TYPING_DEBOUNCE_MS 500: a start, then a stop only after 500 ms
        // without a signal, so at most two frames per 500 ms.
        let typing_bound = 2 * (took.as_millis() / 500) as usize + 2;
        assert!(typing >= 1, "no typing reached the other client");
        assert!(
            typing <= typing_bound,
            "{typing} typing frames reached the other client (at most {typing_bound})"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Memory: the outbound budget and the shared encoding (item 8; F3)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_non_reading_joiners_of_a_large_document_share_one_encoding() {
    let setup = Setup::memory()
        .env("MAX_PENDING_PER_IP", 64)
        .env("JOIN_RATE_PER_SEC", 1000)
        .env("JOIN_BURST", 1000);
    let doc_chars = 3_000_000u64;
    let prepare = async |ctx: &mut Ctx| {
        let mut w = Writer::joined(ctx).await;
        w.grow(ctx, doc_chars as usize, 900_000).await;
        w
    };
    run_prepared("shared encoding", setup, prepare, async |ctx, w| {
        let base = ctx.target.rss();
        let n = 30u64;
        let token = ctx.token();
        let (socks, peak) = peak_rss_during(&ctx.target, async {
            let mut socks = Vec::new();
            for i in 0..n {
                let mut raw =
                    Raw::connect(ATTACKER_2, ctx.target.addr, &ctx.path(), Some(4096)).await;
                let join = json!({"type": "join", "client_id": format!("r{i}"), "token": token, "since": null});
                raw.text(&join.to_string()).await;
                socks.push(raw);
            }
            let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
            ctx.await_joined(&ids, Duration::from_secs(20)).await;
            socks
        })
        .await;
        // One encoding of the content (JSON: about one byte a character)
        // and a copy in flight, plus PER_JOINER for what each joiner holds
        // alone (its head and tail, buffers).
        const PER_JOINER: u64 = 256 * 1024;
        let bound = base + 2 * doc_chars + n * PER_JOINER + 24 * MIB;
        report_rss(ctx, base, peak, bound);
        assert!(
            peak <= bound,
            "RSS peaked at {} MiB with {n} joiners (from {} MiB, bound {} MiB)",
            peak / MIB,
            base / MIB,
            bound / MIB
        );
        drop((socks, w));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reading_client_of_a_large_document_is_closed_once_over_its_outbound_budget() {
    // The least budget the configuration allows with 64 KiB messages.
    let budget: u64 = 4 * 65_536 + 65_536;
    // A stalled write is given up after HEARTBEAT_TIMEOUT_SECS: 5 here.
    let setup = Setup::memory()
        .env("MAX_MESSAGE_BYTES", 65_536)
        .env("OUTBOUND_QUEUE_BYTES", budget)
        .env("HEARTBEAT_INTERVAL_SECS", 2)
        .env("HEARTBEAT_TIMEOUT_SECS", 5);
    let prepare = async |ctx: &mut Ctx| {
        let mut w = Writer::joined(ctx).await;
        w.grow(ctx, 2_000_000, 60_000).await;
        w
    };
    run_prepared("outbound budget", setup, prepare, async |ctx, mut w| {
        let base = ctx.target.rss();
        let token = ctx.token();
        let mut socks = Vec::new();
        for i in 0..4 {
            let mut raw = Raw::connect(ATTACKER_2, ctx.target.addr, &ctx.path(), Some(4096)).await;
            let join = json!({"type": "join", "client_id": format!("stuck{i}"), "token": token, "since": null});
            raw.text(&join.to_string()).await;
            socks.push(raw);
        }
        // Frames that are theirs alone: 20 x 50 KB of ops.
        let ((), peak) = peak_rss_during(&ctx.target, async {
            w.grow(ctx, 1_000_000, 50_000).await;
            ctx.target
                .await_held_at_most(ATTACKER_2, 0, Duration::from_secs(8), "non-readers")
                .await;
        })
        .await;
        let bound = base + 2 * 3_000_000 + 4 * budget + 24 * MIB;
        report_rss(ctx, base, peak, bound);
        assert!(
            peak <= bound,
            "RSS peaked at {} MiB (from {} MiB, bound {} MiB)",
            peak / MIB,
            base / MIB,
            bound / MIB
        );
        // What the first of them was told, once it reads.
        let (ending, _) = socks[0].ending_within(Duration::from_secs(5)).await;
        assert!(
            matches!(ending, Ending::Close(Some(1013)) | Ending::Dropped),
            "the non-reader ended with {ending:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// `since` (item 9; F4), on PostgreSQL with a short history in memory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_with_since_far_ahead_and_at_zero_on_a_long_document_are_bounded() {
    let setup = Setup::postgres()
        .env("OPERATION_HISTORY_MAX", 50)
        .env("JOIN_RATE_PER_SEC", 1000)
        .env("JOIN_BURST", 1000);
    let prepare = async |ctx: &mut Ctx| {
        let mut w = Writer::joined(ctx).await;
        w.grow(ctx, 300 * 500, 500).await;
        w
    };
    run_prepared("since bounds", setup, prepare, async |ctx, _writer| {
        let token = ctx.target.viewer(Uuid::new_v4());
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let since = if i % 2 == 0 { 9_007_199_254_740_991 } else { 0 };
            let (addr, path, token) = (ctx.target.addr, ctx.path(), token.clone());
            tasks.push(tokio::spawn(async move {
                // Two addresses: 20 pending from one would pass MAX_PENDING_PER_IP.
                let ip = if i % 2 == 0 { ATTACKER } else { ATTACKER_2 };
                let mut ws = Ws::connect(ip, addr, &path).await;
                let started = Instant::now();
                let joined = ws.join(&format!("s{i}"), &token, Some(since)).await;
                let took = started.elapsed();
                ws.close().await;
                (since, joined, took)
            }));
        }
        for t in tasks {
            let (since, joined, took) = t.await.expect("joiner");
            assert!(
                took < Duration::from_secs(5),
                "a join with since {since} took {took:?}"
            );
            let Ok(ServerMessage::Joined {
                version,
                content,
                ops,
                ..
            }) = joined
            else {
                panic!("since {since}: {joined:?}");
            };
            match (content, ops) {
                (Some(_), None) => {}
                (None, Some(ops)) => {
                    assert_ne!(
                        since, 9_007_199_254_740_991,
                        "ops for a since ahead of the head"
                    );
                    let versions: Vec<u64> = ops.iter().map(|o| o.version.get()).collect();
                    let want: Vec<u64> = (since + 1..=version.get()).collect();
                    assert_eq!(
                        versions, want,
                        "since {since}: ops not consecutive to the head"
                    );
                }
                other => panic!("since {since}: content and ops {other:?}"),
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Revocation (item 10; F5), roles from PostgreSQL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_grant_is_removed_is_closed_4403_within_the_ttl() {
    let setup = Setup::postgres()
        .env("PERMISSION_SOURCE", "database")
        .env("PERMISSION_CACHE_TTL", 1);
    run("revocation", setup, async |ctx| {
        let reader = Uuid::new_v4();
        ctx.target
            .grant(reader, ctx.doc, relay_domain::Role::Viewer)
            .await;
        let (mut ws, _) = ctx
            .joined(ATTACKER, "reader", &ctx.target.viewer(reader))
            .await;
        assert!(
            ws.open_after(Duration::from_millis(500)).await,
            "closed before the revocation"
        );
        ctx.target.revoke(reader, ctx.doc).await;
        // Within PERMISSION_CACHE_TTL (1 s), plus a little.
        let (code, reason) = ws.closed_within(Duration::from_secs(4)).await;
        assert_eq!(code, Some(4403), "{reason}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_downgraded_to_viewer_is_refused_its_next_submit() {
    let setup = Setup::postgres()
        .env("PERMISSION_SOURCE", "database")
        .env("PERMISSION_CACHE_TTL", 1);
    run("downgrade", setup, async |ctx| {
        let user = Uuid::new_v4();
        ctx.target
            .grant(user, ctx.doc, relay_domain::Role::Editor)
            .await;
        let (mut ws, _) = ctx
            .joined(ATTACKER, "editor", &ctx.target.editor(user))
            .await;
        ws.send_text(submit(1, 0, json!([{"insert": "E"}]))).await;
        assert!(ws.answer().await.is_ok(), "the editor's first submit");
        ctx.target
            .grant(user, ctx.doc, relay_domain::Role::Viewer)
            .await;
        // Submits until one is refused: within PERMISSION_CACHE_TTL (1 s)
        // and a little.
        let changed = Instant::now();
        let mut seq = 1;
        loop {
            seq += 1;
            ws.send_text(submit(seq, 0, json!([{"insert": "E"}]))).await;
            match ws.answer().await {
                Ok(_) => {}
                Err(code) => {
                    assert_eq!(code, "forbidden");
                    break;
                }
            }
            assert!(
                changed.elapsed() < Duration::from_secs(3),
                "the downgraded editor still commits after {:?}",
                changed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Protocol abuse after the join

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_max_message_bytes_after_the_join_is_closed_1009() {
    run("oversize after join", Setup::memory(), async |ctx| {
        let (mut ws, _, _) = attacker_joined(ctx).await;
        ws.send_text(format!(
            "{{\"type\":\"typing\",\"x\":\"{}\"}}",
            "a".repeat(1024 * 1024)
        ))
        .await;
        let (code, _) = ws.closed_within(Duration::from_secs(5)).await;
        assert_eq!(code, Some(1009));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_nesting_after_the_join_is_bad_message_and_the_connection_works_on() {
    run("deep nesting", Setup::memory(), async |ctx| {
        let (mut ws, version, _) = attacker_joined(ctx).await;
        let deep = format!(
            "{{\"type\":\"submit\",\"seq\":1,\"base\":{version},\"delta\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        ws.send_text(deep).await;
        assert_eq!(ws.answer().await, Err("bad_message".to_owned()));
        ws.send_text(submit(1, version, json!([{"insert": "ok"}])))
            .await;
        assert!(ws.answer().await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_past_two_to_the_53_are_refused() {
    run("huge integers", Setup::memory(), async |ctx| {
        let (mut ws, version, _) = attacker_joined(ctx).await;
        let big = "9007199254740992";
        let cases = [
            (format!(r#"{{"type":"submit","seq":{big},"base":{version},"delta":[{{"insert":"x"}}]}}"#), "bad_message"),
            (r#"{"type":"submit","seq":1,"base":18446744073709551615,"delta":[{"insert":"x"}]}"#.to_owned(), "bad_message"),
            (format!(r#"{{"type":"submit","seq":1,"base":{version},"delta":[{{"retain":{big}}},{{"insert":"x"}}]}}"#), "invalid_delta"),
            (format!(r#"{{"type":"submit","seq":1,"base":{version},"delta":[{{"insert":"x"}},{{"delete":{big}}}]}}"#), "invalid_delta"),
            (format!(r#"{{"type":"cursor","version":{version},"anchor":{big},"head":0}}"#), "bad_message"),
            (format!(r#"{{"type":"cursor","version":{big},"anchor":0,"head":0}}"#), "bad_message"),
        ];
        for (text, want) in &cases {
            ws.send_text(text.clone()).await;
            assert_eq!(ws.answer().await, Err((*want).to_owned()), "{text}");
        }
        ws.send_text(submit(1, version, json!([{"insert": "ok"}]))).await;
        assert!(ws.answer().await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_undecodable_messages_is_closed_1008() {
    run("invalid flood", Setup::memory(), async |ctx| {
        let (mut ws, _, _) = attacker_joined(ctx).await;
        let mut sent = 0;
        for i in 0..1000 {
            if !ws.send_text(format!("{{\"type\":\"nonsense{i}\"}}")).await {
                break;
            }
            sent += 1;
        }
        let (errors, code) = ws.errors_then_close(Duration::from_secs(5)).await;
        assert_eq!(code, Some(1008), "after {sent} undecodable messages");
        assert!(
            errors.len() < 100,
            "{} errors answered before the close",
            errors.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_spam_is_closed_1000_once() {
    run("leave spam", Setup::memory(), async |ctx| {
        let (mut ws, _, _) = attacker_joined(ctx).await;
        for _ in 0..1000 {
            if !ws.send_text(r#"{"type":"leave"}"#).await {
                break;
            }
        }
        let (code, _) = ws.closed_within(Duration::from_secs(3)).await;
        assert_eq!(code, Some(1000));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_join_is_bad_message_and_the_session_works_on() {
    run("duplicate join", Setup::memory(), async |ctx| {
        let (mut ws, version, _) = attacker_joined(ctx).await;
        for _ in 0..50 {
            ws.send_join("attacker", Some(&ctx.token()), None).await;
            assert_eq!(ws.answer().await, Err("bad_message".to_owned()));
        }
        ws.send_text(submit(1, version, json!([{"insert": "ok"}])))
            .await;
        assert!(ws.answer().await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deltas_are_invalid_delta_and_change_nothing() {
    run("bad deltas", Setup::memory(), async |ctx| {
        let (mut ws, version, len) = attacker_joined(ctx).await;
        let deltas = [
            json!([{"retain": 0}]),
            json!([{"insert": ""}]),
            json!([{"delete": 0}]),
            json!([{"frobnicate": 1}]),
            json!([{"retain": len + 5}, {"insert": "x"}]),
            json!([{"insert": "nul\u{0}"}]),
            json!([{"retain": -1}]),
            json!([{"insert": "x", "retain": 1}]),
        ];
        for (i, d) in deltas.iter().enumerate() {
            ws.send_text(submit(i as u64 + 1, version, d.clone())).await;
            assert_eq!(ws.answer().await, Err("invalid_delta".to_owned()), "{d}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_followed_by_an_insert_is_invalid_delta() {
    run("non-canonical", Setup::memory(), async |ctx| {
        let (mut ws, version, len) = attacker_joined(ctx).await;
        assert!(len >= 2, "the bystander has typed");
        ws.send_text(submit(1, version, json!([{"delete": 1}, {"insert": "X"}])))
            .await;
        assert_eq!(ws.answer().await, Err("invalid_delta".to_owned()));
        ws.send_text(submit(
            2,
            version,
            json!([{"retain": 1}, {"delete": 1}, {"insert": "X"}]),
        ))
        .await;
        assert_eq!(ws.answer().await, Err("invalid_delta".to_owned()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_over_the_bounds_are_invalid_delta() {
    run("attributes", Setup::memory(), async |ctx| {
        let (mut ws, version, _) = attacker_joined(ctx).await;
        let many: serde_json::Map<String, Value> =
            (0..33).map(|i| (format!("k{i}"), json!(true))).collect();
        let cases = [
            json!({"insert": "x", "attributes": many}),
            json!({"insert": "x", "attributes": {"k".repeat(65): true}}),
            json!({"insert": "x", "attributes": {"": true}}),
            json!({"insert": "x", "attributes": {"big": "v".repeat(4097)}}),
            json!({"insert": "x", "attributes": {"deep": json!([[[[[["v".repeat(4090)]]]]]])}}),
        ];
        for (i, c) in cases.iter().enumerate() {
            ws.send_text(submit(i as u64 + 1, version, json!([c])))
                .await;
            assert_eq!(ws.answer().await, Err("invalid_delta".to_owned()), "{c}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_max_document_chars_is_too_large() {
    let setup = Setup::memory().env("MAX_DOCUMENT_CHARS", 50_000);
    run("too large", setup, async |ctx| {
        let (mut ws, version, _) = attacker_joined(ctx).await;
        ws.send_text(submit(1, version, json!([{"insert": "L".repeat(60_000)}])))
            .await;
        assert_eq!(ws.answer().await, Err("too_large".to_owned()));
        // Growing to it in steps is refused at the step that crosses it.
        let mut refused = false;
        for seq in 2..=8 {
            ws.send_text(submit(seq, version, json!([{"insert": "L".repeat(9_000)}])))
                .await;
            match ws.answer().await {
                Ok(_) => {}
                Err(code) => {
                    assert_eq!(code, "too_large");
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "56,000 characters were accepted");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_going_backwards_is_out_of_order() {
    run("out of order", Setup::memory(), async |ctx| {
        let (mut ws, version, _) = attacker_joined(ctx).await;
        ws.send_text(submit(5, version, json!([{"insert": "five"}])))
            .await;
        let acked = ws.answer().await.expect("seq 5 acked");
        ws.send_text(submit(3, version, json!([{"insert": "three"}])))
            .await;
        assert_eq!(ws.answer().await, Err("out_of_order".to_owned()));
        // The duplicate of 5 is acked at its first version, whatever it carries.
        ws.send_text(submit(5, version, json!([{"insert": "other"}])))
            .await;
        assert_eq!(ws.answer().await, Ok(acked));
    })
    .await;
}

// ---------------------------------------------------------------------------
// /ready and SIGTERM (items 5, 6; F2, F9)

/// Calls of `command` Redis has served (`INFO commandstats`).
async fn redis_calls(port: u16, command: &str) -> u64 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("redis");
    s.write_all(b"INFO commandstats\r\nQUIT\r\n")
        .await
        .expect("write");
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_flood_runs_the_dependency_checks_at_most_once_a_second() {
    run("ready flood", Setup::postgres_and_redis(), async |ctx| {
        let port = ctx.target.redis.as_ref().expect("redis").port;
        let window = Duration::from_secs(2);
        // The pings Redis sees without the flood, in as long a window.
        let quiet_start = redis_calls(port, "ping").await;
        tokio::time::sleep(window).await;
        let quiet = redis_calls(port, "ping").await - quiet_start;
        let before = redis_calls(port, "ping").await;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let addr = ctx.target.addr;
            tasks.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                while started.elapsed() < window {
                    let (got, _) = exchange(
                        ATTACKER,
                        addr,
                        b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        Duration::from_secs(5),
                    )
                    .await;
                    answers.push(status_of(&got));
                    // 8 x 50 requests a second: a flood for the checks,
                    // while the attacker (on the same two cores) does not
                    // starve the bystanders of CPU by itself.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                answers
            }));
        }
        let mut total = 0;
        for t in tasks {
            let answers = t.await.expect("flooder");
            assert!(
                answers.iter().all(|s| *s == 200),
                "/ready answered {answers:?}"
            );
            total += answers.len();
        }
        let during = redis_calls(port, "ping").await - before;
        let allowed = quiet + started.elapsed().as_secs_f64().ceil() as u64 + 1;
        assert!(
            during <= allowed,
            "{total} /ready requests caused {during} Redis PINGs (at most {allowed})"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_half_sent_requests_open_exits_within_the_grace_period() {
    run("SIGTERM", Setup::memory(), async |ctx| {
        let mut socks = Vec::new();
        for _ in 0..10 {
            let mut s = tcp_from(ATTACKER, ctx.target.addr, None).await;
            let _ = s
                .write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n", ctx.path()).as_bytes())
                .await;
            socks.push(s);
        }
        for _ in 0..4 {
            socks.push(
                Raw::connect(ATTACKER, ctx.target.addr, &ctx.path(), None)
                    .await
                    .stream,
            );
        }
        // Keep the heads alive past any header timeout is not the point
        // here: the signal comes at once.
        ctx.finish_bystanders().await;
        ctx.target.terminate();
        let grace = ctx.target.setup.secs("SHUTDOWN_GRACE_SECS", 30);
        let limit = grace + Duration::from_secs(5);
        let status = ctx.target.wait_exit(limit).await;
        let status =
            status.unwrap_or_else(|| panic!("relay still running {limit:?} after SIGTERM"));
        assert!(status.success(), "relay exited with {status}");
        drop(socks);
    })
    .await;
}

// ---------------------------------------------------------------------------
// The soak slice

/// The tokenless attacks in a loop (`relay_tests::attack::soak`) for
/// `RELAY_ATTACK_SOAK_SECS` (default 120) against relays of its own, in
/// rounds of at most a minute with the bystanders measured as in every
/// case; afterwards the relay holds nothing from any soak address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 2-minute soak: docs/testing.md, \"The attack suite\""]
async fn soak_slice() {
    let secs: u64 = std::env::var("RELAY_ATTACK_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let soak = Duration::from_secs(secs);
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < soak {
        let slice = soak
            .saturating_sub(started.elapsed())
            .min(Duration::from_secs(30));
        run("soak slice", Setup::memory(), async |ctx| {
            let n = soak::run_loop(&[ctx.target.addr], Some(slice)).await;
            for i in 0..n.min(200) {
                ctx.target
                    .await_held_at_most(
                        soak::soak_address(i),
                        0,
                        Duration::from_secs(5),
                        "soak leftovers",
                    )
                    .await;
            }
            rounds += n;
        })
        .await;
    }
    eprintln!("soak_slice: {rounds} rounds in {:?}", started.elapsed());
}
