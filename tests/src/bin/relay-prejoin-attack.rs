//! A benchmark, not a test: what pre-join attacks hold in a `relay`
//! process (issue 21, items 1-6). Starts the given binary (development
//! mode, in-memory adapters) as a child, runs one attack from addresses of
//! 127.0.0.0/8, and prints, once a second, the slots held (`/health`'s
//! `active_connections`), the child's RSS and how many attacking sockets
//! the server still keeps open; then a summary line.
//!
//! Attacks (no token needed):
//! - `slowloris`: N upgrade requests whose head never ends.
//! - `bad-first`: N upgrades whose first frame is `{"type":"<1 MiB>"}`
//!   (U+0085, as in the review's F1), sent after `--pings` pings, from
//!   sockets with a 4 KiB receive buffer that never read.
//! - `pongs`: N upgrades that send `--pings` pings and never read nor join.
//! - `joined` (with a token: the cost of a large `joined`, F3): one writer
//!   fills a document with `--doc-mib` MiB, then N clients with a 4 KiB
//!   receive buffer join it and never read.
//!
//! ```text
//! cargo build --profile ci-release --workspace
//! target/ci-release/relay-prejoin-attack --relay target/ci-release/relay \
//!     --attack slowloris --count 400 --addresses 8 --seconds 30 --max-connections 200
//! ```

use anyhow::{Context, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

struct Args {
    relay: String,
    attack: String,
    count: usize,
    addresses: u8,
    seconds: u64,
    pings: usize,
    max_connections: usize,
    doc_mib: usize,
    env: Vec<(String, String)>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        relay: "target/ci-release/relay".into(),
        attack: "slowloris".into(),
        count: 400,
        addresses: 1,
        seconds: 30,
        pings: 0,
        max_connections: 200,
        doc_mib: 8,
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--relay" => a.relay = v,
            "--attack" => a.attack = v,
            "--count" => a.count = v.parse()?,
            "--addresses" => a.addresses = v.parse()?,
            "--seconds" => a.seconds = v.parse()?,
            "--pings" => a.pings = v.parse()?,
            "--max-connections" => a.max_connections = v.parse()?,
            "--doc-mib" => a.doc_mib = v.parse()?,
            "--env" => {
                let (k, v) = v.split_once('=').context("--env NAME=value")?;
                a.env.push((k.to_owned(), v.to_owned()));
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.addresses == 0 {
        bail!("--addresses must be at least 1");
    }
    Ok(a)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start(a: &Args) -> anyhow::Result<(Relay, SocketAddr, std::path::PathBuf)> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let key = std::env::temp_dir().join(format!("relay-prejoin-attack-{port}.pem"));
    let big = (a.doc_mib + 1) << 20;
    let child = Command::new(&a.relay)
        .env_clear()
        .env("BIND_ADDRESS", addr.to_string())
        .env("METRICS_PORT", free_port()?.to_string())
        .env("MAX_CONNECTIONS", a.max_connections.to_string())
        .env("RUST_LOG", "error")
        .env("MAX_MESSAGE_BYTES", big.to_string())
        .env("OUTBOUND_QUEUE_BYTES", (4 * big + (64 << 10)).to_string())
        .envs(a.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("serve")
        .arg("--dev-key-file")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", a.relay))?;
    let relay = Relay(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("relay did not listen on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((relay, addr, key))
}

/// An editor token for every document, from the development key.
fn token(relay: &str, key: &std::path::Path) -> anyhow::Result<String> {
    let out = Command::new(relay)
        .args([
            "token",
            "--sub",
            &uuid::Uuid::new_v4().to_string(),
            "--doc",
            "*",
        ])
        .args(["--role", "editor", "--key-file"])
        .arg(key)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .last()
        .map(|l| l.trim().to_owned())
        .filter(|t| !t.is_empty())
        .context("relay token printed nothing")
}

/// Fills `document` with `mib` MiB of text (one submit) and waits for its
/// ack.
async fn fill(
    addr: SocketAddr,
    document: uuid::Uuid,
    token: &str,
    mib: usize,
) -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/collab/{document}"),
        Some(config),
        false,
    )
    .await?;
    let join =
        serde_json::json!({"type": "join", "client_id": "writer", "token": token, "since": null});
    ws.send(Message::text(join.to_string())).await?;
    let text = "lorem ipsum ".repeat((mib << 20) / 12);
    let mut sent = false;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
        let Message::Text(t) = m? else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
        match v["type"].as_str() {
            Some("joined") if !sent => {
                let submit = serde_json::json!({"type": "submit", "seq": 1, "base": v["version"],
                                                "delta": [{"insert": text}]});
                ws.send(Message::text(submit.to_string())).await?;
                sent = true;
            }
            Some("ack") => return Ok(()),
            Some("error") => bail!("the fill was refused: {t}"),
            _ => {}
        }
    }
    bail!("closed before the fill was acknowledged")
}

/// `/health`'s `active_connections` (asked from 127.0.0.1).
async fn active(addr: SocketAddr) -> Option<u64> {
    let ask = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8_lossy(&body);
        let json = text.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        v["active_connections"].as_u64()
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

async fn connect(from: Ipv4Addr, to: SocketAddr, small: bool) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    if small {
        socket.set_recv_buffer_size(4096)?;
    }
    Ok(socket.connect(to).await?)
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// One attacking connection; the socket, kept open (and never read from
/// after the upgrade).
async fn attack_one(
    kind: &str,
    from: Ipv4Addr,
    to: SocketAddr,
    pings: usize,
    join: Option<(uuid::Uuid, String)>,
) -> anyhow::Result<TcpStream> {
    let document = join.as_ref().map_or_else(uuid::Uuid::new_v4, |(d, _)| *d);
    match kind {
        "slowloris" => {
            let mut s = connect(from, to, false).await?;
            s.write_all(format!("GET /collab/{document} HTTP/1.1\r\nHost: x\r\n").as_bytes())
                .await?;
            Ok(s)
        }
        "bad-first" | "pongs" | "joined" => {
            let mut s = connect(from, to, true).await?;
            s.write_all(
                format!(
                    "GET /collab/{document} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await?? == 0 {
                    bail!("closed during the upgrade");
                }
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 101") {
                bail!(
                    "refused: {}",
                    String::from_utf8_lossy(&head).lines().next().unwrap_or("")
                );
            }
            let ping = frame(0x9, &[b'p'; 125]);
            let mut bytes: Vec<u8> = ping
                .iter()
                .copied()
                .cycle()
                .take(ping.len() * pings)
                .collect();
            if kind == "bad-first" {
                let payload = format!("{{\"type\":\"{}\"}}", "\u{85}".repeat(524_000));
                bytes.extend(frame(0x1, payload.as_bytes()));
            }
            if let Some((_, token)) = &join {
                let join = serde_json::json!({"type": "join", "client_id": "reader",
                                              "token": token, "since": null});
                bytes.extend(frame(0x1, join.to_string().as_bytes()));
            }
            // The server may stop reading: written in the background, at
            // most 10 s.
            let (read, mut write) = s.into_split();
            let written = tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), write.write_all(&bytes)).await;
                write
            });
            let write = written.await?;
            Ok(read.reunite(write)?)
        }
        other => bail!("unknown attack {other}"),
    }
}

