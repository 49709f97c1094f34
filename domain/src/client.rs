//! The client side of OT: the state machine a client runs against the
//! sequencer (as in ot.js: synchronized, awaiting an ack, awaiting an ack
//! with a buffer).
//!
//! Local edits apply to the local document at once. At most one submit is in
//! flight; edits made meanwhile are composed into a buffer and sent when the
//! ack arrives. Ops from the server are transformed over the in-flight op
//! and the buffer (which are transformed over them in turn, exactly as the
//! server will) before they apply locally. After a reconnect the in-flight
//! op is re-sent with the same `seq`, rebased over everything applied since.
//!
//! It does no I/O: callers feed it what arrived and send what it returns.

use crate::delta::{Delta, DeltaError};
use crate::document::Document;
use crate::ids::{ClientId, Seq, UserId, Version};
use crate::ot::{Bias, Side};
use crate::selection::Selection;
use crate::sequencer::CommittedOp;

/// A `submit` to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: Seq,
    pub base: Version,
    pub delta: Delta,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Synchronized,
    AwaitingAck {
        inflight: Outgoing,
    },
    AwaitingWithBuffer {
        inflight: Outgoing,
        buffer: Delta,
    },
    /// After a rejoin that returned full content: the in-flight op's fate is
    /// unknown and it is not in the local document. Re-sending it gets either
    /// `ack` with a version already included (it was committed) or
    /// `stale_base` (it never was, and is lost).
    Unconfirmed {
        inflight: Outgoing,
    },
    /// The server refused the in-flight op while the local document showed
    /// it: the local document holds edits that will never commit. Server ops
    /// are ignored and edits refused until [`Client::reset`].
    Diverged,
}

/// What a refused submit means for the local document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Nothing was in flight.
    Nothing,
    /// The op was not in the local document (see `State::Unconfirmed`):
    /// nothing else to do.
    Dropped(Outgoing),
    /// The local document showed it (and any edits after it): rejoin with
    /// `since: null` and [`Client::reset`] to the server's content. The
    /// refused op and the unsent buffer are returned: they are lost.
    MustResync(Outgoing, Option<Delta>),
}

/// Something the server said that does not fit the client's state: the
/// client must rejoin.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("expected version {expected}, got {got}")]
    VersionGap { expected: Version, got: Version },
    #[error("ack for seq {got:?} while {expected:?} is in flight")]
    UnexpectedAck { expected: Option<Seq>, got: Seq },
    /// Something the client already has arrived again: an op at or below
    /// its version, or an ack of a seq it sent that is no longer in flight
    /// (beyond the one answer owed to a re-sent submit, see
    /// [`Client::resend`]). "No op reaches a client twice" (PROTOCOL.md):
    /// harmless to the local document, but a server fault the caller
    /// must see.
    #[error("version {version} (seq {seq}) delivered again")]
    Duplicate { version: Version, seq: Seq },
    #[error("waiting for a resync (in flight: {0:?}) before new edits")]
    Resyncing(Option<Seq>),
    #[error("every seq up to 2^53 - 1 is used: start a new client_id")]
    SeqExhausted,
    #[error("delta does not apply: {0}")]
    Delta(#[from] DeltaError),
}

/// One client's view of a document.
#[derive(Debug, Clone)]
pub struct Client {
    user: UserId,
    client_id: ClientId,
    doc: Document,
    /// Last server version applied.
    version: Version,
    next_seq: Seq,
    state: State,
    selection: Option<Selection>,
    /// The seq last re-sent by [`Client::resend`], while its answer from
    /// the server may still come.
    resent: Option<Seq>,
    /// A re-sent submit recognised as the client's own op in `ops` before
    /// its answer came: the server still answers it with this one ack.
    owed_ack: Option<(Seq, Version)>,
}

impl Client {
    /// A client that has joined and received `doc` at its version.
    pub fn new(user: UserId, client_id: ClientId, doc: Document) -> Self {
        let version = doc.version();
        Client {
            user,
            client_id,
            doc,
            version,
            next_seq: Seq::from(1),
            state: State::Synchronized,
            selection: None,
            resent: None,
            owed_ack: None,
        }
    }

