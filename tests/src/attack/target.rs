//! The relay process under attack: the build's own `relay` binary on a free
//! loopback port, in memory (tokens from a JWKS server inside the test) or
//! on PostgreSQL (and a Redis of its own) where durability or a dependency
//! check is the point; its resident memory and the sockets it holds, read
//! from `/proc`.

use crate::auth::{JwksServer, Signer, now};
use crate::instances::{RedisServer, free_port, relay_binary};
use crate::{HttpResponse, http_get};
use relay_adapter_postgres::{PgPermissions, PgPool, PoolSettings};
use relay_domain::{DocumentId, Role, UserId};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The issuer and audience every target requires.
pub const ISSUER: &str = "https://id.attack.example/";
pub const AUDIENCE: &str = "relay-attack";

/// The variables every target starts with (a case's own come after and
/// override them): short pre-join deadlines, so that a case that waits for
/// one waits seconds, not the production defaults.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("RUST_LOG", "warn"),
    ("TOKIO_WORKER_THREADS", "2"),
    ("AUTH_TIMEOUT_SECS", "2"),
    ("HEADER_TIMEOUT_SECS", "2"),
    ("MAX_PENDING_PER_IP", "16"),
    ("SHUTDOWN_GRACE_SECS", "2"),
    ("HEARTBEAT_INTERVAL_SECS", "5"),
    ("HEARTBEAT_TIMEOUT_SECS", "15"),
    ("ROOM_IDLE_SECS", "5"),
];

/// How a target is started.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// On PostgreSQL (this process's test database) instead of memory.
    pub postgres: bool,
    /// With a `redis-server` of its own (needs `postgres`).
    pub redis: bool,
    /// Variables over [`DEFAULTS`].
    pub env: Vec<(String, String)>,
}

impl Setup {
    pub fn memory() -> Setup {
        Setup::default()
    }

    pub fn postgres() -> Setup {
        Setup {
            postgres: true,
            ..Setup::default()
        }
    }

    /// PostgreSQL and a Redis of its own.
    pub fn postgres_and_redis() -> Setup {
        Setup {
            postgres: true,
            redis: true,
            ..Setup::default()
        }
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Setup {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// The value a variable will have (the case's, else the default).
    pub fn get(&self, key: &str) -> Option<String> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| {
                DEFAULTS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            })
    }

    /// A variable's value in seconds (or its default).
    pub fn secs(&self, key: &str, default: u64) -> Duration {
        Duration::from_secs(
            self.get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    }
}

/// A running `relay` process and what it needs (killed when dropped).
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub setup: Setup,
    pub jwks: JwksServer,
    pub signer: Signer,
    pub redis: Option<RedisServer>,
    pub database_url: Option<String>,
    child: Option<Child>,
}

impl Target {
    /// Starts it and waits (at most 30 s) until `/ready` answers 200: its
    /// token keys are loaded.
    pub async fn start(setup: Setup) -> Target {
        let jwks = JwksServer::start("jwks-first.json").await;
        let port = free_port();
        let metrics_port = free_port();
        let mut env: Vec<(String, String)> = DEFAULTS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.extend([
            ("BIND_ADDRESS".to_owned(), format!("127.0.0.1:{port}")),
            ("METRICS_PORT".to_owned(), metrics_port.to_string()),
            ("JWT_PUBLIC_KEY_URL".to_owned(), jwks.url()),
            ("JWT_ISSUER".to_owned(), ISSUER.to_owned()),
            ("JWT_AUDIENCE".to_owned(), AUDIENCE.to_owned()),
            // A case asks for PERMISSION_SOURCE=database itself.
            ("PERMISSION_SOURCE".to_owned(), "claims".to_owned()),
        ]);
        let mut database_url = None;
        if setup.postgres {
            let url = crate::pg::database_url();
            env.push(("DATABASE_URL".to_owned(), url.clone()));
            database_url = Some(url);
        }
        let mut redis = None;
        if setup.redis {
            let r = RedisServer::start().await;
            env.push(("REDIS_URL".to_owned(), r.url()));
            redis = Some(r);
        }
        for (k, v) in &setup.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        let logs = std::env::var_os("RELAY_TEST_INSTANCE_LOGS").is_some();
        let output = || {
            if logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        let child = Command::new(relay_binary())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("start relay");
        let mut target = Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            setup,
            jwks,
            signer: Signer::fixture("rsa-a"),
            redis,
            database_url,
            child: Some(child),
        };
        target.await_ready().await;
        target
    }

