//! Tokens: putting one in the connect URL and knowing when to refresh it.
//!
//! The SDK never verifies a token (it has no key); it only reads the unverified `exp` claim to
//! schedule a refresh before the server would close the connection with 4001.

use tidings_protocol::json::{Fields, Reader, read_all};

/// Refresh this long before expiry at most (and a fifth of the lifetime for short tokens).
pub const MAX_REFRESH_MARGIN_MS: u64 = 60_000;

/// The token's `exp` claim (whole seconds since the Unix epoch, clamped to the year 5138 as
/// the server does), if it is a readable JWT.
pub fn jwt_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let text = String::from_utf8(bytes).ok()?;
    // `exp` is a NumericDate: any JSON number of seconds (RFC 7519 §2), fractions allowed.
    let exp = Fields::of(&text).ok()?.opt("exp").ok()??;
    let exp = read_all(exp, Reader::whole_number).ok()?;
    Some(exp.min(100_000_000_000))
}

/// Whether a token with expiry `exp_secs` is past it at wall-clock `unix_ms`: the server
/// would refuse it (beyond its leeway) or close the connection at once.
pub fn expired(exp_secs: u64, unix_ms: u64) -> bool {
    exp_secs.saturating_mul(1000) <= unix_ms
}

/// Milliseconds from now until a refresh is due, for a token expiring at `exp_secs` when the
/// wall clock reads `unix_ms`: a fifth of the remaining lifetime before expiry, at most a minute.
pub fn refresh_delay(exp_secs: u64, unix_ms: u64) -> u64 {
    let remaining = exp_secs.saturating_mul(1000).saturating_sub(unix_ms);
    let margin = (remaining / 5).min(MAX_REFRESH_MARGIN_MS);
    remaining - margin
}

/// The connect URL: `url` with `token` added as the `token` query parameter.
pub fn url_with_token(url: &str, token: Option<&str>) -> String {
    let Some(token) = token else {
        return url.to_owned();
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut out = String::with_capacity(url.len() + token.len() + 7);
    out.push_str(url);
    out.push(sep);
    out.push_str("token=");
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode unpadded (or padded) base64url; `None` on any invalid character.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp_from_a_jwt() {
        // {"alg":"HS256","typ":"JWT"} . {"sub":"alice","exp":1795900000} . sig
        let token =
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTc5NTkwMDAwMH0.c2ln";
        assert_eq!(jwt_expiry(token), Some(1_795_900_000));
    }

    #[test]
    fn unreadable_tokens_have_no_expiry() {
        assert_eq!(jwt_expiry("opaque"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
        assert_eq!(jwt_expiry("a.e30.c"), None, "{{}} has no exp");
        assert_eq!(jwt_expiry("a.bm90IGpzb24.c"), None, "not json");
    }

    #[test]
    fn base64url_handles_padding_and_both_alphabets() {
        assert_eq!(base64url_decode("aGk"), Some(b"hi".to_vec()));
        assert_eq!(base64url_decode("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64url_decode("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(base64url_decode("+/8"), Some(vec![0xfb, 0xff]));
    }

    #[test]
    fn refresh_happens_before_expiry() {
        // One hour left: refresh a minute early.
        assert_eq!(refresh_delay(3600, 0), 3_540_000);
        // Three seconds left: refresh at 2.4 s.
        assert_eq!(refresh_delay(1003, 1_000_000), 2_400);
        // Already expired: now.
        assert_eq!(refresh_delay(1, 5_000), 0);
    }

    #[test]
    fn token_goes_into_the_query_string_escaped() {
        assert_eq!(url_with_token("ws://h/ws", None), "ws://h/ws");
        assert_eq!(
            url_with_token("ws://h/ws", Some("a.b-c_d")),
            "ws://h/ws?token=a.b-c_d"
        );
        assert_eq!(
            url_with_token("ws://h/ws?x=1", Some("a b&")),
            "ws://h/ws?x=1&token=a%20b%26"
        );
    }
}
