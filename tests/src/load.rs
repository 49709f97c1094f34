//! An open-loop typing client for the latency benchmarks
//! (`relay-delivery`, `relay-instances-bench`): it types on a fixed
//! schedule, one submit in flight, edits due meanwhile going in the next
//! submit, and measures from when an edit was due: to its ack, and to its
//! arrival at every other client of the document (matched by `client_id`
//! and `seq`), telling apart receivers on the sender's instance and on
//! another.

use futures::{SinkExt, StreamExt};
use relay_ports::protocol::{ErrorCode, ServerMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

/// When each (client, seq) was due (the oldest edit it carries), and the
/// instance it was sent to.
pub type Due = Arc<Mutex<HashMap<(String, u64), (Instant, usize)>>>;

/// What one client measured.
#[derive(Debug, Default)]
pub struct Samples {
    pub ack: Vec<Duration>,
    /// Deliveries to a client on the sender's instance.
    pub delivery: Vec<Duration>,
    /// Deliveries to a client on another instance.
    pub delivery_cross: Vec<Duration>,
    pub edits: u64,
    /// Submits answered `unavailable` (re-sent).
    pub unavailable: u64,
}

impl Samples {
    pub fn merge(&mut self, s: Samples) {
        self.ack.extend(s.ack);
        self.delivery.extend(s.delivery);
        self.delivery_cross.extend(s.delivery_cross);
        self.edits += s.edits;
        self.unavailable += s.unavailable;
    }

    pub fn sort(&mut self) {
        self.ack.sort();
        self.delivery.sort();
        self.delivery_cross.sort();
    }
}

/// The `p` quantile (0 to 1) of sorted samples, in ms.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Who a client is and what it does.
#[derive(Debug)]
pub struct Typist {
    /// The WebSocket URL of its document on its instance.
    pub url: String,
    /// Its instance's index.
    pub instance: usize,
    pub name: String,
    pub token: String,
    /// Edits per second.
    pub rate: u32,
    pub start: Instant,
    pub until: Instant,
}

fn record(
    samples: &mut Samples,
    due: &Due,
    me: usize,
    arrived: Instant,
    ops: &[relay_domain::CommittedOp],
) {
    let due = due.lock().unwrap();
    for op in ops {
        if let Some((at, from)) = due.get(&(op.client_id.as_str().to_owned(), op.seq.get())) {
            let latency = arrived.saturating_duration_since(*at);
            if *from == me {
                samples.delivery.push(latency);
            } else {
                samples.delivery_cross.push(latency);
            }
        }
    }
}

/// Types as `t` says until `t.until`, then collects the last deliveries.
pub async fn type_open_loop(t: Typist, due: Due) -> Samples {
    let request = t.url.as_str().into_client_request().expect("request");
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let join =
        serde_json::json!({"type": "join", "client_id": t.name, "token": t.token, "since": null});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("join");
    let mut version = loop {
        match ws.next().await {
            Some(Ok(Message::Text(m))) => {
                if let Ok(ServerMessage::Joined { version, .. }) = ServerMessage::decode(&m) {
                    break version.get();
                }
            }
            other => panic!("join failed: {other:?}"),
        }
    };
    let mut samples = Samples::default();
    let period = Duration::from_secs_f64(1.0 / f64::from(t.rate));
    // Clients start spread over one period, so edits do not come in waves.
    let offset = period.mul_f64(rand::random::<f64>());
    let mut next_due = t.start + offset;
    let mut waiting: Vec<Instant> = Vec::new();
    // The submit in flight: its seq, due time and text.
    let mut inflight: Option<(u64, Instant, String)> = None;
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        if now >= t.until && inflight.is_none() {
            break;
        }
        if inflight.is_none() && !waiting.is_empty() {
            seq += 1;
            let first = waiting[0];
            let text = "a".repeat(waiting.len());
            samples.edits += waiting.len() as u64;
            waiting.clear();
            due.lock()
                .unwrap()
                .insert((t.name.clone(), seq), (first, t.instance));
            let submit = serde_json::json!({
                "type": "submit", "seq": seq, "base": version, "delta": [{"insert": text}]
            });
            ws.send(Message::text(submit.to_string()))
                .await
                .expect("submit");
            inflight = Some((seq, first, text));
        }
        let wake = if now < t.until {
            tokio::time::Instant::from_std(next_due)
        } else {
            tokio::time::Instant::now() + Duration::from_secs(5)
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() < t.until {
                    waiting.push(next_due);
                    next_due += period;
                }
            }
            frame = ws.next() => {
                let Some(Ok(Message::Text(m))) = frame else { continue };
                let arrived = Instant::now();
                match ServerMessage::decode(&m) {
                    Ok(ServerMessage::Ack { seq: s, version: v }) => {
                        version = version.max(v.get());
                        if let Some((q, first, _)) = &inflight
                            && *q == s.get()
                        {
                            samples.ack.push(arrived - *first);
                            inflight = None;
                        }
                    }
                    Ok(ServerMessage::Ops { ops }) => {
                        for op in &ops {
                            version = version.max(op.version.get());
                        }
                        record(&mut samples, &due, t.instance, arrived, &ops);
                    }
                    Ok(ServerMessage::Error { code: ErrorCode::Unavailable, seq: Some(s), .. }) => {
                        // Nothing committed: the same submit again.
                        if let Some((q, _, text)) = &inflight
                            && *q == s.get()
                        {
                            samples.unavailable += 1;
                            let submit = serde_json::json!({
                                "type": "submit", "seq": q, "base": version, "delta": [{"insert": text}]
                            });
                            ws.send(Message::text(submit.to_string())).await.expect("submit");
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    // Deliveries of the last edits still on their way.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(Ok(Message::Text(m))) = ws.next().await {
            let arrived = Instant::now();
            if let Ok(ServerMessage::Ops { ops }) = ServerMessage::decode(&m) {
                record(&mut samples, &due, t.instance, arrived, &ops);
            }
        }
    })
    .await;
    samples
}

/// A fresh document id for a benchmark.
pub fn document() -> Uuid {
    Uuid::new_v4()
}
