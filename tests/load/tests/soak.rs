//! The soak's checks (docs/performance.md, "Soak"), run by the relay-load
//! binary against `relay` processes.

use std::process::Command;
use std::time::Duration;

/// relay-load on a started `relay` with `args`; its exit success and
/// summary.
fn relay_load(out: &std::path::Path, args: &[&str], within: Duration) -> (bool, String) {
    let relay = relay_tests::instances::relay_binary();
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay-load"))
        .arg("--relay")
        .arg(&relay)
        .arg("--out")
        .arg(out)
        .args(["--no-plots", "--no-progress"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("relay-load starts");
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(_status) = child.try_wait().expect("relay-load") {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("relay-load did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("relay-load output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_recovery_check_fails_while_documents_are_still_open() {
    // Documents stay open 30 s after their last client (ROOM_IDLE_SECS'
    // default): a recovery wait of 1 s cannot see them closed.
    let out = tempfile::tempdir().unwrap();
    let (ok, text) = relay_load(
        out.path(),
        &[
            "-n",
            "6",
            "-m",
            "2",
            "--rate",
            "2",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--recover",
            "1",
        ],
        Duration::from_secs(120),
    );
    assert!(!ok, "the run must fail:\n{text}");
    assert!(
        text.contains("still had connections or open documents"),
        "{text}"
    );
}

#[test]
fn the_recovery_check_passes_once_every_document_closed() {
    let out = tempfile::tempdir().unwrap();
    let (ok, text) = relay_load(
        out.path(),
        &[
            "-n",
            "6",
            "-m",
            "2",
            "--rate",
            "2",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--recover",
            "60",
            "--no-errors",
            "--relay-env",
            "ROOM_IDLE_SECS=1",
        ],
        Duration::from_secs(180),
    );
    assert!(ok, "{text}");
    assert!(text.contains("recovery OK"), "{text}");
}
