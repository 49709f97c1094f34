//! The collaboration service: admits connections, authenticates joins,
//! routes each session to its document's room, and drains on shutdown.

use crate::config::Config;
use crate::config::PermissionSourceKind;
use crate::permissions::{Permissions, RoleCell};
use crate::ports::{Instance, Ports};
use crate::registry::{Registry, Start};
use crate::room::{self, Command, JoinError, Member, SessionId};
use crate::session::{INVALID_MESSAGES_PER_SEC, RelaySession, SessionContext};
use crate::sink::Sink;
use crate::users::Users;
use async_trait::async_trait;
use relay_domain::{DocumentId, RateLimiter};
use relay_ports::Chain;

use relay_ports::{
    AuthError, CollaborationService, ConnectionSlot, Dependency, Health, InstanceId, Join,
    JoinRefusal, Readiness, Refusal, Started,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};
use uuid::Uuid;

pub(crate) struct Inner {
    pub(crate) instance: Arc<Instance>,
    /// The open rooms (the service owns them; a room holds only its lease).
    rooms: Registry<Command>,
    /// Roles at join (cached) and for open sessions (re-checked).
    pub(crate) permissions: Arc<Permissions>,
    /// Each user's connections and joins on this instance.
    users: Arc<Users>,
    connections: Arc<Semaphore>,
    /// Woken whenever a connection's slot is freed (shutdown waits on it).
    left: Arc<tokio::sync::Notify>,
    draining: AtomicBool,
    next_session: AtomicU64,
    started: Instant,
    /// Readiness checks of the outside dependencies beyond the token keys.
    checks: Vec<(Dependency, Check)>,
}

/// A readiness check of a dependency.
pub type Check = Arc<dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// Relay's collaboration service (the inbound port's implementation).
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    /// A service on these ports. `checks` are the readiness checks of
    /// the outside dependencies, by the names `/ready` reports.
    pub fn new(config: Config, ports: Ports, checks: Vec<(Dependency, Check)>) -> Relay {
        let config = Arc::new(config);
        let permissions = Permissions::new(
            ports.permissions.clone(),
            ports.metrics.clone(),
            config.auth.permission_cache_ttl,
            // The token's roles may differ between two tokens of one user:
            // only the database's answers are shared.
            config.auth.permission_source == PermissionSourceKind::Database,
        );
        let users = Users::new(
            config.limits.max_connections_per_user,
            config.limits.join_rate_per_sec,
            config.limits.join_burst,
            ports.clock.clone(),
        );
        let heads = crate::heads::HeadWatch::new(ports.store.clone(), config.bus.head_check);
        let instance = Arc::new(Instance {
            heads,
            ports: Arc::new(ports),
            id: InstanceId::from_uuid(Uuid::new_v4()),
            config: config.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
        });
        Relay {
            inner: Arc::new(Inner {
                instance,
                rooms: Registry::default(),
                permissions,
                users,
                connections: Arc::new(Semaphore::new(config.limits.max_connections)),
                left: Arc::new(tokio::sync::Notify::new()),
                draining: AtomicBool::new(false),
                next_session: AtomicU64::new(1),
                started: Instant::now(),
                checks,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.instance.config
    }

    /// Graceful shutdown as the deployment document describes it:
    /// - refuse new connections (503 with Retry-After) and report not
    ///   ready, at once;
    /// - tell every client `shutdown` with its own `reconnect_in_ms`
    ///   (500 ms plus a random share of [`SHUTDOWN_RECONNECT_SPREAD_MS`], so
    ///   thousands of clients do not reconnect to the other instances in
    ///   one instant);
    /// - wait up to SHUTDOWN_GRACE_SECS for them to go (woken by each
    ///   connection that ends, not polled);
    /// - close the rest with 1001; every room finishes the commits it has
    ///   started (its mailbox is in order: a submit taken before the stop
    ///   is committed and acknowledged, or answered, first), snapshots and
    ///   stops; the rooms are awaited on their task tracker (at most
    ///   [`ROOMS_STOP_WAIT`]).
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.draining.store(true, Ordering::SeqCst);
        info!(
            connections = self.active_connections(),
            documents = inner.rooms.len(),
            "draining: refusing new connections and asking clients to reconnect"
        );
        let grace = inner.instance.config.shutdown.grace;
        let spread = u64::try_from(grace.as_millis() / 2)
            .unwrap_or(u64::MAX)
            .min(SHUTDOWN_RECONNECT_SPREAD_MS);
        for room in inner.rooms.all() {
            let _ = room
                .send(Command::Shutdown {
                    min_ms: 500,
                    spread_ms: spread,
                })
                .await;
        }
        let deadline = Instant::now() + grace;
        loop {
            let notified = inner.left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active_connections() == 0 {
                break;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let remaining = self.active_connections();
        if remaining > 0 {
            info!(
                remaining,
                "grace period over: closing the remaining connections with 1001"
            );
        }
        for room in inner.rooms.all() {
            let _ = room.send(Command::CloseAll).await;
            let _ = room.send(Command::Stop).await;
        }
        inner.instance.tasks.close();
        if tokio::time::timeout(ROOMS_STOP_WAIT, inner.instance.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                rooms = inner.rooms.len(),
                "rooms still closing after {} s",
                ROOMS_STOP_WAIT.as_secs()
            );
        }
        info!(remaining = self.active_connections(), "shutdown complete");
    }

    /// Whether [`Relay::shutdown`] has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Open sessions whose role is re-checked (tests).
    #[cfg(test)]
    pub(crate) fn watched_sessions(&self) -> usize {
        self.inner.permissions.watched()
    }

    fn active_connections(&self) -> usize {
        self.inner.instance.config.limits.max_connections
            - self.inner.connections.available_permits()
    }
}

/// Most of the random share in each client's `shutdown.reconnect_in_ms`
/// (at most half of SHUTDOWN_GRACE_SECS).
pub const SHUTDOWN_RECONNECT_SPREAD_MS: u64 = 5_000;

/// How long shutdown waits for the rooms to finish their commits and
/// snapshots once every connection is closed.
pub const ROOMS_STOP_WAIT: Duration = Duration::from_secs(10);

/// A connection's slot: frees its permit, then wakes a waiting shutdown.
struct Slot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    left: Arc<tokio::sync::Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.permit.take();
        self.left.notify_waiters();
    }
}

