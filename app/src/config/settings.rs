//! Every variable Relay reads, parsed once by clap (`env = ...`): the
//! deployment document's three tables plus Relay's own. `relay --help` and
//! `relay serve --help` list each with its default; a value that does not
//! parse is refused naming the variable and the expected form.

use super::ConfigError;
use clap::builder::TypedValueParser;
use clap::{Args, CommandFactory, ValueEnum};
use std::net::SocketAddr;

/// LOG_FORMAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where permissions come from (PERMISSION_SOURCE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PermissionSourceKind {
    // The token's `docs` claim.
    Claims,
    // The database's `document_permissions` and document owners.
    Database,
}

/// A whole number greater than 0, of any unsigned integer type.
fn positive<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr<Err = std::num::ParseIntError>
        + Default
        + PartialEq
        + std::ops::Not<Output = T>
        + std::fmt::Display,
{
    match s.trim().parse::<T>() {
        Ok(n) if n == T::default() => Err("must be greater than 0".into()),
        Ok(n) => Ok(n),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(format!(
            "expected a whole number up to {}: {e}",
            !T::default()
        )),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// Comma-separated CIDRs (`10.0.0.0/8, 192.168.1.7/32`); a bare address
/// is one host.
/// A list of CIDRs as one value (an alias: clap's derive would take a
/// `Vec` field for several values of one CIDR each, and panic at start on
/// this parser's list).
pub type Cidrs = Vec<ipnet::IpNet>;

fn cidrs(s: &str) -> Result<Cidrs, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("expected comma-separated CIDRs (10.0.0.0/8), got {c:?}"))
        })
        .collect()
}

fn url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.contains("://") {
        Ok(s.to_owned())
    } else {
        Err("expected a URL (scheme://...)".into())
    }
}

