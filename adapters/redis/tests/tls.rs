//! Redis over TLS (`rediss://`) with a password, against a real
//! `redis-server` started by each test on a free port with `--port 0`
//! (TLS only) and `--requirepass`, its certificate issued by a CA the test
//! generates (rcgen). Skipped, with the reason printed, where
//! `redis-server` is not installed.

use relay_adapter_redis::{RedisError, RedisSettings, connect};
use relay_ports::contract::{bus, presence};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

const QUEUE: usize = 8;
const PASSWORD: &str = "s3cret-test-password";
/// The longest a connection attempt may take before the test fails.
const CONNECT_WAIT: Duration = Duration::from_secs(20);

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

/// A CA and a certificate for 127.0.0.1 and localhost signed by it, as PEM
/// files in `dir`: `ca.pem`, `server.pem`, `server.key`; and a second,
/// unrelated CA in `other-ca.pem`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    };
    let (ca_cert, issuer) = ca("Relay test CA");
    let (other_cert, _) = ca("Another CA");
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "redis test server");
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// A TLS-only redis-server requiring [`PASSWORD`], stopped (and its files
/// removed) when dropped.
struct TlsRedis {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl TlsRedis {
    /// `None` (with the reason printed) where redis-server is not installed.
    fn start(test: &str) -> Option<TlsRedis> {
        let Some(server) = which("redis-server") else {
            println!("{test}: skipped: redis-server is not installed");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("relay-redis-tls-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        certificates(&dir);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let file = |name: &str| dir.join(name).into_os_string();
        let child = Command::new(server)
            .arg("--port")
            .arg("0")
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--tls-cert-file")
            .arg(file("server.pem"))
            .arg("--tls-key-file")
            .arg(file("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(file("ca.pem"))
            .arg("--tls-auth-clients")
            .arg("no")
            .arg("--requirepass")
            .arg(PASSWORD)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting redis-server");
        let mut redis = TlsRedis { child, dir, port };
        redis.wait_until_listening();
        Some(redis)
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "redis-server exited ({status}) before listening on {}:\n{}",
                    self.port,
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, scheme: &str, password: Option<&str>) -> String {
        match password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("{scheme}://127.0.0.1:{}/0", self.port),
        }
    }

    /// Settings trusting the test's CA (REDIS_CA_FILE).
    fn settings(&self) -> RedisSettings {
        RedisSettings {
            queue: QUEUE,
            tls_ca_file: Some(self.dir.join("ca.pem")),
            ..RedisSettings::default()
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `connect`, failing the test if it neither succeeds nor fails in time.
async fn try_connect(
    url: &str,
    settings: RedisSettings,
) -> Result<
    (
        relay_adapter_redis::RedisBus,
        relay_adapter_redis::RedisPresence,
    ),
    RedisError,
> {
    tokio::time::timeout(CONNECT_WAIT, connect(url, settings))
        .await
        .unwrap_or_else(|_| panic!("connect({url}) neither succeeded nor failed within 20 s"))
}

async fn refused(url: &str, settings: RedisSettings) -> String {
    match try_connect(url, settings).await {
        Ok(_) => panic!("connect({url}) succeeded"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_rediss_with_a_password_the_bus_and_presence_keep_their_contracts() {
    let test = "over_rediss_with_a_password_the_bus_and_presence_keep_their_contracts";
    let Some(redis) = TlsRedis::start(test) else {
        return;
    };
    let url = redis.url("rediss", Some(PASSWORD));
    let make_bus = async || {
        try_connect(&url, redis.settings())
            .await
            .unwrap_or_else(|e| panic!("rediss:// with the password and the CA: {e}"))
            .0
    };
    bus::run_all(&make_bus, QUEUE * 8).await;
    let make_presence = async || {
        try_connect(&url, redis.settings())
            .await
            .unwrap_or_else(|e| panic!("rediss:// with the password and the CA: {e}"))
            .1
    };
    presence::run_all(
        &make_presence,
        &async |by| tokio::time::sleep(by).await,
        Duration::from_millis(400),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_redis_url_to_the_tls_port_fails() {
    let Some(redis) = TlsRedis::start("a_plain_redis_url_to_the_tls_port_fails") else {
        return;
    };
    let settings = RedisSettings {
        tls_ca_file: None,
        ..redis.settings()
    };
    let error = refused(&redis.url("redis", Some(PASSWORD)), settings).await;
    assert!(error.starts_with("redis: "), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_password_fails_at_connect_with_redis_words() {
    let Some(redis) =
        TlsRedis::start("a_wrong_or_missing_password_fails_at_connect_with_redis_words")
    else {
        return;
    };
    let wrong = refused(
        &redis.url("rediss", Some("not-the-password")),
        redis.settings(),
    )
    .await;
    assert!(
        wrong.to_lowercase().contains("authentication failed") && wrong.contains("REDIS_URL"),
        "wrong password: {wrong}"
    );
    assert!(
        !wrong.contains("not-the-password"),
        "the error repeats the password: {wrong}"
    );
    let missing = refused(&redis.url("rediss", None), redis.settings()).await;
    assert!(
        missing.contains("NOAUTH") && missing.contains("REDIS_URL"),
        "no password: {missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_that_does_not_chain_to_the_trusted_ca_fails() {
    let Some(redis) =
        TlsRedis::start("a_server_certificate_that_does_not_chain_to_the_trusted_ca_fails")
    else {
        return;
    };
    let url = redis.url("rediss", Some(PASSWORD));
    // The system's CA certificates do not include the test's CA...
    let system = refused(
        &url,
        RedisSettings {
            tls_ca_file: None,
            ..redis.settings()
        },
    )
    .await;
    assert!(system.starts_with("redis: "), "{system}");
    // ...nor does another CA.
    let other = refused(
        &url,
        RedisSettings {
            tls_ca_file: Some(redis.dir.join("other-ca.pem")),
            ..redis.settings()
        },
    )
    .await;
    assert!(other.starts_with("redis: "), "{other}");
    // REDIS_CA_FILE with a plain redis:// URL is a configuration error.
    let plain = refused(&redis.url("redis", Some(PASSWORD)), redis.settings()).await;
    assert!(plain.contains("REDIS_CA_FILE"), "{plain}");
    // And a CA file that is not there is named.
    let absent = refused(
        &url,
        RedisSettings {
            tls_ca_file: Some(redis.dir.join("absent.pem")),
            ..redis.settings()
        },
    )
    .await;
    assert!(absent.contains("absent.pem"), "{absent}");
}
