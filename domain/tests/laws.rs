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
use relay_domain::testing::assert_normal;
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
    // Characters JSON escapes.
    "\"",
    "\\",
    "\u{1}",
    "\u{1f}",
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
    let mut d = d.fit(len).expect("built within the length");
    // Half of them without their trailing retain (the form history keeps):
    // the laws hold for both.
    if steps.len() % 2 == 1 {
        d.compact();
    }
    d
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
        Document::from_content(&content, Version::from(0)).expect("inserts only")
    })
}

/// A document's content with `null`-valued attributes left out.
fn without_nulls(content: &Delta) -> Delta {
    let mut out = Delta::new();
    for c in content.components() {
        if let Component::Insert { text, attributes } = c {
            let kept: Attributes = attributes
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect();
            out.insert_with(text, kept);
        }
    }
    out
}

fn applied(doc: &Document, d: &Delta) -> Document {
    let mut out = doc.clone();
    out.apply(d).expect("delta fits the document");
    out
}

fn content(doc: &Document) -> Delta {
    doc.to_delta()
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
        assert_normal(&ab, "a composition");
        prop_assert_eq!(content(&applied(&doc, &ab)), content(&applied(&after_a, &b)));
    }

    #[test]
    fn concurrent_deltas_converge_tp1(doc in document(), sa in steps(), sb in steps()) {
        let a = build(&sa, doc.len());
        let b = build(&sb, doc.len());
        let a2 = a.transform(&b, Side::Left).unwrap();
        let b2 = b.transform(&a, Side::Right).unwrap();
        assert_normal(&a2, "a transformed");
        assert_normal(&b2, "b transformed");
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
        // Up to `null`-valued formatting of text, which formats nothing:
        // undoing a change of such a key removes it (as in quill-delta).
        prop_assert_eq!(without_nulls(&content(&back)), without_nulls(&content(&doc)));
        prop_assert_eq!(back.text(), doc.text());
    }

    #[test]
    fn document_apply_matches_composing_its_content(doc in document(), sa in steps()) {
        let a = build(&sa, doc.len());
        let expected = content(&doc).compose(&a).unwrap();
        let after = applied(&doc, &a);
        prop_assert_eq!(content(&after), expected);
        prop_assert_eq!(after.len(), a.target_len());
        prop_assert_eq!(after.version(), doc.version().next().unwrap());
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
    fn the_content_size_bound_is_never_below_the_content(doc in document(), sa in steps(), sb in steps()) {
        let a = build(&sa, doc.len());
        let after = applied(&doc, &a);
        let b = build(&sb, after.len());
        for d in [&doc, &after, &applied(&after, &b)] {
            let actual = serde_json::to_string(&d.to_delta()).unwrap().len();
            prop_assert!(d.content_json_bound() >= actual, "{} < {}", d.content_json_bound(), actual);
            let mut tight = d.clone();
            tight.set_tight_above(0);
            prop_assert!(tight.content_json_bound() >= actual);
            prop_assert!(tight.content_json_bound() <= d.content_json_bound());
        }
    }

    #[test]
    fn the_wire_form_round_trips(doc in document(), sa in steps()) {
        let a = build(&sa, doc.len());
        assert_normal(&a, "built");
        let wire = serde_json::to_value(&a).unwrap();
        let back = Delta::from_json(&wire).unwrap().fit(doc.len()).unwrap();
        prop_assert_eq!(back, a);
    }
}

// What a client can send: lengths anywhere in u64 (with the 2^53 bounds
// and the wrap points over-represented), components in any order, text
// with U+0000 now and then. The domain must refuse or accept each delta
// without panicking, and whatever it accepts must behave.

fn any_length() -> impl Strategy<Value = u64> {
    const MAX: u64 = relay_domain::ids::MAX_WIRE_INT;
    prop_oneof![
        6 => 1..8u64,
        1 => Just(0u64),
        1 => prop::sample::select(vec![
            MAX - 1, MAX, MAX + 1, u64::MAX, u64::MAX - 1, u64::MAX - 4, 1u64 << 63, (1u64 << 63) - 1,
            u64::from(u32::MAX), u64::from(u32::MAX) + 1,
        ]),
        1 => any::<u64>(),
    ]
}