/// Relay's settings, from the environment (or the same-named flags).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Configuration (environment variables)")]
pub struct Settings {
    /// WebSocket, /health and /ready.
    #[arg(
        long,
        env = "BIND_ADDRESS",
        value_name = "BIND_ADDRESS",
        default_value = "0.0.0.0:8081"
    )]
    pub bind_address: SocketAddr,
    /// GET /metrics (Prometheus), same address; 0 picks a free port.
    #[arg(
        long,
        env = "METRICS_PORT",
        value_name = "METRICS_PORT",
        default_value_t = 9090
    )]
    pub metrics_port: u16,
    /// Named document_id series of materi_websocket_connections_active, 1 to 1900.
    #[arg(long, env = "METRICS_DOCUMENT_SERIES", value_name = "METRICS_DOCUMENT_SERIES", default_value = "500", value_parser = positive::<usize>)]
    pub metrics_document_series: usize,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(
        long,
        env = "RUST_LOG",
        value_name = "RUST_LOG",
        default_value = "info"
    )]
    pub rust_log: String,
    /// Backtraces on panics: 0 off, 1 (or short) on, full (read by the Rust
    /// runtime itself).
    #[arg(
        long,
        env = "RUST_BACKTRACE",
        value_name = "RUST_BACKTRACE",
        default_value = "0"
    )]
    pub rust_backtrace: String,
    /// text, or json for one JSON object per line.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// PostgreSQL operation store; unset keeps operations in memory.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", value_parser = url, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis: fan-out across instances and presence (needs DATABASE_URL);
    /// redis://:password@host:6379, or rediss:// for TLS.
    #[arg(long, env = "REDIS_URL", value_name = "REDIS_URL", value_parser = url, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM file of the CA that a rediss:// server's certificate must chain
    /// to (instead of the system's CA certificates).
    #[arg(long, env = "REDIS_CA_FILE", value_name = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// JWKS of the identity service; unset means development mode.
    #[arg(long, env = "JWT_PUBLIC_KEY_URL", value_name = "JWT_PUBLIC_KEY_URL")]
    pub jwt_public_key_url: Option<String>,
    /// Required `iss` of tokens.
    #[arg(long, env = "JWT_ISSUER", value_name = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of tokens.
    #[arg(long, env = "JWT_AUDIENCE", value_name = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on exp/nbf, seconds.
    #[arg(
        long,
        env = "JWT_LEEWAY_SECS",
        value_name = "JWT_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub jwt_leeway_secs: u64,
    /// JWKS refresh period, seconds.
    #[arg(long, env = "JWKS_REFRESH_SECS", value_name = "JWKS_REFRESH_SECS", default_value = "300", value_parser = positive::<u64>)]
    pub jwks_refresh_secs: u64,
    /// Least time between two JWKS fetches caused by unknown kids, seconds.
    #[arg(
        long,
        env = "JWKS_COOLDOWN_SECS",
        value_name = "JWKS_COOLDOWN_SECS",
        default_value_t = 30
    )]
    pub jwks_cooldown_secs: u64,
    /// Comma-separated Origins allowed to connect; unset allows any.
    #[arg(long, env = "ALLOWED_ORIGINS", value_name = "ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Connections per instance; more get 503 with Retry-After.
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "MAX_CONNECTIONS", default_value = "10000", value_parser = positive::<usize>)]
    pub max_connections: usize,
    /// Seconds a request head may take to arrive; also how long an idle HTTP connection is kept.
    #[arg(long, env = "HEADER_TIMEOUT_SECS", value_name = "HEADER_TIMEOUT_SECS", default_value = "10", value_parser = positive::<u64>)]
    pub header_timeout_secs: u64,
    /// Connections from one address that have not joined yet; more are closed at once.
    #[arg(long, env = "MAX_PENDING_PER_IP", value_name = "MAX_PENDING_PER_IP", default_value = "64", value_parser = positive::<usize>)]
    pub max_pending_per_ip: usize,
    /// Comma-separated CIDRs of proxies exempt from MAX_PENDING_PER_IP.
    #[arg(long, env = "TRUSTED_PROXIES", value_name = "TRUSTED_PROXIES", value_parser = cidrs)]
    pub trusted_proxies: Option<Cidrs>,
    /// Joined connections per user on this instance; more are closed with 4429.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", value_name = "MAX_CONNECTIONS_PER_USER", default_value = "100", value_parser = positive::<usize>)]
    pub max_connections_per_user: usize,
    /// Joins per second per user on this instance; faster ones are closed with 4429.
    #[arg(long, env = "JOIN_RATE_PER_SEC", value_name = "JOIN_RATE_PER_SEC", default_value = "10", value_parser = positive::<u32>)]
    pub join_rate_per_sec: u32,
    /// Join burst per user on this instance.
    #[arg(long, env = "JOIN_BURST", value_name = "JOIN_BURST", default_value = "50", value_parser = positive::<u32>)]
    pub join_burst: u32,
    /// Largest client frame (at least 1024); larger closes with 1009.
    #[arg(long, env = "MAX_MESSAGE_BYTES", value_name = "MAX_MESSAGE_BYTES", default_value = "1048576", value_parser = positive::<usize>)]
    pub max_message_bytes: usize,
    /// Seconds to send `join`; then 4408.
    #[arg(long, env = "AUTH_TIMEOUT_SECS", value_name = "AUTH_TIMEOUT_SECS", default_value = "10", value_parser = positive::<u64>)]
    pub auth_timeout_secs: u64,
    /// Seconds between server pings.
    #[arg(long, env = "HEARTBEAT_INTERVAL_SECS", value_name = "HEARTBEAT_INTERVAL_SECS", default_value = "30", value_parser = positive::<u64>)]
    pub heartbeat_interval_secs: u64,
    /// Seconds of silence before closing (greater than the interval).
    #[arg(long, env = "HEARTBEAT_TIMEOUT_SECS", value_name = "HEARTBEAT_TIMEOUT_SECS", default_value = "60", value_parser = positive::<u64>)]
    pub heartbeat_timeout_secs: u64,
    /// Lifetime of a presence entry in the registry; default 2 x HEARTBEAT_TIMEOUT_SECS.
    #[arg(long, env = "PRESENCE_TTL_SECS", value_name = "PRESENCE_TTL_SECS", value_parser = positive::<u64>)]
    pub presence_ttl_secs: Option<u64>,
    /// At most one cursor per client per this many ms.
    #[arg(
        long,
        env = "CURSOR_THROTTLE_MS",
        value_name = "CURSOR_THROTTLE_MS",
        default_value_t = 50
    )]
    pub cursor_throttle_ms: u64,
    /// Typing ends after this quiet period, ms.
    #[arg(long, env = "TYPING_DEBOUNCE_MS", value_name = "TYPING_DEBOUNCE_MS", default_value = "500", value_parser = positive::<u64>)]
    pub typing_debounce_ms: u64,
    /// Most ops per `ops` frame and per group commit.
    #[arg(long, env = "OPERATION_BATCH_SIZE", value_name = "OPERATION_BATCH_SIZE", default_value = "100", value_parser = positive::<usize>)]
    pub operation_batch_size: usize,
    /// Seconds ops stay in memory for rebasing and catch-up.
    #[arg(long, env = "OPERATION_HISTORY_TTL", value_name = "OPERATION_HISTORY_TTL", default_value = "600", value_parser = positive::<u64>)]
    pub operation_history_ttl: u64,
    /// Most ops kept in memory per document.
    #[arg(long, env = "OPERATION_HISTORY_MAX", value_name = "OPERATION_HISTORY_MAX", default_value = "10000", value_parser = positive::<usize>)]
    pub operation_history_max: usize,
    /// Most bytes of ops kept in memory per document.
    #[arg(long, env = "OPERATION_HISTORY_BYTES", value_name = "OPERATION_HISTORY_BYTES", default_value = "8388608", value_parser = positive::<usize>)]
    pub operation_history_bytes: usize,
    /// claims or database; default database when DATABASE_URL is set.
    #[arg(
        long,
        env = "PERMISSION_SOURCE",
        value_name = "PERMISSION_SOURCE",
        value_enum
    )]
    pub permission_source: Option<PermissionSourceKind>,
    /// Seconds a role is cached for joins; every open session's role is re-checked at least this often (0: no cache, re-checked every second).
    #[arg(
        long,
        env = "PERMISSION_CACHE_TTL",
        value_name = "PERMISSION_CACHE_TTL",
        default_value_t = 300
    )]
    pub permission_cache_ttl: u64,
    /// Redis command connections (at most 8 are opened: each multiplexes).
    #[arg(long, env = "REDIS_POOL_SIZE", value_name = "REDIS_POOL_SIZE", default_value = "50", value_parser = positive::<usize>)]
    pub redis_pool_size: usize,
    /// PostgreSQL pool size.
    #[arg(long, env = "DB_POOL_SIZE", value_name = "DB_POOL_SIZE", default_value = "20", value_parser = positive::<usize>)]
    pub db_pool_size: usize,
    /// Seconds a pooled connection lives.
    #[arg(long, env = "DB_MAX_LIFETIME_SECS", value_name = "DB_MAX_LIFETIME_SECS", default_value = "1800", value_parser = positive::<u64>)]
    pub db_max_lifetime_secs: u64,
    /// Seconds an idle pooled connection is kept.
    #[arg(long, env = "DB_IDLE_TIMEOUT_SECS", value_name = "DB_IDLE_TIMEOUT_SECS", default_value = "600", value_parser = positive::<u64>)]
    pub db_idle_timeout_secs: u64,
    /// PostgreSQL statement_timeout, ms.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", value_name = "DB_STATEMENT_TIMEOUT_MS", default_value = "5000", value_parser = positive::<u64>)]
    pub db_statement_timeout_ms: u64,
    /// Ops between snapshots.
    #[arg(long, env = "SNAPSHOT_EVERY", value_name = "SNAPSHOT_EVERY", default_value = "500", value_parser = positive::<u64>)]
    pub snapshot_every: u64,
    /// For tests only (true/false): every room stops for good right after its first commit, before it acknowledges or publishes it, so a test can kill the instance between a commit and its publish.
    #[arg(long, env = "RELAY_TEST_PAUSE_AFTER_COMMIT", value_name = "RELAY_TEST_PAUSE_AFTER_COMMIT", default_value = "false", action = clap::ArgAction::Set)]
    pub relay_test_pause_after_commit: bool,
    /// Apply pending migrations at start (true/false).
    #[arg(long, env = "RUN_MIGRATIONS", value_name = "RUN_MIGRATIONS", default_value = "false", action = clap::ArgAction::Set)]
    pub run_migrations: bool,
    /// Largest document, characters.
    #[arg(long, env = "MAX_DOCUMENT_CHARS", value_name = "MAX_DOCUMENT_CHARS", default_value = "10000000", value_parser = positive::<usize>)]
    pub max_document_chars: usize,
    /// Largest document content as JSON; default 9 x MAX_DOCUMENT_CHARS + 64 MiB.
    #[arg(long, env = "MAX_DOCUMENT_BYTES", value_name = "MAX_DOCUMENT_BYTES", value_parser = positive::<usize>)]
    pub max_document_bytes: Option<usize>,
    /// Frames queued per client before it is closed with 1013.
    #[arg(long, env = "OUTBOUND_QUEUE", value_name = "OUTBOUND_QUEUE", default_value = "256", value_parser = positive::<usize>)]
    pub outbound_queue: usize,
    /// Bytes of frames queued for one client alone (a shared `joined` content is not counted); more closes it with 1013.
    #[arg(long, env = "OUTBOUND_QUEUE_BYTES", value_name = "OUTBOUND_QUEUE_BYTES", default_value = "8388608", value_parser = positive::<usize>)]
    pub outbound_queue_bytes: usize,
    /// Seconds an open document with no client stays open.
    #[arg(
        long,
        env = "ROOM_IDLE_SECS",
        value_name = "ROOM_IDLE_SECS",
        default_value_t = 30
    )]
    pub room_idle_secs: u64,
    /// While the bus is down, each open document reads the store this often, ms.
    #[arg(long, env = "BUS_DOWN_POLL_MS", value_name = "BUS_DOWN_POLL_MS", default_value = "1000", value_parser = positive::<u64>)]
    pub bus_down_poll_ms: u64,
    /// Every open document's head is read from the store this often, ms, in one batched query per instance: the bound on how stale a client can be whatever the bus does.
    #[arg(long, env = "HEAD_CHECK_MS", value_name = "HEAD_CHECK_MS", default_value = "1000", value_parser = positive::<u64>)]
    pub head_check_ms: u64,
    /// Seconds draining waits for clients before closing with 1001.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE_SECS",
        value_name = "SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,
    /// Submits per second per connection.
    #[arg(long, env = "SUBMIT_RATE_PER_SEC", value_name = "SUBMIT_RATE_PER_SEC", default_value = "200", value_parser = positive::<u32>)]
    pub submit_rate_per_sec: u32,
    /// Submit burst per connection.
    #[arg(long, env = "SUBMIT_BURST", value_name = "SUBMIT_BURST", default_value = "400", value_parser = positive::<u32>)]
    pub submit_burst: u32,
    /// Cursor and typing messages per second per connection.
    #[arg(long, env = "PRESENCE_RATE_PER_SEC", value_name = "PRESENCE_RATE_PER_SEC", default_value = "100", value_parser = positive::<u32>)]
    pub presence_rate_per_sec: u32,
    /// Cursor and typing burst per connection.
    #[arg(long, env = "PRESENCE_BURST", value_name = "PRESENCE_BURST", default_value = "200", value_parser = positive::<u32>)]
    pub presence_burst: u32,
    /// Runtime worker threads; default the CPU cores.
    #[arg(long, env = "TOKIO_WORKER_THREADS", value_name = "TOKIO_WORKER_THREADS", value_parser = positive::<usize>)]
    pub tokio_worker_threads: Option<usize>,
}

