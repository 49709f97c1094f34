//! What other instances publish on the bus: their committed ops (a gap is
//! filled from the store) and their clients' presence.

use super::*;
use relay_ports::Chain;

impl Room {
    pub(super) async fn remote(&mut self, env: Envelope) {
        if env.origin == self.deps.instance || env.document != self.document {
            return;
        }
        match env.message {
            BusMessage::Ops { ops } => {
                // Once the bus is quiet, check the store once: if the last
                // message was lost, nothing on the bus would show the gap.
                self.settle_check = Some(Instant::now() + self.deps.config.bus_down_poll);
                let mut applied = Vec::new();
                for op in ops {
                    if op.version <= self.seq.version() {
                        continue;
                    }
                    if Some(op.version) != self.seq.version().next()
                        && !self.fill_gap_from_bus(op.version, &mut applied).await
                    {
                        // The store has what we missed (and this op).
                        self.committed(&applied, false).await;
                        self.catch_up_logged().await;
                        return;
                    }
                    match self.seq.apply_remote(op, self.now()) {
                        Ok(_) => applied.extend(self.seq.last_committed().cloned()),
                        Err(e) => {
                            warn!(document = %self.document, error = %Chain(&e), "remote op refused");
                            break;
                        }
                    }
                }
                self.committed(&applied, false).await;
            }
            BusMessage::Joined { entry } => {
                if self.roster.join(entry.clone()) {
                    self.broadcast_local(
                        &ServerMessage::Presence {
                            joined: vec![entry],
                            left: vec![],
                        },
                        None,
                    );
                }
            }
            BusMessage::Left { departed } => {
                if self
                    .roster
                    .leave(departed.user, &departed.client_id)
                    .is_some()
                {
                    self.broadcast_local(
                        &ServerMessage::Presence {
                            joined: vec![],
                            left: vec![departed],
                        },
                        None,
                    );
                }
            }
            BusMessage::Cursor { mut entry } => {
                self.rebase_entry(&mut entry);
                self.roster.join(entry.clone());
                self.broadcast_local(&cursor_message(&entry), None);
            }
            BusMessage::Typing {
                user,
                client_id,
                active,
            } => {
                self.broadcast_local(
                    &ServerMessage::Typing {
                        user,
                        client_id,
                        active,
                    },
                    None,
                );
            }
        }
    }

    /// A gap before `next`: the ops between come from the bus's recent
    /// history if it holds them all (applied onto `applied`); `false` if
    /// it does not (the caller reads the store).
    async fn fill_gap_from_bus(
        &mut self,
        next: relay_domain::Version,
        applied: &mut Vec<relay_domain::CommittedOp>,
    ) -> bool {
        let Some(through) = next
            .get()
            .checked_sub(1)
            .and_then(|v| relay_domain::Version::new(v).ok())
        else {
            return false;
        };
        let from = self.seq.version();
        let filled =
            self.apply_from_bus(through, applied).await && Some(next) == self.seq.version().next();
        debug!(document = %self.document, %from, %next, filled, "a gap on the bus");
        if filled {
            self.deps
                .metrics
                .gap_repair(relay_ports::metrics::GapSource::Bus);
        }
        filled
    }

    pub(super) fn rebase_entry(&self, entry: &mut PresenceEntry) {
        let current = self.seq.version();
        if entry.version >= current {
            return;
        }
        let moved = |p: Option<usize>| {
            p.and_then(|p| {
                self.seq
                    .rebase_position(p, entry.version, relay_domain::Bias::Before)
            })
        };
        match (moved(entry.anchor), moved(entry.head)) {
            (Some(a), Some(h)) => {
                entry.anchor = Some(a);
                entry.head = Some(h);
            }
            _ => {
                entry.anchor = None;
                entry.head = None;
            }
        }
        entry.version = current;
    }
}
