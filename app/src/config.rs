//! Configuration from the environment: every variable of the deployment
//! document, with its default, validated at start with a message naming the
//! variable.

use std::net::SocketAddr;
use std::time::Duration;

/// Where permissions come from (PERMISSION_SOURCE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermissionSourceKind {
    /// The token's `docs` claim.
    Claims,
    /// The database's `document_permissions` and document owners.
    Database,
}

/// Most bytes one `presence` entry takes as JSON: a user id, a client id
/// and a display name of at most 256 characters (each up to 6 bytes
/// escaped), positions and a version.
pub const PRESENCE_ENTRY_BYTES: usize = 2048;

/// Longest display name shown to other clients, in characters (longer
/// `name` claims are cut).
pub const MAX_NAME_CHARS: usize = 256;

/// Relay's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub bind_address: SocketAddr,
    pub metrics_port: u16,
    /// METRICS_DOCUMENT_SERIES: at most this many `document_id` series of
    /// `materi_websocket_connections_active` (the largest documents), the
    /// rest summed under `document_id="other"`. 1 to 1,900.
    pub metrics_document_series: usize,
    /// LOG_FORMAT=json: one JSON object per log line.
    pub log_json: bool,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub jwt_public_key_url: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_secs: u64,
    pub jwks_refresh_secs: u64,
    pub jwks_cooldown_secs: u64,
    pub allowed_origins: Option<Vec<String>>,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub auth_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// How long a presence entry lives without a refresh (instances
    /// refresh theirs every third of it): a crashed instance's users are
    /// gone from the others within it. Default 2 x heartbeat_timeout.
    pub presence_ttl: Option<Duration>,
    pub cursor_throttle_ms: u64,
    pub typing_debounce_ms: u64,
    pub operation_batch_size: usize,
    pub operation_history_ttl: Duration,
    pub operation_history_max: usize,
    pub operation_history_bytes: usize,
    pub permission_source: PermissionSourceKind,
    pub permission_cache_ttl: Duration,
    pub redis_pool_size: usize,
    /// Recent ops Redis keeps per document for catch-up (each at most
    /// 8 KB as JSON; 0 keeps none).
    pub redis_history_ops: usize,
    pub db_pool_size: usize,
    pub db_max_lifetime: Duration,
    pub db_idle_timeout: Duration,
    pub db_statement_timeout: Duration,
    pub snapshot_every: u64,
    pub run_migrations: bool,
    pub max_document_chars: usize,
    pub max_document_bytes: usize,
    pub outbound_queue: usize,
    pub room_idle: Duration,
    /// How often an open document reads the store's head while the bus is
    /// down (other instances' ops arrive this way meanwhile).
    pub bus_down_poll: Duration,
    pub shutdown_grace: Duration,
    pub submit_rate_per_sec: u32,
    pub submit_burst: u32,
    pub presence_rate_per_sec: u32,
    pub presence_burst: u32,
    pub worker_threads: Option<usize>,
}

