//! Replays the recorded editing traces through raw ropes, the domain
//! `Document` and the `Sequencer` (with simulated concurrent clients), and
//! prints min / median wall time per trace.
//!
//! Run: `cargo bench -p relay-domain --bench traces [-- [FILTER] [--runs N]]`.
//! Traces are read from `$RELAY_TRACES`, else from
//! `shared/traces/sequential_traces` beside the workspace. Everything is
//! loaded and converted before any timing starts; every timed result is
//! checked against the trace's `endContent` afterwards (a mismatch panics).

use flate2::read::GzDecoder;
use jumprope::{JumpRope, JumpRopeBuf};
use relay_domain::{
    ClientId, Component, Delta, Document, Proposed, Seq, Sequencer, SequencerConfig, Submission,
    Timestamp, UserId, Version,
};
use serde::Deserialize;
use std::hint::black_box;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

const TRACES: [&str; 4] = [
    "automerge-paper",
    "seph-blog1",
    "friendsforever_flat",
    "clownschool_flat",
];

/// Numbers of simulated concurrent clients for the sequencer section.
const CLIENTS: [usize; 2] = [2, 4];

/// Placed between the clients' regions so that an insert at the end of one
/// region and a concurrent insert at the start of the next never land on the
/// same position (see `sequencer_submissions`). Removed after timing.
const SEPARATOR: char = '\u{1}';

#[derive(Deserialize)]
struct TraceFile {
    #[serde(rename = "startContent")]
    start_content: String,
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    patches: Vec<(usize, usize, String)>,
}

/// One patch: delete `del` chars at `pos`, then insert `ins` at `pos`.
struct Patch {
    pos: usize,
    del: usize,
    ins: String,
}

struct Trace {
    name: &'static str,
    patches: Vec<Patch>,
    end: String,
    /// `lens[k]`: document length in chars after the first `k` patches.
    lens: Vec<usize>,
}

struct Options {
    runs: usize,
    filter: Option<String>,
}

fn parse_args() -> Options {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it: then one run per row is enough to check every
    // replay against `endContent`.
    let benching = std::env::args().any(|a| a == "--bench");
    let mut runs = if benching { 10 } else { 1 };
    let mut filter = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--runs" {
            let v = args.next().expect("--runs needs a number");
            runs = v.parse().expect("--runs needs a positive integer");
        } else if let Some(v) = arg.strip_prefix("--runs=") {
            runs = v.parse().expect("--runs needs a positive integer");
        } else if arg.starts_with('-') {
            // `--bench` and whatever else cargo or libtest-style callers pass.
        } else if filter.is_none() {
            filter = Some(arg);
        }
    }
    assert!(runs > 0, "--runs must be at least 1");
    Options { runs, filter }
}

fn traces_dir() -> PathBuf {
    match std::env::var_os("RELAY_TRACES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/traces/sequential_traces"
        )),
    }
}

/// The small trace shipped in the repository (see `benches/traces/README.md`).
fn shipped(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/traces"))
        .join(format!("{name}.json.gz"))
}

/// Where a trace can be read: the shared traces beside the checkout, or
/// the copy shipped here; `None` when neither has it.
fn trace_path(name: &str) -> Option<PathBuf> {
    let shared = traces_dir().join(format!("{name}.json.gz"));
    if shared.exists() {
        return Some(shared);
    }
    let own = shipped(name);
    own.exists().then_some(own)
}

fn load(name: &'static str) -> Trace {
    let path = trace_path(name).expect("only traces that exist are loaded");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open trace {}: {e}", path.display()));
    let mut json = String::new();
    GzDecoder::new(file)
        .read_to_string(&mut json)
        .unwrap_or_else(|e| panic!("cannot gunzip {}: {e}", path.display()));
    let file: TraceFile = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()));
    assert!(
        file.start_content.is_empty(),
        "{name}: startContent is not empty"
    );
    let mut patches = Vec::new();
    let mut lens = vec![0];
    let mut len = 0usize;
    for txn in file.txns {
        for (pos, del, ins) in txn.patches {
            assert!(
                pos + del <= len,
                "{name}: patch {} ({pos}, {del}) past the end of a {len}-char document",
                patches.len()
            );
            len = len - del + ins.chars().count();
            lens.push(len);
            patches.push(Patch { pos, del, ins });
        }
    }
    assert_eq!(
        len,
        file.end_content.chars().count(),
        "{name}: patches do not produce endContent's length"
    );
    Trace {
        name,
        patches,
        end: file.end_content,
        lens,
    }
}

