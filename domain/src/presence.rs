//! Presence: who is in a document and where their selections are.
//!
//! Positions are carried with the version they were taken at and moved
//! forward through each later op, so a cursor sent before a concurrent edit
//! still points at the same text after it.

use crate::ids::{ClientId, UserId, Version};
use crate::ot::Bias;
use crate::selection::Selection;
use crate::sequencer::CommittedOp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One client in the roster: the wire shape of `joined.presence` entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub user: UserId,
    pub client_id: ClientId,
    pub name: Option<String>,
    /// `None` hides the caret. On the wire: `anchor` and `head`, both
    /// `null` when hidden.
    #[serde(flatten, with = "crate::selection::fields")]
    pub selection: Option<Selection>,
    /// The version the selection refers to.
    pub version: Version,
}

impl PresenceEntry {
    /// Moves the selection through `op` (the op right after
    /// `self.version`). The author's own caret moves past its insert; other
    /// carets stay before text inserted exactly at them.
    pub fn apply(&mut self, op: &CommittedOp) {
        if Some(op.version) != self.version.next() {
            return;
        }
        let bias = if op.user == self.user && op.client_id == self.client_id {
            Bias::After
        } else {
            Bias::Before
        };
        if let Some(s) = self.selection {
            self.selection = Some(s.transform(&op.delta, bias));
        }
        self.version = op.version;
    }
}

/// A client that left a document: the wire shape of `presence.left`
/// entries (and of the bus's departures).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departed {
    pub user: UserId,
    pub client_id: ClientId,
}

/// The clients present in one document, keyed by (user, client_id).
#[derive(Clone, Debug, Default)]
pub struct Roster {
    entries: BTreeMap<(UserId, ClientId), PresenceEntry>,
}

impl Roster {
    pub fn new() -> Self {
        Roster::default()
    }

    /// Adds or replaces a client. Returns whether it was new.
    pub fn join(&mut self, entry: PresenceEntry) -> bool {
        self.entries
            .insert((entry.user, entry.client_id.clone()), entry)
            .is_none()
    }

    /// Removes a client. Returns its entry if it was present.
    pub fn leave(&mut self, user: UserId, client_id: &ClientId) -> Option<PresenceEntry> {
        self.entries.remove(&(user, client_id.clone()))
    }

    pub fn get(&self, user: UserId, client_id: &ClientId) -> Option<&PresenceEntry> {
        self.entries.get(&(user, client_id.clone()))
    }

    /// Records a selection (already rebased to `version`). Returns the entry,
    /// or `None` if the client is not present.
    pub fn set_selection(
        &mut self,
        user: UserId,
        client_id: &ClientId,
        selection: Option<Selection>,
        version: Version,
    ) -> Option<&PresenceEntry> {
        let e = self.entries.get_mut(&(user, client_id.clone()))?;
        e.selection = selection;
        e.version = version;
        Some(e)
    }

    /// Moves every selection through a newly committed op.
    pub fn apply(&mut self, op: &CommittedOp) {
        for e in self.entries.values_mut() {
            e.apply(op);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &PresenceEntry> {
        self.entries.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Delta, Seq};
    use uuid::Uuid;

    fn entry(u: u128, c: &str, at: usize, version: u64) -> PresenceEntry {
        PresenceEntry {
            user: UserId::new(Uuid::from_u128(u)),
            client_id: ClientId::new(c).unwrap(),
            name: None,
            selection: Some(Selection::caret(at)),
            version: Version::new(version).unwrap(),
        }
    }

    #[test]
    fn carets_move_through_later_ops() {
        let mut r = Roster::new();
        r.join(entry(1, "a", 3, 0));
        r.join(entry(2, "b", 3, 0));
        let mut d = Delta::new();
        d.retain(3).insert("xy").retain(2);
        let op = CommittedOp {
            version: Version::from(1),
            user: UserId::new(Uuid::from_u128(1)),
            client_id: ClientId::new("a").unwrap(),
            seq: Seq::from(1),
            delta: d,
        };
        r.apply(&op);
        let a = r
            .get(
                UserId::new(Uuid::from_u128(1)),
                &ClientId::new("a").unwrap(),
            )
            .unwrap();
        let b = r
            .get(
                UserId::new(Uuid::from_u128(2)),
                &ClientId::new("b").unwrap(),
            )
            .unwrap();
        // The author's caret follows its own typing; the other stays put.
        let head = |e: &PresenceEntry| e.selection.map(|s| s.head);
        assert_eq!((head(a), a.version), (Some(5), Version::from(1)));
        assert_eq!((head(b), b.version), (Some(3), Version::from(1)));
    }

    #[test]
    fn join_and_leave_report_changes() {
        let mut r = Roster::new();
        assert!(r.join(entry(1, "a", 0, 0)));
        assert!(!r.join(entry(1, "a", 1, 0)));
        assert_eq!(r.len(), 1);
        assert!(
            r.leave(
                UserId::new(Uuid::from_u128(1)),
                &ClientId::new("a").unwrap()
            )
            .is_some()
        );
        assert!(r.is_empty());
    }
}
