//! Per-user budgets on this instance: at most MAX_CONNECTIONS_PER_USER
//! joined connections, and joins at JOIN_RATE_PER_SEC with bursts of
//! JOIN_BURST (a token bucket). A join over either is refused with 4429
//! before the permission source or the room is asked anything.
//!
//! The limits are per instance: they protect a pod. Across pods a user is
//! bounded by the sum (the ingress spreads one user's documents over the
//! pods), see docs/architecture.md.
//!
//! The table holds one entry per user with a connection here or a join
//! bucket that is still refilling; idle entries are dropped when the last
//! connection goes and swept whenever the table has doubled since the last
//! sweep, so it stays within about twice the users that are active.

use relay_domain::{RateLimiter, Timestamp, UserId};
use relay_ports::{Clock, JoinRefusal};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The table is swept of idle users once it holds at least this many
/// entries (and then again whenever it has doubled).
const SWEEP_FROM: usize = 1024;

/// Every user's budget on this instance.
pub(crate) struct Users {
    table: Mutex<Table>,
    max_connections: usize,
    burst: u32,
    rate_per_sec: u32,
    /// How long an empty join bucket takes to fill again (ms).
    refill_ms: u64,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

struct Table {
    users: HashMap<UserId, Budget>,
    /// The size at which the next sweep runs.
    sweep_at: usize,
}

struct Budget {
    /// Connections counted (joined, or joining past this check).
    connections: usize,
    joins: RateLimiter,
    /// The last join taken from the bucket.
    last_join: Timestamp,
}

impl Budget {
    /// No connection and a full bucket: the entry says nothing a fresh one
    /// would not.
    fn is_idle(&self, now: Timestamp, refill_ms: u64) -> bool {
        self.connections == 0 && now.since(self.last_join) >= refill_ms
    }
}

impl Users {
    pub(crate) fn new(
        max_connections: usize,
        rate_per_sec: u32,
        burst: u32,
        clock: Arc<dyn Clock>,
    ) -> Arc<Users> {
        let rate = u64::from(rate_per_sec.max(1));
        Arc::new(Users {
            table: Mutex::new(Table {
                users: HashMap::new(),
                sweep_at: SWEEP_FROM,
            }),
            max_connections,
            burst,
            rate_per_sec,
            refill_ms: (u64::from(burst) * 1000).div_ceil(rate),
            clock,
        })
    }

    /// Counts a connection of `user` and takes one join from its bucket, or
    /// says which limit refuses it (the count is checked first; a join
    /// refused for the count takes nothing from the bucket). The count is
    /// given back when the lease is dropped.
    pub(crate) fn admit(self: &Arc<Self>, user: UserId) -> Result<UserLease, JoinRefusal> {
        let now = self.clock.now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.users.len() >= table.sweep_at {
            let refill_ms = self.refill_ms;
            table.users.retain(|_, b| !b.is_idle(now, refill_ms));
            table.sweep_at = (table.users.len() * 2).max(SWEEP_FROM);
        }
        let budget = table.users.entry(user).or_insert_with(|| Budget {
            connections: 0,
            joins: RateLimiter::new(self.burst, self.rate_per_sec),
            last_join: now,
        });
        if budget.connections >= self.max_connections {
            return Err(JoinRefusal::TooManyConnections);
        }
        if !budget.joins.try_acquire(now) {
            return Err(JoinRefusal::JoinRateExceeded);
        }
        budget.last_join = now;
        budget.connections += 1;
        Ok(UserLease {
            users: self.clone(),
            user,
        })
    }

    fn release(&self, user: UserId) {
        let now = self.clock.now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = table.users.get_mut(&user) {
            budget.connections = budget.connections.saturating_sub(1);
            if budget.is_idle(now, self.refill_ms) {
                table.users.remove(&user);
            }
        }
    }

    /// Users in the table (tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .users
            .len()
    }

    /// Connections counted for `user` (tests).
    #[cfg(test)]
    pub(crate) fn connections(&self, user: UserId) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .users
            .get(&user)
            .map_or(0, |b| b.connections)
    }
}

/// One counted connection of a user; dropping it gives the count back
/// (the session's end on every path, or a join refused after the count).
pub(crate) struct UserLease {
    users: Arc<Users>,
    user: UserId,
}

impl std::fmt::Debug for UserLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserLease")
            .field("user", &self.user)
            .finish()
    }
}

impl Drop for UserLease {
    fn drop(&mut self) {
        self.users.release(self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_adapter_memory::ManualClock;
    use std::time::Duration;
    use uuid::Uuid;

    fn users(max: usize, rate: u32, burst: u32) -> (Arc<Users>, ManualClock) {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        (Users::new(max, rate, burst, Arc::new(clock.clone())), clock)
    }

    fn user() -> UserId {
        UserId::new(Uuid::new_v4())
    }

    #[test]
    fn a_user_at_the_connection_cap_is_refused_and_others_are_not() {
        let (users, _) = users(2, 100, 100);
        let (a, b) = (user(), user());
        let first = users.admit(a).unwrap();
        let _second = users.admit(a).unwrap();
        assert_eq!(users.admit(a).unwrap_err(), JoinRefusal::TooManyConnections);
        assert!(users.admit(b).is_ok(), "another user is unaffected");
        drop(first);
        assert!(
            users.admit(a).is_ok(),
            "a closed connection gives its count back"
        );
    }

    #[test]
    fn joins_past_the_burst_are_refused_until_the_bucket_refills() {
        let (users, clock) = users(100, 2, 3);
        let a = user();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(users.admit(a).unwrap());
        }
        assert_eq!(users.admit(a).unwrap_err(), JoinRefusal::JoinRateExceeded);
        assert!(users.admit(user()).is_ok(), "another user is unaffected");
        clock.advance(Duration::from_millis(499));
        assert_eq!(users.admit(a).unwrap_err(), JoinRefusal::JoinRateExceeded);
        clock.advance(Duration::from_millis(1));
        held.push(users.admit(a).expect("one join back after 1/rate s"));
        assert_eq!(users.connections(a), 4, "refused joins are not counted");
    }

    #[test]
    fn idle_users_leave_the_table() {
        let (users, clock) = users(100, 10, 10);
        let a = user();
        let lease = users.admit(a).unwrap();
        assert_eq!(users.tracked(), 1);
        clock.advance(Duration::from_millis(1000));
        drop(lease);
        assert_eq!(users.tracked(), 0, "no connection and a full bucket");

        // Users whose buckets were still refilling when their last
        // connection closed are swept once the table has grown.
        for _ in 0..SWEEP_FROM {
            drop(users.admit(user()).unwrap());
        }
        assert_eq!(users.tracked(), SWEEP_FROM);
        clock.advance(Duration::from_millis(1000));
        let _kept = users.admit(a).unwrap();
        assert_eq!(users.tracked(), 1, "the idle ones were swept");
    }
}
