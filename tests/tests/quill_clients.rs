//! quill-delta clients (Node, the `ws` package) editing one document on a
//! running Relay at once: random inserts, deletes and formatting set and
//! cleared, one submit in flight each, incoming ops transformed with
//! quill-delta as a rich-text editor would, lengths converted between
//! UTF-16 units and code points at the edge. Every client and a late
//! joiner must end with the same document, formatting included.
//!
//! Also on PostgreSQL with `RELAY_E2E_STORE=postgres`. Needs `npm ci` in
//! `tests/quill` (the README's test command runs it).

use relay_ports::protocol::Role;
use relay_tests::*;
use serde_json::{Value, json};
use uuid::Uuid;

async fn run_clients(seed: u64, clients: usize, edits: usize) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/quill");
    assert!(
        std::path::Path::new(dir).join("node_modules/ws").exists(),
        "ws and quill-delta are not installed: run `npm ci` in tests/quill"
    );
    let app = TestApp::spawn().await;
    let doc = new_document();
    let tokens: Vec<String> = (0..clients)
        .map(|_| app.token(Uuid::new_v4(), &[("*", Role::Editor)]))
        .collect();
    let config = json!({
        "url": app.url(doc),
        "tokens": tokens,
        "edits": edits,
        "seed": seed,
    });
    let out = tokio::process::Command::new("node")
        .arg("clients.js")
        .arg(config.to_string())
        .current_dir(dir)
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "seed {seed}: the quill clients failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let joiner = result["joiner"]
        .as_str()
        .expect("the late joiner's document");
    let docs = result["clients"]
        .as_array()
        .expect("every client's document");
    assert_eq!(docs.len(), clients);
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(
            d.as_str(),
            Some(joiner),
            "seed {seed}: client {i} differs from the server's document"
        );
    }
    assert_eq!(
        result["version"], result["total"],
        "every acknowledged op is in the document"
    );
    assert!(
        joiner.contains("attributes"),
        "seed {seed}: the run should have formatted something: {joiner}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quill_delta_clients_editing_with_formatting_converge_with_the_server() {
    for seed in 1..=3 {
        run_clients(seed, 4, 150).await;
    }
}
