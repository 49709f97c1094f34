//! A `relay` process the tool starts itself (`--relay`): development key,
//! ports of its own, the caller's environment on top (DATABASE_URL,
//! REDIS_URL...), stopped with SIGTERM at the end.

use anyhow::{Context, bail};
use relay_adapter_jwt::DevKeys;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Server {
    child: Child,
    pub pid: u32,
    pub url: String,
    pub port: u16,
    pub metrics_port: u16,
    pub keys: DevKeys,
    key_file: PathBuf,
    pub log: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET path` on 127.0.0.1:port: the status code.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Whether Relay started with `env` wants a JWKS URL the tool must give:
/// with a store configured it does, unless the caller gives one
/// (`JWT_PUBLIC_KEY_URL`). The tool then serves the development key's
/// JWKS (`relay_adapter_jwt::testing::JwksServer`).
pub fn needs_jwks(env: &[(String, String)]) -> bool {
    env.iter()
        .any(|(k, _)| k == "DATABASE_URL" || k == "REDIS_URL")
        && !env.iter().any(|(k, _)| k == "JWT_PUBLIC_KEY_URL")
}

impl Server {
    /// Starts `binary` and waits for `/ready`.
    /// Instance `index` of several: they share `keys` (so one token works
    /// on every instance) and `jwks_url`, the URL of their JWKS when
    /// [`needs_jwks`] says the tool serves it.
    pub fn start(
        binary: &Path,
        env: &[(String, String)],
        connections: usize,
        log_dir: &Path,
        keys: &DevKeys,
        jwks_url: Option<&str>,
        index: usize,
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let metrics_port = free_port()?;
        let keys = DevKeys::from_pem(&keys.to_pem())?;
        let key_file = std::env::temp_dir().join(format!("relay-load-{port}.pem"));
        relay_adapter_jwt::write_private_key_file(&key_file, &keys)?;
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("relay-{index}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(binary);
        if let Some(url) = jwks_url {
            cmd.env("JWT_PUBLIC_KEY_URL", url);
        }
        // Roles from the tokens the tool mints (the database would know
        // none of its users).
        if !env.iter().any(|(k, _)| k == "PERMISSION_SOURCE") {
            cmd.env("PERMISSION_SOURCE", "claims");
        }
        cmd.arg("serve")
            .env("BIND_ADDRESS", format!("127.0.0.1:{port}"))
            .env("METRICS_PORT", metrics_port.to_string())
            .env("RELAY_DEV_KEY_FILE", &key_file)
            // The late joiners of the check come on top.
            .env("MAX_CONNECTIONS", (connections + 1000).to_string())
            .env("RUST_LOG", "warn")
            .env("SHUTDOWN_GRACE_SECS", "0")
            // Relay logs to stdout; a panic goes to stderr.
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let mut server = Server {
            child,
            pid,
            url: format!("ws://127.0.0.1:{port}"),
            port,
            metrics_port,
            keys,
            key_file,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_status(port, "/ready") == Some(200) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                bail!(
                    "{} exited ({status}) before it was ready:\n{}",
                    binary.display(),
                    log.lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!("{} was not ready within 60 s", binary.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    /// SIGTERM, then SIGKILL if it is still there after 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.key_file);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.key_file);
    }
}
