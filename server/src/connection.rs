//! The socket side of a session: a reader loop and a writer task per connection.
//!
//! The reader owns the [`Session`] and the read half of the WebSocket; it decodes frames,
//! runs the heartbeat/liveness timer, watches shutdown, overflow and token expiry, and carries
//! out the session's [`Action`]s. The writer owns the write half and drains the connection's
//! bounded outbound queue, batching whatever is already queued into one flush. Publishers
//! only ever `try_send` into that queue, so a slow socket stalls nobody but its own writer.
//!
//! For durable topics the writer keeps a cursor per topic (the last offset sent). It drops
//! anything at or below the cursor and fills any gap above it from the store before going on.
//! That one rule gives exact recovery on `subscribe` with `since`, and lossless catch-up for
//! a subscriber whose queue overflowed.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tidings_protocol::client::{History, Read};
use tidings_protocol::server::{
    Events, Heartbeat, HistoryPage, Message as MessageFrame, Snapshot, StoredEvent,
};
use tidings_protocol::{CloseCode, ErrorCode, Json, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::clock;
use crate::hub::{ConnId, DurableRun, Mailbox, Outbound, Pending};
use crate::limits::ConnPermit;
use crate::session::{Action, Session};
use crate::state::Shared;
use crate::store::{Row, Store, StoreError};

/// How long a closing connection gets to flush its close frame and hear the reply.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames written before a flush, at most, when several are queued.
const MAX_BATCH: usize = 64;

/// Rows read from the store per page while catching up.
const CATCH_UP_PAGE: usize = 256;

/// Run one upgraded connection to its end.
pub async fn run(socket: WebSocket, shared: Arc<Shared>, identity: Identity, permit: ConnPermit) {
    let _permit = permit;
    let config = &shared.config;
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let overflow = CancellationToken::new();
    let mailbox = Mailbox::new(shared.hub.next_conn_id(), tx, overflow.clone());
    let mut session = Session::new(Arc::clone(&shared), identity, mailbox.clone());
    let _open = OpenGauge::new(&shared);
    tracing::debug!(client_id = session.client_id(), "connected");

    let (sink, mut stream) = socket.split();
    let (stop_tx, stop_rx) = oneshot::channel();
    let writer = Writer {
        id: mailbox.id(),
        client_id: session.client_id().into(),
        sink,
        rx,
        stop_rx,
        store: shared.store.clone(),
        cursors: Cursors::default(),
        lagging: mailbox.lagging(),
        pending: mailbox.pending(),
        overflow: overflow.clone(),
        stuck_timeout: config.slow_consumer_timeout,
    };
    let mut writer = tokio::spawn(writer.run());
    mailbox.offer(encode(&session.connected()));

    let end = read_loop(
        &shared,
        &mut session,
        &mailbox,
        &overflow,
        &mut stream,
        &mut writer,
    )
    .await;

    match end {
        End::Close(code) => {
            shared.metrics.closed(code.code());
            if code == CloseCode::SlowConsumer {
                shared.metrics.slow_consumer_closes.inc();
            }
            tracing::debug!(
                client_id = session.client_id(),
                code = code.code(),
                "closing"
            );
            let _ = stop_tx.send(Stop::Close(code));
            // Give the client a moment to answer the close frame, then let go either way.
            let _ = Box::pin(timeout(CLOSE_GRACE, async {
                while let Some(Ok(frame)) = stream.next().await {
                    if matches!(frame, Message::Close(_)) {
                        break;
                    }
                }
            }))
            .await;
        }
        End::PeerClosed => {
            // tungstenite queued the answer to the peer's close frame (its code echoed, or
            // 1002 for a code that may not be sent); it leaves with the writer's flush.
            let _ = stop_tx.send(Stop::Echo);
        }
        End::Gone => drop(stop_tx),
    }
    if !writer.is_finished() && timeout(CLOSE_GRACE, &mut writer).await.is_err() {
        writer.abort();
    }
    tracing::debug!(client_id = session.client_id(), "disconnected");
}

/// How the read side of a connection ended.
enum End {
    /// The server closes with this code: send a close frame, wait briefly for the answer.
    Close(CloseCode),
    /// The peer sent a close frame: complete the handshake (RFC 6455 §5.5.1) and go.
    PeerClosed,
    /// The socket is gone (or the writer stopped): nothing more can be sent.
    Gone,
}

/// What the reader tells the writer at the end.
enum Stop {
    /// Send a close frame with this code.
    Close(CloseCode),
    /// Flush the close frame tungstenite queued in answer to the peer's.
    Echo,
}

/// Counts the connection in the `connections` gauge for as long as it lives — including when
/// its task ends by panic (tokio catches it; this guard, the session and the permit clean up).
struct OpenGauge<'a>(&'a Shared);

