//! The fan-out bus and presence contracts against Redis
//! (`RELAY_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`; every case
//! uses fresh document ids, so a shared Redis is fine), and what the Redis
//! bus does when its connection is cut.

use relay_adapter_redis::{RedisBus, RedisPresence, RedisSettings, connect};
use relay_domain::{ClientId, DocumentId, PresenceEntry, Seq, UserId, Version};
use relay_ports::contract::{bus, presence};
use relay_ports::{BusEvent, BusMessage, Envelope, FanOut, Held, InstanceId, PresenceRegistry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

const QUEUE: usize = 8;

fn redis_url() -> String {
    std::env::var("RELAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn settings() -> RedisSettings {
    RedisSettings {
        connections: 2,
        call_timeout: Duration::from_secs(2),
        queue: QUEUE,
        tls_ca_file: None,
    }
}

async fn redis_bus() -> RedisBus {
    connect(&redis_url(), settings())
        .await
        .unwrap_or_else(|e| panic!("Redis at {} (RELAY_TEST_REDIS_URL): {e}", redis_url()))
        .0
}

async fn redis_presence() -> RedisPresence {
    connect(&redis_url(), settings()).await.expect("redis").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_keeps_the_bus_contract() {
    // Far more than a queue holds: the subscriber task receives them all
    // from Redis whether or not the subscription reads.
    bus::run_all(&redis_bus, QUEUE * 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_presence_registry_keeps_the_presence_contract() {
    // Redis keeps its own time: the cases wait for real, with a short TTL.
    presence::run_all(
        &redis_presence,
        &async |by| tokio::time::sleep(by).await,
        Duration::from_millis(400),
    )
    .await;
}

/// A TCP proxy in front of Redis whose connections the test can cut, and
/// which refuses new ones while `down`.
struct Proxy {
    url: String,
    down: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start() -> Proxy {
        let upstream = redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let down = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let refusing = down.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if refusing.load(Ordering::SeqCst) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let upstream = upstream.clone();
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { url, down, cut }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::up`].
    fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn op_envelope(origin: InstanceId, document: DocumentId, version: u64) -> Envelope {
    let mut delta = relay_domain::Delta::new();
    delta.insert("x");
    Envelope {
        origin,
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

async fn next(events: &mut tokio::sync::mpsc::Receiver<BusEvent>, what: &str) -> BusEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 20 s"))
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
}

/// Cutting the connection tells every subscription `Disconnected`, `/ready`
/// (ping) fails while Redis cannot be reached, and once it can the bus
/// resubscribes by itself and says `Lagged` (what was published meanwhile
/// is in the store) before delivering again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_reported_and_the_bus_resubscribes_by_itself() {
    let proxy = Proxy::start().await;
    let (bus, _) = connect(&proxy.url, settings())
        .await
        .expect("redis via proxy");
    let direct = redis_bus().await;
    let document = DocumentId::new(Uuid::new_v4());
    let origin = InstanceId::new_v4();
    let mut sub = bus.subscribe(document).await.unwrap();
    let first = op_envelope(origin, document, 1);
    direct.publish(first.clone()).await.unwrap();
    assert_eq!(
        next(&mut sub.events, "before the cut").await,
        BusEvent::Message(first)
    );
    assert_eq!(bus.ping().await, Ok(()));

    proxy.down();
    assert_eq!(
        next(&mut sub.events, "after the cut").await,
        BusEvent::Disconnected
    );
    assert!(bus.ping().await.is_err(), "ping while Redis is unreachable");
    // Published while this instance cannot hear it: lost on the bus.
    direct
        .publish(op_envelope(origin, document, 2))
        .await
        .unwrap();

    proxy.up();
    assert_eq!(
        next(&mut sub.events, "after reconnecting").await,
        BusEvent::Lagged
    );
    direct
        .publish(op_envelope(origin, document, 3))
        .await
        .unwrap();
    match next(&mut sub.events, "after resubscribing").await {
        BusEvent::Message(Envelope {
            message: BusMessage::Ops { ops, prev: None },
            ..
        }) => assert_eq!(ops[0].version, Version::from(3)),
        other => panic!("expected version 3, got {other:?}"),
    }
    // The command connections reconnect too.
    let mut pinged = false;
    for _ in 0..100 {
        if bus.ping().await.is_ok() {
            pinged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pinged, "ping never recovered");
    bus.publish(op_envelope(origin, document, 4)).await.unwrap();
    match next(&mut sub.events, "a publish of its own").await {
        BusEvent::Message(Envelope {
            message: BusMessage::Ops { ops, prev: None },
            ..
        }) => assert_eq!(ops[0].version, Version::from(4)),
        other => panic!("expected version 4, got {other:?}"),
    }
}

/// A subscription made while Redis is unreachable starts `Disconnected`
/// and works once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_redis_is_unreachable_starts_disconnected() {
    let proxy = Proxy::start().await;
    let (bus, registry) = connect(&proxy.url, settings())
        .await
        .expect("redis via proxy");
    proxy.down();
    // Wait until the bus has noticed.
    for _ in 0..200 {
        if bus.ping().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let document = DocumentId::new(Uuid::new_v4());
    let mut sub = bus.subscribe(document).await.unwrap();
    assert_eq!(
        next(&mut sub.events, "subscribed while down").await,
        BusEvent::Disconnected
    );
    let entry = PresenceEntry {
        user: UserId::new(Uuid::new_v4()),
        client_id: ClientId::new("tab").unwrap(),
        name: None,
        selection: None,
        version: Version::ZERO,
    };
    let here = InstanceId::new_v4();
    assert!(
        registry
            .upsert(document, here, entry.clone(), Duration::from_secs(5))
            .await
            .is_err(),
        "presence fails while Redis is unreachable"
    );
    proxy.up();
    assert_eq!(next(&mut sub.events, "back").await, BusEvent::Lagged);
    let direct = redis_bus().await;
    let origin = InstanceId::new_v4();
    direct
        .publish(op_envelope(origin, document, 7))
        .await
        .unwrap();
    match next(&mut sub.events, "after resubscribing").await {
        BusEvent::Message(Envelope {
            message: BusMessage::Ops { ops, prev: None },
            ..
        }) => assert_eq!(ops[0].version, Version::from(7)),
        other => panic!("expected version 7, got {other:?}"),
    }
    let mut stored = false;
    for _ in 0..100 {
        if registry
            .upsert(document, here, entry.clone(), Duration::from_secs(5))
            .await
            .is_ok()
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "presence never recovered");
    assert_eq!(
        registry.list(document).await.unwrap(),
        vec![Held {
            instance: here,
            entry
        }]
    );
}

/// How many pub/sub connections are subscribed to a document's channel.
async fn subscribers_in_redis(document: DocumentId) -> i64 {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("relay:doc:{document}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    n
}

/// A subscription dropped while messages are still arriving for it
/// releases its channel in Redis (no channel stays subscribed for a
/// document nobody holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_dropped_mid_stream_releases_its_channel() {
    let bus = redis_bus().await;
    let direct = redis_bus().await;
    let origin = InstanceId::new_v4();
    for _ in 0..20 {
        let document = DocumentId::new(Uuid::new_v4());
        let sub = bus.subscribe(document).await.unwrap();
        assert_eq!(subscribers_in_redis(document).await, 1);
        let publishing = {
            let direct = direct.clone();
            tokio::spawn(async move {
                for n in 1..=50 {
                    direct
                        .publish(op_envelope(origin, document, n))
                        .await
                        .unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(sub);
        publishing.await.unwrap();
        let mut released = false;
        for _ in 0..100 {
            if subscribers_in_redis(document).await == 0 {
                released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(released, "the channel of {document} is still subscribed");
    }
}
