//! One WebSocket over a byte stream: messages in, [`Frame`]s out, and no buffer held while
//! the connection is idle.
//!
//! Most connections are idle most of the time, so what an idle one holds decides how many a
//! node can keep. Reads land in a buffer on the stack of the poll; only the unfinished part
//! of a frame (rare: a frame split across TCP segments) is copied into a per-connection
//! buffer, which is freed the moment it empties. Writes queue shared [`Frame`]s and whole
//! durable runs (one queue item per run: no copy or reference count per frame) and leave in
//! vectored writes, up to [`MAX_IOVECS`] frames per system call; the queue is freed once it
//! drains. Both buffers are boxed, so an idle connection holds two null pointers.
//!
//! Control frames are handled here as RFC 6455 asks: a ping is answered with a pong carrying
//! its data (§5.5.2), and a close is answered with a close carrying its status code (§5.5.1),
//! after which nothing more is sent. What the connection sees is [`Incoming`]: messages, and
//! pings, pongs and closes as proof of liveness and of the end.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::{Decoder, FrameError, Incoming};
use crate::hub::{ConnId, DurableRun};
use crate::wire::Frame;

/// Bytes read per system call into the poll's stack buffer.
const READ_CHUNK: usize = 4096;
/// The most bytes read at once into the connection's own buffer, for a large frame.
const MAX_READ: usize = 64 * 1024;
/// Frames written per system call, at most (Linux's `IOV_MAX` is 1024).
pub const MAX_IOVECS: usize = 256;

/// What waits to be written.
enum Chunk {
    /// One frame.
    Frame(Frame),
    /// The frames of a durable run from `next` on, except those `skip` published: the run is
    /// shared by every subscriber, so queuing it costs one reference count, not one per frame.
    Run {
        run: Arc<DurableRun>,
        next: usize,
        skip: ConnId,
    },
}

impl Chunk {
    /// The frames still to write, in order.
    fn frames(&self) -> impl Iterator<Item = &Frame> {
        let (single, run) = match self {
            Chunk::Frame(frame) => (Some(frame), None),
            Chunk::Run { run, next, skip } => (None, Some((run, *next, *skip))),
        };
        single
            .into_iter()
            .chain(run.into_iter().flat_map(|(run, next, skip)| {
                run.frames
                    .get(next..)
                    .unwrap_or_default()
                    .iter()
                    .filter(move |(_, publisher)| *publisher != Some(skip))
                    .map(|(frame, _)| frame)
            }))
    }
}

/// Why reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client broke RFC 6455 or sent too much: close with the fault's code.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// A server-side WebSocket over `S` (the upgraded HTTP connection; a duplex pipe in tests).
pub struct Socket<S> {
    io: S,
    decoder: Decoder,
    /// The start of a frame that has not all arrived (none between frames). Boxed, like
    /// `output`: what every idle connection holds is a null pointer each.
    input: Option<Box<BytesMut>>,
    /// What waits to be written (none once it is).
    output: Option<Box<Output>>,
    /// A close frame is queued or sent: nothing may follow it (RFC 6455 §5.5.1).
    close_sent: bool,
    /// The client's close arrived, or the stream ended: nothing more is read.
    read_done: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// A WebSocket on `io` (the handshake done), refusing messages over `max_message` bytes.
    /// `read_ahead`: bytes already read from `io` past the handshake (the first frames).
    pub fn new(io: S, read_ahead: &[u8], max_message: usize) -> Self {
        Socket {
            io,
            decoder: Decoder::new(max_message),
            input: (!read_ahead.is_empty()).then(|| Box::new(BytesMut::from(read_ahead))),
            output: None,
            close_sent: false,
            read_done: false,
        }
    }

    /// The next message or control frame; `None` once the stream has ended (or after the
    /// client's close).
    ///
    /// # Errors
    /// [`ReadError::Frame`] for a frame that breaks RFC 6455 (close with its code), and
    /// [`ReadError::Io`] when the socket fails.
    pub async fn next(&mut self) -> Option<Result<Incoming, ReadError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Poll for the next message (see [`Socket::next`]).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ReadError>>> {
        loop {
            if self.read_done {
                return Poll::Ready(None);
            }
            if let Some(input) = self.input.as_deref_mut() {
                match self.decoder.decode(input) {
                    Err(e) => return Poll::Ready(Some(Err(self.failed(e)))),
                    Ok(Some((used, message))) => {
                        input.advance(used);
                        if input.is_empty() {
                            // Give the memory back: most connections now go quiet.
                            self.input = None;
                        }
                        match message {
                            Some(message) => return Poll::Ready(Some(Ok(self.seen(message)))),
                            None => continue,
                        }
                    }
                    Ok(None) => {
                        // A frame is arriving: read into the connection's buffer, as much
                        // of it as is missing (within bounds).
                        let need = match self.decoder.frame_len(input) {
                            Ok(total) => total.unwrap_or(16).saturating_sub(input.len()),
                            Err(e) => return Poll::Ready(Some(Err(self.failed(e)))),
                        };
                        input.reserve(need.clamp(READ_CHUNK, MAX_READ));
                        let n = match ready!(tokio_util::io::poll_read_buf(
                            Pin::new(&mut self.io),
                            cx,
                            input
                        )) {
                            Ok(n) => n,
                            Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        };
                        if n == 0 {
                            self.read_done = true;
                        }
                        continue;
                    }
                }
            }
            // Between frames: read into the stack, so a connection waiting here holds no
            // buffer; decode what arrived straight from it.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            let got = buf.filled();
            if got.is_empty() {
                self.read_done = true;
                return Poll::Ready(None);
            }
            match self.decoder.decode(got) {
                Err(e) => return Poll::Ready(Some(Err(self.failed(e)))),
                Ok(Some((used, message))) => {
                    if let Some(rest) = got.get(used..).filter(|rest| !rest.is_empty()) {
                        self.input = Some(Box::new(BytesMut::from(rest)));
                    }
                    if let Some(message) = message {
                        return Poll::Ready(Some(Ok(self.seen(message))));
                    }
                }
                Ok(None) => self.input = Some(Box::new(BytesMut::from(got))),
            }
        }
    }