/// The variables that hold secrets (a URL's password), for `relay config`.
pub const SECRET_URLS: [&str; 2] = ["DATABASE_URL", "REDIS_URL"];

/// `scheme://user:password@host` with the password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

impl Settings {
    /// Each variable read through `get` (a set, non-blank value, else the
    /// default) and parsed by the value parser its flag has, with no
    /// command line in between.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        use clap::builder::{BoolValueParser, EnumValueParser, StringValueParser};
        use clap::value_parser;
        let vars = Vars::new(get);
        let text = StringValueParser::new;
        Ok(Settings {
            bind_address: vars.value("BIND_ADDRESS", |s: &str| s.parse::<SocketAddr>())?,
            metrics_port: vars.value("METRICS_PORT", value_parser!(u16))?,
            metrics_document_series: vars.value("METRICS_DOCUMENT_SERIES", positive::<usize>)?,
            rust_log: vars.value("RUST_LOG", text())?,
            rust_backtrace: vars.value("RUST_BACKTRACE", text())?,
            log_format: vars.value("LOG_FORMAT", EnumValueParser::<LogFormat>::new())?,
            database_url: vars.optional("DATABASE_URL", url)?,
            redis_url: vars.optional("REDIS_URL", url)?,
            redis_ca_file: vars
                .optional("REDIS_CA_FILE", clap::builder::PathBufValueParser::new())?,
            jwt_public_key_url: vars.optional("JWT_PUBLIC_KEY_URL", text())?,
            jwt_issuer: vars.optional("JWT_ISSUER", text())?,
            jwt_audience: vars.optional("JWT_AUDIENCE", text())?,
            jwt_leeway_secs: vars.value("JWT_LEEWAY_SECS", value_parser!(u64))?,
            jwks_refresh_secs: vars.value("JWKS_REFRESH_SECS", positive::<u64>)?,
            jwks_cooldown_secs: vars.value("JWKS_COOLDOWN_SECS", value_parser!(u64))?,
            allowed_origins: vars.optional("ALLOWED_ORIGINS", text())?,
            max_connections: vars.value("MAX_CONNECTIONS", positive::<usize>)?,
            header_timeout_secs: vars.value("HEADER_TIMEOUT_SECS", positive::<u64>)?,
            max_pending_per_ip: vars.value("MAX_PENDING_PER_IP", positive::<usize>)?,
            trusted_proxies: vars.optional("TRUSTED_PROXIES", cidrs)?,
            max_connections_per_user: vars.value("MAX_CONNECTIONS_PER_USER", positive::<usize>)?,
            join_rate_per_sec: vars.value("JOIN_RATE_PER_SEC", positive::<u32>)?,
            join_burst: vars.value("JOIN_BURST", positive::<u32>)?,
            max_message_bytes: vars.value("MAX_MESSAGE_BYTES", positive::<usize>)?,
            auth_timeout_secs: vars.value("AUTH_TIMEOUT_SECS", positive::<u64>)?,
            heartbeat_interval_secs: vars.value("HEARTBEAT_INTERVAL_SECS", positive::<u64>)?,
            heartbeat_timeout_secs: vars.value("HEARTBEAT_TIMEOUT_SECS", positive::<u64>)?,
            presence_ttl_secs: vars.optional("PRESENCE_TTL_SECS", positive::<u64>)?,
            cursor_throttle_ms: vars.value("CURSOR_THROTTLE_MS", value_parser!(u64))?,
            typing_debounce_ms: vars.value("TYPING_DEBOUNCE_MS", positive::<u64>)?,
            operation_batch_size: vars.value("OPERATION_BATCH_SIZE", positive::<usize>)?,
            operation_history_ttl: vars.value("OPERATION_HISTORY_TTL", positive::<u64>)?,
            operation_history_max: vars.value("OPERATION_HISTORY_MAX", positive::<usize>)?,
            operation_history_bytes: vars.value("OPERATION_HISTORY_BYTES", positive::<usize>)?,
            permission_source: vars.optional(
                "PERMISSION_SOURCE",
                EnumValueParser::<PermissionSourceKind>::new(),
            )?,
            permission_cache_ttl: vars.value("PERMISSION_CACHE_TTL", value_parser!(u64))?,
            redis_pool_size: vars.value("REDIS_POOL_SIZE", positive::<usize>)?,
            db_pool_size: vars.value("DB_POOL_SIZE", positive::<usize>)?,
            db_max_lifetime_secs: vars.value("DB_MAX_LIFETIME_SECS", positive::<u64>)?,
            db_idle_timeout_secs: vars.value("DB_IDLE_TIMEOUT_SECS", positive::<u64>)?,
            db_statement_timeout_ms: vars.value("DB_STATEMENT_TIMEOUT_MS", positive::<u64>)?,
            snapshot_every: vars.value("SNAPSHOT_EVERY", positive::<u64>)?,
            run_migrations: vars.value("RUN_MIGRATIONS", BoolValueParser::new())?,
            relay_test_pause_after_commit: vars
                .value("RELAY_TEST_PAUSE_AFTER_COMMIT", BoolValueParser::new())?,
            max_document_chars: vars.value("MAX_DOCUMENT_CHARS", positive::<usize>)?,
            max_document_bytes: vars.optional("MAX_DOCUMENT_BYTES", positive::<usize>)?,
            outbound_queue: vars.value("OUTBOUND_QUEUE", positive::<usize>)?,
            outbound_queue_bytes: vars.value("OUTBOUND_QUEUE_BYTES", positive::<usize>)?,
            room_idle_secs: vars.value("ROOM_IDLE_SECS", value_parser!(u64))?,
            bus_down_poll_ms: vars.value("BUS_DOWN_POLL_MS", positive::<u64>)?,
            head_check_ms: vars.value("HEAD_CHECK_MS", positive::<u64>)?,
            shutdown_grace_secs: vars.value("SHUTDOWN_GRACE_SECS", value_parser!(u64))?,
            submit_rate_per_sec: vars.value("SUBMIT_RATE_PER_SEC", positive::<u32>)?,
            submit_burst: vars.value("SUBMIT_BURST", positive::<u32>)?,
            presence_rate_per_sec: vars.value("PRESENCE_RATE_PER_SEC", positive::<u32>)?,
            presence_burst: vars.value("PRESENCE_BURST", positive::<u32>)?,
            tokio_worker_threads: vars.optional("TOKIO_WORKER_THREADS", positive::<usize>)?,
        })
    }
}

