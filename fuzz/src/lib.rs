//! Helpers shared by the fuzz targets: a naive reference model of a
//! formatted document, the small alphabets the structured inputs draw from,
//! and checks of what the domain hands out (the normal form of a delta is
//! the domain's `testing::assert_normal`).

use arbitrary::Arbitrary;
use relay_domain::ids::MAX_WIRE_INT;
use relay_domain::{Attributes, Component, Delta, Document};
use serde_json::{Map as JsonMap, Value, json};
use std::collections::BTreeMap;

/// Characters texts are made of: ASCII, a newline, two BMP characters of
/// two and three UTF-8 bytes, and two outside the BMP (four bytes, a
/// surrogate pair in JavaScript).
pub const ALPHABET: &[char] = &['a', 'b', ' ', '\n', 'é', '中', '🙂', '𝄞'];
/// Attribute names.
pub const KEYS: &[&str] = &["bold", "italic", "color"];

/// An attribute value; `null` removes on a retain, and on an insert formats
/// nothing but is kept (as quill-delta keeps it).
pub fn value(i: u8) -> Value {
    match i % 5 {
        0 => json!(true),
        1 => json!(false),
        2 => json!("red"),
        3 => json!("blue"),
        _ => Value::Null,
    }
}

/// Attributes of one character in the model (a `null` value stays when an
/// insert carried it).
pub type Attrs = BTreeMap<String, Value>;

/// The reference document: one entry per character.
pub type Model = Vec<(char, Attrs)>;

/// A text drawn from [`ALPHABET`], at most 12 characters.
#[derive(Arbitrary, Debug, Clone)]
pub struct Text(pub Vec<u8>);

impl Text {
    pub fn string(&self) -> String {
        self.0
            .iter()
            .take(12)
            .map(|&i| ALPHABET[usize::from(i) % ALPHABET.len()])
            .collect()
    }
}

/// A change set drawn from [`KEYS`] and [`value`], at most 4 entries (the
/// last one wins for a repeated key, as in a JSON object).
#[derive(Arbitrary, Debug, Clone)]
pub struct AttrChoice(pub Vec<(u8, u8)>);

impl AttrChoice {
    pub fn map(&self) -> BTreeMap<String, Value> {
        self.0
            .iter()
            .take(4)
            .map(|&(k, v)| (KEYS[usize::from(k) % KEYS.len()].to_owned(), value(v)))
            .collect()
    }
}

/// One step of a delta as a test describes it.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    Retain(u8, Option<AttrChoice>),
    Insert(Text, Option<AttrChoice>),
    Delete(u8),
}

/// A wire length, biased to the edges of the bounds.
#[derive(Arbitrary, Debug)]
pub enum Len {
    Small(u8),
    Max,
    BelowMax(u16),
    TwoToThe53,
    AboveMax(u16),
    U32Max,
    U64Max,
    Any(u64),
}

