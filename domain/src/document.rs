//! The document: text in a rope, formatting as runs, and a version.
//!
//! The text lives in [`jumprope::JumpRopeBuf`], chosen by measurement on the
//! recorded traces (docs/performance.md): it replays automerge-paper about
//! 3x faster than plain `JumpRope` and 10x faster than ropey, because it
//! merges neighbouring edits before touching the skip list. Formatting is
//! kept beside it as runs - (length, attributes) pairs covering the text -
//! so unformatted text costs one run, whatever its length.

use crate::attributes::Attributes;
use crate::delta::{Component, Delta, DeltaError};
use crate::ids::Version;
use crate::json_size;
use jumprope::JumpRopeBuf;
use std::collections::HashMap;
use std::fmt;

/// A stretch of characters with the same formatting.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    len: usize,
    attributes: Attributes,
}

/// Runs covering a text: no empty run, no two neighbours alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Runs(Vec<Run>);

/// Bytes a run adds to the content's JSON besides its text:
/// `{"insert":""}`, `,"attributes":{...}` when formatted, and a comma.
fn run_json_overhead(attributes: &Attributes, json_len: impl FnOnce() -> usize) -> usize {
    if attributes.is_empty() {
        json_size::RUN
    } else {
        json_size::FORMATTED_RUN + json_len()
    }
}

impl Runs {
    fn push(&mut self, len: usize, attributes: Attributes) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.0.last_mut()
            && last.attributes == attributes
        {
            last.len += len;
            return;
        }
        self.0.push(Run { len, attributes });
    }

    fn is_plain(&self) -> bool {
        self.0.iter().all(|r| r.attributes.is_empty())
    }

    /// Calls `f(len, attributes)` for the runs covering `start..start+len`.
    fn for_each_in(&self, start: usize, len: usize, mut f: impl FnMut(usize, &Attributes)) {
        let end = start + len;
        let mut at = 0;
        for r in &self.0 {
            let (lo, hi) = (at.max(start), (at + r.len).min(end));
            if lo < hi {
                f(hi - lo, &r.attributes);
            }
            at += r.len;
            if at >= end {
                break;
            }
        }
    }

    /// The runs after `delta` (already checked to span them) applies.
    ///
    /// A formatting retain over many runs composes each run's map with its
    /// change once per distinct map, not once per run: runs that shared a
    /// map before share the composed one after, and the composed maps share
    /// their values (see [`Attributes`]). Memory stays proportional to the
    /// distinct formatting, however many runs one retain covers.
    fn apply(&self, delta: &Delta) -> Runs {
        let mut out = Runs(Vec::with_capacity(self.0.len() + 2));
        let mut at = 0;
        let mut composed: HashMap<usize, Attributes> = HashMap::new();
        for c in delta.components() {
            match c {
                Component::Retain { len, attributes } if attributes.is_empty() => {
                    self.for_each_in(at, *len, |n, a| out.push(n, a.clone()));
                    at += len;
                }
                Component::Retain { len, attributes } => {
                    composed.clear();
                    self.for_each_in(at, *len, |n, a| {
                        let c = composed
                            .entry(a.identity())
                            .or_insert_with(|| a.compose(attributes, false));
                        out.push(n, c.clone());
                    });
                    at += len;
                }
                Component::Insert { text, attributes } => {
                    out.push(text.chars().count(), attributes.clone());
                }
                Component::Delete { len } => at += len,
            }
        }
        // The implicit trailing retain.
        let total: usize = self.0.iter().map(|r| r.len).sum();
        self.for_each_in(at, total - at, |n, a| out.push(n, a.clone()));
        out
    }
}

/// A text document at a version.
pub struct Document {
    text: JumpRopeBuf,
    runs: Runs,
    /// The runs' share of the content's JSON size (see
    /// [`Document::content_json_bound`]).
    runs_json: usize,
    /// See [`Document::set_tight_above`].
    tight_above: usize,
    /// The largest formatting of a run, as JSON.
    largest_run_json: usize,
    version: Version,
}

impl Document {
    /// The empty document at version 0.
    pub fn new() -> Self {
        Document {
            text: JumpRopeBuf::new(),
            runs: Runs::default(),
            runs_json: 0,
            tight_above: usize::MAX,
            largest_run_json: 0,
            version: Version::ZERO,
        }
    }

    /// A document from its content (a delta of inserts only, as in
    /// `joined.content` or a snapshot) at `version`.
    pub fn from_content(content: &Delta, version: Version) -> Result<Self, DeltaError> {
        let mut doc = Document::new();
        for (index, c) in content.components().iter().enumerate() {
            if !matches!(c, Component::Insert { .. }) {
                return Err(DeltaError::MalformedComponent {
                    index,
                    reason: crate::delta::MalformedReason::NotContent,
                });
            }
        }
        content.check_base(0)?;
        doc.apply(content)?;
        doc.version = version;
        Ok(doc)
    }

