//! Memory, measured with a counting allocator: what one kept op costs in
//! the sequencer's history, and what formatting many runs at once costs.
//!
//! One test function, so nothing else allocates while it measures.

use relay_domain::{
    Attributes, ClientId, Delta, Document, Proposed, Seq, Sequencer, SequencerConfig, Submission,
    Timestamp, UserId, Version,
};
use serde_json::json;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes still held after `f` (allocated minus freed).
fn retained<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let region = Region::new(GLOBAL);
    let out = f();
    let c = region.change();
    let held = c.bytes_allocated as isize - c.bytes_deallocated as isize + c.bytes_reallocated;
    (out, held)
}

/// Commits `n` eight-character inserts at spread positions from two
/// clients; returns the sequencer.
fn typed(n: usize, max_history: usize) -> Sequencer {
    let config = SequencerConfig {
        max_history,
        ..SequencerConfig::default()
    };
    let mut s = Sequencer::new(
        Document::from_text(&"x".repeat(1000), Version::ZERO),
        config,
    );
    let users = [
        UserId::new(uuid::Uuid::from_u128(1)),
        UserId::new(uuid::Uuid::from_u128(2)),
    ];
    let clients = [
        ClientId::new("tab-one").unwrap(),
        ClientId::new("tab-two").unwrap(),
    ];
    for i in 0..n {
        let pos = (i * 7919) % s.document().len();
        let mut d = Delta::new();
        d.retain(pos).insert("abcdefgh");
        let sub = Submission {
            user: users[i % 2],
            client_id: clients[i % 2].clone(),
            seq: Seq::new(i as u64 + 1).unwrap(),
            base: s.version(),
            delta: d,
        };
        let Ok(Proposed::New(v)) = s.propose(&sub) else {
            panic!("a fresh submit is new")
        };
        s.commit(v, Timestamp::from_millis(0));
    }
    s
}

#[test]
fn memory_per_history_op_and_per_formatted_run() {
    // Bytes per kept op: the same work with history kept and without, so
    // the document's own growth cancels out.
    const N: usize = 10_000;
    let (kept, with_history) = retained(|| typed(N, N + 1));
    let (dropped, without) = retained(|| typed(N, 1));
    assert_eq!(kept.history_len(), N);
    assert_eq!(dropped.history_len(), 1);
    assert_eq!(kept.document(), dropped.document());
    let per_op = (with_history - without) as f64 / N as f64;
    println!(
        "history: {per_op:.0} bytes per kept 8-character insert (accounted: {} bytes)",
        kept.history_bytes() / N
    );
    assert!(per_op <= 200.0, "{per_op:.0} bytes per kept op");
    assert!(
        kept.history_bytes() as f64 >= per_op * N as f64 * 0.9,
        "the budget counts at least what is held"
    );

    // 2,000 distinct formatting runs, then one retain over all of them that
    // sets a 4 KB attribute: the value is held once, not once per run.
    let mut doc = Document::from_text(&"y".repeat(4000), Version::ZERO);
    let mut runs = Delta::new();
    for i in 0..2000 {
        runs.retain_with(1, Attributes::new().with("n", i))
            .retain(1);
    }
    doc.apply(&runs).unwrap();
    assert_eq!(doc.run_count(), 4000);
    let big: serde_json::Value = json!("v".repeat(4000));
    let wire = json!([{"retain": 4000, "attributes": {"big": big}}]);
    let format_all = Delta::from_json(&wire).unwrap();
    let (_, held) = retained(|| doc.apply(&format_all).unwrap());
    println!("formatting 2,000 runs with a 4 KB value: {held} bytes");
    // Each run needs its own small composed map; a copy of the value per
    // run would be 2,000 x 4 KB = 8 MB.
    assert!(held < 2_000_000, "{held} bytes");
}
