//! Several `relay` processes, one document: real PostgreSQL (this test
//! process's database), a Redis server of each test's own, clients spread
//! over the instances. The store's log is the truth every client must end
//! equal to, through kill -9, Redis restarts and lost messages.
//!
//! Seeded: a failing run prints its seed; `RELAY_INSTANCES_SEED=<n>`
//! replays it (the schedule of edits; the processes' timing still varies).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_domain::{CommittedOp, Delta, Document, DocumentId, Selection, Version};
use relay_ports::protocol::ServerMessage;
use relay_tests::instances::{Cluster, DroppingProxy, RedisServer};
use relay_tests::pg::{Proxy, store_log};
use relay_tests::{Conn, Editor, Received, new_document};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

fn seed() -> u64 {
    let seed = std::env::var("RELAY_INSTANCES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed}: rerun with RELAY_INSTANCES_SEED={seed}");
    seed
}

/// Where an editor may connect: every instance's WebSocket URL and whether
/// it is up.
#[derive(Clone)]
struct Targets {
    urls: Arc<Vec<String>>,
    up: Arc<Vec<AtomicBool>>,
}

impl Targets {
    fn of(cluster: &Cluster, document: DocumentId) -> Targets {
        Targets {
            urls: Arc::new(cluster.instances.iter().map(|i| i.url(document)).collect()),
            up: Arc::new(
                cluster
                    .instances
                    .iter()
                    .map(|_| AtomicBool::new(true))
                    .collect(),
            ),
        }
    }

    fn down(&self, i: usize) {
        self.up[i].store(false, Ordering::SeqCst);
    }

    /// The first instance from `from` on that is up.
    fn next_up(&self, from: usize) -> usize {
        (0..self.urls.len())
            .map(|k| (from + k) % self.urls.len())
            .find(|&i| self.up[i].load(Ordering::SeqCst))
            .expect("every instance is down")
    }
}

/// One editor's session and what it saw.
struct Session {
    editor: Editor,
    token: String,
    targets: Targets,
    at: usize,
    rng: StdRng,
    /// Versions the client had when it rejoined, and the version joined.
    rejoins: Vec<(Version, Version)>,
    /// The seq in flight (sent, not acked) at each rejoin.
    inflight_at_rejoin: Vec<Option<u64>>,
    /// Closes seen: (instance, code).
    closes: Vec<(usize, Option<u16>)>,
    /// `unavailable` answers to its submits (each re-sent).
    unavailable: usize,
}

impl Session {
    async fn open(cluster: &Cluster, targets: &Targets, at: usize, name: &str, seed: u64) -> Self {
        let user = Uuid::new_v4();
        let token = cluster.token(user);
        let document = DocumentId::new(
            targets.urls[0]
                .rsplit('/')
                .next()
                .and_then(|d| d.parse().ok())
                .expect("document in url"),
        );
        let mut editor = Editor::join_url(&targets.urls[at], document, user, name, &token).await;
        editor.lenient_sends = true;
        Session {
            editor,
            token,
            targets: targets.clone(),
            at,
            rng: StdRng::seed_from_u64(seed),
            rejoins: Vec::new(),
            inflight_at_rejoin: Vec::new(),
            closes: Vec::new(),
            unavailable: 0,
        }
    }

    /// Rejoins on instance `to` (or the next one up) with `since`; the
    /// in-flight op is re-sent.
    async fn move_to(&mut self, to: usize) {
        loop {
            let at = self.targets.next_up(to);
            let Some(conn) = Conn::try_connect(&self.targets.urls[at]).await else {
                // It went down meanwhile.
                eprintln!(
                    "{}: cannot connect to instance {at}",
                    self.editor.client.client_id()
                );
                self.targets.down(at);
                continue;
            };
            let since = self.editor.client.version();
            let inflight = self.editor.client.inflight().map(|i| i.seq.get());
            self.editor.rejoin_on(conn, &self.token).await;
            self.inflight_at_rejoin.push(inflight);
            let ServerMessage::Joined { version, .. } = &self.editor.joined else {
                unreachable!()
            };
            self.rejoins.push((since, *version));
            self.at = at;
            return;
        }
    }

    /// Handles what has arrived; on a close, rejoins elsewhere.
    async fn drain(&mut self) {
        while let Some(r) = self.editor.try_step().await {
            match r {
                Received::Closed(code) => self.closed(code).await,
                Received::Message(m) => self.retry_if_unavailable(&m).await,
            }
        }
    }