    pub fn user(&self) -> UserId {
        self.user
    }

    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The local document (server state plus unacknowledged edits).
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// Last server version applied: the `since` of a rejoin.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The submit waiting for its ack, if any.
    pub fn inflight(&self) -> Option<&Outgoing> {
        match &self.state {
            State::Synchronized | State::Diverged => None,
            State::AwaitingAck { inflight }
            | State::AwaitingWithBuffer { inflight, .. }
            | State::Unconfirmed { inflight } => Some(inflight),
        }
    }

    /// Whether everything local has been acknowledged.
    pub fn is_synchronized(&self) -> bool {
        self.state == State::Synchronized
    }

    pub fn selection(&self) -> Option<Selection> {
        self.selection
    }

    pub fn set_selection(&mut self, selection: Option<Selection>) {
        self.selection = selection.map(|s| s.clamp(self.doc.len()));
    }

    /// Applies a local edit (a delta over the local document). Returns the
    /// submit to send now, if nothing else was in flight.
    pub fn edit(&mut self, delta: Delta) -> Result<Option<Outgoing>, ClientError> {
        match &self.state {
            State::Unconfirmed { inflight } => {
                return Err(ClientError::Resyncing(Some(inflight.seq)));
            }
            State::Diverged => return Err(ClientError::Resyncing(None)),
            _ => {}
        }
        let delta = delta.fit(self.doc.len())?;
        // The local document's version counts local edits too; only
        // `self.version` tracks the server.
        self.doc.apply(&delta)?;
        self.selection = self.selection.map(|s| s.transform(&delta, Bias::After));
        let state = std::mem::replace(&mut self.state, State::Synchronized);
        let (state, out) = match state {
            State::Synchronized => {
                let out = Outgoing {
                    seq: self.next_seq,
                    base: self.version,
                    delta,
                };
                self.next_seq = self
                    .next_seq
                    .checked_add(1)
                    .ok_or(ClientError::SeqExhausted)?;
                (
                    State::AwaitingAck {
                        inflight: out.clone(),
                    },
                    Some(out),
                )
            }
            State::AwaitingAck { inflight } => (
                State::AwaitingWithBuffer {
                    inflight,
                    buffer: delta,
                },
                None,
            ),
            State::AwaitingWithBuffer { inflight, buffer } => (
                State::AwaitingWithBuffer {
                    inflight,
                    buffer: buffer.compose(&delta)?,
                },
                None,
            ),
            State::Unconfirmed { .. } | State::Diverged => unreachable!("refused above"),
        };
        self.state = state;
        Ok(out)
    }

    /// An op from the server (`ops` or catch-up). The client's own op,
    /// recognised by `client_id` and `seq`, counts as its ack.
    /// Returns a submit to send if the op acknowledged the in-flight one and
    /// a buffer was waiting.
    ///
    /// An op at or below the client's version is [`ClientError::Duplicate`]
    /// (nothing changes).
    pub fn receive(&mut self, op: &CommittedOp) -> Result<Option<Outgoing>, ClientError> {
        if self.state == State::Diverged {
            return Ok(None);
        }
        if op.version <= self.version {
            return Err(ClientError::Duplicate {
                version: op.version,
                seq: op.seq,
            });
        }
        // A version above ours exists (it is `op.version`), so ours has a next.
        let expected = self.version.next().unwrap_or(Version::MAX);
        if op.version != expected {
            return Err(ClientError::VersionGap {
                expected,
                got: op.version,
            });
        }
        if op.user == self.user
            && op.client_id == self.client_id
            && self.inflight().is_some_and(|i| i.seq == op.seq)
        {
            if self.resent.take() == Some(op.seq) {
                // The re-sent submit is still to be answered, with this ack.
                self.owed_ack = Some((op.seq, op.version));
            }
            return self.ack(op.seq, op.version);
        }
        let server = op.delta.clone().fit(self.server_len())?;
        let state = std::mem::replace(&mut self.state, State::Synchronized);
        let (state, local) = match state {
            State::Synchronized => (State::Synchronized, server),
            State::AwaitingAck { inflight } => {
                let (inflight, local) = rebase(inflight, &server, op.version)?;
                (State::AwaitingAck { inflight }, local)
            }
            State::AwaitingWithBuffer { inflight, buffer } => {
                let (inflight, server1) = rebase(inflight, &server, op.version)?;
                let buffer2 = buffer.transform(&server1, Side::Right)?;
                let local = server1.transform(&buffer, Side::Left)?;
                (
                    State::AwaitingWithBuffer {
                        inflight,
                        buffer: buffer2,
                    },
                    local,
                )
            }
            // Not in the local document and made on a version the client no
            // longer has: it is re-sent exactly as it was first sent.
            State::Unconfirmed { inflight } => (State::Unconfirmed { inflight }, server),
            State::Diverged => unreachable!("ignored above"),
        };
        self.doc.apply(&local)?;
        self.selection = self.selection.map(|s| s.transform(&local, Bias::Before));
        self.state = state;
        self.version = op.version;
        Ok(None)
    }

