//! Operational transformation on deltas: compose, transform and positions.
//!
//! Laws (checked by the property tests in `domain/tests/laws.rs`), for a
//! document `d` and deltas `a`, `b` made on it:
//!
//! - compose: `apply(apply(d, a), b) == apply(d, a.compose(b))`
//! - TP1: `apply(apply(d, a), b.transform(a, Right)) ==
//!   apply(apply(d, b), a.transform(b, Left))`, formatting included
//! - invert: `apply(apply(d, a), a.invert(d)) == d`
//! - positions: `transform_position` maps `0..=base_len` into
//!   `0..=target_len` and never reorders two positions.

use crate::delta::{Delta, DeltaError, Piece, Pieces};

/// Which of two concurrent deltas is ordered first.
///
/// `Left` means "this delta counts as the earlier one": its inserts go before
/// the other's inserts at the same position, and where both set the same
/// attribute of the same character its value stays. `Right` is the
/// converse: the other delta's inserts go first, and the keys the other
/// delta set are dropped from this one's formatting. The sequencer
/// transforms a submitted delta over history as `Right`: the op committed
/// first wins insert ties and formatting conflicts alike (PROTOCOL.md).
///
/// This is quill-delta's `priority`: Relay's `b.transform(&a, Side::Right)`
/// is quill-delta's `a.transform(b, true)` ("a happened first"), and
/// `b.transform(&a, Side::Left)` is `a.transform(b, false)` - lengths in
/// code points instead of UTF-16 units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }
}

/// Where a position lands when text is inserted exactly at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    /// Stay before the inserted text (someone else typed at my caret).
    Before,
    /// Move after it (my own typing pushes my caret).
    After,
}

impl Delta {
    /// The delta that has the effect of `self` followed by `next`.
    pub fn compose(&self, next: &Delta) -> Result<Delta, DeltaError> {
        if self.target_len() != next.base_len() {
            return Err(DeltaError::ComposeLengthMismatch {
                first_target: self.target_len(),
                second_base: next.base_len(),
            });
        }
        let mut out = Delta::with_capacity(self.components().len() + next.components().len());
        let mut a = Pieces::new(self);
        let mut b = Pieces::new(next);
        loop {
            // `next`'s inserts come first: they are new text at this point.
            if b.peek_is_insert() == Some(true) {
                out.push_piece(b.next_whole().expect("peeked"));
                continue;
            }
            // `self`'s deletes are untouched by `next`.
            if a.peek_is_delete() {
                out.push_piece(a.next_whole().expect("peeked"));
                continue;
            }
            match (a.has_next(), b.has_next()) {
                (false, false) => break,
                // Lengths were checked: both end together.
                (true, false) | (false, true) => unreachable!("length checked above"),
                (true, true) => {}
            }
            let n = a.peek_len().min(b.peek_len());
            let pa = a.next(n).expect("has next");
            let pb = b.next(n).expect("has next");
            match (pa, pb) {
                (Piece::Retain(n, aa), Piece::Retain(_, ba)) => {
                    out.retain_with(n, aa.compose(ba, true));
                }
                (Piece::Insert(s, aa), Piece::Retain(_, ba)) => {
                    out.insert_with(s, aa.compose(ba, false));
                }
                (Piece::Retain(n, _), Piece::Delete(_)) => {
                    out.delete(n);
                }
                // Text inserted by `self` and deleted by `next` never was.
                (Piece::Insert(..), Piece::Delete(_)) => {}
                (Piece::Delete(_), _) | (_, Piece::Insert(..)) => unreachable!("handled above"),
            }
        }
        Ok(out)
    }

