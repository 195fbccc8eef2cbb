//! Decoding a text frame into a typed message.
//!
//! serde's internally tagged enums buffer the whole object before choosing a variant, and that
//! buffering cannot carry raw JSON (`data` stays raw so the server never re-encodes payloads).
//! So decoding is two cheap passes instead: read only the `"type"` field (every other value is
//! skipped without allocating), then parse the text straight into that variant's struct.
//! The split also gives exact errors: not JSON / no type ([`DecodeError::Malformed`]), a type
//! nobody knows ([`DecodeError::UnknownType`]), a known type with a wrong field
//! ([`DecodeError::InvalidShape`]).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::ErrorCode;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not a JSON object with a string `type`.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame's `type` is not one this side knows.
    #[error("unknown message type: {0}")]
    UnknownType(String),
    /// The `type` is known but a field is missing or of the wrong type.
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

/// Only the tag of a frame; every other field is skipped.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// Read the `"type"` of a frame without decoding the rest.
pub(crate) fn peek_type(text: &str) -> Result<Cow<'_, str>, DecodeError> {
    match serde_json::from_str::<Tag<'_>>(text) {
        Ok(tag) => Ok(tag.kind),
        Err(e) => Err(DecodeError::Malformed(if e.is_data() {
            "expected a JSON object with a string \"type\" field".to_owned()
        } else {
            e.to_string()
        })),
    }
}

/// Parse the whole frame as the body of message type `kind`.
pub(crate) fn body<T: DeserializeOwned>(kind: &str, text: &str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::InvalidShape {
        kind: kind.to_owned(),
        detail: e.to_string(),
    })
}
