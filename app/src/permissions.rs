//! Roles at join and for open sessions.
//!
//! With a permission source whose answer depends only on the user and the
//! document (PERMISSION_SOURCE=database):
//!
//! - **Joins share a cache**: one lookup per (user, document) per
//!   PERMISSION_CACHE_TTL, answers with and without access alike (an error
//!   is not kept). Concurrent joins of one (user, document) wait for the
//!   one lookup. At most [`CACHE_ENTRIES`] answers are kept (the least
//!   useful go first).
//! - **Open sessions are re-checked** by one sweeper task, never on a
//!   room's task: every session's role is asked again at least every
//!   PERMISSION_CACHE_TTL (each session at a random point between 3/4 of
//!   it and all of it, so sessions opened together do not all ask at once;
//!   the sweeper looks every second), one lookup per (user, document) for
//!   all its sessions, [`LOOKUPS_AT_ONCE`] at a time, each given up after
//!   [`LOOKUP_TIMEOUT`]. A session that lost access is closed with 4403; a
//!   changed role applies from the session's next submit on. A failed
//!   lookup leaves the session as it was (its next submit asks itself and
//!   is answered `unavailable` if that fails too) and is tried again after
//!   [`RETRY_AFTER_FAILURE`].
//! - PERMISSION_CACHE_TTL=0: nothing is cached and open sessions are
//!   re-checked every second.
//!
//! With PERMISSION_SOURCE=claims the role is the token's: it cannot change
//! before the token expires (which closes the session with 4401), so there
//! is neither cache nor re-check; a submit re-reads it (no I/O) once the
//! answer is older than the TTL.

use crate::room::SessionId;
use crate::sink::Sink;
use futures::StreamExt;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use relay_domain::{DocumentId, Role, UserId};
use relay_ports::protocol::CloseCode;
use relay_ports::{Chain, Claims, Metrics, PermissionError, PermissionSource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::Duration;
use tokio::time::Instant;
use tracing::warn;

/// Most (user, document) answers the join cache keeps (about 100 bytes
/// each).
pub(crate) const CACHE_ENTRIES: u64 = 100_000;
/// How often the sweeper looks for sessions due for a re-check.
pub(crate) const SWEEP_TICK: Duration = Duration::from_secs(1);
/// Re-check lookups in flight at once.
pub(crate) const LOOKUPS_AT_ONCE: usize = 8;
/// A re-check lookup not answered within this is given up (and retried).
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// When a failed re-check is tried again.
pub(crate) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

type Key = (UserId, DocumentId);

/// A role as the permission source gave it, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// `None`: no access.
    pub(crate) role: Option<Role>,
    pub(crate) at: Instant,
}

/// A session's current role, kept up to date by the sweeper and read by
/// the session before each submit.
#[derive(Debug)]
pub(crate) struct RoleCell(Mutex<Answer>);

impl RoleCell {
    pub(crate) fn new(answer: Answer) -> Arc<RoleCell> {
        Arc::new(RoleCell(Mutex::new(answer)))
    }

    pub(crate) fn get(&self) -> Answer {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, answer: Answer) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = answer;
    }
}

/// An open session the sweeper re-checks.
struct Watched {
    key: Key,
    claims: Arc<Claims>,
    cell: Arc<RoleCell>,
    sink: Sink,
    /// When it is next asked.
    due: Instant,
}