    /// `unavailable` for the op in flight: nothing was committed; a client
    /// sends the same submit again a little later (PROTOCOL.md).
    async fn retry_if_unavailable(&mut self, m: &ServerMessage) {
        if let ServerMessage::Error {
            code: relay_ports::protocol::ErrorCode::Unavailable,
            seq: Some(seq),
            ..
        } = m
            && self.editor.client.inflight().is_some_and(|i| i.seq == *seq)
        {
            self.unavailable += 1;
            let pause = self.rng.random_range(5..30);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if let Some(out) = self.editor.client.resend() {
                self.editor.submit(out).await;
            }
        }
    }

    /// The connection closed: rejoin on the next instance (this one is
    /// taken as down only if the close had no code: the process is gone).
    async fn closed(&mut self, code: Option<u16>) {
        self.closes.push((self.at, code));
        eprintln!(
            "{}: instance {} closed with {code:?}",
            self.editor.client.client_id(),
            self.at
        );
        if code.is_none() {
            self.targets.down(self.at);
        }
        self.move_to(self.at + 1).await;
    }

    /// Handles messages until `f` picks one (`None` after `wait`).
    async fn until<T>(
        &mut self,
        wait: Duration,
        mut f: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.editor.conn.recv_within(left).await?;
            let Received::Message(m) = &r else {
                panic!("{}: closed", self.editor.client.client_id());
            };
            self.editor.handle_received(&r).await;
            self.retry_if_unavailable(m).await;
            if let Some(t) = f(m) {
                return Some(t);
            }
        }
    }

    /// A random insert or delete on the local document.
    async fn random_edit(&mut self) {
        let len = self.editor.client.document().len();
        let mut d = Delta::new();
        if len > 20 && self.rng.random_bool(0.3) {
            let at = self.rng.random_range(0..len);
            let n = self.rng.random_range(1..=(len - at).min(5));
            d.retain(at).delete(n);
        } else {
            let at = self.rng.random_range(0..=len);
            let text: String = (0..self.rng.random_range(1..4))
                .map(|_| self.rng.random_range(b'a'..=b'z') as char)
                .collect();
            d.retain(at).insert(&text);
        }
        self.editor.edit(d).await;
    }

    /// Edits `n` times at a random pace, moving to another instance after
    /// edit `move_at`.
    async fn type_for(mut self, n: usize, move_at: Option<usize>) -> Self {
        for i in 0..n {
            self.drain().await;
            self.random_edit().await;
            if move_at == Some(i) {
                let to = self.at + 1;
                self.move_to(to).await;
            }
            let pause = self.rng.random_range(1..10);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self
    }

    /// Waits until nothing is in flight and the client has `version`,
    /// rejoining elsewhere if its instance goes away.
    async fn reach(&mut self, version: Version) {
        while !self.editor.client.is_synchronized() || self.editor.client.version() < version {
            match self.editor.conn.recv_within(Duration::from_secs(20)).await {
                None => panic!(
                    "{}: stuck at {} (want {version}), in flight {:?}, errors {:?}, closes {:?}",
                    self.editor.client.client_id(),
                    self.editor.client.version(),
                    self.editor.client.inflight().map(|i| i.seq),
                    self.editor.errors,
                    self.closes,
                ),
                Some(r) => {
                    if let Received::Closed(code) = r {
                        self.closed(code).await;
                    } else {
                        self.editor.handle_received(&r).await;
                        if let Received::Message(m) = &r {
                            self.retry_if_unavailable(m).await;
                        }
                    }
                }
            }
        }
    }
}

