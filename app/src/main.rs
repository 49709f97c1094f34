//! `relay`: the collaboration server. Wiring only; see the library crate.

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay_adapters::jwt::{DevKeys, TokenRequest};
use relay_adapters::ws;
use relay_app::config::Config;
use relay_app::{telemetry, wiring};
use relay_ports::CollaborationService;
use relay_ports::protocol::Role;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};
use uuid::Uuid;

// jemalloc: the write path allocates and frees many small buffers across
// threads; with glibc's malloc, malloc and free were about a third of the
// server's CPU time in `relay-commit-bench` (see the README's Performance
// section for the figures with each).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "relay", version, about = "Real-time collaboration server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default). Configuration comes from the environment.
    Serve(ServeArgs),
    /// Mint a development token, signed with the development key of a
    /// `relay` running without JWT_PUBLIC_KEY_URL.
    Token(TokenArgs),
    /// Apply pending database migrations (DATABASE_URL) and exit.
    Migrate,
    /// Check a running server's /health (for container health checks).
    Healthcheck {
        /// Base URL of the server.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        url: String,
    },
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// Where the development signing key is kept (created if missing).
    #[arg(long, env = "RELAY_DEV_KEY_FILE")]
    dev_key_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The user id (a UUID); a random one if omitted.
    #[arg(long)]
    sub: Option<Uuid>,
    /// A document UUID, or `*` for every document.
    #[arg(long, default_value = "*")]
    doc: String,
    /// owner, editor or viewer.
    #[arg(long, default_value = "editor")]
    role: Role,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// The development key file of the running server.
    #[arg(long, env = "RELAY_DEV_KEY_FILE")]
    key_file: Option<PathBuf>,
}

fn default_key_file() -> PathBuf {
    std::env::temp_dir().join("relay-dev-key.pem")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Token(args) => {
            let path = args.key_file.clone().unwrap_or_else(default_key_file);
            let keys = load_key(&path)?.with_context(|| {
                format!(
                    "no development key at {}: start `relay` first (it creates one)",
                    path.display()
                )
            })?;
            println!("{}", mint(&keys, &args)?);
            Ok(())
        }
        Command::Healthcheck { url } => healthcheck(&url),
        Command::Migrate => migrate(),
    }
}

fn mint(keys: &DevKeys, args: &TokenArgs) -> anyhow::Result<String> {
    if args.doc != "*" {
        Uuid::parse_str(&args.doc).context("--doc must be a UUID or *")?;
    }
    let mut docs = BTreeMap::new();
    docs.insert(args.doc.clone(), args.role);
    keys.mint(&TokenRequest {
        sub: args.sub.unwrap_or_else(Uuid::new_v4),
        name: args.name.clone(),
        docs,
        ttl_secs: args.ttl_secs,
    })
    .context("minting the token")
}