impl<'a> OpenGauge<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.metrics.connections.inc();
        shared.metrics.connections_opened.inc();
        OpenGauge(shared)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

/// Read frames until the connection should end, and say how it ended.
async fn read_loop(
    shared: &Shared,
    session: &mut Session,
    mailbox: &Mailbox,
    overflow: &CancellationToken,
    stream: &mut SplitStream<WebSocket>,
    writer: &mut tokio::task::JoinHandle<()>,
) -> End {
    let config = &shared.config;
    let mut heartbeat = interval_at(
        Instant::now() + config.heartbeat_interval,
        config.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let mut valid_until = session.valid_until();
    let expiry = sleep_until(deadline(valid_until));
    tokio::pin!(expiry);
    // Created once, not per frame: each `cancelled()` future registers with (and on drop
    // leaves) its token's waiter list under a lock, and the shutdown token is shared by every
    // connection of the server.
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(shutdown);
    let overflowed = overflow.cancelled();
    tokio::pin!(overflowed);
    let mut actions = Vec::new();

    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return End::Close(CloseCode::GoingAway),
            _ = &mut overflowed => return End::Close(CloseCode::SlowConsumer),
            _ = &mut *writer => return End::Gone,
            _ = &mut expiry => return End::Close(CloseCode::TokenExpired),
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > config.heartbeat_timeout {
                    return End::Close(CloseCode::HeartbeatTimeout);
                }
                // A full queue is busy writing anyway: skip the beat rather than wait.
                let _ = mailbox.try_queue(Outbound::Heartbeat);
            }
            frame = stream.next() => {
                let frame = match frame {
                    None => return End::Gone,
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => return read_error(e),
                };
                last_seen = Instant::now();
                match frame {
                    Message::Text(text) => session.on_text(text.as_str(), &mut actions),
                    Message::Binary(_) => session.on_binary(&mut actions),
                    // tungstenite answers pings itself; a pong only proves liveness.
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => return End::PeerClosed,
                }
                for action in actions.drain(..) {
                    if perform(shared, mailbox, action).await.is_err() {
                        return End::Close(CloseCode::GoingAway);
                    }
                }
                if session.valid_until() != valid_until {
                    valid_until = session.valid_until();
                    expiry.as_mut().reset(deadline(valid_until));
                }
            }
        }
    }
}