#[async_trait]
impl CollaborationService for Relay {
    fn admit(&self) -> Result<ConnectionSlot, Refusal> {
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Draining {
                retry_after_secs: 1,
            });
        }
        match self.inner.connections.clone().try_acquire_owned() {
            Ok(permit) => Ok(ConnectionSlot::new(Slot {
                permit: Some(permit),
                left: self.inner.left.clone(),
            })),
            Err(_) => Err(Refusal::AtCapacity {
                retry_after_secs: 5,
            }),
        }
    }

    async fn join(
        &self,
        slot: ConnectionSlot,
        document: DocumentId,
        bearer: Option<String>,
        join: Join,
    ) -> Result<Started, JoinRefusal> {
        let joined = self.join_session(slot, document, bearer, join).await;
        if let Err(refusal) = &joined {
            self.inner
                .instance
                .ports
                .metrics
                .connection_rejected(refusal.reject_reason());
        }
        joined
    }

    fn health(&self) -> Health {
        Health {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            active_connections: self.active_connections(),
            active_documents: self.inner.rooms.len(),
        }
    }

    async fn readiness(&self) -> Readiness {
        let mut checks = Vec::with_capacity(self.inner.checks.len() + 1);
        for (dependency, check) in &self.inner.checks {
            checks.push((*dependency, check().await));
        }
        checks.push((
            Dependency::JwtKeys,
            self.inner.instance.ports.verifier.has_keys(),
        ));
        Readiness {
            checks,
            draining: self.inner.draining.load(Ordering::SeqCst),
        }
    }
}