/// Every session ends at the store's head with the store's text and log;
/// every acked op is in the store once, at its acked version; nobody went
/// backwards on a rejoin or was told `future_base`.
async fn assert_converged(cluster: &Cluster, document: DocumentId, sessions: &mut [Session]) {
    for s in sessions.iter_mut() {
        s.reach(Version::ZERO).await;
    }
    let log = store_log(&cluster.database_url, document).await;
    let head = log.last().map_or(Version::ZERO, |o| o.version);
    for (i, op) in log.iter().enumerate() {
        assert_eq!(
            op.version,
            Version::new(i as u64 + 1).unwrap(),
            "the log has no holes"
        );
    }
    let mut seen = HashSet::new();
    for op in &log {
        assert!(
            seen.insert((op.client_id.clone(), op.seq)),
            "{} seq {} committed twice",
            op.client_id,
            op.seq
        );
    }
    let mut text = Document::new();
    for op in &log {
        let delta = op.delta.clone().fit(text.len()).expect("the log fits");
        text.apply(&delta).expect("the log applies");
    }
    for s in sessions.iter_mut() {
        s.reach(head).await;
        let who = s.editor.client.client_id().clone();
        assert_eq!(s.editor.text(), text.text(), "{who}: text");
        for (since, joined) in &s.rejoins {
            assert!(
                joined >= since,
                "{who} rejoined at {joined}, behind {since}"
            );
        }
        assert!(
            !s.editor.errors.iter().any(|(c, _)| c == "future_base"),
            "{who}: {:?}",
            s.editor.errors
        );
        for (seq, version) in &s.editor.acks {
            let op = &log[version.get() as usize - 1];
            assert_eq!(
                (&op.client_id, op.seq.get()),
                (&who, *seq),
                "{who}: ack of seq {seq} for version {version}"
            );
        }
        // What the client learned of the log is the log.
        let learned: Vec<_> = s
            .editor
            .log
            .values()
            .map(|o| (o.version, o.client_id.clone(), o.seq))
            .collect();
        let first = learned.first().map_or(1, |l| l.0.get() as usize);
        let expected: Vec<_> = log[first - 1..]
            .iter()
            .map(|o| (o.version, o.client_id.clone(), o.seq))
            .collect();
        assert_eq!(learned, expected, "{who}: log");
    }
    let unavailable: usize = sessions.iter().map(|s| s.unavailable).sum();
    let closes: usize = sessions.iter().map(|s| s.closes.len()).sum();
    eprintln!(
        "converged at version {head}: {unavailable} submits answered unavailable (re-sent), {closes} closes"
    );
}

async fn open_sessions(
    cluster: &Cluster,
    targets: &Targets,
    per_instance: usize,
    seed: u64,
) -> Vec<Session> {
    let mut sessions = Vec::new();
    for i in 0..cluster.instances.len() * per_instance {
        let at = i % cluster.instances.len();
        sessions.push(
            Session::open(
                cluster,
                targets,
                at,
                &format!("tab-{i}"),
                seed.wrapping_add(i as u64),
            )
            .await,
        );
    }
    sessions
}

