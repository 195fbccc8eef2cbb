//! Pure bookkeeping: which sequence numbers a subscriber saw, latency percentiles, and when a
//! paced publisher's messages are due.
//!
//! No I/O and no clocks here, so the accounting that the numbers in docs/performance.md
//! rest on is unit-tested on its own.

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one subscriber received from one publisher, by sequence number.
///
/// Publisher `p` numbers its messages `0, 1, 2, ...`; a subscriber keeps one tracker per
/// publisher. A bitset (one bit per possible sequence number) tells a first delivery from a
/// duplicate; the highest number seen so far tells an in-order delivery from a late one.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    /// How many messages the publisher may send; higher numbers are unexpected.
    capacity: u64,
    /// Bit `s` is set once sequence number `s` has been received; grown on demand, so a
    /// large `capacity` costs memory only for what actually arrives.
    seen: Vec<u64>,
    /// The highest sequence number received so far.
    max_seen: Option<u64>,
    /// Distinct sequence numbers received.
    unique: u64,
    /// Deliveries of a sequence number already received.
    duplicated: u64,
    /// First deliveries of a number lower than one already received.
    out_of_order: u64,
    /// Sequence numbers at or beyond the capacity the publisher could have sent.
    out_of_range: u64,
}

impl SeqTracker {
    /// A tracker for a publisher that sends at most `capacity` messages.
    pub fn new(capacity: u64) -> Self {
        SeqTracker {
            capacity,
            seen: Vec::new(),
            max_seen: None,
            unique: 0,
            duplicated: 0,
            out_of_order: 0,
            out_of_range: 0,
        }
    }

    /// Records one delivery of sequence number `seq`.
    pub fn record(&mut self, seq: u64) {
        if seq >= self.capacity {
            self.out_of_range += 1;
            return;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            // Grow geometrically: sequence numbers mostly arrive in increasing order.
            let want = (word + 1).max(self.seen.len() * 2).max(16);
            self.seen.resize(want, 0);
        }
        let slot = &mut self.seen[word];
        let mask = 1u64 << bit;
        if *slot & mask != 0 {
            self.duplicated += 1;
            return;
        }
        *slot |= mask;
        self.unique += 1;
        match self.max_seen {
            Some(max) if seq < max => self.out_of_order += 1,
            _ => self.max_seen = Some(seq),
        }
    }

    /// The counts for this subscriber/publisher pair, given that the publisher sent `sent`
    /// messages (numbered `0..sent`).
    pub fn counts(&self, sent: u64) -> DeliveryCounts {
        DeliveryCounts {
            expected: sent,
            delivered: self.unique,
            lost: sent.saturating_sub(self.unique),
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
            unexpected: self.out_of_range,
        }
    }
}

/// Delivery accounting, summed over subscriber/publisher pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    /// Deliveries that should have happened: messages sent times subscribers.
    pub expected: u64,
    /// Distinct messages received (duplicates not counted).
    pub delivered: u64,
    /// Expected deliveries that never arrived (before the drain timeout).
    pub lost: u64,
    /// Extra deliveries of a message a subscriber already had.
    pub duplicated: u64,
    /// Messages that arrived after a later message from the same publisher.
    pub out_of_order: u64,
    /// Messages with a sequence number the publisher never sent (corrupt or foreign).
    pub unexpected: u64,
}

impl std::ops::AddAssign for DeliveryCounts {
    fn add_assign(&mut self, other: Self) {
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
    }
}

/// Sums the counts of every subscriber's trackers, one tracker per publisher, where
/// `sent[p]` is how many messages publisher `p` sent.
pub fn total_counts<'a>(
    subscribers: impl IntoIterator<Item = &'a [SeqTracker]>,
    sent: &[u64],
) -> DeliveryCounts {
    let mut total = DeliveryCounts::default();
    for trackers in subscribers {
        for (tracker, &n) in trackers.iter().zip(sent) {
            total += tracker.counts(n);
        }
    }
    total
}

