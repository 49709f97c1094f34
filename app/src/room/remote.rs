//! What other instances publish on the bus: their committed ops (a gap is
//! filled from the store) and their clients' presence.

use super::{Room, Timer, cursor_message};
use relay_domain::{PresenceEntry, Selection};
use relay_ports::Chain;
use relay_ports::bus::{BusMessage, Envelope};
use relay_ports::protocol::ServerMessage;
use tracing::warn;

impl Room {
    pub(super) async fn remote(&mut self, env: Envelope) {
        if env.origin == self.instance.id || env.document != self.document {
            return;
        }
        match env.message {
            BusMessage::Ops { ops } => {
                // Once the bus is quiet, check the store once: if the last
                // message was lost, nothing on the bus would show the gap.
                self.deadlines
                    .set_in(Timer::SettleCheck, self.instance.config.bus.down_poll);
                let mut applied = Vec::new();
                for op in ops {
                    if op.version <= self.sequencer.version() {
                        continue;
                    }
                    if Some(op.version) != self.sequencer.version().next()
                        && !self.fill_gap_from_bus(op.version, &mut applied).await
                    {
                        // The store has what we missed (and this op).
                        self.committed(&applied, false).await;
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
