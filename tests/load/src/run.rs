//! A whole run: connect N clients over M documents, type, stop, check
//! every client against a late joiner, and report.
//!
//! Size: about 790 lines of code; an operator tool, not the server. One
//! run is one sequence (start servers, connect, warm up, type, churn,
//! stop, late joiners, report) whose stages share the run's state; each
//! stage is its own function here.

use crate::client::{self, Final, Phase, Report, Shared, Spec};
use crate::procfs::{self, FdLimit};
use crate::scenario::Scenario;
use crate::stats::{DueTable, Percentiles, Recorder, Window};
use crate::trace;
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_adapter_jwt::{DevKeys, TokenRequest};
use relay_ports::protocol::{ClientMessage, Join, Role, ServerMessage};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How clients get their tokens.
#[derive(Clone)]
pub enum Tokens {
    /// Minted per client (its own user, editor or viewer of every
    /// document) with the server's development key.
    Keys(Arc<DevKeys>),
    /// One token for every client (it must allow editing).
    Fixed(String),
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokens::Keys(_) => f.write_str("Tokens::Keys"),
            Tokens::Fixed(_) => f.write_str("Tokens::Fixed(..)"),
        }
    }
}

impl Tokens {
    /// A token for `user`, editor or viewer of every document.
    pub fn token(&self, user: Uuid, editor: bool) -> anyhow::Result<String> {
        match self {
            Tokens::Fixed(t) => Ok(t.clone()),
            Tokens::Keys(k) => {
                let mut docs = BTreeMap::new();
                docs.insert(
                    "*".to_owned(),
                    if editor { Role::Editor } else { Role::Viewer },
                );
                Ok(k.mint(&TokenRequest {
                    sub: user,
                    name: None,
                    docs,
                    ttl_secs: 24 * 3600,
                })?)
            }
        }
    }
}

/// Everything a run needs besides its scenario.
#[derive(Debug)]
pub struct Options {
    pub scenario: Scenario,
    pub tokens: Tokens,
    /// The server's processes on this machine (one per instance), for RSS
    /// and CPU, summed.
    pub server_pids: Vec<u32>,
    pub progress: bool,
    /// See [`Shared::corrupt_slot`].
    pub corrupt_slot: Option<usize>,
    /// A shell command run beside the load while it types (a soak's
    /// attacker), with RELAY_URLS (the instances' ws:// URLs, comma
    /// separated) and RELAY_KEY_FILE (the key that signs this run's
    /// tokens, when the tool mints them) in its environment. It is sent
    /// SIGTERM when typing ends; exiting on its own with a failure before
    /// then fails the run.
    pub beside: Option<String>,
}

/// What the command beside the load did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Beside {
    pub command: String,
    /// Its exit code when it ended on its own before the end of typing.
    pub failed_with: Option<i32>,
    pub ran_secs: f64,
}

/// A soak's recovery check (see [`Scenario::recover_secs`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recovery {
    /// Seconds until every server reported no connection and no open
    /// document (or the wait ran out).
    pub waited_secs: f64,
    pub drained: bool,
    pub rss_kib_warm: Option<u64>,
    pub rss_kib_after: Option<u64>,
    /// After over warm; at most 1.10 passes.
    pub rss_ratio: Option<f64>,
    pub fds_before: Option<u64>,
    pub fds_after: Option<u64>,
    pub ok: bool,
    pub problems: Vec<String>,
}

