//! Reconnect delays: exponential growth, full jitter, a cap.
//!
//! When a server restarts, every client loses its socket at the same instant. If they all
//! retried on the same schedule they would arrive in waves; full jitter (a uniformly random
//! delay between zero and the exponential ceiling) spreads them out. The random number is an
//! input, so the schedule is deterministic under test.

/// The delay schedule for one run of failed connection attempts.
///
/// Exists so the reconnect policy is one small, separately tested thing rather than arithmetic
/// scattered through the connection state machine. [`Backoff::reset`] starts over after a
/// connection succeeded.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Ceiling of the first delay, in milliseconds.
    min_ms: u64,
    /// No delay is ever longer than this, in milliseconds.
    max_ms: u64,
    /// Failed attempts since the last success.
    attempt: u32,
}

impl Backoff {
    /// A schedule whose ceiling starts at `min_ms` and doubles up to `max_ms`.
    ///
    /// `max_ms` below `min_ms` is raised to `min_ms`; a zero `min_ms` is raised to 1 ms so the
    /// ceiling can still grow.
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        let min_ms = min_ms.max(1);
        Backoff {
            min_ms,
            max_ms: max_ms.max(min_ms),
            attempt: 0,
        }
    }

    /// The ceiling for the current attempt: `min * 2^attempt`, capped at `max`.
    pub fn ceiling_ms(&self) -> u64 {
        let factor = 1u64.checked_shl(self.attempt.min(40)).unwrap_or(u64::MAX);
        self.min_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// The delay before the next attempt, given a uniform random number in `[0, 1)`, and
    /// advances the schedule. Out-of-range or NaN randoms are clamped.
    pub fn next_delay(&mut self, random: f64) -> u64 {
        let ceiling = self.ceiling_ms();
        let r = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.attempt = self.attempt.saturating_add(1);
        // `as` saturates for floats; the product is within [0, ceiling].
        ((ceiling as f64) * r) as u64
    }

    /// Failed attempts since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Start over: the next delay's ceiling is `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_from_min_up_to_the_cap() {
        let mut b = Backoff::new(500, 20_000);
        let ceilings: Vec<u64> = (0..9)
            .map(|_| {
                let c = b.ceiling_ms();
                b.next_delay(0.0);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16_000, 20_000, 20_000, 20_000]
        );
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let mut b = Backoff::new(500, 20_000);
        assert_eq!(b.next_delay(0.0), 0);
        assert_eq!(b.next_delay(0.5), 500);
        assert_eq!(b.next_delay(0.999_999), 1999);
    }

    #[test]
    fn bad_random_numbers_are_clamped() {
        let mut b = Backoff::new(1000, 1000);
        assert_eq!(b.next_delay(7.0), 1000);
        assert_eq!(b.next_delay(-1.0), 0);
        assert_eq!(b.next_delay(f64::NAN), 500);
    }

    #[test]
    fn reset_starts_over_and_huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(500, u64::MAX);
        for _ in 0..200 {
            b.next_delay(1.0);
        }
        assert_eq!(b.attempt(), 200);
        assert!(b.ceiling_ms() >= 500);
        b.reset();
        assert_eq!(b.ceiling_ms(), 500);
    }

    #[test]
    fn degenerate_bounds_are_repaired() {
        let b = Backoff::new(0, 0);
        assert_eq!(b.ceiling_ms(), 1);
        let b = Backoff::new(5000, 10);
        assert_eq!(b.ceiling_ms(), 5000);
    }
}