    /// A plain-text document at `version`.
    pub fn from_text(text: &str, version: Version) -> Self {
        let mut doc = Document::new();
        let n = text.chars().count();
        doc.text.insert(0, text);
        doc.runs.push(n, Attributes::new());
        doc.update_runs_json();
        doc.version = version;
        doc
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Length in characters.
    pub fn len(&self) -> usize {
        self.text.len_chars()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `delta` as the next version. A delta that does not span the
    /// document is refused and the document is left as it was.
    pub fn apply(&mut self, delta: &Delta) -> Result<(), DeltaError> {
        delta.check_base(self.len())?;
        if delta.has_attributes() || !self.runs.is_plain() || self.runs.0.len() > 1 {
            self.runs = self.runs.apply(delta);
        } else {
            // Unformatted text stays one run: skip the walk.
            self.runs.0.clear();
            self.runs.push(delta.target_len(), Attributes::new());
        }
        self.update_runs_json();
        let comps = delta.components();
        let mut pos = 0;
        let mut i = 0;
        while i < comps.len() {
            match &comps[i] {
                Component::Retain { len, .. } => pos += len,
                Component::Delete { len } => self.text.remove(pos..pos + len),
                Component::Insert { text, .. } => {
                    // Normalised deltas put an insert before its delete;
                    // deleting first lets the rope's buffer merge the edits.
                    if let Some(Component::Delete { len }) = comps.get(i + 1) {
                        self.text.remove(pos..pos + len);
                        i += 1;
                    }
                    self.text.insert(pos, text);
                    pos += text.chars().count();
                }
            }
            i += 1;
        }
        // Versions are assigned by the sequencer, which never proposes past
        // 2^53 - 1; a client's local document counts its own edits too and
        // may stop counting there.
        self.version = self.version.next().unwrap_or(Version::MAX);
        Ok(())
    }

    /// The content as a delta of inserts (for `joined.content` and
    /// snapshots).
    pub fn to_delta(&self) -> Delta {
        self.slice(0, self.len())
    }

    /// Characters `start..start+len` as a delta of inserts with their
    /// formatting. The range is clamped to the document.
    pub fn slice(&self, start: usize, len: usize) -> Delta {
        let start = start.min(self.len());
        let len = len.min(self.len() - start);
        let mut out = Delta::new();
        let rope = self.text.borrow();
        let mut at = start;
        let mut buf = String::new();
        self.runs.for_each_in(start, len, |n, attributes| {
            buf.clear();
            for s in rope.slice_substrings(at..at + n) {
                buf.push_str(s);
            }
            out.insert_with(&buf, attributes.clone());
            at += n;
        });
        out
    }

    /// The text without formatting.
    pub fn text(&self) -> String {
        self.text.to_string()
    }

    /// Number of formatting runs (1 for unformatted text).
    pub fn run_count(&self) -> usize {
        self.runs.0.len()
    }

    /// Length in UTF-8 bytes (a lower bound of the content's JSON size).
    pub fn len_bytes(&self) -> usize {
        self.text.len_bytes()
    }

    /// Runs covering characters `start..start+len`.
    pub fn runs_in(&self, start: usize, len: usize) -> usize {
        let mut n = 0;
        self.runs.for_each_in(start, len, |_, _| n += 1);
        n
    }

    /// An upper bound of [`Document::to_delta`]'s size as JSON (what
    /// `joined.content` holds): the runs' exact overhead (kept as the
    /// formatting changes) plus the text at most 9 bytes a character (4 of
    /// UTF-8 and 5 more for a character JSON escapes as `\u00XX`), or, past
    /// that, its UTF-8 length plus 5 a character.
    pub fn content_json_bound(&self) -> usize {
        let chars = self.len();
        let quick =
            json_size::BRACKETS + self.runs_json + chars.saturating_mul(json_size::MAX_CHAR);
        if quick <= self.tight_above {
            return quick;
        }
        // Rarely needed (near a limit), and it may flush the rope's buffer.
        json_size::BRACKETS
            + self.runs_json
            + self.text.len_bytes()
            + chars.saturating_mul(json_size::ESCAPE_EXTRA)
    }

    /// Below this, [`Document::content_json_bound`] need not be tight.
    pub fn set_tight_above(&mut self, bytes: usize) {
        self.tight_above = bytes;
    }

    /// The largest formatting of a run, as JSON (0 for unformatted text).
    pub fn largest_run_json(&self) -> usize {
        self.largest_run_json
    }

    fn update_runs_json(&mut self) {
        let mut memo: HashMap<usize, usize> = HashMap::new();
        let mut largest = 0;
        self.runs_json = self
            .runs
            .0
            .iter()
            .map(|r| {
                run_json_overhead(&r.attributes, || {
                    let n = *memo
                        .entry(r.attributes.identity())
                        .or_insert_with(|| r.attributes.json_len());
                    largest = largest.max(n);
                    n
                })
            })
            .sum();
        self.largest_run_json = largest;
    }
}

impl Default for Document {
    fn default() -> Self {
        Document::new()
    }
}

impl Clone for Document {
    fn clone(&self) -> Self {
        Document {
            text: self.text.clone(),
            runs: self.runs.clone(),
            runs_json: self.runs_json,
            tight_above: self.tight_above,
            largest_run_json: self.largest_run_json,
            version: self.version,
        }
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("version", &self.version)
            .field("len", &self.len())
            .field("runs", &self.runs.0.len())
            .finish()
    }
}

/// Two documents are equal when they hold the same text with the same
/// formatting at the same version.
impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.runs == other.runs && self.text == other.text
    }
}