/// A new latency histogram in nanoseconds: 1 ns to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("constant bounds are valid: low >= 1, high >= 2 * low, 3 sigfigs")
}

/// Latency percentiles in microseconds, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl LatencySummary {
    /// Summarizes a histogram of nanosecond samples; all zero when it is empty.
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean().round() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// One line for the human-readable summary.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs  (mean {:.1} µs, n={})",
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us,
            self.count
        )
    }
}

/// When a paced publisher's messages are meant to go out: the intended timeline that
/// latency is measured from under `--rate` (the correction for coordinated omission).
///
/// With a target rate `R` over `P` publishers, the run has one evenly spaced timeline of slots
/// `0, 1, 2, ...`, slot `n` due `n / R` seconds after the start; publisher `k` owns every
/// `P`-th slot from `k`, so its message `s` is due at slot `s * P + k` (each publisher sends at
/// `R / P` msgs/s, and together they send at `R` without bunching). A publisher that falls
/// behind sends late, and its intended times stay where they were: the time it spent behind
/// counts as latency, as in wrk2 and HdrHistogram's corrected recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Slot 0's time, ns on the run clock.
    start_ns: u64,
    /// Slots per second over all publishers.
    rate: f64,
    /// Number of publishers sharing the timeline.
    publishers: u64,
    /// This publisher's index (its first slot).
    index: u64,
}

impl Schedule {
    /// Publisher `index` of `publishers` sharing `rate` msgs/s from `start_ns`; `None` when
    /// the rate is not a positive number (as fast as possible: no schedule).
    pub fn new(start_ns: u64, rate: f64, publishers: u64, index: u64) -> Option<Self> {
        (rate.is_finite() && rate > 0.0).then_some(Schedule {
            start_ns,
            rate,
            publishers: publishers.max(1),
            index,
        })
    }

    /// When message `seq` is meant to be sent, ns on the run clock.
    pub fn intended_ns(&self, seq: u64) -> u64 {
        let slot = seq
            .saturating_mul(self.publishers)
            .saturating_add(self.index);
        // `as` saturates: a slot beyond the run clock's range is "never".
        let offset = (slot as f64 * 1e9 / self.rate).round() as u64;
        self.start_ns.saturating_add(offset)
    }

    /// How many messages were due by `now_ns`: those whose intended time is at or before it.
    /// Minus the number sent, that is how far behind the publisher is.
    pub fn due_by(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        // An estimate from the rate, then exact against `intended_ns` (float rounding).
        let last_slot = ((now_ns - self.start_ns) as f64 * self.rate / 1e9).floor() as u64;
        let mut n = if last_slot < self.index {
            0
        } else {
            (last_slot - self.index) / self.publishers + 1
        };
        while n > 0 && self.intended_ns(n - 1) > now_ns {
            n -= 1;
        }
        while n < u64::MAX && self.intended_ns(n) <= now_ns {
            n += 1;
        }
        n
    }

    /// How far behind schedule message `seq` went out when it was sent at `sent_ns`
    /// (0 if on time or early).
    pub fn lag_ns(&self, seq: u64, sent_ns: u64) -> u64 {
        sent_ns.saturating_sub(self.intended_ns(seq))
    }
}

