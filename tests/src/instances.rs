//! Test support for several Relay instances: real `relay` processes on
//! their own ports sharing this test process's PostgreSQL database and a
//! Redis server of the test's own (so it can be killed and restarted), with
//! tokens from a JWKS server the test runs.

use crate::auth::{JwksServer, Signer, claims};
use crate::{HttpResponse, http_get};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// A free loopback port (bound and released: another process could take it
/// in between, which the callers' start-up checks would show).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until `addr` accepts TCP connections.
async fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on {addr}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {addr} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` of the test's own on a free port, nothing on disk.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it at once (SIGKILL): every connection drops.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing).
    pub async fn restart(&mut self) {
        self.kill();
        let binary = which("redis-server").expect(
            "redis-server is not installed: run .ci/services (it installs Debian's redis-server)",
        );
        let mut child = Command::new(binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // DEBUG SLEEP: a Redis that stops answering for a while.
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        wait_listening(self.addr(), "redis-server", &mut child).await;
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([
            "/usr/bin".into(),
            "/usr/sbin".into(),
            "/usr/local/bin".into(),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The `relay` binary of this build profile, in `target/<profile>/` (the
/// app's own tests make cargo build it with `--all-targets`), built now if
/// it is missing or older than the sources.
pub fn relay_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            // target/<profile>/deps/<test>, or target/<profile>/<bin>.
            let mut profile_dir = exe.parent().expect("target/<profile>");
            if profile_dir.file_name().is_some_and(|n| n == "deps") {
                profile_dir = profile_dir.parent().expect("target/<profile>");
            }
            let binary = profile_dir.join("relay");
            let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
            if built.is_none_or(|b| newest_source().is_some_and(|s| s > b)) {
                let profile = profile_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(|n| if n == "debug" { "dev" } else { n })
                    .expect("profile name")
                    .to_owned();
                let status = Command::new(env!("CARGO"))
                    .args(["build", "-p", "relay-app", "--bin", "relay", "--profile"])
                    .arg(&profile)
                    .status()
                    .expect("cargo build relay");
                assert!(status.success(), "building relay failed");
            }
            binary
        })
        .clone()
}

static LOG_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// From now on, instances write their logs to `dir/<name>.log`
/// (`RELAY_TEST_INSTANCE_LOGS=1` shows them on the test's stderr instead).
pub fn log_to(dir: PathBuf) {
    let _ = LOG_DIR.set(dir);
}

/// When the newest source file of the binary's crates was changed.
fn newest_source() -> Option<std::time::SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                *newest = Some(newest.map_or(modified, |n| n.max(modified)));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut newest = None;
    for krate in ["domain", "ports", "adapters", "app"] {
        walk(&root.join(krate).join("src"), &mut newest);
    }
    newest
}

/// One `relay` process.
#[derive(Debug)]
pub struct Instance {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Instance {
    pub fn url(&self, document: relay_domain::DocumentId) -> String {
        format!("ws://{}/collab/{document}", self.addr)
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path).await
    }

    /// Where it serves `/metrics` (its METRICS_PORT).
    pub fn metrics_addr(&self) -> SocketAddr {
        let port = self
            .env
            .iter()
            .find(|(k, _)| k == "METRICS_PORT")
            .and_then(|(_, v)| v.parse().ok())
            .expect("METRICS_PORT is set");
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Its `/metrics` page (Prometheus text).
    pub async fn metrics(&self) -> String {
        let r = http_get(self.metrics_addr(), "/metrics").await;
        assert_eq!(
            r.status, 200,
            "{}: /metrics answered {}",
            self.name, r.status
        );
        r.body
    }

    /// The sum of the samples of `name` whose labels contain every one of
    /// `labels` (`key="value"`), 0 if it has none yet.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// `/ready`'s status and its `checks.redis`.
    pub async fn redis_ready(&self) -> (u16, String) {
        let r = self.get("/ready").await;
        let check = r.json()["checks"]["redis"]
            .as_str()
            .unwrap_or("missing")
            .to_owned();
        (r.status, check)
    }

    /// SIGTERM, as Kubernetes sends after the preStop hook: the graceful
    /// shutdown starts.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Waits for the process to exit (at most `within`); its status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, nothing flushed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts it again on the same port with the same variables.
    pub async fn restart(&mut self) {
        self.kill9();
        // Relay logs to stdout.
        let (stdout, stderr) = match LOG_DIR.get() {
            Some(dir) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{}.log", self.name)))
                    .expect("instance log file");
                let copy = file.try_clone().expect("log file");
                (Stdio::from(file), Stdio::from(copy))
            }
            None if std::env::var_os("RELAY_TEST_INSTANCE_LOGS").is_some() => {
                (Stdio::inherit(), Stdio::inherit())
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut child = Command::new(relay_binary())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start relay");
        wait_listening(self.addr, &self.name, &mut child).await;
        self.child = Some(child);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The sum of the samples of `name` in a Prometheus text page whose labels
/// contain every one of `labels` (`key="value"`).
pub fn metric_sum(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labelled, value) = rest.rsplit_once(' ')?;
            if !(labelled.is_empty() || labelled.starts_with('{')) {
                return None; // another metric whose name starts with `name`
            }
            labels
                .iter()
                .all(|want| labelled.contains(want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Runs `redis-cli -p <port> args...` and returns its output; panics if it
/// fails or takes more than 10 s.
pub async fn redis_cli(port: u16, args: &[&str]) -> String {
    let binary = which("redis-cli").expect("redis-cli is not installed (Debian's redis-tools)");
    let run = tokio::process::Command::new(binary)
        .args(["-p", &port.to_string()])
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap_or_else(|_| panic!("redis-cli {args:?} did not finish in 10 s"))
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Several instances on one database and one Redis.
#[derive(Debug)]
pub struct Cluster {
    pub redis: RedisServer,
    pub instances: Vec<Instance>,
    pub jwks: JwksServer,
    pub signer: Signer,
    pub database_url: String,
}

impl Cluster {
    /// `n` instances; `extra` variables go to every one (after the
    /// defaults, so they override them).
    pub async fn start(n: usize, extra: &[(&str, &str)]) -> Cluster {
        let redis = RedisServer::start().await;
        Cluster::start_on(n, redis, extra).await
    }

    /// `n` instances on `redis`. Instance `i` reaches Redis at
    /// `redis_urls(i)` when given (a proxy in front of Redis, say).
    pub async fn start_on(n: usize, redis: RedisServer, extra: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(n, redis, extra, |_| None).await
    }

    pub async fn start_with(
        n: usize,
        redis: RedisServer,
        extra: &[(&str, &str)],
        redis_url_of: impl Fn(usize) -> Option<String>,
    ) -> Cluster {
        Cluster::start_each(n, redis, extra, redis_url_of, |_| Vec::new()).await
    }

    /// [`Cluster::start_with`], and instance `i` also gets the variables
    /// `env_of(i)` (after `extra`, so they override it): one instance set
    /// apart, say.
    pub async fn start_each(
        n: usize,
        redis: RedisServer,
        extra: &[(&str, &str)],
        redis_url_of: impl Fn(usize) -> Option<String>,
        env_of: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let database_url = crate::pg::database_url();
        let jwks = JwksServer::start("jwks-first.json").await;
        let signer = Signer::fixture("rsa-a");
        let mut instances = Vec::new();
        for i in 0..n {
            let port = free_port();
            let mut env: Vec<(String, String)> = vec![
                ("BIND_ADDRESS".into(), format!("127.0.0.1:{port}")),
                ("METRICS_PORT".into(), free_port().to_string()),
                ("DATABASE_URL".into(), database_url.clone()),
                (
                    "REDIS_URL".into(),
                    redis_url_of(i).unwrap_or_else(|| redis.url()),
                ),
                ("JWT_PUBLIC_KEY_URL".into(), jwks.url()),
                ("PERMISSION_SOURCE".into(), "claims".into()),
                ("RUST_LOG".into(), "warn".into()),
                ("TOKIO_WORKER_THREADS".into(), "2".into()),
                ("DB_POOL_SIZE".into(), "4".into()),
                ("REDIS_POOL_SIZE".into(), "2".into()),
                ("SUBMIT_RATE_PER_SEC".into(), "10000".into()),
                ("SUBMIT_BURST".into(), "10000".into()),
            ];
            let own = env_of(i);
            let extra = extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .chain(own);
            for (k, v) in extra {
                env.retain(|(key, _)| *key != k);
                env.push((k, v));
            }
            let mut instance = Instance {
                name: format!("relay-{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child: None,
                env,
            };
            instance.restart().await;
            instances.push(instance);
        }
        Cluster {
            redis,
            instances,
            jwks,
            signer,
            database_url,
        }
    }

    /// An editor token for `user` on every document.
    pub fn token(&self, user: Uuid) -> String {
        self.signer.sign(&claims(user, json!({"*": "editor"})))
    }
}

/// A proxy in front of Redis that drops a share of the pub/sub messages
/// Redis sends (whole RESP `message` pushes, so the connection stays
/// well-formed): lost messages with no disconnection, which only a gap in
/// versions (or the store) can reveal. Everything else passes unchanged.
#[derive(Debug)]
pub struct DroppingProxy {
    pub addr: SocketAddr,
    dropped: Arc<AtomicUsize>,
    passed: Arc<AtomicUsize>,
}

impl DroppingProxy {
    pub async fn start(target: SocketAddr, share: f64, seed: u64) -> DroppingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dropped = Arc::new(AtomicUsize::new(0));
        let passed = Arc::new(AtomicUsize::new(0));
        let (d, p) = (dropped.clone(), passed.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                n += 1;
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let (d, p) = (d.clone(), p.clone());
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n));
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(server_read);
                    while let Ok((raw, is_message)) = read_frame(&mut reader).await {
                        if is_message && rng.random_bool(share) {
                            d.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if is_message {
                            p.fetch_add(1, Ordering::Relaxed);
                        }
                        if client_write.write_all(&raw).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DroppingProxy {
            addr,
            dropped,
            passed,
        }
    }

    /// Pub/sub messages dropped and passed so far.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.dropped.load(Ordering::Relaxed),
            self.passed.load(Ordering::Relaxed),
        )
    }
}

/// One RESP frame as raw bytes, and whether it is a pub/sub `message`
/// push.
async fn read_frame<R: tokio::io::AsyncBufRead + Unpin + Send>(
    r: &mut R,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut raw = Vec::new();
    let is_message = read_value(r, &mut raw, true).await?;
    Ok((raw, is_message))
}

/// Reads one RESP value onto `raw`; for an array (or push), whether its
/// first element is the bulk string `message`.
fn read_value<'a, R: tokio::io::AsyncBufRead + Unpin + Send>(
    r: &'a mut R,
    raw: &'a mut Vec<u8>,
    top: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<bool>> + Send + 'a>> {
    Box::pin(async move {
        let start = raw.len();
        if r.read_until(b'\n', raw).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = String::from_utf8_lossy(&raw[start..raw.len().saturating_sub(2)]).into_owned();
        let (kind, rest) = line.split_at(1.min(line.len()));
        let n: i64 = rest.parse().unwrap_or(0);
        match kind {
            "*" | ">" => {
                let mut first_is_message = false;
                for i in 0..n.max(0) {
                    let at = raw.len();
                    read_value(r, raw, false).await?;
                    if i == 0 {
                        first_is_message = raw[at..].ends_with(b"$7\r\nmessage\r\n");
                    }
                }
                Ok(top && first_is_message)
            }
            "$" if n >= 0 => {
                let at = raw.len();
                raw.resize(at + n as usize + 2, 0);
                r.read_exact(&mut raw[at..]).await?;
                Ok(false)
            }
            _ => Ok(false),
        }
    })
}
