//! The Tidings wire protocol, shared by the server and the browser SDK.
//!
//! Every frame is one JSON object in a WebSocket text frame, tagged by its `"type"` field.
//! The core messages are exactly those of the original Python template, so a client written
//! for the template keeps working; everything newer is an optional field or a new type.
//!
//! * [`client`] — what a client sends ([`ClientMessage`]).
//! * [`server`] — what the server sends ([`ServerMessage`]).
//! * [`codes`] — stable error codes ([`ErrorCode`]) and WebSocket close codes ([`CloseCode`]).
//! * [`decode`] — the one decoder both sides use, with errors precise enough to answer
//!   `INVALID_MESSAGE` vs `INVALID_MESSAGE_TYPE`.
//! * [`aggregate`] — the [`Aggregate`] trait: state folded from a stream's events, pure, so the
//!   server's repository and the browser SDK run the same code.
//! * [`vecmap`] — [`VecMap`], the small sorted map the messages' per-topic maps are
//!   ([`TopicMap`]): `BTreeMap`'s order and JSON form, without its code size in the browser.
//! * [`order`] — the template's Order aggregate, the worked example, with its commands as data
//!   ([`order::OrderCommand`], decided by [`Decide::handle`]).
//!
//! This crate does no I/O and builds for `wasm32-unknown-unknown`.
//!
//! Architecture invariant: this is the only crate that knows the JSON shape of a frame.

pub mod aggregate;
pub mod client;
pub mod codes;
pub mod decode;
pub mod json;
pub mod order;
mod raw;
pub mod server;
pub mod vecmap;

pub use aggregate::{Aggregate, CommandError, Decide, EventError, Versioned};
pub use client::{ClientMessage, NewEvent, Position};
pub use codes::{CloseCode, ErrorCode};
pub use decode::{DecodeError, Envelope};
pub use raw::{InvalidJson, Json};
pub use serde_json::value::RawValue;
pub use server::ServerMessage;
pub use vecmap::{TopicMap, VecMap};

/// The protocol revision this crate speaks; sent in `connected.protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest offset or version a client may send: 2^53 − 1, the largest integer every JSON
/// implementation holds exactly (I-JSON, RFC 7493 §2.2; JavaScript's `Number.MAX_SAFE_INTEGER`).
/// Larger values are refused as `INVALID_MESSAGE` (HTTP 400) wherever a position is read.
pub const MAX_POSITION: u64 = (1 << 53) - 1;

/// The longest `ref` a request may carry, in bytes. Longer ones are refused as
/// `INVALID_MESSAGE`: a `ref` is echoed in every reply and kept while a request is in flight.
pub const MAX_REF_LEN: usize = 256;

/// The longest publish `id` (idempotency key), in bytes. It is stored and indexed with the
/// message, so it is kept short; longer ones are refused as `INVALID_MESSAGE`.
pub const MAX_ID_LEN: usize = 256;

/// The JSON `null`, used where a template client omitted `data`.
pub fn json_null() -> Json {
    Json::default()
}