fn wire_component() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (any_length(), prop::option::of(attributes()))
            .prop_map(|(n, a)| match a {
                Some(a) => json!({"retain": n, "attributes": a}),
                None => json!({"retain": n}),
            }),
        2 => (text(), any::<bool>(), prop::option::weighted(0.3, attributes()))
            .prop_map(|(t, nul, a)| {
                let t = if nul { format!("{t}\u{0}") } else { t };
                match a {
                    Some(a) => json!({"insert": t, "attributes": a}),
                    None => json!({"insert": t}),
                }
            }),
        2 => any_length().prop_map(|n| json!({"delete": n})),
    ]
}

fn wire_delta() -> impl Strategy<Value = Value> {
    prop::collection::vec(wire_component(), 0..6).prop_map(Value::Array)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_wire_delta_is_refused_or_bounded_and_canonical(wire in wire_delta()) {
        let Ok(d) = Delta::from_json(&wire) else { return Ok(()) };
        let max = usize::try_from(relay_domain::ids::MAX_WIRE_INT).unwrap();
        prop_assert!(d.base_len() <= max && d.target_len() <= max);
        assert_normal(&d, "parsed");
        prop_assert!(d.check_storable().is_ok());
        // Lengths are what the components say, summed without wrapping.
        let spans: u128 = wire.as_array().unwrap().iter().map(|c| {
            u128::from(c.get("retain").or(c.get("delete")).and_then(Value::as_u64).unwrap_or(0))
        }).sum();
        prop_assert_eq!(d.base_len() as u128, spans);
    }

    #[test]
    fn any_wire_delta_either_fits_a_document_and_behaves_or_leaves_it_alone(
        doc in document(), wire in wire_delta(), sb in steps()
    ) {
        let Ok(raw) = Delta::from_json(&wire) else { return Ok(()) };
        let mut target = doc.clone();
        let Ok(d) = raw.clone().fit(doc.len()) else {
            // It spans more than the document: refused, nothing changed.
            prop_assert!(target.apply(&raw).is_err());
            prop_assert!(target == doc);
            return Ok(());
        };
        target.apply(&d).unwrap();
        prop_assert_eq!(target.text(), d.apply_to_str(&doc.text()).unwrap());
        prop_assert_eq!(target.len(), d.target_len());
        // It transforms against a concurrent delta and converges.
        let b = build(&sb, doc.len());
        let d2 = d.transform(&b, Side::Left).unwrap();
        let b2 = b.transform(&d, Side::Right).unwrap();
        let via_d = applied(&applied(&doc, &d), &b2);
        let via_b = applied(&applied(&doc, &b), &d2);
        prop_assert_eq!(content(&via_d), content(&via_b));
    }

    #[test]
    fn the_sequencer_refuses_or_commits_any_wire_delta_at_any_base(
        doc in document(), history in prop::collection::vec(steps(), 0..4),
        wire in wire_delta(), base in 0..6u64
    ) {
        use relay_domain::{ClientId, Proposed, Sequencer, SequencerConfig, Seq, Submission, Timestamp, UserId};
        let user = UserId::new(uuid::Uuid::from_u128(1));
        let mut s = Sequencer::new(doc, SequencerConfig::default());
        for (i, st) in history.iter().enumerate() {
            let d = build(st, s.document().len());
            let sub = Submission {
                user, client_id: ClientId::new("h").unwrap(), seq: Seq::from(i as u32 + 1),
                base: s.version(), delta: d,
            };
            if let Ok(Proposed::New(v)) = s.propose(&sub) {
                s.commit(v, Timestamp::from_millis(0));
            }
        }
        let Ok(delta) = Delta::from_json(&wire) else { return Ok(()) };
        let sub = Submission {
            user, client_id: ClientId::new("x").unwrap(), seq: Seq::from(1),
            base: Version::new(base.min(s.version().get())).unwrap(), delta,
        };
        let before = s.document().clone();
        match s.propose(&sub) {
            Ok(Proposed::New(v)) => {
                let expected_len = s.pending_len();
                s.commit(v, Timestamp::from_millis(0));
                prop_assert_eq!(s.document().len(), expected_len);
                prop_assert_eq!(s.version(), v);
            }
            Ok(other) => prop_assert!(false, "a new client's seq is new: {:?}", other),
            Err(_) => prop_assert!(s.document() == &before && s.pending().is_empty()),
        }
    }
}
