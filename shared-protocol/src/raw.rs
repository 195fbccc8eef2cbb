//! [`Json`]: a JSON value kept as the exact text the sender wrote.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::json::{self, Invalid};

/// A JSON value kept as the exact text the sender wrote.
///
/// Payloads (`data`, presence `info`, snapshot `state`) are never inspected by the server, so
/// they are carried as raw JSON: no parse into a tree and back on the publish path, and
/// numbers keep their exact spelling. Invariant: the text is one well-formed JSON value
/// (RFC 8259), checked once where it enters: by serde_json when a frame is deserialized (the
/// server), or by [`Json::parse`] (the browser SDK, which does not link serde_json).
#[derive(Clone)]
pub struct Json(Repr);

#[derive(Clone)]
enum Repr {
    /// Read by serde_json: serialized back as it is, with no second check.
    Raw(Box<RawValue>),
    /// Checked by [`crate::json`]: serializing it checks it again with serde_json (only the
    /// SDK's Rust API serializes these, for its own frames).
    Text(Box<str>),
}

/// The text given to [`Json::parse`] is not one JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON value")]
pub struct InvalidJson;

impl From<Invalid> for InvalidJson {
    fn from(_: Invalid) -> Self {
        InvalidJson
    }
}

impl Json {
    /// JSON `null`.
    pub fn null() -> Json {
        Json(Repr::Text("null".into()))
    }

    /// Check `text` as one JSON value and keep it, without the whitespace around it (as
    /// serde_json's `RawValue::from_string` keeps it).
    ///
    /// # Errors
    /// [`InvalidJson`] when `text` is not exactly one well-formed JSON value.
    pub fn parse(text: impl Into<String>) -> Result<Json, InvalidJson> {
        let text = text.into();
        let value = json::read_all(&text, |r| r.value())?;
        if value.len() == text.len() {
            Ok(Json(Repr::Text(text.into_boxed_str())))
        } else {
            Ok(Json(Repr::Text(value.into())))
        }
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        match &self.0 {
            Repr::Raw(raw) => raw.get(),
            Repr::Text(text) => text,
        }
    }

    /// Serialize `value` to JSON (for values built in Rust, such as snapshots).
    ///
    /// # Errors
    /// serde_json's error when `value` cannot be serialized (a map with non-string keys).
    pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Json, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Json::from)
    }
}

impl Default for Json {
    fn default() -> Self {
        Json::null()
    }
}

impl From<Box<RawValue>> for Json {
    fn from(raw: Box<RawValue>) -> Self {
        Json(Repr::Raw(raw))
    }
}

impl PartialEq for Json {
    /// Equal when the texts are equal (`1.0` and `1` differ, as they do on the wire).
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Json {}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Json").field(&self.get()).finish()
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Raw(raw) => raw.serialize(serializer),
            Repr::Text(text) => RawValue::from_string(text.to_string())
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Json::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_and_deserialized_values_serialize_to_their_text() {
        for text in ["null", " {\"a\": [1, 2.50]} ", "\"é\"", "-0"] {
            let parsed = Json::parse(text).expect(text);
            assert_eq!(parsed.get(), text.trim());
            let read: Json = serde_json::from_str(text).expect(text);
            assert_eq!(read, parsed);
            let raw = RawValue::from_string(text.to_owned()).expect(text);
            assert_eq!(raw.get(), parsed.get());
            let wrapped = |j: &Json| serde_json::to_string(&[j]).expect("json");
            assert_eq!(wrapped(&parsed), format!("[{}]", text.trim()));
            assert_eq!(wrapped(&read), wrapped(&parsed));
        }
        for bad in ["", "{", "1 2", "[1,]", "nul"] {
            assert_eq!(Json::parse(bad), Err(InvalidJson), "{bad}");
        }
        assert_eq!(Json::default().get(), "null");
        assert_eq!(Json::to_json(&vec![1, 2]).expect("json").get(), "[1,2]");
    }
}