    /// The ack of the in-flight submit. Returns the buffered submit to send
    /// next, if any.
    ///
    /// An ack of a seq sent earlier and no longer in flight is
    /// [`ClientError::Duplicate`], but for one: a submit re-sent after a
    /// rejoin ([`Client::resend`]) whose op then arrived in `ops` before the
    /// server answered it is still answered, with an ack at that op's
    /// version (PROTOCOL.md: a committed `(user, client_id, seq)` is acked
    /// with the version it was committed at).
    pub fn ack(&mut self, seq: Seq, version: Version) -> Result<Option<Outgoing>, ClientError> {
        let expected = self.inflight().map(|i| i.seq);
        if expected != Some(seq) && seq < self.next_seq {
            if self.owed_ack == Some((seq, version)) {
                self.owed_ack = None;
                return Ok(None);
            }
            return Err(ClientError::Duplicate { version, seq });
        }
        if expected != Some(seq) {
            return Err(ClientError::UnexpectedAck { expected, got: seq });
        }
        // Answered.
        if self.resent == Some(seq) {
            self.resent = None;
        }
        if let State::Unconfirmed { .. } = self.state {
            if version > self.version {
                // Committed only now (its base was still in the server's
                // history): the local document lacks it. Forget it here; the
                // caller rejoins with `since` and receives it as an op.
                self.state = State::Synchronized;
                return Err(ClientError::VersionGap {
                    expected: self.version,
                    got: version,
                });
            }
            // It was committed before the content we rejoined with, so it is
            // already in the local document.
            self.state = State::Synchronized;
            return Ok(None);
        }
        if Some(version) != self.version.next() {
            return Err(ClientError::VersionGap {
                expected: self.version.next().unwrap_or(Version::MAX),
                got: version,
            });
        }
        self.version = version;
        let state = std::mem::replace(&mut self.state, State::Synchronized);
        match state {
            State::AwaitingWithBuffer { buffer, .. } => {
                let out = Outgoing {
                    seq: self.next_seq,
                    base: self.version,
                    delta: buffer,
                };
                self.next_seq = self
                    .next_seq
                    .checked_add(1)
                    .ok_or(ClientError::SeqExhausted)?;
                self.state = State::AwaitingAck {
                    inflight: out.clone(),
                };
                Ok(Some(out))
            }
            _ => Ok(None),
        }
    }

    /// The server refused the in-flight submit (`stale_base`, `forbidden`,
    /// `invalid_delta`...): it will never commit.
    pub fn refuse_inflight(&mut self) -> Refused {
        let state = std::mem::replace(&mut self.state, State::Synchronized);
        match state {
            State::Synchronized => Refused::Nothing,
            State::Diverged => {
                self.state = State::Diverged;
                Refused::Nothing
            }
            State::Unconfirmed { inflight } => Refused::Dropped(inflight),
            State::AwaitingAck { inflight } => {
                self.state = State::Diverged;
                Refused::MustResync(inflight, None)
            }
            State::AwaitingWithBuffer { inflight, buffer } => {
                self.state = State::Diverged;
                Refused::MustResync(inflight, Some(buffer))
            }
        }
    }

