//! The opening handshake (RFC 6455 §4.2): checking the client's upgrade request and
//! answering `101 Switching Protocols`, then handing the upgraded connection to a [`Socket`].
//!
//! The server's own handshake (rather than axum's `WebSocketUpgrade`) is what lets the
//! connection own the raw byte stream under the WebSocket: frames are written from shared
//! buffers with vectored writes, and nothing is buffered while a connection is idle.
//!
//! | request | answer (RFC 6455 §4.2.1, §4.2.2, §4.4; RFC 9110) |
//! |---|---|
//! | not `GET` | 405, `Allow: GET` |
//! | not HTTP/1.1 | 400 |
//! | `Connection` without the `upgrade` token, or `Upgrade` without `websocket` | 400 |
//! | `Sec-WebSocket-Version` other than 13 | 426, `Sec-WebSocket-Version: 13` |
//! | `Sec-WebSocket-Key` missing or not 16 bytes in base64 | 400 |
//! | a connection that cannot be upgraded | 426 |

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Either;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tidings_protocol::{ErrorCode, ServerMessage};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::socket::Socket;
use crate::stream::Counted;

/// The GUID every accept value is derived with (RFC 6455 §1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version there is (RFC 6455 §4.1).
const VERSION: &str = "13";

/// The WebSocket over an upgraded HTTP/1.1 connection.
pub type WebSocket = Socket<Io>;

/// The byte stream under a WebSocket.
///
/// Usually the bare TCP socket, taken back from hyper after the upgrade (from the listener's
/// counting wrapper, or as `axum::serve` hands it over): reads and writes then go straight to
/// the socket. Under any other stack it is hyper's upgraded connection, boxed (it is rare,
/// and every idle connection holds this value).
pub enum Io {
    /// The TCP socket itself.
    Tcp(TcpStream),
    /// Whatever hyper upgraded.
    Upgraded(Box<TokioIo<Upgraded>>),
}

impl Io {
    /// The stream under `upgraded`, and the bytes hyper read past the request.
    fn of(upgraded: Upgraded) -> (Io, Bytes) {
        let upgraded = match upgraded.downcast::<TokioIo<Counted>>() {
            Ok(parts) => return (Io::Tcp(parts.io.into_inner().into_tcp()), parts.read_buf),
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Io::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => (Io::Upgraded(Box::new(TokioIo::new(upgraded))), Bytes::new()),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Upgraded(up) => Pin::new(up.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Upgraded(up) => Pin::new(up.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Upgraded(up) => Pin::new(up.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(tcp) => tcp.is_write_vectored(),
            Io::Upgraded(up) => up.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Upgraded(up) => Pin::new(up.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Upgraded(up) => Pin::new(up.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an upgrade request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The request's method is not `GET`.
    #[error("a WebSocket upgrade must be a GET request")]
    Method,
    /// `Connection` lacks `upgrade` or `Upgrade` lacks `websocket`.
    #[error("not a WebSocket upgrade request (Connection: upgrade, Upgrade: websocket)")]
    NotUpgrade,
    /// A protocol version other than 13.
    #[error("unsupported WebSocket version (Sec-WebSocket-Version must be 13)")]
    Version,
    /// The key is missing or not 16 bytes in base64.
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    Key,
    /// The HTTP connection cannot switch protocols (hyper gave no upgrade handle).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        let status = match self {
            HandshakeError::Method => StatusCode::METHOD_NOT_ALLOWED,
            HandshakeError::NotUpgrade | HandshakeError::Key => StatusCode::BAD_REQUEST,
            HandshakeError::Version | HandshakeError::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        };
        let body = ServerMessage::error(ErrorCode::InvalidMessage, self.to_string(), None).encode();
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            HandshakeError::Method => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            HandshakeError::Version => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static(VERSION),
                );
            }
            HandshakeError::NotUpgradable => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            HandshakeError::NotUpgrade | HandshakeError::Key => {}
        }
        response
    }
}

/// A checked upgrade request: extract it in a handler, decide, then [`Upgrade::accept`].
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = HandshakeError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(HandshakeError::Method);
        }
        // "An HTTP/1.1 or higher GET request" (§4.2.1); HTTP/2 would need RFC 8441's CONNECT,
        // which this server does not speak.
        if parts.version != Version::HTTP_11 {
            return Err(HandshakeError::NotUpgrade);
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(HandshakeError::NotUpgrade);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes().trim_ascii() != VERSION.as_bytes())
        {
            return Err(HandshakeError::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|k| k.as_bytes().trim_ascii())
            .ok_or(HandshakeError::Key)?;
        if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
            return Err(HandshakeError::Key);
        }
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        Ok(Upgrade {
            accept: accept_value(key),
            on_upgrade,
        })
    }
}

impl Upgrade {
    /// Answer `101 Switching Protocols`, and once the connection has switched run `session`
    /// on the WebSocket in a task of its own. Messages over `max_message` bytes will close
    /// the connection with 1009.
    pub fn accept<F, Fut>(self, max_message: usize, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // A combinator, not an `async` block: the block would keep `session` in the task
        // beside the connection's future for the connection's whole life.
        let connection = self.on_upgrade.then(move |upgraded| match upgraded {
            Ok(upgraded) => {
                let (io, read_ahead) = Io::of(upgraded);
                Either::Left(session(Socket::new(io, &read_ahead, max_message)))
            }
            Err(e) => {
                tracing::debug!("the upgrade did not complete: {e}");
                Either::Right(std::future::ready(()))
            }
        });
        tokio::spawn(connection);
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        response
    }
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
fn accept_value(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    let value = STANDARD.encode(sha.finalize());
    // Base64 is always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a comma-separated header lists `token` (case-insensitive; RFC 9110 §5.6.1),
/// in any of its lines.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_value(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn tokens_are_found_in_lists_and_any_case() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
        h.append(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.append(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(has_token(&h, header::UPGRADE, "websocket"));
    }
}
