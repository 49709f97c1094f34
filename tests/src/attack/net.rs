//! Sockets from a chosen loopback address (attackers and bystanders come
//! from different addresses of 127.0.0.0/8), the upgrade done by hand, a
//! message-level client ([`Ws`]) and a frame-level one ([`Raw`]) that can
//! send what a well-behaved library would not, and the kernel's view of the
//! sockets (`/proc/net/tcp`).

use futures::{SinkExt, StreamExt};
use relay_ports::ClientMessage;
use relay_ports::protocol::ServerMessage;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

/// How long a client-side wait may last unless a case says otherwise.
pub const WAIT: Duration = Duration::from_secs(10);

/// A TCP connection from `ip` to `to`, with a small kernel receive buffer
/// when `rcvbuf` is given (set before connecting, so the advertised window
/// stays small and a client that does not read backs the server up fast).
pub async fn tcp_from(ip: Ipv4Addr, to: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    }
    socket
        .bind(SocketAddr::from((ip, 0)))
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let stream = tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .unwrap_or_else(|_| panic!("connect from {ip} to {to}: no answer in {WAIT:?}"))
        .unwrap_or_else(|e| panic!("connect from {ip} to {to}: {e}"));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

/// The upgrade request for `path`, with `extra` header lines (each ending in
/// CRLF).
pub fn upgrade_request(to: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: relay.v1\r\n{extra}\r\n"
    )
}

/// A refused upgrade: the status and the head as text (0 and "" when the
/// connection was closed without an answer).
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub head: String,
}

/// Sends the upgrade request on `stream`; the stream, upgraded, on a 101.
pub async fn upgrade(
    mut stream: TcpStream,
    to: SocketAddr,
    path: &str,
    extra: &str,
) -> Result<TcpStream, Refused> {
    stream
        .write_all(upgrade_request(to, path, extra).as_bytes())
        .await
        .expect("write upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the head may be taken from the stream.
    let read_head = async {
        loop {
            match stream.read(&mut byte).await {
                Ok(1) => {
                    head.push(byte[0]);
                    if head.ends_with(b"\r\n\r\n") {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    };
    let complete = tokio::time::timeout(WAIT, read_head)
        .await
        .unwrap_or_else(|_| panic!("no answer to the upgrade of {path} in {WAIT:?}"));
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if complete && status == 101 {
        Ok(stream)
    } else {
        Err(Refused { status, head: text })
    }
}

/// Connects from `ip` and upgrades; panics if refused.
pub async fn upgraded_from(
    ip: Ipv4Addr,
    to: SocketAddr,
    path: &str,
    rcvbuf: Option<u32>,
) -> TcpStream {
    let stream = tcp_from(ip, to, rcvbuf).await;
    upgrade(stream, to, path, "")
        .await
        .unwrap_or_else(|r| panic!("upgrade from {ip} refused: {r:?}"))
}

/// What a message-level client receives.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Got {
    Msg(ServerMessage),
    /// A close frame's code and reason, or `None` and "" when the
    /// connection ended without one.
    Closed(Option<u16>, String),
}

/// A message-level WebSocket client (tungstenite over a stream from a
/// chosen address).
#[derive(Debug)]
pub struct Ws {
    ws: WebSocketStream<TcpStream>,
}

impl Ws {
    /// Over an upgraded stream.
    pub async fn over(stream: TcpStream) -> Ws {
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        Ws {
            ws: WebSocketStream::from_raw_socket(stream, Role::Client, Some(config)).await,
        }
    }

    /// Connects from `ip` to `/collab/{document}` and upgrades.
    pub async fn connect(ip: Ipv4Addr, to: SocketAddr, path: &str) -> Ws {
        Ws::over(upgraded_from(ip, to, path, None).await).await
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> bool {
        let send = self.ws.send(Message::text(text.into()));
        matches!(tokio::time::timeout(WAIT, send).await, Ok(Ok(())))
    }

    pub async fn send(&mut self, m: &ClientMessage) -> bool {
        self.send_text(m.encode()).await
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> bool {
        let send = self.ws.send(Message::binary(bytes));
        matches!(tokio::time::timeout(WAIT, send).await, Ok(Ok(())))
    }

    /// Sends a `join`.
    pub async fn send_join(&mut self, client_id: &str, token: Option<&str>, since: Option<u64>) {
        // As JSON, so that any `since` can be sent.
        let m = serde_json::json!({
            "type": "join", "client_id": client_id, "token": token, "since": since,
        });
        self.send_text(m.to_string()).await;
    }

    /// Joins; the `joined`, or the close that refused it.
    pub async fn join(
        &mut self,
        client_id: &str,
        token: &str,
        since: Option<u64>,
    ) -> Result<ServerMessage, Got> {
        self.send_join(client_id, Some(token), since).await;
        loop {
            match self.recv().await {
                Got::Msg(m @ ServerMessage::Joined { .. }) => return Ok(m),
                Got::Msg(ServerMessage::Error { .. }) => {}
                other @ Got::Closed(..) => return Err(other),
                Got::Msg(m) => panic!("a message before joined: {m:?}"),
            }
        }
    }

    /// The next message or close; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Got {
        self.recv_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("nothing arrived in {WAIT:?}"))
    }

    /// The next message or close within `wait` (pings answered, pongs
    /// skipped); `None` if nothing came.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Got> {
        let deadline = Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None | Some(Err(_)) => Got::Closed(None, String::new()),
                Some(Ok(Message::Text(t))) => Got::Msg(
                    ServerMessage::decode(t.as_str())
                        .unwrap_or_else(|e| panic!("undecodable server message {t}: {e}")),
                ),
                Some(Ok(Message::Close(frame))) => match frame {
                    Some(f) => Got::Closed(Some(u16::from(f.code)), f.reason.to_string()),
                    None => Got::Closed(None, String::new()),
                },
                Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                Some(Ok(_)) => continue,
            });
        }
    }

    /// Skips messages until the close; its code and reason. Panics if the
    /// connection is still open after `within`.
    pub async fn closed_within(&mut self, within: Duration) -> (Option<u16>, String) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                Some(Got::Closed(code, reason)) => return (code, reason),
                Some(Got::Msg(_)) => {}
                None => panic!("the connection is still open after {within:?}"),
            }
        }
    }

    /// The errors received until the close (within `within`), then the
    /// close code.
    pub async fn errors_then_close(&mut self, within: Duration) -> (Vec<String>, Option<u16>) {
        let deadline = Instant::now() + within;
        let mut errors = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                Some(Got::Closed(code, _)) => return (errors, code),
                Some(Got::Msg(ServerMessage::Error { code, .. })) => {
                    errors.push(code.as_str().to_owned())
                }
                Some(Got::Msg(_)) => {}
                None => panic!("the connection is still open after {within:?} ({errors:?})"),
            }
        }
    }

    /// The next `ack` or `error` (other traffic skipped): `Ok(version)` or
    /// `Err(code)`.
    pub async fn answer(&mut self) -> Result<u64, String> {
        loop {
            match self.recv().await {
                Got::Msg(ServerMessage::Ack { version, .. }) => return Ok(version.get()),
                Got::Msg(ServerMessage::Error { code, .. }) => {
                    return Err(code.as_str().to_owned());
                }
                Got::Msg(_) => {}
                Got::Closed(c, r) => panic!("closed ({c:?} {r}) while an answer was expected"),
            }
        }
    }

    /// Whether the connection is still open: nothing but ordinary traffic
    /// arrives within `wait`.
    pub async fn open_after(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                None => return true,
                Some(Got::Closed(..)) => return false,
                Some(Got::Msg(_)) => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Closes with a normal close frame carrying `code`.
    pub async fn close_with(mut self, code: u16) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(Some(frame))).await;
    }
}