    /// A read fault ends reading.
    fn failed(&mut self, e: FrameError) -> ReadError {
        self.read_done = true;
        self.input = None;
        ReadError::Frame(e)
    }

    /// Answer what needs an answer: a pong for a ping, the close handshake for a close.
    fn seen(&mut self, message: Incoming) -> Incoming {
        match &message {
            Incoming::Ping(data) => self.feed(Frame::pong(data)),
            Incoming::Close(code) => {
                self.read_done = true;
                self.input = None;
                // Echo the status code (RFC 6455 §5.5.1), unless we closed first.
                self.close(Frame::close(code.map(|c| (c, ""))));
            }
            Incoming::Text(_) | Incoming::Binary | Incoming::Pong => {}
        }
        message
    }

    /// Queue `frame` to be written by the next flush (dropped once a close is queued).
    pub fn feed(&mut self, frame: Frame) {
        if self.close_sent {
            return;
        }
        let bytes = frame.len();
        self.output().push(Chunk::Frame(frame), bytes);
    }

    /// Queue the frames of `run` from index `from` on, except those connection `skip`
    /// published, to be written by the next flush.
    pub fn feed_run(&mut self, run: Arc<DurableRun>, from: usize, skip: ConnId) {
        if self.close_sent {
            return;
        }
        let next = first_sent(&run, from, skip);
        let chunk = Chunk::Run { run, next, skip };
        let bytes: usize = chunk.frames().map(Frame::len).sum();
        if bytes > 0 {
            self.output().push(chunk, bytes);
        }
    }

    /// Queue a close frame: the last frame this socket sends.
    pub fn close(&mut self, frame: Frame) {
        self.feed(frame);
        self.close_sent = true;
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.output.as_ref().map_or(0, |out| out.queued)
    }

    fn output(&mut self) -> &mut Output {
        self.output.get_or_insert_with(Box::default)
    }

    /// Write everything queued.
    ///
    /// # Errors
    /// When the socket fails.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Poll writing everything queued (see [`Socket::flush`]).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(out) = self.output.as_deref_mut() {
            while !out.chunks.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let count = out.slices(&mut slices);
                let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                out.consume(n);
            }
            // Give the memory back: most connections now go quiet.
            self.output = None;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// Frames waiting to be written, oldest first.
#[derive(Default)]
struct Output {
    chunks: VecDeque<Chunk>,
    /// Bytes of the first frame of `chunks[0]` already written.
    written: usize,
    /// Bytes in `chunks`, less `written`.
    queued: usize,
}

impl Output {
    fn push(&mut self, chunk: Chunk, bytes: usize) {
        self.queued += bytes;
        self.chunks.push_back(chunk);
    }

    /// Fill `slices` with the next frames to write; returns how many it filled.
    fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let frames = self.chunks.iter().flat_map(Chunk::frames);
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(frames) {
            let bytes = frame.as_bytes();
            *slot = IoSlice::new(if count == 0 {
                bytes.get(self.written..).unwrap_or_default()
            } else {
                bytes
            });
            count += 1;
        }
        count
    }

    /// Account for `n` bytes written from the front of the queue.
    fn consume(&mut self, mut n: usize) {
        self.queued = self.queued.saturating_sub(n);
        while let Some(front) = self.chunks.front_mut() {
            let done = match front {
                Chunk::Frame(frame) => {
                    let left = frame.len().saturating_sub(self.written);
                    if n < left {
                        self.written += n;
                        return;
                    }
                    n -= left;
                    true
                }
                Chunk::Run { run, next, skip } => loop {
                    let Some((frame, _)) = run.frames.get(*next) else {
                        break true;
                    };
                    let left = frame.len().saturating_sub(self.written);
                    if n < left {
                        self.written += n;
                        return;
                    }
                    n -= left;
                    self.written = 0;
                    *next = first_sent(run, *next + 1, *skip);
                },
            };
            if done {
                self.written = 0;
                self.chunks.pop_front();
            }
        }
    }
}

