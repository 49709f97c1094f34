//! What the sequencer remembers of each client: its last committed seq and
//! that op's version, so a re-sent or out-of-order submit is caught even
//! when history no longer holds the op. Bounded: the least recently seen
//! clients are forgotten first.

use super::Sequencer;
use crate::ids::{ClientId, Seq, Timestamp, UserId, Version};
use std::collections::HashMap;

/// What the sequencer knows of a client's commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Known {
    /// Never seen, or forgotten: history may still hold its ops.
    Unseen,
    /// The store said it has committed nothing.
    NothingCommitted,
    /// Its last committed seq, and that op's version.
    Last(Seq, Version),
}

#[derive(Clone, Debug)]
struct ClientRecord {
    /// The client's last committed seq and its version; `None` once the
    /// store said it has committed nothing.
    last: Option<(Seq, Version)>,
    seen: Timestamp,
}

/// The users seen with one client id (almost always one).
type ClientRecords = Vec<(UserId, ClientRecord)>;

/// Every client's record, by client id.
#[derive(Debug, Default)]
pub(super) struct Clients(HashMap<ClientId, ClientRecords>);

impl Clients {
    fn record(&self, user: UserId, client_id: &ClientId) -> Option<&ClientRecord> {
        let records = self.0.get(client_id.as_str())?;
        records.iter().find(|(u, _)| *u == user).map(|(_, r)| r)
    }

    /// What is known of the client's commits.
    pub(super) fn known(&self, user: UserId, client_id: &ClientId) -> Known {
        match self.record(user, client_id) {
            None => Known::Unseen,
            Some(ClientRecord { last: None, .. }) => Known::NothingCommitted,
            Some(ClientRecord {
                last: Some((seq, version)),
                ..
            }) => Known::Last(*seq, *version),
        }
    }

    /// Records the client's last commit (`None`: nothing committed), seen
    /// `now`. Never moves a record back to an earlier seq.
    pub(super) fn remember(
        &mut self,
        user: UserId,
        client_id: &ClientId,
        last: Option<(Seq, Version)>,
        now: Timestamp,
    ) {
        let rec = ClientRecord { last, seen: now };
        let records = match self.0.get_mut(client_id.as_str()) {
            Some(r) => r,
            None => self.0.entry(client_id.clone()).or_default(),
        };
        match records.iter_mut().find(|(u, _)| *u == user) {
            Some((_, r)) if r.last.map(|l| l.0) > last.map(|l| l.0) => r.seen = now,
            Some((_, r)) => *r = rec,
            None => records.push((user, rec)),
        }
    }

    /// Past `max_clients` client ids, forgets the least recently seen
    /// tenth at once, so the selection is paid rarely.
    pub(super) fn forget_least_recent(&mut self, max_clients: usize) {
        if self.0.len() <= max_clients {
            return;
        }
        let mut seen: Vec<Timestamp> = self
            .0
            .values()
            .map(|rs| rs.iter().map(|(_, r)| r.seen).max().unwrap_or_default())
            .collect();
        let cut = self.0.len() - max_clients * 9 / 10;
        seen.select_nth_unstable(cut.saturating_sub(1));
        let threshold = seen[cut.saturating_sub(1)];
        let mut dropped = 0;
        self.0.retain(|_, rs| {
            let latest = rs.iter().map(|(_, r)| r.seen).max().unwrap_or_default();
            if dropped < cut && latest <= threshold {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }

    /// Client ids remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Sequencer {
    /// Seeds what the store knows of a client the sequencer has not seen:
    /// its last committed seq and that op's version, or `None` if it has
    /// committed nothing. Duplicates and out-of-order seqs from before this
    /// sequencer's history are then caught, and the client counts as known
    /// (see [`Sequencer::knows_client`]). Never moves a record back.
    pub fn remember_client(
        &mut self,
        user: UserId,
        client_id: &ClientId,
        last: Option<(Seq, Version)>,
        now: Timestamp,
    ) {
        self.clients.remember(user, client_id, last, now);
        // Bounded here too, not only on commit: a room whose every submit
        // is refused still meets new clients.
        self.clients.forget_least_recent(self.config.max_clients);
    }

    /// Whether the sequencer knows the client's last committed seq.
    pub fn knows_client(&self, user: UserId, client_id: &ClientId) -> bool {
        self.clients.known(user, client_id) != Known::Unseen
    }
}

#[cfg(test)]
mod tests {
    use crate::sequencer::tests::{commit_one, ins, sub};
    use crate::sequencer::{Proposed, Rejection, Sequencer, SequencerConfig};
    use crate::{ClientId, Document, Seq, Timestamp, UserId, Version};
    use uuid::Uuid;

    #[test]
    fn a_client_the_store_knows_nothing_of_is_known_and_its_commits_win() {
        let mut s = Sequencer::new(Document::new(), SequencerConfig::default());
        let (user, client) = (UserId::new(Uuid::from_u128(1)), ClientId::new("a").unwrap());
        assert!(!s.knows_client(user, &client));
        s.remember_client(user, &client, None, Timestamp::from_millis(0));
        assert!(
            s.knows_client(user, &client),
            "no committed op is knowledge too"
        );
        // Any seq is new; once committed, it is remembered over `None`.
        commit_one(&mut s, sub(1, "a", 3, 0, ins(0, "x")));
        s.remember_client(user, &client, None, Timestamp::from_millis(1));
        assert_eq!(
            s.propose(&sub(1, "a", 3, 1, ins(0, "again"))),
            Ok(Proposed::Duplicate(Version::from(1))),
            "a stale `None` must not move the record back"
        );
        assert_eq!(
            s.propose(&sub(1, "a", 2, 1, ins(0, "old"))),
            Err(Rejection::OutOfOrder {
                seq: Seq::from(2),
                last: Seq::from(3)
            })
        );
        // The store's answer for a client seeds duplicates before history.
        let other = ClientId::new("b").unwrap();
        s.remember_client(
            user,
            &other,
            Some((Seq::from(9), Version::from(1))),
            Timestamp::from_millis(2),
        );
        assert_eq!(
            s.propose(&sub(1, "b", 9, 1, ins(0, "y"))),
            Ok(Proposed::Duplicate(Version::from(1)))
        );
    }

    #[test]
    fn forgotten_clients_are_bounded() {
        let config = SequencerConfig {
            max_clients: 10,
            max_history: 5,
            ..SequencerConfig::default()
        };
        let mut s = Sequencer::new(Document::new(), config);
        for i in 0..50u64 {
            commit_one(&mut s, sub(1, &format!("tab-{i}"), 1, i, ins(0, "x")));
        }
        assert!(s.clients.len() <= 10);
    }

    #[test]
    fn clients_learned_without_a_commit_are_bounded_too() {
        let config = SequencerConfig {
            max_clients: 10,
            ..SequencerConfig::default()
        };
        let mut s = Sequencer::new(Document::new(), config);
        for i in 0..50u64 {
            let client = ClientId::new(format!("tab-{i}")).unwrap();
            s.remember_client(
                UserId::new(Uuid::from_u128(1)),
                &client,
                None,
                Timestamp::from_millis(i),
            );
            assert!(s.knows_client(UserId::new(Uuid::from_u128(1)), &client));
        }
        assert!(s.clients.len() <= 10, "{} remembered", s.clients.len());
    }
}