/// Attacking sockets the server still keeps open.
fn still_open(sockets: &mut [Option<TcpStream>]) -> usize {
    let mut buf = [0u8; 4096];
    let mut open = 0;
    for slot in sockets.iter_mut() {
        let Some(s) = slot else { continue };
        let closed = loop {
            match s.try_read(&mut buf) {
                Ok(0) => break true,
                // Reading drains what the server sent (only to look for
                // the end): the attack itself never reads.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if closed {
            *slot = None;
        } else {
            open += 1;
        }
    }
    open
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let (relay, addr, key) = start(&a).await?;
    let join = if a.attack == "joined" {
        let token = token(&a.relay, &key)?;
        let document = uuid::Uuid::new_v4();
        fill(addr, document, &token, a.doc_mib).await?;
        Some((document, token))
    } else {
        None
    };
    let pid = relay.0.id();
    let rss = || relay_load::procfs::rss_kib(pid).unwrap_or(0) / 1024;
    let rss_before = rss();
    println!(
        "relay {} attack {} count {} addresses {} pings {} max_connections {}; RSS before {} MiB",
        a.relay, a.attack, a.count, a.addresses, a.pings, a.max_connections, rss_before
    );
    let started = Instant::now();
    let mut attempts = Vec::new();
    for i in 0..a.count {
        let from = Ipv4Addr::new(127, 0, 1, 1 + (i % usize::from(a.addresses)) as u8);
        let kind = a.attack.clone();
        let pings = a.pings;
        let join = join.clone();
        attempts.push(tokio::spawn(async move {
            attack_one(&kind, from, addr, pings, join).await
        }));
    }
    let mut sockets = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await? {
            Ok(s) => sockets.push(Some(s)),
            Err(_) => refused += 1,
        }
    }
    println!(
        "{} sockets opened, {refused} refused at once, in {:.1} s",
        sockets.len(),
        started.elapsed().as_secs_f64()
    );
    let mut max_active = 0;
    let mut max_rss = rss_before;
    let mut last = (0, 0, 0);
    for second in 1..=a.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = active(addr).await;
        let now_rss = rss();
        let open = still_open(&mut sockets);
        max_active = max_active.max(held.unwrap_or(0));
        max_rss = max_rss.max(now_rss);
        last = (held.unwrap_or(0), now_rss, open);
        println!(
            "t={second:>3}s active_connections={} rss={now_rss} MiB attacker_sockets_open={open}",
            held.map_or("no answer".to_owned(), |h| h.to_string())
        );
    }
    println!(
        "summary: attack={} count={} slots_max={max_active} slots_end={} rss_before={rss_before} MiB rss_max={max_rss} MiB rss_end={} MiB sockets_open_end={}",
        a.attack, a.count, last.0, last.1, last.2
    );
    drop(relay);
    Ok(())
}