/// One sample of the time series.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Slice {
    /// Seconds since the run began (see [`RunResult::typing_from`]).
    pub t: f64,
    pub connections: usize,
    pub edits_per_sec: f64,
    pub acks_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub ack: Percentiles,
    pub delivery: Percentiles,
    pub server_rss_mib: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    pub tool_rss_mib: f64,
    pub tool_cpu_percent: f64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectPhase {
    pub requested: usize,
    pub instances: usize,
    pub joined: usize,
    pub failed: usize,
    pub seconds: f64,
    pub source_addresses: Vec<String>,
    /// Connections per local address, as the sockets report it.
    pub sources_used: BTreeMap<String, usize>,
    pub fd_limit: Option<FdLimit>,
    /// The first few failures, verbatim.
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_half: Option<u64>,
    pub server_rss_kib_connected: Option<u64>,
    pub server_rss_kib_peak: Option<u64>,
    /// (connected - half) / (connections - half): fixed costs excluded.
    pub server_kb_per_connection_slope: Option<f64>,
    /// (connected - before) / connections.
    pub server_kb_per_connection_average: Option<f64>,
    pub tool_rss_kib_connected: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Cpu {
    pub seconds: f64,
    pub percent_of_one_core: f64,
    /// CPU milliseconds per 1,000 deliveries.
    pub ms_per_1000_deliveries: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Typing {
    pub measured_seconds: f64,
    pub editors: usize,
    pub viewers: usize,
    pub edits: u64,
    pub submits: u64,
    pub acks: u64,
    pub edits_per_sec: f64,
    pub acks_per_sec: f64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub unmatched_deliveries: u64,
    pub cursors_sent: u64,
    pub typing_sent: u64,
    pub presence_received: u64,
    pub ack: Percentiles,
    pub delivery: Percentiles,
    /// With several instances, `delivery` split by where the receiver is:
    /// on the sender's instance, or on another.
    pub delivery_same_instance: Option<Percentiles>,
    pub delivery_other_instance: Option<Percentiles>,
    /// With several instances: `ack` by the submitter's instance, and the
    /// `unavailable` answers there (a fair share of a hot document).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ack_by_instance: Vec<Percentiles>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable_by_instance: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    /// Whole run, warm-up and end included.
    pub all_deliveries: u64,
    pub all_acks: u64,
    pub churned: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Check {
    pub documents: usize,
    pub clients: usize,
    pub converged: usize,
    pub ok: bool,
    /// The first few clients that did not converge, with why.
    pub problems: Vec<String>,
    /// Expected deliveries (each acked op times the other clients of its
    /// document), when no churn changed the audience.
    pub expected_deliveries: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    pub scenario: Scenario,
    pub trace: String,
    pub trace_fallback: bool,
    pub started_unix: u64,
    pub cores: usize,
    pub connect: ConnectPhase,
    pub memory: Memory,
    pub typing: Typing,
    pub server_cpu: Option<Cpu>,
    pub tool_cpu: Cpu,
    pub check: Check,
    pub recovery: Option<Recovery>,
    pub beside: Option<Beside>,
    /// When typing started, the measurement began and typing stopped, in
    /// the series' seconds.
    pub typing_from: f64,
    pub measured_from: f64,
    pub typing_until: f64,
    pub series: Vec<Slice>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples /proc and the recorder every `every`.
struct Sampler {
    series: Arc<Mutex<Vec<Slice>>>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
    peak: Arc<Mutex<Option<u64>>>,
    /// Deliveries and acks over the whole run.
    all: Arc<Mutex<(u64, u64)>>,
}

fn start_sampler(
    shared: Arc<Shared>,
    server_pids: Vec<u32>,
    live: Arc<dyn Fn() -> usize + Send + Sync>,
    bar: ProgressBar,
) -> Sampler {
    let series = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(Notify::new());
    let peak = Arc::new(Mutex::new(None));
    let all = Arc::new(Mutex::new((0u64, 0u64)));
    let every = Duration::from_secs_f64(shared.scenario.sample_secs);
    let task = tokio::spawn({
        let (series, stop, peak, all) = (series.clone(), stop.clone(), peak.clone(), all.clone());
        async move {
            let me = std::process::id();
            let mut last = Instant::now();
            let mut last_server = procfs::cpu_secs_sum(&server_pids);
            let mut last_tool = procfs::cpu_secs(me).unwrap_or(0.0);
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.notified() => true,
                };
                let now = Instant::now();
                let dt = (now - last).as_secs_f64().max(1e-6);
                last = now;
                let w: Window = shared.recorder.take_series();
                let server_rss = procfs::rss_kib_sum(&server_pids);
                if let Some(r) = server_rss {
                    let mut p = peak.lock().expect("peak");
                    *p = Some(p.map_or(r, |x: u64| x.max(r)));
                }
                let server_cpu = procfs::cpu_secs_sum(&server_pids);
                let server_pct = match (server_cpu, last_server) {
                    (Some(a), Some(b)) => Some((a - b) / dt * 100.0),
                    _ => None,
                };
                last_server = server_cpu;
                let tool_cpu = procfs::cpu_secs(me).unwrap_or(last_tool);
                let tool_pct = (tool_cpu - last_tool) / dt * 100.0;
                last_tool = tool_cpu;
                let t = now
                    .saturating_duration_since(shared.recorder.epoch())
                    .as_secs_f64();
                let slice = Slice {
                    t,
                    connections: live(),
                    edits_per_sec: w.edits as f64 / dt,
                    acks_per_sec: w.acks as f64 / dt,
                    deliveries_per_sec: w.deliveries as f64 / dt,
                    ack: Percentiles::of(&w.ack),
                    delivery: Percentiles::of(&w.delivery),
                    server_rss_mib: server_rss.map(mib),
                    server_cpu_percent: server_pct,
                    tool_rss_mib: mib(procfs::rss_kib(me).unwrap_or(0)),
                    tool_cpu_percent: tool_pct,
                    errors: w.errors.values().sum(),
                };
                bar.set_message(format!(
                    "{} conns  {:.0} edits/s  {:.0} deliveries/s  ack p99 {:.1} ms  delivery p99 {:.1} ms  server {}  tool {:.0}% CPU",
                    slice.connections,
                    slice.edits_per_sec,
                    slice.deliveries_per_sec,
                    slice.ack.p99_ms,
                    slice.delivery.p99_ms,
                    match (slice.server_rss_mib, slice.server_cpu_percent) {
                        (Some(r), Some(c)) => format!("{r:.0} MiB {c:.0}% CPU"),
                        _ => "-".into(),
                    },
                    slice.tool_cpu_percent
                ));
                {
                    let mut a = all.lock().expect("all");
                    a.0 += w.deliveries;
                    a.1 += w.acks;
                }
                series.lock().expect("series").push(slice);
                if stopping {
                    break;
                }
            }
        }
    });
    Sampler {
        series,
        stop,
        task,
        peak,
        all,
    }
}

/// How long past `settle_secs` the run waits for a replaced client to
/// leave: a join's own timeout (60 s), the leave's close handshake (5 s) and
/// a stalled send (10 s) fit in it.
const RETIRED_GRACE: Duration = Duration::from_secs(90);

struct Handle {
    join: JoinHandle<Report>,
    slot: usize,
    leave: CancellationToken,
    document: Uuid,
    generation: u32,
    editor: bool,
}

/// Resolves the host and port of a `ws://` URL.
async fn server_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("url must start with ws:// (got {url:?})"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    tokio::net::lookup_host(&host)
        .await
        .with_context(|| format!("resolving {host}"))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("{host} has no IPv4 address"))
}

/// A join closed with 4429 (too many connections or joins for the user):
/// the client retries later, with backoff (PROTOCOL.md, "Per user").
#[derive(Debug, thiserror::Error)]
#[error("closed 4429: {0}")]
struct TooMany(String);

/// What a late joiner sees of `document`; a 4429 is retried with backoff
/// (the user may be shared: `--token`).
async fn late_join(url: &str, document: Uuid, tokens: &Tokens) -> anyhow::Result<Final> {
    let attempts = async {
        let mut backoff = Duration::from_millis(100);
        loop {
            let token = tokens.token(Uuid::new_v4(), false)?;
            match late_join_once(url, document, &token).await {
                Err(e) if e.downcast_ref::<TooMany>().is_some() => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), attempts)
        .await
        .unwrap_or_else(|_| bail!("late joiner of {document}: no `joined` within 30 s"))
}

async fn late_join_once(url: &str, document: Uuid, token: &str) -> anyhow::Result<Final> {
    let url = format!("{}/collab/{document}", url.trim_end_matches('/'));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("late joiner connecting to {url}"))?;
    let join = ClientMessage::Join(Join {
        client_id: relay_domain::ClientId::new(format!("late-{}", Uuid::new_v4().simple()))
            .expect("valid id"),
        token: Some(token.to_owned()),
        since: None,
    });
    ws.send(Message::text(join.encode())).await?;
    let out = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match ServerMessage::decode(&t) {
                Ok(ServerMessage::Joined {
                    content: Some(content),
                    version,
                    ..
                }) => {
                    let doc = relay_domain::Document::from_content(&content, version)?;
                    break Final {
                        version: version.get(),
                        text: doc.text(),
                    };
                }
                Ok(ServerMessage::Error { code, message, .. }) => {
                    bail!("late joiner of {document}: {} ({message})", code.as_str())
                }
                Ok(_) => {}
                Err(e) => bail!(
                    "late joiner of {document}: undecodable frame ({e}): {}",
                    t.chars().take(300).collect::<String>()
                ),
            },
            Some(Ok(Message::Close(Some(c)))) if u16::from(c.code) == 4429 => {
                return Err(TooMany(c.reason.to_string()).into());
            }
            Some(Ok(Message::Close(c))) => bail!("late joiner of {document}: closed ({c:?})"),
            Some(Ok(_)) => {}
            other => bail!("late joiner of {document}: {other:?}"),
        }
    };
    let _ = ws.send(Message::text(ClientMessage::Leave.encode())).await;
    let _ = ws.close(None).await;
    Ok(out)
}

