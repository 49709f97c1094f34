//! Cursor throttle and typing debounce as another client observes them,
//! on tokio's paused clock (the service in process, no sockets), so the
//! timeline is exact.

use crate::config::Config;
use crate::test_support::drain;
use crate::wiring;
use relay_adapter_jwt::DevKeys;
use relay_domain::{ClientId, DocumentId, Selection, UserId, Version};
use relay_ports::protocol::{Join, ServerMessage};
use relay_ports::{ClientMessage, CollaborationService, Session, Started};
use std::time::Duration;
use uuid::Uuid;

async fn join(
    relay: &crate::Relay,
    keys: &DevKeys,
    doc: DocumentId,
    client: &str,
) -> (Box<dyn Session>, relay_ports::OutboundQueue) {
    let token = keys.editor_token(UserId::new(Uuid::new_v4()), Duration::from_secs(3600));
    let join = Join {
        client_id: ClientId::new(client).unwrap(),
        token: Some(token),
        since: None,
    };
    let Started {
        session, outbound, ..
    } = relay
        .join(relay.admit().unwrap(), doc, None, join)
        .await
        .unwrap();
    (session, outbound)
}

/// Lets the room run without moving the clock.
async fn idle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn cursors(msgs: &[ServerMessage]) -> Vec<(Option<usize>, Option<usize>)> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMessage::Cursor { anchor, head, .. } => Some((*anchor, *head)),
            _ => None,
        })
        .collect()
}

fn typing(msgs: &[ServerMessage]) -> Vec<bool> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMessage::Typing { active, .. } => Some(*active),
            _ => None,
        })
        .collect()
}

fn setup() -> (crate::Relay, DevKeys) {
    let keys = DevKeys::from_seed([3; 32]);
    let mut config = Config::default();
    config.presence.cursor_throttle_ms = 50;
    config.presence.typing_debounce_ms = 500;
    (wiring::in_memory(config, &keys).relay, keys)
}

