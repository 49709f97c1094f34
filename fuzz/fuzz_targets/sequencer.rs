//! One sequencer, up to four clients and a remote instance, driven through
//! arbitrary submits, commits, aborts and remote ops. Every answer of
//! `propose` is predicted by a reference model of the rules in
//! the sequencer module's documentation (dedup, order, base window, limits, rebase
//! op by op as `Side::Right`); a refused submit changes nothing; after
//! every commit the document is the replay of the committed log.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use relay_domain::{
    ClientId, CommittedOp, Delta, Document, Proposed, RemoteError, Seq, Sequencer,
    SequencerConfig, Side, Submission, Timestamp, UserId, Version,
};
use relay_domain::ids::MAX_WIRE_INT;
use relay_fuzz::{AttrChoice, Raw, Step, Text, build, decide, raw_wire};

#[derive(Arbitrary, Debug)]
struct Config {
    max_history: Option<u8>,
    max_history_age_ms: Option<u16>,
    max_history_bytes: Option<u8>,
    max_document_chars: Option<u8>,
    max_delta_components: Option<u8>,
}

#[derive(Arbitrary, Debug)]
enum SeqChoice {
    Next,
    Repeat,
    Smaller(u8),
    Jump(u8),
    NearMax(u8),
}

#[derive(Arbitrary, Debug)]
enum DeltaChoice {
    /// Lengths cut to the document at the base: applies once fitted.
    Fitting(Vec<Step>),
    /// Lengths as they come: may span more than the document.
    Unclamped(Vec<Step>),
    /// A wire delta, lengths up to u64::MAX (skipped if the wire refuses it).
    Raw(Vec<Raw>),
}

#[derive(Arbitrary, Debug)]
enum Action {
    Submit {
        client: u8,
        seq: SeqChoice,
        base: u8,
        delta: DeltaChoice,
        compact: bool,
    },
    /// A committed op's (user, client, seq) again, with any delta.
    Resubmit {
        index: u8,
        base: u8,
        delta: DeltaChoice,
    },
    /// Commit through the last pending version, or through the `k`th.
    Commit {
        through: Option<u8>,
        dt: u16,
    },
    Abort,
    /// An op committed by another instance.
    Remote {
        steps: Vec<Step>,
        fitting: bool,
        compact: bool,
        abort_first: bool,
        /// 0: the next version; 1: one too far (a gap); 2: an old one.
        version: u8,
        dt: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    doc: Vec<(Text, Option<AttrChoice>)>,
    start_version: u8,
    config: Config,
    clients: u8,
    actions: Vec<Action>,
}

fn user(n: u8) -> UserId {
    serde_json::from_value(serde_json::json!(format!(
        "00000000-0000-4000-8000-0000000000{n:02}"
    )))
    .expect("a uuid")
}

/// The clients: two users sharing one client id, and two more ids.
fn clients() -> Vec<(UserId, ClientId)> {
    [(1, "tab"), (2, "tab"), (1, "other"), (2, "x🙂")]
        .into_iter()
        .map(|(u, c)| (user(u), ClientId::new(c).unwrap()))
        .collect()
}

struct World {
    config: SequencerConfig,
    start: Document,
    v0: Version,
    /// Every committed op, in version order, as it was committed.
    log: Vec<CommittedOp>,
    /// Document length at version `v0 + i`.
    lens: Vec<usize>,
    /// `start` with the log applied.
    replay: Document,
    now: u64,
    remote_seq: u64,
}

/// What the sequencer's state looks like from outside.
#[derive(Debug, PartialEq)]
struct Snapshot {
    doc: Document,
    version: Version,
    pending: Vec<CommittedOp>,
    pending_len: usize,
    oldest: Version,
    history: usize,
}

fn snapshot(s: &Sequencer) -> Snapshot {
    Snapshot {
        doc: s.document().clone(),
        version: s.version(),
        pending: s.pending().to_vec(),
        pending_len: s.pending_len(),
        oldest: s.oldest_base(),
        history: s.history_len(),
    }
}

impl World {
    fn len_at(&self, base: Version) -> usize {
        usize::try_from(base.since(self.v0))
            .ok()
            .and_then(|i| self.lens.get(i))
            .copied()
            .unwrap_or(self.replay.len())
    }

    fn delta(&self, choice: &DeltaChoice, len: usize) -> Option<Delta> {
        match choice {
            DeltaChoice::Fitting(steps) => Some(build(&decide(steps, len, true, 12))),
            DeltaChoice::Unclamped(steps) => Some(build(&decide(steps, len, false, 12))),
            DeltaChoice::Raw(raw) => Delta::from_json(&raw_wire(raw)).ok(),
        }
    }

