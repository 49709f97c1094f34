//! `relay` / `relay serve`: the server, and the shutdown sequence.

use super::ServeArgs;
use super::devkey::{default_key_file, dev_key};
use anyhow::Context;
use relay_adapter_ws as ws;
use relay_app::config::Config;
use relay_app::{telemetry, wiring};
use relay_ports::Chain;
use relay_ports::CollaborationService;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = match args.settings.clone().into_config() {
        Ok(c) => c,
        Err(e) => {
            super::init_logging();
            return Err(anyhow::Error::new(e).context("invalid configuration"));
        }
    };
    let telemetry = telemetry::init(&config)?;
    raise_fd_limit(config.limits.max_connections);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("relay-worker");
    if let Some(n) = config.listen.worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = runtime.build().context("starting the runtime")?;
    let served = runtime.block_on(serve(config, args, telemetry.metrics.clone()));
    // Off the runtime: the exporters block while they push what is left.
    telemetry.shutdown();
    if let Err(e) = &served {
        tracing::error!(error = format!("{e:#}"), "relay stopped");
    }
    served
}

/// Descriptors beyond MAX_CONNECTIONS: the listeners, the database pool,
/// Redis, the JWKS client, the log.
const SPARE_FDS: u64 = 256;

/// Every connection is a socket: raises the soft `RLIMIT_NOFILE` to
/// MAX_CONNECTIONS + 256 when the hard limit allows (many systems start
/// services at 1,024), and says so when it does not.
fn raise_fd_limit(max_connections: usize) {
    let needed = (max_connections as u64).saturating_add(SPARE_FDS);
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %Chain(&e), "cannot read the file-descriptor limit");
            return;
        }
    };
    let target = needed.min(hard);
    if target > soft
        && let Err(e) = rlimit::Resource::NOFILE.set(target, hard)
    {
        warn!(error = %Chain(&e), "cannot raise the file-descriptor limit");
    }
    let now = rlimit::Resource::NOFILE.get().map_or(soft, |l| l.0);
    if now < needed {
        warn!(
            limit = now,
            hard,
            max_connections,
            "the file-descriptor limit is below MAX_CONNECTIONS + 256: connections past it fail to be accepted; raise the hard limit (LimitNOFILE=, ulimit -Hn, the container runtime's nofile)"
        );
    } else if now > soft {
        info!(from = soft, to = now, "raised the file-descriptor limit");
    }
}

async fn serve(
    config: Config,
    args: ServeArgs,
    metrics: Arc<relay_adapter_otel::OtelMetrics>,
) -> anyhow::Result<()> {
    let dev = if config.is_development() {
        let path = args.dev_key_file.unwrap_or_else(default_key_file);
        Some((dev_key(&path)?, path))
    } else {
        None
    };
    let ws_config = config.limits.ws();
    let header_timeout = ws_config.header_timeout;
    let connections = ws_config.connections.clone();
    let bind = config.listen.bind_address;
    let metrics_addr = std::net::SocketAddr::new(bind.ip(), config.listen.metrics_port);
    let wired = wiring::build_with(config, dev.as_ref().map(|d| &d.0), metrics.clone()).await?;
    let relay = wired.relay.clone();
    let service: Arc<dyn CollaborationService> = Arc::new(wired.relay.clone());
    let routes = ws::routes(
        service,
        wired.metrics.clone(),
        ws_config,
        wired.jwks.clone(),
    );
    // The servers run on a tracker, each stopped by its own token: the
    // public port first, the metrics port last (the final scrape sees the
    // drain).
    let servers = TaskTracker::new();
    let stop_public = CancellationToken::new();
    let stop_metrics = CancellationToken::new();
    let (metrics_addr, metrics_server) = {
        let stop = stop_metrics.clone();
        telemetry::serve_metrics(metrics.clone(), metrics_addr, header_timeout, async move {
            stop.cancelled().await;
        })
        .await?
    };
    servers.spawn(metrics_server);
    info!(addr = %metrics_addr, "metrics at http://{metrics_addr}/metrics");
    let (listener, addr) = ws::bind(bind)
        .await
        .with_context(|| format!("BIND_ADDRESS: cannot bind {bind}"))?;
    info!(%addr, "relay listening");
    if let Some((keys, path)) = &dev {
        super::devkey::announce_development(keys, path, addr)?;
    } else if relay.config().store.database_url.is_none() {
        warn!(
            "no DATABASE_URL: operations are kept in memory and nothing persists across restarts"
        );
    }
    let public = servers.spawn(ws::serve(
        listener,
        routes,
        stop_public.clone().cancelled_owned(),
    ));
    servers.close();
    super::shutdown::shutdown_signal().await;
    // The sequence (infra/README.md, "Graceful shutdown"): not ready and no new
    // upgrades at once, `shutdown` to every client, the grace period, 1001
    // for the rest, the rooms' last commits and snapshots.
    relay.shutdown().await;
    stop_public.cancel();
    let _ = public.await;
    // What is left are connections that never joined (the service closed
    // every session): cut, and their tasks awaited (bounded).
    let left = connections.len();
    if !connections.stop(Duration::from_secs(2)).await {
        warn!(connections = left, "connection tasks still ending at exit");
    }
    stop_metrics.cancel();
    servers.wait().await;
    // The wiring's background tasks (the JWKS refresher), awaited.
    wired.background.stop().await;
    drop(wired);
    info!("stopped");
    Ok(())
}