#[tokio::test(start_paused = true)]
async fn cursor_updates_reach_others_at_most_once_per_interval_and_the_latest_always_arrives() {
    let (relay, keys) = setup();
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (_b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    let mut text = relay_domain::Delta::new();
    text.insert("hello world");
    a.handle(ClientMessage::Submit {
        seq: relay_domain::Seq::from(1),
        base: Version::from(0),
        delta: text,
    })
    .await;
    idle().await;
    assert!(
        drain(&mut a_rx)
            .iter()
            .any(|m| matches!(m, ServerMessage::Ack { .. }))
    );
    drain(&mut b_rx);
    for i in 0..5 {
        let selection = Some(Selection { anchor: i, head: i });
        a.handle(ClientMessage::Cursor {
            version: Version::from(1),
            selection,
        })
        .await;
    }
    idle().await;
    // The first goes out at once; the rest wait for the interval.
    assert_eq!(cursors(&drain(&mut b_rx)), vec![(Some(0), Some(0))]);
    tokio::time::advance(Duration::from_millis(49)).await;
    idle().await;
    assert_eq!(cursors(&drain(&mut b_rx)), vec![]);
    tokio::time::advance(Duration::from_millis(1)).await;
    idle().await;
    // Latest wins: 1, 2 and 3 were replaced by 4.
    assert_eq!(cursors(&drain(&mut b_rx)), vec![(Some(4), Some(4))]);
    tokio::time::advance(Duration::from_millis(500)).await;
    idle().await;
    assert_eq!(cursors(&drain(&mut b_rx)), vec![]);
    // Hiding the caret is a cursor update like any other.
    a.handle(ClientMessage::Cursor {
        version: Version::from(1),
        selection: None,
    })
    .await;
    idle().await;
    assert_eq!(cursors(&drain(&mut b_rx)), vec![(None, None)]);
}

#[tokio::test(start_paused = true)]
async fn typing_is_active_at_once_and_inactive_after_the_quiet_period() {
    let (relay, keys) = setup();
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (_b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    idle().await;
    drain(&mut b_rx);
    a.handle(ClientMessage::Typing).await;
    idle().await;
    assert_eq!(typing(&drain(&mut b_rx)), vec![true]);
    tokio::time::advance(Duration::from_millis(300)).await;
    a.handle(ClientMessage::Typing).await;
    idle().await;
    assert!(typing(&drain(&mut b_rx)).is_empty());
    // 500 ms after the last signal, not the first.
    tokio::time::advance(Duration::from_millis(499)).await;
    idle().await;
    assert!(typing(&drain(&mut b_rx)).is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    idle().await;
    assert_eq!(typing(&drain(&mut b_rx)), vec![false]);
    // The typist is not told about itself.
    assert!(typing(&drain(&mut a_rx)).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_cursor_taken_before_a_concurrent_edit_is_moved_through_it() {
    let (relay, keys) = setup();
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (mut b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    let submit = |seq, base, pos: usize, text: &str| {
        let mut d = relay_domain::Delta::new();
        d.retain(pos).insert(text);
        ClientMessage::Submit {
            seq: relay_domain::Seq::new(seq).unwrap(),
            base: Version::new(base).unwrap(),
            delta: d,
        }
    };
    a.handle(submit(1, 0, 0, "hello world")).await;
    idle().await;
    // B prefixes the line (version 2) while A's caret, taken at version 1,
    // sits before "world".
    b.handle(submit(1, 1, 0, ">> ")).await;
    idle().await;
    drain(&mut a_rx);
    drain(&mut b_rx);
    a.handle(ClientMessage::Cursor {
        version: Version::from(1),
        selection: Some(Selection { anchor: 6, head: 6 }),
    })
    .await;
    idle().await;
    let got: Vec<ServerMessage> = drain(&mut b_rx);
    assert_eq!(
        got.iter()
            .filter_map(|m| match m {
                ServerMessage::Cursor {
                    version,
                    anchor,
                    head,
                    ..
                } => Some((*version, *anchor, *head)),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![(Version::from(2), Some(9), Some(9))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_cursors_is_throttled_before_it_is_rebased() {
    let (relay, keys) = setup();
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (_b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    // Some history for a cursor taken at version 1 to be rebased over.
    for seq in 1..=20u32 {
        let mut d = relay_domain::Delta::new();
        d.insert("x");
        a.handle(ClientMessage::Submit {
            seq: relay_domain::Seq::from(seq),
            base: Version::from(seq - 1),
            delta: d,
        })
        .await;
        idle().await;
    }
    drain(&mut a_rx);
    drain(&mut b_rx);
    let before = crate::room::test_counters::rebases(doc);
    // 150 cursors within one throttle interval (under the presence rate's
    // burst of 200, so none is dropped by it).
    for i in 0..150 {
        a.handle(ClientMessage::Cursor {
            version: Version::from(1),
            selection: Some(Selection {
                anchor: i % 2,
                head: i % 2,
            }),
        })
        .await;
    }
    idle().await;
    tokio::time::advance(Duration::from_millis(50)).await;
    idle().await;
    // One sent at once, the latest when the interval is over: two rebases.
    assert_eq!(crate::room::test_counters::rebases(doc) - before, 2);
    assert_eq!(cursors(&drain(&mut b_rx)).len(), 2);
    assert!(drain(&mut a_rx).is_empty(), "nothing was refused");
}

#[tokio::test(start_paused = true)]
async fn cursor_and_typing_messages_over_the_rate_are_dropped_and_said_once() {
    let keys = DevKeys::from_seed([3; 32]);
    let mut config = Config::default();
    config.presence.rate_per_sec = 10;
    config.presence.burst = 5;
    let relay = wiring::in_memory(config, &keys).relay;
    let doc = DocumentId::new(Uuid::new_v4());
    let (mut a, mut a_rx) = join(&relay, &keys, doc, "a").await;
    let (_b, mut b_rx) = join(&relay, &keys, doc, "b").await;
    idle().await;
    drain(&mut a_rx);
    drain(&mut b_rx);
    let before = crate::room::test_counters::rebases(doc);
    for _ in 0..20 {
        a.handle(ClientMessage::Typing).await;
        a.handle(ClientMessage::Cursor {
            version: Version::from(0),
            selection: None,
        })
        .await;
    }
    idle().await;
    let refused: Vec<_> = drain(&mut a_rx)
        .into_iter()
        .filter(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: relay_ports::ErrorCode::RateLimited,
                    fatal: false,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(refused.len(), 1, "told once: {refused:?}");
    // Five got through: three typing signals and two cursors, of which the
    // room rebased one (the other is held by the cursor throttle).
    assert_eq!(crate::room::test_counters::rebases(doc) - before, 1);
    assert_eq!(typing(&drain(&mut b_rx)), vec![true]);
    // The rate refills: a second later messages pass again, and the next
    // refusal is told again.
    tokio::time::advance(Duration::from_secs(1)).await;
    a.handle(ClientMessage::Cursor {
        version: Version::from(0),
        selection: Some(Selection { anchor: 0, head: 0 }),
    })
    .await;
    idle().await;
    assert!(drain(&mut a_rx).is_empty());
}
