//! Deltas against a naive model: `Document::apply` does what a
//! character-by-character walk does; compose, transform (TP1, both sides)
//! and invert keep their laws, formatting included; compacted deltas
//! behave the same; the wire form round-trips. Raw wire deltas with huge
//! lengths never panic.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use relay_domain::{Delta, DeltaError, Document, Side, Version};
use relay_domain::ids::MAX_WIRE_INT;
use relay_domain::testing::assert_normal;
use relay_fuzz::{
    AttrChoice, MStep, Model, Raw, Step, Text, assert_doc, assert_positions,
    assert_wire_round_trip, build, decide, has_delete_then_insert, model_apply,
    model_apply_steps, model_of_content, raw_wire, wire,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// The document: formatted inserts.
    doc: Vec<(Text, Option<AttrChoice>)>,
    a: Vec<Step>,
    b: Vec<Step>,
    /// Bit 0: compact `a`; 1: the concurrent `b`; 2: the sequential `b`.
    compact: u8,
    raw: Vec<Raw>,
    raw2: Vec<Raw>,
}

/// A delta for a document of `doc_len` characters from steps, checked
/// against its wire form and the model; returns it fitted.
fn make(steps: &[Step], m: &Model, what: &str) -> (Delta, Vec<MStep>) {
    let ms = decide(steps, m.len(), true, 16);
    let built = build(&ms);
    assert_normal(&built, what);
    let d = built.clone().fit(m.len()).expect("clamped steps fit");
    assert_normal(&d, what);
    assert_eq!(d, built.clone().fit(m.len()).unwrap());
    // The same steps written on the wire: refused exactly when a delete is
    // directly followed by an insert, else the builder's delta.
    match Delta::from_json(&wire(&ms)) {
        Ok(parsed) => {
            assert!(!has_delete_then_insert(&ms), "{what}: non-canonical accepted");
            assert_eq!(parsed, built, "{what}: wire and builder disagree");
        }
        Err(DeltaError::MalformedComponent { reason, .. })
            if reason == relay_domain::delta::MalformedReason::NotCanonical =>
        {
            assert!(has_delete_then_insert(&ms), "{what}: canonical refused");
        }
        Err(e) => panic!("{what}: valid steps {} refused: {e}", wire(&ms)),
    }
    assert_wire_round_trip(&d, what);
    assert!(d.check_storable().is_ok());
    // The builder's delta does to the model what the steps do.
    let by_steps = model_apply_steps(m, &ms).expect("clamped steps apply");
    assert_eq!(model_apply(m, &d), by_steps, "{what}: builder vs steps");
    (d, ms)
}

fn applied(doc: &Document, d: &Delta, what: &str) -> Document {
    let mut out = doc.clone();
    out.apply(d)
        .unwrap_or_else(|e| panic!("{what}: does not apply: {e}"));
    out
}

fn maybe_compact(d: &Delta, yes: bool) -> Delta {
    let mut c = d.clone();
    if yes {
        c.compact();
        assert_eq!(&c, d, "compact changes what the delta does");
        assert_normal(&c, "compacted");
        assert_eq!(c.base_len(), d.base_len());
    }
    c
}

/// Checks a delta Relay computed: its shape, bounds, wire form and
/// positions, and that the document applies it as the model does.
fn check_result(d: &Delta, doc: &Document, m: &Model, what: &str) -> (Document, Model) {
    assert_normal(d, what);
    assert!(d.check_storable().is_ok(), "{what}: not storable");
    assert_wire_round_trip(d, what);
    assert_positions(d, what);
    let after = applied(doc, d, what);
    let model = model_apply(m, d);
    assert_doc(&after, &model, what);
    (after, model)
}

