//! The laws of Relay's OT, checked with proptest.
//!
//! Each property runs 10,000 cases by default. For a long run set
//! `PROPTEST_CASES`, e.g.
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test --release -p relay-domain --test laws
//! ```
//!
//! Documents and deltas are generated from a shrinkable description
//! interpreted against the document's length, with text drawn from ASCII,
//! accented letters, combining marks, CJK, emoji (including a ZWJ sequence)
//! and characters outside the Basic Multilingual Plane, and with formatting.

use proptest::prelude::*;
use relay_domain::{Attributes, Bias, Component, Delta, Document, Side, Version};
use serde_json::{Value, json};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 10_000,
        ..ProptestConfig::default()
    }
}

const PIECES: &[&str] = &[
    "a",
    "b",
    "z",
    " ",
    "\n",
    "é",
    "e\u{301}",
    "中",
    "🙂",
    "𝄞",
    "\u{1F469}\u{200D}\u{1F467}",
];

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 1..4).prop_map(|v| v.concat())
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(true)),
        Just(json!(false)),
        Just(json!("red")),
        Just(json!(3)),
        Just(Value::Null),
    ]
}

fn attributes() -> impl Strategy<Value = Attributes> {
    prop::collection::btree_map(
        prop::sample::select(&["bold", "italic", "color"][..]),
        value(),
        0..3,
    )
    .prop_map(|m| m.into_iter().collect())
}

/// One step of a delta, lengths interpreted against what is left.
#[derive(Clone, Debug)]
enum Step {
    Retain(usize, Attributes),
    Insert(String, Attributes),
    Delete(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (1..6usize, prop_oneof![3 => Just(Attributes::new()), 1 => attributes()])
            .prop_map(|(n, a)| Step::Retain(n, a)),
        2 => (text(), prop_oneof![2 => Just(Attributes::new()), 1 => attributes()])
            .prop_map(|(t, a)| Step::Insert(t, a)),
        2 => (1..6usize).prop_map(Step::Delete),
    ];
    prop::collection::vec(step, 0..8)
}

/// The delta `steps` describe on a document of `len` characters.
fn build(steps: &[Step], len: usize) -> Delta {
    let mut d = Delta::new();
    let mut used = 0;
    for s in steps {
        match s {
            Step::Retain(n, a) => {
                let k = (*n).min(len - used);
                d.retain_with(k, a.clone());
                used += k;
            }
            Step::Insert(t, a) => {
                d.insert_with(t, a.clone());
            }
            Step::Delete(n) => {
                let k = (*n).min(len - used);
                d.delete(k);
                used += k;
            }
        }
    }
    d.fit(len).expect("built within the length")
}

/// A document: inserts of formatted text.
fn document() -> impl Strategy<Value = Document> {
    prop::collection::vec(
        (
            text(),
            prop_oneof![2 => Just(Attributes::new()), 1 => attributes()],
        ),
        0..5,
    )
    .prop_map(|parts| {
        let mut content = Delta::new();
        for (t, a) in parts {
            content.insert_with(&t, a);
        }
        Document::from_content(&content, Version(0)).expect("inserts only")
    })
}

fn applied(doc: &Document, d: &Delta) -> Document {
    let mut out = doc.clone();
    out.apply(d).expect("delta fits the document");
    out
}

fn content(doc: &Document) -> Delta {
    doc.to_delta()
}

