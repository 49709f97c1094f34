//! `relay-load` against the real application in process (in-memory
//! adapters; with `RELAY_E2E_STORE=postgres`, PostgreSQL): small runs whose
//! every count can be checked exactly.

use relay_load::run::RunResult;
use relay_load::{Churn, Options, Scenario, Tokens, plot, summary::summary, trace};
use relay_tests::TestApp;
use std::sync::Arc;

fn small(app: &TestApp) -> Scenario {
    Scenario {
        name: "test".into(),
        url: format!("ws://{}", app.addr),
        connections: 24,
        documents: 4,
        viewers: 0.25,
        rate: 20.0,
        duration_secs: 2.0,
        warmup_secs: 0.5,
        // The shipped trace, so the test needs nothing beside the checkout.
        trace: Some(trace::shipped().display().to_string()),
        settle_secs: 20.0,
        sample_secs: 0.25,
        ..Scenario::default()
    }
}

/// A run that has not finished by then is a hang (a small run takes
/// seconds; every wait in the tool has its own bound below this one).
const RUN_BOUND: std::time::Duration = std::time::Duration::from_secs(300);

async fn go(app: &TestApp, scenario: Scenario, corrupt_slot: Option<usize>) -> RunResult {
    let run = relay_load::run(Options {
        scenario,
        tokens: Tokens::Keys(Arc::new(
            relay_adapter_jwt::DevKeys::from_pem(&app.keys.to_pem()).unwrap(),
        )),
        // The server is this process.
        server_pids: vec![std::process::id()],
        progress: false,
        corrupt_slot,
        beside: None,
    });
    tokio::time::timeout(RUN_BOUND, run)
        .await
        .expect("the run hung: it did not finish within RUN_BOUND")
        .expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_converges_and_every_op_reaches_every_other_client() {
    let app = TestApp::spawn().await;
    let r = go(&app, small(&app), None).await;
    let (text, pass) = summary(&r);
    assert!(pass, "{text}");
    let t = &r.typing;
    assert_eq!(r.connect.joined, 24, "{text}");
    assert_eq!((t.editors, t.viewers), (20, 4), "{text}");
    assert_eq!(r.check.converged, 24, "{text}");
    assert_eq!(r.check.documents, 4);
    // Every committed op went to the other five clients of its document,
    // and nothing else did.
    let expected = r.check.expected_deliveries.expect("no churn");
    assert!(expected > 0);
    assert_eq!(t.all_deliveries, expected, "{text}");
    assert_eq!(t.unmatched_deliveries, 0, "{text}");
    // 20 editors at 20 edits/s over 1.5 measured seconds: 30 edits due
    // each (one more or less where a schedule meets the window's edges).
    assert!((580..=620).contains(&t.edits), "{text}");
    assert!(t.ack.count > 0 && t.ack.count <= t.submits, "{text}");
    assert!(t.delivery.count >= t.ack.count, "{text}");
    assert!(t.ack.p50_ms <= t.ack.p99_ms && t.ack.p99_ms <= t.ack.max_ms);
    assert!(
        t.cursors_sent > 0 && t.typing_sent > 0 && t.presence_received > 0,
        "{text}"
    );
    assert!(t.errors.is_empty() && t.closes.is_empty(), "{text}");
    assert!(r.series.len() >= 8, "{} samples", r.series.len());
    assert!(r.memory.server_rss_kib_connected.is_some());
    assert!(r.server_cpu.as_ref().is_some_and(|c| c.seconds >= 0.0));
    // The result file round-trips as a scenario: a run can be repeated.
    let json = serde_json::to_string(&r).unwrap();
    let dir = std::env::temp_dir().join(format!("relay-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("result.json");
    std::fs::write(&file, &json).unwrap();
    assert_eq!(Scenario::from_file(&file).unwrap(), r.scenario);

    // The plots: PNG and SVG of each chart, when a font is there to label
    // them.
    match plot::load_font() {
        Ok(_) => {
            let files = plot::write(&r, &dir).unwrap();
            assert_eq!(files.len(), 6);
            for f in files {
                let bytes = std::fs::read(&f).unwrap();
                if f.extension().unwrap() == "png" {
                    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
                    assert!(
                        bytes.len() > 10_000,
                        "{} is {} bytes",
                        f.display(),
                        bytes.len()
                    );
                } else {
                    let s = String::from_utf8(bytes).unwrap();
                    let label = match f.file_stem().unwrap().to_str().unwrap() {
                        "latency" => "delivery p99",
                        "throughput" => "deliveries/s",
                        _ => "server RSS",
                    };
                    assert!(s.contains("<svg") && s.contains(label), "{}", f.display());
                }
            }
        }
        Err(why) => {
            let e = plot::write(&r, &dir).unwrap_err().to_string();
            assert!(e.contains("font"), "{e}");
            eprintln!("plots not checked: {why}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_text_differs_fails_the_check() {
    let app = TestApp::spawn().await;
    let s = Scenario {
        connections: 8,
        documents: 2,
        ..small(&app)
    };
    let r = go(&app, s, Some(3)).await;
    let (text, pass) = summary(&r);
    assert!(!pass, "{text}");
    assert!(!r.check.ok);
    assert_eq!(r.check.converged, 7, "{text}");
    assert!(
        r.check
            .problems
            .iter()
            .any(|p| p.starts_with("client 3 ") && p.contains("differs")),
        "{:?}",
        r.check.problems
    );
    assert!(text.contains("check    FAILED"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_replaces_connections_and_opens_documents_and_everyone_still_converges() {
    let app = TestApp::spawn().await;
    let s = Scenario {
        connections: 16,
        churn: Churn {
            per_sec: 10.0,
            new_document_share: 0.5,
        },
        ..small(&app)
    };
    let r = go(&app, s, None).await;
    let (text, pass) = summary(&r);
    assert!(pass, "{text}");
    assert!(r.typing.churned >= 10, "{text}");
    assert_eq!(r.check.clients, 16, "the replacements are checked: {text}");
    assert!(r.check.documents > 4, "new documents were opened: {text}");
    assert!(r.typing.closes.is_empty(), "leavers close normally: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_come_from_several_loopback_addresses() {
    let app = TestApp::spawn().await;
    let s = Scenario {
        connections: 9,
        documents: 3,
        source_addresses: 3,
        rate: 5.0,
        duration_secs: 1.0,
        warmup_secs: 0.0,
        ..small(&app)
    };
    let r = go(&app, s, None).await;
    let (text, pass) = summary(&r);
    assert!(pass, "{text}");
    let used: Vec<(&str, usize)> = r
        .connect
        .sources_used
        .iter()
        .map(|(a, n)| (a.as_str(), *n))
        .collect();
    assert_eq!(used, [("127.0.0.1", 3), ("127.0.0.2", 3), ("127.0.0.3", 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_only_join() {
    let app = TestApp::spawn().await;
    let s = Scenario {
        connections: 30,
        documents: 3,
        rate: 0.0,
        duration_secs: 0.5,
        warmup_secs: 0.0,
        ..small(&app)
    };
    let r = go(&app, s, None).await;
    let (text, pass) = summary(&r);
    assert!(pass, "{text}");
    assert_eq!(r.typing.edits, 0);
    assert_eq!(r.check.converged, 30);
    assert!(
        r.memory.server_kb_per_connection_average.is_some(),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_joins_are_counted_and_fail_the_run() {
    let app = TestApp::spawn().await;
    let s = Scenario {
        connections: 4,
        documents: 1,
        duration_secs: 0.5,
        warmup_secs: 0.0,
        ..small(&app)
    };
    let r = relay_load::run(Options {
        scenario: s,
        tokens: Tokens::Fixed("not-a-token".into()),
        server_pids: Vec::new(),
        progress: false,
        corrupt_slot: None,
        beside: None,
    })
    .await
    .expect("run");
    let (text, pass) = summary(&r);
    assert!(!pass, "{text}");
    assert_eq!((r.connect.joined, r.connect.failed), (0, 4), "{text}");
    assert!(text.contains("4 FAILED"), "{text}");
    assert!(
        r.connect.failures.iter().all(|f| f.contains("join")),
        "{:?}",
        r.connect.failures
    );
}

/// A replaced client whose leave comes with the end of the run (the last
/// churn tick) leaves: it must not take the staying clients' path and wait
/// for the late joiners, who wait for it (the run hung 1 time in 10 so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_told_to_leave_as_the_run_stops_leaves() {
    use relay_load::client::{self, Phase, Shared, Spec};
    use relay_load::stats::{DueTable, Recorder};
    use std::time::Duration;
    let app = TestApp::spawn().await;
    let scenario = small(&app);
    let trace = Arc::new(trace::load(&trace::shipped()).unwrap());
    let recorder = Recorder::new(1);
    let epoch = recorder.epoch();
    let (phase_tx, phase) = tokio::sync::watch::channel(Phase::Stop);
    let (finals_tx, finals) = tokio::sync::watch::channel(None);
    let addr = app.addr;
    let shared = Arc::new(Shared {
        servers: vec![(addr, scenario.url.clone())],
        scenario,
        recorder,
        dues: DueTable::new(1, epoch),
        trace,
        phase,
        finals,
        joined: Default::default(),
        failed: Default::default(),
        settled: Default::default(),
        sources_used: Default::default(),
        corrupt_slot: None,
    });
    let user = uuid::Uuid::new_v4();
    let token = Tokens::Keys(Arc::new(
        relay_adapter_jwt::DevKeys::from_pem(&app.keys.to_pem()).unwrap(),
    ))
    .token(user, true)
    .unwrap();
    let spec = Spec {
        slot: 0,
        instance: 0,
        generation: 0,
        document: uuid::Uuid::new_v4(),
        user,
        token,
        editor: true,
        source: std::net::Ipv4Addr::LOCALHOST,
        trace_start: 0,
        offset: 0.0,
    };
    // Told to leave before it even joined, with the run already stopped:
    // by its first turn it is done and the run is over.
    let leave = tokio_util::sync::CancellationToken::new();
    leave.cancel();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        client::run(shared.clone(), spec, leave, None),
    )
    .await
    .expect("the leaver must not wait for the late joiners (no finals are ever sent here)");
    assert!(report.joined, "{report:?}");
    assert!(report.left, "{report:?}");
    assert_eq!(
        shared.settled.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a leaver does not count among the clients that stay"
    );
    drop((phase_tx, finals_tx));
}