/// `count / seconds`, or 0 when no time passed.
pub fn per_sec(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Microseconds of CPU per unit of work (message, round trip, connection), if both are known.
pub fn cpu_us_per(cpu_ms: Option<f64>, units: u64) -> Option<f64> {
    match cpu_ms {
        Some(ms) if units > 0 => Some(ms * 1000.0 / units as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_delivery_has_no_anomalies() {
        let mut t = SeqTracker::new(10);
        for s in 0..10 {
            t.record(s);
        }
        assert_eq!(
            t.counts(10),
            DeliveryCounts {
                expected: 10,
                delivered: 10,
                ..Default::default()
            }
        );
    }

    #[test]
    fn gaps_are_lost_and_late_arrivals_out_of_order() {
        let mut t = SeqTracker::new(10);
        for s in [0, 1, 3, 2, 5, 9] {
            t.record(s);
        }
        let c = t.counts(10);
        assert_eq!(c.delivered, 6);
        assert_eq!(c.lost, 4); // 4, 6, 7, 8
        assert_eq!(c.out_of_order, 1); // 2 after 3
        assert_eq!(c.duplicated, 0);
    }

    #[test]
    fn duplicates_count_once_and_are_not_out_of_order() {
        let mut t = SeqTracker::new(130);
        for s in [0, 1, 1, 129, 0, 129] {
            t.record(s);
        }
        let c = t.counts(130);
        assert_eq!(c.delivered, 3);
        assert_eq!(c.duplicated, 3);
        assert_eq!(c.out_of_order, 0);
        assert_eq!(c.lost, 127);
    }

    #[test]
    fn numbers_beyond_capacity_are_unexpected() {
        let mut t = SeqTracker::new(3);
        t.record(64 * 5);
        t.record(2);
        let c = t.counts(3);
        assert_eq!(c.unexpected, 1);
        assert_eq!(c.delivered, 1);
        assert_eq!(c.lost, 2);
    }

    #[test]
    fn totals_sum_over_subscribers_and_publishers() {
        // Two publishers sent 4 and 2; two subscribers.
        let sent = [4, 2];
        let mut a = vec![SeqTracker::new(4), SeqTracker::new(4)];
        let mut b = vec![SeqTracker::new(4), SeqTracker::new(4)];
        for s in 0..4 {
            a[0].record(s);
        }
        a[1].record(1);
        a[1].record(0); // out of order
        b[0].record(0);
        b[0].record(0); // duplicate
        b[1].record(0);
        let total = total_counts([a.as_slice(), b.as_slice()], &sent);
        assert_eq!(total.expected, 12);
        assert_eq!(total.delivered, 4 + 2 + 1 + 1);
        assert_eq!(total.lost, 4);
        assert_eq!(total.duplicated, 1);
        assert_eq!(total.out_of_order, 1);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        // 1..=1000 µs, one sample each.
        for us in 1..=1000u64 {
            h.record(us * 1000).expect("in range");
        }
        let s = LatencySummary::from_ns(&h);
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1 %.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(s.p50_us, 500.0), "p50 {}", s.p50_us);
        assert!(close(s.p90_us, 900.0), "p90 {}", s.p90_us);
        assert!(close(s.p99_us, 990.0), "p99 {}", s.p99_us);
        assert!(close(s.p999_us, 999.0), "p99.9 {}", s.p999_us);
        assert!(close(s.max_us, 1000.0), "max {}", s.max_us);
        assert!(close(s.mean_us, 500.5), "mean {}", s.mean_us);
    }

    #[test]
    fn empty_histogram_summarizes_to_zero() {
        assert_eq!(
            LatencySummary::from_ns(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn one_publisher_is_due_every_interval_from_the_start() {
        // 1,000 msgs/s: one message per ms, the first at the start.
        let s = Schedule::new(5_000, 1000.0, 1, 0).expect("paced");
        assert_eq!(s.intended_ns(0), 5_000);
        assert_eq!(s.intended_ns(1), 1_005_000);
        assert_eq!(s.intended_ns(10_000), 10_000_005_000);
        // A rate that does not divide a second evenly still lands on the exact times.
        let third = Schedule::new(0, 3.0, 1, 0).expect("paced");
        assert_eq!(third.intended_ns(1), 333_333_333);
        assert_eq!(third.intended_ns(2), 666_666_667);
        assert_eq!(third.intended_ns(3), 1_000_000_000);
    }

    #[test]
    fn publishers_interleave_on_one_timeline() {
        // 1,000 msgs/s over 4 publishers: each sends every 4 ms, offset by 1 ms from the next.
        let at = |k, seq| {
            Schedule::new(0, 1000.0, 4, k)
                .expect("paced")
                .intended_ns(seq)
        };
        assert_eq!(
            [at(0, 0), at(1, 0), at(2, 0), at(3, 0)],
            [0, 1_000_000, 2_000_000, 3_000_000]
        );
        assert_eq!(at(0, 1), 4_000_000);
        assert_eq!(at(3, 2), 11_000_000);
        // Together: every slot exactly once.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|k| (0..25).map(move |s| at(k, s)))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).map(|n| n * 1_000_000).collect::<Vec<_>>());
    }

    #[test]
    fn no_schedule_without_a_positive_rate() {
        assert_eq!(Schedule::new(0, 0.0, 1, 0), None);
        assert_eq!(Schedule::new(0, -5.0, 1, 0), None);
        assert_eq!(Schedule::new(0, f64::NAN, 1, 0), None);
        assert_eq!(Schedule::new(0, f64::INFINITY, 1, 0), None);
    }

    #[test]
    fn due_counts_messages_whose_time_has_come() {
        let s = Schedule::new(1_000, 1000.0, 1, 0).expect("paced");
        assert_eq!(s.due_by(0), 0); // before the start
        assert_eq!(s.due_by(1_000), 1); // message 0 is due at the start itself
        assert_eq!(s.due_by(1_000_999), 1);
        assert_eq!(s.due_by(1_001_000), 2);
        assert_eq!(s.due_by(10_000_001_000), 10_001);
        // The second of two publishers is due from 1 ms in, then every 2 ms.
        let second = Schedule::new(0, 1000.0, 2, 1).expect("paced");
        assert_eq!(second.due_by(999_999), 0);
        assert_eq!(second.due_by(1_000_000), 1);
        assert_eq!(second.due_by(2_999_999), 1);
        assert_eq!(second.due_by(3_000_000), 2);
        // Exactly consistent with `intended_ns`, also where float rounding is involved.
        for sched in [
            Schedule::new(7, 3.0, 1, 0),
            Schedule::new(0, 7.0, 3, 2),
            Schedule::new(123, 999.9, 5, 4),
        ] {
            let sched = sched.expect("paced");
            for seq in 0..200 {
                let t = sched.intended_ns(seq);
                assert_eq!(sched.due_by(t), seq + 1, "{sched:?} seq {seq}");
                assert_eq!(sched.due_by(t - 1), seq, "{sched:?} seq {seq}");
            }
        }
    }

    #[test]
    fn lag_is_how_late_a_message_went_out() {
        let s = Schedule::new(0, 1000.0, 1, 0).expect("paced");
        // Message 5 was due at 5 ms; sent at 5.2 ms it ran 0.2 ms behind.
        assert_eq!(s.lag_ns(5, 5_200_000), 200_000);
        // On time or early (a timer firing before the slot) is no lag.
        assert_eq!(s.lag_ns(5, 5_000_000), 0);
        assert_eq!(s.lag_ns(5, 4_000_000), 0);
        // A publisher stuck for 50 ms: the 50 messages due meanwhile go out back to back,
        // the first 50 ms late and each next one 1 ms less, and at the moment it is stuck it is
        // 50 messages behind.
        let stuck_until = 60_000_000;
        assert_eq!(s.due_by(stuck_until - 1) - 10, 50);
        let lags: Vec<u64> = (10..60).map(|seq| s.lag_ns(seq, stuck_until)).collect();
        assert_eq!(lags.first(), Some(&50_000_000));
        assert_eq!(lags.last(), Some(&1_000_000));
        // Latency from the intended time is service time plus this lag.
        let (sent, delivered) = (stuck_until, stuck_until + 300_000);
        assert_eq!(
            delivered - s.intended_ns(10),
            (delivered - sent) + s.lag_ns(10, sent)
        );
    }

    #[test]
    fn rates_and_cpu_per_unit() {
        assert_eq!(per_sec(500, 2.0), 250.0);
        assert_eq!(per_sec(500, 0.0), 0.0);
        assert_eq!(cpu_us_per(Some(2.0), 4000), Some(0.5));
        assert_eq!(cpu_us_per(Some(2.0), 0), None);
        assert_eq!(cpu_us_per(None, 10), None);
    }
}
