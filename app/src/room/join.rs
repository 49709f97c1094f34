//! Joins and catch-up: what a joining client is sent (`ops` after its
//! `since`, or the content), and reading what the room missed from the
//! store.

use super::*;
use relay_ports::Cause;
use relay_ports::Chain;

impl Room {
    pub(super) async fn join(
        &mut self,
        member: Member,
        since: Option<Version>,
        sink: Sink,
    ) -> Result<(), JoinError> {
        // A client that saw versions this room has not (on another
        // instance): the store is the source of truth, catch up first so the
        // document never goes backwards for it.
        if let Some(since) = since
            && since > self.seq.version()
            && let Err(e) = self.catch_up_to(since).await
        {
            warn!(document = %self.document, error = %Chain(&e), "cannot catch up to a joining client's version");
        }
        let version = self.seq.version();
        let catch_up = match since {
            Some(v) if v <= version => self.catch_up_ops(v).await?,
            _ => None,
        };
        // The ops unless they are larger than both 4 x MAX_MESSAGE_BYTES
        // and the content, so `joined` is never larger than a document
        // Relay accepts (a client that missed most of a large document gets
        // the document), while an ordinary catch-up stays ops.
        let (content, ops) = match catch_up {
            Some(ops) => {
                let doc = self.seq.document();
                let ops_bytes = ops
                    .iter()
                    .map(|op| encode_op(op).len() + 1)
                    .fold(0usize, usize::saturating_add);
                if ops_bytes <= self.deps.config.max_op_bytes() || ops_bytes <= doc.len_bytes() {
                    (None, Some(ops))
                } else if ops_bytes > doc.content_json_bound() {
                    (Some(doc.to_delta()), None)
                } else {
                    // In between the bounds: measure the content.
                    let content = doc.to_delta();
                    let content_bytes = serde_json::to_string(&content).map_or(0, |s| s.len());
                    if ops_bytes <= content_bytes {
                        (None, Some(ops))
                    } else {
                        (Some(content), None)
                    }
                }
            }
            None => (Some(self.seq.document().to_delta()), None),
        };
        let entry = PresenceEntry {
            user: member.user,
            client_id: member.client_id.clone(),
            name: member.name.clone(),
            anchor: None,
            head: None,
            version,
        };
        let presence = self
            .roster
            .entries()
            .filter(|e| !(e.user == member.user && e.client_id == member.client_id))
            .cloned()
            .collect();
        let joined = ServerMessage::Joined {
            session: format!("{:016x}", member.id),
            user: UserInfo {
                id: member.user,
                name: member.name.clone(),
            },
            role: member.role,
            version,
            content,
            ops,
            presence,
            limits: self.deps.config.limits(),
        };
        if !sink.send(joined.encode().into()) {
            return Ok(());
        }
        info!(document = %self.document, user = %member.user, client_id = %member.client_id, role = member.role.as_str(), "joined");
        let config = &self.deps.config;
        let local = Local {
            sink,
            awaiting: None,
            duplicate_acked: None,
            limiter: RateLimiter::new(config.submit_burst, config.submit_rate_per_sec),
            cursor: CursorThrottle::new(config.cursor_throttle_ms),
            typing: TypingDebounce::new(config.typing_debounce_ms),
            member,
        };
        self.sessions.insert(local.member.id, local);
        self.idle_since = None;
        self.roster.join(entry.clone());
        self.broadcast_local(
            &ServerMessage::Presence {
                joined: vec![entry.clone()],
                left: vec![],
            },
            Some(entry_key(&entry)),
        );
        if let Err(e) = self
            .deps
            .presence
            .upsert(self.document, entry.clone(), self.deps.presence_ttl())
            .await
        {
            warn!(document = %self.document, error = %Chain(&e), "presence registry");
        }
        self.publish(BusMessage::Joined { entry }).await;
        Ok(())
    }

