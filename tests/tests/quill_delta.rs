//! Relay's deltas against quill-delta itself (PROTOCOL.md: deltas, their
//! composition and their transformation are exactly quill-delta's, lengths
//! in code points). Random documents and deltas - text with characters
//! outside the Basic Multilingual Plane, formatting set and cleared - go to
//! `tests/quill/oracle.js`, which answers with what quill-delta 5.1
//! computes (converting lengths to UTF-16 units and back); Relay's domain
//! must agree on every case: apply, compose, and transform with either
//! op first.
//!
//! `RELAY_QUILL_CASES` sets the number of cases (default 3,000),
//! `RELAY_QUILL_SEED` the first seed. Needs `npm ci` in `tests/quill`
//! (the README's test command runs it).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use relay_domain::{Attributes, Delta, Document, Side, Version};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const PIECES: &[&str] = &[
    "a",
    "b",
    " ",
    "\n",
    "é",
    "e\u{301}",
    "中",
    "🙂",
    "𝄞",
    "\u{1F469}\u{200D}\u{1F467}",
    "\"",
];
const KEYS: &[&str] = &["bold", "italic", "color"];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn text(rng: &mut SmallRng) -> String {
    (0..rng.random_range(1..4))
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

fn value(rng: &mut SmallRng, nulls: bool) -> Value {
    match rng.random_range(0..if nulls { 6 } else { 5 }) {
        0 => json!(true),
        1 => json!(false),
        2 => json!("red"),
        3 => json!(3),
        4 => json!({"nested": [1, "x"]}),
        _ => Value::Null,
    }
}

fn attributes(rng: &mut SmallRng, nulls: bool) -> Attributes {
    if rng.random_bool(0.5) {
        return Attributes::new();
    }
    let mut pairs = Vec::new();
    for _ in 0..rng.random_range(1..3) {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        pairs.push((key, value(rng, nulls)));
    }
    pairs.into_iter().collect()
}

/// A document of formatted inserts (sometimes with `null` values, which
/// quill-delta keeps on inserts).
fn document(rng: &mut SmallRng) -> Document {
    let mut content = Delta::new();
    for _ in 0..rng.random_range(0..5) {
        let t = text(rng);
        let nulls = rng.random_bool(0.2);
        let a = attributes(rng, nulls);
        content.insert_with(&t, a);
    }
    Document::from_content(&content, Version::ZERO).expect("inserts")
}

/// A random delta on a document of `len` characters.
fn delta(rng: &mut SmallRng, len: usize) -> Delta {
    let mut d = Delta::new();
    let mut used = 0;
    for _ in 0..rng.random_range(0..7) {
        match rng.random_range(0..3) {
            0 if used < len => {
                let n = rng.random_range(1..=len - used).min(5);
                let a = attributes(rng, true);
                d.retain_with(n, a);
                used += n;
            }
            1 if used < len => {
                let n = rng.random_range(1..=len - used).min(4);
                d.delete(n);
                used += n;
            }
            _ => {
                let t = text(rng);
                let nulls = rng.random_bool(0.1);
                let a = attributes(rng, nulls);
                d.insert_with(&t, a);
            }
        }
    }
    d.fit(len).expect("within the document")
}

fn wire(d: &Delta) -> Value {
    serde_json::to_value(d).expect("serialises")
}

#[test]
fn relay_computes_what_quill_delta_computes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/quill");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/quill-delta")
            .exists(),
        "quill-delta is not installed: run `npm ci` in tests/quill (the README's test command does)"
    );
    let mut oracle = Command::new("node")
        .arg("oracle.js")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (Node.js is on this machine kind)");
    let mut to_node = oracle.stdin.take().expect("stdin");
    let mut from_node = BufReader::new(oracle.stdout.take().expect("stdout"));
    let cases = env_number("RELAY_QUILL_CASES", 3000);
    let first = env_number("RELAY_QUILL_SEED", 1);
    let mut disagreements = Vec::new();
    for seed in first..first + cases {
        let mut rng = SmallRng::seed_from_u64(seed);
        let doc = document(&mut rng);
        let a = delta(&mut rng, doc.len());
        let b = delta(&mut rng, doc.len());
        let mut after_a = doc.clone();
        after_a.apply(&a).expect("a applies");
        let c = delta(&mut rng, after_a.len());
        let case =
            json!({"doc": wire(&doc.to_delta()), "a": wire(&a), "b": wire(&b), "c": wire(&c)});
        writeln!(to_node, "{case}").expect("write a case");
        let mut line = String::new();
        from_node.read_line(&mut line).expect("read an answer");
        let quill: Value = serde_json::from_str(&line).expect("the oracle answers JSON");
        let relay = json!({
            "applied": wire(&after_a.to_delta()),
            "composed": wire(&a.compose(&c).expect("compose")),
            // quill `b.transform(a, true)`: b first, a transformed.
            "a_over_b_first": wire(&a.transform(&b, Side::Right).expect("transform")),
            "a_over_b_second": wire(&a.transform(&b, Side::Left).expect("transform")),
            "b_over_a_first": wire(&b.transform(&a, Side::Right).expect("transform")),
            "b_over_a_second": wire(&b.transform(&a, Side::Left).expect("transform")),
        });
        for key in [
            "applied",
            "composed",
            "a_over_b_first",
            "a_over_b_second",
            "b_over_a_first",
            "b_over_a_second",
        ] {
            if relay[key] != quill[key] {
                disagreements.push(format!(
                    "seed {seed}, {key}: case {case}\n  relay {}\n  quill {}",
                    relay[key], quill[key]
                ));
            }
        }
        if disagreements.len() >= 5 {
            break;
        }
    }
    drop(to_node);
    let _ = oracle.wait();
    assert!(
        disagreements.is_empty(),
        "Relay and quill-delta disagree (replay with RELAY_QUILL_SEED=<seed> RELAY_QUILL_CASES=1):\n{}",
        disagreements.join("\n")
    );
    println!("{cases} cases agree with quill-delta");
}
