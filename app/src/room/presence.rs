//! Presence of local clients: cursors (throttled before they are rebased),
//! typing (debounced), departures, and keeping this instance's registry
//! entries alive.

use super::{Room, SessionId, Timer};
use relay_domain::{ClientId, PresenceEntry, Selection, UserId, Version};
use relay_ports::Chain;
use relay_ports::bus::BusMessage;
use relay_ports::protocol::{Departed, ErrorCode, ServerMessage};
use std::collections::HashSet;
use tracing::{info, warn};

impl Room {
    /// A cursor from a local client: checked, then throttled before any
    /// work - at most one per CURSOR_THROTTLE_MS is rebased and sent, the
    /// latest held for its turn.
    pub(super) async fn cursor(
        &mut self,
        session: SessionId,
        version: Version,
        selection: Option<Selection>,
    ) {
        let current = self.sequencer.version();
        let now = self.now();
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if version > current {
            s.sink.error(
                ErrorCode::BadMessage,
                &format!("cursor version {version} is ahead of the document ({current})"),
                None,
            );
            return;
        }
        if let Some((version, selection)) = s.cursor.offer((version, selection), now) {
            self.place_cursor(session, version, selection).await;
        }
    }

    /// Rebases a cursor taken at `version` to the current version, records
    /// it and broadcasts it.
    pub(super) async fn place_cursor(
        &mut self,
        session: SessionId,
        version: Version,
        selection: Option<Selection>,
    ) {
        #[cfg(test)]
        test_counters::count_rebase(self.document);
        let current = self.sequencer.version();
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let len = self.sequencer.document().len();
        let selection = match selection {
            None => None,
            Some(Selection { anchor, head }) => {
                let bias = relay_domain::Bias::Before;
                match (
                    self.sequencer.rebase_position(anchor, version, bias),
                    self.sequencer.rebase_position(head, version, bias),
                ) {
                    (Some(anchor), Some(head)) => Some(Selection { anchor, head }.clamp(len)),
                    // Taken at a version no longer in history: drop it; the
                    // client will send a fresher one.
                    _ => return,
                }
            }
        };
        let (user, client_id) = (s.member.user, s.member.client_id.clone());
        self.roster
            .set_selection(user, &client_id, selection, current);
        self.send_cursor(session).await;
    }

    /// Broadcasts a session's current selection (from the roster, so it is
    /// up to date with every op applied since it was offered).
    pub(super) async fn send_cursor(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let Some(entry) = self.roster.get(s.member.user, &s.member.client_id).cloned() else {
            return;
        };
        self.broadcast_local(&cursor_message(&entry), Some(entry_key(&entry)));
        self.instance.ports.metrics.presence_broadcast();
        self.publish(BusMessage::Cursor { entry }).await;
    }

    pub(super) async fn typing(&mut self, session: SessionId) {
        let now = self.now();
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.typing.signal(now) == Some(true) {
            self.send_typing(session, true).await;
        }
    }

