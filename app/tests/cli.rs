//! The `relay` binary as an operator runs it. (Also makes cargo build the
//! binary itself with the tests, which the multi-instance tests in `tests/`
//! start as processes.)

use std::process::Command;

fn relay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relay"));
    // Nothing from the caller's environment leaks in.
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "JWT_PUBLIC_KEY_URL",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    // Tests run side by side: no fixed metrics port.
    c.env("METRICS_PORT", "0");
    c
}

/// What it printed, on either stream.
fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_lists_the_subcommands() {
    let out = relay().arg("--help").output().expect("run relay");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "token", "migrate", "healthcheck"] {
        assert!(help.contains(sub), "--help lists {sub}: {help}");
    }
}

#[test]
fn redis_without_a_database_is_refused_naming_both_variables() {
    let out = relay()
        .env("BIND_ADDRESS", "127.0.0.1:0")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("JWT_PUBLIC_KEY_URL", "http://127.0.0.1:1/jwks.json")
        .output()
        .expect("run relay");
    assert!(!out.status.success(), "it must not start");
    let text = printed(&out);
    assert!(
        text.contains("REDIS_URL needs DATABASE_URL"),
        "the error names both: {text}"
    );
}

#[test]
fn an_unreachable_redis_is_refused_at_start_naming_the_variable() {
    // A real, migrated database, so Redis is what fails.
    let out = relay()
        .env("BIND_ADDRESS", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            relay_adapters::postgres::testdb::test_database(),
        )
        .env("PERMISSION_SOURCE", "claims")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("JWT_PUBLIC_KEY_URL", "http://127.0.0.1:1/jwks.json")
        .output()
        .expect("run relay");
    assert!(!out.status.success(), "it must not start");
    let text = printed(&out);
    assert!(text.contains("REDIS_URL: redis:"), "{text}");
}
