//! What the clients measure: latency histograms (HdrHistogram, in
//! microseconds), counters, errors and close codes, gathered in sharded
//! windows that a sampler turns into a time series.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latencies up to an hour, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn us(d: Duration) -> u64 {
    (d.as_micros().min(3_600_000_000) as u64).max(1)
}

/// Everything recorded between two samples (or over the whole run).
#[derive(Clone, Debug)]
pub struct Window {
    pub ack: Histogram<u64>,
    pub delivery: Histogram<u64>,
    /// The deliveries of `delivery` made to a client on another instance
    /// than the sender's (kept in the totals only, not in the series).
    pub delivery_other_instance: Histogram<u64>,
    /// Edits made (each a patch of the trace).
    pub edits: u64,
    pub submits: u64,
    pub acks: u64,
    /// Ops received by a client (each op counts once per receiver).
    pub deliveries: u64,
    /// Deliveries whose due time was no longer known (see [`DueTable`]).
    pub unmatched: u64,
    pub cursors_sent: u64,
    pub typing_sent: u64,
    pub presence_received: u64,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    /// `ack` by the submitter's instance (kept in the totals only).
    pub ack_by_instance: BTreeMap<usize, Histogram<u64>>,
    /// `unavailable` answers by the submitter's instance.
    pub unavailable_by_instance: BTreeMap<usize, u64>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            ack: histogram(),
            delivery: histogram(),
            delivery_other_instance: histogram(),
            edits: 0,
            submits: 0,
            acks: 0,
            deliveries: 0,
            unmatched: 0,
            cursors_sent: 0,
            typing_sent: 0,
            presence_received: 0,
            errors: BTreeMap::new(),
            closes: BTreeMap::new(),
            ack_by_instance: BTreeMap::new(),
            unavailable_by_instance: BTreeMap::new(),
        }
    }
}

