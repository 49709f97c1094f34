//! Configuration from the environment: every variable of the deployment
//! document, with its default, validated at start with a message naming the
//! variable.
//!
//! - `settings.rs`: the variables as clap defines them (`relay --help`,
//!   `relay config --markdown`), and their reading through a lookup.
//! - `validate.rs`: every rule between variables.
//! - here: [`Config`], grouped by consumer, each adapter's settings built.

mod settings;
mod validate;

pub use settings::{LogFormat, PermissionSourceKind, SECRET_URLS, Settings, redact_url};
pub use validate::{ServingRefusal, serving as check_serving};

use relay_adapter_jwt::{JwksConfig, JwtConfig};
use relay_adapter_postgres::PoolSettings;
use relay_adapter_redis::RedisSettings;
use std::net::SocketAddr;
use std::time::Duration;

/// Most bytes one `presence` entry takes as JSON: a user id, a client id
/// and a display name of at most 256 characters (each up to 6 bytes
/// escaped), positions and a version.
pub const PRESENCE_ENTRY_BYTES: usize = 2048;

/// Longest display name shown to other clients, in characters (longer
/// `name` claims are cut).
pub const MAX_NAME_CHARS: usize = 256;

/// Relay's configuration, grouped by the part of Relay that reads it. Each
/// adapter's settings type is built here (a field when its variables are
/// its own, a method when it combines variables another group reads too),
/// so the wiring only connects.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Listen,
    pub store: Store,
    pub bus: Bus,
    pub auth: Auth,
    pub limits: Limits,
    pub presence: Presence,
    pub shutdown: Shutdown,
}

/// Where the process listens, what it logs, its threads.
#[derive(Clone, Debug, PartialEq)]
pub struct Listen {
    /// BIND_ADDRESS: WebSocket, /health and /ready.
    pub bind_address: SocketAddr,
    /// METRICS_PORT: GET /metrics on the same address.
    pub metrics_port: u16,
    /// METRICS_DOCUMENT_SERIES: at most this many `document_id` series of
    /// `materi_websocket_connections_active` (the largest documents), the
    /// rest summed under `document_id="other"`. 1 to 1,900.
    pub metrics_document_series: usize,
    /// LOG_FORMAT=json: one JSON object per log line.
    pub log_json: bool,
    /// RUST_LOG: the log filter.
    pub rust_log: String,
    /// TOKIO_WORKER_THREADS; the CPU cores when unset.
    pub worker_threads: Option<usize>,
}

/// The operation store (PostgreSQL when DATABASE_URL is set).
#[derive(Clone, Debug)]
pub struct Store {
    pub database_url: Option<String>,
    /// DB_POOL_SIZE, DB_MAX_LIFETIME_SECS, DB_IDLE_TIMEOUT_SECS,
    /// DB_STATEMENT_TIMEOUT_MS.
    pub pool: PoolSettings,
    /// RUN_MIGRATIONS.
    pub run_migrations: bool,
    /// SNAPSHOT_EVERY: ops between snapshots.
    pub snapshot_every: u64,
    /// RELAY_TEST_PAUSE_AFTER_COMMIT (tests only): a room stops for good
    /// after its first commit, before acknowledging or publishing it.
    pub pause_after_commit: bool,
}

/// The fan-out bus between instances (Redis when REDIS_URL is set).
#[derive(Clone, Debug)]
pub struct Bus {
    pub redis_url: Option<String>,
    /// REDIS_POOL_SIZE (at most 8 connections), REDIS_CA_FILE.
    pub redis: RedisSettings,
    /// BUS_DOWN_POLL_MS: how often an open document reads the store's head
    /// while the bus is down (other instances' ops arrive this way
    /// meanwhile).
    pub down_poll: Duration,
    /// HEAD_CHECK_MS: how often this instance reads the heads of all its
    /// open documents (one batched query) to find rooms the bus left
    /// behind.
    pub head_check: Duration,
}

/// Tokens and permissions.
#[derive(Clone, Debug, PartialEq)]
pub struct Auth {
    /// JWT_PUBLIC_KEY_URL: the identity service's JWKS; unset means
    /// development mode.
    pub jwt_public_key_url: Option<String>,
    /// JWT_ISSUER, JWT_AUDIENCE, JWT_LEEWAY_SECS.
    pub jwt: JwtConfig,
    pub jwks_refresh_secs: u64,
    pub jwks_cooldown_secs: u64,
    pub permission_source: PermissionSourceKind,
    pub permission_cache_ttl: Duration,
}

