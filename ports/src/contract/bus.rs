//! The [`FanOut`] contract.
//!
//! A case publishes and subscribes through the one bus its factory
//! returns; it never waits for something that should not happen: to show
//! that a message did not arrive, it publishes a later marker and checks
//! that the marker comes first.

use super::{client, fresh_document, fresh_user, within};
use crate::bus::{BusEvent, BusMessage, Envelope, FanOut, InstanceId, Subscription};
use relay_domain::{CommittedOp, Delta, DocumentId, PresenceEntry, Selection, Seq, Version};

/// The most messages [`a_subscriber_that_does_not_read_is_told_it_lagged`]
/// will publish.
pub const MAX_OVERFLOW: usize = 100_000;

/// How many envelopes a case publishes before it reads: any subscriber must
/// hold that many without lagging.
pub const BURST: usize = 8;

/// Runs every case. `overflow_after` is how many messages, published to a
/// subscriber that does not read, are sure to overflow its queue (at most
/// [`MAX_OVERFLOW`]).
pub async fn run_all<B: FanOut>(make: &impl AsyncFn() -> B, overflow_after: usize) {
    a_subscriber_receives_envelopes_in_publish_order(make).await;
    every_subscriber_of_a_document_receives_every_envelope(make).await;
    documents_are_isolated(make).await;
    dropping_a_subscription_unsubscribes(make).await;
    publishing_without_subscribers_succeeds(make).await;
    a_subscriber_that_does_not_read_is_told_it_lagged(make, overflow_after).await;
    ping_answers(make).await;
}

fn instance() -> InstanceId {
    InstanceId::new_v4()
}

/// The `n`th test envelope: the three shapes in turn, each naming `n` so
/// that a mix-up shows.
fn envelope(origin: InstanceId, document: DocumentId, n: usize) -> Envelope {
    let user = fresh_user();
    let client_id = client(&format!("client-{n}"));
    let message = match n % 3 {
        0 => {
            let mut delta = Delta::new();
            delta.retain(n).insert("é\u{1F600}");
            BusMessage::Ops {
                ops: vec![CommittedOp {
                    version: Version::new(n as u64 + 1).unwrap(),
                    user,
                    client_id,
                    seq: Seq::new(n as u64).unwrap(),
                    delta,
                }],
                prev: None,
            }
        }
        1 => BusMessage::Cursor {
            entry: PresenceEntry {
                user,
                client_id,
                name: Some(format!("User {n}")),
                selection: Some(Selection {
                    anchor: n,
                    head: n + 1,
                }),
                version: Version::new(n as u64).unwrap(),
            },
        },
        _ => BusMessage::Typing {
            user,
            client_id,
            active: n.is_multiple_of(2),
        },
    };
    Envelope {
        origin,
        document,
        message,
    }
}

/// Which test envelope this is, from its client id.
fn index_of(envelope: &Envelope) -> Option<usize> {
    let client_id = match &envelope.message {
        BusMessage::Ops { ops, .. } => &ops.first()?.client_id,
        BusMessage::Cursor { entry } => &entry.client_id,
        BusMessage::Typing { client_id, .. } => client_id,
        BusMessage::Joined { .. } | BusMessage::Left { .. } => return None,
    };
    client_id.as_str().strip_prefix("client-")?.parse().ok()
}

async fn subscribe<B: FanOut>(bus: &B, document: DocumentId) -> Subscription {
    bus.subscribe(document)
        .await
        .expect("subscribe must not fail on a reachable bus")
}

async fn publish<B: FanOut>(bus: &B, envelope: &Envelope) {
    bus.publish(envelope.clone())
        .await
        .expect("publish must not fail on a reachable bus");
}

async fn next(subscription: &mut Subscription, what: &str) -> BusEvent {
    within(what, subscription.events.recv())
        .await
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
}

async fn expect_message(subscription: &mut Subscription, expected: &Envelope, what: &str) {
    assert_eq!(
        next(subscription, what).await,
        BusEvent::Message(expected.clone()),
        "{what}"
    );
}

/// Envelopes from this instance and from another one arrive as published,
/// origin included (a subscriber skips its own by origin, so the bus must
/// not do it for them).
pub async fn a_subscriber_receives_envelopes_in_publish_order<B: FanOut>(
    make: &impl AsyncFn() -> B,
) {
    let bus = make().await;
    let document = fresh_document();
    let (ours, theirs) = (instance(), instance());
    let mut subscription = subscribe(&bus, document).await;
    for burst in 0..3 {
        let sent: Vec<Envelope> = (burst * BURST..(burst + 1) * BURST)
            .map(|n| envelope(if n % 3 == 0 { theirs } else { ours }, document, n))
            .collect();
        for envelope in &sent {
            publish(&bus, envelope).await;
        }
        for envelope in &sent {
            expect_message(
                &mut subscription,
                envelope,
                "envelopes arrive in publish order",
            )
            .await;
        }
    }
}