    async fn await_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.as_mut().expect("started").try_wait() {
                panic!("relay exited at start: {status}");
            }
            let up = tokio::net::TcpStream::connect(self.addr).await.is_ok();
            if up && self.get("/ready").await.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "relay on {} not ready after 30 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self, document: DocumentId) -> String {
        format!("ws://{}/collab/{document}", self.addr)
    }

    pub fn path(document: DocumentId) -> String {
        format!("/collab/{document}")
    }

    /// `GET path` from 127.0.0.1 (a fresh connection each time).
    pub async fn get(&self, path: &str) -> HttpResponse {
        tokio::time::timeout(Duration::from_secs(10), http_get(self.addr, path))
            .await
            .unwrap_or_else(|_| panic!("GET {path} did not answer within 10 s"))
    }

    /// A signed token: `claims` over the standard ones (`sub`, `exp` in an
    /// hour, `iss`, `aud`).
    pub fn token_with(&self, user: Uuid, docs: Value, extra: Value) -> String {
        let mut c = json!({
            "sub": user.to_string(), "exp": now() + 3600, "iat": now(),
            "iss": ISSUER, "aud": AUDIENCE, "docs": docs,
        });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        self.signer.sign(&c)
    }

    /// An editor of every document.
    pub fn editor(&self, user: Uuid) -> String {
        self.token_with(user, json!({"*": "editor"}), json!({}))
    }

    /// A viewer of every document.
    pub fn viewer(&self, user: Uuid) -> String {
        self.token_with(user, json!({"*": "viewer"}), json!({}))
    }

    /// Whether roles come from the database (grants are needed).
    pub fn database_permissions(&self) -> bool {
        self.setup.get("PERMISSION_SOURCE").as_deref() == Some("database")
    }

    fn permissions(&self) -> PgPermissions {
        let url = self.database_url.as_deref().expect("a PostgreSQL target");
        PgPermissions::new(PgPool::new(url, &PoolSettings::default()).expect("pool"))
    }

    /// Grants `role` on `document` in the database.
    pub async fn grant(&self, user: Uuid, document: DocumentId, role: Role) {
        self.permissions()
            .grant(UserId::new(user), document, role)
            .await
            .expect("grant");
    }

    /// Removes `user`'s grant on `document`.
    pub async fn revoke(&self, user: Uuid, document: DocumentId) {
        self.permissions()
            .revoke(UserId::new(user), document)
            .await
            .expect("revoke");
    }

    /// Resident memory in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        relay_load::procfs::rss_kib(self.pid()).expect("VmRSS") * 1024
    }

    /// File descriptors the process holds.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// TCP sockets the process holds whose peer is `ip` (the slots an
    /// attacker at that address pins): its socket descriptors matched, by
    /// inode, with `/proc/net/tcp`.
    pub fn held_from(&self, ip: Ipv4Addr) -> usize {
        let inodes = crate::attack::net::tcp_inodes_with_peer(ip);
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return 0;
        };
        fds.flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|i| inodes.contains(i))
            .count()
    }

    /// Polls (every 50 ms) until at most `n` sockets from `ip` are held;
    /// panics naming `what` after `within`.
    pub async fn await_held_at_most(&self, ip: Ipv4Addr, n: usize, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            let held = self.held_from(ip);
            if held <= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: relay still holds {held} sockets from {ip} after {within:?} (at most {n} expected)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM");
    }

    /// Waits for the process to exit; `None` if it still runs after
    /// `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