/// The variables of [`Settings`] read through a lookup: each parsed with
/// clap's value parser against its own `Arg` (its default, and what a
/// refusal names).
struct Vars<G> {
    command: clap::Command,
    get: G,
}

impl<G: Fn(&str) -> Option<String>> Vars<G> {
    fn new(get: G) -> Self {
        let mut command = super::SettingsOnly::command();
        command.build();
        Vars { command, get }
    }

    /// The variable, or its default; `None` when neither is there.
    fn optional<P: TypedValueParser>(
        &self,
        variable: &str,
        parser: P,
    ) -> Result<Option<P::Value>, ConfigError> {
        let arg = self
            .command
            .get_arguments()
            .find(|a| a.get_env() == Some(std::ffi::OsStr::new(variable)))
            .unwrap_or_else(|| panic!("{variable} is a variable of Settings"));
        let raw = (self.get)(variable)
            .filter(|v| !v.trim().is_empty())
            .map(std::ffi::OsString::from)
            .or_else(|| {
                arg.get_default_values().first().map(|d| {
                    let d: &std::ffi::OsStr = d;
                    d.to_owned()
                })
            });
        raw.map(|raw| parser.parse_ref(&self.command, Some(arg), &raw))
            .transpose()
            .map_err(|e| ConfigError::from_clap(variable, &e))
    }

    /// A variable that has a default.
    fn value<P: TypedValueParser>(
        &self,
        variable: &str,
        parser: P,
    ) -> Result<P::Value, ConfigError> {
        Ok(self
            .optional(variable, parser)?
            .unwrap_or_else(|| panic!("{variable} has a default")))
    }
}
