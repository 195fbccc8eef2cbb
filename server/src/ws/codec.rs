//! Reading client frames (RFC 6455 §5), sans-IO: bytes in, messages out.
//!
//! [`Decoder::decode`] takes the first frame off the front of a byte slice once all of it has
//! arrived, checks it by the letter of the RFC and assembles fragmented messages. Every fault
//! maps to the close code §7.4.1 gives it ([`FrameError::close_code`]). The checks run as soon
//! as a frame's header is in, so a frame that declares more than the message limit fails at
//! once, before its payload is buffered.
//!
//! | fault | RFC 6455 | close code |
//! |---|---|---|
//! | a reserved bit set (no extension is negotiated) | §5.2 | 1002 |
//! | a reserved opcode | §5.2 | 1002 |
//! | an unmasked client frame | §5.1, §5.3 | 1002 |
//! | a 64-bit length with its most significant bit set | §5.2 | 1002 |
//! | a control frame that is fragmented or over 125 bytes | §5.5 | 1002 |
//! | a continuation with nothing to continue, or a new message inside a fragmented one | §5.4 | 1002 |
//! | a close body of one byte, or a status code that may not be sent | §5.5.1, §7.4 | 1002 |
//! | text (or a close reason) that is not UTF-8 | §8.1 | 1007 |
//! | a message over the server's limit (all its fragments together) | §7.4.1 | 1009 |

use tidings_protocol::CloseCode;

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A message (or control frame) the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole text message (fragments joined), valid UTF-8.
    Text(String),
    /// A whole binary message (the protocol has none: its bytes are not kept).
    Binary,
    /// A ping and its application data (at most 125 bytes), to be answered with a pong.
    Ping(Vec<u8>),
    /// A pong (unsolicited or an answer): proof of liveness only.
    Pong,
    /// A close frame and its status code, if it had one (already checked to be sendable).
    Close(Option<u16>),
}

/// A frame that breaks RFC 6455, or a message over the limit: the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A protocol violation (close code 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Text or a close reason that is not UTF-8 (close code 1007).
    #[error("text that is not valid UTF-8")]
    Utf8,
    /// A message larger than the limit, in bytes (close code 1009).
    #[error("a message of more than {0} bytes")]
    TooBig(usize),
}

impl FrameError {
    /// The close code RFC 6455 §7.4.1 gives this fault.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::Protocol(_) => CloseCode::ProtocolError,
            FrameError::Utf8 => CloseCode::InvalidPayload,
            FrameError::TooBig(_) => CloseCode::MessageTooBig,
        }
    }
}

/// A fragmented data message being assembled.
#[derive(Debug)]
enum Partial {
    /// Text: the bytes so far (checked as UTF-8 once whole).
    Text(Vec<u8>),
    /// Binary: only its length is kept, to enforce the limit.
    Binary(usize),
}

impl Partial {
    fn len(&self) -> usize {
        match self {
            Partial::Text(bytes) => bytes.len(),
            Partial::Binary(len) => *len,
        }
    }
}

/// What the front of the input holds.
enum Next {
    /// Not even a whole header yet.
    Header,
    /// A checked header; the frame is `head + len` bytes long.
    Frame {
        fin: bool,
        opcode: u8,
        mask: [u8; 4],
        head: usize,
        len: usize,
    },
}

/// The state of reading one connection's frames: the message limit and the fragmented
/// message in progress, if any.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Boxed: fragmented messages are rare, and every idle connection holds a decoder.
    partial: Option<Box<Partial>>,
}

impl Decoder {
    /// A decoder that refuses messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// How many bytes the frame at the front of `input` needs in all, once its header is
    /// in (`None` while it is not).
    ///
    /// # Errors
    /// As [`Decoder::decode`], for a header that is already wrong.
    pub fn frame_len(&self, input: &[u8]) -> Result<Option<usize>, FrameError> {
        Ok(match self.header(input)? {
            Next::Header => None,
            Next::Frame { head, len, .. } => Some(head + len),
        })
    }