fuzz_target!(|input: Input| {
    let pieces: Vec<(String, _)> = input
        .doc
        .iter()
        .take(8)
        .map(|(t, a)| (t.string(), a.as_ref().map(AttrChoice::map).unwrap_or_default()))
        .collect();
    let mut content = Delta::new();
    for (t, a) in &pieces {
        content.insert_with(t, relay_fuzz::attributes(a));
    }
    let doc = Document::from_content(&content, Version::from(3)).expect("inserts only");
    let m0 = model_of_content(&pieces);
    assert_doc(&doc, &m0, "initial document");
    assert_eq!(doc.version(), Version::from(3));

    // `a` and a concurrent `b` on the document.
    let (a, _) = make(&input.a, &m0, "a");
    let (b, _) = make(&input.b, &m0, "b");
    let (da, ma) = check_result(&a, &doc, &m0, "apply a");
    let (db, mb) = check_result(&b, &doc, &m0, "apply b");
    assert_eq!(da.version(), Version::from(4));
    // A sequential `b` on the document after `a`.
    let (b_seq, _) = make(&input.b, &ma, "b after a");

    let ac = maybe_compact(&a, input.compact & 1 != 0);
    let bc = maybe_compact(&b, input.compact & 2 != 0);
    let b_seqc = maybe_compact(&b_seq, input.compact & 4 != 0);
    // The compacted ones apply the same.
    assert_doc(&applied(&doc, &ac, "a compacted"), &ma, "a compacted");
    assert_doc(&applied(&doc, &bc, "b compacted"), &mb, "b compacted");

    // Compose.
    let ab = ac.compose(&b_seqc).expect("lengths match");
    assert_eq!(ab, a.compose(&b_seq).unwrap(), "compose of compacted deltas");
    let (d_ab, m_ab) = check_result(&ab, &doc, &m0, "a.compose(b)");
    let (d_a_b, m_a_b) = check_result(&b_seqc, &da, &ma, "b after a");
    assert_eq!(m_ab, m_a_b, "compose law (model)");
    assert_eq!(d_ab.to_delta(), d_a_b.to_delta(), "compose law");
    assert_eq!(
        a.compose(&Delta::identity(a.target_len())).unwrap(),
        a,
        "identity on the right"
    );
    assert_eq!(
        Delta::identity(a.base_len()).compose(&a).unwrap(),
        a,
        "identity on the left"
    );

    // Transform, TP1 both ways round.
    for (first, second) in [(Side::Left, Side::Right), (Side::Right, Side::Left)] {
        let a2 = ac.transform(&bc, first).expect("same base");
        let b2 = bc.transform(&ac, second).expect("same base");
        assert_eq!(a2, a.transform(&b, first).unwrap(), "transform of compacted");
        assert_eq!(b2, b.transform(&a, second).unwrap(), "transform of compacted");
        let (x, mx) = check_result(&a2, &db, &mb, "a transformed over b");
        let (y, my) = check_result(&b2, &da, &ma, "b transformed over a");
        assert_eq!(mx, my, "TP1 (model), a as {first:?}");
        assert_eq!(x.to_delta(), y.to_delta(), "TP1, a as {first:?}");
        // The two ways round compose to the same change.
        let via_b = bc.compose(&a2).unwrap();
        let via_a = ac.compose(&b2).unwrap();
        assert_eq!(
            model_apply(&m0, &via_b),
            model_apply(&m0, &via_a),
            "TP1 composed"
        );
    }
    // Transforming over the identity changes nothing.
    assert_eq!(a.transform(&Delta::identity(a.base_len()), Side::Left).unwrap(), a);

    // Invert.
    let inv = ac.invert(&doc).expect("a spans the document");
    assert_eq!(inv, a.invert(&doc).unwrap(), "invert of compacted");
    let (_back, m_back) = check_result(&inv, &da, &ma, "a.invert(d)");
    // Up to `null`-valued formatting of text (it formats nothing; undoing a
    // change of such a key removes it, as quill-delta's invert does).
    let no_nulls = |m: &relay_fuzz::Model| -> relay_fuzz::Model {
        m.iter()
            .map(|(c, a)| (*c, a.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect()))
            .collect()
    };
    assert_eq!(no_nulls(&m_back), no_nulls(&m0), "invert law (model)");
    let undo = a.compose(&inv).unwrap();
    assert_eq!(
        no_nulls(&model_apply(&m0, &undo)),
        no_nulls(&m0),
        "a then its inverse is a no-op"
    );

    // Lengths that do not match are refused, not mis-applied.
    let wrong = Delta::identity(doc.len() + 1);
    assert!(a.transform(&wrong, Side::Left).is_err());
    assert!(a.compose(&Delta::identity(a.target_len() + 1)).is_err());
    assert!(doc.clone().apply(&wrong).is_err());
    assert!(wrong.invert(&doc).is_err());

    // Raw wire deltas, lengths up to u64::MAX.
    let raw = raw_wire(&input.raw);
    let raw2 = raw_wire(&input.raw2);
    let r1 = Delta::from_json(&raw);
    let r2 = Delta::from_json(&raw2);
    for r in [&r1, &r2].into_iter().flatten() {
        assert!(r.check_storable().is_ok(), "parsed delta not storable");
        assert!(r.base_len() as u64 <= MAX_WIRE_INT && r.target_len() as u64 <= MAX_WIRE_INT);
        assert_normal(r, "raw");
        assert_wire_round_trip(r, "raw");
        let _ = r.apply_to_str(&doc.text());
        let _ = r.transform_position(usize::MAX, relay_domain::Bias::After);
        // Where it fits the document, it is an ordinary delta.
        if let Ok(f) = r.clone().fit(doc.len()) {
            let (after, ma2) = check_result(&f, &doc, &m0, "raw on the document");
            for side in [Side::Left, Side::Right] {
                let f2 = f.transform(&a, side).unwrap();
                let a2 = a.transform(&f, side.other()).unwrap();
                let (x, _) = check_result(&f2, &da, &ma, "raw over a");
                let (y, _) = check_result(&a2, &after, &ma2, "a over raw");
                assert_eq!(x.to_delta(), y.to_delta(), "TP1 with a raw delta");
            }
            let inv = f.invert(&doc).unwrap();
            let (back, _) = check_result(&inv, &after, &ma2, "raw inverted");
            assert_eq!(back.to_delta(), doc.to_delta());
        } else {
            let mut d = doc.clone();
            assert!(d.apply(r).is_err());
            assert_eq!(d, doc, "a refused delta changed the document");
        }
        if let Ok(f) = r.clone().fit(a.target_len()) {
            let c = a.compose(&f).unwrap();
            check_result(&c, &doc, &m0, "a composed with raw");
        }
    }
    // Huge against huge: no document, only the algebra, which must not
    // panic and must keep its lengths consistent.
    if let (Ok(x), Ok(y)) = (r1, r2) {
        let n = x.base_len().max(y.base_len());
        if let (Ok(x), Ok(y)) = (x.clone().fit(n), y.clone().fit(n)) {
            for side in [Side::Left, Side::Right] {
                let x2 = x.transform(&y, side).unwrap();
                let y2 = y.transform(&x, side.other()).unwrap();
                assert_normal(&x2, "huge transform");
                assert_normal(&y2, "huge transform");
                assert_eq!(x2.base_len(), y.target_len());
                assert_eq!(y2.base_len(), x.target_len());
                assert_eq!(x2.target_len(), y2.target_len(), "TP1 lengths");
                let p = y.compose(&x2).unwrap();
                let q = x.compose(&y2).unwrap();
                assert_eq!(p.base_len(), q.base_len());
                assert_eq!(p.target_len(), q.target_len());
                if p.check_storable().is_ok() && p.base_len() <= 4096 && p.target_len() <= 4096
                {
                    // Small enough to check on text.
                    let s: String = std::iter::repeat_n('a', p.base_len()).collect();
                    assert_eq!(p.apply_to_str(&s).unwrap(), q.apply_to_str(&s).unwrap());
                }
                let _ = x2.transform_position(n / 2, relay_domain::Bias::Before);
            }
        }
        if let Ok(y) = y.clone().fit(x.target_len()) {
            let c = x.compose(&y).unwrap();
            assert_normal(&c, "huge compose");
            assert_eq!((c.base_len(), c.target_len()), (x.base_len(), y.target_len()));
        }
    }
});