    /// `self` rewritten to apply after `other`, where both were made on the
    /// same document. `side` says whether `self` counts as the earlier
    /// (`Left`) or later (`Right`) of the two; see [`Side`].
    pub fn transform(&self, other: &Delta, side: Side) -> Result<Delta, DeltaError> {
        if self.base_len() != other.base_len() {
            return Err(DeltaError::TransformLengthMismatch {
                left: self.base_len(),
                right: other.base_len(),
            });
        }
        // The earlier delta keeps its formatting: the later one loses the
        // keys both set.
        let other_wins = side == Side::Right;
        let mut out = Delta::with_capacity(self.components().len() + 2);
        let mut a = Pieces::new(self);
        let mut b = Pieces::new(other);
        loop {
            let a_ins = a.peek_is_insert() == Some(true);
            let b_ins = b.peek_is_insert() == Some(true);
            if a_ins && (side == Side::Left || !b_ins) {
                out.push_piece(a.next_whole().expect("peeked"));
                continue;
            }
            if b_ins {
                out.retain(b.next_whole().expect("peeked").len());
                continue;
            }
            match (a.has_next(), b.has_next()) {
                (false, false) => break,
                (true, false) | (false, true) => unreachable!("length checked above"),
                (true, true) => {}
            }
            let n = a.peek_len().min(b.peek_len());
            match (a.next(n).expect("has next"), b.next(n).expect("has next")) {
                (Piece::Retain(n, aa), Piece::Retain(_, ba)) => {
                    out.retain_with(n, aa.transform(ba, other_wins));
                }
                (Piece::Delete(n), Piece::Retain(..)) => {
                    out.delete(n);
                }
                // Deleted by `other` already: nothing left to retain or delete.
                (Piece::Retain(..) | Piece::Delete(_), Piece::Delete(_)) => {}
                (Piece::Insert(..), _) | (_, Piece::Insert(..)) => unreachable!("handled above"),
            }
        }
        Ok(out)
    }

