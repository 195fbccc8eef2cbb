//! The WebSocket transport: one upgraded connection, from the `/ws` upgrade to its close.
//!
//! * `upgrade` — the opening handshake (RFC 6455 §4.2): checks the request, answers 101 and
//!   hands the upgraded byte stream to a socket.
//! * `codec` — reading client frames, sans-IO: RFC 6455's frame rules and their close codes.
//! * `socket` — one WebSocket over the byte stream: messages in, shared frames out in
//!   vectored writes, control frames answered, no buffer held while idle.
//! * `session` — the protocol logic of one connection, sans-IO (frame and time in, actions
//!   out), tested on the host with no thread.
//! * `connection` — the reader loop, liveness and close codes, and the executor that carries
//!   the session's actions out through the operations layer.
//! * `writer` — the write side: drains the connection's bounded queue into the socket.
//! * `cursors` — the cursor rule that makes replay, live traffic and catch-up meet exactly.
//!
//! Entry points: [`Upgrade`] (extracted by the `/ws` handler) and [`run`], the connection,
//! started once every refusal has been made.

mod codec;
mod connection;
mod cursors;
mod session;
mod socket;
mod upgrade;
mod writer;

pub use connection::run;
pub use upgrade::Upgrade;
