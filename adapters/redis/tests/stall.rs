//! The Redis bus on a link that stalls: packets stop in both directions
//! but no RST comes, so nothing but a missing answer shows it. Redis is
//! `RELAY_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); each case is
//! skipped, with a line saying so, when it cannot be reached.

use relay_adapter_redis::{RedisBus, RedisSettings, connect};
use relay_domain::{ClientId, DocumentId, Seq, UserId, Version};
use relay_ports::{BusEvent, BusMessage, Envelope, FanOut, InstanceId};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("RELAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Redis's `host:port`, or `None` (with a line saying so) when nothing
/// answers there.
async fn redis_or_skip(test: &str) -> Option<String> {
    let url = redis_url();
    let upstream = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&upstream)).await {
        Ok(Ok(_)) => Some(upstream),
        _ => {
            println!("{test}: skipped: no Redis at {url} (RELAY_TEST_REDIS_URL)");
            None
        }
    }
}

fn settings(call_timeout: Duration) -> RedisSettings {
    RedisSettings {
        call_timeout,
        queue: 64,
        ..RedisSettings::default()
    }
}

async fn direct_bus() -> RedisBus {
    connect(&redis_url(), settings(Duration::from_secs(2)))
        .await
        .expect("redis")
        .0
}

/// A TCP proxy in front of Redis that can stall: while stalled it forwards
/// no byte either way (on connections old and new) and closes nothing.
struct Proxy {
    url: String,
    stalled: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let (stalled, gate) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, gate) = (upstream.clone(), gate.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // Either direction ending ends both.
                    tokio::select! {
                        () = pump(client_read, server_write, gate.clone()) => {}
                        () = pump(server_read, client_write, gate) => {}
                    }
                });
            }
        });
        Proxy { url, stalled }
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    fn restore(&self) {
        self.stalled.send_replace(false);
    }
}

/// Copies `from` to `to`, holding what it read while the gate is stalled.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut gate: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn op_envelope(document: DocumentId, version: u64) -> Envelope {
    let mut delta = relay_domain::Delta::new();
    delta.insert("x");
    Envelope {
        origin: InstanceId::new_v4(),
        document,
        message: BusMessage::Ops {
            ops: vec![relay_domain::CommittedOp {
                version: Version::new(version).unwrap(),
                user: UserId::new(Uuid::new_v4()),
                client_id: ClientId::new("c").unwrap(),
                seq: Seq::new(version).unwrap(),
                delta,
            }],
            prev: None,
        },
    }
}

async fn next_within(
    events: &mut mpsc::Receiver<BusEvent>,
    within: Duration,
    what: &str,
) -> BusEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {within:?}"))
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
}

/// The version of the op in a message, or a panic naming what came.
fn version_of(event: BusEvent) -> Version {
    match event {
        BusEvent::Message(Envelope {
            message: BusMessage::Ops { ops, .. },
            ..
        }) => ops[0].version,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Publishes `version` directly to Redis until the subscription receives
/// it (the bus may still be resubscribing), within `within`.
async fn publish_until_received(
    direct: &RedisBus,
    events: &mut mpsc::Receiver<BusEvent>,
    document: DocumentId,
    version: u64,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        direct
            .publish(op_envelope(document, version))
            .await
            .unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "version {version} never arrived");
        match tokio::time::timeout(left.min(Duration::from_millis(500)), events.recv()).await {
            Ok(Some(event)) => {
                assert_eq!(version_of(event), Version::new(version).unwrap());
                return;
            }
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {}
        }
    }
}

/// A stalled link (no RST, no answer) is noticed by the PING on the pub/sub
/// connection: the subscription gets `Disconnected` within seconds, and
/// once the link is back `Lagged`, then messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_is_reported_disconnected_within_seconds_and_recovers() {
    let test = "a_stalled_link_is_reported_disconnected_within_seconds_and_recovers";
    let Some(upstream) = redis_or_skip(test).await else {
        return;
    };
    let proxy = Proxy::start(upstream).await;
    let (bus, _) = connect(&proxy.url, settings(Duration::from_secs(2)))
        .await
        .expect("redis via the proxy");
    let direct = direct_bus().await;
    let document = DocumentId::new(Uuid::new_v4());
    let mut sub = bus.subscribe(document).await.unwrap();
    direct.publish(op_envelope(document, 1)).await.unwrap();
    let first = next_within(&mut sub.events, Duration::from_secs(5), "before the stall").await;
    assert_eq!(version_of(first), Version::from(1));

    proxy.stall();
    let stalled_at = Instant::now();
    assert_eq!(
        next_within(&mut sub.events, Duration::from_secs(10), "after the stall").await,
        BusEvent::Disconnected
    );
    println!(
        "{test}: Disconnected {:?} after the stall",
        stalled_at.elapsed()
    );
    // Published while this bus cannot hear it: lost on the bus (the room
    // reads it from the store on `Lagged`).
    direct.publish(op_envelope(document, 2)).await.unwrap();

    proxy.restore();
    assert_eq!(
        next_within(
            &mut sub.events,
            Duration::from_secs(20),
            "after the restore"
        )
        .await,
        BusEvent::Lagged
    );
    publish_until_received(
        &direct,
        &mut sub.events,
        document,
        3,
        Duration::from_secs(10),
    )
    .await;
}

/// While the link is stalled, opening and closing 2,000 documents (a
/// subscribe, then a drop) never hangs: each subscribe returns within the
/// call timeout and a little, and the bus works again once the link is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_and_dropping_many_documents_on_a_stalled_link_never_hangs() {
    let test = "subscribing_and_dropping_many_documents_on_a_stalled_link_never_hangs";
    let Some(upstream) = redis_or_skip(test).await else {
        return;
    };
    const CALL: Duration = Duration::from_secs(1);
    const EACH: Duration = Duration::from_millis(1500);
    const TOTAL: Duration = Duration::from_secs(30);
    const CYCLES: usize = 2000;
    let proxy = Proxy::start(upstream).await;
    let (bus, _) = connect(&proxy.url, settings(CALL))
        .await
        .expect("redis via the proxy");
    let direct = direct_bus().await;
    let kept = DocumentId::new(Uuid::new_v4());
    let mut sub = bus.subscribe(kept).await.unwrap();

    // At once, so the first subscriptions meet the stalled connection
    // before the bus has noticed.
    proxy.stall();
    let start = Instant::now();
    let (mut subscribed, mut slowest) = (0, Duration::ZERO);
    for i in 0..CYCLES {
        let document = DocumentId::new(Uuid::new_v4());
        let began = Instant::now();
        let result = tokio::time::timeout(EACH, bus.subscribe(document))
            .await
            .unwrap_or_else(|_| panic!("subscribe #{i} did not return within {EACH:?}"));
        subscribed += usize::from(result.is_ok());
        slowest = slowest.max(began.elapsed());
        drop(result);
        assert!(
            start.elapsed() < TOTAL,
            "only {i} of {CYCLES} subscribe+drop cycles within {TOTAL:?}"
        );
    }
    println!(
        "{test}: {CYCLES} cycles in {:?} ({subscribed} subscribed, the rest refused); slowest {slowest:?}",
        start.elapsed()
    );

    proxy.restore();
    // `Disconnected` (the stall noticed), then `Lagged` (back).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while seen.last() != Some(&BusEvent::Lagged) {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.push(next_within(&mut sub.events, left, "after the restore").await);
    }
    assert_eq!(seen, [BusEvent::Disconnected, BusEvent::Lagged]);
    publish_until_received(&direct, &mut sub.events, kept, 1, Duration::from_secs(10)).await;
}
