//! Test support for PostgreSQL: the app on a fresh database, and a TCP
//! proxy in front of the database that a test can cut and restore.

use crate::TestApp;
use relay_adapters::jwt::DevKeys;
use relay_adapters::postgres::testdb;
use relay_app::config::Config;
use relay_app::wiring;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// This test process's database URL (created and migrated on first use).
pub fn database_url() -> String {
    testdb::test_database()
}

/// The app on PostgreSQL at `config.database_url` (this process's test
/// database if unset), tokens signed by the usual test key.
pub async fn spawn_pg_app(mut config: Config) -> TestApp {
    if config.database_url.is_none() {
        config.database_url = Some(database_url());
    }
    let keys = DevKeys::from_seed([7; 32]);
    let wired = wiring::build(config.clone(), Some(&keys))
        .await
        .expect("wiring");
    TestApp::serve(&config, wired.relay, wired.jwks, keys, wired.metrics).await
}

/// A TCP proxy to `target`. `cut()` drops every connection and refuses new
/// ones (they are closed at once) until `restore()`.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (u, c) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    continue;
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
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