impl Window {
    pub fn add(&mut self, other: &Window) {
        self.ack.add(&other.ack).expect("same bounds");
        self.delivery.add(&other.delivery).expect("same bounds");
        self.delivery_other_instance
            .add(&other.delivery_other_instance)
            .expect("same bounds");
        self.edits += other.edits;
        self.submits += other.submits;
        self.acks += other.acks;
        self.deliveries += other.deliveries;
        self.unmatched += other.unmatched;
        self.cursors_sent += other.cursors_sent;
        self.typing_sent += other.typing_sent;
        self.presence_received += other.presence_received;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.closes {
            *self.closes.entry(k.clone()).or_default() += v;
        }
        for (k, h) in &other.ack_by_instance {
            self.ack_by_instance
                .entry(*k)
                .or_insert_with(histogram)
                .add(h)
                .expect("same bounds");
        }
        for (k, v) in &other.unavailable_by_instance {
            *self.unavailable_by_instance.entry(*k).or_default() += v;
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    /// Of latency samples, through the histogram the tool records into
    /// (microseconds, three significant digits).
    pub fn of_durations(samples: impl IntoIterator<Item = Duration>) -> Percentiles {
        let mut h = histogram();
        for d in samples {
            h.saturating_record(us(d));
        }
        Percentiles::of(&h)
    }
}

/// Where clients record: a few shards so two cores rarely meet on a lock.
/// Samples whose edit was due before `measure_from` go into the time
/// series only, not into the totals.
#[derive(Debug)]
pub struct Recorder {
    shards: Vec<Mutex<(Window, Window)>>,
    epoch: Instant,
    measure_from_us: AtomicU64,
    measure_until_us: AtomicU64,
}

impl Recorder {
    pub fn new(shards: usize) -> Recorder {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new((Window::default(), Window::default())))
                .collect(),
            epoch: Instant::now(),
            measure_from_us: AtomicU64::new(u64::MAX),
            measure_until_us: AtomicU64::new(u64::MAX),
        }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Samples (and counts) of edits due in `[from, until)` count in the
    /// totals.
    pub fn measure_between(&self, from: Instant, until: Instant) {
        let us = |at: Instant| at.saturating_duration_since(self.epoch).as_micros() as u64;
        self.measure_until_us.store(us(until), Ordering::Relaxed);
        self.measure_from_us.store(us(from), Ordering::Relaxed);
    }

    /// Whether something due (or happening) at `due` is measured.
    pub fn measured(&self, due: Instant) -> bool {
        let at = due.saturating_duration_since(self.epoch).as_micros() as u64;
        at >= self.measure_from_us.load(Ordering::Relaxed)
            && at < self.measure_until_us.load(Ordering::Relaxed)
    }

    /// Runs `f` on the shard's (series, totals) windows; `f` gets whether
    /// a sample due at `due` is measured.
    pub fn with(&self, shard: usize, f: impl FnOnce(&mut Window, Option<&mut Window>)) {
        let mut g = self.shards[shard % self.shards.len()]
            .lock()
            .expect("recorder lock");
        let (series, totals) = &mut *g;
        f(series, Some(totals));
    }

    /// An ack to a client on `instance`.
    pub fn ack(&self, shard: usize, instance: usize, due: Instant, at: Instant) {
        let measured = self.measured(due);
        let l = us(at.saturating_duration_since(due));
        self.with(shard, |s, t| {
            s.acks += 1;
            s.ack.saturating_record(l);
            if measured && let Some(t) = t {
                t.acks += 1;
                t.ack.saturating_record(l);
                t.ack_by_instance
                    .entry(instance)
                    .or_insert_with(histogram)
                    .saturating_record(l);
            }
        });
    }

    /// An `unavailable` answer to a client on `instance` (besides its
    /// count among the errors).
    pub fn unavailable(&self, shard: usize, instance: usize) {
        self.count(shard, |w| {
            *w.unavailable_by_instance.entry(instance).or_default() += 1
        });
    }

    /// Deliveries that arrived at `at`, each with its due time if known
    /// and whether its sender is on another instance than the receiver.
    pub fn deliveries(&self, shard: usize, dues: &[(Option<Instant>, bool)], at: Instant) {
        let mut g = self.shards[shard % self.shards.len()]
            .lock()
            .expect("recorder lock");
        let (s, t) = &mut *g;
        for (due, other_instance) in dues {
            s.deliveries += 1;
            match due {
                Some(due) => {
                    let l = us(at.saturating_duration_since(*due));
                    s.delivery.saturating_record(l);
                    if self.measured(*due) {
                        t.deliveries += 1;
                        t.delivery.saturating_record(l);
                        if *other_instance {
                            t.delivery_other_instance.saturating_record(l);
                        }
                    }
                }
                None => {
                    s.unmatched += 1;
                    t.unmatched += 1;
                }
            }
        }
    }

    /// A counter: in the series, and in the totals when it happens in the
    /// measured time.
    pub fn count(&self, shard: usize, f: impl Fn(&mut Window)) {
        self.count_at(shard, Instant::now(), f);
    }

    /// A counter of something due at `due`.
    pub fn count_at(&self, shard: usize, due: Instant, f: impl Fn(&mut Window)) {
        let measured = self.measured(due);
        self.with(shard, |s, t| {
            f(s);
            if measured && let Some(t) = t {
                f(t);
            }
        });
    }

    pub fn error(&self, shard: usize, what: &str) {
        self.count(shard, |w| {
            *w.errors.entry(what.to_owned()).or_default() += 1
        });
    }

    pub fn close(&self, shard: usize, what: &str) {
        self.count(shard, |w| {
            *w.closes.entry(what.to_owned()).or_default() += 1
        });
    }

    /// Takes the series windows (resetting them).
    pub fn take_series(&self) -> Window {
        let mut out = Window::default();
        for s in &self.shards {
            let mut g = s.lock().expect("recorder lock");
            out.add(&g.0);
            g.0 = Window::default();
        }
        out
    }

    /// The totals so far.
    pub fn totals(&self) -> Window {
        let mut out = Window::default();
        for s in &self.shards {
            out.add(&s.lock().expect("recorder lock").1);
        }
        out
    }
}

/// When each client's recent submits were due, so a receiver can compute
/// delivery latency from the `client_id` and `seq` of an op it receives.
/// One ring per client slot, lock-free: a slot is written by its one
/// client and read by the document's other clients.
#[derive(Debug)]
pub struct DueTable {
    epoch: Instant,
    slots: Vec<Ring>,
}

const RING: usize = 256;

#[derive(Debug)]
struct Ring {
    keys: Vec<AtomicU64>,
    dues: Vec<AtomicU64>,
}

/// The key of a submit: the client's generation (a replaced client reuses
/// its slot) and its seq.
fn key(generation: u32, seq: u64) -> u64 {
    (u64::from(generation) << 40) | (seq & ((1 << 40) - 1))
}

impl DueTable {
    pub fn new(slots: usize, epoch: Instant) -> DueTable {
        DueTable {
            epoch,
            slots: (0..slots)
                .map(|_| Ring {
                    keys: (0..RING).map(|_| AtomicU64::new(u64::MAX)).collect(),
                    dues: (0..RING).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
        }
    }

    pub fn set(&self, slot: usize, generation: u32, seq: u64, due: Instant) {
        let Some(r) = self.slots.get(slot) else {
            return;
        };
        let i = (seq as usize) % RING;
        r.keys[i].store(u64::MAX, Ordering::Release);
        r.dues[i].store(
            due.saturating_duration_since(self.epoch).as_nanos() as u64,
            Ordering::Release,
        );
        r.keys[i].store(key(generation, seq), Ordering::Release);
    }

    pub fn get(&self, slot: usize, generation: u32, seq: u64) -> Option<Instant> {
        let r = self.slots.get(slot)?;
        let i = (seq as usize) % RING;
        let k = key(generation, seq);
        if r.keys[i].load(Ordering::Acquire) != k {
            return None;
        }
        let due = r.dues[i].load(Ordering::Acquire);
        // Overwritten meanwhile: not this submit's time.
        if r.keys[i].load(Ordering::Acquire) != k {
            return None;
        }
        Some(self.epoch + Duration::from_nanos(due))
    }
}

/// The client id of slot `slot`, generation `generation`.
pub fn client_id(slot: usize, generation: u32) -> String {
    format!("load-{slot}-{generation}")
}

/// The slot and generation a client id of this tool carries.
pub fn parse_client_id(id: &str) -> Option<(usize, u32)> {
    let rest = id.strip_prefix("load-")?;
    let (slot, generation) = rest.split_once('-')?;
    Some((slot.parse().ok()?, generation.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_found_by_client_and_seq_and_lost_when_overwritten() {
        let epoch = Instant::now();
        let t = DueTable::new(4, epoch);
        let due = epoch + Duration::from_millis(5);
        t.set(2, 1, 7, due);
        assert_eq!(t.get(2, 1, 7), Some(due));
        assert_eq!(t.get(2, 0, 7), None, "another generation");
        assert_eq!(t.get(1, 1, 7), None, "another slot");
        t.set(2, 1, 7 + RING as u64, due);
        assert_eq!(t.get(2, 1, 7), None, "overwritten");
        assert_eq!(t.get(9, 1, 7), None, "no such slot");
    }

    #[test]
    fn client_ids_round_trip() {
        assert_eq!(parse_client_id(&client_id(12, 3)), Some((12, 3)));
        assert_eq!(parse_client_id("tab-1"), None);
        assert_eq!(parse_client_id("load-x-1"), None);
    }

    #[test]
    fn only_samples_due_after_the_start_count_in_the_totals() {
        let r = Recorder::new(2);
        let t0 = r.epoch();
        r.measure_between(t0 + Duration::from_secs(1), t0 + Duration::from_secs(3));
        r.ack(0, 0, t0, t0 + Duration::from_millis(3));
        r.ack(
            1,
            0,
            t0 + Duration::from_secs(2),
            t0 + Duration::from_millis(2004),
        );
        r.deliveries(
            0,
            &[(Some(t0 + Duration::from_secs(2)), true), (None, false)],
            t0 + Duration::from_secs(3),
        );
        let series = r.take_series();
        assert_eq!(series.acks, 2);
        assert_eq!(series.deliveries, 2);
        r.ack(
            1,
            0,
            t0 + Duration::from_secs(3),
            t0 + Duration::from_secs(4),
        );
        let totals = r.totals();
        assert_eq!(totals.acks, 1, "one before the start, one at the end");
        assert_eq!(totals.deliveries, 1);
        assert_eq!(totals.unmatched, 1);
        assert_eq!(totals.delivery_other_instance.len(), 1);
        let p = Percentiles::of(&totals.ack);
        assert!((p.p50_ms - 4.0).abs() < 0.01, "{p:?}");
        assert_eq!(r.take_series().acks, 1, "taken, then one more");
    }

    #[test]
    fn percentiles_of_durations_are_those_of_the_histogram() {
        let ms = |n: u64| Duration::from_millis(n);
        let p = Percentiles::of_durations((1..=100).map(ms));
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.1, "{p:?}");
        assert_eq!(Percentiles::of_durations([]), Percentiles::default());
    }
}
