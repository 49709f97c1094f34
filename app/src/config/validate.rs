//! Every rule that relates variables to each other (or a value to what
//! Relay can do with it), in one place: [`settings`] when the environment
//! is read, [`serving`] when the adapters are about to be built (the rules
//! about what serving needs, which `relay config` and `relay migrate` do
//! not apply).

use super::{Config, ConfigError, PermissionSourceKind, Settings};

fn refuse(variable: &str, problem: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        variable: variable.to_owned(),
        problem: problem.into(),
    })
}

/// The rules a configuration must meet to be valid at all (an error names
/// the variable).
pub(super) fn settings(s: &Settings) -> Result<(), ConfigError> {
    if s.metrics_document_series > relay_adapter_otel::MAX_DOCUMENT_SERIES {
        return refuse(
            "METRICS_DOCUMENT_SERIES",
            format!(
                "must be at most {} (the metrics SDK keeps 2,000 series per metric)",
                relay_adapter_otel::MAX_DOCUMENT_SERIES
            ),
        );
    }
    if s.metrics_port != 0 && s.metrics_port == s.bind_address.port() {
        return refuse(
            "METRICS_PORT",
            format!(
                "must differ from BIND_ADDRESS's port ({})",
                s.bind_address.port()
            ),
        );
    }
    if s.heartbeat_timeout_secs <= s.heartbeat_interval_secs {
        return refuse(
            "HEARTBEAT_TIMEOUT_SECS",
            format!(
                "must be greater than HEARTBEAT_INTERVAL_SECS ({}s)",
                s.heartbeat_interval_secs
            ),
        );
    }
    if s.database_url.is_some()
        && s.max_document_chars > usize::try_from(i32::MAX).unwrap_or(usize::MAX)
    {
        // The seed's `operations.position` column is an INTEGER.
        return refuse(
            "MAX_DOCUMENT_CHARS",
            format!("must be at most {} with DATABASE_URL", i32::MAX),
        );
    }
    if s.max_document_chars > relay_domain::ids::MAX_LEN {
        return refuse("MAX_DOCUMENT_CHARS", "must be at most 2^53 - 1");
    }
    if s.max_message_bytes < 1024 {
        return refuse("MAX_MESSAGE_BYTES", "must be at least 1024");
    }
    // One op of the largest size (four times MAX_MESSAGE_BYTES as JSON,
    // see `Limits::max_op_bytes`) in its `ops` frame must fit a client's
    // queue, or an honest client would be closed for receiving it.
    let least_queue = s
        .max_message_bytes
        .saturating_mul(4)
        .saturating_add(64 << 10);
    if s.outbound_queue_bytes < least_queue {
        return refuse(
            "OUTBOUND_QUEUE_BYTES",
            format!(
                "must be at least 4 x MAX_MESSAGE_BYTES + 64 KiB ({least_queue}): one op of the largest size must fit"
            ),
        );
    }
    if let Some(url) = &s.jwt_public_key_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return refuse(
            "JWT_PUBLIC_KEY_URL",
            format!("expected an http(s) URL, got {url:?}"),
        );
    }
    Ok(())
}

/// What serving with `config` needs besides: Redis only carries what the
/// database committed, roles from the database need one, and without a
/// JWKS the tokens must be development tokens (`development_keys`: the
/// caller has a development key).
pub fn serving(config: &Config, development_keys: bool) -> Result<(), ServingRefusal> {
    let database = config.store.database_url.is_some();
    if config.bus.redis_url.is_some() && !database {
        return Err(ServingRefusal::RedisWithoutDatabase);
    }
    if config.auth.permission_source == PermissionSourceKind::Database && !database {
        return Err(ServingRefusal::DatabasePermissionsWithoutDatabase);
    }
    if config.auth.jwt_public_key_url.is_none() && !development_keys {
        return Err(ServingRefusal::NoTokenKeys);
    }
    Ok(())
}

/// A configuration that parses but cannot serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServingRefusal {
    #[error(
        "REDIS_URL needs DATABASE_URL: several instances share a document through PostgreSQL (Redis only carries what was committed there)"
    )]
    RedisWithoutDatabase,
    #[error("PERMISSION_SOURCE=database needs DATABASE_URL")]
    DatabasePermissionsWithoutDatabase,
    #[error("JWT_PUBLIC_KEY_URL is required when DATABASE_URL or REDIS_URL is set")]
    NoTokenKeys,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(config: &Config, development_keys: bool) -> String {
        serving(config, development_keys)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn serving_rules_name_the_variables() {
        let mut config = Config::default();
        assert!(serving(&config, true).is_ok());
        assert_eq!(
            refusal(&config, false),
            "JWT_PUBLIC_KEY_URL is required when DATABASE_URL or REDIS_URL is set"
        );
        config.auth.permission_source = PermissionSourceKind::Database;
        assert_eq!(
            refusal(&config, true),
            "PERMISSION_SOURCE=database needs DATABASE_URL"
        );
        config.bus.redis_url = Some("redis://127.0.0.1:1".into());
        assert!(refusal(&config, true).starts_with("REDIS_URL needs DATABASE_URL: "));
        config.store.database_url = Some("postgres://127.0.0.1:1/relay".into());
        assert!(serving(&config, true).is_ok());
    }

    #[test]
    fn the_outbound_byte_budget_must_hold_the_largest_op() {
        let e =
            Config::from_lookup(|k| (k == "OUTBOUND_QUEUE_BYTES").then(|| "4194304".to_owned()))
                .unwrap_err();
        assert_eq!(e.variable, "OUTBOUND_QUEUE_BYTES");
        let ok = Config::from_lookup(|k| match k {
            "OUTBOUND_QUEUE_BYTES" => Some("4194304".to_owned()),
            "MAX_MESSAGE_BYTES" => Some("65536".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(ok.limits.outbound_queue_bytes, 4 << 20);
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let c = Config::from_lookup(|k| {
            (k == "TRUSTED_PROXIES").then(|| "10.0.0.0/8, 192.168.1.7 ,fd00::/8".to_owned())
        })
        .unwrap();
        let shown: Vec<String> = c
            .limits
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        assert!(Config::default().limits.trusted_proxies.is_empty());
        let e =
            Config::from_lookup(|k| (k == "TRUSTED_PROXIES").then(|| "10.0.0.0/8,nope".to_owned()))
                .unwrap_err();
        assert_eq!(e.variable, "TRUSTED_PROXIES");
        assert!(e.problem.contains("\"nope\""), "{}", e.problem);
    }

    #[test]
    fn the_jwt_url_scheme_is_checked_when_read() {
        let e = Config::from_lookup(|k| {
            (k == "JWT_PUBLIC_KEY_URL").then(|| "ftp://id.example/jwks.json".to_owned())
        })
        .unwrap_err();
        assert_eq!(e.variable, "JWT_PUBLIC_KEY_URL");
        assert!(e.problem.contains("http(s) URL"), "{}", e.problem);
    }
}
