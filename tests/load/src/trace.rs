//! Real editing traces (github.com/josephg/editing-traces, CC BY 4.0) and
//! how an editor replays a slice of one inside its own region of a shared
//! document.
//!
//! A trace's positions are absolute in the author's document, which is not
//! the document the editors share. So an editor replays the trace's
//! *movements*: the caret moves by as much as it moved in the trace between
//! two patches, and deletes and inserts what the trace does, clamped to the
//! editor's region. Typing runs stay typing runs, backspaces stay
//! backspaces, pastes stay pastes; a jump farther than the region goes to
//! its edge.

use anyhow::{Context, bail};
use relay_domain::Delta;
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One patch: at `pos` (code points) delete `del`, then insert `ins`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    pub pos: usize,
    pub del: usize,
    pub ins: String,
}

/// A loaded trace: its patches in order.
#[derive(Clone, Debug)]
pub struct Trace {
    pub name: String,
    pub patches: Vec<Patch>,
}

#[derive(Deserialize)]
struct File {
    txns: Vec<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    patches: Vec<(u64, u64, String)>,
}

/// Positions and counts beyond this are not real editing (the wire bound is
/// 2^53 - 1; a trace's documents are megabytes at most).
const MAX_TRACE_NUMBER: u64 = 1 << 40;

/// The traces beside the checkout, when present.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces/sequential_traces")
}

/// The small trace shipped in the repository (CC BY 4.0, see
/// `domain/benches/traces/README.md`).
pub fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../domain/benches/traces/friendsforever_flat.json.gz")
}

/// Where a trace named `spec` is: a path, or a name looked up in the shared
/// traces (ASCII copy first), falling back to the shipped trace when the
/// shared folder is absent. Returns the path and whether it fell back.
pub fn locate(spec: Option<&str>) -> anyhow::Result<(PathBuf, bool)> {
    locate_in(&shared_dir(), spec)
}

/// [`locate`] with the shared traces in `shared`.
pub fn locate_in(shared: &Path, spec: Option<&str>) -> anyhow::Result<(PathBuf, bool)> {
    let name = match spec {
        Some(s) if s.contains('/') || s.ends_with(".gz") || s.ends_with(".json") => {
            let p = PathBuf::from(s);
            if !p.exists() {
                bail!("trace file {} does not exist", p.display());
            }
            return Ok((p, false));
        }
        Some(s) => s.to_owned(),
        None => "automerge-paper".to_owned(),
    };
    for dir in [shared.join("ascii_only"), shared.to_owned()] {
        let p = dir.join(format!("{name}.json.gz"));
        if p.exists() {
            return Ok((p, false));
        }
    }
    let shipped = shipped();
    if shipped.exists() {
        return Ok((shipped, true));
    }
    bail!(
        "trace {name} not found in {} and no shipped trace",
        shared.display()
    )
}

/// Reads a trace (`.json.gz` or `.json`).
pub fn load(path: &Path) -> anyhow::Result<Trace> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut json = String::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut json)
            .with_context(|| format!("gunzipping {}", path.display()))?;
    } else {
        json = String::from_utf8(bytes).context("trace is not UTF-8")?;
    }
    let file: File =
        serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))?;
    let mut patches = Vec::new();
    for txn in file.txns {
        for (pos, del, ins) in txn.patches {
            if pos > MAX_TRACE_NUMBER || del > MAX_TRACE_NUMBER {
                bail!(
                    "trace {} has a patch at {pos} deleting {del}: out of range",
                    path.display()
                );
            }
            patches.push(Patch {
                pos: pos as usize,
                del: del as usize,
                ins,
            });
        }
    }
    if patches.is_empty() {
        bail!("trace {} has no patches", path.display());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("trace")
        .trim_end_matches(".gz")
        .trim_end_matches(".json")
        .to_owned();
    Ok(Trace { name, patches })
}

/// An editor's place in a trace and in its region of the document.
#[derive(Clone, Debug)]
pub struct Replay {
    next: usize,
    /// The caret in the trace after the previous patch.
    trace_caret: usize,
    /// The caret within the region.
    caret: usize,
}

/// An edit to make: the delta over the whole local document, and where the
/// region and caret are after it.
#[derive(Clone, Debug)]
pub struct Edit {
    pub delta: Delta,
    pub region_len: usize,
    /// The caret after the edit, relative to the region's start.
    pub caret: usize,
}

impl Replay {
    /// Starts at patch `start` (wrapping).
    pub fn new(trace: &Trace, start: usize) -> Replay {
        let next = start % trace.patches.len();
        let trace_caret = trace.patches[next].pos;
        Replay {
            next,
            trace_caret,
            caret: 0,
        }
    }

