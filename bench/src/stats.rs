//! Pure bookkeeping: which sequence numbers a subscriber saw, and latency percentiles.
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
    fn rates_and_cpu_per_unit() {
        assert_eq!(per_sec(500, 2.0), 250.0);
        assert_eq!(per_sec(500, 0.0), 0.0);
        assert_eq!(cpu_us_per(Some(2.0), 4000), Some(0.5));
        assert_eq!(cpu_us_per(Some(2.0), 0), None);
        assert_eq!(cpu_us_per(None, 10), None);
    }
}