    pub(super) async fn send_typing(&mut self, session: SessionId, active: bool) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let (user, client_id) = (s.member.user, s.member.client_id.clone());
        self.broadcast_local(
            &ServerMessage::Typing {
                user,
                client_id: client_id.clone(),
                active,
            },
            Some((user, client_id.clone())),
        );
        self.instance.ports.metrics.presence_broadcast();
        self.publish(BusMessage::Typing {
            user,
            client_id,
            active,
        })
        .await;
    }

    pub(super) async fn leave(&mut self, session: SessionId, reason: &str) {
        let Some(mut s) = self.sessions.remove(&session) else {
            return;
        };
        info!(document = %self.document, user = %s.member.user, client_id = %s.member.client_id, reason, "left");
        if s.typing.stop().is_some() {
            // Tell the others typing stopped (the session is gone already).
            self.broadcast_local(
                &ServerMessage::Typing {
                    user: s.member.user,
                    client_id: s.member.client_id.clone(),
                    active: false,
                },
                None,
            );
        }
        // Another connection of the same tab may still be here (a reconnect
        // racing the old connection's close): then it has not left.
        let key = (s.member.user, s.member.client_id.clone());
        let still_here = match self.local_clients.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            _ => {
                self.local_clients.remove(&key);
                false
            }
        };
        if !still_here {
            self.roster.leave(s.member.user, &s.member.client_id);
            let departed = Departed {
                user: s.member.user,
                client_id: s.member.client_id.clone(),
            };
            self.broadcast_local(
                &ServerMessage::Presence {
                    joined: vec![],
                    left: vec![departed.clone()],
                },
                None,
            );
            if let Err(e) = self
                .instance
                .ports
                .presence
                .remove(
                    self.document,
                    self.instance.id,
                    s.member.user,
                    &s.member.client_id,
                )
                .await
            {
                warn!(document = %self.document, error = %Chain(&e), "presence registry");
            }
            self.publish(BusMessage::Left { departed }).await;
        }
        if self.sessions.is_empty() {
            self.deadlines
                .set_in(Timer::Idle, self.instance.config.limits.room_idle);
        }
    }

    /// Keeps this instance's registry entries alive (all in one call to
    /// the registry: one round trip to Redis, not one per client) and
    /// forgets remote entries whose instance stopped refreshing them.
    pub(super) async fn refresh_presence(&mut self) {
        let ttl = self.instance.presence_ttl();
        let local: Vec<PresenceEntry> = self
            .local_clients
            .keys()
            .filter_map(|(user, client_id)| self.roster.get(*user, client_id).cloned())
            .collect();
        if !local.is_empty()
            && let Err(e) = self
                .instance
                .ports
                .presence
                .upsert_many(self.document, self.instance.id, local, ttl)
                .await
        {
            warn!(document = %self.document, error = %Chain(&e), "presence refresh");
            return;
        }
        if let Ok(listed) = self.instance.ports.presence.list(self.document).await {
            let listed: HashSet<(UserId, &ClientId)> = listed
                .iter()
                .map(|l| (l.entry.user, &l.entry.client_id))
                .collect();
            let gone: Vec<PresenceEntry> = self
                .roster
                .entries()
                .filter(|e| !listed.contains(&(e.user, &e.client_id)))
                .cloned()
                .collect();
            for e in gone {
                self.roster.leave(e.user, &e.client_id);
                self.broadcast_local(
                    &ServerMessage::Presence {
                        joined: vec![],
                        left: vec![Departed {
                            user: e.user,
                            client_id: e.client_id,
                        }],
                    },
                    None,
                );
            }
        }
    }
}

pub(super) fn entry_key(e: &PresenceEntry) -> (UserId, ClientId) {
    (e.user, e.client_id.clone())
}

pub(super) fn cursor_message(e: &PresenceEntry) -> ServerMessage {
    ServerMessage::Cursor {
        user: e.user,
        client_id: e.client_id.clone(),
        version: e.version,
        selection: e.selection,
    }
}

/// How many cursors each document's rooms rebased (tests check that the
/// throttle comes before the work).
#[cfg(test)]
pub(crate) mod test_counters {
    use relay_domain::DocumentId;
    use std::collections::HashMap;
    use std::sync::Mutex;

    static REBASES: Mutex<Option<HashMap<DocumentId, u64>>> = Mutex::new(None);

    pub(crate) fn count_rebase(document: DocumentId) {
        let mut map = REBASES.lock().unwrap_or_else(|e| e.into_inner());
        *map.get_or_insert_with(HashMap::new)
            .entry(document)
            .or_default() += 1;
    }

    pub(crate) fn rebases(document: DocumentId) -> u64 {
        let map = REBASES.lock().unwrap_or_else(|e| e.into_inner());
        map.as_ref()
            .and_then(|m| m.get(&document).copied())
            .unwrap_or(0)
    }
}
