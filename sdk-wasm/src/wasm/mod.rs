//! The browser shell: turns browser events into [`crate::core::Input`]s and
//! [`crate::core::Action`]s into browser calls, and exports the JS API.
//!
//! * [`client`] — `TidingsClient` and the action pump. It imports neither `subscription` nor
//!   `stream`: they add methods to `TidingsClient` and plug into the pump (`Follower`).
//! * [`subscription`] — `Subscription` and `TidingsClient.subscribe`.
//! * `stream` — `EventStream` and `TidingsClient.stream`: the reducer and handlers around
//!   the core's `StreamFold` (the `streams` feature; without it, `stream_absent` has a
//!   `TidingsClient.stream` that throws and names the package entry that has streams).
//! * [`browser`] — WebSocket, timer and listeners that unhook themselves on drop.
//! * [`convert`] — options, errors, messages and replies as JS values.
//! * [`types`] — the TypeScript declarations shipped in the package.

pub mod browser;
pub mod client;
pub mod convert;
#[cfg(feature = "streams")]
pub mod stream;
#[cfg(not(feature = "streams"))]
mod stream_absent;
pub mod subscription;
pub mod types;

pub use client::TidingsClient;
#[cfg(feature = "streams")]
pub use stream::EventStream;
pub use subscription::Subscription;