    /// The answer `propose` must give, and for a new op its delta.
    fn predict(&self, s: &Sequencer, sub: &Submission) -> Result<(Proposed, Option<Delta>), &'static str> {
        let same = |op: &CommittedOp| op.user == sub.user && op.client_id == sub.client_id;
        if let Some(p) = s.pending().iter().find(|p| same(p) && p.seq == sub.seq) {
            return Ok((Proposed::Pending(p.version), None));
        }
        let oldest = s.oldest_base();
        let in_history = |seq: Seq| {
            self.log
                .iter()
                .find(|o| same(o) && o.seq == seq && o.version > oldest)
                .map(|o| (Proposed::Duplicate(o.version), None))
        };
        let last = self
            .log
            .iter()
            .filter(|o| same(o))
            .max_by_key(|o| o.seq)
            .map(|o| (o.seq, o.version));
        match last {
            Some((l, v)) if l == sub.seq => return Ok((Proposed::Duplicate(v), None)),
            Some((l, _)) if sub.seq < l => return in_history(sub.seq).ok_or("out_of_order"),
            Some(_) => {}
            None => {
                if let Some(d) = in_history(sub.seq) {
                    return Ok(d);
                }
            }
        }
        if let Some(p) = s.pending().iter().rev().find(|p| same(p))
            && sub.seq < p.seq
        {
            return Err("out_of_order");
        }
        let version = s.version();
        if sub.base > version {
            return Err("future_base");
        }
        if sub.base < oldest {
            return Err("stale_base");
        }
        if sub.delta.components().len() > self.config.max_delta_components {
            return Err("too_large");
        }
        let Ok(mut d) = sub.delta.clone().fit(self.len_at(sub.base)) else {
            return Err("invalid_delta");
        };
        let skip = usize::try_from(sub.base.since(self.v0)).unwrap();
        for other in self.log[skip..]
            .iter()
            .chain(s.pending())
            .map(|o| &o.delta)
        {
            d = d.transform(other, Side::Right).expect("lengths follow");
        }
        if d.target_len() > self.config.max_document_chars && d.target_len() > d.base_len() {
            return Err("too_large");
        }
        let at = Version::new(version.get() + s.pending().len() as u64 + 1).unwrap();
        Ok((Proposed::New(at), Some(d)))
    }

    fn propose(&self, s: &mut Sequencer, sub: &Submission) -> Result<Proposed, relay_domain::Rejection> {
        let before = snapshot(s);
        let expected = self.predict(s, sub);
        let got = s.propose(sub);
        let got_code = got.clone().map_err(|r| relay_ports::ErrorCode::of(&r).as_str());
        assert_eq!(
            got_code,
            expected.as_ref().map(|(p, _)| *p).map_err(|c| *c),
            "propose({sub:?}): {got:?}"
        );
        match &got {
            Ok(Proposed::New(v)) => {
                let v = *v;
                let after = snapshot(s);
                assert_eq!(after.doc, before.doc, "a proposal changed the document");
                assert_eq!(after.pending[..before.pending.len()], before.pending[..]);
                assert_eq!(after.pending.len(), before.pending.len() + 1);
                let op = after.pending.last().unwrap();
                assert_eq!(op.version, v);
                assert_eq!((op.user, &op.client_id, op.seq), (sub.user, &sub.client_id, sub.seq));
                let want = expected.unwrap().1.unwrap();
                assert_eq!(op.delta, want, "rebased delta");
                assert_eq!(op.delta.base_len(), before.pending_len);
                assert_eq!(after.pending_len, op.delta.target_len());
                assert!(op.delta.check_storable().is_ok());
            }
            // Answered without a new op, or refused: nothing changes.
            _ => assert_eq!(snapshot(s), before, "a submit that made no op changed the state"),
        }
        got
    }

    fn commit(&mut self, s: &mut Sequencer, through: Version) {
        let pending = s.pending().to_vec();
        let n_expected = pending.iter().take_while(|p| p.version <= through).count();
        let n = s.commit(through, Timestamp::from_millis(self.now));
        assert_eq!(n, n_expected, "commit through {through}");
        assert_eq!(s.pending(), &pending[n..]);
        for op in &pending[..n] {
            self.record(op.clone());
        }
        self.check(s);
    }

