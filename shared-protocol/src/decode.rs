//! Decoding a text frame into a typed message.
//!
//! serde's internally tagged enums buffer the whole object before choosing a variant, and that
//! buffering cannot carry raw JSON (`data` stays raw so the server never re-encodes payloads).
//! So decoding is two cheap passes instead: read only the `"type"` and `"ref"` fields (every
//! other value is skipped without allocating), then parse the text straight into that
//! variant's struct. The split also gives exact errors, and lets every error echo the
//! request's `ref` when the frame is an object that carries one:
//!
//! | input | error | code |
//! |---|---|---|
//! | not JSON, or JSON that is not an object | [`DecodeError::Malformed`] | `INVALID_MESSAGE` |
//! | an object whose `type` is missing or not a string (as the template answers) | [`DecodeError::UnknownType`] | `INVALID_MESSAGE_TYPE` |
//! | an object with a `type` nobody knows | [`DecodeError::UnknownType`] | `INVALID_MESSAGE_TYPE` |
//! | a known type with a missing, mistyped or out-of-range field | [`DecodeError::InvalidShape`] | `INVALID_MESSAGE` |

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::ErrorCode;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not a JSON object.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame's `type` is missing, not a string, or not one this side knows.
    #[error("unknown message type: {0}")]
    UnknownType(String),
    /// The `type` is known but a field is missing, of the wrong type or out of range.
    #[error("invalid {kind} message: {detail}")]
    InvalidShape {
        /// The message type.
        kind: String,
        /// serde's description of what was wrong.
        detail: String,
    },
}

impl DecodeError {
    /// The error code the server answers this failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownType(_) => ErrorCode::InvalidMessageType,
            DecodeError::Malformed(_) | DecodeError::InvalidShape { .. } => {
                ErrorCode::InvalidMessage
            }
        }
    }
}

/// The envelope of a frame: its `type` and `ref`, read without decoding anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The `type` field, if the frame has one that is a string.
    pub kind: Option<Cow<'a, str>>,
    /// The `ref` field, if the frame has one that is a string.
    pub r#ref: Option<Cow<'a, str>>,
}

/// A field that is kept if it is a string and skipped (without allocating) otherwise.
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MaybeStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Only the tag and the ref of a frame; every other field is skipped.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<MaybeStr<'a>>,
    #[serde(borrow, rename = "ref", default)]
    r#ref: Option<MaybeStr<'a>>,
}

/// Read the `type` and `ref` of a frame without decoding the rest.
///
/// # Errors
/// [`DecodeError::Malformed`] when the text is not a JSON object (or repeats a key).
pub fn envelope(text: &str) -> Result<Envelope<'_>, DecodeError> {
    // serde would also read a struct from a JSON array; a frame must be an object.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(DecodeError::Malformed("expected a JSON object".to_owned()));
    }
    match serde_json::from_str::<Tag<'_>>(text) {
        Ok(tag) => Ok(Envelope {
            kind: tag.kind.and_then(|k| k.0),
            r#ref: tag.r#ref.and_then(|r| r.0),
        }),
        Err(e) => Err(DecodeError::Malformed(if e.is_data() {
            "expected a JSON object".to_owned()
        } else {
            e.to_string()
        })),
    }
}

/// Read the `"type"` of a frame without decoding the rest: a missing or non-string type is an
/// unknown type (the template answers `INVALID_MESSAGE_TYPE` for it).
pub(crate) fn peek_type(text: &str) -> Result<Cow<'_, str>, DecodeError> {
    envelope(text)?.kind.ok_or_else(|| {
        DecodeError::UnknownType("the frame has no string \"type\" field".to_owned())
    })
}

/// Parse the whole frame as the body of message type `kind`.
pub(crate) fn body<T: DeserializeOwned>(kind: &str, text: &str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::InvalidShape {
        kind: kind.to_owned(),
        detail: e.to_string(),
    })
}

/// Offsets and versions a client sends are range-checked here, once, wherever they are read
/// (WebSocket frames and the HTTP API alike): at most [`MAX_POSITION`](crate::MAX_POSITION).
///
/// Use as `#[serde(deserialize_with = "tidings_protocol::decode::position")]` on a `u64`, or
/// [`opt_position`] on an `Option<u64>`.
///
/// # Errors
/// A serde error naming the range when the value is above it.
pub fn position<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(d)?;
    if value > crate::MAX_POSITION {
        return Err(de::Error::custom(format_args!(
            "position {value} is out of range (0 to {})",
            crate::MAX_POSITION
        )));
    }
    Ok(value)
}

/// [`position`] for optional fields.
///
/// # Errors
/// As [`position`].
pub fn opt_position<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct P(#[serde(deserialize_with = "position")] u64);
    Ok(Option::<P>::deserialize(d)?.map(|p| p.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_reads_type_and_ref_of_any_object() {
        let e =
            envelope(r#"{"ref":"r1","data":[1,{"type":"no"}],"type":"publish"}"#).expect("object");
        assert_eq!(e.kind.as_deref(), Some("publish"));
        assert_eq!(e.r#ref.as_deref(), Some("r1"));
        let e = envelope(r#"{"type":5,"ref":{"x":1}}"#).expect("object");
        assert_eq!((e.kind, e.r#ref), (None, None));
        let e = envelope(r#"{"type":"a\"b","ref":"\u00e9"}"#).expect("escapes");
        assert_eq!(e.kind.as_deref(), Some("a\"b"));
        assert_eq!(e.r#ref.as_deref(), Some("é"));
        for bad in [
            "",
            "[]",
            r#"["publish","r"]"#,
            "1",
            "\"x\"",
            "{",
            r#"{"type":"a","type":"b"}"#,
            r#"{"type":"a"} x"#,
        ] {
            assert!(envelope(bad).is_err(), "{bad}");
        }
    }
}