    /// The next patch as an edit of the region `[region_start,
    /// region_start + region_len)` of a document of `doc_len` characters.
    /// The delta always applies: every position is clamped to the region
    /// and the region to the document. Inserts larger than `max_insert`
    /// characters are cut to it.
    pub fn next_edit(
        &mut self,
        trace: &Trace,
        region_start: usize,
        region_len: usize,
        doc_len: usize,
        max_insert: usize,
    ) -> Edit {
        let p = &trace.patches[self.next];
        self.next = (self.next + 1) % trace.patches.len();
        let region_start = region_start.min(doc_len);
        let region_len = region_len.min(doc_len - region_start);
        // Move the caret as the trace's caret moved.
        let caret = if p.pos >= self.trace_caret {
            self.caret.saturating_add(p.pos - self.trace_caret)
        } else {
            self.caret.saturating_sub(self.trace_caret - p.pos)
        }
        .min(region_len);
        let del = p.del.min(region_len - caret);
        let ins: String = if p.ins.chars().count() > max_insert {
            p.ins.chars().take(max_insert).collect()
        } else {
            p.ins.clone()
        };
        let ins_len = ins.chars().count();
        self.trace_caret = p.pos.saturating_add(p.ins.chars().count());
        self.caret = caret + ins_len;
        let mut delta = Delta::new();
        delta.retain(region_start + caret);
        if del > 0 {
            delta.delete(del);
        }
        if !ins.is_empty() {
            delta.insert(&ins);
        }
        let delta = delta
            .fit(doc_len)
            .expect("every position was clamped to the document");
        Edit {
            delta,
            region_len: region_len - del + ins_len,
            caret: self.caret,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trace(patches: Vec<(usize, usize, &str)>) -> Trace {
        Trace {
            name: "t".into(),
            patches: patches
                .into_iter()
                .map(|(pos, del, ins)| Patch {
                    pos,
                    del,
                    ins: ins.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn typing_and_backspace_replay_inside_the_region() {
        // Type "abc" at 100, backspace once, type "d".
        let t = trace(vec![
            (100, 0, "a"),
            (101, 0, "b"),
            (102, 0, "c"),
            (102, 1, ""),
            (102, 0, "d"),
        ]);
        let mut r = Replay::new(&t, 0);
        // Region at 5..5 of "0123456789".
        let mut text = "0123456789".to_owned();
        let (start, mut len) = (5, 0);
        for _ in 0..5 {
            let e = r.next_edit(&t, start, len, text.chars().count(), 64);
            text = e.delta.apply_to_str(&text).unwrap();
            len = e.region_len;
        }
        assert_eq!(text, "01234abd56789");
        assert_eq!(len, 3);
    }

    #[test]
    fn without_the_shared_traces_the_shipped_one_is_used() {
        let nowhere = Path::new("/nonexistent/relay-load-traces");
        let (p, fell_back) = locate_in(nowhere, None).unwrap();
        assert!(fell_back);
        assert_eq!(p, shipped());
        let (p, fell_back) = locate_in(nowhere, Some("seph-blog1")).unwrap();
        assert!(fell_back && p == shipped());
        assert!(locate_in(nowhere, Some("/nonexistent/x.json.gz")).is_err());
        assert!(!load(&p).unwrap().patches.is_empty());
    }

    #[test]
    fn the_shipped_trace_loads() {
        let (path, _) = locate(Some(shipped().to_str().unwrap())).unwrap();
        let t = load(&path).unwrap();
        assert!(t.patches.len() > 20_000, "{}", t.patches.len());
    }

    proptest! {
        /// Whatever the trace says (huge positions and counts included) and
        /// wherever the region is, the edit applies to the document and the
        /// region stays inside it.
        #[test]
        fn every_edit_applies(
            patches in proptest::collection::vec(
                (prop_oneof![0usize..50, Just(usize::MAX >> 12), any::<u32>().prop_map(|x| x as usize)],
                 prop_oneof![0usize..5, Just(usize::MAX >> 12)],
                 "[a-z]{0,4}"),
                1..30),
            text in "[a-z]{0,30}",
            start in prop_oneof![0usize..40, Just(usize::MAX)],
            len in prop_oneof![0usize..40, Just(usize::MAX)],
        ) {
            let t = Trace { name: "p".into(), patches: patches.into_iter().map(|(pos, del, ins)| Patch { pos, del, ins }).collect() };
            let mut r = Replay::new(&t, 0);
            let mut text = text;
            let (mut start, mut len) = (start, len);
            for _ in 0..t.patches.len() {
                let doc_len = text.chars().count();
                let e = r.next_edit(&t, start, len, doc_len, 3);
                text = e.delta.apply_to_str(&text).unwrap();
                start = start.min(doc_len);
                len = e.region_len;
                prop_assert!(start + len <= text.chars().count());
                prop_assert!(e.caret <= len);
            }
        }
    }
}
