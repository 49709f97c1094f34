//! The room's own timers, by name, on one time base (Tokio's `Instant`,
//! which tests pause and advance). The domain's throttles keep their own
//! deadlines as clock `Timestamp`s; [`Deadlines::next`] takes those,
//! converted once, with the room's.

use std::time::Duration;
use tokio::time::Instant;

/// A timer of the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Refresh this instance's presence entries in the registry.
    PresenceRefresh,
    /// Read the store for other instances' ops: set while the bus is down
    /// (or this room has no subscription), when nothing else brings them.
    StorePoll,
    /// Read the store's head once because the bus went quiet after other
    /// instances' ops: a lost last message shows no gap on the bus.
    SettleCheck,
    /// Close the room: no session since it was set.
    Idle,
}

impl Timer {
    const ALL: [Timer; 4] = [
        Timer::PresenceRefresh,
        Timer::StorePoll,
        Timer::SettleCheck,
        Timer::Idle,
    ];

    fn index(self) -> usize {
        match self {
            Timer::PresenceRefresh => 0,
            Timer::StorePoll => 1,
            Timer::SettleCheck => 2,
            Timer::Idle => 3,
        }
    }
}

/// When each timer is due; unset timers never fire.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    at: [Option<Instant>; 4],
}

impl Deadlines {
    /// Due `after` from now.
    pub(super) fn set_in(&mut self, timer: Timer, after: Duration) {
        self.at[timer.index()] = Some(Instant::now() + after);
    }

    /// Due `after` from now, unless it is set already.
    pub(super) fn set_in_unless_set(&mut self, timer: Timer, after: Duration) {
        if !self.is_set(timer) {
            self.set_in(timer, after);
        }
    }

    pub(super) fn clear(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    pub(super) fn is_set(&self, timer: Timer) -> bool {
        self.at[timer.index()].is_some()
    }

    /// Whether the timer is set and its time has come.
    pub(super) fn due(&self, timer: Timer) -> bool {
        self.at[timer.index()].is_some_and(|at| Instant::now() >= at)
    }

    /// The earliest of the room's timers and `others`.
    pub(super) fn next(&self, others: impl IntoIterator<Item = Instant>) -> Option<Instant> {
        Timer::ALL
            .iter()
            .filter_map(|t| self.at[t.index()])
            .chain(others)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_next_deadline_is_the_earliest_set_one_and_a_timer_fires_when_due() {
        let mut d = Deadlines::default();
        assert_eq!(d.next([]), None);
        d.set_in(Timer::Idle, Duration::from_secs(30));
        d.set_in(Timer::SettleCheck, Duration::from_secs(1));
        let soon = Instant::now() + Duration::from_millis(500);
        assert_eq!(d.next([soon]), Some(soon));
        assert_eq!(d.next([]), Some(Instant::now() + Duration::from_secs(1)));
        assert!(!d.due(Timer::SettleCheck));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(d.due(Timer::SettleCheck));
        assert!(!d.due(Timer::StorePoll), "an unset timer never fires");
        d.set_in_unless_set(Timer::Idle, Duration::from_secs(1));
        assert!(!d.due(Timer::Idle), "a set timer keeps its time");
        d.clear(Timer::Idle);
        assert!(!d.is_set(Timer::Idle));
    }
}