impl Delta {
    /// The delta that undoes `self`, given the document `self` was applied
    /// to (its deleted text and previous formatting come from there).
    pub fn invert(&self, base: &Document) -> Result<Delta, DeltaError> {
        self.check_base(base.len())?;
        let mut out = Delta::with_capacity(self.components().len());
        let mut at = 0;
        for c in self.components() {
            match c {
                Component::Retain { len, attributes } if attributes.is_empty() => {
                    out.retain(*len);
                    at += len;
                }
                Component::Retain { len, attributes } => {
                    base.runs.for_each_in(at, *len, |n, old| {
                        out.retain_with(n, attributes.invert(old));
                    });
                    at += len;
                }
                Component::Insert { text, .. } => {
                    out.delete(text.chars().count());
                }
                Component::Delete { len } => {
                    for c in base.slice(at, *len).components() {
                        out.push(c.clone());
                    }
                    at += len;
                }
            }
        }
        out.retain(base.len() - at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delta(v: serde_json::Value) -> Delta {
        Delta::from_json(&v).unwrap()
    }

    #[test]
    fn applying_advances_the_version_and_edits_text_and_runs() {
        let mut doc = Document::new();
        doc.apply(&delta(json!([{"insert": "Hello world"}])))
            .unwrap();
        doc.apply(
            &delta(json!([{"retain": 6}, {"retain": 5, "attributes": {"bold": true}}]))
                .fit(11)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(doc.version(), Version::from(2));
        assert_eq!(doc.text(), "Hello world");
        assert_eq!(
            serde_json::to_value(doc.to_delta()).unwrap(),
            json!([{"insert": "Hello "}, {"insert": "world", "attributes": {"bold": true}}])
        );
        assert_eq!(doc.run_count(), 2);
    }

    #[test]
    fn a_delta_of_the_wrong_length_leaves_the_document_unchanged() {
        let mut doc = Document::from_text("abc", Version::from(7));
        let before = doc.clone();
        let err = doc.apply(&Delta::identity(4)).unwrap_err();
        assert_eq!(
            err,
            DeltaError::BaseLengthMismatch {
                expected: 3,
                actual: 4
            }
        );
        assert_eq!(doc, before);
    }

    #[test]
    fn replace_deletes_and_inserts_at_one_place() {
        let mut doc = Document::from_text("a🙂c", Version::from(0));
        doc.apply(
            &delta(json!([{"retain": 1}, {"insert": "é"}, {"delete": 1}]))
                .fit(3)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(doc.text(), "aéc");
    }

    #[test]
    fn removing_formatting_merges_runs_back() {
        let mut doc = Document::from_text("abcd", Version::from(0));
        doc.apply(
            &delta(json!([{"retain": 1}, {"retain": 2, "attributes": {"b": 1}}]))
                .fit(4)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(doc.run_count(), 3);
        doc.apply(
            &delta(json!([{"retain": 1}, {"retain": 2, "attributes": {"b": null}}]))
                .fit(4)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(doc.run_count(), 1);
    }

    #[test]
    fn invert_restores_deleted_formatted_text() {
        let doc = Document::from_content(
            &delta(json!([{"insert": "ab"}, {"insert": "cd", "attributes": {"i": true}}])),
            Version::from(3),
        )
        .unwrap();
        let op = delta(
            json!([{"retain": 1}, {"delete": 2}, {"retain": 1, "attributes": {"i": null, "u": 1}}]),
        );
        let inv = op.invert(&doc).unwrap();
        let mut after = doc.clone();
        after.apply(&op).unwrap();
        after.apply(&inv).unwrap();
        assert_eq!(after.to_delta(), doc.to_delta());
    }

    #[test]
    fn content_must_be_inserts_only() {
        assert!(Document::from_content(&delta(json!([{"retain": 1}])), Version::from(1)).is_err());
    }
}