/// No zero lengths, no mergeable neighbours, never a delete before an insert.
fn is_normal(d: &Delta) -> bool {
    let c = d.components();
    c.iter().all(|x| !x.is_empty())
        && c.windows(2).all(|w| match (&w[0], &w[1]) {
            (Component::Retain { attributes: a, .. }, Component::Retain { attributes: b, .. }) => {
                a != b
            }
            (Component::Insert { attributes: a, .. }, Component::Insert { attributes: b, .. }) => {
                a != b
            }
            (Component::Delete { .. }, Component::Delete { .. }) => false,
            (Component::Delete { .. }, Component::Insert { .. }) => false,
            _ => true,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn applying_a_composition_equals_applying_both(
        doc in document(), sa in steps(), sb in steps()
    ) {
        let a = build(&sa, doc.len());
        let after_a = applied(&doc, &a);
        let b = build(&sb, after_a.len());
        let ab = a.compose(&b).unwrap();
        prop_assert!(is_normal(&ab));
        prop_assert_eq!(content(&applied(&doc, &ab)), content(&applied(&after_a, &b)));
    }

    #[test]
    fn concurrent_deltas_converge_tp1(doc in document(), sa in steps(), sb in steps()) {
        let a = build(&sa, doc.len());
        let b = build(&sb, doc.len());
        let a2 = a.transform(&b, Side::Left).unwrap();
        let b2 = b.transform(&a, Side::Right).unwrap();
        prop_assert!(is_normal(&a2) && is_normal(&b2));
        let via_a = applied(&applied(&doc, &a), &b2);
        let via_b = applied(&applied(&doc, &b), &a2);
        prop_assert_eq!(content(&via_a), content(&via_b));
        prop_assert_eq!(via_a.text(), via_b.text());
    }

    #[test]
    fn composing_transformed_deltas_is_the_same_either_way(
        doc in document(), sa in steps(), sb in steps()
    ) {
        let a = build(&sa, doc.len());
        let b = build(&sb, doc.len());
        let a2 = a.transform(&b, Side::Left).unwrap();
        let b2 = b.transform(&a, Side::Right).unwrap();
        let one = a.compose(&b2).unwrap();
        let two = b.compose(&a2).unwrap();
        prop_assert_eq!(content(&applied(&doc, &one)), content(&applied(&doc, &two)));
    }

    #[test]
    fn invert_undoes(doc in document(), sa in steps()) {
        let a = build(&sa, doc.len());
        let inv = a.invert(&doc).unwrap();
        let back = applied(&applied(&doc, &a), &inv);
        prop_assert_eq!(content(&back), content(&doc));
        prop_assert_eq!(back.text(), doc.text());
    }

    #[test]
    fn document_apply_matches_composing_its_content(doc in document(), sa in steps()) {
        let a = build(&sa, doc.len());
        let expected = content(&doc).compose(&a).unwrap();
        let after = applied(&doc, &a);
        prop_assert_eq!(content(&after), expected);
        prop_assert_eq!(after.len(), a.target_len());
        prop_assert_eq!(after.version(), Version(doc.version().0 + 1));
    }

    #[test]
    fn positions_stay_in_bounds_and_in_order(
        doc in document(), sa in steps(), p in 0..40usize, q in 0..40usize, after in any::<bool>()
    ) {
        let a = build(&sa, doc.len());
        let bias = if after { Bias::After } else { Bias::Before };
        let (lo, hi) = (p.min(q).min(doc.len()), p.max(q).min(doc.len()));
        let (tlo, thi) = (a.transform_position(lo, bias), a.transform_position(hi, bias));
        prop_assert!(tlo <= thi);
        prop_assert!(thi <= a.target_len());
        // A retained character is found where its position maps to (with
        // `After`, past any text inserted right before it).
        let text: Vec<char> = doc.text().chars().collect();
        let out: Vec<char> = applied(&doc, &a).text().chars().collect();
        let mut old = 0;
        let mut new = 0;
        for c in a.components() {
            match c {
                Component::Retain { len, .. } => {
                    for (k, ch) in text[old..old + len].iter().enumerate() {
                        let t = a.transform_position(old + k, Bias::After);
                        prop_assert_eq!(t, new + k);
                        prop_assert_eq!(out[t], *ch);
                    }
                    old += len;
                    new += len;
                }
                Component::Insert { .. } => new += c.len(),
                Component::Delete { len } => old += len,
            }
        }
    }

    #[test]
    fn rejected_deltas_leave_the_document_unchanged(doc in document(), sa in steps(), extra in 1..5usize) {
        let wrong = build(&sa, doc.len() + extra);
        let mut target = doc.clone();
        prop_assert!(target.apply(&wrong).is_err());
        prop_assert!(target == doc);
        prop_assert!(wrong.invert(&doc).is_err());
        let right = build(&sa, doc.len());
        prop_assert!(right.compose(&wrong).is_err() || right.target_len() == wrong.base_len());
        prop_assert!(right.transform(&wrong, Side::Left).is_err());
    }

    #[test]
    fn the_wire_form_round_trips(doc in document(), sa in steps()) {
        let a = build(&sa, doc.len());
        prop_assert!(is_normal(&a));
        let wire = serde_json::to_value(&a).unwrap();
        let back = Delta::from_json(&wire).unwrap().fit(doc.len()).unwrap();
        prop_assert_eq!(back, a);
    }
}