    /// Whether the client must rejoin with `since: null` and reset.
    pub fn must_resync(&self) -> bool {
        self.state == State::Diverged
    }

    /// What to re-send after reconnecting and applying the catch-up ops:
    /// the in-flight submit with its original `seq`, rebased to the current
    /// version. The caller sends it: the client then expects one answer to
    /// it, even if its op arrives in `ops` first.
    pub fn resend(&mut self) -> Option<Outgoing> {
        let out = self.inflight().cloned();
        self.resent = out.as_ref().map(|o| o.seq);
        out
    }

    /// Rejoined with full content (the server no longer had the ops after
    /// our version). Local edits not yet sent are dropped and returned; the
    /// in-flight one is kept to be re-sent (see `State::Unconfirmed`).
    pub fn reset(&mut self, content: Document) -> Option<Delta> {
        let state = std::mem::replace(&mut self.state, State::Synchronized);
        let (state, lost) = match state {
            State::Synchronized | State::Diverged => (State::Synchronized, None),
            State::AwaitingAck { inflight } | State::Unconfirmed { inflight } => {
                (State::Unconfirmed { inflight }, None)
            }
            State::AwaitingWithBuffer { inflight, buffer } => {
                (State::Unconfirmed { inflight }, Some(buffer))
            }
        };
        self.version = content.version();
        self.doc = content;
        self.selection = None;
        self.state = state;
        lost
    }

    /// Length of the document at the server's version, as the client knows
    /// it: the local length before the in-flight op and buffer.
    fn server_len(&self) -> usize {
        match &self.state {
            State::Synchronized | State::Unconfirmed { .. } | State::Diverged => self.doc.len(),
            State::AwaitingAck { inflight } => inflight.delta.base_len(),
            State::AwaitingWithBuffer { inflight, .. } => inflight.delta.base_len(),
        }
    }
}