/// What one connection, one message and one document may take: the
/// sequencer's and the WebSocket transport's inputs, and the submit rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    /// HEADER_TIMEOUT_SECS: a request head must arrive within it; an idle
    /// HTTP connection is closed after it.
    pub header_timeout: Duration,
    /// MAX_PENDING_PER_IP: connections from one address not yet joined.
    pub max_pending_per_ip: usize,
    /// TRUSTED_PROXIES: peers exempt from MAX_PENDING_PER_IP.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// MAX_CONNECTIONS_PER_USER: joined connections per user here.
    pub max_connections_per_user: usize,
    /// JOIN_RATE_PER_SEC, JOIN_BURST: joins per user here.
    pub join_rate_per_sec: u32,
    pub join_burst: u32,
    pub max_message_bytes: usize,
    pub auth_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub allowed_origins: Option<Vec<String>>,
    pub operation_batch_size: usize,
    pub operation_history_ttl: Duration,
    pub operation_history_max: usize,
    pub operation_history_bytes: usize,
    pub max_document_chars: usize,
    pub max_document_bytes: usize,
    pub outbound_queue: usize,
    /// OUTBOUND_QUEUE_BYTES: bytes of frames queued for one client alone.
    pub outbound_queue_bytes: usize,
    pub room_idle: Duration,
    pub submit_rate_per_sec: u32,
    pub submit_burst: u32,
}

/// Cursors, typing and the presence registry.
#[derive(Clone, Debug, PartialEq)]
pub struct Presence {
    /// How long a presence entry lives without a refresh (instances
    /// refresh theirs every third of it): a crashed instance's users are
    /// gone from the others within it. Default 2 x heartbeat_timeout
    /// ([`Config::presence_ttl`]).
    pub ttl: Option<Duration>,
    pub cursor_throttle_ms: u64,
    pub typing_debounce_ms: u64,
    pub rate_per_sec: u32,
    pub burst: u32,
}

/// Draining.
#[derive(Clone, Debug, PartialEq)]
pub struct Shutdown {
    /// SHUTDOWN_GRACE_SECS: how long draining waits for clients.
    pub grace: Duration,
}

/// A configuration error, naming the variable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (tests pass a map), as the
    /// environment is read: a blank variable is unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Settings::from_lookup(get)?.into_config()
    }

    /// Whether Relay runs on in-memory adapters with a development key.
    pub fn is_development(&self) -> bool {
        self.store.database_url.is_none()
            && self.bus.redis_url.is_none()
            && self.auth.jwt_public_key_url.is_none()
    }

    /// How long a presence entry lives without a refresh: PRESENCE_TTL_SECS,
    /// or twice HEARTBEAT_TIMEOUT_SECS.
    pub fn presence_ttl(&self) -> Duration {
        self.presence
            .ttl
            .unwrap_or(self.limits.heartbeat_timeout * 2)
    }

    /// The limits announced in `joined`.
    pub fn joined_limits(&self) -> relay_ports::protocol::Limits {
        relay_ports::protocol::Limits {
            max_message_bytes: self.limits.max_message_bytes,
            operation_batch_size: self.limits.operation_batch_size,
            cursor_throttle_ms: self.presence.cursor_throttle_ms,
            typing_debounce_ms: self.presence.typing_debounce_ms,
            heartbeat_interval_secs: self.limits.heartbeat_interval.as_secs(),
        }
    }
}