fn load_key(path: &Path) -> anyhow::Result<Option<DevKeys>> {
    match std::fs::read_to_string(path) {
        Ok(pem) => Ok(Some(DevKeys::from_pem(&pem).with_context(|| {
            format!("{} is not a development key", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn dev_key(path: &Path) -> anyhow::Result<DevKeys> {
    if let Some(keys) = load_key(path)? {
        return Ok(keys);
    }
    let keys = DevKeys::generate();
    write_private(path, &keys.to_pem()).with_context(|| format!("writing {}", path.display()))?;
    Ok(keys)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// Logging for the subcommands (LOG_FORMAT=json honoured even when the
/// rest of the configuration is not read).
fn init_logging() {
    telemetry::init_logging(std::env::var("LOG_FORMAT").is_ok_and(|v| v.trim() == "json"));
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            init_logging();
            return Err(anyhow::Error::new(e).context("invalid configuration"));
        }
    };
    let telemetry = telemetry::init(&config)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("relay-worker");
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = runtime.build().context("starting the runtime")?;
    let served = runtime.block_on(run(config, args, telemetry.metrics.clone()));
    // Off the runtime: the exporters block while they push what is left.
    telemetry.shutdown();
    if let Err(e) = &served {
        tracing::error!(error = format!("{e:#}"), "relay stopped");
    }
    served
}

async fn run(
    config: Config,
    args: ServeArgs,
    metrics: Arc<relay_adapters::otel::OtelMetrics>,
) -> anyhow::Result<()> {
    let dev = if config.is_development() {
        // `relay` with no subcommand gets default arguments: read the
        // variable here too.
        let path = args
            .dev_key_file
            .or_else(|| std::env::var_os("RELAY_DEV_KEY_FILE").map(PathBuf::from))
            .unwrap_or_else(default_key_file);
        Some((dev_key(&path)?, path))
    } else {
        None
    };
    let ws_config = config.ws();
    let bind = config.bind_address;
    let metrics_addr = std::net::SocketAddr::new(bind.ip(), config.metrics_port);
    let wired = wiring::build_with(config, dev.as_ref().map(|d| &d.0), metrics.clone()).await?;
    let relay = wired.relay.clone();
    let service: Arc<dyn CollaborationService> = Arc::new(wired.relay.clone());
    let routes = ws::routes(
        service,
        wired.metrics.clone(),
        ws_config,
        wired.jwks.clone(),
    );
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let (metrics_addr, metrics_server) =
        telemetry::serve_metrics(metrics.clone(), metrics_addr, async move {
            let _ = metrics_stopped.await;
        })
        .await?;
    info!(addr = %metrics_addr, "metrics at http://{metrics_addr}/metrics");
    let (listener, addr) = ws::bind(bind)
        .await
        .with_context(|| format!("BIND_ADDRESS: cannot bind {bind}"))?;
    info!(%addr, "relay listening");
    if let Some((keys, path)) = &dev {
        announce_development(keys, path, addr)?;
    } else if relay.config().database_url.is_none() {
        warn!(
            "no DATABASE_URL: operations are kept in memory and nothing persists across restarts"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ws::serve(listener, routes, async move {
        let _ = stop_rx.await;
    }));
    shutdown_signal().await;
    relay.shutdown().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    // Serve the last scrape's figures until the very end.
    let _ = metrics_stop.send(());
    let _ = metrics_server.await;
    drop(wired);
    Ok(())
}

fn announce_development(
    keys: &DevKeys,
    path: &Path,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let token = mint(
        keys,
        &TokenArgs {
            sub: None,
            doc: "*".into(),
            role: Role::Editor,
            name: Some("Developer".into()),
            ttl_secs: 24 * 3600,
            key_file: None,
        },
    )?;
    warn!("DEVELOPMENT MODE: in-memory store, bus and presence - nothing persists across restarts");
    eprintln!(
        "\nRelay is running in development mode on {addr}.\n\
         Nothing is persisted: set DATABASE_URL, REDIS_URL and JWT_PUBLIC_KEY_URL for production.\n\
         Development key: {} (JWKS at http://{addr}/.well-known/jwks.json)\n\n\
         An editor token for every document (valid 24 h):\n\n{token}\n\n\
         More tokens: relay token --sub <uuid> --doc <uuid|*> --role <owner|editor|viewer>\n\
         Connect:     ws://{addr}/collab/<document-uuid>  (subprotocol relay.v1), then send\n\
         {{\"type\":\"join\",\"client_id\":\"tab-1\",\"token\":\"<token>\",\"since\":null}}\n",
        path.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    info!("shutdown signal received");
}

fn migrate() -> anyhow::Result<()> {
    init_logging();
    let config = Config::from_env().context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pool =
            wiring::pg_pool(&config)?.context("DATABASE_URL: required by `relay migrate`")?;
        let applied = pool.run_migrations().await.context("running migrations")?;
        if applied.is_empty() {
            println!("the schema is up to date");
        } else {
            for name in applied {
                println!("applied {name}");
            }
        }
        Ok(())
    })
}

fn healthcheck(url: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let mut stream =
        std::net::TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        anyhow::bail!(
            "unhealthy: {}",
            response.lines().next().unwrap_or("no answer")
        )
    }
}