/// WebSocket opcodes for [`Raw::frame`].
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
}

/// A client frame (masked with a zero key: legal, and the payload stays as
/// written).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(if fin { 0x80 } else { 0 } | opcode);
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
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

/// A frame-level client on an upgraded stream: sends any bytes, reads the
/// server's frames only when asked (or never).
#[derive(Debug)]
pub struct Raw {
    pub stream: TcpStream,
}

/// How a [`Raw`] connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code (`None`: no code).
    Close(Option<u16>),
    /// The TCP connection ended (EOF or reset) without a close frame.
    Dropped,
    /// Still open after the wait.
    Open,
}

impl Raw {
    pub async fn connect(ip: Ipv4Addr, to: SocketAddr, path: &str, rcvbuf: Option<u32>) -> Raw {
        Raw {
            stream: upgraded_from(ip, to, path, rcvbuf).await,
        }
    }

    /// Writes `bytes`; `false` if the connection is gone (or the write did
    /// not finish in [`WAIT`]).
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    pub async fn frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) -> bool {
        self.write(&client_frame(opcode, fin, payload)).await
    }

    pub async fn text(&mut self, text: &str) -> bool {
        self.frame(op::TEXT, true, text.as_bytes()).await
    }

    /// Reads the server's frames until a close frame or the end of the
    /// connection, at most `within`; text frames are returned too.
    pub async fn ending_within(&mut self, within: Duration) -> (Ending, Vec<String>) {
        let deadline = Instant::now() + within;
        let mut texts = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            // Parse what is buffered.
            while let Some((opcode, payload, used)) = parse_server_frame(&buf) {
                buf.drain(..used);
                match opcode {
                    op::CLOSE => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        return (Ending::Close(code), texts);
                    }
                    op::TEXT => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return (Ending::Open, texts),
                Ok(Ok(0)) | Ok(Err(_)) => return (Ending::Dropped, texts),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// One unmasked server frame at the start of `buf`: opcode, payload, bytes
/// used.
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    Some((opcode, buf[at..at + len].to_vec(), at + len))
}

/// The inodes of the TCP sockets (IPv4) whose remote address is `ip`.
pub fn tcp_inodes_with_peer(ip: Ipv4Addr) -> HashSet<u64> {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return HashSet::new();
    };
    // The kernel prints the address as the 32-bit value in host order.
    let want = format!("{:08X}", u32::from_le_bytes(ip.octets()));
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote = fields.get(2)?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            (remote.split(':').next()? == want && inode != 0).then_some(inode)
        })
        .collect()
}

/// Sends `request` from `ip` and reads until the server closes or `within`
/// passes: what arrived, and whether the server closed.
pub async fn exchange(
    ip: Ipv4Addr,
    to: SocketAddr,
    request: &[u8],
    within: Duration,
) -> (Vec<u8>, bool) {
    let mut stream = tcp_from(ip, to, None).await;
    let _ = stream.write_all(request).await;
    read_until_closed(&mut stream, within).await
}

/// Reads until EOF (or a reset) or `within`: the bytes, and whether the
/// connection ended.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}