    /// Appends a committed op to the log and the replay.
    fn record(&mut self, op: CommittedOp) {
        let expected = Version::new(self.v0.get() + self.log.len() as u64 + 1).unwrap();
        assert_eq!(op.version, expected, "versions are consecutive");
        let delta = op
            .delta
            .clone()
            .fit(self.replay.len())
            .expect("a committed op fits the document");
        self.replay.apply(&delta).expect("a committed op applies");
        self.lens.push(self.replay.len());
        self.log.push(CommittedOp { delta, ..op });
    }

    fn check(&self, s: &Sequencer) {
        assert_eq!(s.document(), &self.replay, "document vs replay of the log");
        assert_eq!(s.version().get(), self.v0.get() + self.log.len() as u64);
        let oldest = s.oldest_base();
        assert!(oldest >= self.v0 && oldest <= s.version());
        assert_eq!(s.history_len() as u64, s.version().since(oldest));
        assert!(s.history_len() <= self.config.max_history);
        let kept = s.ops_since(oldest).expect("the oldest base is kept");
        let tail = &self.log[self.log.len() - s.history_len()..];
        assert_eq!(kept.len(), tail.len());
        for (k, l) in kept.zip(tail) {
            assert_eq!(
                (k.version, k.user, &k.client_id, k.seq, &k.delta),
                (l.version, l.user, &l.client_id, l.seq, &l.delta),
                "history vs log"
            );
        }
        assert!(s.ops_since(s.version().next().unwrap()).is_none());
        if let Some(prev) = oldest.prev() {
            assert!(s.ops_since(prev).is_none(), "a pruned base is not kept");
        }
        let pending_len = s.pending().last().map_or(s.document().len(), |p| p.delta.target_len());
        assert_eq!(s.pending_len(), pending_len);
    }
}

