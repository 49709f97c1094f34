//! Time-driven filters: the cursor throttle, the typing debounce and the
//! submit rate limiter. Each takes the current time as an argument and says
//! when it next needs to be polled, so the caller owns the clock (a timer in
//! production, a manual clock in tests).

use crate::ids::Timestamp;

/// At most one value per interval; the latest wins and the trailing value is
/// always delivered (CURSOR_THROTTLE_MS).
#[derive(Clone, Debug)]
pub struct CursorThrottle<T> {
    interval_ms: u64,
    last_sent: Option<Timestamp>,
    pending: Option<T>,
}

impl<T> CursorThrottle<T> {
    pub fn new(interval_ms: u64) -> Self {
        CursorThrottle {
            interval_ms,
            last_sent: None,
            pending: None,
        }
    }

    /// A new value: returned at once if the interval since the last one has
    /// passed, otherwise held (replacing any held value) until
    /// [`CursorThrottle::deadline`].
    pub fn offer(&mut self, value: T, now: Timestamp) -> Option<T> {
        match self.last_sent {
            Some(last) if now.since(last) < self.interval_ms => {
                self.pending = Some(value);
                None
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = None;
                Some(value)
            }
        }
    }

    /// The held value, once its time has come.
    pub fn poll(&mut self, now: Timestamp) -> Option<T> {
        let due = self.deadline()?;
        if now < due {
            return None;
        }
        self.last_sent = Some(now);
        self.pending.take()
    }

    /// When a held value is due, if one is held.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.pending.as_ref()?;
        Some(
            self.last_sent
                .map_or(Timestamp::from_millis(0), |t| t.plus_ms(self.interval_ms)),
        )
    }
}

/// Typing state: active on the first signal, inactive after a quiet period
/// (TYPING_DEBOUNCE_MS).
#[derive(Clone, Debug)]
pub struct TypingDebounce {
    quiet_ms: u64,
    last_signal: Option<Timestamp>,
}

impl TypingDebounce {
    pub fn new(quiet_ms: u64) -> Self {
        TypingDebounce {
            quiet_ms,
            last_signal: None,
        }
    }

    pub fn is_active(&self) -> bool {
        self.last_signal.is_some()
    }

    /// A typing signal. `Some(true)` when this starts typing; repeated
    /// signals only push the quiet period back.
    pub fn signal(&mut self, now: Timestamp) -> Option<bool> {
        let started = self.last_signal.is_none();
        self.last_signal = Some(now);
        started.then_some(true)
    }

    /// `Some(false)` once the quiet period has passed.
    pub fn poll(&mut self, now: Timestamp) -> Option<bool> {
        let due = self.deadline()?;
        if now < due {
            return None;
        }
        self.last_signal = None;
        Some(false)
    }

    /// Ends typing at once (the client left). `Some(false)` if it was active.
    pub fn stop(&mut self) -> Option<bool> {
        self.last_signal.take().map(|_| false)
    }

    pub fn deadline(&self) -> Option<Timestamp> {
        self.last_signal.map(|t| t.plus_ms(self.quiet_ms))
    }
}

/// A token bucket: `burst` submits at once, refilled at `per_second`.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    burst: f64,
    per_ms: f64,
    tokens: f64,
    last: Option<Timestamp>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_second: u32) -> Self {
        RateLimiter {
            burst: f64::from(burst),
            per_ms: f64::from(per_second) / 1000.0,
            tokens: f64::from(burst),
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub fn try_acquire(&mut self, now: Timestamp) -> bool {
        if let Some(last) = self.last {
            let gained = now.since(last) as f64 * self.per_ms;
            self.tokens = (self.tokens + gained).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn throttle_sends_the_first_at_once_and_the_latest_at_the_deadline() {
        let mut th = CursorThrottle::new(50);
        assert_eq!(th.offer(1, t(1000)), Some(1));
        assert_eq!(th.offer(2, t(1010)), None);
        assert_eq!(th.offer(3, t(1020)), None);
        assert_eq!(th.deadline(), Some(t(1050)));
        assert_eq!(th.poll(t(1049)), None);
        assert_eq!(th.poll(t(1050)), Some(3));
        assert_eq!(th.poll(t(1200)), None);
        assert_eq!(th.deadline(), None);
        // The interval restarts at the trailing send.
        assert_eq!(th.offer(4, t(1080)), None);
        assert_eq!(th.poll(t(1100)), Some(4));
        assert_eq!(th.offer(5, t(1151)), Some(5));
    }

    #[test]
    fn throttle_delivers_at_most_one_per_interval_over_a_long_burst() {
        let mut th = CursorThrottle::new(50);
        let mut sent = vec![];
        for ms in 0..1000u64 {
            if let Some(v) = th.poll(t(ms)) {
                sent.push((ms, v));
            }
            if let Some(v) = th.offer(ms, t(ms)) {
                sent.push((ms, v));
            }
        }
        while let Some(d) = th.deadline() {
            if let Some(v) = th.poll(d) {
                sent.push((d.as_millis(), v));
            }
        }
        assert!(sent.windows(2).all(|w| w[1].0 - w[0].0 >= 50));
        assert_eq!(sent.last().map(|s| s.1), Some(999));
        assert_eq!(sent.len(), 21);
    }

    #[test]
    fn debounce_is_active_at_once_and_inactive_after_the_quiet_period() {
        let mut d = TypingDebounce::new(500);
        assert_eq!(d.signal(t(0)), Some(true));
        assert_eq!(d.signal(t(300)), None);
        assert_eq!(d.poll(t(799)), None);
        assert_eq!(d.deadline(), Some(t(800)));
        assert_eq!(d.poll(t(800)), Some(false));
        assert!(!d.is_active());
        assert_eq!(d.poll(t(2000)), None);
        assert_eq!(d.signal(t(2000)), Some(true));
        assert_eq!(d.stop(), Some(false));
        assert_eq!(d.stop(), None);
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_the_refill_rate() {
        let mut r = RateLimiter::new(3, 10);
        assert!((0..3).all(|_| r.try_acquire(t(0))));
        assert!(!r.try_acquire(t(0)));
        assert!(!r.try_acquire(t(99)));
        assert!(r.try_acquire(t(100)));
        assert!(!r.try_acquire(t(100)));
        // Idle time refills only up to the burst.
        assert!((0..3).all(|_| r.try_acquire(t(10_000))));
        assert!(!r.try_acquire(t(10_000)));
    }
}
