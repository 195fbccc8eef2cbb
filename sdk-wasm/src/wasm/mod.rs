//! The browser shell: turns browser events into [`crate::core::Input`]s and
//! [`crate::core::Action`]s into browser calls, and exports the JS API.
//!
//! * [`client`] — `TidingsClient` and `Subscription`, the action pump.
//! * [`stream`] — `EventStream`: replay a stream with a reducer, follow it, append.
//! * [`browser`] — WebSocket, timer and listeners that unhook themselves on drop.
//! * [`convert`] — options, errors, messages and replies as JS values.
//! * [`types`] — the TypeScript declarations shipped in the package.

pub mod browser;
pub mod client;
pub mod convert;
pub mod stream;
pub mod types;

pub use client::{Subscription, TidingsClient};
pub use stream::EventStream;
