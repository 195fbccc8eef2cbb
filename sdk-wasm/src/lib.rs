//! Tidings browser SDK: a WebSocket pub/sub client that does not lose messages.
//!
//! * [`core`] — the sans-IO client: connection state machine, backoff, liveness, subscriptions
//!   with dedup and gap recovery, the publish outbox, request/reply by `ref`. Plain Rust, tested
//!   on the host.
//! * [`engine`] — the core behind a boundary of JSON text and numbers, for the hand-written
//!   JavaScript API: inputs in, actions out as JSON arrays, event streams folded. Plain Rust,
//!   tested on the host.
//! * `js` (wasm32 with the `js` feature) — that engine exported with wasm-bindgen: one class
//!   of strings and numbers, nothing else.
//! * `native` (wasm32 only) — the Rust API for Rust web frontends (`native::Client`): the same
//!   core, with futures and streams instead of promises and callbacks, driven by its own
//!   browser shell, `wasm` (web-sys WebSocket, one timer, `online`/`offline` and
//!   `visibilitychange` listeners).
//!
//! The JS API itself is JavaScript (`sdk-wasm/js/client.js`, shipped in the npm package) over
//! the `js` export.
//!
//! Architecture invariant: all decisions are made in [`core`]; the shell only turns browser
//! events into [`core::Input`]s and [`core::Action`]s into browser calls.

#![deny(missing_docs)]

pub mod core;
pub mod engine;

#[cfg(all(target_arch = "wasm32", feature = "js"))]
mod js;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

#[cfg(target_arch = "wasm32")]
pub mod native;
