//! Time, as the rest of the server receives it: wall-clock timestamps as the protocol spells
//! them (RFC 3339, UTC, milliseconds), and the [`Clock`] that the store and the sessions are
//! given instead of reading the system clock themselves, so that tests choose the time.

use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last instant RFC 3339 formatting can spell (9999-12-31T23:59:59.999Z).
const LATEST: Duration = Duration::from_millis(253_402_300_799_999);

/// Where "now" comes from. The server runs on [`SystemClock`]; tests use a clock they set.
pub trait Clock: Send + Sync + 'static {
    /// The wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to (tests: the dedup window and age retention without
/// sleeping).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct ManualClock {
    /// Milliseconds since the Unix epoch.
    millis: AtomicU64,
}

#[cfg(test)]
impl ManualClock {
    /// A clock showing `at`.
    pub fn at(at: SystemTime) -> Arc<ManualClock> {
        let clock = ManualClock::default();
        clock.set(at);
        Arc::new(clock)
    }

    /// Show `at` from now on.
    pub fn set(&self, at: SystemTime) {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        self.millis
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Move forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(ms, Ordering::AcqRel);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.millis.load(Ordering::Acquire))
    }
}

/// Now, e.g. `2026-11-28T21:46:12.123Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 with milliseconds, clamped to 1970..=9999 so that no clock value (a
/// system clock set before 1970, a window reaching back past it) can make formatting panic.
pub fn rfc3339(t: SystemTime) -> String {
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default().min(LATEST);
    humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch).to_string()
}

/// Milliseconds since the Unix epoch (0 before it, saturating far after it).
pub fn unix_millis(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// An RFC 3339 timestamp as milliseconds since the Unix epoch.
pub fn parse_millis(rfc3339: &str) -> Option<u64> {
    humantime::parse_rfc3339(rfc3339).ok().map(unix_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_clock_value_formats() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let before = UNIX_EPOCH - Duration::from_secs(10 * 365 * 86_400);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_manual_clock_moves_when_told() {
        let c = ManualClock::at(UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(unix_millis(c.now()), 100_000);
        c.advance(Duration::from_millis(1500));
        assert_eq!(rfc3339(c.now()), "1970-01-01T00:01:41.500Z");
        assert_eq!(parse_millis("1970-01-01T00:01:41.500Z"), Some(101_500));
    }
}