impl Config {
    /// The groups from parsed (and validated) settings.
    fn from_settings(s: Settings) -> Config {
        // By default any text of MAX_DOCUMENT_CHARS characters fits, with
        // room for formatting.
        let max_document_bytes = s.max_document_bytes.unwrap_or_else(|| {
            relay_domain::json_size::max_document_bytes_for(s.max_document_chars)
        });
        // PERMISSION_SOURCE defaults to the database when there is one.
        let permission_source = match s.permission_source {
            Some(kind) => kind,
            None if s.database_url.is_some() => PermissionSourceKind::Database,
            None => PermissionSourceKind::Claims,
        };
        Config {
            listen: Listen {
                bind_address: s.bind_address,
                metrics_port: s.metrics_port,
                metrics_document_series: s.metrics_document_series,
                log_json: s.log_format == LogFormat::Json,
                rust_log: s.rust_log,
                worker_threads: s.tokio_worker_threads,
            },
            store: Store {
                database_url: s.database_url,
                pool: PoolSettings {
                    size: s.db_pool_size,
                    max_lifetime: Duration::from_secs(s.db_max_lifetime_secs),
                    idle_timeout: Duration::from_secs(s.db_idle_timeout_secs),
                    statement_timeout: Duration::from_millis(s.db_statement_timeout_ms),
                    ..PoolSettings::default()
                },
                run_migrations: s.run_migrations,
                snapshot_every: s.snapshot_every,
                pause_after_commit: s.relay_test_pause_after_commit,
            },
            bus: Bus {
                redis_url: s.redis_url,
                redis: RedisSettings {
                    connections: s.redis_pool_size.min(8),
                    tls_ca_file: s.redis_ca_file,
                    ..RedisSettings::default()
                },
                down_poll: Duration::from_millis(s.bus_down_poll_ms),
                head_check: Duration::from_millis(s.head_check_ms),
            },
            auth: Auth {
                jwt_public_key_url: s.jwt_public_key_url,
                jwt: JwtConfig {
                    issuer: s.jwt_issuer,
                    audience: s.jwt_audience,
                    leeway_secs: s.jwt_leeway_secs,
                    ..JwtConfig::default()
                },
                jwks_refresh_secs: s.jwks_refresh_secs,
                jwks_cooldown_secs: s.jwks_cooldown_secs,
                permission_source,
                permission_cache_ttl: Duration::from_secs(s.permission_cache_ttl),
            },
            limits: Limits {
                max_connections: s.max_connections,
                header_timeout: Duration::from_secs(s.header_timeout_secs),
                max_pending_per_ip: s.max_pending_per_ip,
                trusted_proxies: s.trusted_proxies.unwrap_or_default(),
                max_connections_per_user: s.max_connections_per_user,
                join_rate_per_sec: s.join_rate_per_sec,
                join_burst: s.join_burst,
                max_message_bytes: s.max_message_bytes,
                auth_timeout: Duration::from_secs(s.auth_timeout_secs),
                heartbeat_interval: Duration::from_secs(s.heartbeat_interval_secs),
                heartbeat_timeout: Duration::from_secs(s.heartbeat_timeout_secs),
                allowed_origins: s.allowed_origins.map(|v| {
                    v.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                }),
                operation_batch_size: s.operation_batch_size,
                operation_history_ttl: Duration::from_secs(s.operation_history_ttl),
                operation_history_max: s.operation_history_max,
                operation_history_bytes: s.operation_history_bytes,
                max_document_chars: s.max_document_chars,
                max_document_bytes,
                outbound_queue: s.outbound_queue,
                outbound_queue_bytes: s.outbound_queue_bytes,
                room_idle: Duration::from_secs(s.room_idle_secs),
                submit_rate_per_sec: s.submit_rate_per_sec,
                submit_burst: s.submit_burst,
            },
            presence: Presence {
                ttl: s.presence_ttl_secs.map(Duration::from_secs),
                cursor_throttle_ms: s.cursor_throttle_ms,
                typing_debounce_ms: s.typing_debounce_ms,
                rate_per_sec: s.presence_rate_per_sec,
                burst: s.presence_burst,
            },
            shutdown: Shutdown {
                grace: Duration::from_secs(s.shutdown_grace_secs),
            },
        }
    }
}

impl Settings {
    /// The validated configuration (an error names the variable).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        validate::settings(&self)?;
        Ok(Config::from_settings(self))
    }
}

impl Auth {
    /// The JWKS verifier's settings, when keys come from
    /// JWT_PUBLIC_KEY_URL.
    pub fn jwks(&self) -> Option<JwksConfig> {
        let url = self.jwt_public_key_url.clone()?;
        Some(JwksConfig {
            url,
            issuer: self.jwt.issuer.clone(),
            refresh: Duration::from_secs(self.jwks_refresh_secs),
            cooldown: Duration::from_secs(self.jwks_cooldown_secs),
            ..JwksConfig::new("")
        })
    }

    /// The verifier's settings for development tokens: they carry no `iss`
    /// or `aud`, so JWT_ISSUER / JWT_AUDIENCE apply to a real identity
    /// provider's keys only.
    pub fn development_jwt(&self) -> JwtConfig {
        JwtConfig {
            leeway_secs: self.jwt.leeway_secs,
            ..JwtConfig::default()
        }
    }
}

impl Limits {
    /// The sequencer's limits.
    pub fn sequencer(&self) -> relay_domain::SequencerConfig {
        relay_domain::SequencerConfig {
            max_history: self.operation_history_max,
            max_history_age_ms: u64::try_from(self.operation_history_ttl.as_millis())
                .unwrap_or(u64::MAX),
            max_history_bytes: self.operation_history_bytes,
            max_document_chars: self.max_document_chars,
            max_delta_components: 10_000,
            max_clients: 10_000,
            max_document_bytes: self.max_document_bytes,
            max_op_bytes: self.max_op_bytes(),
        }
    }

