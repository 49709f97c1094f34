//! The sequencer: one per open document, it turns submits into the next
//! versions.
//!
//! A submit is a delta made at `base`. The sequencer dedups it by
//! `(user, client_id, seq)`, rebases it over every op committed after `base`
//! (op by op, as `Side::Right`, never against a composed history) and
//! proposes it for the next version. A proposal is not a commit: the caller
//! appends it to the operation store and only then calls
//! [`Sequencer::commit`]. When the store answers that another instance won
//! the version, the caller calls [`Sequencer::abort_pending`], applies what
//! it missed with [`Sequencer::apply_remote`] and proposes again. Proposals
//! made while earlier ones are still pending build on them, which is what
//! group commit needs.
//!
//! History is kept for a bounded number of ops and a bounded age; a base
//! older than that is `stale_base` (the client rejoins).
//!
//! # Layout
//!
//! - this file: the types, and propose, commit, abort_pending and
//!   apply_remote;
//! - `clients`: what is remembered of each client's last commit (`Known`),
//!   for dedup beyond history, and how that memory is bounded;
//! - `history`: the committed ops kept (`Entry`), and how they are pruned.

mod clients;
mod history;
mod rebase;

pub use rebase::rebase_over_log;

use crate::delta::{Component, Delta, DeltaError};
use crate::document::Document;
use crate::ids::{ClientId, MAX_LEN, Seq, Timestamp, UserId, Version};
use crate::json_size;
use crate::ot::{Bias, Side};
use clients::{Clients, Known};
use history::Entry;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// An operation with its place in the document's history: the wire shape of
/// an entry of `ops` (PROTOCOL.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOp {
    pub version: Version,
    pub user: UserId,
    pub client_id: ClientId,
    pub seq: Seq,
    pub delta: Delta,
}

/// What identifies an op forever: its idempotency key. A store that holds
/// another op at a version than the one a room applied there has lost or
/// rewritten history.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpKey {
    pub user: UserId,
    pub client_id: ClientId,
    pub seq: Seq,
}

impl CommittedOp {
    /// Its idempotency key.
    pub fn key(&self) -> OpKey {
        OpKey {
            user: self.user,
            client_id: self.client_id.clone(),
            seq: self.seq,
        }
    }

    /// Bytes this op holds in memory: its own size plus what it allocated
    /// (components, text, attribute maps; shared maps and the shared client
    /// id are counted in full, so this is an upper bound). History budgets
    /// are kept in these bytes.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<CommittedOp>() + self.delta.heap_bytes() + self.client_id.as_str().len()
    }
}

/// A client's `submit`, with the user it was authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub user: UserId,
    pub client_id: ClientId,
    pub seq: Seq,
    pub base: Version,
    /// As received: a trailing retain may be missing.
    pub delta: Delta,
}

/// What became of a submit that was not rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposed {
    /// A new op for this version, now pending (see [`Sequencer::pending`]):
    /// append it to the store, then [`Sequencer::commit`] it.
    New(Version),
    /// Already committed at this version: acknowledge, commit nothing.
    Duplicate(Version),
    /// Already proposed at this version and waiting for the store: answer
    /// when that commit completes.
    Pending(Version),
}

/// Why a submit was refused. Each maps to a wire error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("base {base} is ahead of the document's version {version}")]
    FutureBase { base: Version, version: Version },
    #[error("ops after base {base} are no longer kept (oldest available base is {oldest}): rejoin")]
    StaleBase { base: Version, oldest: Version },
    #[error("seq {seq} is not greater than {last}, the last committed for this client")]
    OutOfOrder { seq: Seq, last: Seq },
    #[error("invalid delta: {0}")]
    InvalidDelta(#[from] DeltaError),
    #[error("{what} would be {actual}, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        limit: usize,
        actual: usize,
    },
}