/// What a late joiner on every instance sees of `document`: they must
/// agree (an instance a bus message behind gets a moment to catch up).
async fn final_state(
    servers: &[(SocketAddr, String)],
    document: Uuid,
    tokens: &Tokens,
) -> anyhow::Result<Final> {
    let mut last = Vec::new();
    for _ in 0..20 {
        let mut seen = Vec::new();
        for (_, url) in servers {
            seen.push(late_join(url, document, tokens).await?);
        }
        if seen
            .iter()
            .all(|f| f.version == seen[0].version && f.text == seen[0].text)
        {
            return Ok(seen.swap_remove(0));
        }
        last = seen;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!(
        "the instances disagree after 5 s: versions {:?}",
        last.iter().map(|f| f.version).collect::<Vec<_>>()
    )
}

/// Runs the scenario.
pub async fn run(opts: Options) -> anyhow::Result<RunResult> {
    let s = opts.scenario.clone();
    s.check()?;
    if s.url.is_empty() {
        bail!("url is empty: give --url or --relay");
    }
    let (trace_path, fallback) = trace::locate(s.trace.as_deref())?;
    let trace = Arc::new(trace::load(&trace_path)?);
    let fd = procfs::raise_fd_limit(s.connections as u64 + 256);
    if let Some(p) = &fd.problem {
        eprintln!("relay-load: {p}");
    } else if fd.now > fd.before {
        eprintln!(
            "relay-load: raised the file-descriptor limit from {} to {}",
            fd.before, fd.now
        );
    }
    let mut servers = Vec::new();
    for u in s.urls() {
        servers.push((server_addr(&u).await?, u));
    }
    let mut rng = StdRng::seed_from_u64(s.seed);
    // Document and user ids are new every run, so runs against one server (or
    // one database) never share documents or operation ids; the seed fixes
    // everything else (trace slices, schedule offsets, churn choices).
    let mut documents: Vec<Uuid> = (0..s.documents).map(|_| Uuid::new_v4()).collect();
    let addresses: Vec<Ipv4Addr> = (0..s.addresses())
        .map(|i| Ipv4Addr::new(127, 0, 0, 1 + i as u8))
        .collect();
    let recorder = Recorder::new(8);
    let epoch = recorder.epoch();
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let (finals_tx, finals_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        scenario: s.clone(),
        servers: servers.clone(),
        recorder,
        dues: DueTable::new(s.connections, epoch),
        trace: trace.clone(),
        phase: phase_rx,
        finals: finals_rx,
        joined: Default::default(),
        failed: Default::default(),
        settled: Default::default(),
        sources_used: Default::default(),
        corrupt_slot: opts.corrupt_slot,
    });
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let bar = if opts.progress {
        ProgressBar::new(s.connections as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("template"),
    );
    bar.set_prefix("connect");
    let live_count = {
        let shared = shared.clone();
        Arc::new(move || shared.joined.load(Ordering::Relaxed))
            as Arc<dyn Fn() -> usize + Send + Sync>
    };
    let sampler = start_sampler(
        shared.clone(),
        opts.server_pids.clone(),
        live_count,
        bar.clone(),
    );
    let mut memory = Memory {
        server_rss_kib_before: procfs::rss_kib_sum(&opts.server_pids),
        ..Default::default()
    };
    let fds_before = procfs::fd_count_sum(&opts.server_pids);
    let mut rss_kib_warm = None;

    // Connect.
    let connect_began = Instant::now();
    let per_doc =
        |d: usize| s.connections / s.documents + usize::from(d < s.connections % s.documents);
    let gate = Arc::new(tokio::sync::Semaphore::new(s.connect_concurrency));
    let mut handles: Vec<Option<Handle>> = Vec::with_capacity(s.connections);
    let mut editors = 0;
    let spawn = |shared: &Arc<Shared>,
                 spec: Spec,
                 permit: Option<tokio::sync::OwnedSemaphorePermit>|
     -> Handle {
        let leave = CancellationToken::new();
        let (document, generation, editor, spec_slot) =
            (spec.document, spec.generation, spec.editor, spec.slot);
        let join = tokio::spawn(client::run(shared.clone(), spec, leave.clone(), permit));
        Handle {
            join,
            slot: spec_slot,
            leave,
            document,
            generation,
            editor,
        }
    };
    let half = s.connections / 2;
    for i in 0..s.connections {
        if i == half && half > 0 && !opts.server_pids.is_empty() {
            wait_joined(&shared, i, &bar).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            memory.server_rss_kib_half = procfs::rss_kib_sum(&opts.server_pids);
        }
        if s.connect_rate > 0.0 {
            let at = connect_began + Duration::from_secs_f64(i as f64 / s.connect_rate);
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
        let permit = gate.clone().acquire_owned().await.expect("open semaphore");
        let d = i % s.documents;
        let editor = i / s.documents < s.editors_of(per_doc(d));
        editors += usize::from(editor);
        let user = Uuid::new_v4();
        let spec = Spec {
            slot: i,
            instance: s.instance_of(i, servers.len()),
            generation: 0,
            document: documents[d],
            user,
            token: opts.tokens.token(user, editor)?,
            editor,
            source: addresses[i % addresses.len()],
            trace_start: rng.random_range(0..trace.patches.len()),
            offset: rng.random(),
        };
        handles.push(Some(spawn(&shared, spec, Some(permit))));
        bar.set_position(
            (shared.joined.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)) as u64,
        );
    }
    wait_joined(&shared, s.connections, &bar).await;
    let connect_secs = connect_began.elapsed().as_secs_f64();
    let joined = shared.joined.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    if !opts.server_pids.is_empty() {
        // Let the allocator and the runtime go quiet before reading RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    memory.server_rss_kib_connected = procfs::rss_kib_sum(&opts.server_pids);
    memory.tool_rss_kib_connected = procfs::rss_kib(std::process::id()).unwrap_or(0);
    if let (Some(h), Some(c)) = (memory.server_rss_kib_half, memory.server_rss_kib_connected)
        && joined > half
    {
        memory.server_kb_per_connection_slope =
            Some(c.saturating_sub(h) as f64 * 1.024 / (joined - half) as f64);
    }
    if let (Some(b), Some(c)) = (
        memory.server_rss_kib_before,
        memory.server_rss_kib_connected,
    ) && joined > 0
    {
        memory.server_kb_per_connection_average =
            Some(c.saturating_sub(b) as f64 * 1.024 / joined as f64);
    }

    // Type.
    bar.set_prefix("type");
    bar.set_length((s.duration_secs * 1000.0) as u64);
    bar.set_position(0);
    let start = Instant::now() + Duration::from_millis(500);
    let typing_from = start.saturating_duration_since(epoch).as_secs_f64();
    shared.recorder.measure_between(
        start + Duration::from_secs_f64(s.warmup_secs),
        start + Duration::from_secs_f64(s.duration_secs),
    );
    let measure_from = start + Duration::from_secs_f64(s.warmup_secs);
    let end = start + Duration::from_secs_f64(s.duration_secs);
    let _ = phase_tx.send(Phase::Run { start, until: end });
    let mut beside = match &opts.beside {
        Some(command) => Some(BesideProcess::start(command, &servers, &opts.tokens)?),
        None => None,
    };
    let mut retired: Vec<Handle> = Vec::new();
    let mut churned = 0u64;
    let mut next_churn =
        (s.churn.per_sec > 0.0).then(|| start + Duration::from_secs_f64(1.0 / s.churn.per_sec));
    let mut server_cpu_m0 = None;
    let mut tool_cpu_m0 = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= measure_from && tool_cpu_m0.is_none() {
            rss_kib_warm = procfs::rss_kib_sum(&opts.server_pids);
            server_cpu_m0 = procfs::cpu_secs_sum(&opts.server_pids);
            tool_cpu_m0 = Some(procfs::cpu_secs(std::process::id()).unwrap_or(0.0));
        }
        let mut wake = end.min(now + Duration::from_millis(100));
        if tool_cpu_m0.is_none() {
            wake = wake.min(measure_from);
        }
        if let Some(c) = next_churn {
            wake = wake.min(c);
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        bar.set_position(start.elapsed().as_millis().min(u64::MAX as u128) as u64);
        if let Some(c) = next_churn
            && Instant::now() >= c
        {
            next_churn = Some(c + Duration::from_secs_f64(1.0 / s.churn.per_sec));
            // Replace a random client that is still there.
            let slot = rng.random_range(0..handles.len());
            if let Some(h) = handles[slot].take() {
                if h.join.is_finished() {
                    handles[slot] = Some(h);
                    continue;
                }
                h.leave.cancel();
                churned += 1;
                let document = if rng.random::<f64>() < s.churn.new_document_share {
                    let d = Uuid::new_v4();
                    documents.push(d);
                    d
                } else {
                    h.document
                };
                let user = Uuid::new_v4();
                let spec = Spec {
                    slot,
                    instance: s.instance_of(slot, servers.len()),
                    generation: h.generation + 1,
                    document,
                    user,
                    token: opts.tokens.token(user, h.editor)?,
                    editor: h.editor,
                    source: addresses[slot % addresses.len()],
                    trace_start: rng.random_range(0..trace.patches.len()),
                    offset: rng.random(),
                };
                retired.push(h);
                handles[slot] = Some(spawn(&shared, spec, None));
            }
        }
    }
    let _ = phase_tx.send(Phase::Stop);
    let beside = beside.take().map(BesideProcess::stop);
    let measured_secs = (end - measure_from).as_secs_f64();
    let server_cpu1 = procfs::cpu_secs_sum(&opts.server_pids);
    let tool_cpu1 = procfs::cpu_secs(std::process::id()).unwrap_or(0.0);

    // Settle: nothing in flight anywhere, then the late joiners.
    bar.set_prefix("settle");
    let deadline = Instant::now() + Duration::from_secs_f64(s.settle_secs);
    // Wait for the retired clients first: they are leaving. Each is
    // bounded on its own (join, settle, leave); this bound only keeps a bug
    // in one from hanging the run.
    let mut reports: Vec<Report> = Vec::new();
    let mut problems = Vec::new();
    let retire_by =
        tokio::time::Instant::now() + RETIRED_GRACE + Duration::from_secs_f64(s.settle_secs);
    for mut h in retired {
        match tokio::time::timeout_at(retire_by, &mut h.join).await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => problems.push(format!("replaced client {} failed: {e}", h.slot)),
            Err(_) => {
                h.join.abort();
                problems.push(format!(
                    "replaced client {} (generation {}) had not left {} s after the end",
                    h.slot,
                    h.generation,
                    (RETIRED_GRACE.as_secs_f64() + s.settle_secs).round()
                ));
            }
        }
    }
    // Every client that stays counts itself settled once (a failed join
    // too); the ones that left were awaited above.
    let staying = handles.iter().flatten().count();
    while shared.settled.load(Ordering::Relaxed) < staying && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut finals = HashMap::new();
    let check_docs: Vec<Uuid> = {
        let mut d: Vec<Uuid> = handles.iter().flatten().map(|h| h.document).collect();
        d.sort();
        d.dedup();
        d
    };
    // Each late joiner is a user of its own (one user joining every
    // document at once would be over JOIN_BURST: 4429).
    let tokens = &opts.tokens;
    if s.verify {
        for chunk in check_docs.chunks(16) {
            let got =
                futures::future::join_all(chunk.iter().map(|d| final_state(&servers, *d, tokens)))
                    .await;
            for (d, f) in chunk.iter().zip(got) {
                match f {
                    Ok(f) => {
                        finals.insert(*d, f);
                    }
                    Err(e) => problems.push(format!("document {d}: {e:#}")),
                }
            }
        }
    }
    let final_versions: HashMap<Uuid, u64> = finals.iter().map(|(d, f)| (*d, f.version)).collect();
    let _ = finals_tx.send(Some(Arc::new(finals)));
    for h in handles.into_iter().flatten() {
        match h.join.await {
            Ok(r) => reports.push(r),
            Err(e) => problems.push(format!("client task failed: {e}")),
        }
    }
    sampler.stop.notify_one();
    let _ = sampler.task.await;
    bar.set_prefix("recover");
    let recovery = (s.recover_secs > 0.0 && !opts.server_pids.is_empty()).then_some(());
    let recovery = match recovery {
        Some(()) => Some(
            recover(
                &servers,
                &opts.server_pids,
                s.recover_secs,
                s.recover_rss_check,
                rss_kib_warm,
                fds_before,
            )
            .await,
        ),
        None => None,
    };
    bar.finish_and_clear();

    // Results.
    let totals = shared.recorder.totals();
    let mut connect_failures: Vec<String> = reports
        .iter()
        .filter(|r| !r.joined)
        .filter_map(|r| r.problem.clone())
        .collect();
    connect_failures.sort();
    connect_failures.dedup();
    connect_failures.truncate(10);
    let checked: Vec<&Report> = reports.iter().filter(|r| r.joined && !r.left).collect();
    let converged = checked.iter().filter(|r| r.converged == Some(true)).count();
    for r in &checked {
        if r.converged != Some(true) && problems.len() < 20 {
            problems.push(format!(
                "client {} of document {}: {}",
                r.slot,
                r.document,
                r.problem.clone().unwrap_or_else(|| "not checked".into())
            ));
        }
    }
    // Every acked op reaches every other client of its document: the
    // audience is fixed without churn.
    let expected_deliveries = (s.churn.per_sec == 0.0 && failed == 0).then(|| {
        let mut clients_of: HashMap<Uuid, u64> = HashMap::new();
        for r in &reports {
            *clients_of.entry(r.document).or_default() += 1;
        }
        final_versions
            .iter()
            .map(|(d, v)| v * clients_of.get(d).copied().unwrap_or(1).saturating_sub(1))
            .sum()
    });
    let (all_deliveries, all_acks) = *sampler.all.lock().expect("all");
    if s.verify
        && let Some(e) = expected_deliveries
        && e != all_deliveries
    {
        problems.push(format!(
            "{all_deliveries} deliveries arrived where {e} were expected (every committed op to every other client of its document)"
        ));
    }
    if s.no_errors && !totals.errors.is_empty() {
        problems.push(format!(
            "honest clients received errors: {:?}",
            totals.errors
        ));
    }
    if let Some(b) = &beside
        && let Some(code) = b.failed_with
    {
        problems.push(format!(
            "the command beside the load failed (exit {code}) after {:.0} s",
            b.ran_secs
        ));
    }
    if let Some(r) = &recovery {
        problems.extend(r.problems.iter().cloned());
    }
    let check = Check {
        documents: check_docs.len(),
        clients: checked.len(),
        converged,
        ok: !s.verify || (converged == checked.len() && problems.is_empty()),
        problems,
        expected_deliveries,
    };
    let cpu = |a: Option<f64>, b: Option<f64>| -> Option<Cpu> {
        let (a, b) = (a?, b?);
        Some(Cpu {
            seconds: b - a,
            percent_of_one_core: (b - a) / measured_secs.max(1e-9) * 100.0,
            ms_per_1000_deliveries: (totals.deliveries > 0)
                .then(|| (b - a) * 1000.0 / (totals.deliveries as f64 / 1000.0)),
        })
    };
    let all = {
        let series = sampler.series.lock().expect("series");
        series.clone()
    };
    memory.server_rss_kib_peak = *sampler.peak.lock().expect("peak");
    let viewers = s.connections - editors;
    Ok(RunResult {
        scenario: s.clone(),
        trace: trace.name.clone(),
        trace_fallback: fallback,
        started_unix,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        connect: ConnectPhase {
            requested: s.connections,
            instances: servers.len(),
            joined,
            failed,
            seconds: connect_secs,
            source_addresses: addresses.iter().map(|a| a.to_string()).collect(),
            sources_used: shared.sources_used.lock().expect("sources").clone(),
            fd_limit: Some(fd),
            failures: connect_failures,
        },
        memory,
        typing: Typing {
            measured_seconds: measured_secs,
            editors,
            viewers,
            edits: totals.edits,
            submits: totals.submits,
            acks: totals.acks,
            edits_per_sec: totals.edits as f64 / measured_secs.max(1e-9),
            acks_per_sec: totals.acks as f64 / measured_secs.max(1e-9),
            deliveries: totals.deliveries,
            deliveries_per_sec: totals.deliveries as f64 / measured_secs.max(1e-9),
            unmatched_deliveries: totals.unmatched,
            cursors_sent: totals.cursors_sent,
            typing_sent: totals.typing_sent,
            presence_received: totals.presence_received,
            ack: Percentiles::of(&totals.ack),
            delivery: Percentiles::of(&totals.delivery),
            delivery_same_instance: (servers.len() > 1).then(|| {
                let mut same = totals.delivery.clone();
                same.subtract(&totals.delivery_other_instance)
                    .expect("the other instance's deliveries are among all of them");
                Percentiles::of(&same)
            }),
            delivery_other_instance: (servers.len() > 1)
                .then(|| Percentiles::of(&totals.delivery_other_instance)),
            ack_by_instance: if servers.len() > 1 {
                (0..servers.len())
                    .map(|i| {
                        totals
                            .ack_by_instance
                            .get(&i)
                            .map(Percentiles::of)
                            .unwrap_or_default()
                    })
                    .collect()
            } else {
                Vec::new()
            },
            unavailable_by_instance: if servers.len() > 1 {
                (0..servers.len())
                    .map(|i| totals.unavailable_by_instance.get(&i).copied().unwrap_or(0))
                    .collect()
            } else {
                Vec::new()
            },
            errors: totals.errors.clone(),
            closes: totals.closes.clone(),
            all_deliveries,
            all_acks,
            churned,
        },
        server_cpu: cpu(server_cpu_m0, server_cpu1),
        tool_cpu: cpu(tool_cpu_m0, Some(tool_cpu1)).unwrap_or_default(),
        check,
        recovery,
        beside,
        typing_from,
        measured_from: typing_from + s.warmup_secs,
        typing_until: typing_from + s.duration_secs,
        series: all,
    })
}

/// The command beside the load, running.
struct BesideProcess {
    command: String,
    child: std::process::Child,
    began: Instant,
    _key_file: Option<tempfile::TempPath>,
}

impl BesideProcess {
    fn start(
        command: &str,
        servers: &[(SocketAddr, String)],
        tokens: &Tokens,
    ) -> anyhow::Result<BesideProcess> {
        let urls: Vec<&str> = servers.iter().map(|(_, u)| u.as_str()).collect();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(command).env("RELAY_URLS", urls.join(","));
        let key_file = match tokens {
            Tokens::Keys(k) => {
                let mut f = tempfile::NamedTempFile::new()?;
                std::io::Write::write_all(&mut f, k.to_pem().as_bytes())?;
                let path = f.into_temp_path();
                cmd.env("RELAY_KEY_FILE", &*path);
                Some(path)
            }
            Tokens::Fixed(_) => None,
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting beside the load: {command}"))?;
        Ok(BesideProcess {
            command: command.to_owned(),
            child,
            began: Instant::now(),
            _key_file: key_file,
        })
    }

    /// SIGTERM (to the shell and its children), then SIGKILL after 10 s.
    fn stop(mut self) -> Beside {
        let ran_secs = self.began.elapsed().as_secs_f64();
        let failed_with = match self.child.try_wait() {
            Ok(Some(status)) if !status.success() => Some(status.code().unwrap_or(-1)),
            _ => None,
        };
        let _ = std::process::Command::new("pkill")
            .args(["-TERM", "-P", &self.child.id().to_string()])
            .status();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Beside {
            command: self.command,
            failed_with,
            ran_secs,
        }
    }
}

/// `/health`'s connection and document counts of the server at `addr`.
async fn health_counts(addr: SocketAddr) -> Option<(u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        let body = text.split_once("\r\n\r\n")?.1;
        let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
        Some((
            v["active_connections"].as_u64()?,
            v["active_documents"].as_u64()?,
        ))
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// Waits for every server to drain, then compares its memory and
/// descriptors with the warm-up's and the start's.
async fn recover(
    servers: &[(SocketAddr, String)],
    pids: &[u32],
    within_secs: f64,
    rss_check: bool,
    rss_kib_warm: Option<u64>,
    fds_before: Option<u64>,
) -> Recovery {
    let began = Instant::now();
    let deadline = began + Duration::from_secs_f64(within_secs);
    let mut drained = false;
    while Instant::now() < deadline {
        let mut all = true;
        for (addr, _) in servers {
            all &= health_counts(*addr).await == Some((0, 0));
        }
        if all {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let waited_secs = began.elapsed().as_secs_f64();
    // The allocator returns freed pages on its own schedule (jemalloc's
    // decay, 10 s): give it that long before reading RSS (a server that
    // did not drain has failed already).
    if drained {
        tokio::time::sleep(Duration::from_secs(12)).await;
    }
    let rss_kib_after = procfs::rss_kib_sum(pids);
    let fds_after = procfs::fd_count_sum(pids);
    let rss_ratio = match (rss_kib_after, rss_kib_warm) {
        (Some(a), Some(w)) if w > 0 => Some(a as f64 / w as f64),
        _ => None,
    };
    let mut problems = Vec::new();
    if !drained {
        problems.push(format!(
            "the servers still had connections or open documents {within_secs} s after the run"
        ));
    }
    match rss_ratio {
        Some(r) if rss_check && r > 1.10 => problems.push(format!(
            "RSS after the documents closed is {r:.3} x its level after the warm-up (at most 1.10)"
        )),
        Some(_) => {}
        None => problems.push("RSS could not be read".into()),
    }
    let allowance = crate::scenario::FD_POOL_ALLOWANCE * pids.len() as u64;
    match (fds_before, fds_after) {
        (Some(b), Some(a)) if a > b + allowance => problems.push(format!(
            "{a} file descriptors open after the run, {b} before (allowance {allowance} for pooled connections)"
        )),
        (Some(_), Some(_)) => {}
        _ => problems.push("file descriptors could not be counted".into()),
    }
    Recovery {
        waited_secs,
        drained,
        rss_kib_warm,
        rss_kib_after,
        rss_ratio,
        fds_before,
        fds_after,
        ok: problems.is_empty(),
        problems,
    }
}

async fn wait_joined(shared: &Shared, n: usize, bar: &ProgressBar) {
    loop {
        let done = shared.joined.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        bar.set_position(done as u64);
        if done >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
