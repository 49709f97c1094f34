//! The clock's contract: time never goes backwards, and a wall clock reads
//! milliseconds since the Unix epoch.

use crate::Clock;
use std::time::{SystemTime, UNIX_EPOCH};

/// For clocks that follow the wall clock (production ones).
pub fn wall_clock<C: Clock>(clock: &C) {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let now = clock.now().as_millis();
    assert!(
        now.abs_diff(wall) < 60_000,
        "the clock reads {now} ms, the wall clock {wall} ms"
    );
    monotonic(clock);
}

/// Any clock: successive readings never decrease.
pub fn monotonic<C: Clock>(clock: &C) {
    let mut last = clock.now();
    for _ in 0..1000 {
        let next = clock.now();
        assert!(next >= last, "time went backwards: {last:?} then {next:?}");
        last = next;
    }
}