    /// Take the first frame off `input` if all of it is there: the number of bytes it took,
    /// and the message it completes (`None` for a fragment of one still in progress).
    /// `Ok(None)` means more bytes are needed.
    ///
    /// # Errors
    /// [`FrameError`] for a frame that breaks RFC 6455 or a message over the limit (see the
    /// module's table); the connection must then close with [`FrameError::close_code`].
    pub fn decode(
        &mut self,
        input: &[u8],
    ) -> Result<Option<(usize, Option<Incoming>)>, FrameError> {
        let Next::Frame {
            fin,
            opcode,
            mask,
            head,
            len,
        } = self.header(input)?
        else {
            return Ok(None);
        };
        let Some(payload) = input.get(head..head + len) else {
            return Ok(None);
        };
        let used = head + len;
        let message = match opcode {
            PING => Some(Incoming::Ping(unmask(payload, mask))),
            PONG => Some(Incoming::Pong),
            CLOSE => Some(Incoming::Close(close_status(&unmask(payload, mask))?)),
            TEXT if fin => Some(Incoming::Text(
                String::from_utf8(unmask(payload, mask)).map_err(|_| FrameError::Utf8)?,
            )),
            BINARY if fin => Some(Incoming::Binary),
            TEXT => {
                self.partial = Some(Box::new(Partial::Text(unmask(payload, mask))));
                None
            }
            BINARY => {
                self.partial = Some(Box::new(Partial::Binary(len)));
                None
            }
            _ => {
                // A continuation: `header` checked that a message is in progress.
                match self.partial.as_deref_mut() {
                    Some(Partial::Text(bytes)) => unmask_into(bytes, payload, mask),
                    Some(Partial::Binary(total)) => *total += len,
                    None => return Err(FrameError::Protocol("continuation of nothing")),
                }
                if fin {
                    match self.partial.take().map(|p| *p) {
                        Some(Partial::Text(bytes)) => Some(Incoming::Text(
                            String::from_utf8(bytes).map_err(|_| FrameError::Utf8)?,
                        )),
                        _ => Some(Incoming::Binary),
                    }
                } else {
                    None
                }
            }
        };
        Ok(Some((used, message)))
    }

    /// Read and check the header at the front of `input`.
    fn header(&self, input: &[u8]) -> Result<Next, FrameError> {
        let [b0, b1, ..] = *input else {
            return Ok(Next::Header);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("unmasked client frame"));
        }
        let (extra, short) = match b1 & 0x7F {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(usize::from(n))),
        };
        let head = 2 + extra + 4;
        let Some(rest) = input.get(2..head) else {
            // The opcode can be judged before the length is in.
            check_opcode(opcode, fin, None, self.partial.as_deref())?;
            return Ok(Next::Header);
        };
        let declared: u64 = match short {
            Some(n) => n as u64,
            None => rest[..extra]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        };
        if declared >> 63 != 0 {
            return Err(FrameError::Protocol("frame length out of range"));
        }
        check_opcode(opcode, fin, Some(declared), self.partial.as_deref())?;
        // Data frames count toward the message; the sum cannot overflow: both are bounded.
        let so_far = self.partial.as_deref().map_or(0, Partial::len) as u64;
        if opcode < CLOSE && so_far.saturating_add(declared) > self.max_message as u64 {
            return Err(FrameError::TooBig(self.max_message));
        }
        // Bounded by the limit (data) or by 125 (control), so it fits a usize.
        let len = usize::try_from(declared).map_err(|_| FrameError::TooBig(self.max_message))?;
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&rest[extra..extra + 4]);
        Ok(Next::Frame {
            fin,
            opcode,
            mask,
            head,
            len,
        })
    }
}

/// The opcode rules of RFC 6455 §5.2, §5.4 and §5.5 (`len`: the declared payload length,
/// once known).
fn check_opcode(
    opcode: u8,
    fin: bool,
    len: Option<u64>,
    partial: Option<&Partial>,
) -> Result<(), FrameError> {
    match opcode {
        CONTINUATION if partial.is_none() => Err(FrameError::Protocol("continuation of nothing")),
        TEXT | BINARY if partial.is_some() => Err(FrameError::Protocol(
            "a new message inside a fragmented one",
        )),
        CONTINUATION | TEXT | BINARY => Ok(()),
        CLOSE | PING | PONG if !fin => Err(FrameError::Protocol("fragmented control frame")),
        CLOSE | PING | PONG if len.is_some_and(|n| n > 125) => {
            Err(FrameError::Protocol("control frame over 125 bytes"))
        }
        CLOSE | PING | PONG => Ok(()),
        _ => Err(FrameError::Protocol("reserved opcode")),
    }
}

/// The status code of a close body (RFC 6455 §5.5.1): none, or a code that may be sent
/// (§7.4.1, §7.4.2 and the IANA registry: 1000–1003, 1007–1014, 3000–4999), followed by a
/// UTF-8 reason.
fn close_status(body: &[u8]) -> Result<Option<u16>, FrameError> {
    match body {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("a close body of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::Protocol("a close code that may not be sent"));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::Utf8)?;
            Ok(Some(code))
        }
    }
}

/// The payload with the client's mask removed (RFC 6455 §5.3).
fn unmask(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    unmask_into(&mut out, payload, mask);
    out
}