/// The permission source as joins and sessions use it.
pub(crate) struct Permissions {
    source: Arc<dyn PermissionSource>,
    metrics: Arc<dyn Metrics>,
    ttl: Duration,
    /// Whether answers depend on the user and the document only (so they
    /// may be shared and re-checked by (user, document)).
    shared: bool,
    /// `None` without sharing or with a TTL of 0.
    cache: Option<Cache<Key, Answer>>,
    watched: Mutex<HashMap<SessionId, Watched>>,
    sweeper: Once,
}

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permissions")
            .field("ttl", &self.ttl)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Permissions {
    /// `shared`: the source's answer depends on the user and the document
    /// only (not on the rest of the token).
    pub(crate) fn new(
        source: Arc<dyn PermissionSource>,
        metrics: Arc<dyn Metrics>,
        ttl: Duration,
        shared: bool,
    ) -> Arc<Permissions> {
        let cache = (shared && !ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(ttl)
                .build()
        });
        Arc::new(Permissions {
            source,
            metrics,
            ttl,
            shared,
            cache,
            watched: Mutex::new(HashMap::new()),
            sweeper: Once::new(),
        })
    }

    /// PERMISSION_CACHE_TTL.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The role for a join: from the cache while its answer is younger than
    /// the TTL, otherwise asked (once for concurrent joins of one user and
    /// document).
    pub(crate) async fn at_join(
        &self,
        claims: &Claims,
        document: DocumentId,
    ) -> Result<Answer, PermissionError> {
        let Some(cache) = &self.cache else {
            let role = self.source.role(claims, document).await?;
            return Ok(Answer {
                role,
                at: Instant::now(),
            });
        };
        let (ttl, source) = (self.ttl, &self.source);
        let computed = cache
            .entry((claims.user, document))
            .and_try_compute_with(|entry| async move {
                if entry.is_some_and(|e| e.value().at.elapsed() < ttl) {
                    return Ok(Op::Nop);
                }
                let role = source.role(claims, document).await?;
                Ok::<_, PermissionError>(Op::Put(Answer {
                    role,
                    at: Instant::now(),
                }))
            })
            .await?;
        match computed {
            CompResult::Unchanged(e) => {
                self.metrics.permission_lookup(true);
                Ok(*e.value())
            }
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) => {
                self.metrics.permission_lookup(false);
                Ok(*e.value())
            }
            // The closure neither removes nor leaves an absent entry.
            CompResult::StillNone(_) | CompResult::Removed(_) => {
                let role = source.role(claims, document).await?;
                Ok(Answer {
                    role,
                    at: Instant::now(),
                })
            }
        }
    }

    /// Asks the source again (a session whose answer is older than the
    /// TTL, because the sweeper could not refresh it), and keeps the answer
    /// for joins.
    pub(crate) async fn ask(
        &self,
        claims: &Claims,
        document: DocumentId,
    ) -> Result<Answer, PermissionError> {
        self.metrics.permission_lookup(false);
        let role = self.source.role(claims, document).await?;
        let answer = Answer {
            role,
            at: Instant::now(),
        };
        if let Some(cache) = &self.cache {
            cache.insert((claims.user, document), answer).await;
        }
        Ok(answer)
    }

    /// Has the sweeper re-check an open session from now on (until the
    /// returned guard is dropped). `None` when roles are not re-checked
    /// (the claims source).
    pub(crate) fn watch(
        self: &Arc<Self>,
        session: SessionId,
        claims: Arc<Claims>,
        document: DocumentId,
        cell: Arc<RoleCell>,
        sink: Sink,
    ) -> Option<Watch> {
        if !self.shared {
            return None;
        }
        self.sweeper.call_once(|| {
            tokio::spawn(sweep(Arc::downgrade(self)));
        });
        let watched = Watched {
            key: (claims.user, document),
            due: self.next_due(cell.get().at),
            claims,
            cell,
            sink,
        };
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session, watched);
        Some(Watch {
            permissions: self.clone(),
            session,
        })
    }

    /// How often an open session is re-checked at most: the TTL, and every
    /// second for a TTL of 0.
    fn recheck_every(&self) -> Duration {
        self.ttl.max(SWEEP_TICK)
    }

    /// When a session whose answer is from `at` is asked again: between
    /// 3/4 of the re-check period and all of it after `at` (less a tick,
    /// since the sweeper looks once a tick).
    fn next_due(&self, at: Instant) -> Instant {
        let share = rand::random_range(0.75..=1.0);
        at + self
            .recheck_every()
            .mul_f64(share)
            .saturating_sub(SWEEP_TICK)
    }

    /// One look of the sweeper: asks again for every (user, document) with
    /// a session due, and applies each answer to all its sessions.
    async fn recheck_due(&self) {
        let now = Instant::now();
        let due: HashMap<Key, Arc<Claims>> = {
            let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
            let mut due = HashMap::new();
            for w in watched.values().filter(|w| w.due <= now) {
                due.entry(w.key).or_insert_with(|| w.claims.clone());
            }
            due
        };
        if due.is_empty() {
            return;
        }
        let answers: Vec<(Key, Option<Answer>)> = futures::stream::iter(due)
            .map(|(key, claims)| async move {
                self.metrics.permission_lookup(false);
                let asked = tokio::time::timeout(LOOKUP_TIMEOUT, self.source.role(&claims, key.1));
                let answer = match asked.await {
                    Ok(Ok(role)) => Some(Answer {
                        role,
                        at: Instant::now(),
                    }),
                    Ok(Err(e)) => {
                        warn!(document = %key.1, error = %Chain(&e), "permission re-check");
                        None
                    }
                    Err(_) => {
                        warn!(document = %key.1, "permission re-check: no answer in time");
                        None
                    }
                };
                (key, answer)
            })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect()
            .await;
        if let Some(cache) = &self.cache {
            for (key, answer) in &answers {
                if let Some(answer) = answer {
                    cache.insert(*key, *answer).await;
                }
            }
        }
        let answers: HashMap<Key, Option<Answer>> = answers.into_iter().collect();
        let retry = Instant::now() + RETRY_AFTER_FAILURE.min(self.recheck_every());
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        for w in watched.values_mut() {
            match answers.get(&w.key) {
                None => {}
                Some(None) => w.due = w.due.max(retry),
                Some(Some(answer)) => {
                    w.cell.set(*answer);
                    w.due = self.next_due(answer.at);
                    if answer.role.is_none() {
                        w.sink.order_close(CloseCode::Forbidden, "access revoked");
                    }
                }
            }
        }
    }

    /// Sessions re-checked (tests).
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The sweeper: one task for every open session, ending with the service.
async fn sweep(permissions: Weak<Permissions>) {
    let mut tick = tokio::time::interval(SWEEP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(permissions) = permissions.upgrade() else {
            return;
        };
        permissions.recheck_due().await;
    }
}

/// An open session under re-check; dropping it ends the re-checks.
pub(crate) struct Watch {
    permissions: Arc<Permissions>,
    session: SessionId,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.permissions
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.session);
    }
}
