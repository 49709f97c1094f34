//! What other instances publish on the bus: their committed ops (a gap is
//! filled from the store) and their clients' presence.

use super::{Room, Timer, cursor_message};
use relay_domain::{CommittedOp, OpKey, PresenceEntry, Selection, Version};
use relay_ports::Chain;
use relay_ports::bus::{BusMessage, Envelope};
use relay_ports::protocol::ServerMessage;
use tracing::{debug, warn};

impl Room {
    pub(super) async fn remote(&mut self, env: Envelope) {
        if env.origin == self.instance.id || env.document != self.document {
            return;
        }
        match env.message {
            BusMessage::Ops { ops, prev } => self.remote_ops(ops, prev).await,
            BusMessage::Joined { entry } => {
                if self.held_by(env.origin, &entry)
                    && let Some(e) = self.roster.get(entry.user, &entry.client_id)
                {
                    self.broadcast_local(
                        &ServerMessage::Presence {
                            joined: vec![e.clone()],
                            left: vec![],
                        },
                        None,
                    );
                }
            }
            BusMessage::Left { departed } => {
                // Only that instance let go: the client may still be held
                // here or by another instance.
                if self.released_by(env.origin, &(departed.user, departed.client_id.clone())) {
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
                if self.held_by(env.origin, &entry)
                    && let Some(e) = self.roster.get(entry.user, &entry.client_id)
                {
                    // Its `joined` was lost: it joins now.
                    self.broadcast_local(
                        &ServerMessage::Presence {
                            joined: vec![e.clone()],
                            left: vec![],
                        },
                        None,
                    );
                }
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

    /// Ops another instance committed, `prev` the op before the first as
    /// that instance had it. Applied in order; a gap (a lost message) is
    /// read from the store. An op that contradicts this room's history
    /// (the same version, another op; or `prev` not the op this room
    /// holds) means the store lost or rewrote acknowledged ops: the room
    /// reopens from the store rather than apply ops onto the wrong base.
    async fn remote_ops(&mut self, ops: Vec<CommittedOp>, prev: Option<OpKey>) {
        // Once the bus is quiet, check the store once: if the last
        // message was lost, nothing on the bus would show the gap.
        self.deadlines
            .set_in(Timer::SettleCheck, self.instance.config.bus.down_poll);
        if let Some(prev) = &prev
            && let Some(first) = ops.first()
            && let Some(before) = first.version.prev()
            && let Some(ours) = self.sequencer.op_at(before)
            && ours.key() != *prev
        {
            self.contradicted(before, "the op before another instance's ops");
            return;
        }
        let mut applied = Vec::new();
        for op in ops {
            if op.version <= self.sequencer.version() {
                if let Some(ours) = self.sequencer.op_at(op.version)
                    && ours.key() != op.key()
                {
                    self.committed(&applied, false).await;
                    self.contradicted(op.version, "another instance's op");
                    return;
                }
                continue;
            }
            if Some(op.version) != self.sequencer.version().next() {
                // A lost message: the store has what we missed (and this op).
                self.committed(&applied, false).await;
                debug!(document = %self.document, from = %self.sequencer.version(), next = %op.version, "a gap on the bus");
                self.catch_up_logged().await;
                return;
            }
            match self.apply_one(op) {
                Ok(op) => applied.extend(op),
                Err(e) => {
                    warn!(document = %self.document, error = %Chain(&e), "remote op refused");
                    break;
                }
            }
        }
        self.committed(&applied, false).await;
    }

    /// This room's history and the log disagree at `version`: logged as an
    /// error, every session closed with 1013, the room stopped without a
    /// snapshot; the next join opens the document from the store.
    pub(super) fn contradicted(&mut self, version: Version, what: &str) {
        tracing::error!(document = %self.document, %version, what, "the document's log contradicts this room's history (acknowledged ops lost or rewritten in the store): reopening the document from the store");
        self.reopen();
    }

    pub(super) fn rebase_entry(&self, entry: &mut PresenceEntry) {
        let current = self.sequencer.version();
        if entry.version >= current {
            return;
        }
        let moved = |p: usize| {
            self.sequencer
                .rebase_position(p, entry.version, relay_domain::Bias::Before)
        };
        entry.selection = entry.selection.and_then(|s| {
            Some(Selection {
                anchor: moved(s.anchor)?,
                head: moved(s.head)?,
            })
        });
        entry.version = current;
    }
}
