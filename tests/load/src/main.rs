//! `relay-load`: see the library's documentation and docs/performance.md.

use anyhow::{Context, bail};
use clap::Parser;
use relay_adapter_jwt::DevKeys;
use relay_adapter_jwt::testing::JwksServer;
use relay_load::server::{self, Server};
use relay_load::{Options, Scenario, Tokens, plot, summary::summary};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Opens N WebSocket connections over M documents on a running Relay (or
/// one it starts), replays real editing traces, and reports latency
/// percentiles, throughput, memory and CPU, with a convergence check.
///
/// Values come from the command line, then the --scenario file, then the
/// defaults.
#[derive(Debug, Parser)]
#[command(name = "relay-load", version)]
struct Args {
    /// A scenario file (TOML; or JSON, such as a previous result file).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// The server's WebSocket base URL (ws://host:port).
    #[arg(long, conflicts_with = "relay")]
    url: Option<String>,
    /// Start this `relay` binary and load it (development key, ports of
    /// its own; in-memory adapters unless --relay-env says otherwise).
    #[arg(long)]
    relay: Option<PathBuf>,
    /// KEY=VALUE for the started relay (DATABASE_URL=..., REDIS_URL=...,
    /// RUN_MIGRATIONS=true); repeatable.
    #[arg(long = "relay-env", value_name = "KEY=VALUE", requires = "relay")]
    relay_env: Vec<String>,
    /// With --relay: how many instances to start (on the same --relay-env:
    /// give DATABASE_URL and REDIS_URL for more than one). Clients are
    /// spread over them round robin.
    #[arg(long, default_value_t = 1, requires = "relay")]
    instances: usize,
    /// With several instances: how many of each document's clients each
    /// instance takes in turn, comma separated (1,50: one client on the
    /// first instance for every fifty on the second).
    #[arg(long, value_delimiter = ',')]
    instance_weights: Option<Vec<usize>>,
    /// The server's process id on this machine, to read its RSS and CPU;
    /// repeat it for several instances (summed).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// The server's development key (PEM) to mint one token per client;
    /// default $TMPDIR/relay-dev-key.pem, where `relay` keeps it.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// One token for every client instead (an editor of every document):
    /// one user, so the server's MAX_CONNECTIONS_PER_USER and JOIN_BURST
    /// must allow the run's connections and joins.
    #[arg(
        long,
        conflicts_with = "key_file",
        env = "RELAY_LOAD_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, short = 'n')]
    connections: Option<usize>,
    #[arg(long, short = 'm')]
    documents: Option<usize>,
    /// Share of each document's clients that only watch (0 to 1).
    #[arg(long)]
    viewers: Option<f64>,
    /// Connections opened per second (0: as fast as accepted).
    #[arg(long)]
    connect_rate: Option<f64>,
    #[arg(long)]
    connect_concurrency: Option<usize>,
    /// Loopback source addresses 127.0.0.1.. (0: enough for N).
    #[arg(long)]
    source_addresses: Option<usize>,
    /// Edits per second per editor (0: idle connections).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of typing, warm-up included.
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long)]
    warmup: Option<f64>,
    /// A trace name in the shared traces beside the checkout
    /// (automerge-paper, seph-blog1, ...)
    /// or a path.
    #[arg(long)]
    trace: Option<String>,
    /// Connections closed and replaced per second.
    #[arg(long)]
    churn: Option<f64>,
    /// Share of churn replacements that open a new document.
    #[arg(long)]
    churn_new_documents: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    no_verify: bool,
    #[arg(long)]
    no_cursors: bool,
    #[arg(long)]
    no_typing: bool,
    #[arg(long)]
    settle: Option<f64>,
    #[arg(long)]
    sample: Option<f64>,
    /// After the run: wait up to this many seconds for the servers to close
    /// every document, then check their memory and descriptors recovered
    /// (a soak; 0: no check).
    #[arg(long)]
    recover: Option<f64>,
    /// With --recover: measure and report RSS after the run, without
    /// holding it to 1.10 x its warm-up level.
    #[arg(long)]
    no_rss_check: bool,
    /// Fail the run on any `error` an honest client receives.
    #[arg(long)]
    no_errors: bool,
    /// A shell command run beside the load while it types (with RELAY_URLS
    /// and RELAY_KEY_FILE), stopped when typing ends; its failure fails the
    /// run.
    #[arg(long)]
    beside: Option<String>,
    /// Where result.json, the plots and the started relay's log go.
    #[arg(long, default_value = "target/relay-load")]
    out: PathBuf,
    #[arg(long)]
    no_plots: bool,
    /// Never draw the progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
}