    /// The ops after `since`, from memory or the store; `None` if too many
    /// or no longer available (then `joined` carries the content).
    pub(super) async fn catch_up_ops(
        &mut self,
        since: Version,
    ) -> Result<Option<Vec<CommittedOp>>, JoinError> {
        if let Some(ops) = self.seq.ops_since(since) {
            return Ok(Some(ops.cloned().collect()));
        }
        let missing = usize::try_from(self.seq.version().since(since)).unwrap_or(usize::MAX);
        if missing > MAX_CATCH_UP_FROM_STORE {
            return Ok(None);
        }
        let ops = self
            .deps
            .store
            .read(self.document, since, missing)
            .await
            .map_err(JoinError::Unavailable)?;
        let complete = ops.len() == missing
            && ops.iter().enumerate().all(|(i, op)| {
                u64::try_from(i + 1).ok().and_then(|n| since.checked_add(n)) == Some(op.version)
            });
        Ok(complete.then_some(ops))
    }

    /// Reads and applies every op the store has after our version.
    pub(super) async fn catch_up(&mut self) -> Result<(), StoreError> {
        self.catch_up_finding(|_| false).await.map(|_| ())
    }

    /// [`Room::catch_up`], returning the applied ops that `mine` picks
    /// (after an append whose answer was lost: the batch's own ops, found
    /// committed).
    pub(super) async fn catch_up_finding(
        &mut self,
        mine: impl Fn(&CommittedOp) -> bool,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        let mut found = Vec::new();
        loop {
            let ops = self
                .deps
                .store
                .read(self.document, self.seq.version(), 1000)
                .await?;
            if ops.is_empty() {
                return Ok(found);
            }
            let mut applied = Vec::with_capacity(ops.len());
            for op in ops {
                match self.seq.apply_remote(op, self.deps.clock.now()) {
                    // As applied: the delta fitted to the document.
                    Ok(true) => applied.extend(self.seq.last_committed().cloned()),
                    Ok(false) => {}
                    Err(e) => return Err(StoreError::Corrupt(Cause::new(e))),
                }
            }
            found.extend(applied.iter().filter(|op| mine(op)).cloned());
            self.committed(&applied, false).await;
        }
    }

    /// Catches up to at least `target` (a version a client or the store
    /// showed): from the bus's recent ops when it holds every one up to
    /// it, else from the store.
    pub(super) async fn catch_up_to(&mut self, target: Version) -> Result<(), StoreError> {
        let mut applied = Vec::new();
        let from_bus = self.apply_from_bus(target, &mut applied).await;
        self.committed(&applied, false).await;
        if from_bus {
            return Ok(());
        }
        self.catch_up().await
    }

    /// Applies the ops after the room's version through `through` from the
    /// bus's recent history, onto `applied`; whether the room reached
    /// `through` (if not, the store has the rest).
    pub(super) async fn apply_from_bus(
        &mut self,
        through: Version,
        applied: &mut Vec<CommittedOp>,
    ) -> bool {
        if through <= self.seq.version() {
            return true;
        }
        let ops = match self
            .deps
            .bus
            .recent(self.document, self.seq.version(), through)
            .await
        {
            Ok(Some(ops)) => ops,
            Ok(None) => return false,
            Err(e) => {
                debug!(document = %self.document, error = %Chain(&e), "bus history unavailable; reading the store");
                return false;
            }
        };
        for op in ops {
            match self.seq.apply_remote(op, self.deps.clock.now()) {
                Ok(true) => applied.extend(self.seq.last_committed().cloned()),
                Ok(false) => {}
                Err(e) => {
                    warn!(document = %self.document, error = %Chain(&e), "an op from the bus history was refused; reading the store");
                    return false;
                }
            }
        }
        self.seq.version() >= through
    }

    /// Catches up with what others committed that the bus did not bring
    /// (a gap, a lag, the bus down, the settle check); one that finds ops
    /// counts as a gap repair from the store.
    pub(super) async fn catch_up_logged(&mut self) {
        let before = self.seq.version();
        match self.catch_up().await {
            Ok(_) if self.seq.version() > before => {
                self.deps
                    .metrics
                    .gap_repair(relay_ports::metrics::GapSource::Store);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(document = %self.document, error = %Chain(&e), "catch-up from the store failed");
            }
        }
    }
}