    /// Largest committed op as JSON: four times the largest message (a
    /// rebased op can outgrow the one submitted).
    pub fn max_op_bytes(&self) -> usize {
        self.max_message_bytes.saturating_mul(4)
    }

    /// The largest frame Relay may send: `joined` with a document of
    /// MAX_DOCUMENT_BYTES (or the ops a rejoin needs, never larger) and the
    /// presence of MAX_CONNECTIONS clients (display names are cut to 256
    /// characters), or one op of [`Limits::max_op_bytes`]; plus the
    /// envelope. Client authors size their receive buffers by it.
    pub fn max_outbound_frame_bytes(&self) -> usize {
        let presence = self.max_connections.saturating_mul(PRESENCE_ENTRY_BYTES);
        self.max_document_bytes
            .max(self.max_op_bytes())
            .saturating_add(presence)
            .saturating_add(64 << 10)
    }

    /// The WebSocket transport's settings.
    pub fn ws(&self) -> relay_adapter_ws::WsConfig {
        relay_adapter_ws::WsConfig {
            max_message_bytes: self.max_message_bytes,
            auth_timeout: self.auth_timeout,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            allowed_origins: self.allowed_origins.clone(),
            header_timeout: self.header_timeout,
            max_pending_per_ip: self.max_pending_per_ip,
            trusted_proxies: self.trusted_proxies.clone(),
            ..relay_adapter_ws::WsConfig::default()
        }
    }
}

impl Default for Config {
    /// The defaults, as with an empty environment.
    fn default() -> Self {
        Config::from_lookup(|_| None).expect("defaults are valid")
    }
}

/// `relay config`: every variable as `NAME=value`, with where the value
/// comes from (`env` or `default`, or `unset`), the passwords of
/// DATABASE_URL and REDIS_URL shown as `***`.
pub fn describe(get: impl Fn(&str) -> Option<String>) -> String {
    use clap::CommandFactory;
    let command = SettingsOnly::command();
    let mut out = String::new();
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let set = get(env).filter(|v| !v.trim().is_empty());
        let default = arg
            .get_default_values()
            .first()
            .and_then(|d| d.to_str())
            .map(str::to_owned);
        let (value, source) = match (set, default) {
            (Some(v), _) => (Some(v), "env"),
            (None, Some(d)) => (Some(d), "default"),
            (None, None) => (None, "unset"),
        };
        let value = value.map(|v| {
            if SECRET_URLS.contains(&env) {
                redact_url(&v)
            } else {
                v
            }
        });
        match value {
            Some(v) => out.push_str(&format!("{env}={v}  # {source}\n")),
            None => out.push_str(&format!("# {env} unset\n")),
        }
    }
    out
}

/// [`Settings`] alone: its variables' definitions outside the binary's
/// command line.
#[derive(clap::Parser, Debug)]
#[command(name = "relay", disable_help_flag = true, disable_version_flag = true)]
struct SettingsOnly {
    #[command(flatten)]
    settings: Settings,
}