impl Len {
    pub fn get(&self) -> u64 {
        match self {
            Len::Small(n) => u64::from(*n),
            Len::Max => MAX_WIRE_INT,
            Len::BelowMax(n) => MAX_WIRE_INT - u64::from(*n),
            Len::TwoToThe53 => 1 << 53,
            Len::AboveMax(n) => MAX_WIRE_INT + 1 + u64::from(*n),
            Len::U32Max => u64::from(u32::MAX),
            Len::U64Max => u64::MAX,
            Len::Any(n) => *n,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Raw {
    Retain(Len, Option<AttrChoice>),
    Insert(Text, Option<AttrChoice>),
    Delete(Len),
}

/// Raw components as a wire delta (at most 8), lengths as they are.
pub fn raw_wire(raw: &[Raw]) -> Value {
    let attrs = |a: &Option<AttrChoice>, m: &mut JsonMap<String, Value>| {
        if let Some(a) = a {
            m.insert(
                "attributes".into(),
                Value::Object(a.map().into_iter().collect()),
            );
        }
    };
    Value::Array(
        raw.iter()
            .take(8)
            .map(|r| {
                let mut m = JsonMap::new();
                match r {
                    Raw::Retain(n, a) => {
                        m.insert("retain".into(), json!(n.get()));
                        attrs(a, &mut m);
                    }
                    Raw::Insert(t, a) => {
                        m.insert("insert".into(), json!(t.string()));
                        attrs(a, &mut m);
                    }
                    Raw::Delete(n) => {
                        m.insert("delete".into(), json!(n.get()));
                    }
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// A step with its lengths decided. `attributes: None` writes no
/// `attributes` key on the wire; `Some` of an empty map writes `{}`.
#[derive(Debug, Clone, PartialEq)]
pub enum MStep {
    Retain(usize, Option<BTreeMap<String, Value>>),
    Insert(String, Option<BTreeMap<String, Value>>),
    Delete(usize),
}

/// Decides the steps' lengths. With `clamp`, retains and deletes are cut
/// to what is left of a document of `doc_len` characters (so the delta
/// applies once fitted); without it they are taken as they come (0 to 255)
/// and may span more than the document. Zero lengths and empty texts are
/// dropped, so every step is a valid wire component.
pub fn decide(steps: &[Step], doc_len: usize, clamp: bool, max_steps: usize) -> Vec<MStep> {
    let mut left = doc_len;
    let mut out = Vec::new();
    for s in steps.iter().take(max_steps) {
        let mut length = |n: u8| {
            let n = usize::from(n);
            let n = if clamp { n % (left + 1) } else { n };
            left = left.saturating_sub(n);
            n
        };
        match s {
            Step::Retain(n, a) => {
                let n = length(*n);
                if n > 0 {
                    out.push(MStep::Retain(n, a.as_ref().map(AttrChoice::map)));
                }
            }
            Step::Delete(n) => {
                let n = length(*n);
                if n > 0 {
                    out.push(MStep::Delete(n));
                }
            }
            Step::Insert(t, a) => {
                let text = t.string();
                if !text.is_empty() {
                    out.push(MStep::Insert(text, a.as_ref().map(AttrChoice::map)));
                }
            }
        }
    }
    out
}

/// The attributes Relay's builder takes for a map.
pub fn attributes(map: &BTreeMap<String, Value>) -> Attributes {
    map.iter()
        .fold(Attributes::new(), |a, (k, v)| a.with(k.clone(), v.clone()))
}

/// The delta of the steps, through Relay's normalising builder (not
/// fitted: its base length is what the steps span).
pub fn build(steps: &[MStep]) -> Delta {
    let mut d = Delta::new();
    let none = BTreeMap::new();
    for s in steps {
        match s {
            MStep::Retain(n, a) => d.retain_with(*n, attributes(a.as_ref().unwrap_or(&none))),
            MStep::Insert(t, a) => d.insert_with(t, attributes(a.as_ref().unwrap_or(&none))),
            MStep::Delete(n) => d.delete(*n),
        };
    }
    d
}

/// The steps as a wire delta, written as they are (not normalised).
pub fn wire(steps: &[MStep]) -> Value {
    let obj = |k: &str, v: Value, a: &Option<BTreeMap<String, Value>>| {
        let mut m = JsonMap::new();
        m.insert(k.to_owned(), v);
        if let Some(a) = a {
            m.insert(
                "attributes".to_owned(),
                Value::Object(a.clone().into_iter().collect()),
            );
        }
        Value::Object(m)
    };
    Value::Array(
        steps
            .iter()
            .map(|s| match s {
                MStep::Retain(n, a) => obj("retain", json!(n), a),
                MStep::Insert(t, a) => obj("insert", json!(t), a),
                MStep::Delete(n) => obj("delete", json!(n), &None),
            })
            .collect(),
    )
}

/// Whether the steps hold a delete directly followed by an insert (the
/// form the wire refuses).
pub fn has_delete_then_insert(steps: &[MStep]) -> bool {
    steps
        .windows(2)
        .any(|w| matches!((&w[0], &w[1]), (MStep::Delete(_), MStep::Insert(..))))
}

fn changed(mut old: Attrs, change: &BTreeMap<String, Value>) -> Attrs {
    for (k, v) in change {
        if v.is_null() {
            old.remove(k);
        } else {
            old.insert(k.clone(), v.clone());
        }
    }
    old
}

/// The formatting an insert gives its text: its map as it is, `null`s
/// included (quill-delta keeps them).
fn formatting(map: &BTreeMap<String, Value>) -> Attrs {
    map.clone()
}

/// The model after the steps, or `None` if they span more than it holds.
/// What the steps leave unspanned is retained.
pub fn model_apply_steps(m: &Model, steps: &[MStep]) -> Option<Model> {
    let none = BTreeMap::new();
    let mut out = Vec::with_capacity(m.len());
    let mut at = 0usize;
    for s in steps {
        match s {
            MStep::Retain(n, a) => {
                let a = a.as_ref().unwrap_or(&none);
                for (c, old) in m.get(at..at.checked_add(*n)?)? {
                    out.push((*c, changed(old.clone(), a)));
                }
                at += n;
            }
            MStep::Insert(t, a) => {
                let f = formatting(a.as_ref().unwrap_or(&none));
                out.extend(t.chars().map(|c| (c, f.clone())));
            }
            MStep::Delete(n) => {
                m.get(at..at.checked_add(*n)?)?;
                at += n;
            }
        }
    }
    out.extend_from_slice(&m[at..]);
    Some(out)
}

fn attrs_of(a: &Attributes) -> BTreeMap<String, Value> {
    a.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect()
}

/// The model after one of Relay's deltas, walked component by component
/// (what follows the components is retained). Panics if the delta does not
/// span the model exactly.
pub fn model_apply(m: &Model, d: &Delta) -> Model {
    assert_eq!(d.base_len(), m.len(), "delta does not span the model");
    let mut out = Vec::with_capacity(d.target_len());
    let mut at = 0usize;
    for c in d.components() {
        match c {
            Component::Retain { len, attributes } => {
                let a = attrs_of(attributes);
                for (ch, old) in &m[at..at + len] {
                    out.push((*ch, changed(old.clone(), &a)));
                }
                at += len;
            }
            Component::Insert { text, attributes } => {
                let f = formatting(&attrs_of(attributes));
                out.extend(text.chars().map(|ch| (ch, f.clone())));
            }
            Component::Delete { len } => at += len,
        }
    }
    out.extend_from_slice(&m[at..]);
    assert_eq!(out.len(), d.target_len(), "target length");
    out
}

/// The model of a document made of formatted inserts.
pub fn model_of_content(pieces: &[(String, BTreeMap<String, Value>)]) -> Model {
    pieces
        .iter()
        .flat_map(|(t, a)| {
            let f = formatting(a);
            t.chars().map(move |c| (c, f.clone()))
        })
        .collect()
}

/// The document as the model: its content delta read character by
/// character.
pub fn doc_model(doc: &Document) -> Model {
    let mut out = Vec::with_capacity(doc.len());
    for c in doc.to_delta().components() {
        match c {
            Component::Insert { text, attributes } => {
                let a = attrs_of(attributes);
                out.extend(text.chars().map(|ch| (ch, a.clone())));
            }
            other => panic!("document content holds a non-insert: {other:?}"),
        }
    }
    out
}

/// Number of maximal stretches of equal formatting.
pub fn run_count(m: &Model) -> usize {
    (0..m.len())
        .filter(|&i| i == 0 || m[i].1 != m[i - 1].1)
        .count()
}

/// Asserts that `doc` holds exactly the model: text, per-character
/// formatting, and runs merged as far as they go.
pub fn assert_doc(doc: &Document, m: &Model, what: &str) {
    assert_eq!(doc.len(), m.len(), "{what}: length");
    let text: String = m.iter().map(|(c, _)| *c).collect();
    assert_eq!(doc.text(), text, "{what}: text");
    assert_eq!(doc_model(doc), *m, "{what}: formatting");
    assert_eq!(doc.run_count(), run_count(m), "{what}: run count");
    assert_eq!(
        doc.to_delta().components().len(),
        run_count(m),
        "{what}: content delta components"
    );
}

/// Asserts that the wire form parses back to the same delta (once fitted
/// to its base length again). Only for deltas within the wire's bounds.
pub fn assert_wire_round_trip(d: &Delta, what: &str) {
    let v = serde_json::to_value(d).expect("a delta serialises");
    let back = Delta::from_json(&v)
        .unwrap_or_else(|e| panic!("{what}: own wire form {v} refused: {e}"));
    let back = back
        .fit(d.base_len())
        .unwrap_or_else(|e| panic!("{what}: own wire form {v} does not fit: {e}"));
    assert_eq!(&back, d, "{what}: wire round trip of {v}");
    let text = serde_json::to_string(d).expect("a delta serialises");
    let back: Delta = serde_json::from_str(&text).expect("Deserialize agrees with from_json");
    let back = back.fit(d.base_len()).expect("fits as the value did");
    assert_eq!(back, *d, "{what}: serde round trip through {text}");
}

/// Asserts `transform_position` maps `0..=base_len` into `0..=target_len`
/// without reordering (checked on every position of a small delta).
pub fn assert_positions(d: &Delta, what: &str) {
    use relay_domain::Bias;
    if d.base_len() > 512 {
        return;
    }
    for bias in [Bias::Before, Bias::After] {
        let mut last = 0;
        for p in 0..=d.base_len() {
            let q = d.transform_position(p, bias);
            assert!(q <= d.target_len(), "{what}: position {p} -> {q} past the end");
            assert!(q >= last, "{what}: positions reordered at {p}");
            last = q;
        }
        assert_eq!(d.transform_position(usize::MAX, bias), last, "{what}: clamp");
    }
}
