//! Presence of local clients: cursors (throttled before they are rebased),
//! typing (debounced), departures, and keeping this instance's registry
//! entries alive.

use super::{Room, SessionId, Timer};
use relay_domain::{ClientId, PresenceEntry, Selection, UserId, Version};
use relay_ports::Held;
use relay_ports::bus::{BusMessage, InstanceId};
use relay_ports::protocol::{Departed, ErrorCode, ServerMessage};
use std::collections::HashSet;
use tokio::time::Instant;
use tracing::info;

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
            let departed = Departed {
                user: s.member.user,
                client_id: s.member.client_id.clone(),
            };
            // This instance's entry only: another instance may hold the
            // same client (it moved there), and its entry stays.
            self.registry
                .remove(departed.user, departed.client_id.clone());
            self.publish(BusMessage::Left {
                departed: departed.clone(),
            })
            .await;
            if !self.held_elsewhere(&key) {
                self.roster.leave(departed.user, &departed.client_id);
                self.broadcast_local(
                    &ServerMessage::Presence {
                        joined: vec![],
                        left: vec![departed],
                    },
                    None,
                );
            }
        }
        if self.sessions.is_empty() {
            self.deadlines
                .set_in(Timer::Idle, self.instance.config.limits.room_idle);
        }
    }

    /// Keeps this instance's registry entries alive (one call to the
    /// registry for all of them, beside the loop) and then lists every
    /// instance's: the listing comes back to [`Room::reconcile`].
    pub(super) fn refresh_presence(&mut self) {
        let local: Vec<PresenceEntry> = self
            .local_clients
            .keys()
            .filter_map(|(user, client_id)| {
                self.roster.get(*user, client_id).cloned().or_else(|| {
                    // Never without its entry, but if it were, it is
                    // listed again rather than lost.
                    self.sessions
                        .values()
                        .find(|s| s.member.user == *user && s.member.client_id == *client_id)
                        .map(|s| PresenceEntry {
                            user: *user,
                            client_id: client_id.clone(),
                            name: s.member.name.clone(),
                            selection: None,
                            version: self.sequencer.version(),
                        })
                })
            })
            .collect();
        self.registry.refresh(local);
    }

    /// Whether another instance holds this client.
    pub(super) fn held_elsewhere(&self, key: &(UserId, ClientId)) -> bool {
        self.holders.get(key).is_some_and(|h| !h.is_empty())
    }

    /// Another instance holds a client (it said so on the bus, or the
    /// registry lists it); `true` if the client is new to this room.
    pub(super) fn held_by(&mut self, instance: InstanceId, entry: &PresenceEntry) -> bool {
        let key = entry_key(entry);
        self.holders
            .entry(key)
            .or_default()
            .insert(instance, Instant::now());
        if self.roster.get(entry.user, &entry.client_id).is_some() {
            return false;
        }
        let mut entry = entry.clone();
        self.rebase_entry(&mut entry);
        self.roster.join(entry);
        true
    }

    /// Another instance no longer holds a client; `true` if no instance
    /// does any more (then it left this room's roster).
    pub(super) fn released_by(&mut self, instance: InstanceId, key: &(UserId, ClientId)) -> bool {
        if let Some(h) = self.holders.get_mut(key) {
            h.remove(&instance);
            if h.is_empty() {
                self.holders.remove(key);
            }
        }
        if self.held_elsewhere(key) || self.local_clients.contains_key(key) {
            return false;
        }
        self.roster.leave(key.0, &key.1).is_some()
    }

    /// Reconciles the roster with what the registry lists (every
    /// instance's entries): clients it lists that the roster lacks join
    /// (presence lost on the bus, or in the registry and restored since);
    /// remote clients no instance holds any more leave. A holder the
    /// listing lacks but the bus spoke for within a refresh period stays
    /// (its registry write may be on its way).
    pub(super) fn reconcile(&mut self, listed: Vec<Held>) {
        let now = Instant::now();
        let fresh = self.instance.presence_refresh();
        let mut joined = Vec::new();
        let mut listed_keys: HashSet<((UserId, ClientId), InstanceId)> = HashSet::new();
        for h in listed {
            if h.instance == self.instance.id {
                continue;
            }
            listed_keys.insert((entry_key(&h.entry), h.instance));
            if self.held_by(h.instance, &h.entry)
                && let Some(e) = self.roster.get(h.entry.user, &h.entry.client_id)
            {
                joined.push(e.clone());
            }
        }
        let mut left = Vec::new();
        let keys: Vec<(UserId, ClientId)> = self.holders.keys().cloned().collect();
        for key in keys {
            let gone: Vec<InstanceId> = self.holders[&key]
                .iter()
                .filter(|(i, at)| {
                    !listed_keys.contains(&(key.clone(), **i)) && now.duration_since(**at) >= fresh
                })
                .map(|(i, _)| *i)
                .collect();
            for instance in gone {
                if self.released_by(instance, &key) {
                    left.push(Departed {
                        user: key.0,
                        client_id: key.1.clone(),
                    });
                }
            }
        }
        // Remote entries no instance holds (none should remain; a bus
        // message that named no holder): they leave too.
        let orphans: Vec<(UserId, ClientId)> = self
            .roster
            .entries()
            .map(entry_key)
            .filter(|k| !self.local_clients.contains_key(k) && !self.held_elsewhere(k))
            .collect();
        for (user, client_id) in orphans {
            self.roster.leave(user, &client_id);
            left.push(Departed { user, client_id });
        }
        if !joined.is_empty() || !left.is_empty() {
            self.broadcast_local(&ServerMessage::Presence { joined, left }, None);
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
