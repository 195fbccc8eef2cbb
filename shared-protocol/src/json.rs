//! A small JSON reader and writer (RFC 8259), for code that must not link serde_json.
//!
//! Why: in the browser every byte of the SDK is paid on every first page load, and
//! serde_json's reader (one monomorphised visitor per message type, errors built with
//! `core::fmt`, float formatting) was the largest part of its wasm. The SDK only reads the
//! fixed shapes of the server's messages and writes the fixed shapes of its own, so one
//! non-generic reader and a few writer functions do it (the SDK's `core::wire` builds this
//! crate's types with them, cross-checked against serde on every golden fixture), and
//! [`Json::parse`](crate::Json::parse) checks raw payloads with it. The server keeps serde.
//!
//! The reader is strict where JSON is (RFC 8259 §§2–7: no trailing commas, no leading zeros,
//! no control characters in strings, escapes as listed, surrogate pairs joined). It accepts
//! exactly the values serde_json's raw values accept (a property test holds it to that), any
//! nesting included: [`Reader::value`] skips with an explicit stack, not recursion, so a
//! hostile frame cannot exhaust the call stack, and a payload the server stored is never one
//! the browser cannot read.

use std::borrow::Cow;

use crate::{ErrorCode, Json, TopicMap};

/// The text is not JSON, or not the shape the caller asked for. Deliberately without detail:
/// the SDK skips frames it cannot read (a newer server's), so no message is ever shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// What every reading step returns.
pub type Read<T> = Result<T, Invalid>;

