//! The browser shell of the Rust API ([`crate::native`]): turns browser events into
//! [`crate::core::Input`]s and [`crate::core::Action`]s into browser calls.
//!
//! * [`client`] — the action pump and the client's shared state.
//! * [`browser`] — WebSocket, timer and listeners that unhook themselves on drop.
//!
//! The JS API has its own shell in JavaScript (`sdk-wasm/js/client.js`) over
//! [`crate::engine`]; neither shell makes a decision: the core does.

pub mod browser;
pub(crate) mod client;
