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
use crate::sequencer::CommittedOp;

/// A `submit` to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: Seq,
    pub base: Version,
    pub delta: Delta,
}

/// The caret or selection, in characters of the local document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub anchor: usize,
    pub head: usize,
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
}

/// Something the server said that does not fit the client's state: the
/// client must rejoin.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("expected version {expected}, got {got}")]
    VersionGap { expected: Version, got: Version },
    #[error("ack for seq {got:?} while {expected:?} is in flight")]
    UnexpectedAck { expected: Option<Seq>, got: Seq },
    #[error("seq {0} must be acknowledged or refused before new edits")]
    Resyncing(Seq),
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
            next_seq: Seq(1),
            state: State::Synchronized,
            selection: None,
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
            State::Synchronized => None,
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
        self.selection = selection.map(|s| Selection {
            anchor: s.anchor.min(self.doc.len()),
            head: s.head.min(self.doc.len()),
        });
    }

    /// Applies a local edit (a delta over the local document). Returns the
    /// submit to send now, if nothing else was in flight.
    pub fn edit(&mut self, delta: Delta) -> Result<Option<Outgoing>, ClientError> {
        if let State::Unconfirmed { inflight } = &self.state {
            return Err(ClientError::Resyncing(inflight.seq));
        }
        let delta = delta.fit(self.doc.len())?;
        // The local document's version counts local edits too; only
        // `self.version` tracks the server.
        self.doc.apply(&delta)?;
        self.selection = self
            .selection
            .map(|s| transform_selection(&delta, s, Bias::After));
        let state = std::mem::replace(&mut self.state, State::Synchronized);
        let (state, out) = match state {
            State::Synchronized => {
                let out = Outgoing {
                    seq: self.next_seq,
                    base: self.version,
                    delta,
                };
                self.next_seq = Seq(self.next_seq.0 + 1);
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
            State::Unconfirmed { .. } => unreachable!("refused above"),
        };
        self.state = state;
        Ok(out)
    }

    /// An op from the server (`ops` or catch-up). The client's own op,
    /// recognised by `client_id` and `seq`, counts as its ack.
    /// Returns a submit to send if the op acknowledged the in-flight one and
    /// a buffer was waiting.
    pub fn receive(&mut self, op: &CommittedOp) -> Result<Option<Outgoing>, ClientError> {
        if op.version <= self.version {
            return Ok(None);
        }
        let expected = self.version.next();
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
            State::Unconfirmed { inflight } => {
                // Not in the local document: only keep it current.
                let (inflight, _) = rebase(inflight, &server, op.version)?;
                (State::Unconfirmed { inflight }, server)
            }
        };
        self.doc.apply(&local)?;
        self.selection = self
            .selection
            .map(|s| transform_selection(&local, s, Bias::Before));
        self.state = state;
        self.version = op.version;
        Ok(None)
    }

    /// The ack of the in-flight submit. Returns the buffered submit to send
    /// next, if any.
    pub fn ack(&mut self, seq: Seq, version: Version) -> Result<Option<Outgoing>, ClientError> {
        let expected = self.inflight().map(|i| i.seq);
        if expected != Some(seq) {
            return Err(ClientError::UnexpectedAck { expected, got: seq });
        }
        if let State::Unconfirmed { .. } = self.state {
            // It was committed before the content we rejoined with, so it is
            // already in the local document.
            if version > self.version {
                return Err(ClientError::VersionGap {
                    expected: self.version,
                    got: version,
                });
            }
            self.state = State::Synchronized;
            return Ok(None);
        }
        if version != self.version.next() {
            return Err(ClientError::VersionGap {
                expected: self.version.next(),
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
                self.next_seq = Seq(self.next_seq.0 + 1);
                self.state = State::AwaitingAck {
                    inflight: out.clone(),
                };
                Ok(Some(out))
            }
            _ => Ok(None),
        }
    }

    /// The server refused the in-flight submit (`stale_base`, `forbidden`,
    /// `invalid_delta`...): it will never commit. The local document keeps
    /// showing it until the caller rejoins with [`Client::reset`]; this only
    /// frees the client to send its buffer. Returns the dropped submit.
    pub fn reject_inflight(&mut self) -> Option<Outgoing> {
        let state = std::mem::replace(&mut self.state, State::Synchronized);
        match state {
            State::Synchronized => None,
            State::AwaitingAck { inflight } | State::Unconfirmed { inflight } => Some(inflight),
            State::AwaitingWithBuffer { inflight, .. } => Some(inflight),
        }
    }

    /// What to re-send after reconnecting and applying the catch-up ops:
    /// the in-flight submit with its original `seq`, rebased to the current
    /// version.
    pub fn resend(&self) -> Option<Outgoing> {
        self.inflight().cloned()
    }

    /// Rejoined with full content (the server no longer had the ops after
    /// our version). Local edits not yet sent are dropped and returned; the
    /// in-flight one is kept to be re-sent (see `State::Unconfirmed`).
    pub fn reset(&mut self, content: Document) -> Option<Delta> {
        let state = std::mem::replace(&mut self.state, State::Synchronized);
        let (state, lost) = match state {
            State::Synchronized => (State::Synchronized, None),
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
            State::Synchronized | State::Unconfirmed { .. } => self.doc.len(),
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

/// A selection moved through an op.
pub fn transform_selection(op: &Delta, s: Selection, bias: Bias) -> Selection {
    Selection {
        anchor: op.transform_position(s.anchor, bias),
        head: op.transform_position(s.head, bias),
    }
}