/// Why an op committed elsewhere could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("expected version {expected}, got {got}: fill the gap from the store first")]
    Gap { expected: Version, got: Version },
    #[error("proposals are pending: abort them before applying remote ops")]
    PendingProposals,
    #[error("remote op {version} does not apply: {source}")]
    Invalid {
        version: Version,
        #[source]
        source: DeltaError,
    },
}

/// Limits of one sequencer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequencerConfig {
    /// Most ops kept for rebasing and catch-up.
    pub max_history: usize,
    /// Ops older than this (ms) may be dropped from history.
    pub max_history_age_ms: u64,
    /// Most bytes of ops kept in history ([`CommittedOp::memory_bytes`]);
    /// the oldest go first. The newest op is always kept, so one op larger
    /// than the budget still becomes history until the next one.
    pub max_history_bytes: usize,
    /// Largest document, in characters.
    pub max_document_chars: usize,
    /// Most components in one delta.
    pub max_delta_components: usize,
    /// Largest document content as JSON (`joined.content`), in bytes: every
    /// document Relay accepts can be sent to a joining client in one frame.
    pub max_document_bytes: usize,
    /// Largest committed op as JSON, in bytes (a rebased op can outgrow the
    /// submitted one when a formatting retain is split by concurrent ops).
    pub max_op_bytes: usize,
    /// Most clients whose last seq is remembered in memory (the store's
    /// idempotency key covers the rest).
    pub max_clients: usize,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            max_history: 10_000,
            max_history_age_ms: 600_000,
            max_history_bytes: 8 << 20,
            max_document_chars: 10_000_000,
            max_delta_components: 10_000,
            max_document_bytes: json_size::max_document_bytes_for(10_000_000),
            max_op_bytes: 4 << 20,
            max_clients: 10_000,
        }
    }
}

/// The sequencer of one document. See the module documentation.
#[derive(Debug)]
pub struct Sequencer {
    doc: Document,
    history: VecDeque<Box<Entry>>,
    /// Sum of the history entries' `bytes`.
    history_bytes: usize,
    pending: Vec<CommittedOp>,
    /// For each pending op, a bound of what it adds to the content's JSON.
    pending_growth: Vec<usize>,
    /// Document length once every pending op applies.
    pending_len: usize,
    clients: Clients,
    config: SequencerConfig,
}

impl Sequencer {
    /// A sequencer for `doc` (as loaded: snapshot plus tail), with no
    /// history before its version.
    pub fn new(mut doc: Document, config: SequencerConfig) -> Self {
        let pending_len = doc.len();
        doc.set_tight_above(config.max_document_bytes);
        Sequencer {
            doc,
            history: VecDeque::new(),
            history_bytes: 0,
            pending: Vec::new(),
            pending_growth: Vec::new(),
            pending_len,
            clients: Clients::default(),
            config,
        }
    }

    /// The committed document.
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// The last committed version.
    pub fn version(&self) -> Version {
        self.doc.version()
    }

    pub fn config(&self) -> &SequencerConfig {
        &self.config
    }

    /// Proposals waiting for the store, in version order: the batch to
    /// append.
    pub fn pending(&self) -> &[CommittedOp] {
        &self.pending
    }

    /// The last committed op, as applied (its delta spanning the document).
    pub fn last_committed(&self) -> Option<&CommittedOp> {
        self.history.back().map(|e| &e.op)
    }

    /// The oldest base a submit may still use.
    pub fn oldest_base(&self) -> Version {
        self.history.front().map_or(self.version(), |e| {
            e.op.version.prev().unwrap_or(Version::ZERO)
        })
    }

    /// Ops committed after `since`, if all are still kept.
    pub fn ops_since(&self, since: Version) -> Option<impl ExactSizeIterator<Item = &CommittedOp>> {
        if since > self.version() || since < self.oldest_base() {
            return None;
        }
        let skip = usize::try_from(since.since(self.oldest_base())).ok()?;
        Some(self.history.range(skip..).map(|e| &e.op))
    }

