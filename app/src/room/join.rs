//! Joins and catch-up: what a joining client is sent (`ops` after its
//! `since`, or the content), and reading what the room missed from the
//! store.

use super::{JoinError, Local, Member, Room, Timer, entry_key};
use crate::sink::Sink;
use relay_domain::{CursorThrottle, PresenceEntry, TypingDebounce, Version};
use relay_ports::Chain;
use relay_ports::bus::BusMessage;
use relay_ports::protocol::{ServerMessage, UserInfo, encode_op};
use tracing::{info, warn};

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
            && since > self.sequencer.version()
            && let Err(e) = self.catch_up_to(since).await
        {
            warn!(document = %self.document, error = %Chain(&e), "cannot catch up to a joining client's version");
        }
        let version = self.sequencer.version();
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
                let doc = self.sequencer.document();
                let ops_bytes = ops
                    .iter()
                    .map(|op| encode_op(op).len() + 1)
                    .fold(0usize, usize::saturating_add);
                if ops_bytes <= self.deps.config.limits.max_op_bytes()
                    || ops_bytes <= doc.len_bytes()
                {
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
            None => (Some(self.sequencer.document().to_delta()), None),
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
            limits: self.deps.config.joined_limits(),
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
            cursor: CursorThrottle::new(config.presence.cursor_throttle_ms),
            typing: TypingDebounce::new(config.presence.typing_debounce_ms),
            member,
        };
        self.sessions.insert(local.member.id, local);
        self.deadlines.clear(Timer::Idle);
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
}