impl Relay {
    /// A join's authentication, permission and room: see
    /// [`CollaborationService::join`].
    async fn join_session(
        &self,
        slot: ConnectionSlot,
        document: DocumentId,
        bearer: Option<String>,
        join: Join,
    ) -> Result<Started, JoinRefusal> {
        let inner = &self.inner;
        let Some(token) = bearer.or(join.token) else {
            return Err(JoinRefusal::NoToken);
        };
        let claims = match inner.instance.ports.verifier.verify(&token).await {
            Ok(c) => c,
            Err(AuthError::Unavailable) => return Err(JoinRefusal::KeysUnavailable),
            Err(e) => return Err(JoinRefusal::Token(e)),
        };
        // The user's budgets first: a user over them costs no lookup and
        // no room work. Counted until the session ends (or the join fails).
        let user_lease = inner.users.admit(claims.user)?;
        let answer = match inner.permissions.at_join(&claims, document).await {
            Ok(answer) => answer,
            Err(e) => {
                warn!(%document, error = %Chain(&e), "permission source");
                return Err(JoinRefusal::PermissionsUnavailable);
            }
        };
        let Some(role) = answer.role else {
            return Err(JoinRefusal::Forbidden);
        };
        let claims = Arc::new(claims);
        let id = SessionId::new(inner.next_session.fetch_add(1, Ordering::Relaxed));
        let member = Member {
            id,
            user: claims.user,
            client_id: join.client_id.clone(),
            // Shown to every other client: bounded (see PRESENCE_ENTRY_BYTES).
            name: claims
                .name
                .as_deref()
                .map(|n| n.chars().take(crate::config::MAX_NAME_CHARS).collect()),
            role,
        };
        // A room that closes between our lookup and our join drops the
        // message; start a fresh one and try again (bounded).
        for _ in 0..3 {
            let (sink, outbound, close_rx) = Sink::new(
                inner.instance.config.limits.outbound_queue,
                inner.instance.config.limits.outbound_queue_bytes,
                inner.instance.ports.metrics.clone(),
            );
            let (room_tx, start) = inner.rooms.get_or_create(document);
            if let Some(Start { mailbox, lease }) = start {
                room::spawn(document, inner.instance.clone(), mailbox, lease);
            }
            let (reply_tx, reply_rx) = oneshot::channel();
            let cmd = Command::Join {
                member: member.clone(),
                since: join.since,
                sink: sink.clone(),
                reply: reply_tx,
            };
            if room_tx.send(cmd).await.is_err() {
                continue;
            }
            match reply_rx.await {
                Ok(Ok(())) => {
                    inner.instance.ports.metrics.connection_opened(document);
                    let (user, client_id) = (claims.user, join.client_id.clone());
                    let limits = &inner.instance.config.limits;
                    let role = RoleCell::new(answer);
                    let watch = inner.permissions.watch(
                        id,
                        claims.clone(),
                        document,
                        role.clone(),
                        sink.clone(),
                    );
                    let session = RelaySession {
                        id,
                        document,
                        claims,
                        client_id: join.client_id,
                        role,
                        room: room_tx,
                        sink,
                        ctx: SessionContext {
                            instance: inner.instance.clone(),
                            permissions: inner.permissions.clone(),
                        },
                        left: false,
                        submit_limiter: RateLimiter::new(
                            limits.submit_burst,
                            limits.submit_rate_per_sec,
                        ),
                        presence_limiter: RateLimiter::new(
                            inner.instance.config.presence.burst,
                            inner.instance.config.presence.rate_per_sec,
                        ),
                        presence_limited: false,
                        invalid_limiter: RateLimiter::new(
                            INVALID_MESSAGES_PER_SEC,
                            INVALID_MESSAGES_PER_SEC,
                        ),
                        _watch: watch,
                        _user: user_lease,
                        _slot: slot,
                    };
                    return Ok(Started {
                        session: Box::new(session),
                        outbound,
                        close: close_rx,
                        user,
                        client_id,
                    });
                }
                Ok(Err(e @ JoinError::Unavailable(_))) => {
                    warn!(%document, error = %Chain(&e), "join failed");
                    return Err(JoinRefusal::DocumentUnavailable);
                }
                Err(_) => continue,
            }
        }
        Err(JoinRefusal::RoomUnreachable)
    }
}
