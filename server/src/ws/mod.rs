//! The WebSocket transport: one upgraded connection, from the `/ws` upgrade to its close.
//!
//! * `session` — the protocol logic of one connection, sans-IO (frame and time in, actions
//!   out), tested on the host with no thread.
//! * `connection` — the reader loop, liveness and close codes, and the executor that carries
//!   the session's actions out through the operations layer.
//! * `writer` — the write half: drains the connection's bounded queue into the socket.
//! * `cursors` — the cursor rule that makes replay, live traffic and catch-up meet exactly.
//!
//! Entry point: [`run`], called by the `/ws` handler once every refusal has been made.

mod connection;
mod cursors;
mod session;
mod writer;

pub use connection::run;
