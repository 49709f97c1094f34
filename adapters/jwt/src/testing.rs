//! Test support (feature `testing`): a JWKS endpoint whose document,
//! status and request log the test controls (the adapter's own tests, the
//! end-to-end tests and the load tool serve their keys with it), and
//! [`DevKeys::editor_token`], the token most tests join with.
//!
//! It answers every request on its port with the current status and body
//! and closes the connection (`Connection: close`): enough for the JWKS
//! fetcher, and nothing a production path relies on.

use crate::{DevKeys, TokenRequest};
use relay_domain::UserId;
use relay_ports::protocol::Role;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest request head read before answering.
const MAX_REQUEST_HEAD: usize = 16 << 10;
/// How long a request may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

impl DevKeys {
    /// A token for `user`, an editor of every document (`"*"`), with no
    /// name, valid for `ttl` (whole seconds).
    pub fn editor_token(&self, user: UserId, ttl: Duration) -> String {
        self.mint(&TokenRequest {
            sub: *user.as_uuid(),
            name: None,
            docs: BTreeMap::from([("*".to_owned(), Role::Editor)]),
            ttl_secs: ttl.as_secs(),
        })
        .expect("an editor-of-everything request always mints")
    }
}

#[derive(Debug)]
struct State {
    status: u16,
    body: String,
    /// `false`: every request is answered 503 whatever `status` says.
    up: bool,
    /// When each request arrived and the status it was answered with.
    requests: Vec<(Instant, u16)>,
}

/// A JWKS endpoint on 127.0.0.1 until dropped.
#[derive(Debug)]
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    _tasks: TaskTracker,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl JwksServer {
    /// Serves `body` with status 200. Needs a Tokio runtime.
    pub async fn start(body: impl Into<String>) -> std::io::Result<JwksServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            status: 200,
            body: body.into(),
            up: true,
            requests: Vec::new(),
        }));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (s, token, t) = (state.clone(), stop.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let s = s.clone();
                t.spawn(token.clone().run_until_cancelled_owned(answer(stream, s)));
            }
        });
        tasks.close();
        Ok(JwksServer {
            addr,
            state,
            stop,
            _tasks: tasks,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/jwks.json` (any path is answered alike).
    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers `status` with `body` from now on.
    pub fn answer(&self, status: u16, body: &str) {
        let mut s = self.state();
        s.status = status;
        s.body = body.to_owned();
    }

    /// Serves `body` with status 200 from now on.
    pub fn set(&self, body: &str) {
        self.answer(200, body);
    }

    /// `false`: answer 503 to every request until set `true` again (the
    /// body and status set before come back).
    pub fn set_up(&self, up: bool) {
        self.state().up = up;
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state().requests.len()
    }

    /// When each request arrived, with the status it was answered.
    pub fn requests(&self) -> Vec<(Instant, u16)> {
        self.state().requests.clone()
    }
}

async fn answer(mut stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        while head.len() < MAX_REQUEST_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return true;
            }
        }
        false
    })
    .await;
    if complete != Ok(true) {
        return;
    }
    let (status, body) = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let (status, body) = if s.up {
            (s.status, s.body.clone())
        } else {
            (503, "down".to_owned())
        };
        s.requests.push((Instant::now(), status));
        (status, body)
    };
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Status" },
        body.len(),
    );
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