    /// Dedups, checks and rebases a submit; a new op becomes pending. The
    /// caller keeps the submission: after [`Sequencer::abort_pending`] it
    /// proposes it again.
    pub fn propose(&mut self, sub: &Submission) -> Result<Proposed, Rejection> {
        let same_client = |op: &CommittedOp| op.user == sub.user && op.client_id == sub.client_id;
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| p.seq == sub.seq && same_client(p))
        {
            return Ok(Proposed::Pending(p.version));
        }
        match self.clients.known(sub.user, &sub.client_id) {
            Known::Last(last, version) if last == sub.seq => {
                return Ok(Proposed::Duplicate(version));
            }
            Known::Last(last, _) if sub.seq < last => {
                return match self.find_committed(sub.user, &sub.client_id, sub.seq) {
                    Some(v) => Ok(Proposed::Duplicate(v)),
                    None => Err(Rejection::OutOfOrder { seq: sub.seq, last }),
                };
            }
            Known::Last(..) => {}
            // Not remembered (new, or forgotten), or nothing committed as
            // far as the store knew: history may still know it.
            Known::Unseen | Known::NothingCommitted => {
                if let Some(v) = self.find_committed(sub.user, &sub.client_id, sub.seq) {
                    return Ok(Proposed::Duplicate(v));
                }
            }
        }
        if let Some(p) = self.pending.iter().rev().find(|p| same_client(p))
            && sub.seq < p.seq
        {
            return Err(Rejection::OutOfOrder {
                seq: sub.seq,
                last: p.seq,
            });
        }
        let version = self.version();
        if sub.base > version {
            return Err(Rejection::FutureBase {
                base: sub.base,
                version,
            });
        }
        let oldest = self.oldest_base();
        if sub.base < oldest {
            return Err(Rejection::StaleBase {
                base: sub.base,
                oldest,
            });
        }
        if sub.delta.components().len() > self.config.max_delta_components {
            return Err(Rejection::TooLarge {
                what: "delta components",
                limit: self.config.max_delta_components,
                actual: sub.delta.components().len(),
            });
        }
        let skip = usize::try_from(sub.base.since(oldest)).expect("bounded by history length");
        let len_at_base = self
            .history
            .get(skip)
            .map_or(self.doc.len(), |e| e.op.delta.base_len());
        // Rebase op by op; the submitted delta is only copied when nothing
        // has to be transformed or its trailing retain is missing.
        let mut delta: Option<Delta> = None;
        if sub.delta.base_len() != len_at_base {
            delta = Some(sub.delta.clone().fit(len_at_base)?);
        }
        let concurrent = self
            .history
            .range(skip..)
            .map(|e| &e.op.delta)
            .chain(self.pending.iter().map(|p| &p.delta));
        for other in concurrent {
            let current = delta.as_ref().unwrap_or(&sub.delta);
            delta = Some(current.transform(other, Side::Right)?);
        }
        let delta = delta.unwrap_or_else(|| sub.delta.clone());
        // Rebasing over the pending ops makes it span what they produce;
        // checked here, before anything is appended, rather than trusted
        // when the op is applied after its commit.
        delta.check_base(self.pending_len)?;
        if delta.target_len() > self.config.max_document_chars
            && delta.target_len() > delta.base_len()
        {
            return Err(Rejection::TooLarge {
                what: "document length",
                limit: self.config.max_document_chars,
                actual: delta.target_len(),
            });
        }
        let op_bytes = json_len_within(&delta, self.config.max_op_bytes);
        if op_bytes > self.config.max_op_bytes {
            return Err(Rejection::TooLarge {
                what: "operation as JSON, in bytes",
                limit: self.config.max_op_bytes,
                actual: op_bytes,
            });
        }
        let growth = self.growth_bound(&delta);
        if growth > 0 {
            let after = self
                .doc
                .content_json_bound()
                .saturating_add(self.pending_growth.iter().sum())
                .saturating_add(growth);
            if after > self.config.max_document_bytes {
                return Err(Rejection::TooLarge {
                    what: "document content as JSON, in bytes (at most)",
                    limit: self.config.max_document_bytes,
                    actual: after,
                });
            }
        }
        let Some(at) = u64::try_from(self.pending.len() + 1)
            .ok()
            .and_then(|n| version.checked_add(n))
        else {
            return Err(Rejection::TooLarge {
                what: "document version",
                limit: MAX_LEN,
                actual: MAX_LEN,
            });
        };
        self.pending_len = delta.target_len();
        self.pending_growth.push(growth);
        self.pending.push(CommittedOp {
            version: at,
            user: sub.user,
            client_id: sub.client_id.clone(),
            seq: sub.seq,
            delta,
        });
        Ok(Proposed::New(at))
    }

    /// The store made every pending op up to `through` durable: they become
    /// history and apply to the document. Returns how many were committed.
    pub fn commit(&mut self, through: Version, now: Timestamp) -> usize {
        let n = self
            .pending
            .iter()
            .take_while(|p| p.version <= through)
            .count();
        let committed: Vec<CommittedOp> = self.pending.drain(..n).collect();
        self.pending_growth.drain(..n);
        for op in committed {
            self.doc
                .apply(&op.delta)
                .expect("a pending op was rebased onto the document it now applies to");
            self.clients
                .remember(op.user, &op.client_id, Some((op.seq, op.version)), now);
            self.push_history(Entry::new(op, now));
        }
        self.prune(now);
        n
    }

    /// Drops every pending proposal (the store refused the batch). The
    /// caller applies what it missed and proposes its submissions again.
    pub fn abort_pending(&mut self) -> usize {
        self.pending_len = self.doc.len();
        let n = self.pending.len();
        self.pending.clear();
        self.pending_growth.clear();
        n
    }

    /// Applies an op committed by another instance. Ops at or below the
    /// current version are ignored (already applied); a gap is an error.
    pub fn apply_remote(&mut self, op: CommittedOp, now: Timestamp) -> Result<bool, RemoteError> {
        // At the last version there is, every op is already applied.
        let Some(expected) = self.version().next() else {
            return Ok(false);
        };
        if op.version < expected {
            return Ok(false);
        }
        if op.version > expected {
            return Err(RemoteError::Gap {
                expected,
                got: op.version,
            });
        }
        if !self.pending.is_empty() {
            return Err(RemoteError::PendingProposals);
        }
        // Ops read back from the wire or a store may omit the trailing retain.
        let mut op = op;
        op.delta = op
            .delta
            .fit(self.doc.len())
            .map_err(|source| RemoteError::Invalid {
                version: op.version,
                source,
            })?;
        self.doc
            .apply(&op.delta)
            .map_err(|source| RemoteError::Invalid {
                version: op.version,
                source,
            })?;
        self.pending_len = self.doc.len();
        self.clients
            .remember(op.user, &op.client_id, Some((op.seq, op.version)), now);
        self.push_history(Entry::new(op, now));
        self.prune(now);
        Ok(true)
    }

    /// Moves a position taken at `version` to the current version. `None`
    /// if `version` is in the future or no longer covered by history.
    pub fn rebase_position(&self, pos: usize, version: Version, bias: Bias) -> Option<usize> {
        let ops = self.ops_since(version)?;
        let mut pos = pos;
        let mut first = true;
        for op in ops {
            if first {
                pos = pos.min(op.delta.base_len());
                first = false;
            }
            pos = op.delta.transform_position(pos, bias);
        }
        Some(pos.min(self.doc.len()))
    }

    /// A bound of how much `delta` (rebased onto the pending ops) can add
    /// to the content's JSON: new text at 9 bytes a character, a run for
    /// each insert, and for a formatting retain its change on every run it
    /// covers; each may split a run, duplicating that run's formatting.
    fn growth_bound(&self, delta: &Delta) -> usize {
        let split = json_size::FORMATTED_RUN + self.doc.largest_run_json();
        // After pending ops, positions no longer match the document's runs:
        // count them all (and the runs the pending ops may add).
        let exact = self.pending.is_empty();
        let pending_runs: usize = self
            .pending
            .iter()
            .map(|p| 2 * p.delta.components().len())
            .sum();
        let mut growth = 0usize;
        let mut at = 0;
        for c in delta.components() {
            match c {
                Component::Insert { text, attributes } => {
                    let new_run = json_size::FORMATTED_RUN
                        + if attributes.is_empty() {
                            0
                        } else {
                            attributes.json_len()
                        };
                    growth = growth
                        .saturating_add(text.chars().count().saturating_mul(json_size::MAX_CHAR))
                        .saturating_add(new_run + split);
                }
                Component::Retain { len, attributes } => {
                    if !attributes.is_empty() {
                        let covered = if exact {
                            self.doc.runs_in(at, *len)
                        } else {
                            self.doc.run_count() + pending_runs
                        };
                        growth =
                            growth
                                .saturating_add(covered.saturating_mul(
                                    json_size::ATTRIBUTES_KEY + attributes.json_len(),
                                ))
                                .saturating_add(2 * split);
                    }
                    at += len;
                }
                Component::Delete { len } => at += len,
            }
        }
        growth
    }

    /// Length the next proposal must produce from (after pending ops).
    pub fn pending_len(&self) -> usize {
        self.pending_len
    }
}

