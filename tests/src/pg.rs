//! Test support for PostgreSQL: the app on a fresh database, a document's
//! log as the store has it, and a TCP proxy in front of the database that
//! a test can cut and restore.

use crate::TestApp;
use relay_adapter_jwt::DevKeys;
use relay_adapter_memory::MemoryMetrics;
use relay_adapter_postgres::{PgPool, PgStore, PoolSettings, testdb};
use relay_app::config::Config;
use relay_app::wiring;
use relay_domain::{CommittedOp, DocumentId, Version};
use relay_ports::OperationStore;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// This test process's database URL (created and migrated on first use).
pub fn database_url() -> String {
    testdb::test_database()
}

/// The app on PostgreSQL at `config.store.database_url` (this process's test
/// database if unset), tokens signed by the usual test key.
pub async fn spawn_pg_app(mut config: Config) -> TestApp {
    if config.store.database_url.is_none() {
        config.store.database_url = Some(database_url());
    }
    let keys = DevKeys::from_seed([7; 32]);
    let metrics = Arc::new(MemoryMetrics::new());
    let wired = wiring::build_with(config.clone(), Some(&keys), metrics.clone())
        .await
        .expect("wiring");
    TestApp::serve(&config, wired.relay, wired.jwks, keys, metrics).await
}

/// Every op of `document` in the PostgreSQL store at `database_url`, from
/// version 1 on, read in pages.
pub async fn store_log(database_url: &str, document: DocumentId) -> Vec<CommittedOp> {
    let pool = PgPool::new(database_url, &PoolSettings::default()).expect("pool");
    let store = PgStore::new(pool);
    let mut all: Vec<CommittedOp> = Vec::new();
    loop {
        let from = all.last().map_or(Version::ZERO, |o| o.version);
        let ops = store.read(document, from, 1000).await.expect("read");
        if ops.is_empty() {
            return all;
        }
        all.extend(ops);
    }
}

/// A TCP proxy to `target`. `cut()` drops every connection and refuses new
/// ones (they are closed at once) until `restore()`; `stall()` keeps every
/// connection open but stops forwarding anything (a network that drops
/// packets), until `cut()` or, for new connections, `restore()`.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Up,
    Cut,
    Stalled,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(watch::Sender::new(Mode::Up));
        let m = mode.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut mode = m.subscribe();
                if *mode.borrow() == Mode::Cut {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    if *mode.borrow_and_update() == Mode::Up {
                        tokio::select! {
                            _ = copy_bidirectional(&mut inbound, &mut outbound) => return,
                            _ = mode.wait_for(|m| *m != Mode::Up) => {}
                        }
                    }
                    // Stalled: hold both ends open, forward nothing, until cut.
                    let _ = mode.wait_for(|m| *m == Mode::Cut).await;
                    drop((inbound, outbound));
                });
            }
        });
        Proxy { addr, mode }
    }

    /// A proxy to this process's test database, and the database URL
    /// through it.
    pub async fn to_test_database() -> (Proxy, String) {
        let real = database_url();
        let host = real
            .split('@')
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("host:port");
        let target = tokio::net::lookup_host(host)
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let proxy = Proxy::start(target).await;
        let url = proxy.url(&real);
        (proxy, url)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Stops forwarding on every connection, open or new, without closing.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stalled);
    }

    /// New connections are forwarded again (stalled ones stay stalled).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Up);
    }

    /// `url` (of the real server) rewritten to go through the proxy.
    pub fn url(&self, url: &str) -> String {
        let rest = url.split_once('@').map_or(url, |(_, r)| r);
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        let user = url
            .split_once("://")
            .and_then(|(_, r)| r.split_once('@'))
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        format!("postgres://{user}{}/{path}", self.addr)
    }
}