fn unmask_into(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    out.reserve(payload.len());
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact(4);
    for chunk in &mut chunks {
        let mut four = [0u8; 4];
        four.copy_from_slice(chunk);
        out.extend_from_slice(&(u32::from_ne_bytes(four) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.remainder().iter().enumerate() {
        out.push(b ^ mask[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn decode_all(d: &mut Decoder, mut input: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut out = Vec::new();
        while let Some((used, message)) = d.decode(input)? {
            out.extend(message);
            input = &input[used..];
        }
        assert!(input.is_empty(), "left over: {input:?}");
        Ok(out)
    }

    #[test]
    fn the_rfc_example_decodes() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let input = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut d = Decoder::new(1024);
        assert_eq!(
            d.decode(&input),
            Ok(Some((11, Some(Incoming::Text("Hello".into())))))
        );
    }

    #[test]
    fn frames_wait_for_all_their_bytes() {
        let whole = frame(0x81, &[b'x'; 300]);
        let mut d = Decoder::new(1024);
        for cut in 0..whole.len() {
            assert_eq!(d.decode(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(d.frame_len(&whole[..8]), Ok(Some(whole.len())));
        assert_eq!(d.frame_len(&whole[..7]), Ok(None));
        assert_eq!(d.frame_len(&whole[..1]), Ok(None));
        let (used, message) = d.decode(&whole).expect("valid").expect("whole");
        assert_eq!(used, whole.len());
        assert_eq!(message, Some(Incoming::Text("x".repeat(300))));
        let big = frame(0x81, &vec![b'y'; 70_000]);
        let mut d = Decoder::new(100_000);
        assert_eq!(
            decode_all(&mut d, &big),
            Ok(vec![Incoming::Text("y".repeat(70_000))])
        );
    }

    #[test]
    fn fragments_join_and_control_frames_may_interleave() {
        let mut input = frame(0x01, "é".as_bytes().get(..1).expect("a byte"));
        input.extend(frame(0x89, b"hi"));
        input.extend(frame(0x00, "é".as_bytes().get(1..).expect("a byte")));
        input.extend(frame(0x8A, b""));
        input.extend(frame(0x80, b"!"));
        input.extend(frame(0x02, b"ab"));
        input.extend(frame(0x80, b"cd"));
        input.extend(frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        let mut d = Decoder::new(1024);
        assert_eq!(
            decode_all(&mut d, &input),
            Ok(vec![
                Incoming::Ping(b"hi".to_vec()),
                Incoming::Pong,
                Incoming::Text("é!".into()),
                Incoming::Binary,
                Incoming::Close(Some(1000)),
            ])
        );
        assert_eq!(
            decode_all(&mut Decoder::new(8), &frame(0x88, b"")),
            Ok(vec![Incoming::Close(None)])
        );
    }

    #[test]
    fn faults_get_the_rfc_close_codes() {
        let protocol = |input: Vec<u8>| {
            let e = decode_all(&mut Decoder::new(1024), &input).expect_err("a fault");
            assert_eq!(e.close_code(), CloseCode::ProtocolError, "{e}");
        };
        protocol(frame(0xC1, b"{}")); // RSV1
        protocol(frame(0x91, b"{}")); // RSV3
        protocol(frame(0x83, b"")); // reserved data opcode
        protocol(frame(0x8B, b"")); // reserved control opcode
        protocol(frame(0x80, b"x")); // continuation of nothing
        protocol(frame(0x09, b"")); // fragmented ping
        protocol(frame(0x89, &[0; 126])); // control frame over 125 bytes
        protocol(frame(0x88, &[3])); // close body of one byte
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            protocol(frame(0x88, &code.to_be_bytes()));
        }
        let mut nested = frame(0x01, b"a");
        nested.extend(frame(0x81, b"b"));
        protocol(nested);
        // An unmasked frame, and a length with its top bit set.
        protocol(vec![0x81, 0x02, b'{', b'}']);
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&MASK);
        protocol(huge);
        for code in [1000u16, 1003, 1007, 1014, 3000, 4999] {
            assert!(decode_all(&mut Decoder::new(8), &frame(0x88, &code.to_be_bytes())).is_ok());
        }

        let utf8 = |input: Vec<u8>| {
            let e = decode_all(&mut Decoder::new(1024), &input).expect_err("a fault");
            assert_eq!(e.close_code(), CloseCode::InvalidPayload);
        };
        utf8(frame(0x81, &[b'{', 0xff, 0xfe, b'}']));
        utf8(frame(0x88, &[0x03, 0xe8, 0xff]));
        let mut split = frame(0x01, &[0xc3]);
        split.extend(frame(0x80, &[0x28]));
        utf8(split);
    }

    #[test]
    fn the_limit_counts_every_fragment_and_fails_on_the_header() {
        let mut d = Decoder::new(10);
        assert!(decode_all(&mut d, &frame(0x81, &[b'a'; 10])).is_ok());
        // The header alone is enough to refuse a frame over the limit.
        let over = frame(0x82, &[0; 11]);
        assert_eq!(
            Decoder::new(10).decode(&over[..8]),
            Err(FrameError::TooBig(10))
        );
        let mut split = frame(0x01, &[b'a'; 6]);
        split.extend(frame(0x80, &[b'b'; 5]));
        let e = decode_all(&mut Decoder::new(10), &split).expect_err("over");
        assert_eq!(e.close_code(), CloseCode::MessageTooBig);
        // Control frames do not count toward a message.
        let mut with_ping = frame(0x01, &[b'a'; 6]);
        with_ping.extend(frame(0x89, &[0; 100]));
        with_ping.extend(frame(0x80, &[b'b'; 4]));
        assert!(decode_all(&mut Decoder::new(10), &with_ping).is_ok());
    }
}