/// A cursor over JSON text.
pub struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Reader { text, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte that is not whitespace, without consuming it.
    pub fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes().get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                return Some(b);
            }
        }
        None
    }

    fn eat(&mut self, want: u8) -> Read<()> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn literal(&mut self, word: &str) -> Read<()> {
        if self
            .bytes()
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(word.as_bytes()))
        {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// Only whitespace is left.
    ///
    /// # Errors
    /// [`Invalid`] when anything else follows.
    pub fn end(&mut self) -> Read<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Invalid),
        }
    }

    /// Whether the next value is `null`; if it is, it is consumed.
    pub fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.literal("null").is_ok()
    }

    /// An object, calling `field` with each key; `field` must read the key's value.
    ///
    /// # Errors
    /// [`Invalid`] for anything but an object, or whatever `field` returns.
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, Cow<'a, str>) -> Read<()>,
    ) -> Read<()> {
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// An array, calling `item` to read each element.
    ///
    /// # Errors
    /// [`Invalid`] for anything but an array, or whatever `item` returns.
    pub fn array(&mut self, mut item: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// A boolean.
    ///
    /// # Errors
    /// [`Invalid`] for anything else.
    pub fn bool(&mut self) -> Read<bool> {
        match self.peek() {
            Some(b't') => self.literal("true").map(|()| true),
            Some(b'f') => self.literal("false").map(|()| false),
            _ => Err(Invalid),
        }
    }

    /// A string, unescaped (borrowed when it has no escapes).
    ///
    /// # Errors
    /// [`Invalid`] for anything but a well-formed string; a `\u` escape that is a lone
    /// surrogate is refused, as serde_json refuses it (a Rust string cannot hold it).
    pub fn string(&mut self) -> Read<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut run = start;
        loop {
            let b = *self.bytes().get(self.pos).ok_or(Invalid)?;
            match b {
                b'"' => {
                    let tail = sub(self.text, run, self.pos);
                    self.pos += 1;
                    return Ok(match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut s) => {
                            s.push_str(tail);
                            Cow::Owned(s)
                        }
                    });
                }
                b'\\' => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(sub(self.text, run, self.pos));
                    self.pos += 1;
                    let c = self.escape()?;
                    s.push(c);
                    run = self.pos;
                }
                0..=0x1f => return Err(Invalid),
                _ => self.pos += 1,
            }
        }
    }

    /// The escape after a backslash, as the character it stands for.
    fn escape(&mut self) -> Read<char> {
        let b = *self.bytes().get(self.pos).ok_or(Invalid)?;
        self.pos += 1;
        Ok(match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if !self
                        .bytes()
                        .get(self.pos..)
                        .is_some_and(|rest| rest.starts_with(b"\\u"))
                    {
                        return Err(Invalid);
                    }
                    self.pos += 2;
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(Invalid);
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                char::from_u32(code).ok_or(Invalid)?
            }
            _ => return Err(Invalid),
        })
    }

    fn hex4(&mut self) -> Read<u32> {
        let digits = self.bytes().get(self.pos..self.pos + 4).ok_or(Invalid)?;
        let mut n = 0;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(Invalid),
            };
            n = n * 16 + u32::from(v);
        }
        self.pos += 4;
        Ok(n)
    }

    /// A number's text, checked against the grammar of RFC 8259 §6.
    fn number_text(&mut self) -> Read<&'a str> {
        self.peek();
        let start = self.pos;
        let b = self.bytes();
        let digits = |pos: &mut usize| {
            let from = *pos;
            while b.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos > from
        };
        let mut pos = self.pos;
        if b.get(pos) == Some(&b'-') {
            pos += 1;
        }
        if b.get(pos) == Some(&b'0') {
            pos += 1;
        } else if !digits(&mut pos) {
            return Err(Invalid);
        }
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            if !digits(&mut pos) {
                return Err(Invalid);
            }
        }
        if matches!(b.get(pos), Some(b'e' | b'E')) {
            pos += 1;
            if matches!(b.get(pos), Some(b'+' | b'-')) {
                pos += 1;
            }
            if !digits(&mut pos) {
                return Err(Invalid);
            }
        }
        self.pos = pos;
        Ok(sub(self.text, start, pos))
    }

    /// A non-negative integer that fits in a `u64`, written without fraction or exponent
    /// (as serde_json reads a `u64`: `1.0`, `1e3` and `-1` are refused).
    ///
    /// # Errors
    /// [`Invalid`] for anything else.
    pub fn u64(&mut self) -> Read<u64> {
        let text = self.number_text()?;
        let mut n: u64 = 0;
        for d in text.bytes() {
            if !d.is_ascii_digit() {
                return Err(Invalid);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(Invalid)?;
        }
        Ok(n)
    }

    /// Any number, rounded down to a whole `u64` and saturated: negative numbers read as 0
    /// and numbers past `u64::MAX` as `u64::MAX` (for a JWT's NumericDate, RFC 7519 §2, which
    /// may carry a fraction or an exponent).
    ///
    /// # Errors
    /// [`Invalid`] when the next value is not a number.
    pub fn whole_number(&mut self) -> Read<u64> {
        let text = self.number_text()?;
        if text.starts_with('-') {
            return Ok(0);
        }
        let (mantissa, exp) = match text.find(['e', 'E']) {
            Some(i) => (sub(text, 0, i), sub(text, i + 1, text.len())),
            None => (text, "0"),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let negative_exp = exp.starts_with('-');
        let mut shift: u64 = 0;
        for d in exp.trim_start_matches(['+', '-']).bytes() {
            shift = shift.saturating_mul(10).saturating_add(u64::from(d - b'0'));
        }
        // The value is digits(int ++ frac) × 10^(±shift − frac.len()); keep the digits left
        // of the decimal point.
        let point = i128::from(int.len() as u32)
            + if negative_exp {
                -i128::from(shift.min(u64::from(u32::MAX)))
            } else {
                i128::from(shift.min(u64::from(u32::MAX)))
            };
        let mut n: u64 = 0;
        for (i, d) in int.bytes().chain(frac.bytes()).enumerate() {
            if (i as i128) >= point {
                return Ok(n);
            }
            n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
        }
        let zeros = point - (int.len() + frac.len()) as i128;
        if n == 0 || zeros <= 0 {
            return Ok(n);
        }
        for _ in 0..zeros.min(20) {
            n = n.saturating_mul(10);
        }
        Ok(n)
    }

    /// Any value, checked and skipped; its exact text is returned (for payloads kept raw).
    ///
    /// Iterative: the containers still open are a byte each on a heap stack, so any nesting
    /// the text holds is skipped without recursion (serde_json's raw values have no depth
    /// limit either). Object keys are checked, not unescaped, so a lone surrogate escape in a
    /// key is accepted as it is in a string value.
    ///
    /// # Errors
    /// [`Invalid`] when the value is not well-formed JSON.
    pub fn value(&mut self) -> Read<&'a str> {
        if self.peek().is_none() {
            return Err(Invalid);
        }
        let start = self.pos;
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value starts here.
            match self.peek().ok_or(Invalid)? {
                b'[' => {
                    self.pos += 1;
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                b'{' => {
                    self.pos += 1;
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(b'}');
                        self.skip_string()?;
                        self.eat(b':')?;
                        continue;
                    }
                }
                b'"' => self.skip_string()?,
                b't' | b'f' => self.bool().map(drop)?,
                b'n' => self.literal("null")?,
                _ => self.number_text().map(drop)?,
            }
            // A value ended: close what it ends, or go on to the next member or element.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(sub(self.text, start, self.pos));
                };
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if close == b'}' {
                            self.skip_string()?;
                            self.eat(b':')?;
                        }
                        break;
                    }
                    Some(b) if b == close => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ => return Err(Invalid),
                }
            }
        }
    }

    /// A string checked without building it (escapes are checked for form only, as in
    /// JSON.parse: a payload may hold a lone surrogate escape).
    fn skip_string(&mut self) -> Read<()> {
        self.eat(b'"')?;
        loop {
            let b = *self.bytes().get(self.pos).ok_or(Invalid)?;
            self.pos += 1;
            match b {
                b'"' => return Ok(()),
                b'\\' => {
                    let e = *self.bytes().get(self.pos).ok_or(Invalid)?;
                    if e == b'u' {
                        self.pos += 1;
                        self.hex4()?;
                    } else if b"\"\\/bfnrt".contains(&e) {
                        self.pos += 1;
                    } else {
                        return Err(Invalid);
                    }
                }
                0..=0x1f => return Err(Invalid),
                _ => {}
            }
        }
    }
}

