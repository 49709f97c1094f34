//! Rebasing over ops read back from a store: their deltas may have lost
//! their trailing retain (the wire form), so each is fitted to the length
//! the document had at its base before it is transformed over - lengths
//! worked out backwards from one the caller knows.

use super::{CommittedOp, Sequencer};
use crate::delta::{Delta, DeltaError};
use crate::ids::Version;
use crate::ot::Side;

/// Rebases `delta`, made at the version just before `ops[0]`, over `ops`
/// (consecutive committed ops, trailing retains possibly missing), given
/// `len_after`: the document's length once the last of them applied. The
/// result applies at the last op's version. Each op is transformed over as
/// the sequencer does (the committed op first, [`Side::Right`]).
///
/// Refused when the lengths do not add up (`ops` are not what was applied
/// to reach `len_after`) or `delta` does not fit the document at its base.
pub fn rebase_over_log(
    delta: Delta,
    ops: &[CommittedOp],
    len_after: usize,
) -> Result<Delta, DeltaError> {
    // What each op added to the document (negative: removed); a fitted
    // op keeps it, a trailing retain adds as much to both lengths.
    let grown: i128 = ops
        .iter()
        .map(|op| op.delta.target_len() as i128 - op.delta.base_len() as i128)
        .sum();
    let mismatch = || DeltaError::BaseLengthMismatch {
        expected: len_after,
        actual: usize::try_from((len_after as i128 - grown).max(0)).unwrap_or(usize::MAX),
    };
    let len_before = usize::try_from(len_after as i128 - grown).map_err(|_| mismatch())?;
    let mut rebased = delta.fit(len_before)?;
    let mut len = len_before;
    for op in ops {
        let fitted = op.delta.clone().fit(len)?;
        rebased = rebased.transform(&fitted, Side::Right)?;
        len = fitted.target_len();
    }
    if len != len_after {
        return Err(mismatch());
    }
    Ok(rebased)
}

impl Sequencer {
    /// The document's length at `version`, if it is within history (from
    /// the oldest base to the current version).
    pub fn len_at(&self, version: Version) -> Option<usize> {
        let grown: i128 = self
            .ops_since(version)?
            .map(|op| op.delta.target_len() as i128 - op.delta.base_len() as i128)
            .sum();
        usize::try_from(self.doc.len() as i128 - grown).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Document;
    use crate::ids::{ClientId, Seq, UserId};
    use crate::sequencer::SequencerConfig;
    use crate::sequencer::tests::{commit_one, sub};

    fn op_at(version: u32, delta: Delta) -> CommittedOp {
        CommittedOp {
            version: Version::from(version),
            user: UserId::new(uuid::Uuid::nil()),
            client_id: ClientId::new("other").unwrap(),
            seq: Seq::from(version),
            delta,
        }
    }

    /// `delta` as the wire (and a store) keeps it: no trailing retain.
    fn as_read_back(delta: &Delta) -> Delta {
        Delta::from_json(&serde_json::to_value(delta).unwrap()).unwrap()
    }

    fn insert_at(pos: usize, text: &str, len: usize) -> Delta {
        let mut d = Delta::new();
        d.retain(pos);
        d.insert(text);
        d.fit(len).unwrap()
    }

    #[test]
    fn ops_read_back_without_their_trailing_retain_rebase_a_base_in_the_middle() {
        // "hello world" at v0; three inserts in the middle after it.
        let mut doc = Document::new();
        let mut text = String::from("hello world");
        doc.apply(&insert_at(0, &text, 0)).unwrap();
        let mut full = Vec::new();
        for (i, (pos, ins)) in [(5, ","), (6, " dear"), (0, ">")].into_iter().enumerate() {
            let len = text.chars().count();
            let d = insert_at(pos, ins, len);
            text.insert_str(pos, ins);
            full.push(op_at(i as u32 + 1, d));
        }
        let read_back: Vec<CommittedOp> = full
            .iter()
            .map(|op| CommittedOp {
                delta: as_read_back(&op.delta),
                ..op.clone()
            })
            .collect();
        assert!(
            read_back.iter().any(|op| op.delta.base_len() < 11),
            "the store's form is shorter than the document"
        );
        // A client's insert at the end of "hello world", made at v0.
        let mine = as_read_back(&insert_at(11, "!", 11));
        let len_after = text.chars().count();
        let from_store = rebase_over_log(mine.clone(), &read_back, len_after).unwrap();
        let from_full = rebase_over_log(mine, &full, len_after).unwrap();
        assert_eq!(from_store, from_full);
        let mut end = Document::new();
        end.apply(&insert_at(0, &text, 0)).unwrap();
        end.apply(&from_store).unwrap();
        assert_eq!(end.to_delta(), insert_at(0, ">hello, dear world!", 0));
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        // A trailing retain can make any longer document consistent; a
        // shorter one cannot be.
        let ops = [op_at(1, insert_at(0, "ab", 0))];
        assert!(
            rebase_over_log(Delta::new(), &ops, 1).is_err(),
            "below 0 before"
        );
        assert!(rebase_over_log(Delta::new(), &ops, 2).is_ok());
        let mut del = Delta::new();
        del.delete(4);
        let ops = [op_at(1, del), op_at(2, insert_at(0, "ab", 0))];
        // 1 after means 3 before: too short for deleting 4.
        assert!(rebase_over_log(Delta::new(), &ops, 1).is_err());
        assert!(rebase_over_log(Delta::new(), &ops, 2).is_ok());
        // A client's delta longer than the document at its base.
        assert!(rebase_over_log(insert_at(9, "x", 9), &ops, 2).is_err());
    }

    #[test]
    fn len_at_walks_history_back_from_the_document() {
        let mut s = Sequencer::new(Document::new(), SequencerConfig::default());
        let ins = |s: &mut Sequencer, seq: u64, base: u64, pos: usize, t: &str| {
            let len = s.document().len();
            commit_one(s, sub(1, "a", seq, base, insert_at(pos, t, len)));
        };
        ins(&mut s, 1, 0, 0, "abc");
        ins(&mut s, 2, 1, 1, "zz");
        ins(&mut s, 3, 2, 5, "q");
        assert_eq!(s.len_at(Version::from(0)), Some(0));
        assert_eq!(s.len_at(Version::from(1)), Some(3));
        assert_eq!(s.len_at(Version::from(2)), Some(5));
        assert_eq!(s.len_at(Version::from(3)), Some(6));
        assert_eq!(s.len_at(Version::from(4)), None);
    }
}
