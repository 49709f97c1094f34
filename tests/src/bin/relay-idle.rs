//! Measures the server's resident memory per idle connection.
//!
//! Starts a `relay` binary (development mode, in-memory adapters) as a child
//! process, opens N WebSocket connections that each join a document and then
//! stay idle, and reads the child's RSS from `/proc` before and after. The
//! figure is the slope between N/2 and N connections, so fixed costs
//! (rooms, the runtime's first allocations) do not count.
//!
//! ```text
//! cargo build --release -p relay-app -p relay-tests
//! target/release/relay-idle --relay target/release/relay --connections 2000
//! ```

use anyhow::{Context, bail};
use relay_adapter_jwt::{DevKeys, TokenRequest};
use relay_ports::protocol::Role;
use relay_tests::{Conn, Connect, ConnectOptions};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

struct Args {
    relay: String,
    connections: usize,
    documents: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        relay: "target/release/relay".into(),
        connections: 2000,
        documents: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--relay" => a.relay = v,
            "--connections" => a.connections = v.parse()?,
            "--documents" => a.documents = v.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn health(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn active_connections(port: u16) -> Option<usize> {
    let body = health(port)?;
    let json = body.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["active_connections"].as_u64().map(|n| n as usize)
}

struct Server(Child);

impl Drop for Server {
    /// SIGTERM (a graceful exit, so profilers can write their output), then
    /// SIGKILL if it is still there after a while.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn open(
    port: u16,
    n: usize,
    documents: &[Uuid],
    token: &str,
    conns: &mut Vec<Conn>,
) -> anyhow::Result<()> {
    for i in 0..n {
        let doc = documents[(conns.len() + i) % documents.len()];
        let url = format!("ws://127.0.0.1:{port}/collab/{doc}");
        let Connect::Open(mut c) = Conn::open(&url, ConnectOptions::default()).await else {
            bail!("connection {i} refused");
        };
        c.join(&format!("idle-{}", conns.len()), Some(token), None)
            .await;
        c.message().await;
        conns.push(c);
    }
    Ok(())
}

async fn settle(pid: u32, port: u16, expected: usize) -> anyhow::Result<u64> {
    for _ in 0..100 {
        if active_connections(port) == Some(expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let allocator caches and the runtime go quiet before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay_load::procfs::rss_kib(pid)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let key_file = std::env::temp_dir().join(format!("relay-idle-{port}.pem"));
    let keys = DevKeys::from_seed(rand::random());
    relay_adapter_jwt::write_private_key_file(&key_file, &keys)?;
    let child = Command::new(&a.relay)
        .env("BIND_ADDRESS", format!("127.0.0.1:{port}"))
        .env("RELAY_DEV_KEY_FILE", &key_file)
        .env("MAX_CONNECTIONS", (a.connections + 10).to_string())
        .env("RUST_LOG", "warn")
        .env("SHUTDOWN_GRACE_SECS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", a.relay))?;
    let pid = child.id();
    let _server = Server(child);
    for _ in 0..100 {
        if health(port).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut docs = BTreeMap::new();
    docs.insert("*".to_owned(), Role::Editor);
    let token = keys.mint(&TokenRequest {
        sub: Uuid::new_v4(),
        name: None,
        docs,
        ttl_secs: 3600,
    })?;
    let documents: Vec<Uuid> = (0..a.documents).map(|_| Uuid::new_v4()).collect();
    let mut conns = Vec::new();
    let start = settle(pid, port, 0).await?;
    open(port, a.connections / 2, &documents, &token, &mut conns).await?;
    let half = settle(pid, port, conns.len()).await?;
    let half_n = conns.len();
    open(port, a.connections - half_n, &documents, &token, &mut conns).await?;
    let full = settle(pid, port, conns.len()).await?;
    let per = (full.saturating_sub(half)) as f64 * 1024.0 / (conns.len() - half_n) as f64;
    println!(
        "relay idle connections: {} over {} documents; RSS {} KiB empty, {} KiB at {}, {} KiB at {}",
        conns.len(),
        a.documents,
        start,
        half,
        half_n,
        full,
        conns.len()
    );
    println!(
        "memory per idle connection: {:.1} KB (slope {}..{}), {:.1} KB overall average",
        per / 1000.0,
        half_n,
        conns.len(),
        (full.saturating_sub(start)) as f64 * 1024.0 / conns.len() as f64 / 1000.0
    );
    let _ = std::fs::remove_file(&key_file);
    Ok(())
}