pub async fn every_subscriber_of_a_document_receives_every_envelope<B: FanOut>(
    make: &impl AsyncFn() -> B,
) {
    let bus = make().await;
    let document = fresh_document();
    let mut first = subscribe(&bus, document).await;
    let mut second = subscribe(&bus, document).await;
    let sent: Vec<Envelope> = (0..3).map(|n| envelope(instance(), document, n)).collect();
    for envelope in &sent {
        publish(&bus, envelope).await;
    }
    for envelope in &sent {
        expect_message(&mut first, envelope, "the first subscriber").await;
        expect_message(&mut second, envelope, "the second subscriber").await;
    }
}

pub async fn documents_are_isolated<B: FanOut>(make: &impl AsyncFn() -> B) {
    let bus = make().await;
    let origin = instance();
    let (a, b) = (fresh_document(), fresh_document());
    let mut on_a = subscribe(&bus, a).await;
    let mut on_b = subscribe(&bus, b).await;

    let to_a = envelope(origin, a, 0);
    let to_b = envelope(origin, b, 1);
    publish(&bus, &to_a).await;
    publish(&bus, &to_b).await;
    expect_message(&mut on_a, &to_a, "a's subscriber gets a's envelope").await;
    expect_message(
        &mut on_b,
        &to_b,
        "b's subscriber gets b's envelope and never a's",
    )
    .await;

    let to_b_again = envelope(origin, b, 2);
    let to_a_again = envelope(origin, a, 3);
    publish(&bus, &to_b_again).await;
    publish(&bus, &to_a_again).await;
    expect_message(
        &mut on_a,
        &to_a_again,
        "a's subscriber never gets b's envelope",
    )
    .await;
    expect_message(&mut on_b, &to_b_again, "b's subscriber").await;
}

pub async fn dropping_a_subscription_unsubscribes<B: FanOut>(make: &impl AsyncFn() -> B) {
    let bus = make().await;
    let origin = instance();
    let document = fresh_document();
    let dropped = subscribe(&bus, document).await;
    let mut kept = subscribe(&bus, document).await;
    drop(dropped);

    let first = envelope(origin, document, 0);
    publish(&bus, &first).await;
    expect_message(&mut kept, &first, "the remaining subscriber still receives").await;

    drop(kept);
    let unheard = envelope(origin, document, 1);
    publish(&bus, &unheard).await;

    let mut later = subscribe(&bus, document).await;
    let heard = envelope(origin, document, 2);
    publish(&bus, &heard).await;
    expect_message(
        &mut later,
        &heard,
        "a new subscription receives only what is published after it",
    )
    .await;
}

pub async fn publishing_without_subscribers_succeeds<B: FanOut>(make: &impl AsyncFn() -> B) {
    let bus = make().await;
    let document = fresh_document();
    publish(&bus, &envelope(instance(), document, 0)).await;
}

/// A subscriber that does not read while `overflow_after` messages are
/// published must, once it reads again, receive `Lagged` (after some of the
/// messages, in order) rather than block the publisher or miss silently.
pub async fn a_subscriber_that_does_not_read_is_told_it_lagged<B: FanOut>(
    make: &impl AsyncFn() -> B,
    overflow_after: usize,
) {
    assert!(
        (1..=MAX_OVERFLOW).contains(&overflow_after),
        "overflow_after must be 1 to {MAX_OVERFLOW}"
    );
    let bus = make().await;
    let origin = instance();
    let document = fresh_document();
    let mut subscription = subscribe(&bus, document).await;
    let sent: Vec<Envelope> = (0..overflow_after)
        .map(|n| envelope(origin, document, n))
        .collect();
    for envelope in &sent {
        within(
            "publishing to a subscriber that does not read",
            publish(&bus, envelope),
        )
        .await;
    }

    let mut last_seen: Option<usize> = None;
    for _ in 0..=overflow_after {
        match next(
            &mut subscription,
            "a subscriber that fell behind must get Lagged",
        )
        .await
        {
            BusEvent::Lagged => return,
            BusEvent::Disconnected => panic!("a reachable bus reported Disconnected"),
            BusEvent::Message(got) => {
                let n = index_of(&got)
                    .filter(|&n| sent.get(n) == Some(&got))
                    .unwrap_or_else(|| panic!("received an envelope never published: {got:?}"));
                assert!(
                    last_seen.is_none_or(|last| n > last),
                    "envelope {n} arrived after envelope {last_seen:?}"
                );
                last_seen = Some(n);
            }
        }
    }
    panic!(
        "{overflow_after} messages were published to a subscriber that did not read, and it was never told it lagged"
    );
}

pub async fn ping_answers<B: FanOut>(make: &impl AsyncFn() -> B) {
    assert_eq!(make().await.ping().await, Ok(()));
}
