//! The sequencer's history: the ops committed last, as applied, for
//! rebasing submits made at an older base and for catching clients up.
//! Bounded in count, age and bytes; the oldest go first.

use super::{CommittedOp, Sequencer};
use crate::ids::{ClientId, Seq, Timestamp, UserId, Version};

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) op: CommittedOp,
    at: Timestamp,
}

impl Entry {
    /// An entry for history: the op's delta compacted (no trailing retain,
    /// no spare capacity) and boxed, so the deque holds pointers and its
    /// spare slots cost 8 bytes, not an entry's size.
    pub(super) fn new(mut op: CommittedOp, at: Timestamp) -> Box<Entry> {
        op.delta.compact();
        Box::new(Entry { op, at })
    }

    /// What the history budget counts for it.
    fn bytes(&self) -> usize {
        self.op.memory_bytes() + std::mem::size_of::<Entry>() - std::mem::size_of::<CommittedOp>()
            + std::mem::size_of::<Box<Entry>>()
    }
}

impl Sequencer {
    pub(super) fn find_committed(
        &self,
        user: UserId,
        client_id: &ClientId,
        seq: Seq,
    ) -> Option<Version> {
        self.history
            .iter()
            .rev()
            .find(|e| e.op.seq == seq && e.op.user == user && e.op.client_id == *client_id)
            .map(|e| e.op.version)
    }

    pub(super) fn push_history(&mut self, entry: Box<Entry>) {
        self.history_bytes += entry.bytes();
        self.history.push_back(entry);
    }

    /// Bytes of history kept
    /// ([`SequencerConfig::max_history_bytes`](super::SequencerConfig::max_history_bytes)).
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// Ops kept in history.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Forgets the ops before `version` (a room opened from the store
    /// drops what the log says is older than the history's age, rather
    /// than age it from the moment it was loaded).
    pub fn forget_before(&mut self, version: Version) {
        while self.history.front().is_some_and(|e| e.op.version < version) {
            if let Some(gone) = self.history.pop_front() {
                self.history_bytes -= gone.bytes();
            }
        }
    }

    /// The op committed at `version`, if history still holds it.
    pub fn op_at(&self, version: Version) -> Option<&CommittedOp> {
        let first = self.history.front()?.op.version;
        let i = usize::try_from(version.get().checked_sub(first.get())?).ok()?;
        self.history
            .get(i)
            .map(|e| &e.op)
            .filter(|op| op.version == version)
    }

    pub(super) fn prune(&mut self, now: Timestamp) {
        while let Some(front) = self.history.front() {
            let too_many = self.history.len() > self.config.max_history;
            let too_old = now.since(front.at) > self.config.max_history_age_ms;
            let too_big =
                self.history_bytes > self.config.max_history_bytes && self.history.len() > 1;
            if !(too_many || too_old || too_big) {
                break;
            }
            if let Some(gone) = self.history.pop_front() {
                self.history_bytes -= gone.bytes();
            }
        }
        self.clients.forget_least_recent(self.config.max_clients);
    }
}

#[cfg(test)]
mod tests {
    use crate::sequencer::tests::{commit_one, ins, sub};
    use crate::sequencer::{Proposed, Rejection, Sequencer, SequencerConfig};
    use crate::{Document, Timestamp, Version};

    #[test]
    fn history_is_bounded_by_age() {
        let config = SequencerConfig {
            max_history_age_ms: 1_000,
            ..SequencerConfig::default()
        };
        let mut s = Sequencer::new(Document::new(), config);
        let p = s.propose(&sub(1, "a", 1, 0, ins(0, "x"))).unwrap();
        let Proposed::New(v) = p else { panic!() };
        s.commit(v, Timestamp::from_millis(0));
        assert!(s.ops_since(Version::from(0)).is_some());
        let p = s.propose(&sub(1, "a", 2, 1, ins(0, "y"))).unwrap();
        let Proposed::New(v) = p else { panic!() };
        s.commit(v, Timestamp::from_millis(5_000));
        assert!(s.ops_since(Version::from(0)).is_none());
        assert_eq!(s.ops_since(Version::from(1)).map(|o| o.len()), Some(1));
    }

    #[test]
    fn history_before_a_version_is_forgotten_and_ops_are_found_by_version() {
        let mut s = Sequencer::new(Document::new(), SequencerConfig::default());
        for i in 1..=4u64 {
            commit_one(&mut s, sub(1, "a", i, i - 1, ins(0, "x")));
        }
        assert_eq!(
            s.op_at(Version::from(3)).map(|op| op.version),
            Some(Version::from(3))
        );
        assert!(s.op_at(Version::from(5)).is_none());
        s.forget_before(Version::from(3));
        assert_eq!(s.history_len(), 2);
        assert_eq!(s.oldest_base(), Version::from(2));
        assert!(s.op_at(Version::from(2)).is_none());
        assert!(s.history_bytes() > 0);
        s.forget_before(Version::MAX);
        assert_eq!((s.history_len(), s.history_bytes()), (0, 0));
    }

    #[test]
    fn history_is_bounded_by_bytes_oldest_first() {
        let config = SequencerConfig {
            max_history_bytes: 100_000,
            ..SequencerConfig::default()
        };
        let mut s = Sequencer::new(Document::new(), config);
        let big = "x".repeat(30_000);
        for i in 1..=10u64 {
            commit_one(&mut s, sub(1, "a", i, i - 1, ins(0, &big)));
            assert!(s.history_bytes() <= 100_000, "{} bytes", s.history_bytes());
        }
        // Three 30 KB ops fit, a fourth would not.
        assert_eq!(s.history_len(), 3);
        assert_eq!(s.oldest_base(), Version::from(7));
        assert!(s.ops_since(Version::from(6)).is_none());
        assert_eq!(s.ops_since(Version::from(7)).map(|o| o.len()), Some(3));
        assert_eq!(
            s.propose(&sub(2, "b", 1, 6, ins(0, "y"))),
            Err(Rejection::StaleBase {
                base: Version::from(6),
                oldest: Version::from(7)
            })
        );
        // One op over the whole budget is still kept, alone.
        let huge = "z".repeat(200_000);
        commit_one(&mut s, sub(1, "a", 11, 10, ins(0, &huge)));
        assert_eq!(s.history_len(), 1);
        assert_eq!(s.oldest_base(), Version::from(10));
    }
}