fn scenario(a: &Args) -> anyhow::Result<Scenario> {
    let mut s = match &a.scenario {
        Some(p) => Scenario::from_file(p)?,
        None => Scenario::default(),
    };
    macro_rules! set {
        ($($field:ident = $arg:expr),* $(,)?) => { $( if let Some(v) = $arg.clone() { s.$field = v; } )* };
    }
    set!(
        name = a.name,
        connections = a.connections,
        documents = a.documents,
        viewers = a.viewers,
        connect_rate = a.connect_rate,
        connect_concurrency = a.connect_concurrency,
        source_addresses = a.source_addresses,
        rate = a.rate,
        recover_secs = a.recover,
        duration_secs = a.duration,
        warmup_secs = a.warmup,
        settle_secs = a.settle,
        sample_secs = a.sample,
        seed = a.seed,
    );
    if let Some(u) = &a.url {
        s.url = u.clone();
    }
    if a.trace.is_some() {
        s.trace = a.trace.clone();
    }
    if let Some(c) = a.churn {
        s.churn.per_sec = c;
    }
    if let Some(c) = a.churn_new_documents {
        s.churn.new_document_share = c;
    }
    if a.no_verify {
        s.verify = false;
    }
    if a.no_errors {
        s.no_errors = true;
    }
    if a.no_rss_check {
        s.recover_rss_check = false;
    }
    if a.no_cursors {
        s.cursors = false;
    }
    if a.no_typing {
        s.typing = false;
    }
    if let Some(w) = &a.instance_weights {
        s.instance_weights = w.clone();
    }
    if s.warmup_secs > s.duration_secs {
        s.warmup_secs = 0.0;
    }
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut s = scenario(&a)?;
    s.check()?;
    // Raised before the server starts, so a started relay inherits it.
    let fd = relay_load::procfs::raise_fd_limit(s.connections as u64 + 256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("relay-load")
        .build()?;
    // The development key's JWKS for the relays it starts, when they need
    // one; served until they are stopped.
    let mut jwks: Option<JwksServer> = None;
    let mut servers: Vec<Server> = Vec::new();
    let tokens = if let Some(bin) = &a.relay {
        let mut env = Vec::new();
        for kv in &a.relay_env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--relay-env {kv:?} is not KEY=VALUE"))?;
            env.push((k.to_owned(), v.to_owned()));
        }
        if a.instances == 0 || a.instances > 16 {
            bail!("--instances must be 1 to 16");
        }
        let keys = DevKeys::generate();
        if server::needs_jwks(&env) {
            jwks = Some(runtime.block_on(JwksServer::start(keys.jwks_json()))?);
        }
        let jwks_url = jwks.as_ref().map(JwksServer::url);
        let mut started = Vec::new();
        for i in 0..a.instances {
            started.push(Server::start(
                bin,
                &env,
                s.connections,
                &a.out,
                &keys,
                jwks_url.as_deref(),
                i,
            )?);
        }
        s.url = started
            .iter()
            .map(|x| x.url.clone())
            .collect::<Vec<_>>()
            .join(",");
        servers = started;
        Tokens::Keys(Arc::new(keys))
    } else if let Some(t) = &a.token {
        Tokens::Fixed(t.clone())
    } else {
        let path = a
            .key_file
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("relay-dev-key.pem"));
        let pem = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the development key {} (give --key-file, --token, or --relay)",
                path.display()
            )
        })?;
        Tokens::Keys(Arc::new(DevKeys::from_pem(&pem)?))
    };
    if s.url.is_empty() {
        bail!("give --url ws://host:port (or url in the scenario), or --relay to start one");
    }
    let mut server_pids = a.server_pid.clone();
    server_pids.extend(servers.iter().map(|s| s.pid));
    if let Some(p) = &fd.problem {
        eprintln!("relay-load: {p}");
    }
    let result = runtime.block_on(relay_load::run(Options {
        scenario: s,
        tokens,
        server_pids,
        progress: !a.no_progress && std::io::stderr().is_terminal(),
        corrupt_slot: None,
        beside: a.beside.clone(),
    }))?;
    drop(servers);
    drop(jwks);
    std::fs::create_dir_all(&a.out)?;
    let json = a.out.join("result.json");
    std::fs::write(&json, serde_json::to_string_pretty(&result)?)?;
    let (text, pass) = summary(&result);
    print!("{text}");
    println!("result   {}", json.display());
    if !a.no_plots {
        match plot::write(&result, &a.out) {
            Ok(files) => println!(
                "plots    {}",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Err(e) => println!("plots    not drawn: {e:#}"),
        }
    }
    if !pass {
        eprintln!("relay-load: FAILED (see the check and connect lines above)");
        std::process::exit(1);
    }
    Ok(())
}