async fn type_all(sessions: Vec<Session>, edits: usize, movers: usize) -> Vec<Session> {
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let move_at = (i < movers).then_some(edits / 2);
            tokio::spawn(s.type_for(edits, move_at))
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("editor task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_spread_over_three_instances_converge_on_the_store_log() {
    let seed = seed();
    let cluster = Cluster::start(3, &[]).await;
    let document = new_document();
    let targets = Targets::of(&cluster, document);
    let sessions = open_sessions(&cluster, &targets, 2, seed).await;
    // Two of them move to another instance half-way, with `since`.
    let mut sessions = type_all(sessions, 40, 2).await;
    assert_converged(&cluster, document, &mut sessions).await;
    assert!(sessions.iter().take(2).all(|s| s.rejoins.len() == 1));
}

/// Polls the store (every 20 ms, at most `within`) until `f` picks
/// something from the document's log; panics naming `what` otherwise.
async fn await_store<T>(
    cluster: &Cluster,
    document: DocumentId,
    within: Duration,
    what: &str,
    mut f: impl FnMut(&[CommittedOp]) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let log = store_log(&cluster.database_url, document).await;
        if let Some(t) = f(&log) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in the store after {within:?} (head {})",
            log.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_mid_edit_loses_and_doubles_nothing_and_its_users_leave() {
    let seed = seed();
    // Instance 2 stops every room right after its first commit, before the
    // ack and the publish (RELAY_TEST_PAUSE_AFTER_COMMIT): killed then, it
    // leaves an op committed that nobody was told of.
    let redis = RedisServer::start().await;
    let mut cluster = Cluster::start_each(
        3,
        redis,
        &[("PRESENCE_TTL_SECS", "3")],
        |_| None,
        |i| {
            if i == 2 {
                vec![("RELAY_TEST_PAUSE_AFTER_COMMIT".into(), "true".into())]
            } else {
                Vec::new()
            }
        },
    )
    .await;
    let document = new_document();
    let targets = Targets::of(&cluster, document);
    let sessions = open_sessions(&cluster, &targets, 2, seed).await;
    let on_killed: Vec<String> = sessions
        .iter()
        .filter(|s| s.at == 2)
        .map(|s| s.editor.client.client_id().to_string())
        .collect();
    // On the instance that dies, a tab that is closed with it.
    let leaver = Session::open(&cluster, &targets, 2, "leaver", seed ^ 2).await;
    // On another, a watcher that does not edit.
    let mut watcher = Session::open(&cluster, &targets, 0, "watcher", seed ^ 1).await;
    let typing = tokio::spawn(type_all(sessions, 60, 0));
    // The kill comes once instance 2 has committed an op of its own.
    let committed = await_store(
        &cluster,
        document,
        Duration::from_secs(15),
        "an op committed by instance 2",
        |log| {
            log.iter()
                .find(|o| on_killed.contains(&o.client_id.to_string()))
                .map(|o| (o.client_id.to_string(), o.seq.get(), o.version))
        },
    )
    .await;
    targets.down(2);
    cluster.instances[2].kill9();
    drop(leaver);
    eprintln!("killed instance 2 after it committed {committed:?}");
    let mut sessions = typing.await.expect("typing");
    // That op was committed and still in flight at the kill: its client
    // re-sent it elsewhere (and assert_converged shows it committed once,
    // at its version, in every client's log).
    let (who, seq, _) = &committed;
    let s = sessions
        .iter()
        .find(|s| s.editor.client.client_id().as_str() == who)
        .expect("its session");
    assert_eq!(
        s.inflight_at_rejoin.first(),
        Some(&Some(*seq)),
        "{who}: seq {seq} was committed by instance 2 but not in flight when it rejoined \
         (acked before the kill: the committed-not-acked path did not run)"
    );
    // Nobody refreshes the leaver's entry now: the watcher's instance sees
    // it expire (PRESENCE_TTL_SECS).
    let left = watcher
        .until(Duration::from_secs(20), |m| match m {
            ServerMessage::Presence { left, .. } => left
                .iter()
                .any(|d| d.client_id.as_str() == "leaver")
                .then_some(()),
            _ => None,
        })
        .await;
    assert!(left.is_some(), "the watcher never saw the leaver leave");
    sessions.push(watcher);
    assert_converged(&cluster, document, &mut sessions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_and_down_for_seconds_loses_nothing_and_ready_recovers() {
    let seed = seed();
    let mut cluster = Cluster::start(2, &[("BUS_DOWN_POLL_MS", "500")]).await;
    let document = new_document();
    let targets = Targets::of(&cluster, document);
    let sessions = open_sessions(&cluster, &targets, 2, seed).await;
    for i in &cluster.instances {
        assert_eq!(i.redis_ready().await, (200, "ok".to_owned()));
    }
    let typing = tokio::spawn(type_all(sessions, 150, 0));
    // A restart in the middle of editing...
    await_store(
        &cluster,
        document,
        Duration::from_secs(15),
        "20 ops before the restart",
        |log| (log.len() >= 20).then_some(()),
    )
    .await;
    cluster.redis.restart().await;
    assert!(
        !typing.is_finished(),
        "the editors had finished before the restart"
    );
    // ...and editing goes on across it; then Redis gone for a while:
    // editing goes on through PostgreSQL, other instances' ops arriving
    // by polling the store.
    let head = store_log(&cluster.database_url, document).await.len();
    await_store(
        &cluster,
        document,
        Duration::from_secs(15),
        "10 more ops after the restart",
        |log| (log.len() >= head + 10).then_some(()),
    )
    .await;
    cluster.redis.kill();
    let killed = std::time::Instant::now();
    for i in &cluster.instances {
        wait_ready(i, 503, "error").await;
    }
    let sessions = typing.await.expect("typing");
    // Still down: more editing, and everyone converges (store polling).
    let mut sessions = type_all(sessions, 40, 0).await;
    assert_converged(&cluster, document, &mut sessions).await;
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "Redis was still down throughout"
    );
    // Down for 10 s in all, /ready saying so throughout.
    while killed.elapsed() < Duration::from_secs(10) {
        for i in &cluster.instances {
            assert_eq!(
                i.redis_ready().await,
                (503, "error".to_owned()),
                "{}: /ready while Redis is down",
                i.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.redis.restart().await;
    for i in &cluster.instances {
        wait_ready(i, 200, "ok").await;
    }
    // And edits flow again through Redis.
    let mut sessions = type_all(sessions, 20, 0).await;
    assert_converged(&cluster, document, &mut sessions).await;
}

/// Waits (at most 10 s) until `/ready` answers `status` with
/// `checks.redis` = `check`.
async fn wait_ready(i: &relay_tests::instances::Instance, status: u16, check: &str) {
    for _ in 0..200 {
        if i.redis_ready().await == (status, check.to_owned()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{}: /ready is {:?}, want ({status}, {check})",
        i.name,
        i.redis_ready().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_lost_between_redis_and_one_instance_are_repaired() {
    let seed = seed();
    let redis = RedisServer::start().await;
    // Instance 1 reaches Redis through a proxy that keeps cutting its
    // connections: whatever was on the wire is lost.
    let proxy = Proxy::start(redis.addr()).await;
    let proxied = format!("redis://{}", proxy.addr);
    let cluster = Cluster::start_with(2, redis, &[], |i| (i == 1).then(|| proxied.clone())).await;
    let document = new_document();
    let targets = Targets::of(&cluster, document);
    let sessions = open_sessions(&cluster, &targets, 3, seed).await;
    let typing = tokio::spawn(type_all(sessions, 80, 0));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cuts = 0;
    while !typing.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..200))).await;
        proxy.cut();
        cuts += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        proxy.restore();
    }
    let mut sessions = typing.await.expect("typing");
    // And one loss for certain: instance 1's link cut while an editor on
    // instance 0 commits, its own editors idle (their appends cannot
    // conflict and reveal it); restored, nothing more is edited.
    proxy.cut();
    cuts += 1;
    let writer = sessions
        .iter_mut()
        .find(|s| s.at == 0)
        .expect("an editor on 0");
    for _ in 0..3 {
        writer.random_edit().await;
        writer.reach(Version::ZERO).await;
    }
    let committed = writer.editor.client.version();
    // Lost: right after the acks, instance 1's idle editors lack them
    // (nothing reached them over the cut link).
    let mut behind = 0;
    for s in sessions.iter_mut().filter(|s| s.at == 1) {
        s.drain().await;
        if s.editor.client.version() < committed {
            behind += 1;
        }
    }
    assert!(
        behind > 0,
        "instance 1's editors had instance 0's ops though its link was cut: nothing was lost"
    );
    proxy.restore();
    assert_converged(&cluster, document, &mut sessions).await;
    // ...and were repaired (assert_converged): how, the metrics say.
    let repairs = cluster.instances[1]
        .metric("materi_bus_gap_repairs_total", &[])
        .await;
    eprintln!("{cuts} cuts, {repairs} gap repairs counted on instance 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_pub_sub_messages_dropped_on_the_way_to_one_instance_is_repaired() {
    let seed = seed();
    let redis = RedisServer::start().await;
    // Instance 1 loses a fifth of what Redis pushes to it, the connection
    // staying up: only version gaps (and the quiet-bus check) show it.
    let proxy = DroppingProxy::start(redis.addr(), 0.2, seed).await;
    let proxied = format!("redis://{}", proxy.addr);
    let cluster = Cluster::start_with(2, redis, &[], |i| (i == 1).then(|| proxied.clone())).await;
    let document = new_document();
    let targets = Targets::of(&cluster, document);
    let sessions = open_sessions(&cluster, &targets, 3, seed).await;
    let mut sessions = type_all(sessions, 80, 0).await;
    assert_converged(&cluster, document, &mut sessions).await;
    let (dropped, passed) = proxy.counts();
    eprintln!("pub/sub messages to instance 1: {dropped} dropped, {passed} passed");
    assert!(
        dropped > 0,
        "the proxy dropped nothing: the test proves nothing"
    );
}

/// Messages `conn` receives within `wait` (closes end it).
async fn collect(conn: &mut Conn, wait: Duration) -> Vec<ServerMessage> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.recv_within(left).await {
            Some(Received::Message(m)) => got.push(m),
            _ => return got,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_instances_with_throttling_and_debounce_intact() {
    use relay_domain::{ClientId, Seq};
    use relay_ports::ClientMessage;
    let cluster = Cluster::start(2, &[]).await;
    let document = new_document();
    let (ua, ub) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = Conn::connect(&cluster.instances[0].url(document)).await;
    a.join("tab-a", Some(&cluster.token(ua)), None).await;
    assert!(matches!(a.message().await, ServerMessage::Joined { .. }));
    let mut b = Conn::connect(&cluster.instances[1].url(document)).await;
    b.join("tab-b", Some(&cluster.token(ub)), None).await;
    match b.message().await {
        ServerMessage::Joined { presence, .. } => assert!(
            presence.iter().any(|e| e.client_id.as_str() == "tab-a"),
            "B's join lists A, on the other instance: {presence:?}"
        ),
        other => panic!("expected joined, got {other:?}"),
    }
    // (`until` fails the test if it never comes.)
    a.until(|m| match m {
        ServerMessage::Presence { joined, .. } => joined
            .iter()
            .any(|e| e.client_id.as_str() == "tab-b")
            .then_some(()),
        _ => None,
    })
    .await;

    // Text to put carets in, then a burst of 100 cursors from A.
    let mut hello = Delta::new();
    hello.insert("hello");
    a.send(&ClientMessage::Submit {
        seq: Seq::new(1).unwrap(),
        base: Version::ZERO,
        delta: hello,
    })
    .await;
    a.until(|m| matches!(m, ServerMessage::Ack { .. }).then_some(()))
        .await;
    // (One write, so they reach the server together however busy the
    // machine is.)
    let burst: Vec<String> = (0..100usize)
        .map(|i| {
            let at = if i == 99 { 5 } else { i % 5 };
            ClientMessage::Cursor {
                version: Version::from(1),
                selection: Some(Selection {
                    anchor: at,
                    head: at,
                }),
            }
            .encode()
        })
        .collect();
    a.send_all(&burst).await;
    // And typing ten times in a row.
    let typing: Vec<String> = (0..10).map(|_| ClientMessage::Typing.encode()).collect();
    a.send_all(&typing).await;
    // Until the last cursor and the end of typing have come (at most 15 s:
    // the machine may be busy), then whatever else comes within the
    // throttle and debounce periods.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let done = |got: &[ServerMessage]| {
        let last_cursor = got.iter().rev().find_map(|m| match m {
            ServerMessage::Cursor {
                client_id,
                selection,
                ..
            } if client_id.as_str() == "tab-a" => Some(*selection),
            _ => None,
        });
        let stopped = got.iter().any(|m| {
            matches!(m, ServerMessage::Typing { client_id, active: false, .. }
                if client_id.as_str() == "tab-a")
        });
        stopped && last_cursor == Some(Some(Selection { anchor: 5, head: 5 }))
    };
    while !done(&got) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match b.recv_within(left).await {
            Some(Received::Message(m)) => got.push(m),
            other => panic!(
                "B: the last cursor and typing false did not come in 15 s ({other:?}): {got:?}"
            ),
        }
    }
    got.extend(collect(&mut b, Duration::from_millis(600)).await);
    let cursors: Vec<(Option<usize>, Option<usize>)> = got
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Cursor {
                client_id,
                selection,
                ..
            } if client_id.as_str() == "tab-a" => {
                Some((selection.map(|s| s.anchor), selection.map(|s| s.head)))
            }
            _ => None,
        })
        .collect();
    assert!(
        !cursors.is_empty() && cursors.len() <= 5,
        "100 cursors in a burst reach the other instance throttled: {cursors:?}"
    );
    assert_eq!(
        cursors.last(),
        Some(&(Some(5), Some(5))),
        "the latest one last"
    );
    let typing: Vec<bool> = got
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Typing {
                client_id, active, ..
            } if client_id.as_str() == "tab-a" => Some(*active),
            _ => None,
        })
        .collect();
    assert_eq!(
        typing,
        vec![true, false],
        "ten typing signals: one start, one stop after the debounce"
    );

    // A leaves: B, on the other instance, is told.
    a.send(&ClientMessage::Leave).await;
    b.until(|m| match m {
        ServerMessage::Presence { left, .. } => left
            .iter()
            .any(|d| d.client_id == ClientId::new("tab-a").unwrap())
            .then_some(()),
        _ => None,
    })
    .await;
}
