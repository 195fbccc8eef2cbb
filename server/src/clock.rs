//! Wall-clock timestamps as the protocol spells them (RFC 3339, UTC, milliseconds).

use std::time::SystemTime;

/// Now, e.g. `2026-11-28T21:46:12.123Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