/// Carry out one action of the session.
///
/// Replies and markers must not be lost, so they wait for room in the connection's own queue
/// (a subscriber of a durable topic may be catching up with a full queue and is not slow for
/// that). A client whose queue stays full for `slow_consumer_timeout` is a slow consumer.
async fn perform(shared: &Shared, mailbox: &Mailbox, action: Action) -> Result<(), StoreError> {
    let item = match action {
        Action::Reply(reply) => encode(&reply),
        Action::Mark(marker) => marker,
        // Boxed: the command and the channel send are the largest state of the read loop,
        // which every idle connection would otherwise carry.
        Action::Store(command) => return Box::pin(shared.store.send(command)).await,
        Action::History(request) => {
            let r#ref = request.r#ref.clone();
            let reply = Box::pin(history(shared, request))
                .await
                .unwrap_or_else(|e| store_error(e, r#ref));
            encode(&reply)
        }
        Action::Read(request) => {
            let r#ref = request.r#ref.clone();
            let reply = Box::pin(read(shared, request))
                .await
                .unwrap_or_else(|e| store_error(e, r#ref));
            encode(&reply)
        }
    };
    // Fast path: there is room (no timer, no shutdown watch needed).
    let Err(item) = mailbox.try_queue(item) else {
        return Ok(());
    };
    // Boxed: rare, and kept out of the state every idle connection carries.
    Box::pin(async {
        tokio::select! {
            _ = mailbox.send(item, shared.config.slow_consumer_timeout) => {}
            _ = shared.shutdown.cancelled() => {}
        }
    })
    .await;
    Ok(())
}

fn store_error(e: StoreError, r#ref: Option<String>) -> ServerMessage {
    ServerMessage::error(ErrorCode::Unavailable, e.to_string(), r#ref)
}

/// Stored messages of a topic after `since`, one page.
pub(crate) async fn history(shared: &Shared, h: History) -> Result<ServerMessage, StoreError> {
    let limit = h
        .limit
        .unwrap_or(shared.config.history_limit)
        .min(shared.config.history_limit) as usize;
    let page = shared
        .store
        .read(&h.topic, h.since.unwrap_or(0), limit)
        .await?;
    // The head after the read: `latest` is then never below an offset on the page.
    let head = shared.store.head(&h.topic);
    let epoch = head.as_ref().map(|h| h.epoch.clone()).unwrap_or_default();
    let last = page.rows.last().map_or(0, |r| r.offset);
    let latest = head.map_or(0, |h| h.latest).max(last);
    Ok(ServerMessage::History(HistoryPage {
        r#ref: h.r#ref,
        topic: h.topic,
        messages: page
            .rows
            .into_iter()
            .map(|r| message_of(r, &epoch))
            .collect(),
        epoch,
        latest,
        more: page.more,
    }))
}

/// A stream's latest snapshot (when it helps) and the events after it, one page.
pub(crate) async fn read(shared: &Shared, r: Read) -> Result<ServerMessage, StoreError> {
    let limit = shared.config.history_limit as usize;
    let from = r.from_version.unwrap_or(0);
    let version = shared.store.head(&r.stream).map_or(0, |h| h.latest);
    let snapshot = match shared.store.snapshot(&r.stream).await? {
        Some((v, state)) if v > from && v <= version => Some(Snapshot { version: v, state }),
        _ => None,
    };
    let after = snapshot.as_ref().map_or(from, |s| s.version);
    let page = shared.store.read(&r.stream, after, limit).await?;
    let version = version.max(page.rows.last().map_or(0, |r| r.offset));
    Ok(ServerMessage::Events(Events {
        r#ref: r.r#ref,
        stream: r.stream,
        version,
        snapshot,
        events: page.rows.into_iter().map(event_of).collect(),
        more: page.more,
    }))
}

/// A stored row as a `message` (history, replay).
fn message_of(row: Row, epoch: &str) -> MessageFrame {
    MessageFrame {
        topic: row.topic.to_string(),
        data: row.data,
        from: row.from,
        timestamp: row.timestamp,
        offset: Some(row.offset),
        epoch: Some(epoch.to_owned()),
    }
}

/// A stored row as an event (stream reads). Rows written by `append` hold the envelope
/// `{"type", "data"}`; plain publishes to a stream read back as type `"message"`.
pub(crate) fn event_of(row: Row) -> StoredEvent {
    #[derive(serde::Deserialize)]
    struct Envelope {
        data: Json,
    }
    let (r#type, data) = match row.event_type {
        Some(t) => match serde_json::from_str::<Envelope>(row.data.get()) {
            Ok(envelope) => (t, envelope.data),
            Err(_) => (t, row.data),
        },
        None => ("message".to_owned(), row.data),
    };
    StoredEvent {
        version: row.offset,
        r#type,
        data,
        timestamp: row.timestamp,
    }
}

/// How a failed read ends the connection: with the close code RFC 6455 §7.4.1 gives the
/// fault when a close frame can still be sent.
fn read_error(e: axum::Error) -> End {
    use tungstenite::error::ProtocolError;
    let inner = e.into_inner();
    tracing::debug!(error = %inner, "read failed");
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(CloseCode::MessageTooBig),
        Some(tungstenite::Error::Utf8(_)) => End::Close(CloseCode::InvalidPayload),
        Some(tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing,
        )) => End::Gone,
        Some(tungstenite::Error::Protocol(_)) => End::Close(CloseCode::ProtocolError),
        _ => End::Gone,
    }
}

/// When a token valid until `at` should close the connection (far away for no expiry, or
/// an expiry beyond what the clock can hold: never an overflow).
fn deadline(at: Option<SystemTime>) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    let wait = match at {
        None => NEVER,
        Some(at) => at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(NEVER),
    };
    now.checked_add(wait)
        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
}

fn encode(msg: &ServerMessage) -> Outbound {
    Outbound::Frame(Utf8Bytes::from(msg.encode()))
}

/// Why the writer stopped early.
enum Failed {
    /// The socket failed or the peer is gone.
    Socket,
    /// The client fell behind what retention keeps, or its socket accepted nothing for too
    /// long: it is a slow consumer.
    Slow,
}

/// The write half of a connection and its per-topic delivery cursors.
struct Writer {
    /// This connection (its own publishes are not echoed).
    id: ConnId,
    /// Its client id, the `from` of the rows it published (not echoed on catch-up either).
    client_id: Box<str>,
    sink: SplitSink<WebSocket, Message>,
    rx: mpsc::Receiver<Outbound>,
    stop_rx: oneshot::Receiver<Stop>,
    store: Store,
    /// Last offset sent, per tracked durable topic.
    cursors: Cursors,
    lagging: Arc<AtomicBool>,
    /// Replies from the store that found the queue full (written after each batch).
    pending: Arc<Pending>,
    overflow: CancellationToken,
    stuck_timeout: Duration,
}

impl Writer {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                stop = &mut self.stop_rx => {
                    if let Ok(stop) = stop {
                        Box::pin(self.stop(stop)).await;
                    }
                    return;
                }
                item = self.rx.recv() => {
                    let Some(item) = item else { return };
                    match self.batch(item).await {
                        Ok(()) => {}
                        Err(Failed::Socket) => return,
                        Err(Failed::Slow) => {
                            // Let the reader pick the close code, then send it if we can.
                            self.overflow.cancel();
                            if let Ok(stop) = (&mut self.stop_rx).await {
                                Box::pin(self.stop(stop)).await;
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Send (and flush) the close frame that ends the connection.
    async fn stop(&mut self, stop: Stop) {
        match stop {
            Stop::Close(code) => {
                let frame = CloseFrame {
                    code: code.code(),
                    reason: code.reason().into(),
                };
                let _ = timeout(CLOSE_GRACE, self.sink.send(Message::Close(Some(frame)))).await;
            }
            Stop::Echo => {
                let _ = timeout(CLOSE_GRACE, self.sink.flush()).await;
            }
        }
    }

    /// Write `first` and whatever else is queued (up to a batch), flush, then catch up on
    /// topics whose frames were dropped while the queue was full.
    async fn batch(&mut self, first: Outbound) -> Result<(), Failed> {
        self.write(first).await?;
        for _ in 1..MAX_BATCH {
            let Ok(item) = self.rx.try_recv() else { break };
            self.write(item).await?;
        }
        for reply in self.pending.take() {
            self.feed(reply).await?;
        }
        self.flush().await?;
        if self.lagging.swap(false, Ordering::AcqRel) {
            let topics: Vec<Arc<str>> = self.cursors.keys().cloned().collect();
            for topic in topics {
                Box::pin(self.sync(&topic)).await?;
            }
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Failed> {
        bounded(self.stuck_timeout, self.sink.flush()).await
    }

    async fn feed(&mut self, text: Utf8Bytes) -> Result<(), Failed> {
        bounded(self.stuck_timeout, self.sink.feed(Message::Text(text))).await
    }

    async fn write(&mut self, item: Outbound) -> Result<(), Failed> {
        match item {
            Outbound::Frame(text) => self.feed(text).await,
            Outbound::Heartbeat => {
                let beat = ServerMessage::Heartbeat(Heartbeat {
                    timestamp: Some(clock::now_rfc3339()),
                });
                self.feed(beat.encode().into()).await?;
                self.sink
                    .feed(Message::Ping(Default::default()))
                    .await
                    .map_err(|_| Failed::Socket)
            }
            Outbound::Track { topic, from } => {
                self.cursors.insert(topic, from);
                Ok(())
            }
            Outbound::Untrack { topic } => {
                self.cursors.remove(&topic);
                Ok(())
            }
            Outbound::Sync { topic } => Box::pin(self.sync(&topic)).await,
            Outbound::Durable(run) => self.write_run(&run).await,
            // The pending replies are written after the batch.
            Outbound::Wake => Ok(()),
        }
    }

    /// Write the frames of `run` that are after the topic's cursor (filling any gap before it
    /// from the store first), except the ones this connection published, and advance the
    /// cursor to the end of the run.
    async fn write_run(&mut self, run: &DurableRun) -> Result<(), Failed> {
        let Some(cursor) = self.cursors.get_mut(&run.topic) else {
            return Ok(());
        };
        let last = run.last();
        let before = *cursor;
        if last <= before || run.frames.is_empty() {
            return Ok(());
        }
        if run.first <= before + 1 {
            // The common case: the run continues (or overlaps) what was sent. One map lookup;
            // if a write fails the writer stops, so advancing the cursor first changes nothing.
            *cursor = last;
        } else {
            Box::pin(self.fill(&run.topic, run.first - 1)).await?;
            self.cursors.insert(Arc::clone(&run.topic), last);
        }
        let skip = usize::try_from(before.saturating_add(1).saturating_sub(run.first))
            .unwrap_or(usize::MAX);
        for (frame, publisher) in run.frames.iter().skip(skip) {
            if *publisher != Some(self.id) {
                self.feed(frame.clone()).await?;
            }
        }
        Ok(())
    }

    /// Deliver everything stored for `topic` up to its current head.
    async fn sync(&mut self, topic: &Arc<str>) -> Result<(), Failed> {
        match self.store.head(topic) {
            Some(head) => self.fill(topic, head.latest).await,
            None => Ok(()),
        }
    }

    /// Send stored messages of `topic` after the cursor, up to and including `target`.
    async fn fill(&mut self, topic: &Arc<str>, target: u64) -> Result<(), Failed> {
        let Some(mut cursor) = self.cursors.get(topic).copied() else {
            return Ok(());
        };
        let epoch = self.store.head(topic).map(|h| h.epoch).unwrap_or_default();
        while cursor < target {
            let rows = match self.store.read(topic, cursor, CATCH_UP_PAGE).await {
                Ok(page) => page.rows,
                Err(e) => {
                    tracing::warn!("catch-up read of {topic} failed: {e}");
                    return Err(Failed::Slow);
                }
            };
            let Some(first) = rows.first() else { break };
            if first.offset != cursor + 1 {
                // What this client missed has been trimmed: it fell behind retention.
                tracing::debug!(%topic, cursor, first = first.offset, "fell behind retention");
                return Err(Failed::Slow);
            }
            for row in rows {
                if row.offset > target {
                    break;
                }
                cursor = row.offset;
                if *row.from == *self.client_id {
                    continue;
                }
                let frame = ServerMessage::Message(message_of(row, &epoch));
                self.feed(Utf8Bytes::from(frame.encode())).await?;
            }
            self.cursors.insert(Arc::clone(topic), cursor);
            self.flush().await?;
        }
        Ok(())
    }
}

/// Runs one socket operation (a feed or a flush), arming the slow-consumer timer only if the
/// operation cannot complete at once. Almost every frame just lands in tungstenite's write
/// buffer and almost every flush completes in one `send`, so the common path creates no timer
/// (creating one per frame cost ~10 % of the server's CPU in fan-out).
async fn bounded<E>(
    limit: Duration,
    op: impl Future<Output = Result<(), E>>,
) -> Result<(), Failed> {
    let mut op = pin!(op);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await {
        return done.map_err(|_| Failed::Socket);
    }
    match timeout(limit, op).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Failed::Socket),
        Err(_) => Err(Failed::Slow),
    }
}

/// Per-topic delivery cursors. Looked up once per durable frame, so the hash is a cheap one
/// (FxHash) instead of SipHash: the keys are this connection's own subscriptions (at most
/// `max_subscriptions`), so flooding the map can only slow down the client doing it.
type Cursors = HashMap<Arc<str>, u64, BuildHasherDefault<FxHasher>>;

/// The Fx hash (rustc's): a multiply and a rotate per word.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
