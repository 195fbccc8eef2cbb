//! Frames as the server sends them: encoded once, shared by every connection that sends them.
//!
//! A server-to-client WebSocket frame is never masked (RFC 6455 §5.1), so the bytes of a
//! `message` frame are the same for every subscriber. [`Frame`] holds them whole — the
//! §5.2 header and the JSON text in one reference-counted buffer — so a connection writes a
//! frame with one `IoSlice` of a vectored write: no per-subscriber framing, no copy into a
//! per-connection write buffer.
//!
//! The frames built here are the only ones the server sends: text frames (every protocol
//! message), and the control frames `ping`, `pong` and `close` (§5.5).

use bytes::{Bytes, BytesMut};
use tidings_protocol::ServerMessage;

/// Opcodes of the frames the server sends (RFC 6455 §5.2).
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// The FIN bit: every frame the server sends is a whole message.
const FIN: u8 = 0x80;
/// The longest unmasked header: 2 bytes and a 64-bit length.
const MAX_HEAD: usize = 10;
/// The longest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// One encoded server frame (header and payload), cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    /// Length of the header at the front of `bytes`.
    head: u8,
}

impl Frame {
    /// A text frame carrying `message` as JSON.
    pub fn encode(message: &ServerMessage) -> Frame {
        Frame::text(message.encode())
    }

    /// A text frame carrying `text` (already JSON).
    pub fn text(text: String) -> Frame {
        Frame::build(TEXT, text.as_bytes())
    }

    /// A ping with no payload (the server's liveness probe).
    pub fn ping() -> Frame {
        Frame::build(PING, &[])
    }

    /// The pong answering a ping: the same application data (RFC 6455 §5.5.3), which the
    /// decoder has already bounded to [`MAX_CONTROL_PAYLOAD`] bytes.
    pub fn pong(payload: &[u8]) -> Frame {
        Frame::build(PONG, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
    }

    /// A close frame: a status code and a reason (RFC 6455 §5.5.1), or no body at all.
    /// The reason is cut (on a character boundary) to fit a control frame.
    pub fn close(status: Option<(u16, &str)>) -> Frame {
        let Some((code, reason)) = status else {
            return Frame::build(CLOSE, &[]);
        };
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut body = Vec::with_capacity(2 + end);
        body.extend_from_slice(&code.to_be_bytes());
        body.extend_from_slice(&reason.as_bytes()[..end]);
        Frame::build(CLOSE, &body)
    }

    fn build(opcode: u8, payload: &[u8]) -> Frame {
        let mut head = [0u8; MAX_HEAD];
        head[0] = FIN | opcode;
        let len = payload.len();
        let head_len = match len {
            0..=125 => {
                // In range: the match arm bounds it.
                head[1] = len as u8;
                2
            }
            126..=0xFFFF => {
                head[1] = 126;
                head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            _ => {
                head[1] = 127;
                head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        let mut bytes = BytesMut::with_capacity(head_len + len);
        bytes.extend_from_slice(&head[..head_len]);
        bytes.extend_from_slice(payload);
        Frame {
            bytes: bytes.freeze(),
            head: head_len as u8,
        }
    }

    /// The whole frame, as written to the socket.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length of the whole frame in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The payload: the JSON text of a text frame.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[usize::from(self.head)..]
    }

    /// The JSON text of a text frame (for logs and tests; `""` for a control frame whose
    /// payload is not text).
    pub fn json(&self) -> &str {
        std::str::from_utf8(self.payload()).unwrap_or("")
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::text(text)
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Frame {
        Frame::build(TEXT, text.as_bytes())
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({:?})", String::from_utf8_lossy(self.payload()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        let f = Frame::text("{}".to_owned());
        assert_eq!(f.as_bytes(), b"\x81\x02{}");
        assert_eq!(f.json(), "{}");
        let f = Frame::text("x".repeat(126));
        assert_eq!(&f.as_bytes()[..4], &[0x81, 126, 0, 126]);
        assert_eq!(f.payload().len(), 126);
        let f = Frame::text("x".repeat(70_000));
        assert_eq!(&f.as_bytes()[..2], &[0x81, 127]);
        assert_eq!(&f.as_bytes()[2..10], &70_000u64.to_be_bytes());
        assert_eq!(f.len(), 70_010);
    }

    #[test]
    fn control_frames() {
        assert_eq!(Frame::ping().as_bytes(), &[0x89, 0]);
        assert_eq!(Frame::pong(b"ab").as_bytes(), b"\x8a\x02ab");
        assert_eq!(Frame::close(None).as_bytes(), &[0x88, 0]);
        assert_eq!(
            Frame::close(Some((1000, "bye"))).as_bytes(),
            b"\x88\x05\x03\xe8bye"
        );
        // A long reason is cut to fit 125 bytes, on a character boundary.
        let f = Frame::close(Some((4002, &"é".repeat(100))));
        assert!(f.payload().len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&f.payload()[2..]).is_ok());
    }
}
