//! Wall-clock timestamps as the protocol spells them (RFC 3339, UTC, milliseconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last instant RFC 3339 formatting can spell (9999-12-31T23:59:59.999Z).
const LATEST: Duration = Duration::from_millis(253_402_300_799_999);

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
}