/// Read a whole text with `read`, refusing anything after the value.
///
/// # Errors
/// [`Invalid`] when `read` fails or text follows the value.
pub fn read_all<'a, T>(text: &'a str, read: impl FnOnce(&mut Reader<'a>) -> Read<T>) -> Read<T> {
    let mut r = Reader::new(text);
    let value = read(&mut r)?;
    r.end()?;
    Ok(value)
}

/// The members of one JSON object: each key with the text of its value, checked but not yet
/// read. Reading a message is then one lookup per field, in one non-generic pass (in the
/// browser SDK, a reader per message type, each with its own error paths, was a tenth of
/// the wasm).
///
/// Keys nobody looks up are skipped (a newer peer's); a key that is looked up and given twice
/// makes the object unreadable, as in serde's derive. A `null` reads as an absent optional
/// field, as serde reads an `Option`.
pub struct Fields<'a>(Vec<(Cow<'a, str>, &'a str)>);

impl<'a> Fields<'a> {
    /// Index the object `text`.
    ///
    /// # Errors
    /// [`Invalid`] when `text` is not one JSON object.
    pub fn of(text: &'a str) -> Read<Self> {
        let mut fields = Vec::new();
        read_all(text, |r| {
            r.object(|r, key| {
                fields.push((key, r.value()?));
                Ok(())
            })
        })?;
        Ok(Fields(fields))
    }