/// A configuration error, naming the variable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let r = Reader { get: &get };
        let config = Config {
            bind_address: r.parse("BIND_ADDRESS", "0.0.0.0:8081")?,
            metrics_port: r.parse("METRICS_PORT", "9090")?,
            metrics_document_series: r.positive("METRICS_DOCUMENT_SERIES", "500")?,
            log_json: match get("LOG_FORMAT").as_deref().map(str::trim) {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(ConfigError {
                        variable: "LOG_FORMAT",
                        problem: format!("expected `text` or `json`, got {other:?}"),
                    });
                }
            },
            database_url: get("DATABASE_URL"),
            redis_url: get("REDIS_URL"),
            jwt_public_key_url: get("JWT_PUBLIC_KEY_URL"),
            jwt_issuer: get("JWT_ISSUER"),
            jwt_audience: get("JWT_AUDIENCE"),
            jwt_leeway_secs: r.parse("JWT_LEEWAY_SECS", "30")?,
            jwks_refresh_secs: r.positive("JWKS_REFRESH_SECS", "300")?,
            jwks_cooldown_secs: r.parse("JWKS_COOLDOWN_SECS", "30")?,
            allowed_origins: get("ALLOWED_ORIGINS").map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect()
            }),
            max_connections: r.positive("MAX_CONNECTIONS", "10000")?,
            max_message_bytes: r.positive("MAX_MESSAGE_BYTES", "1048576")?,
            auth_timeout: Duration::from_secs(r.positive("AUTH_TIMEOUT_SECS", "10")?),
            heartbeat_interval: Duration::from_secs(r.positive("HEARTBEAT_INTERVAL_SECS", "30")?),
            heartbeat_timeout: Duration::from_secs(r.positive("HEARTBEAT_TIMEOUT_SECS", "60")?),
            presence_ttl: match get("PRESENCE_TTL_SECS") {
                None => None,
                Some(_) => Some(Duration::from_secs(r.positive("PRESENCE_TTL_SECS", "120")?)),
            },
            cursor_throttle_ms: r.parse("CURSOR_THROTTLE_MS", "50")?,
            typing_debounce_ms: r.positive("TYPING_DEBOUNCE_MS", "500")?,
            operation_batch_size: r.positive("OPERATION_BATCH_SIZE", "100")?,
            operation_history_ttl: Duration::from_secs(r.positive("OPERATION_HISTORY_TTL", "600")?),
            operation_history_max: r.positive("OPERATION_HISTORY_MAX", "10000")?,
            operation_history_bytes: r.positive("OPERATION_HISTORY_BYTES", "8388608")?,
            permission_source: match get("PERMISSION_SOURCE").as_deref() {
                None => {
                    if get("DATABASE_URL").is_some() {
                        PermissionSourceKind::Database
                    } else {
                        PermissionSourceKind::Claims
                    }
                }
                Some("claims") => PermissionSourceKind::Claims,
                Some("database") => PermissionSourceKind::Database,
                Some(other) => {
                    return Err(ConfigError {
                        variable: "PERMISSION_SOURCE",
                        problem: format!("expected `claims` or `database`, got {other:?}"),
                    });
                }
            },
            permission_cache_ttl: Duration::from_secs(r.parse("PERMISSION_CACHE_TTL", "300")?),
            redis_pool_size: r.positive("REDIS_POOL_SIZE", "50")?,
            redis_history_ops: r.parse("REDIS_HISTORY_OPS", "200")?,
            db_pool_size: r.positive("DB_POOL_SIZE", "20")?,
            db_max_lifetime: Duration::from_secs(r.positive("DB_MAX_LIFETIME_SECS", "1800")?),
            db_idle_timeout: Duration::from_secs(r.positive("DB_IDLE_TIMEOUT_SECS", "600")?),
            db_statement_timeout: Duration::from_millis(
                r.positive("DB_STATEMENT_TIMEOUT_MS", "5000")?,
            ),
            snapshot_every: r.positive("SNAPSHOT_EVERY", "500")?,
            run_migrations: r.parse("RUN_MIGRATIONS", "false")?,
            max_document_chars: r.positive("MAX_DOCUMENT_CHARS", "10000000")?,
            max_document_bytes: 0,
            outbound_queue: r.positive("OUTBOUND_QUEUE", "256")?,
            room_idle: Duration::from_secs(r.parse("ROOM_IDLE_SECS", "30")?),
            bus_down_poll: Duration::from_millis(r.positive("BUS_DOWN_POLL_MS", "1000")?),
            shutdown_grace: Duration::from_secs(r.parse("SHUTDOWN_GRACE_SECS", "30")?),
            submit_rate_per_sec: r.positive("SUBMIT_RATE_PER_SEC", "200")?,
            submit_burst: r.positive("SUBMIT_BURST", "400")?,
            presence_rate_per_sec: r.positive("PRESENCE_RATE_PER_SEC", "100")?,
            presence_burst: r.positive("PRESENCE_BURST", "200")?,
            worker_threads: match get("TOKIO_WORKER_THREADS") {
                None => None,
                Some(_) => Some(r.positive("TOKIO_WORKER_THREADS", "1")?),
            },
        };
        let mut config = config;
        // Default: any text of MAX_DOCUMENT_CHARS characters fits (at most
        // 9 bytes a character as JSON), with 64 MiB to spare for formatting.
        let default_bytes = config
            .max_document_chars
            .saturating_mul(9)
            .saturating_add(64 << 20)
            .to_string();
        config.max_document_bytes = r.positive("MAX_DOCUMENT_BYTES", &default_bytes)?;
        if config.metrics_document_series > relay_adapters::otel::MAX_DOCUMENT_SERIES {
            return Err(ConfigError {
                variable: "METRICS_DOCUMENT_SERIES",
                problem: format!(
                    "must be at most {} (the metrics SDK keeps 2,000 series per metric)",
                    relay_adapters::otel::MAX_DOCUMENT_SERIES
                ),
            });
        }
        if config.metrics_port != 0 && config.metrics_port == config.bind_address.port() {
            return Err(ConfigError {
                variable: "METRICS_PORT",
                problem: format!(
                    "must differ from BIND_ADDRESS's port ({})",
                    config.bind_address.port()
                ),
            });
        }
        if config.heartbeat_timeout <= config.heartbeat_interval {
            return Err(ConfigError {
                variable: "HEARTBEAT_TIMEOUT_SECS",
                problem: format!(
                    "must be greater than HEARTBEAT_INTERVAL_SECS ({}s)",
                    config.heartbeat_interval.as_secs()
                ),
            });
        }
        if config.database_url.is_some()
            && config.max_document_chars > usize::try_from(i32::MAX).unwrap_or(usize::MAX)
        {
            // The seed's `operations.position` column is an INTEGER.
            return Err(ConfigError {
                variable: "MAX_DOCUMENT_CHARS",
                problem: format!("must be at most {} with DATABASE_URL", i32::MAX),
            });
        }
        if config.max_document_chars > relay_domain::ids::MAX_LEN {
            return Err(ConfigError {
                variable: "MAX_DOCUMENT_CHARS",
                problem: "must be at most 2^53 - 1".into(),
            });
        }
        if config.max_message_bytes < 1024 {
            return Err(ConfigError {
                variable: "MAX_MESSAGE_BYTES",
                problem: "must be at least 1024".into(),
            });
        }
        Ok(config)
    }

    /// Whether Relay runs on in-memory adapters with a development key.
    pub fn is_development(&self) -> bool {
        self.database_url.is_none() && self.redis_url.is_none() && self.jwt_public_key_url.is_none()
    }

    /// The sequencer's limits from this configuration.
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
    /// characters), or one op of [`Config::max_op_bytes`]; plus the
    /// envelope. Client authors size their receive buffers by it.
    pub fn max_outbound_frame_bytes(&self) -> usize {
        let presence = self.max_connections.saturating_mul(PRESENCE_ENTRY_BYTES);
        self.max_document_bytes
            .max(self.max_op_bytes())
            .saturating_add(presence)
            .saturating_add(64 << 10)
    }

    /// The WebSocket transport's settings.
    pub fn ws(&self) -> relay_adapters::ws::WsConfig {
        relay_adapters::ws::WsConfig {
            max_message_bytes: self.max_message_bytes,
            auth_timeout: self.auth_timeout,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            allowed_origins: self.allowed_origins.clone(),
            max_outbound_frame_bytes: self.max_outbound_frame_bytes(),
            ..relay_adapters::ws::WsConfig::default()
        }
    }

    /// The limits announced in `joined`.
    pub fn limits(&self) -> relay_ports::protocol::Limits {
        relay_ports::protocol::Limits {
            max_message_bytes: self.max_message_bytes,
            operation_batch_size: self.operation_batch_size,
            cursor_throttle_ms: self.cursor_throttle_ms,
            typing_debounce_ms: self.typing_debounce_ms,
            heartbeat_interval_secs: self.heartbeat_interval.as_secs(),
        }
    }
}