/// `delta`'s size as JSON, counted up to just past `limit` (so a huge one
/// costs no more than the limit). A delta without formatting is bounded
/// without serialising it.
fn json_len_within(delta: &Delta, limit: usize) -> usize {
    if !delta.has_attributes() {
        let bound = json_size::BRACKETS
            + json_size::PLAIN_COMPONENT * delta.components().len()
            + json_size::MAX_CHAR * delta.inserted_chars();
        if bound <= limit {
            return bound;
        }
    }
    json_size::len_within(delta, limit)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use uuid::Uuid;

    pub(super) fn user(n: u128) -> UserId {
        UserId::new(Uuid::from_u128(n))
    }

    pub(super) fn sub(u: u128, client: &str, seq: u64, base: u64, delta: Delta) -> Submission {
        Submission {
            user: user(u),
            client_id: ClientId::new(client).unwrap(),
            seq: Seq::new(seq).unwrap(),
            base: Version::new(base).unwrap(),
            delta,
        }
    }

    pub(super) fn ins(pos: usize, text: &str) -> Delta {
        let mut d = Delta::new();
        d.retain(pos).insert(text);
        d
    }

    pub(super) fn commit_one(s: &mut Sequencer, submission: Submission) -> CommittedOp {
        match s.propose(&submission).unwrap() {
            Proposed::New(v) => {
                let op = s.pending()[0].clone();
                assert_eq!(op.version, v);
                s.commit(v, Timestamp::from_millis(0));
                op
            }
            other => panic!("expected a new op, got {other:?}"),
        }
    }

    #[test]
    fn a_late_submit_is_rebased_over_what_was_committed_after_its_base() {
        let mut s = Sequencer::new(
            Document::from_text("ac", Version::from(0)),
            SequencerConfig::default(),
        );
        commit_one(&mut s, sub(1, "a", 1, 0, ins(1, "b")));
        let op = commit_one(&mut s, sub(2, "b", 1, 0, ins(2, "d")));
        assert_eq!(op.version, Version::from(2));
        assert_eq!(s.document().text(), "abcd");
    }

    #[test]
    fn concurrent_inserts_at_one_place_keep_commit_order() {
        let mut s = Sequencer::new(Document::new(), SequencerConfig::default());
        commit_one(&mut s, sub(1, "a", 1, 0, ins(0, "first")));
        commit_one(&mut s, sub(2, "b", 1, 0, ins(0, "second")));
        assert_eq!(s.document().text(), "firstsecond");
    }

    #[test]
    fn a_resent_submit_is_a_duplicate_whatever_it_carries() {
        let mut s = Sequencer::new(Document::new(), SequencerConfig::default());
        commit_one(&mut s, sub(1, "a", 7, 0, ins(0, "x")));
        commit_one(&mut s, sub(2, "b", 1, 1, ins(1, "y")));
        let again = s.propose(&sub(1, "a", 7, 2, ins(0, "zzz")));
        assert_eq!(again, Ok(Proposed::Duplicate(Version::from(1))));
        assert_eq!(s.version(), Version::from(2));
        assert_eq!(s.pending().len(), 0);
    }

    #[test]
    fn seq_not_above_the_last_is_out_of_order() {
        let mut s = Sequencer::new(Document::new(), SequencerConfig::default());
        commit_one(&mut s, sub(1, "a", 5, 0, ins(0, "x")));
        assert_eq!(
            s.propose(&sub(1, "a", 4, 1, ins(0, "y"))),
            Err(Rejection::OutOfOrder {
                seq: Seq::from(4),
                last: Seq::from(5)
            })
        );
        // The same seq from another client or user is unrelated.
        assert!(matches!(
            s.propose(&sub(1, "other-tab", 4, 1, ins(0, "y"))),
            Ok(Proposed::New(_))
        ));
    }

    #[test]
    fn future_stale_invalid_and_too_large_are_typed() {
        let config = SequencerConfig {
            max_history: 2,
            max_document_chars: 5,
            ..SequencerConfig::default()
        };
        let mut s = Sequencer::new(Document::new(), config);
        for i in 1..=3 {
            commit_one(&mut s, sub(1, "a", i, i - 1, ins(0, "x")));
        }
        let before = s.document().clone();
        let r = |s: &mut Sequencer, seq, base, d| s.propose(&sub(2, "b", seq, base, d));
        assert_eq!(
            r(&mut s, 1, 4, ins(0, "y")),
            Err(Rejection::FutureBase {
                base: Version::from(4),
                version: Version::from(3)
            })
        );
        assert_eq!(
            r(&mut s, 1, 0, ins(0, "y")),
            Err(Rejection::StaleBase {
                base: Version::from(0),
                oldest: Version::from(1)
            })
        );
        assert_eq!(
            r(&mut s, 1, 3, Delta::identity(4)),
            Err(Rejection::InvalidDelta(DeltaError::BaseLengthMismatch {
                expected: 3,
                actual: 4
            }))
        );
        assert!(matches!(
            r(&mut s, 1, 3, ins(0, "yyy")),
            Err(Rejection::TooLarge {
                limit: 5,
                actual: 6,
                ..
            })
        ));
        assert_eq!(s.document(), &before);
        assert_eq!(s.pending().len(), 0);
        // Base 1 is still inside the window: the delta spans the document
        // as it was at version 1.
        assert!(matches!(r(&mut s, 1, 1, ins(1, "y")), Ok(Proposed::New(_))));
    }

    #[test]
    fn proposals_build_on_pending_ones_and_commit_together() {
        let mut s = Sequencer::new(Document::new(), SequencerConfig::default());
        let Proposed::New(a) = s.propose(&sub(1, "a", 1, 0, ins(0, "a"))).unwrap() else {
            panic!()
        };
        let Proposed::New(b) = s.propose(&sub(2, "b", 1, 0, ins(0, "b"))).unwrap() else {
            panic!()
        };
        assert_eq!((a, b), (Version::from(1), Version::from(2)));
        assert_eq!(
            s.propose(&sub(1, "a", 1, 0, ins(0, "a"))),
            Ok(Proposed::Pending(Version::from(1)))
        );
        assert_eq!(s.version(), Version::from(0));
        assert_eq!(s.commit(Version::from(2), Timestamp::from_millis(0)), 2);
        assert_eq!(s.document().text(), "ab");
    }

    #[test]
    fn losing_the_race_applies_the_remote_op_then_proposes_again() {
        let mut s = Sequencer::new(
            Document::from_text("xy", Version::from(0)),
            SequencerConfig::default(),
        );
        let Proposed::New(mine) = s.propose(&sub(1, "a", 1, 0, ins(1, "A"))).unwrap() else {
            panic!()
        };
        assert_eq!(mine, Version::from(1));
        let submission = sub(1, "a", 1, 0, ins(1, "A"));
        // Another instance committed version 1 first.
        let theirs = CommittedOp {
            version: Version::from(1),
            user: user(9),
            client_id: ClientId::new("remote").unwrap(),
            seq: Seq::from(1),
            delta: ins(1, "B").fit(2).unwrap(),
        };
        assert_eq!(
            s.apply_remote(theirs.clone(), Timestamp::from_millis(0)),
            Err(RemoteError::PendingProposals)
        );
        assert_eq!(s.abort_pending(), 1);
        assert!(s.apply_remote(theirs, Timestamp::from_millis(0)).unwrap());
        assert_eq!(s.propose(&submission), Ok(Proposed::New(Version::from(2))));
        s.commit(Version::from(2), Timestamp::from_millis(0));
        assert_eq!(s.document().text(), "xBAy");
    }

    #[test]
    fn a_gap_in_remote_ops_is_refused() {
        let mut s = Sequencer::new(Document::new(), SequencerConfig::default());
        let op = CommittedOp {
            version: Version::from(2),
            user: user(1),
            client_id: ClientId::new("r").unwrap(),
            seq: Seq::from(1),
            delta: ins(0, "x"),
        };
        assert_eq!(
            s.apply_remote(op, Timestamp::from_millis(0)),
            Err(RemoteError::Gap {
                expected: Version::from(1),
                got: Version::from(2)
            })
        );
    }

    #[test]
    fn positions_are_rebased_through_history() {
        let mut s = Sequencer::new(
            Document::from_text("hello", Version::from(0)),
            SequencerConfig::default(),
        );
        commit_one(&mut s, sub(1, "a", 1, 0, ins(0, ">> ")));
        assert_eq!(
            s.rebase_position(5, Version::from(0), Bias::Before),
            Some(8)
        );
        assert_eq!(
            s.rebase_position(5, Version::from(1), Bias::Before),
            Some(5)
        );
        assert_eq!(s.rebase_position(5, Version::from(2), Bias::Before), None);
    }

    #[test]
    fn documents_and_ops_are_bounded_in_bytes() {
        let config = SequencerConfig {
            max_document_bytes: 2_000,
            max_op_bytes: 1_000,
            ..SequencerConfig::default()
        };
        let mut s = Sequencer::new(Document::new(), config);
        // 150 characters: at most 9 bytes each in the bound, and the runs.
        commit_one(&mut s, sub(1, "a", 1, 0, ins(0, &"x".repeat(150))));
        let r = s.propose(&sub(1, "a", 2, 1, ins(0, &"y".repeat(100))));
        assert!(
            matches!(r, Err(Rejection::TooLarge { limit: 2_000, .. })),
            "{r:?}"
        );
        // A delete or a plain retain adds nothing: always allowed.
        let mut d = Delta::new();
        d.delete(10);
        assert!(matches!(
            s.propose(&sub(1, "a", 2, 1, d)),
            Ok(Proposed::New(_))
        ));
        s.abort_pending();
        // A formatting op whose JSON is over the op limit.
        let mut big = Delta::new();
        for i in 0..60 {
            big.retain_with(1, crate::Attributes::new().with("k", i))
                .retain(1);
        }
        let r = s.propose(&sub(1, "a", 2, 1, big));
        assert!(
            matches!(r, Err(Rejection::TooLarge { limit: 1_000, .. })),
            "{r:?}"
        );
        assert!(s.pending().is_empty());
    }
}
