//! Joins and catch-up: what a joining client is sent (`ops` after its
//! `since`, or the content), and reading what the room missed from the
//! store.
//!
//! What a join costs is bounded whatever `since` says:
//! - a `since` ahead of the room is caught up on the join's turn only when
//!   it is at most [`JOIN_AHEAD_OPS`] ahead (at most that many ops and
//!   OPERATION_HISTORY_BYTES of them read); further ahead, nothing is read
//!   for the join - the room checks the store once, soon, whatever the
//!   number of such joins - and the client gets the content;
//! - a `since` behind gets the ops after it only while the in-memory
//!   history holds them all and they fit half of OUTBOUND_QUEUE_BYTES (they
//!   are the client's alone in its queue), measured from the lengths cached
//!   when the ops were fanned out; otherwise the content - a join never
//!   reads the store for ops, which every submit on the document would
//!   wait behind;
//! - the content is encoded once per version and shared by every client
//!   joining at it ([`Outbound::Joined`]); only the head (session, user,
//!   presence, limits) is the client's own.

use super::{JoinError, Local, Member, Room, Timer, entry_key};
use crate::sink::Sink;
use relay_domain::CommittedOp;
use relay_domain::{CursorThrottle, PresenceEntry, TypingDebounce, Version};
use relay_ports::bus::BusMessage;
use relay_ports::protocol::{Limits, Role, ServerMessage, UserInfo};
use relay_ports::{Chain, JoinedFrame, Outbound};
use serde::Serialize;
use std::sync::Arc;
use tracing::{info, warn};

/// How far ahead of the room a join's `since` may be and still be caught
/// up on the join's turn (a client that saw ops of another instance the
/// bus has not brought yet is a few ops ahead, not thousands).
pub(super) const JOIN_AHEAD_OPS: u64 = 1_000;

/// `joined` without its content, which follows it: `head` is this
/// serialised without its closing brace.
#[derive(Serialize)]
struct JoinedHead<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session: &'a str,
    user: &'a UserInfo,
    role: Role,
    version: Version,
    ops: Option<&'a [CommittedOp]>,
    presence: &'a [PresenceEntry],
    limits: &'a Limits,
}

impl Room {
    pub(super) async fn join(
        &mut self,
        member: Member,
        since: Option<Version>,
        sink: Sink,
    ) -> Result<(), JoinError> {
        // A client that saw versions this room has not (on another
        // instance): the store is the source of truth, catch up first so the
        // document never goes backwards for it - within bounds.
        if let Some(since) = since
            && since > self.sequencer.version()
        {
            if since.since(self.sequencer.version()) <= JOIN_AHEAD_OPS {
                let max_bytes = self.instance.config.limits.operation_history_bytes;
                if let Err(e) = self.catch_up_within(since, JOIN_AHEAD_OPS, max_bytes).await {
                    // The client saw versions the store cannot be read for:
                    // `joined` would take it backwards. It tries again.
                    warn!(document = %self.document, error = %Chain(&e), "cannot catch up to a joining client's version");
                    return Err(JoinError::Unavailable(e));
                }
            } else {
                // Far ahead: nothing is read for this join (it gets the
                // content); if the room is really that far behind, one
                // catch-up soon finds out, however many such joins come.
                self.deadlines
                    .set_in_unless_set(Timer::SettleCheck, self.instance.config.bus.down_poll);
            }
        }
        let version = self.sequencer.version();
        let catch_up = match since {
            Some(v) if v <= version => {
                // Ops beyond the largest op and the content's bound would
                // be sent as the content anyway: not read past that.
                let worth = (self.instance.config.limits.max_op_bytes())
                    .max(self.sequencer.document().content_json_bound());
                self.catch_up_ops(v, self.join_ops_budget().min(worth))
            }
            _ => None,
        };
        // The ops unless they are larger than both 4 x MAX_MESSAGE_BYTES
        // and the content, so `joined` is never larger than a document
        // Relay accepts (a client that missed most of a large document gets
        // the document), while an ordinary catch-up stays ops - and only
        // while they fit the client's queue (catch_up_ops measured them).
        let ops = match catch_up {
            Some((ops, ops_bytes)) if self.ops_rather_than_content(ops_bytes) => Some(ops),
            _ => None,
        };
        let entry = PresenceEntry {
            user: member.user,
            client_id: member.client_id.clone(),
            name: member.name.clone(),
            selection: None,
            version,
        };
        let presence: Vec<PresenceEntry> = self
            .roster
            .entries()
            .filter(|e| !(e.user == member.user && e.client_id == member.client_id))
            .cloned()
            .collect();
        let frame = self.joined_frame(&member, version, ops, presence);
        if !sink.send_item(frame) {
            return Ok(());
        }
        info!(document = %self.document, user = %member.user, client_id = %member.client_id, role = member.role.as_str(), "joined");
        let config = &self.instance.config;
        let local = Local {
            sink,
            awaiting: None,
            duplicate_acked: None,
            cursor: CursorThrottle::new(config.presence.cursor_throttle_ms),
            typing: TypingDebounce::new(config.presence.typing_debounce_ms),
            member,
        };
        *self
            .local_clients
            .entry((local.member.user, local.member.client_id.clone()))
            .or_default() += 1;
        self.sessions.insert(local.member.id, local);
        self.deadlines.clear(Timer::Idle);
        // A client is listed once however many connections it has, here or
        // on other instances: the others hear of it only if it is new.
        if self.roster.get(entry.user, &entry.client_id).is_none() {
            self.roster.join(entry.clone());
            self.broadcast_local(
                &ServerMessage::Presence {
                    joined: vec![entry.clone()],
                    left: vec![],
                },
                Some(entry_key(&entry)),
            );
        }
        self.registry.upsert(entry.clone());
        self.publish(BusMessage::Joined { entry }).await;
        Ok(())
    }
}