impl Default for Config {
    /// The defaults, as with an empty environment.
    fn default() -> Self {
        Config::from_lookup(|_| None).expect("defaults are valid")
    }
}

struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Reader<'_> {
    fn parse<T: std::str::FromStr>(
        &self,
        variable: &'static str,
        default: &str,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let raw = (self.get)(variable).unwrap_or_else(|| default.to_owned());
        raw.trim().parse().map_err(|e| ConfigError {
            variable,
            problem: format!("cannot parse {raw:?}: {e}"),
        })
    }

    fn positive<T: std::str::FromStr + Default + PartialEq>(
        &self,
        variable: &'static str,
        default: &str,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let v: T = self.parse(variable, default)?;
        if v == T::default() {
            return Err(ConfigError {
                variable,
                problem: "must be greater than 0".into(),
            });
        }
        Ok(v)
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
        assert_eq!(c.bind_address, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.metrics_port, 9090);
        assert_eq!(c.metrics_document_series, 500);
        assert!(!c.log_json);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.redis_pool_size, 50);
        assert_eq!(c.redis_history_ops, 200);
        assert_eq!(c.permission_cache_ttl, Duration::from_secs(300));
        assert_eq!(c.operation_history_ttl, Duration::from_secs(600));
        assert_eq!(c.cursor_throttle_ms, 50);
        assert_eq!(c.typing_debounce_ms, 500);
        assert_eq!(c.operation_batch_size, 100);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(60));
        assert_eq!(c.max_message_bytes, 1 << 20);
        assert_eq!(c.auth_timeout, Duration::from_secs(10));
        assert_eq!(c.permission_source, PermissionSourceKind::Claims);
        assert!(c.is_development());
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
        assert!(with(&[("LOG_FORMAT", "json")]).unwrap().log_json);
        assert_eq!(
            with(&[("METRICS_DOCUMENT_SERIES", "1900")])
                .unwrap()
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
            c.allowed_origins,
            Some(vec![
                "https://a.example".to_owned(),
                "https://b.example".to_owned()
            ])
        );
    }
}
