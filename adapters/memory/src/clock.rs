//! Clocks: the wall clock, one driven by tokio's time, and one driven by
//! hand.

use relay_domain::Timestamp;
use relay_ports::Clock;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The wall clock. A clock set before 1970 reads as the epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    pub fn new() -> Self {
        SystemClock
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_millis(millis(since_epoch))
    }
}

/// The wall time when it was made plus the time tokio's clock has moved
/// since. In production that is the wall clock, but monotonic; in a test
/// with `tokio::time::pause` it moves only when tokio's time does, so
/// timers and timestamps agree.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: Timestamp,
    started: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl TokioClock {
    /// Starts at the wall time.
    pub fn new() -> Self {
        TokioClock::starting_at(SystemClock.now())
    }

    /// Starts at `origin`.
    pub fn starting_at(origin: Timestamp) -> Self {
        TokioClock {
            origin,
            started: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.origin.plus_ms(millis(self.started.elapsed()))
    }
}

/// A clock that moves only when told to. Clones share the same time, so a
/// test keeps one and hands another (or an `Arc`) to what it tests.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            millis: Arc::new(AtomicU64::new(start.as_millis())),
        }
    }

    pub fn set(&self, to: Timestamp) {
        self.millis.store(to.as_millis(), Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        let by = millis(by);
        // fetch_update cannot fail with a closure that always answers Some.
        let _ = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_milliseconds_since_the_epoch() {
        let before = millis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap());
        let now = SystemClock.now().as_millis();
        let after = millis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap());
        assert!(
            (before..=after).contains(&now),
            "{before} <= {now} <= {after}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = TokioClock::starting_at(Timestamp::from_millis(1_000));
        assert_eq!(clock.now(), Timestamp::from_millis(1_000));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now(), Timestamp::from_millis(1_250));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(clock.now(), Timestamp::from_millis(4_250));
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_starts_at_the_wall_time() {
        let wall = SystemClock.now();
        let now = TokioClock::new().now();
        assert!(
            now >= wall && now.since(wall) < 60_000,
            "{now:?} vs {wall:?}"
        );
    }

    #[test]
    fn manual_clock_clones_share_their_time() {
        let clock = ManualClock::new(Timestamp::from_millis(10));
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        clock.advance(Duration::from_millis(5));
        assert_eq!(shared.now(), Timestamp::from_millis(15));
        clock.set(Timestamp::from_millis(3));
        assert_eq!(shared.now(), Timestamp::from_millis(3));
        clock.set(Timestamp::from_millis(u64::MAX - 1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            clock.now(),
            Timestamp::from_millis(u64::MAX),
            "advancing saturates"
        );
    }
}