/// The index of the first frame of `run` at or after `from` that `skip` did not publish.
fn first_sent(run: &DurableRun, from: usize, skip: ConnId) -> usize {
    let mut next = from;
    while run
        .frames
        .get(next)
        .is_some_and(|(_, publisher)| *publisher == Some(skip))
    {
        next += 1;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
    use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

    async fn pair(max: usize) -> (Socket<DuplexStream>, WebSocketStream<DuplexStream>) {
        // A small pipe, so large writes take several system calls.
        let (server, client) = tokio::io::duplex(1024);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (Socket::new(server, &[], max), client)
    }

    #[tokio::test]
    async fn messages_in_both_directions_and_the_buffers_are_freed() {
        let (mut server, mut client) = pair(1 << 20).await;
        let big = "z".repeat(200_000);
        let sent = big.clone();
        let reader = tokio::spawn(async move {
            client.send(Message::text("{\"a\":1}")).await.expect("send");
            client.send(Message::text(sent)).await.expect("send");
            let mut got = Vec::new();
            for _ in 0..3 {
                match client.next().await {
                    Some(Ok(Message::Text(t))) => got.push(t.as_str().len()),
                    other => panic!("{other:?}"),
                }
            }
            (client, got)
        });
        assert_eq!(
            server.next().await.expect("one").expect("ok"),
            Incoming::Text("{\"a\":1}".into())
        );
        assert_eq!(
            server.next().await.expect("two").expect("ok"),
            Incoming::Text(big)
        );
        assert!(server.input.is_none());
        for n in [10usize, 5000, 100_000] {
            server.feed(Frame::text("y".repeat(n)));
        }
        assert!(server.queued() > 105_000);
        server.flush().await.expect("flush");
        assert_eq!(server.queued(), 0);
        assert!(server.output.is_none());
        let (_client, got) = reader.await.expect("reader");
        assert_eq!(got, vec![10, 5000, 100_000]);
    }

    #[tokio::test]
    async fn pings_are_answered_and_a_close_is_echoed() {
        let (mut server, mut client) = pair(1024).await;
        client
            .send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .expect("ping");
        assert_eq!(
            server.next().await.expect("ping").expect("ok"),
            Incoming::Ping(b"are you there".to_vec())
        );
        server.flush().await.expect("flush");
        match client.next().await {
            Some(Ok(Message::Pong(data))) => assert_eq!(&data[..], b"are you there"),
            other => panic!("{other:?}"),
        }
        client
            .close(Some(CloseFrame {
                code: CloseCode::Library(4100),
                reason: "bye".into(),
            }))
            .await
            .expect("close");
        assert_eq!(
            server.next().await.expect("close").expect("ok"),
            Incoming::Close(Some(4100))
        );
        // Nothing more is read, and nothing is sent after the close.
        assert!(server.next().await.is_none());
        server.feed(Frame::text("late".into()));
        server.flush().await.expect("flush");
        match client.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4100),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_fault_ends_reading_and_a_split_frame_is_reassembled() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = Socket::new(server, &[], 1024);
        // A masked "Hello" (RFC 6455 §5.7), one byte per write, then an unmasked frame.
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let writer = tokio::spawn(async move {
            for b in hello {
                client.write_all(&[b]).await.expect("write");
                client.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
            client.write_all(&[0x81, 0x01, b'x']).await.expect("write");
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest).await;
        });
        assert_eq!(
            server.next().await.expect("hello").expect("ok"),
            Incoming::Text("Hello".into())
        );
        match server.next().await {
            Some(Err(ReadError::Frame(e))) => {
                assert_eq!(e.close_code(), tidings_protocol::CloseCode::ProtocolError);
            }
            other => panic!("{other:?}"),
        }
        assert!(server.next().await.is_none());
        drop(server);
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_run_is_written_without_the_frames_this_connection_published() {
        // A small pipe: the run leaves in many partial writes.
        let (mut server, mut client) = pair(1024).await;
        let me = 7;
        let frames = (0..40u32)
            .map(|i| {
                let publisher = (i % 3 == 0).then_some(me);
                (
                    Frame::text(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(90))),
                    publisher,
                )
            })
            .collect();
        let run = Arc::new(DurableRun {
            topic: Arc::from("t"),
            first: 1,
            frames,
        });
        server.feed(Frame::text("before".into()));
        server.feed_run(Arc::clone(&run), 2, me);
        server.feed(Frame::text("after".into()));
        let expected: Vec<String> = std::iter::once("before".to_owned())
            .chain(
                (2..40u32)
                    .filter(|i| i % 3 != 0)
                    .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(90))),
            )
            .chain(std::iter::once("after".to_owned()))
            .collect();
        let count = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < count {
                match client.next().await {
                    Some(Ok(Message::Text(t))) => got.push(t.as_str().to_owned()),
                    other => panic!("{other:?}"),
                }
            }
            got
        });
        server.flush().await.expect("flush");
        assert_eq!(server.queued(), 0);
        assert_eq!(reader.await.expect("reader"), expected);
        // Only the queue held the run.
        assert_eq!(Arc::strong_count(&run), 1);
    }
}