impl ConfigError {
    /// A value `variable` had that its parser refused, from clap's error
    /// context: the value, why, and what is expected.
    fn from_clap(variable: &str, e: &clap::Error) -> ConfigError {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        let value = match e.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(v)) => format!("invalid value '{v}'"),
            _ => "invalid value".to_owned(),
        };
        let problem = match (e.kind(), e.get(ContextKind::ValidValue)) {
            (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
                format!("{value}: expected one of {}", valid.join(", "))
            }
            _ => match std::error::Error::source(e) {
                Some(why) => format!("{value}: {why}"),
                None => format!("{value}: {}", e.kind()),
            },
        };
        ConfigError {
            variable: variable.to_owned(),
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_deployment_documents() {
        let c = Config::default();
        assert_eq!(c.listen.bind_address, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.listen.metrics_port, 9090);
        assert_eq!(c.listen.metrics_document_series, 500);
        assert!(!c.listen.log_json);
        assert_eq!(c.limits.max_connections, 10_000);
        // REDIS_POOL_SIZE is 50, of which Redis opens at most 8.
        assert!(describe(|_| None).contains("REDIS_POOL_SIZE=50  # default"));
        assert_eq!(c.bus.redis.connections, 8);
        assert_eq!(c.auth.permission_cache_ttl, Duration::from_secs(300));
        assert_eq!(c.limits.operation_history_ttl, Duration::from_secs(600));
        assert_eq!(c.presence.cursor_throttle_ms, 50);
        assert_eq!(c.presence.typing_debounce_ms, 500);
        assert_eq!(c.limits.operation_batch_size, 100);
        assert_eq!(c.limits.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.limits.heartbeat_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_message_bytes, 1 << 20);
        assert_eq!(c.limits.auth_timeout, Duration::from_secs(10));
        assert_eq!(c.auth.permission_source, PermissionSourceKind::Claims);
        assert!(c.is_development());
    }

    #[test]
    fn an_empty_variable_is_unset_and_clap_errors_name_the_variable() {
        assert_eq!(
            with(&[("MAX_CONNECTIONS", "  ")])
                .unwrap()
                .limits
                .max_connections,
            10_000
        );
        let e = with(&[("MAX_CONNECTIONS", "0")]).unwrap_err();
        assert_eq!(e.variable, "MAX_CONNECTIONS");
        assert!(e.problem.contains("greater than 0"), "{}", e.problem);
        let e = with(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert!(e.problem.contains("xml"), "{}", e.problem);
        assert!(e.problem.contains("text, json"), "{}", e.problem);
        assert!(
            with(&[("RUN_MIGRATIONS", "true")])
                .unwrap()
                .store
                .run_migrations
        );
        assert_eq!(
            with(&[("DATABASE_URL", "nowhere")]).unwrap_err().variable,
            "DATABASE_URL"
        );
    }

    #[test]
    fn relay_config_lists_every_variable_and_redacts_passwords() {
        let map: HashMap<&str, &str> = [
            ("DATABASE_URL", "postgres://relay:s3cret@db:5432/relay"),
            ("REDIS_URL", "redis://:hunter2@redis:6379/0"),
            ("MAX_CONNECTIONS", "42"),
        ]
        .into_iter()
        .collect();
        let text = describe(|k| map.get(k).map(|v| v.to_string()));
        assert!(
            !text.contains("s3cret") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(
            text.contains("DATABASE_URL=postgres://relay:***@db:5432/relay  # env"),
            "{text}"
        );
        assert!(
            text.contains("REDIS_URL=redis://:***@redis:6379/0  # env"),
            "{text}"
        );
        assert!(text.contains("MAX_CONNECTIONS=42  # env"));
        assert!(text.contains("BIND_ADDRESS=0.0.0.0:8081  # default"));
        assert!(text.contains("# JWT_PUBLIC_KEY_URL unset"));
        for var in [
            "METRICS_PORT",
            "SHUTDOWN_GRACE_SECS",
            "TOKIO_WORKER_THREADS",
            "RUST_LOG",
            "LOG_FORMAT",
        ] {
            assert!(text.contains(var), "{var} listed");
        }
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn metrics_and_log_settings_are_checked() {
        for (k, v) in [
            ("METRICS_DOCUMENT_SERIES", "0"),
            ("METRICS_DOCUMENT_SERIES", "5000"),
            ("LOG_FORMAT", "xml"),
        ] {
            assert_eq!(with(&[(k, v)]).unwrap_err().variable, k, "{k}={v}");
        }
        let clash = with(&[("BIND_ADDRESS", "0.0.0.0:9090")]).unwrap_err();
        assert_eq!(clash.variable, "METRICS_PORT");
        assert!(with(&[("LOG_FORMAT", "json")]).unwrap().listen.log_json);
        assert_eq!(
            with(&[("METRICS_DOCUMENT_SERIES", "1900")])
                .unwrap()
                .listen
                .metrics_document_series,
            1900
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(
            with(&[("MAX_CONNECTIONS", "lots")]).unwrap_err().variable,
            "MAX_CONNECTIONS"
        );
        assert_eq!(
            with(&[("OPERATION_BATCH_SIZE", "0")]).unwrap_err().variable,
            "OPERATION_BATCH_SIZE"
        );
        assert_eq!(
            with(&[("BIND_ADDRESS", "nowhere")]).unwrap_err().variable,
            "BIND_ADDRESS"
        );
        assert_eq!(
            with(&[("PERMISSION_SOURCE", "vibes")])
                .unwrap_err()
                .variable,
            "PERMISSION_SOURCE"
        );
        assert_eq!(
            with(&[
                ("HEARTBEAT_INTERVAL_SECS", "60"),
                ("HEARTBEAT_TIMEOUT_SECS", "30")
            ])
            .unwrap_err()
            .variable,
            "HEARTBEAT_TIMEOUT_SECS"
        );
    }

    #[test]
    fn origins_are_a_comma_separated_list() {
        let c = with(&[("ALLOWED_ORIGINS", "https://a.example, https://b.example/")]).unwrap();
        assert_eq!(
            c.limits.allowed_origins,
            Some(vec![
                "https://a.example".to_owned(),
                "https://b.example".to_owned()
            ])
        );
    }
}