/// The delta of one patch on a document of `doc_len` chars, positions offset
/// by `offset`.
fn patch_delta(p: &Patch, offset: usize, doc_len: usize) -> Delta {
    let mut d = Delta::with_capacity(4);
    d.retain(offset + p.pos).delete(p.del).insert(&p.ins);
    d.fit(doc_len)
        .expect("a patch delta spans at most its document")
}

/// Runs `setup` then times `body` on its output, `runs` times. Setup and the
/// drop of the result are not timed; `check` sees each result.
fn measure<S, R>(
    runs: usize,
    mut setup: impl FnMut() -> S,
    mut body: impl FnMut(S) -> R,
    mut check: impl FnMut(R),
) -> Stats {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let input = setup();
        let start = Instant::now();
        let out = black_box(body(black_box(input)));
        times.push(start.elapsed());
        check(out);
    }
    Stats::new(times)
}

#[derive(Clone, Copy)]
struct Stats {
    min: Duration,
    median: Duration,
}

impl Stats {
    fn new(mut times: Vec<Duration>) -> Stats {
        times.sort();
        let n = times.len();
        let median = if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2
        };
        Stats {
            min: times[0],
            median,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn check_text(what: &str, trace: &Trace, got: &str) {
    if got != trace.end {
        panic!(
            "CHECKSUM MISMATCH: {what} on {}: got {} chars, endContent has {}",
            trace.name,
            got.chars().count(),
            trace.end.chars().count()
        );
    }
}

fn bench_jumprope(trace: &Trace, runs: usize) -> Stats {
    measure(
        runs,
        || (),
        |()| {
            let mut rope = JumpRope::new();
            for p in &trace.patches {
                if p.del > 0 {
                    rope.remove(p.pos..p.pos + p.del);
                }
                if !p.ins.is_empty() {
                    rope.insert(p.pos, &p.ins);
                }
            }
            rope
        },
        |rope| check_text("JumpRope", trace, &rope.to_string()),
    )
}

fn bench_jumprope_buf(trace: &Trace, runs: usize) -> Stats {
    measure(
        runs,
        || (),
        |()| {
            let mut rope = JumpRopeBuf::new();
            for p in &trace.patches {
                if p.del > 0 {
                    rope.remove(p.pos..p.pos + p.del);
                }
                if !p.ins.is_empty() {
                    rope.insert(p.pos, &p.ins);
                }
            }
            rope
        },
        |rope| check_text("JumpRopeBuf", trace, &rope.to_string()),
    )
}

fn bench_ropey(trace: &Trace, runs: usize) -> Stats {
    measure(
        runs,
        || (),
        |()| {
            let mut rope = ropey::Rope::new();
            for p in &trace.patches {
                if p.del > 0 {
                    rope.remove(p.pos..p.pos + p.del);
                }
                if !p.ins.is_empty() {
                    rope.insert(p.pos, &p.ins);
                }
            }
            rope
        },
        |rope| check_text("ropey", trace, &rope.to_string()),
    )
}

fn check_document(what: &str, trace: &Trace, doc: &Document) {
    check_text(what, trace, &doc.text());
    assert_eq!(
        doc.version(),
        Version::new(trace.patches.len() as u64).unwrap(),
        "{what} on {}: wrong final version",
        trace.name
    );
}

/// (a): deltas built before timing; only `Document::apply` is timed.
fn bench_document_prebuilt(trace: &Trace, runs: usize) -> Stats {
    let deltas: Vec<Delta> = trace
        .patches
        .iter()
        .zip(&trace.lens)
        .map(|(p, &len)| patch_delta(p, 0, len))
        .collect();
    measure(
        runs,
        || (),
        |()| {
            let mut doc = Document::new();
            for d in &deltas {
                doc.apply(d).expect("a prebuilt delta applies");
            }
            doc
        },
        |doc| check_document("Document::apply (prebuilt)", trace, &doc),
    )
}

/// Diagnostic: the prebuilt deltas of (a) fed straight into a `JumpRopeBuf`
/// (no `Document`), to split (a)'s cost between reading the deltas and the
/// document's own bookkeeping.
fn bench_jumprope_buf_from_deltas(trace: &Trace, runs: usize) -> Stats {
    let deltas: Vec<Delta> = trace
        .patches
        .iter()
        .zip(&trace.lens)
        .map(|(p, &len)| patch_delta(p, 0, len))
        .collect();
    measure(
        runs,
        || (),
        |()| {
            let mut rope = JumpRopeBuf::new();
            for d in &deltas {
                let mut pos = 0;
                for c in d.components() {
                    match c {
                        Component::Retain { len, .. } => pos += len,
                        Component::Delete { len } => rope.remove(pos..pos + len),
                        Component::Insert { text, .. } => {
                            rope.insert(pos, text);
                            pos += text.chars().count();
                        }
                    }
                }
            }
            rope
        },
        |rope| check_text("JumpRopeBuf from deltas", trace, &rope.to_string()),
    )
}

/// (b): each delta built from its patch inside the timed loop.
fn bench_document_build(trace: &Trace, runs: usize) -> Stats {
    measure(
        runs,
        || (),
        |()| {
            let mut doc = Document::new();
            for p in &trace.patches {
                let d = patch_delta(p, 0, doc.len());
                doc.apply(&d).expect("a built delta applies");
            }
            doc
        },
        |doc| check_document("Document::apply (built)", trace, &doc),
    )
}

fn user(c: usize) -> UserId {
    UserId::new(Uuid::from_u128(
        0x5eed_0000_0000_0000_0000_0000_0000_0000 + c as u128,
    ))
}

fn client_id(c: usize) -> ClientId {
    ClientId::new(format!("bench-client-{c}")).expect("a short client id")
}

/// Every submission of `k` clients replaying the whole trace, each in its own
/// region (region c after regions 0..c, regions separated by one
/// `SEPARATOR`), submitted round-robin. Client c's op i is made at the
/// version right after its own op i-1 was committed, so the other k-1
/// clients' latest ops are concurrent with it; its delta is expressed in the
/// document as it was at that base.
///
/// Op i of client c is the `i*k + c`-th commit (0-based), so version `v`
/// holds the ops with global index below `v`. At base `(i-1)*k + c + 1`,
/// clients 0..=c have applied i patches and clients c+1..k have applied i-1.
fn sequencer_submissions(trace: &Trace, k: usize) -> Vec<Submission> {
    let n = trace.patches.len();
    let ids: Vec<(UserId, ClientId)> = (0..k).map(|c| (user(c), client_id(c))).collect();
    let mut subs = Vec::with_capacity(n * k);
    for (i, p) in trace.patches.iter().enumerate() {
        let here = trace.lens[i];
        let before = if i == 0 { 0 } else { trace.lens[i - 1] };
        for (c, (user, client_id)) in ids.iter().enumerate() {
            let base = if i == 0 {
                0
            } else {
                ((i - 1) * k + c + 1) as u64
            };
            let offset = c * (here + 1);
            let doc_len = (c + 1) * here + (k - c - 1) * before + (k - 1);
            subs.push(Submission {
                user: *user,
                client_id: client_id.clone(),
                seq: Seq::new(i as u64 + 1).unwrap(),
                base: Version::new(base).unwrap(),
                delta: patch_delta(p, offset, doc_len),
            });
        }
    }
    subs
}

fn sequencer_config() -> SequencerConfig {
    SequencerConfig {
        max_history: 64,
        max_document_chars: usize::MAX / 2,
        ..SequencerConfig::default()
    }
}

fn check_sequencer(
    trace: &Trace,
    k: usize,
    (mut seq, not_new, _subs): (Sequencer, usize, Vec<Submission>),
) {
    assert_eq!(
        not_new, 0,
        "Sequencer K={k} on {}: {not_new} proposals were not Proposed::New",
        trace.name
    );
    let ops = (k * trace.patches.len()) as u64;
    assert_eq!(
        seq.version(),
        Version::new(ops).unwrap(),
        "Sequencer K={k} on {}: wrong final version",
        trace.name
    );
    let expected = vec![trace.end.as_str(); k].join(&SEPARATOR.to_string());
    if seq.document().text() != expected {
        panic!(
            "CHECKSUM MISMATCH: Sequencer K={k} on {}: the regions are not {k} copies of endContent",
            trace.name
        );
    }
    // Drop the separators (one more op, untimed) and check the spec'd form.
    let end_len = trace.end.chars().count();
    let mut cleanup = Delta::new();
    for _ in 1..k {
        cleanup.retain(end_len).delete(1);
    }
    let sub = Submission {
        user: user(k),
        client_id: client_id(k),
        seq: Seq::from(1),
        base: seq.version(),
        delta: cleanup,
    };
    match seq.propose(&sub) {
        Ok(Proposed::New(v)) => {
            seq.commit(v, Timestamp::from_millis(0));
        }
        other => panic!("Sequencer K={k}: the cleanup op was refused: {other:?}"),
    }
    if seq.document().text() != trace.end.repeat(k) {
        panic!(
            "CHECKSUM MISMATCH: Sequencer K={k} on {}: text is not endContent x{k}",
            trace.name
        );
    }
}

fn bench_sequencer(trace: &Trace, k: usize, runs: usize) -> Stats {
    let start_text: String = std::iter::repeat_n(SEPARATOR, k - 1).collect();
    measure(
        runs,
        || {
            let seq = Sequencer::new(
                Document::from_text(&start_text, Version::ZERO),
                sequencer_config(),
            );
            (seq, sequencer_submissions(trace, k))
        },
        |(mut seq, subs)| {
            let now = Timestamp::from_millis(0);
            let mut not_new = 0;
            for sub in &subs {
                match seq.propose(sub) {
                    Ok(Proposed::New(v)) => {
                        seq.commit(v, now);
                    }
                    Ok(_) => not_new += 1,
                    Err(e) => panic!("Sequencer K={k} on {}: rejected: {e}", trace.name),
                }
            }
            // The submissions are the clients' memory: freed after timing.
            (seq, not_new, subs)
        },
        |out| check_sequencer(trace, k, out),
    )
}

fn machine_note(runs: usize) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned());
    let profile = if cfg!(debug_assertions) {
        "UNOPTIMISED build (debug assertions on): numbers are meaningless, use cargo bench / --release"
    } else {
        "optimised build (bench/release profile, no debug assertions)"
    };
    format!("machine: nproc={cpus}, {model}; {profile}; {runs} runs per row, wall time")
}

