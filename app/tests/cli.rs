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
            relay_adapter_postgres::testdb::test_database(),
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

/// Every variable of the deployment document's three tables (and Relay's
/// own) appears in `--help` with its default.
#[test]
fn help_lists_every_variable_with_its_default() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let out = relay().args(args).output().expect("run relay");
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for (var, default) in [
            ("BIND_ADDRESS", Some("0.0.0.0:8081")),
            ("METRICS_PORT", Some("9090")),
            ("DATABASE_URL", None),
            ("REDIS_URL", None),
            ("JWT_PUBLIC_KEY_URL", None),
            ("RUST_LOG", Some("info")),
            ("RUST_BACKTRACE", Some("0")),
            ("MAX_CONNECTIONS", Some("10000")),
            ("HEARTBEAT_INTERVAL_SECS", Some("30")),
            ("HEARTBEAT_TIMEOUT_SECS", Some("60")),
            ("CURSOR_THROTTLE_MS", Some("50")),
            ("TYPING_DEBOUNCE_MS", Some("500")),
            ("OPERATION_BATCH_SIZE", Some("100")),
            ("OPERATION_HISTORY_TTL", Some("600")),
            ("PERMISSION_CACHE_TTL", Some("300")),
            ("REDIS_POOL_SIZE", Some("50")),
            ("DB_POOL_SIZE", Some("20")),
            ("DB_MAX_LIFETIME_SECS", Some("1800")),
            ("DB_IDLE_TIMEOUT_SECS", Some("600")),
            ("SHUTDOWN_GRACE_SECS", Some("30")),
            ("TOKIO_WORKER_THREADS", None),
            ("LOG_FORMAT", Some("text")),
            ("METRICS_DOCUMENT_SERIES", Some("500")),
        ] {
            let line = help
                .lines()
                .skip_while(|l| !l.contains(&format!("<{var}>")))
                .nth(1)
                .unwrap_or_else(|| panic!("{var} in {args:?}: {help}"));
            assert!(line.contains(&format!("[env: {var}")), "{var}: {line}");
            if let Some(d) = default {
                assert!(line.contains(&format!("[default: {d}]")), "{var}: {line}");
            }
        }
    }
}

#[test]
fn relay_config_prints_the_configuration_with_passwords_redacted() {
    let out = relay()
        .arg("config")
        .env("DATABASE_URL", "postgres://relay:s3cret@db:5432/relay")
        .env("REDIS_URL", "redis://:hunter2@redis:6379")
        .env("JWT_PUBLIC_KEY_URL", "https://id.example/jwks.json")
        .env("MAX_CONNECTIONS", "3000")
        .output()
        .expect("run relay");
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(
        text.contains("DATABASE_URL=postgres://relay:***@db:5432/relay"),
        "{text}"
    );
    assert!(text.contains("MAX_CONNECTIONS=3000  # env"), "{text}");
    assert!(text.contains("SHUTDOWN_GRACE_SECS=30  # default"), "{text}");
    // --help does not show a set variable's secret either.
    let help = relay()
        .arg("--help")
        .env("DATABASE_URL", "postgres://relay:s3cret@db:5432/relay")
        .output()
        .expect("run relay");
    assert!(!printed(&help).contains("s3cret"));
    // An invalid value: named, and the exit status says so.
    let bad = relay()
        .arg("config")
        .env("HEARTBEAT_INTERVAL_SECS", "90")
        .output()
        .expect("run relay");
    assert!(!bad.status.success());
    assert!(
        printed(&bad).contains("HEARTBEAT_TIMEOUT_SECS"),
        "{}",
        printed(&bad)
    );
}

#[test]
fn a_bad_value_is_refused_naming_the_variable_and_the_expected_form() {
    for (var, value, expected) in [
        ("MAX_CONNECTIONS", "lots", "whole number"),
        ("LOG_FORMAT", "xml", "text, json"),
        ("BIND_ADDRESS", "nowhere", "BIND_ADDRESS"),
        ("METRICS_DOCUMENT_SERIES", "5000", "at most 1900"),
    ] {
        let out = relay().env(var, value).output().expect("run relay");
        assert!(!out.status.success(), "{var}={value} must not start");
        let text = printed(&out);
        assert!(
            text.contains(var) && text.contains(expected),
            "{var}: {text}"
        );
    }
}

/// TOKIO_WORKER_THREADS sizes the runtime; its threads are named
/// `relay-worker`, as the deployment document's snippet names them.
#[cfg(target_os = "linux")]
#[test]
fn tokio_worker_threads_sizes_the_runtime() {
    let dir = std::env::temp_dir().join(format!("relay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = relay()
        .env("BIND_ADDRESS", "127.0.0.1:0")
        .env("TOKIO_WORKER_THREADS", "3")
        .env("RELAY_DEV_KEY_FILE", dir.join("key.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start relay");
    let count = || {
        std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == "relay-worker")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let n = count();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(n, 3, "three relay-worker threads");
}

/// MAX_CONNECTIONS sockets need as many descriptors: a relay started with
/// a soft limit of 512 raises it to MAX_CONNECTIONS + 256 (within the hard
/// limit).
#[cfg(target_os = "linux")]
#[test]
fn the_file_descriptor_limit_is_raised_for_max_connections() {
    let dir = std::env::temp_dir().join(format!("relay-cli-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = relay();
    let relay_path = c.get_program().to_owned();
    let mut bash = Command::new("bash");
    bash.args(["-c", "ulimit -Sn 512 && exec \"$0\" serve"])
        .arg(relay_path)
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        );
    for (k, v) in c.get_envs() {
        if v.is_none() {
            bash.env_remove(k);
        }
    }
    let mut child = bash
        .env("BIND_ADDRESS", "127.0.0.1:0")
        .env("MAX_CONNECTIONS", "2000")
        .env("RELAY_DEV_KEY_FILE", dir.join("key.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start relay");
    let hard = open_files("self", 4).unwrap();
    let expected = 2256.min(hard);
    let pid = child.id().to_string();
    let soft = || open_files(&pid, 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while soft() != Some(expected) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let got = soft();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got, Some(expected), "soft limit of the relay process");
}

/// Field `field` (3 soft, 4 hard) of the "Max open files" line of
/// /proc/<pid>/limits.
#[cfg(target_os = "linux")]
fn open_files(pid: &str, field: usize) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(field)?
        .parse()
        .ok()
}

#[test]
fn the_committed_configuration_page_is_what_relay_config_markdown_prints() {
    let out = relay()
        .args(["config", "--markdown"])
        .env("MAX_CONNECTIONS", "7")
        .output()
        .expect("run relay");
    assert!(out.status.success(), "{}", printed(&out));
    let printed_page = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        printed_page.contains("| `MAX_CONNECTIONS` | `10000` |"),
        "the page shows defaults, not the environment"
    );
    let page = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let committed = std::fs::read_to_string(&page).expect("docs/configuration.md");
    assert!(
        committed == printed_page,
        "docs/configuration.md is out of date: run `relay config --markdown > docs/configuration.md`"
    );
}

/// TRUSTED_PROXIES is one comma-separated value: reading it must not make
/// the command line parser panic (it did once, for every `relay` started
/// with it set, the Kubernetes example's included).
#[test]
fn trusted_proxies_as_a_list_are_read_at_start() {
    let out = relay()
        .arg("config")
        .env("TRUSTED_PROXIES", "10.244.0.0/16, 192.168.1.7")
        .output()
        .expect("run relay");
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("TRUSTED_PROXIES=10.244.0.0/16, 192.168.1.7"),
        "{text}"
    );
}