fuzz_target!(|input: Input| {
    let mut content = Delta::new();
    for (t, a) in input.doc.iter().take(6) {
        let attrs = a.as_ref().map(AttrChoice::map).unwrap_or_default();
        content.insert_with(&t.string(), relay_fuzz::attributes(&attrs));
    }
    let v0 = Version::from(u32::from(input.start_version % 4));
    let start = Document::from_content(&content, v0).expect("inserts only");
    let c = &input.config;
    let d = SequencerConfig::default();
    let config = SequencerConfig {
        max_history: c.max_history.map_or(d.max_history, |n| 1 + usize::from(n % 8)),
        max_history_age_ms: c.max_history_age_ms.map_or(d.max_history_age_ms, u64::from),
        max_history_bytes: c.max_history_bytes.map_or(d.max_history_bytes, |n| usize::from(n) * 16),
        max_document_chars: c.max_document_chars.map_or(d.max_document_chars, |n| 8 + usize::from(n)),
        max_delta_components: c.max_delta_components.map_or(d.max_delta_components, |n| 1 + usize::from(n % 16)),
        max_clients: d.max_clients,
        max_document_bytes: d.max_document_bytes,
        max_op_bytes: d.max_op_bytes,
    };
    let mut s = Sequencer::new(start.clone(), config.clone());
    let mut w = World {
        config,
        start: start.clone(),
        v0,
        log: Vec::new(),
        lens: vec![start.len()],
        replay: start,
        now: 0,
        remote_seq: 0,
    };
    w.check(&s);
    let clients = clients();
    let n_clients = 1 + usize::from(input.clients % 4);
    let mut last_seq = vec![0u64; n_clients];
    let remote_user = user(9);
    let remote_client = ClientId::new("remote").unwrap();

    for action in input.actions.iter().take(48) {
        match action {
            Action::Submit { client, seq, base, delta, compact } => {
                let k = usize::from(*client) % n_clients;
                let last = last_seq[k];
                let n = match seq {
                    SeqChoice::Next => last + 1,
                    SeqChoice::Repeat => last,
                    SeqChoice::Smaller(x) => last.saturating_sub(1 + u64::from(x % 4)),
                    SeqChoice::Jump(x) => last + 2 + u64::from(*x),
                    SeqChoice::NearMax(x) => MAX_WIRE_INT - u64::from(x % 3),
                }
                .min(MAX_WIRE_INT);
                last_seq[k] = last.max(n);
                let base = Version::new(u64::from(*base) % (s.version().get() + 3)).unwrap();
                let Some(mut delta) = w.delta(delta, w.len_at(base)) else {
                    continue;
                };
                if *compact {
                    delta.compact();
                }
                let (user, client_id) = clients[k].clone();
                let sub = Submission { user, client_id, seq: Seq::new(n).unwrap(), base, delta };
                let _ = w.propose(&mut s, &sub);
            }
            Action::Resubmit { index, base, delta } => {
                if w.log.is_empty() {
                    continue;
                }
                let op = w.log[usize::from(*index) % w.log.len()].clone();
                let base = Version::new(u64::from(*base) % (s.version().get() + 3)).unwrap();
                let Some(delta) = w.delta(delta, w.len_at(base)) else {
                    continue;
                };
                let sub = Submission {
                    user: op.user,
                    client_id: op.client_id.clone(),
                    seq: op.seq,
                    base,
                    delta,
                };
                let kept = op.version > s.oldest_base();
                let latest = !w
                    .log
                    .iter()
                    .any(|o| o.user == op.user && o.client_id == op.client_id && o.seq > op.seq);
                let got = w.propose(&mut s, &sub);
                if kept || latest {
                    assert_eq!(got, Ok(Proposed::Duplicate(op.version)), "resubmit of {op:?}");
                }
                assert!(!matches!(got, Ok(Proposed::New(_))), "a committed seq became new");
                w.check(&s);
            }
            Action::Commit { through, dt } => {
                w.now += u64::from(*dt);
                let through = match (through, s.pending()) {
                    (_, []) => s.version(),
                    (None, p) => p[p.len() - 1].version,
                    (Some(k), p) => p[usize::from(*k) % p.len()].version,
                };
                w.commit(&mut s, through);
            }
            Action::Abort => {
                let before = snapshot(&s);
                assert_eq!(s.abort_pending(), before.pending.len());
                assert!(s.pending().is_empty());
                assert_eq!(s.document(), &before.doc);
                assert_eq!(s.pending_len(), s.document().len());
                w.check(&s);
            }
            Action::Remote { steps, fitting, compact, abort_first, version, dt } => {
                w.now += u64::from(*dt);
                if *abort_first {
                    s.abort_pending();
                }
                w.remote_seq += 1;
                let seq = Seq::new(w.remote_seq).unwrap();
                let len = s.document().len();
                let mut op = if *fitting {
                    // Made by another instance that has the same history.
                    let mut replica = Sequencer::new(s.document().clone(), SequencerConfig::default());
                    let sub = Submission {
                        user: remote_user,
                        client_id: remote_client.clone(),
                        seq,
                        base: s.version(),
                        delta: build(&decide(steps, len, true, 12)),
                    };
                    let p = replica.propose(&sub).expect("a fitting delta on the replica");
                    assert_eq!(p, Proposed::New(s.version().next().unwrap()));
                    replica.pending()[0].clone()
                } else {
                    CommittedOp {
                        version: s.version().next().unwrap(),
                        user: remote_user,
                        client_id: remote_client.clone(),
                        seq,
                        delta: build(&decide(steps, len, false, 12)),
                    }
                };
                if *compact {
                    op.delta.compact();
                }
                match version % 3 {
                    1 => op.version = op.version.next().unwrap(),
                    2 => op.version = s.version(),
                    _ => {}
                }
                let before = snapshot(&s);
                let expected_version = s.version().next().unwrap();
                let got = s.apply_remote(op.clone(), Timestamp::from_millis(w.now));
                if op.version < expected_version {
                    assert_eq!(got, Ok(false));
                } else if op.version > expected_version {
                    assert_eq!(got, Err(RemoteError::Gap { expected: expected_version, got: op.version }));
                } else if !before.pending.is_empty() {
                    assert_eq!(got, Err(RemoteError::PendingProposals));
                } else if op.delta.base_len() > len {
                    assert!(matches!(got, Err(RemoteError::Invalid { .. })), "{got:?}");
                } else {
                    assert_eq!(got, Ok(true));
                    w.record(op);
                    w.check(&s);
                    continue;
                }
                // Not applied: nothing changed (pruning aside, which only
                // happens when an op is applied).
                assert_eq!(snapshot(&s), before, "a remote op that was not applied changed the state");
            }
        }
        let pending_len = s.pending().last().map_or(s.document().len(), |p| p.delta.target_len());
        assert_eq!(s.pending_len(), pending_len);
    }
    // Everything pending commits, and the whole log replays onto the start.
    if let Some(last) = s.pending().last().map(|p| p.version) {
        w.commit(&mut s, last);
    }
    let mut replay = w.start.clone();
    for op in &w.log {
        replay.apply(&op.delta.clone().fit(replay.len()).unwrap()).unwrap();
    }
    assert_eq!(s.document(), &replay);
});