fn row(label: &str, s: Stats, jumprope_min: Duration, ops: Option<usize>) {
    let ratio = s.min.as_secs_f64() / jumprope_min.as_secs_f64();
    let rate = match ops {
        Some(n) => format!(
            "{:>9.3} / {:.3} Mops/s",
            n as f64 / s.min.as_secs_f64() / 1e6,
            n as f64 / s.median.as_secs_f64() / 1e6
        ),
        None => String::new(),
    };
    println!(
        "  {label:<36} {:>10.2} {:>10.2} {ratio:>9.2}x  {rate}",
        ms(s.min),
        ms(s.median)
    );
}

fn main() {
    let opts = parse_args();
    println!("{}", machine_note(opts.runs));
    let names: Vec<&'static str> = TRACES
        .iter()
        .copied()
        .filter(|n| opts.filter.as_deref().is_none_or(|f| n.contains(f)))
        .collect();
    if names.is_empty() {
        println!("no trace matches {:?}", opts.filter);
        return;
    }
    let (present, missing): (Vec<&'static str>, Vec<&'static str>) =
        names.into_iter().partition(|n| trace_path(n).is_some());
    if !missing.is_empty() {
        println!(
            "traces not found (no ../shared/traces beside the checkout): {} - skipped",
            missing.join(", ")
        );
    }
    let traces: Vec<Trace> = present.into_iter().map(load).collect();
    for trace in &traces {
        let n = trace.patches.len();
        println!();
        println!(
            "{}: {n} patches, {} chars at the end",
            trace.name,
            trace.end.chars().count()
        );
        println!(
            "  {:<36} {:>10} {:>10} {:>10}  ops/s (min / median)",
            "variant", "min ms", "median ms", "min/JR"
        );
        let jr = bench_jumprope(trace, opts.runs);
        let jr_buf = bench_jumprope_buf(trace, opts.runs);
        let ropey = bench_ropey(trace, opts.runs);
        let doc_a = bench_document_prebuilt(trace, opts.runs);
        let doc_b = bench_document_build(trace, opts.runs);
        let jr_deltas = bench_jumprope_buf_from_deltas(trace, opts.runs);
        row("JumpRope (remove+insert)", jr, jr.min, Some(n));
        row("JumpRopeBuf", jr_buf, jr.min, Some(n));
        row("ropey::Rope", ropey, jr.min, Some(n));
        row("Document::apply (a) prebuilt", doc_a, jr.min, Some(n));
        row("Document::apply (b) built in loop", doc_b, jr.min, Some(n));
        row(
            "(diag) JumpRopeBuf fed (a)'s deltas",
            jr_deltas,
            jr.min,
            Some(n),
        );
        for k in CLIENTS {
            let s = bench_sequencer(trace, k, opts.runs);
            row(
                &format!("Sequencer K={k} propose+commit"),
                s,
                jr.min,
                Some(k * n),
            );
        }
        println!(
            "  (a)/JumpRopeBuf {:.2}x, (b)/JumpRopeBuf {:.2}x (min/min)",
            doc_a.min.as_secs_f64() / jr_buf.min.as_secs_f64(),
            doc_b.min.as_secs_f64() / jr_buf.min.as_secs_f64()
        );
    }
}
