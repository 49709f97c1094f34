//! The runbook's backup and restore (infra/README.md): a `pg_dump -Fc` of a
//! database Relay wrote, restored with `pg_restore` into a fresh database,
//! serves the same documents - same content, same version - to a Relay
//! started on it.

use relay_adapter_postgres::testdb;
use relay_domain::DocumentId;
use relay_ports::protocol::ServerMessage;
use relay_tests::instances::Cluster;
use relay_tests::{Conn, Editor, new_document};
use std::process::Command;
use uuid::Uuid;

/// The document's content and version as a fresh client joining sees them.
async fn joined(cluster: &Cluster, document: DocumentId) -> (String, u64) {
    let mut conn = Conn::connect(&cluster.instances[0].url(document)).await;
    conn.join("reader", Some(&cluster.token(Uuid::new_v4())), None)
        .await;
    match conn.message().await {
        ServerMessage::Joined {
            content: Some(content),
            version,
            ..
        } => (
            serde_json::to_string(&content).expect("json"),
            version.get(),
        ),
        other => panic!("expected joined with content, got {other:?}"),
    }
}

fn run(command: &mut Command) {
    let out = command.output().expect("run");
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_restored_into_a_fresh_database_serves_the_same_documents() {
    let source = testdb::create_database(&testdb::admin_url(), &testdb::fresh_name())
        .await
        .expect("source database");
    let docs = [new_document(), new_document()];
    let before = {
        // Snapshots every 5 ops: the dump holds snapshots and a tail.
        let cluster =
            Cluster::start(1, &[("DATABASE_URL", &source), ("SNAPSHOT_EVERY", "5")]).await;
        let mut seen = Vec::new();
        for (n, doc) in docs.iter().enumerate() {
            let user = Uuid::new_v4();
            let token = cluster.token(user);
            let url = cluster.instances[0].url(*doc);
            let mut e = Editor::join_url(&url, *doc, user, "writer", &token).await;
            for i in 0..(12 + n * 5) {
                e.insert(i, if i % 2 == 0 { "a" } else { "b" }).await;
                e.settle().await;
            }
            seen.push(joined(&cluster, *doc).await);
        }
        seen
    };
    let dump = std::env::temp_dir().join(format!("relay-{}.dump", Uuid::new_v4()));
    run(Command::new("pg_dump")
        .arg("-Fc")
        .arg("-d")
        .arg(&source)
        .arg("-f")
        .arg(&dump));
    let restored = testdb::create_empty_database(&testdb::admin_url(), &testdb::fresh_name())
        .await
        .expect("fresh database");
    run(Command::new("pg_restore")
        .arg("--no-owner")
        .arg("-d")
        .arg(&restored)
        .arg(&dump));
    let _ = std::fs::remove_file(&dump);
    // A new Relay (and a new Redis: nothing from before) on the restore.
    let cluster = Cluster::start(1, &[("DATABASE_URL", &restored)]).await;
    for (doc, was) in docs.iter().zip(&before) {
        assert_eq!(&joined(&cluster, *doc).await, was, "{doc} restored");
    }
    // And it accepts new edits on top.
    let user = Uuid::new_v4();
    let token = cluster.token(user);
    let mut e = Editor::join_url(
        &cluster.instances[0].url(docs[0]),
        docs[0],
        user,
        "after",
        &token,
    )
    .await;
    e.insert(0, "!").await;
    e.settle().await;
    assert_eq!(joined(&cluster, docs[0]).await.1, before[0].1 + 1);
}