    /// The members in the order written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// The value text of `key`, if present.
    ///
    /// # Errors
    /// [`Invalid`] when `key` is given twice.
    pub fn get(&self, key: &str) -> Read<Option<&'a str>> {
        let mut found = None;
        for (k, v) in &self.0 {
            if k == key && found.replace(*v).is_some() {
                return Err(Invalid);
            }
        }
        Ok(found)
    }

    /// The value text of `key`, unless it is absent or `null`.
    ///
    /// # Errors
    /// As [`Fields::get`].
    pub fn opt(&self, key: &str) -> Read<Option<&'a str>> {
        Ok(self.get(key)?.filter(|v| *v != "null"))
    }

    /// The value text of `key`, which must be present.
    ///
    /// # Errors
    /// [`Invalid`] when `key` is absent or given twice.
    pub fn req(&self, key: &str) -> Read<&'a str> {
        self.get(key)?.ok_or(Invalid)
    }

    /// A required string.
    ///
    /// # Errors
    /// [`Invalid`] when absent, repeated or not a string.
    pub fn string(&self, key: &str) -> Read<String> {
        string(self.req(key)?)
    }

    /// An optional string.
    ///
    /// # Errors
    /// [`Invalid`] when repeated, or neither a string nor `null`.
    pub fn opt_string(&self, key: &str) -> Read<Option<String>> {
        self.opt(key)?.map(string).transpose()
    }

    /// A required `u64` ([`Reader::u64`]).
    ///
    /// # Errors
    /// [`Invalid`] when absent, repeated or not such a number.
    pub fn u64(&self, key: &str) -> Read<u64> {
        read_all(self.req(key)?, Reader::u64)
    }

    /// An optional `u64`.
    ///
    /// # Errors
    /// [`Invalid`] when repeated, or neither such a number nor `null`.
    pub fn opt_u64(&self, key: &str) -> Read<Option<u64>> {
        self.opt(key)?.map(|v| read_all(v, Reader::u64)).transpose()
    }

    /// A boolean that is `false` when absent.
    ///
    /// # Errors
    /// [`Invalid`] when repeated or not a boolean.
    pub fn flag(&self, key: &str) -> Read<bool> {
        self.get(key)?
            .map_or(Ok(false), |v| read_all(v, Reader::bool))
    }

    /// Required raw JSON.
    ///
    /// # Errors
    /// [`Invalid`] when absent or repeated.
    pub fn raw(&self, key: &str) -> Read<Json> {
        raw(self.req(key)?)
    }

    /// Raw JSON that is `null` when absent.
    ///
    /// # Errors
    /// [`Invalid`] when repeated.
    pub fn opt_raw(&self, key: &str) -> Read<Json> {
        self.get(key)?.map_or(Ok(Json::null()), raw)
    }

    /// An error code; codes this crate does not know read as [`ErrorCode::Unknown`].
    ///
    /// # Errors
    /// [`Invalid`] when absent, repeated or not a string.
    pub fn code(&self, key: &str) -> Read<ErrorCode> {
        let name = string(self.req(key)?)?;
        Ok(ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .unwrap_or(ErrorCode::Unknown))
    }

    /// A required array, each element read by `item` from its text.
    ///
    /// # Errors
    /// [`Invalid`] when absent, repeated or not an array, or what `item` returns.
    pub fn list<T>(&self, key: &str, mut item: impl FnMut(&'a str) -> Read<T>) -> Read<Vec<T>> {
        let mut out = Vec::new();
        read_all(self.req(key)?, |r| {
            r.array(|r| {
                out.push(item(r.value()?)?);
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// An optional object read as a map, each value read by `value` from its text (a repeated
    /// key: the last one wins, as serde fills a map).
    ///
    /// # Errors
    /// [`Invalid`] when repeated or neither an object nor `null`, or what `value` returns.
    pub fn opt_map<T>(
        &self,
        key: &str,
        value: impl FnMut(&'a str) -> Read<T>,
    ) -> Read<Option<TopicMap<T>>> {
        self.opt(key)?.map(|v| map(v, value)).transpose()
    }
}

/// A JSON string's value, from its text.
///
/// # Errors
/// [`Invalid`] when `text` is not one JSON string.
pub fn string(text: &str) -> Read<String> {
    read_all(text, Reader::string).map(Cow::into_owned)
}

/// Checked JSON text as a [`Json`] value.
///
/// # Errors
/// [`Invalid`] when `text` is not one JSON value.
pub fn raw(text: &str) -> Read<Json> {
    Json::parse(text).map_err(|_| Invalid)
}

/// An object as a map of its values, each read by `value` from its text (a repeated key: the
/// last one wins, as serde fills a map).
///
/// # Errors
/// [`Invalid`] when `text` is not an object, or what `value` returns.
pub fn map<'a, T>(text: &'a str, mut value: impl FnMut(&'a str) -> Read<T>) -> Read<TopicMap<T>> {
    let mut out = TopicMap::new();
    for (key, v) in Fields::of(text)?.0 {
        out.insert(key.into_owned(), value(v)?);
    }
    Ok(out)
}

/// Store a field's value, refusing a second occurrence of the key (as serde's derive does).
///
/// # Errors
/// [`Invalid`] when `slot` is already filled.
pub fn once<T>(slot: &mut Option<T>, value: T) -> Read<()> {
    if slot.replace(value).is_some() {
        Err(Invalid)
    } else {
        Ok(())
    }
}

/// Append `s` as a JSON string, escaped as serde_json escapes it (`"`, `\` and control
/// characters; the short forms where JSON has them, `\u00XX` for the rest).
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(sub(s, run, i));
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
        run = i + 1;
    }
    out.push_str(sub(s, run, s.len()));
    out.push('"');
}

/// `text[start..end]`, or "" if that is not a range of whole characters (never the case
/// here: every position this module slices at is next to an ASCII byte). Not indexing keeps
/// the browser build free of str's slicing panic, whose message formats the text with
/// `Debug` and so links `core::fmt` and the Unicode tables into the wasm.
fn sub(text: &str, start: usize, end: usize) -> &str {
    text.get(start..end).unwrap_or_default()
}

/// Append `n` in decimal (without `core::fmt`).
pub fn write_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Appends the members of one JSON object: `{"key":value,...}`, commas placed for the caller.
pub struct ObjectWriter<'o> {
    out: &'o mut String,
    first: bool,
}

impl<'o> ObjectWriter<'o> {
    /// Open an object on `out`.
    pub fn new(out: &'o mut String) -> Self {
        out.push('{');
        ObjectWriter { out, first: true }
    }

    /// Start the member `key`; the caller writes its value to the returned string.
    pub fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(':');
        self.out
    }

    /// A string member.
    pub fn str(&mut self, key: &str, value: &str) {
        let out = self.key(key);
        write_str(out, value);
    }

    /// A string member, left out when `None`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    /// A number member.
    pub fn u64(&mut self, key: &str, value: u64) {
        let out = self.key(key);
        write_u64(out, value);
    }

    /// A number member, left out when `None`.
    pub fn opt_u64(&mut self, key: &str, value: Option<u64>) {
        if let Some(v) = value {
            self.u64(key, v);
        }
    }

    /// A member whose value is JSON text already.
    pub fn raw(&mut self, key: &str, json: &str) {
        self.key(key).push_str(json);
    }

    /// Close the object.
    pub fn end(self) {
        self.out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(text: &str) -> Read<&str> {
        read_all(text, |r| r.value())
    }

    #[test]
    fn values_are_checked_and_their_text_kept() {
        for ok in [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "12.5e-3",
            "1E+2",
            r#""a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00""#,
            r#""\ud800""#,
            "[]",
            "[1,[2,{}]]",
            r#"{"a":{"b":[null,"x"]},"c":1}"#,
            " { } ",
        ] {
            assert_eq!(skip(ok), Ok(ok.trim()), "{ok}");
            assert!(
                serde_json::from_str::<serde_json::Value>(ok).is_ok() || ok == r#""\ud800""#,
                "{ok}"
            );
        }
        for bad in [
            "",
            "nul",
            "tru",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":1,}"#,
            r#"{a:1}"#,
            "\"\u{1}\"",
            r#""\x""#,
            r#""\u12""#,
            "\"abc",
            "[1 2]",
            "1 2",
            "{}}",
            "[",
        ] {
            assert_eq!(skip(bad), Err(Invalid), "{bad:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn any_nesting_is_skipped_without_recursion() {
        let deep = |n: usize| format!("{}0{}", "[{\"a\":".repeat(n), "}]".repeat(n));
        let text = deep(200_000);
        assert!(skip(&text) == Ok(text.as_str()), "400,000 levels skipped");
        // serde_json's raw values take it too: a payload the server stored is always readable.
        let serde = |t: &str| serde_json::from_str::<Box<serde_json::value::RawValue>>(t).is_ok();
        assert!(serde(&text));
        assert!(skip(&"[".repeat(100_000)) == Err(Invalid), "never closed");
        assert!(
            skip(&format!("{}]", "[".repeat(1000))) == Err(Invalid),
            "closed once"
        );
    }

    #[test]
    fn strings_unescape_like_serde_json() {
        for text in [
            r#""plain""#,
            r#""a\"b\\c\/\b\f\n\r\t""#,
            r#""\u00e9\u4e2d\ud83d\ude00 é中😀""#,
        ] {
            let ours = read_all(text, |r| r.string()).expect(text);
            let theirs: String = serde_json::from_str(text).expect(text);
            assert_eq!(ours, theirs);
        }
        for bad in [r#""\ud800""#, r#""\udc00""#, r#""\ud800\u0041""#] {
            assert_eq!(read_all(bad, |r| r.string()), Err(Invalid), "{bad}");
            assert!(serde_json::from_str::<String>(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            read_all(r#""abc""#, |r| r.string()),
            Ok(Cow::Borrowed("abc"))
        ));
    }

    #[test]
    fn u64_reads_integers_only() {
        for (text, n) in [("0", 0), ("42", 42), ("18446744073709551615", u64::MAX)] {
            assert_eq!(read_all(text, |r| r.u64()), Ok(n));
        }
        for bad in ["-1", "1.0", "1e3", "18446744073709551616", "\"1\"", "null"] {
            assert_eq!(read_all(bad, |r| r.u64()), Err(Invalid), "{bad}");
            assert!(serde_json::from_str::<u64>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn whole_numbers_round_down_and_saturate() {
        for (text, n) in [
            ("1700000000", 1_700_000_000),
            ("1700000000.9", 1_700_000_000),
            ("1.7e9", 1_700_000_000),
            ("17E+8", 1_700_000_000),
            ("1700000000e-3", 1_700_000),
            ("0.5", 0),
            ("5e-400", 0),
            ("-3", 0),
            ("0e99999999999999999999", 0),
            ("1e30", u64::MAX),
            ("1e99999999999999999999", u64::MAX),
        ] {
            assert_eq!(read_all(text, |r| r.whole_number()), Ok(n), "{text}");
        }
        assert_eq!(read_all("\"1\"", |r| r.whole_number()), Err(Invalid));
    }

    #[test]
    fn fields_look_up_members_once_each() {
        let text = r#"{"s":"x","n":7,"z":null,"b":true,"c":"NOT_FOUND","odd":"NEW","l":[1,2],
                      "m":{"a":1,"a":2},"d":"1","d":"2","raw":{"k":[1]}}"#;
        let f = Fields::of(text).expect("object");
        assert_eq!(f.string("s"), Ok("x".to_owned()));
        assert_eq!(f.u64("n"), Ok(7));
        assert_eq!(f.opt_string("z"), Ok(None));
        assert_eq!(f.opt_u64("missing"), Ok(None));
        assert_eq!(f.string("missing"), Err(Invalid));
        assert_eq!(f.string("n"), Err(Invalid));
        assert_eq!(f.flag("b"), Ok(true));
        assert_eq!(f.flag("missing"), Ok(false));
        assert_eq!(f.code("c"), Ok(ErrorCode::NotFound));
        assert_eq!(f.code("odd"), Ok(ErrorCode::Unknown));
        assert_eq!(f.list("l", |v| read_all(v, Reader::u64)), Ok(vec![1, 2]));
        let m = f.opt_map("m", |v| read_all(v, Reader::u64)).expect("map");
        assert_eq!(
            m.and_then(|m| m.get("a").copied()),
            Some(2),
            "the last one wins"
        );
        assert_eq!(f.get("d"), Err(Invalid), "a repeated key that is looked up");
        assert_eq!(
            f.raw("raw").map(|j| j.get().to_owned()),
            Ok(r#"{"k":[1]}"#.to_owned())
        );
        assert_eq!(
            f.opt_raw("missing").map(|j| j.get().to_owned()),
            Ok("null".to_owned())
        );
        assert_eq!(f.iter().count(), 11);
        for bad in ["[]", "1", "{", r#"{"a":1} 2"#] {
            assert!(Fields::of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strings_and_numbers_are_written_as_serde_json_writes_them() {
        let all: String = (0u8..0x80).map(char::from).collect();
        for s in [
            "",
            "plain",
            "quote \" slash \\ nl \n",
            "é中😀",
            all.as_str(),
        ] {
            let mut out = String::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).expect("json"));
        }
        for n in [0, 7, 10, 1_000_000, u64::MAX] {
            let mut out = String::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}
