//! One connection's session: checks what the client may do and forwards it
//! to the document's room.

use crate::permissions::{Permissions, RoleCell, Watch};
use crate::ports::Instance;
use crate::room::{Command, SessionId};
use crate::sink::Sink;
use crate::users::UserLease;
use async_trait::async_trait;
use relay_domain::{ClientId, DocumentId, RateLimiter, Submission};
use relay_ports::protocol::{CloseCode, ErrorCode, Role};
use relay_ports::{
    Chain, Claims, ClientMessage, ConnectionSlot, DecodeError, OpStatus, OperationType, Session,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::warn;

/// What a session needs of the service: the ports and the permissions,
/// nothing of the service's own state.
#[derive(Clone)]
pub(crate) struct SessionContext {
    pub(crate) instance: Arc<Instance>,
    pub(crate) permissions: Arc<Permissions>,
}

pub(crate) struct RelaySession {
    pub(crate) id: SessionId,
    pub(crate) document: DocumentId,
    pub(crate) claims: Arc<Claims>,
    pub(crate) client_id: ClientId,
    /// The role, kept current by the permission re-checks.
    pub(crate) role: Arc<RoleCell>,
    pub(crate) room: crate::registry::Mailbox<Command>,
    pub(crate) sink: Sink,
    pub(crate) ctx: SessionContext,
    pub(crate) left: bool,
    /// Submits allowed (SUBMIT_RATE_PER_SEC, burst SUBMIT_BURST): checked
    /// here, so a submit over the rate never takes a place in the room's
    /// mailbox.
    pub(crate) submit_limiter: RateLimiter,
    /// Cursor and typing messages allowed (PRESENCE_RATE_PER_SEC, burst
    /// PRESENCE_BURST): checked here, before the room does any work.
    pub(crate) presence_limiter: RateLimiter,
    /// Whether the client was told it is over the presence rate (it is told
    /// once, until a message is accepted again).
    pub(crate) presence_limited: bool,
    /// Frames that did not decode allowed (INVALID_MESSAGES_PER_SEC a
    /// second, as a burst too): past it the connection is closed with 1008.
    pub(crate) invalid_limiter: RateLimiter,
    /// The sweeper's re-checks of this session, until it ends.
    pub(crate) _watch: Option<Watch>,
    /// This connection in its user's MAX_CONNECTIONS_PER_USER.
    pub(crate) _user: UserLease,
    pub(crate) _slot: ConnectionSlot,
}

/// Frames that do not decode a connection may send a second (and at once)
/// before it is closed with 1008: a client in error, or one probing.
pub(crate) const INVALID_MESSAGES_PER_SEC: u32 = 20;

impl RelaySession {
    /// The role: the re-checks' latest answer, or the permission source's
    /// own once that answer is older than PERMISSION_CACHE_TTL (the
    /// re-checks failed, or there are none: the claims source).
    async fn current_role(&mut self) -> Result<Option<Role>, ()> {
        let answer = self.role.get();
        let Some(role) = answer.role else {
            // Revoked by a re-check (which closed the session).
            return Ok(None);
        };
        if answer.at.elapsed() < self.ctx.permissions.ttl() {
            self.ctx.instance.ports.metrics.permission_lookup(true);
            return Ok(Some(role));
        }
        match self.ctx.permissions.ask(&self.claims, self.document).await {
            Ok(answer) => {
                self.role.set(answer);
                Ok(answer.role)
            }
            Err(e) => {
                warn!(document = %self.document, error = %Chain(&e), "permission source");
                Err(())
            }
        }
    }

    /// Whether a submit may go on to the room: over SUBMIT_RATE_PER_SEC it
    /// is answered `rate_limited` here and never reaches the mailbox.
    fn submit_allowed(&mut self, seq: relay_domain::Seq, kind: OperationType) -> bool {
        if self
            .submit_limiter
            .try_acquire(self.ctx.instance.ports.clock.now())
        {
            return true;
        }
        self.sink.error(
            ErrorCode::RateLimited,
            "too many submits: slow down",
            Some(seq),
        );
        self.ctx
            .instance
            .ports
            .metrics
            .operation(kind, OpStatus::Rejected);
        false
    }

    /// Whether a cursor or typing message may go on to the room; over the
    /// rate it is dropped, and the first one dropped is answered
    /// `rate_limited` so the client knows.
    fn presence_allowed(&mut self) -> bool {
        if self
            .presence_limiter
            .try_acquire(self.ctx.instance.ports.clock.now())
        {
            self.presence_limited = false;
            return true;
        }
        if !self.presence_limited {
            self.presence_limited = true;
            self.sink.error(
                ErrorCode::RateLimited,
                "too many cursor or typing messages: some were dropped",
                None,
            );
        }
        false
    }

    async fn forward(&mut self, cmd: Command) {
        if self.room.send(cmd).await.is_err() {
            // The room is gone (it failed): the client reconnects.
            self.sink
                .order_close(CloseCode::TryAgainLater, "document closed; reconnect");
        }
    }
}

#[async_trait]
impl Session for RelaySession {
    async fn handle(&mut self, message: ClientMessage) {
        match message {
            ClientMessage::Submit { seq, base, delta } => {
                if !self.submit_allowed(seq, OperationType::of(&delta)) {
                    return;
                }
                match self.current_role().await {
                    Ok(Some(role)) if role.can_edit() => {}
                    Ok(Some(_)) => {
                        self.sink.error(
                            ErrorCode::Forbidden,
                            "viewers cannot submit operations",
                            Some(seq),
                        );
                        return;
                    }
                    Ok(None) => {
                        self.sink.error(
                            ErrorCode::Forbidden,
                            "no access to this document",
                            Some(seq),
                        );
                        self.sink
                            .close_after(CloseCode::Forbidden, "access revoked");
                        return;
                    }
                    Err(()) => {
                        // Not `unavailable`: this may be the re-sent copy of
                        // an op committed before, which nothing here can
                        // tell. The client resumes and re-sends.
                        self.sink.order_close(
                            CloseCode::TryAgainLater,
                            "permissions cannot be checked right now: reconnect and re-send",
                        );
                        return;
                    }
                }
                let submission = Submission {
                    user: self.claims.user,
                    client_id: self.client_id.clone(),
                    seq,
                    base,
                    delta,
                };
                let span = tracing::info_span!(target: crate::telemetry::SUBMIT_SPANS, "receive", document = %self.document, %seq);
                let command = Command::Submit {
                    session: self.id,
                    submission,
                    received: Instant::now(),
                };
                tracing::Instrument::instrument(self.forward(command), span).await;
            }
            ClientMessage::Cursor { version, selection } => {
                if !self.presence_allowed() {
                    return;
                }
                self.forward(Command::Cursor {
                    session: self.id,
                    version,
                    selection,
                })
                .await;
            }
            ClientMessage::Typing => {
                if self.presence_allowed() {
                    self.forward(Command::Typing { session: self.id }).await;
                }
            }
            ClientMessage::Leave => {
                if !self.left {
                    self.left = true;
                    self.forward(Command::Leave {
                        session: self.id,
                        reason: "leave".into(),
                    })
                    .await;
                }
                self.sink.close_after(CloseCode::Normal, "goodbye");
            }
            ClientMessage::Join(_) => {
                self.sink
                    .error(ErrorCode::BadMessage, "already joined", None);
            }
        }
    }

    fn reject(&mut self, error: DecodeError) {
        if !self
            .invalid_limiter
            .try_acquire(self.ctx.instance.ports.clock.now())
        {
            self.sink
                .order_close(CloseCode::Policy, "too many invalid messages");
            return;
        }
        self.sink.error(error.code, &error.message, error.seq);
    }

    fn until_expiry(&self) -> Option<Duration> {
        let now_ms = self.ctx.instance.ports.clock.now().as_millis();
        // Closed when the verifier would refuse the token: past exp plus the
        // leeway (otherwise a client could loop: accepted, closed, accepted).
        let leeway = self.ctx.instance.config.auth.jwt.leeway_secs;
        let exp_ms = self.claims.expires_at_ms(leeway);
        Some(Duration::from_millis(exp_ms.saturating_sub(now_ms)))
    }

    async fn close(mut self: Box<Self>, reason: &str) {
        if !self.left {
            self.left = true;
            let cmd = Command::Leave {
                session: self.id,
                reason: reason.to_owned(),
            };
            let _ = self.room.send(cmd).await;
        }
        self.ctx
            .instance
            .ports
            .metrics
            .connection_closed(self.document);
        tracing::debug!(document = %self.document, user = %self.claims.user, client_id = %self.client_id, reason, "session left its room");
    }
}
