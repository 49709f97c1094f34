//! A bystander: an honest editor that types at a steady pace (one insert at
//! the start of the document every [`PACE`], the next only after the ack),
//! measuring each ack's latency, tagged with the phase it was sent in
//! (before the attack or during it), and remembering what was acked.

use super::net::{Got, Ws};
use relay_domain::{Client, ClientId, Delta, Document, DocumentId, UserId};
use relay_ports::ClientMessage;
use relay_ports::protocol::ServerMessage;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Time between two edits of a bystander (when the previous one is acked).
pub const PACE: Duration = Duration::from_millis(20);

/// The phases a case goes through.
pub mod phase {
    pub const BASELINE: u8 = 0;
    pub const DURING: u8 = 1;
    pub const STOP: u8 = 2;
}

/// What a bystander measured, shared with the case while it runs.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub baseline: Vec<Duration>,
    pub during: Vec<Duration>,
}

/// An honest editor.
#[derive(Debug)]
pub struct Bystander {
    pub name: String,
    pub document: DocumentId,
    pub ws: Ws,
    pub client: Client,
    /// The markers the server acknowledged.
    pub acked: Vec<String>,
    /// Cursor frames received, by the sender's `client_id`.
    pub cursors_from: BTreeMap<String, usize>,
    /// Typing frames received, by the sender's `client_id`.
    pub typing_from: BTreeMap<String, usize>,
    pub samples: Arc<Mutex<Samples>>,
    /// The `client_id`s it has seen join (in `presence` frames).
    pub seen_joined: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl Bystander {
    /// Connects from `ip` and joins `document` as `user` (a new client).
    pub async fn join(
        name: &str,
        ip: std::net::Ipv4Addr,
        to: std::net::SocketAddr,
        document: DocumentId,
        user: Uuid,
        token: &str,
    ) -> Bystander {
        let mut ws = Ws::connect(ip, to, &super::target::Target::path(document)).await;
        let joined = ws
            .join(name, token, None)
            .await
            .unwrap_or_else(|e| panic!("bystander {name} could not join: {e:?}"));
        let ServerMessage::Joined {
            content: Some(content),
            version,
            ..
        } = &joined
        else {
            panic!("bystander {name}: joined without content: {joined:?}");
        };
        let doc = Document::from_content(content, *version).expect("content is inserts");
        Bystander {
            name: name.to_owned(),
            document,
            ws,
            client: Client::new(
                UserId::new(user),
                ClientId::new(name).expect("client id"),
                doc,
            ),
            acked: Vec::new(),
            cursors_from: BTreeMap::new(),
            typing_from: BTreeMap::new(),
            samples: Arc::default(),
            seen_joined: Arc::default(),
        }
    }

    /// Types until the phase is [`phase::STOP`] and nothing is in flight;
    /// panics (naming itself) if it is closed, refused or not acked within
    /// 10 s.
    pub async fn run(mut self, phase: Arc<AtomicU8>) -> Bystander {
        let mut k = 0u64;
        let mut next_edit = Instant::now();
        let mut in_flight: Option<(u64, Instant, u8, String)> = None;
        loop {
            let now_phase = phase.load(Ordering::Relaxed);
            if now_phase == phase::STOP && in_flight.is_none() {
                return self;
            }
            if now_phase != phase::STOP && in_flight.is_none() && Instant::now() >= next_edit {
                k += 1;
                let marker = format!("<{}:{k}>", self.name);
                let mut d = Delta::new();
                d.insert(&marker);
                let out = self
                    .client
                    .edit(d)
                    .expect("a local insert applies")
                    .expect("nothing in flight: the edit is sent");
                in_flight = Some((out.seq.get(), Instant::now(), now_phase, marker));
                let sent = self
                    .ws
                    .send(&ClientMessage::Submit {
                        seq: out.seq,
                        base: out.base,
                        delta: out.delta,
                    })
                    .await;
                assert!(
                    sent,
                    "bystander {}: its submit could not be sent",
                    self.name
                );
                next_edit = Instant::now() + PACE;
            }
            if let Some((_, at, _, _)) = &in_flight {
                assert!(
                    at.elapsed() < Duration::from_secs(10),
                    "bystander {}: no ack within 10 s",
                    self.name
                );
            }
            let wait = if in_flight.is_some() {
                Duration::from_millis(100)
            } else {
                next_edit
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            };
            let Some(got) = self.ws.recv_within(wait).await else {
                continue;
            };
            match got {
                Got::Msg(ServerMessage::Ack { seq, version }) => {
                    let (want, at, sent_in, marker) =
                        in_flight.take().expect("an ack with nothing in flight");
                    assert_eq!(
                        seq.get(),
                        want,
                        "bystander {}: ack for another seq",
                        self.name
                    );
                    let latency = at.elapsed();
                    self.client
                        .ack(seq, version)
                        .unwrap_or_else(|e| panic!("bystander {}: ack: {e}", self.name));
                    self.acked.push(marker);
                    let mut s = self.samples.lock().expect("samples");
                    if sent_in == phase::BASELINE {
                        s.baseline.push(latency);
                    } else {
                        s.during.push(latency);
                    }
                }
                other => self.handle(other).await,
            }
        }
    }

    /// Handles what is not an ack.
    async fn handle(&mut self, got: Got) {
        match got {
            Got::Msg(ServerMessage::Ops { ops }) => {
                for op in ops {
                    if let Some(out) = self
                        .client
                        .receive(&op)
                        .unwrap_or_else(|e| panic!("bystander {}: receive: {e}", self.name))
                    {
                        panic!("bystander {}: an edit was buffered: {out:?}", self.name);
                    }
                }
            }
            Got::Msg(ServerMessage::Cursor { client_id, .. }) => {
                *self
                    .cursors_from
                    .entry(client_id.as_str().to_owned())
                    .or_default() += 1;
            }
            Got::Msg(ServerMessage::Presence { joined, .. }) => {
                self.seen_joined
                    .lock()
                    .expect("seen")
                    .extend(joined.iter().map(|p| p.client_id.as_str().to_owned()));
            }
            Got::Msg(ServerMessage::Typing { client_id, .. }) => {
                *self
                    .typing_from
                    .entry(client_id.as_str().to_owned())
                    .or_default() += 1;
            }
            Got::Msg(ServerMessage::Error {
                code, message, seq, ..
            }) => panic!(
                "bystander {}: error {} ({message}) for seq {seq:?}",
                self.name,
                code.as_str()
            ),
            Got::Msg(ServerMessage::Ack { .. }) => {
                panic!("bystander {}: an ack with nothing in flight", self.name)
            }
            Got::Msg(_) => {}
            Got::Closed(code, reason) => {
                panic!("bystander {} was closed: {code:?} {reason}", self.name)
            }
        }
    }

    /// Reads until its document is at `version` (at most 10 s).
    pub async fn catch_up_to(&mut self, version: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.client.version().get() < version {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ws.recv_within(left).await {
                Some(got) => self.handle(got).await,
                None => panic!(
                    "bystander {}: at version {} after 10 s, the server is at {version}",
                    self.name,
                    self.client.version().get()
                ),
            }
        }
    }

    pub fn text(&self) -> String {
        self.client.document().text()
    }
}

/// The `p`-quantile (nearest rank) of `samples`.
pub fn quantile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}
