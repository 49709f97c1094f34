//! The harness of one case: a relay of its own, two bystanders (one on
//! another document, one on the attacked document) measured before and
//! during the attack, then the checks every case shares: ack p99 during
//! the attack within 3 x its own baseline plus a floor, the bystanders
//! converged on the server's document, and every acknowledged insert in a
//! fresh client's content.

use super::bystander::{Bystander, Samples, phase, quantile};
use super::net::Ws;
use super::target::{Setup, Target};
use relay_domain::DocumentId;
use relay_ports::protocol::ServerMessage;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

/// The attacker's address, and a second one.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
pub const ATTACKER_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// An honest client that comes and goes during an attack.
pub const HONEST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
/// The bystanders and the client that checks their work.
pub const BYSTANDER_OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);
pub const BYSTANDER_SAME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
pub const CHECKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);

/// Acks sampled before the attack.
pub const BASELINE_SAMPLES: usize = 40;
/// The least time the bystanders are measured during an attack.
pub const MIN_DURING: Duration = Duration::from_secs(1);
/// The most a whole case may take.
pub const CASE_LIMIT: Duration = Duration::from_secs(90);

/// The absolute floor added to 3 x the baseline p99 (`RELAY_ATTACK_FLOOR_MS`,
/// default 20): sub-millisecond baselines on a shared machine would
/// otherwise fail on scheduling noise alone.
pub fn floor() -> Duration {
    Duration::from_millis(
        std::env::var("RELAY_ATTACK_FLOOR_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    )
}

/// What an attack gets: the target, the attacked document, and an attacker
/// identity of its own.
#[derive(Debug)]
pub struct Ctx {
    /// First, so that it is dropped first: a failed case's bystanders stop
    /// before its relay is killed.
    bystanders: Option<Running>,
    pub name: &'static str,
    pub target: Target,
    /// The document the attack aims at (a bystander edits it).
    pub doc: DocumentId,
    /// Another document (the other bystander edits it).
    pub other_doc: DocumentId,
    /// The attacker's user id (an editor of every document unless a case
    /// mints otherwise).
    pub attacker: Uuid,
}

/// What a bystander saw of others, for the cases that count it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub cursors_from: std::collections::BTreeMap<String, usize>,
    pub typing_from: std::collections::BTreeMap<String, usize>,
}

#[derive(Debug)]
struct Running {
    phase: Arc<AtomicU8>,
    /// When the attack started.
    started: Instant,
    tasks: Vec<(String, Arc<Mutex<Samples>>, JoinHandle<Bystander>)>,
    /// What the bystander on the attacked document saw join.
    seen_joined: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl Drop for Running {
    /// A case that failed leaves its bystanders: they stop with it (not
    /// after its relay is gone, with panics of their own).
    fn drop(&mut self) {
        for (_, _, task) in &self.tasks {
            task.abort();
        }
    }
}

impl Ctx {
    /// The attacker's editor token.
    pub fn token(&self) -> String {
        self.target.editor(self.attacker)
    }

    /// The attacked document's path.
    pub fn path(&self) -> String {
        Target::path(self.doc)
    }

    /// A message-level client from `ip` on the attacked document.
    pub async fn ws(&self, ip: Ipv4Addr) -> Ws {
        Ws::connect(ip, self.target.addr, &self.path()).await
    }

    /// A client from `ip` joined to the attacked document with `token`;
    /// panics if refused.
    pub async fn joined(&self, ip: Ipv4Addr, client_id: &str, token: &str) -> (Ws, ServerMessage) {
        let mut ws = self.ws(ip).await;
        let joined = ws
            .join(client_id, token, None)
            .await
            .unwrap_or_else(|e| panic!("{}: {client_id} was refused: {e:?}", self.name));
        (ws, joined)
    }

    /// An honest client from [`HONEST`] joins the attacked document (a
    /// user of its own), and leaves.
    pub async fn honest_join(&self) {
        let user = Uuid::new_v4();
        let (ws, _) = self
            .joined(HONEST, "honest", &self.target.editor(user))
            .await;
        ws.close().await;
    }

    /// Stops the bystanders now and runs the shared checks (the harness
    /// does it after the attack otherwise): for an attack whose end leaves
    /// no server to check against.
    pub async fn finish_bystanders(&mut self) -> Vec<Summary> {
        let Some(mut running) = self.bystanders.take() else {
            return Vec::new();
        };
        // Measured for at least MIN_DURING, however short the attack.
        tokio::time::sleep(MIN_DURING.saturating_sub(running.started.elapsed())).await;
        running.phase.store(phase::STOP, Ordering::Relaxed);
        let mut done = Vec::new();
        for (name, _, task) in std::mem::take(&mut running.tasks) {
            let b = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .unwrap_or_else(|_| panic!("{}: bystander {name} did not stop", self.name))
                .unwrap_or_else(|e| panic!("{}: bystander {name} failed: {e}", self.name));
            done.push(b);
        }
        for b in &mut done {
            check_latency(self.name, b);
            self.check_converged(b).await;
        }
        let mut summaries = Vec::new();
        for b in done {
            summaries.push(Summary {
                name: b.name.clone(),
                cursors_from: b.cursors_from.clone(),
                typing_from: b.typing_from.clone(),
            });
            b.ws.close().await;
        }
        summaries
    }

    /// The bystander converged on the server's document, and every insert
    /// acknowledged to it is there.
    async fn check_converged(&self, b: &mut Bystander) {
        let checker_user = Uuid::new_v4();
        if self.target.database_permissions() {
            self.target
                .grant(checker_user, b.document, relay_domain::Role::Viewer)
                .await;
        }
        let token = self.target.viewer(checker_user);
        for _ in 0..5 {
            let mut checker =
                Ws::connect(CHECKER, self.target.addr, &Target::path(b.document)).await;
            let joined = checker
                .join("checker", &token, None)
                .await
                .unwrap_or_else(|e| panic!("{}: the checker was refused: {e:?}", self.name));
            checker.close().await;
            let ServerMessage::Joined {
                version,
                content: Some(content),
                ..
            } = joined
            else {
                panic!("{}: the checker's joined has no content", self.name);
            };
            let server = relay_domain::Document::from_content(&content, version)
                .expect("content")
                .text();
            b.catch_up_to(version.get()).await;
            if b.client.version() != version {
                // Something committed after the checker joined: again.
                continue;
            }
            assert_eq!(
                b.text(),
                server,
                "{}: bystander {} diverged from the server at version {}",
                self.name,
                b.name,
                version.get()
            );
            let lost: Vec<&String> = b.acked.iter().filter(|m| !server.contains(*m)).collect();
            assert!(
                lost.is_empty(),
                "{}: bystander {}: acknowledged inserts missing from the document: {lost:?}",
                self.name,
                b.name
            );
            assert!(
                !b.acked.is_empty(),
                "{}: bystander {} had nothing acknowledged",
                self.name,
                b.name
            );
            return;
        }
        panic!(
            "{}: bystander {}: the document kept changing after the attack",
            self.name, b.name
        );
    }

    /// Waits until the bystander on the attacked document has seen every
    /// one of `client_ids` join (the room has queued their `joined`: it
    /// tells the others in the same turn); panics after `within`.
    pub async fn await_joined(&self, client_ids: &[String], within: Duration) {
        let seen = self
            .bystanders
            .as_ref()
            .expect("the bystanders are running")
            .seen_joined
            .clone();
        self.eventually(within, "every joiner in the presence", || {
            let seen = seen.lock().expect("seen");
            client_ids.iter().all(|c| seen.contains(c))
        })
        .await;
    }

    /// Polls `f` every 25 ms until it holds; panics naming `what` after
    /// `within`.
    pub async fn eventually(&self, within: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "{}: {what}: not within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// p99 during the attack within 3 x the baseline's plus [`floor`].
fn check_latency(case: &str, b: &Bystander) {
    let s = b.samples.lock().expect("samples").clone();
    assert!(
        !s.during.is_empty(),
        "{case}: bystander {} was not acked during the attack",
        b.name
    );
    let base = quantile(&s.baseline, 0.99);
    let during = quantile(&s.during, 0.99);
    let bound = base * 3 + floor();
    assert!(
        during <= bound,
        "{case}: bystander {}: ack p99 during the attack {during:?} > 3 x baseline {base:?} + {:?} \
         ({} samples before, {} during)",
        b.name,
        floor(),
        s.baseline.len(),
        s.during.len()
    );
}

/// Runs one case: `attack` against a relay started with `setup`, two
/// bystanders measured before and during it, then the shared checks. The
/// whole case is bounded by [`CASE_LIMIT`]; a hang fails naming it.
pub async fn run(name: &'static str, setup: Setup, attack: impl AsyncFnOnce(&mut Ctx)) {
    run_prepared(name, setup, async |_| {}, async |ctx, ()| attack(ctx).await).await;
}

/// [`run`] with `prepare` run before the bystanders join (building a large
/// document, say: setting the stage is not the attack); what it returns is
/// passed to `attack`.
pub async fn run_prepared<T>(
    name: &'static str,
    setup: Setup,
    prepare: impl AsyncFnOnce(&mut Ctx) -> T,
    attack: impl AsyncFnOnce(&mut Ctx, T),
) {
    tokio::time::timeout(CASE_LIMIT, run_inner(name, setup, prepare, attack))
        .await
        .unwrap_or_else(|_| panic!("case {name}: did not finish within {CASE_LIMIT:?}"));
}

async fn run_inner<T>(
    name: &'static str,
    setup: Setup,
    prepare: impl AsyncFnOnce(&mut Ctx) -> T,
    attack: impl AsyncFnOnce(&mut Ctx, T),
) {
    let target = Target::start(setup).await;
    let (doc, other_doc) = (
        DocumentId::new(Uuid::new_v4()),
        DocumentId::new(Uuid::new_v4()),
    );
    let mut ctx = Ctx {
        bystanders: None,
        name,
        target,
        doc,
        other_doc,
        attacker: Uuid::new_v4(),
    };
    let prepared = prepare(&mut ctx).await;
    let target = &ctx.target;
    let phase = Arc::new(AtomicU8::new(phase::BASELINE));
    let mut tasks = Vec::new();
    let mut seen_joined = Arc::default();
    for (who, ip, d) in [
        ("by-other", BYSTANDER_OTHER, other_doc),
        ("by-same", BYSTANDER_SAME, doc),
    ] {
        let user = Uuid::new_v4();
        if target.database_permissions() {
            target.grant(user, d, relay_domain::Role::Editor).await;
        }
        let b = Bystander::join(who, ip, target.addr, d, user, &target.editor(user)).await;
        let samples = b.samples.clone();
        seen_joined = b.seen_joined.clone();
        tasks.push((who.to_owned(), samples, tokio::spawn(b.run(phase.clone()))));
    }
    // The baseline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tasks
        .iter()
        .any(|(_, s, _)| s.lock().expect("samples").baseline.len() < BASELINE_SAMPLES)
    {
        if let Some((who, _, _)) = tasks.iter().find(|(_, _, t)| t.is_finished()) {
            panic!("{name}: bystander {who} stopped during the baseline");
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no baseline of {BASELINE_SAMPLES} acks within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    phase.store(phase::DURING, Ordering::Relaxed);
    ctx.bystanders = Some(Running {
        phase,
        started: Instant::now(),
        tasks,
        seen_joined,
    });
    attack(&mut ctx, prepared).await;
    ctx.finish_bystanders().await;
}