impl Room {
    /// What a join's catch-up `ops` may take of the client's queue: half of
    /// OUTBOUND_QUEUE_BYTES (the rest is for the frames that follow before
    /// the client reads).
    pub(super) fn join_ops_budget(&self) -> usize {
        self.instance.config.limits.outbound_queue_bytes / 2
    }

    /// Whether ops of `ops_bytes` (as JSON) are sent rather than the
    /// content: when no larger than the largest op, or than the document,
    /// or than its content as JSON (measured only in between the bounds,
    /// from the shared encoding a content `joined` would use anyway).
    fn ops_rather_than_content(&mut self, ops_bytes: usize) -> bool {
        let doc = self.sequencer.document();
        if ops_bytes <= self.instance.config.limits.max_op_bytes() || ops_bytes <= doc.len_bytes() {
            return true;
        }
        if ops_bytes > doc.content_json_bound() {
            return false;
        }
        ops_bytes <= self.shared_content().len()
    }

    /// The document's content as JSON at the current version, encoded once
    /// per version and shared by every client joining at it.
    pub(super) fn shared_content(&mut self) -> Arc<str> {
        let version = self.sequencer.version();
        if let Some((v, content)) = &self.content_cache
            && *v == version
        {
            return content.clone();
        }
        let json = serde_json::to_string(&self.sequencer.document().to_delta())
            .expect("a delta always serialises");
        let content: Arc<str> = json.into();
        self.content_cache = Some((version, content.clone()));
        content
    }

    /// The `joined` frame: with `ops`, the client's own text; otherwise
    /// its own head and tail around the shared content.
    fn joined_frame(
        &mut self,
        member: &Member,
        version: Version,
        ops: Option<Vec<CommittedOp>>,
        presence: Vec<PresenceEntry>,
    ) -> Outbound {
        let session = format!("{:016x}", member.id);
        let user = UserInfo {
            id: member.user,
            name: member.name.clone(),
        };
        let limits = self.instance.config.joined_limits();
        if let Some(ops) = ops {
            let joined = ServerMessage::Joined {
                session,
                user,
                role: member.role,
                version,
                content: None,
                ops: Some(ops),
                presence,
                limits,
            };
            return Outbound::Text(joined.encode().into());
        }
        let mut head = serde_json::to_string(&JoinedHead {
            kind: "joined",
            session: &session,
            user: &user,
            role: member.role,
            version,
            ops: None,
            presence: &presence,
            limits: &limits,
        })
        .expect("a joined head always serialises");
        // `{...}` becomes `{...,"content":` + content + `}`.
        head.pop();
        head.push_str(r#","content":"#);
        Outbound::Joined(Box::new(JoinedFrame {
            head,
            shared: self.shared_content(),
            tail: "}".to_owned(),
        }))
    }
}
