//! Graceful shutdown of a real `relay` process on a real SIGTERM while its
//! clients type (PostgreSQL and Redis, two instances): every client gets
//! `shutdown` (with its own `reconnect_in_ms`) or, if it stays, 1001 once
//! the grace period is over; the process exits 0; every op acknowledged
//! before the exit is in PostgreSQL; and the clients' re-sent ops commit
//! exactly once on the other instance.

use relay_domain::{Document, Version};
use relay_ports::protocol::ServerMessage;
use relay_tests::instances::Cluster;
use relay_tests::pg::store_log;
use relay_tests::{Conn, Editor, Received, new_document};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How one client lived through the shutdown.
#[derive(Debug, Default)]
struct Story {
    shutdown_in_ms: Option<u64>,
    closed_with: Option<Option<u16>>,
    acked_before_exit: Vec<(u64, Version)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_clients_to_another_instance_and_loses_nothing() {
    let cluster = Cluster::start(2, &[("SHUTDOWN_GRACE_SECS", "4")]).await;
    let doc = new_document();
    let leaving = cluster.instances[0].url(doc);
    let staying = cluster.instances[1].url(doc);
    // Four typists that follow `shutdown`, and one that ignores it.
    let mut editors = Vec::new();
    for i in 0..5 {
        let user = Uuid::new_v4();
        let token = cluster.token(user);
        let e = Editor::join_url(&leaving, doc, user, &format!("tab-{i}"), &token).await;
        editors.push((e, token, i == 4));
    }
    let terminate_at = Instant::now() + Duration::from_millis(1500);
    let (exit_tx, exit_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for (mut e, token, stubborn) in editors {
        let staying = staying.clone();
        let mut exited = exit_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut story = Story::default();
            e.lenient_sends = true;
            // Type until told to go (or closed), reading everything that
            // arrives as a real client does.
            'typing: loop {
                // One op at a time, as an editor types: the next once the
                // last is acknowledged.
                if story.shutdown_in_ms.is_none() && e.client.is_synchronized() {
                    e.insert(0, "x").await;
                }
                let mut next = e.conn.recv_within(Duration::from_millis(20)).await;
                while let Some(r) = next.take() {
                    match r {
                        Received::Message(ServerMessage::Shutdown { reconnect_in_ms }) => {
                            story.shutdown_in_ms = Some(reconnect_in_ms);
                            if !stubborn {
                                // Reconnect after the delay asked for.
                                tokio::time::sleep(Duration::from_millis(reconnect_in_ms)).await;
                                break 'typing;
                            }
                        }
                        Received::Closed(code) => {
                            story.closed_with = Some(code);
                            break 'typing;
                        }
                        r => e.handle_received(&r).await,
                    }
                    next = e.conn.try_recv();
                }
            }
            story.acked_before_exit = e.acks.clone();
            // Only once the old process has exited: the acks it sent are
            // all in, and the re-sent op goes to the other instance.
            let _ = exited.wait_for(|x| *x).await;
            let conn = Conn::connect(&staying).await;
            e.rejoin_on(conn, &token).await;
            while !e.client.is_synchronized() {
                match e.conn.recv_within(Duration::from_secs(5)).await {
                    Some(r) => e.handle_received(&r).await,
                    None => panic!(
                        "{}: nothing after the rejoin; errors {:?}, client {:?}",
                        e.client.client_id(),
                        e.errors,
                        e.client
                    ),
                }
            }
            for _ in 0..3 {
                e.insert(0, "y").await;
                e.settle().await;
            }
            (e, story, stubborn)
        }));
    }
    tokio::time::sleep_until(terminate_at.into()).await;
    let signalled = Instant::now();
    cluster.instances[0].terminate();
    let mut cluster = cluster;
    let status = cluster.instances[0]
        .wait_exit(Duration::from_secs(45))
        .await;
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    // The seed's budget: terminationGracePeriodSeconds 60 minus the 15 s
    // preStop; here the grace is 4 s, plus the rooms' last commits.
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    exit_tx.send(true).expect("exit signal");
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("typist"));
    }

    let log = store_log(&cluster.database_url, doc).await;
    let mut seen = HashSet::new();
    for (i, op) in log.iter().enumerate() {
        assert_eq!(op.version.get(), i as u64 + 1, "the log has no holes");
        assert!(
            seen.insert((op.client_id.clone(), op.seq)),
            "{} seq {} committed twice",
            op.client_id,
            op.seq
        );
    }
    let mut text = Document::new();
    for op in &log {
        let delta = op.delta.clone().fit(text.len()).expect("fits");
        text.apply(&delta).expect("applies");
    }
    for (e, story, stubborn) in &mut done {
        let who = e.client.client_id().clone();
        // Told to go, with a delay from the jittered range.
        let ms = story
            .shutdown_in_ms
            .unwrap_or_else(|| panic!("{who} got no shutdown: {story:?}"));
        assert!((500..=2500).contains(&ms), "{who}: reconnect_in_ms {ms}");
        if *stubborn {
            assert_eq!(story.closed_with, Some(Some(1001)), "{who} stayed: 1001");
        }
        // Every ack it got before the exit is in the store, at that version.
        for (seq, version) in &story.acked_before_exit {
            let op = &log[version.get() as usize - 1];
            assert_eq!(
                (&op.client_id, op.seq.get()),
                (&who, *seq),
                "{who}: ack at {version}"
            );
        }
        e.catch_up_to(log.last().expect("ops").version).await;
        assert_eq!(e.text(), text.text(), "{who} converged");
    }
    // The delays differ: jittered, not one instant for everyone.
    let delays: HashSet<u64> = done
        .iter()
        .filter_map(|(_, s, _)| s.shutdown_in_ms)
        .collect();
    assert!(delays.len() > 1, "jittered: {delays:?}");
}