/// `inflight` rebased over a server op, as the server will rebase it, and
/// the server op rebased over `inflight` for local application.
fn rebase(
    inflight: Outgoing,
    server: &Delta,
    version: Version,
) -> Result<(Outgoing, Delta), DeltaError> {
    let mine = inflight.delta.transform(server, Side::Right)?;
    let theirs = server.transform(&inflight.delta, Side::Left)?;
    Ok((
        Outgoing {
            seq: inflight.seq,
            base: version,
            delta: mine,
        },
        theirs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn client(text: &str) -> Client {
        Client::new(
            UserId::new(Uuid::from_u128(1)),
            ClientId::new("me").unwrap(),
            Document::from_text(text, Version::from(3)),
        )
    }

    fn ins(pos: usize, s: &str, len: usize) -> Delta {
        let mut d = Delta::new();
        d.retain(pos).insert(s);
        d.fit(len).unwrap()
    }

    fn server_op(version: u64, delta: Delta) -> CommittedOp {
        CommittedOp {
            version: Version::new(version).unwrap(),
            user: UserId::new(Uuid::from_u128(2)),
            client_id: ClientId::new("other").unwrap(),
            seq: Seq::from(1),
            delta,
        }
    }

    #[test]
    fn edits_go_out_one_at_a_time_and_the_rest_is_buffered() {
        let mut c = client("ab");
        let first = c.edit(ins(0, "x", 2)).unwrap().unwrap();
        assert_eq!((first.seq, first.base), (Seq::from(1), Version::from(3)));
        assert_eq!(c.edit(ins(1, "y", 3)).unwrap(), None);
        assert_eq!(c.edit(ins(2, "z", 4)).unwrap(), None);
        let next = c.ack(Seq::from(1), Version::from(4)).unwrap().unwrap();
        assert_eq!((next.seq, next.base), (Seq::from(2), Version::from(4)));
        assert_eq!(next.delta, ins(1, "yz", 3));
        assert_eq!(c.ack(Seq::from(2), Version::from(5)).unwrap(), None);
        assert!(c.is_synchronized());
        assert_eq!(c.document().text(), "xyzab");
    }

    #[test]
    fn server_ops_are_transformed_over_inflight_and_buffer() {
        let mut c = client("ab");
        c.edit(ins(1, "x", 2)).unwrap();
        c.edit(ins(3, "y", 3)).unwrap();
        c.receive(&server_op(4, ins(0, "S", 2))).unwrap();
        assert_eq!(c.document().text(), "Saxby");
        assert_eq!(c.version(), Version::from(4));
        // The in-flight op is rebased as the server will rebase it.
        assert_eq!(c.resend().unwrap().delta, ins(2, "x", 3));
        assert_eq!(c.resend().unwrap().base, Version::from(4));
    }

    fn own_op(c: &Client, out: &Outgoing, version: u64) -> CommittedOp {
        CommittedOp {
            version: Version::new(version).unwrap(),
            user: c.user(),
            client_id: c.client_id().clone(),
            seq: out.seq,
            delta: out.delta.clone(),
        }
    }

    #[test]
    fn own_op_in_the_catch_up_counts_as_the_ack_and_a_later_ack_is_a_duplicate() {
        let mut c = client("ab");
        let out = c.edit(ins(0, "x", 2)).unwrap().unwrap();
        assert_eq!(c.receive(&own_op(&c, &out, 4)).unwrap(), None);
        assert!(c.is_synchronized());
        // Not re-sent: no answer is owed, so an ack is a second delivery.
        assert_eq!(
            c.ack(out.seq, Version::from(4)),
            Err(ClientError::Duplicate {
                version: Version::from(4),
                seq: out.seq
            })
        );
        assert_eq!(c.document().text(), "xab");
        assert_eq!(c.version(), Version::from(4));
        assert!(matches!(
            c.ack(Seq::from(9), Version::from(5)),
            Err(ClientError::UnexpectedAck { .. })
        ));
    }

    #[test]
    fn a_second_ack_of_the_same_submit_is_a_duplicate() {
        let mut c = client("ab");
        let out = c.edit(ins(0, "x", 2)).unwrap().unwrap();
        assert_eq!(c.ack(out.seq, Version::from(4)).unwrap(), None);
        assert_eq!(
            c.ack(out.seq, Version::from(4)),
            Err(ClientError::Duplicate {
                version: Version::from(4),
                seq: out.seq
            })
        );
        // Also while a later submit is in flight.
        let next = c.edit(ins(0, "y", 3)).unwrap().unwrap();
        assert!(matches!(
            c.ack(out.seq, Version::from(4)),
            Err(ClientError::Duplicate { .. })
        ));
        assert_eq!(c.inflight().map(|i| i.seq), Some(next.seq));
        assert_eq!(c.ack(next.seq, Version::from(5)).unwrap(), None);
        assert_eq!(c.document().text(), "yxab");
    }

    #[test]
    fn a_resent_submit_seen_in_ops_first_is_still_answered_once() {
        let mut c = client("ab");
        let out = c.edit(ins(0, "x", 2)).unwrap().unwrap();
        // Rejoined: the catch-up did not hold it yet, so it is re-sent...
        assert_eq!(c.resend(), Some(out.clone()));
        // ...then the first attempt's commit arrives in `ops`...
        assert_eq!(c.receive(&own_op(&c, &out, 4)).unwrap(), None);
        assert!(c.is_synchronized());
        // ...and the re-sent submit's answer names that version: once.
        assert_eq!(c.ack(out.seq, Version::from(4)).unwrap(), None);
        assert!(matches!(
            c.ack(out.seq, Version::from(4)),
            Err(ClientError::Duplicate { .. })
        ));
        // At another version it would be another op: not owed.
        let mut c = client("ab");
        let out = c.edit(ins(0, "x", 2)).unwrap().unwrap();
        c.resend();
        c.receive(&own_op(&c, &out, 4)).unwrap();
        assert!(matches!(
            c.ack(out.seq, Version::from(5)),
            Err(ClientError::Duplicate { .. })
        ));
    }

    #[test]
    fn an_op_at_or_below_the_clients_version_is_a_duplicate() {
        let mut c = client("ab");
        c.receive(&server_op(4, ins(0, "S", 2))).unwrap();
        assert_eq!(
            c.receive(&server_op(4, ins(0, "S", 2))),
            Err(ClientError::Duplicate {
                version: Version::from(4),
                seq: Seq::from(1)
            })
        );
        assert!(matches!(
            c.receive(&server_op(2, ins(0, "S", 2))),
            Err(ClientError::Duplicate { .. })
        ));
        // Nothing changed.
        assert_eq!(c.document().text(), "Sab");
        assert_eq!(c.version(), Version::from(4));
    }

    #[test]
    fn a_gap_in_server_versions_is_an_error() {
        let mut c = client("ab");
        assert_eq!(
            c.receive(&server_op(5, ins(0, "S", 2))),
            Err(ClientError::VersionGap {
                expected: Version::from(4),
                got: Version::from(5)
            })
        );
    }

    #[test]
    fn a_refused_inflight_op_forces_a_full_resync() {
        let mut c = client("ab");
        c.edit(ins(0, "x", 2)).unwrap();
        c.edit(ins(0, "y", 3)).unwrap();
        let refused = c.refuse_inflight();
        assert!(matches!(refused, Refused::MustResync(_, Some(_))));
        assert!(c.must_resync());
        assert!(c.edit(ins(0, "z", 4)).is_err());
        c.reset(Document::from_text("server", Version::from(9)));
        assert!(c.is_synchronized());
        assert_eq!(c.document().text(), "server");
        assert_eq!(c.version(), Version::from(9));
    }

    #[test]
    fn after_a_content_rejoin_the_inflight_op_is_resent_unchanged() {
        let mut c = client("ab");
        let out = c.edit(ins(0, "x", 2)).unwrap().unwrap();
        c.edit(ins(0, "y", 3)).unwrap();
        let lost = c.reset(Document::from_text("xab!", Version::from(7)));
        assert!(lost.is_some());
        assert_eq!(c.resend(), Some(out.clone()));
        assert!(c.edit(ins(0, "z", 4)).is_err());
        // It had been committed at version 4, inside the content.
        assert_eq!(c.ack(out.seq, Version::from(4)).unwrap(), None);
        assert!(c.is_synchronized());
    }

    #[test]
    fn an_unconfirmed_op_committed_only_after_the_rejoin_is_caught_up_as_an_op() {
        let mut c = client("ab");
        let out = c.edit(ins(0, "x", 2)).unwrap().unwrap();
        c.reset(Document::from_text("ab", Version::from(7)));
        assert!(matches!(
            c.ack(out.seq, Version::from(8)),
            Err(ClientError::VersionGap { .. })
        ));
        // Rejoining with since = 7 brings it back as an ordinary op.
        let own = CommittedOp {
            version: Version::from(8),
            user: c.user(),
            client_id: c.client_id().clone(),
            seq: out.seq,
            delta: out.delta,
        };
        assert_eq!(c.receive(&own).unwrap(), None);
        assert_eq!(c.document().text(), "xab");
        assert!(c.is_synchronized());
    }

    #[test]
    fn selections_follow_edits() {
        let mut c = client("abcd");
        c.set_selection(Some(Selection { anchor: 1, head: 3 }));
        c.receive(&server_op(4, ins(0, "SS", 4))).unwrap();
        assert_eq!(c.selection(), Some(Selection { anchor: 3, head: 5 }));
        c.edit(ins(5, "x", 6)).unwrap();
        assert_eq!(c.selection(), Some(Selection { anchor: 3, head: 6 }));
    }
}