    /// Where a position in the base document ends up in the target document.
    /// Positions past the end are clamped to it. Inside deleted text a
    /// position moves to where the deletion was.
    pub fn transform_position(&self, pos: usize, bias: Bias) -> usize {
        let pos = pos.min(self.base_len());
        let mut old = 0;
        let mut new = 0;
        for c in self.components() {
            match c {
                crate::Component::Retain { len, .. } => {
                    if pos < old + len {
                        return new + (pos - old);
                    }
                    old += len;
                    new += len;
                }
                crate::Component::Delete { len } => {
                    if pos < old + len {
                        return new;
                    }
                    old += len;
                }
                crate::Component::Insert { text, .. } => {
                    if old == pos && bias == Bias::Before {
                        return new;
                    }
                    new += text.chars().count();
                }
            }
        }
        new + (pos - old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attributes;

    fn d(f: impl FnOnce(&mut Delta)) -> Delta {
        let mut x = Delta::new();
        f(&mut x);
        x
    }

    #[test]
    fn compose_of_insert_then_delete_cancels() {
        let a = d(|x| {
            x.retain(2).insert("abc").retain(1);
        });
        let b = d(|x| {
            x.retain(3).delete(2).retain(1);
        });
        let c = a.compose(&b).unwrap();
        assert_eq!(
            c,
            d(|x| {
                x.retain(2).insert("a").retain(1);
            })
        );
        assert_eq!(c.apply_to_str("xyz").unwrap(), "xyaz");
    }

    #[test]
    fn compose_refuses_mismatched_lengths() {
        let a = Delta::identity(3);
        let b = Delta::identity(4);
        assert_eq!(
            a.compose(&b),
            Err(DeltaError::ComposeLengthMismatch {
                first_target: 3,
                second_base: 4
            })
        );
    }

    #[test]
    fn concurrent_inserts_at_one_position_order_by_side() {
        let a = d(|x| {
            x.retain(1).insert("A").retain(1);
        });
        let b = d(|x| {
            x.retain(1).insert("B").retain(1);
        });
        let a2 = a.transform(&b, Side::Left).unwrap();
        let b2 = b.transform(&a, Side::Right).unwrap();
        let left = a2.apply_to_str(&b.apply_to_str("xy").unwrap()).unwrap();
        let right = b2.apply_to_str(&a.apply_to_str("xy").unwrap()).unwrap();
        assert_eq!(left, "xABy");
        assert_eq!(left, right);
    }

    #[test]
    fn the_earlier_side_wins_a_formatting_conflict() {
        let bold = Attributes::new().with("bold", true);
        let not_bold = Attributes::new().with("bold", false);
        let a = d(|x| {
            x.retain_with(2, bold.clone());
        });
        let b = d(|x| {
            x.retain_with(2, not_bold.clone().with("italic", true));
        });
        // a is earlier: it keeps its change; b loses the key a set and
        // keeps the rest.
        assert_eq!(a.transform(&b, Side::Left).unwrap(), a);
        assert_eq!(
            b.transform(&a, Side::Right).unwrap(),
            d(|x| {
                x.retain_with(2, Attributes::new().with("italic", true));
            })
        );
        let mut doc = crate::Document::from_text("xy", crate::Version::ZERO);
        doc.apply(&a).unwrap();
        doc.apply(&b.transform(&a, Side::Right).unwrap()).unwrap();
        let mut other = crate::Document::from_text("xy", crate::Version::ZERO);
        other.apply(&b).unwrap();
        other.apply(&a.transform(&b, Side::Left).unwrap()).unwrap();
        assert_eq!(doc.to_delta(), other.to_delta());
        assert_eq!(
            doc.slice(0, 1).components()[0],
            crate::Component::Insert {
                text: "x".into(),
                attributes: bold.with("italic", true)
            }
        );
    }

    /// The corners where OT libraries differ, as quill-delta resolves them
    /// (the differential tests check thousands more against quill-delta).
    #[test]
    fn corners_resolve_as_quill_delta_does() {
        let bold = || Attributes::new().with("bold", true);
        // An insert inside a range another op deleted survives, where the
        // range was.
        let del = d(|x| {
            x.retain(1).delete(3).retain(1);
        });
        let ins = d(|x| {
            x.retain(2).insert("X").retain(3);
        });
        assert_eq!(
            ins.transform(&del, Side::Right).unwrap(),
            d(|x| {
                x.retain(1).insert("X").retain(1);
            })
        );
        // Formatting a range does not format text inserted into it
        // concurrently.
        let fmt = d(|x| {
            x.retain_with(3, bold());
        });
        let ins = d(|x| {
            x.retain(1).insert("X").retain(2);
        });
        assert_eq!(
            fmt.transform(&ins, Side::Right).unwrap(),
            d(|x| {
                x.retain_with(1, bold()).retain(1).retain_with(2, bold());
            })
        );
        // A null survives composing two retains (it still removes), and is
        // dropped composing a retain over an insert.
        let clear = d(|x| {
            x.retain_with(1, Attributes::new().with("bold", serde_json::Value::Null));
        });
        let italic = d(|x| {
            x.retain_with(1, Attributes::new().with("italic", true));
        });
        assert_eq!(
            clear.compose(&italic).unwrap(),
            d(|x| {
                x.retain_with(
                    1,
                    Attributes::new()
                        .with("bold", serde_json::Value::Null)
                        .with("italic", true),
                );
            })
        );
        let typed = d(|x| {
            x.insert("a");
        });
        assert_eq!(
            typed.compose(&clear).unwrap(),
            d(|x| {
                x.insert("a");
            })
        );
        // Neighbours merge and a trailing plain retain is implicit.
        let split = d(|x| {
            x.retain_with(1, bold()).retain_with(1, bold()).retain(1);
        });
        assert_eq!(split.components().len(), 2);
        assert_eq!(
            serde_json::to_string(&split).unwrap(),
            r#"[{"retain":2,"attributes":{"bold":true}}]"#
        );
    }

    #[test]
    fn overlapping_deletes_delete_once() {
        let a = d(|x| {
            x.retain(1).delete(3).retain(1);
        });
        let b = d(|x| {
            x.retain(2).delete(3);
        });
        let a2 = a.transform(&b, Side::Left).unwrap();
        let b2 = b.transform(&a, Side::Right).unwrap();
        let s = "01234";
        let one = a2.apply_to_str(&b.apply_to_str(s).unwrap()).unwrap();
        let two = b2.apply_to_str(&a.apply_to_str(s).unwrap()).unwrap();
        assert_eq!(one, "0");
        assert_eq!(one, two);
    }

    #[test]
    fn positions_follow_inserts_and_collapse_into_deletes() {
        let op = d(|x| {
            x.retain(2).insert("xyz").retain(1).delete(2).retain(1);
        });
        assert_eq!(op.transform_position(1, Bias::Before), 1);
        assert_eq!(op.transform_position(2, Bias::Before), 2);
        assert_eq!(op.transform_position(2, Bias::After), 5);
        assert_eq!(op.transform_position(3, Bias::Before), 6);
        assert_eq!(op.transform_position(4, Bias::Before), 6);
        assert_eq!(op.transform_position(5, Bias::Before), 6);
        assert_eq!(op.transform_position(6, Bias::After), 7);
        assert_eq!(op.transform_position(60, Bias::After), 7);
    }
}
