//! The write side of a connection: it drains the connection's bounded queue into the socket,
//! batching whatever is already queued into one flush, and applies the cursor rule
//! ([`Cursors`]) to every run of a durable topic, filling gaps from the store.
//!
//! It runs inside the connection's one task (`connection.rs` selects between the socket and
//! the queue), and owns the whole WebSocket: no second task, no split halves, no lock per
//! frame. Publishers only ever push into the queue without waiting, so a slow socket stalls
//! nobody but this connection. A socket that accepts nothing for `slow_consumer_timeout` makes
//! the connection a slow consumer, as does falling behind what retention keeps.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tidings_protocol::ServerMessage;
use tidings_protocol::server::Heartbeat;
use tokio::time::timeout;

use super::cursors::{Admit, Cursors};
use super::upgrade::WebSocket;
use crate::clock;
use crate::hub::{ConnId, DurableRun, Mailbox, Outbound};
use crate::ops;
use crate::state::Shared;
use crate::wire::Frame;
use tidings_protocol::CloseCode;

/// How long a closing connection gets to flush its close frame.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames written before a flush, at most, when several are queued.
const MAX_BATCH: usize = 64;

/// Bytes queued in the socket before a write is forced (the writer flushes after each
/// batch anyway).
const WRITE_BUFFER: usize = 64 * 1024;

/// Rows read from the store per page while catching up (the store also bounds it in bytes).
const CATCH_UP_PAGE: usize = 256;

/// How the connection ends, as far as writing goes.
pub enum Stop {
    /// Send a close frame with this code.
    Close(CloseCode),
    /// Flush the close frame the socket queued in answer to the peer's.
    Echo,
}

/// Why writing stopped.
#[derive(Debug)]
pub enum Failed {
    /// The socket failed or the peer is gone.
    Socket,
    /// The client fell behind what retention keeps, or its socket accepted nothing for too
    /// long: it is a slow consumer.
    Slow,
}

/// The socket of a connection, its queue and its per-topic delivery cursors.
pub struct Writer {
    /// This connection (its own publishes are not echoed).
    pub id: ConnId,
    /// Its client id, the `from` of the rows it published (not echoed on catch-up either).
    pub client_id: Arc<str>,
    /// The whole WebSocket: this connection's task reads and writes it.
    pub socket: WebSocket,
    /// The connection's queue (the hub, the store's replies and the session push into it).
    pub mailbox: Mailbox,
    /// The server (its store, to catch up from; its slow-consumer timeout).
    pub shared: Arc<Shared>,
    /// Last offset sent, per tracked durable topic.
    pub cursors: Cursors,
}

impl Writer {
    /// Put `item` in the queue; while it is full, write out what is queued first (this task
    /// is the one that drains it). Replies and cursor markers are never dropped this way.
    ///
    /// # Errors
    /// [`Failed`] when the socket fails or accepts nothing for the slow-consumer timeout.
    pub async fn queue(&mut self, mut item: Outbound) -> Result<(), Failed> {
        loop {
            match self.mailbox.try_queue(item) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    item = back;
                    match self.mailbox.try_recv() {
                        Some(first) => Box::pin(self.batch(first)).await?,
                        // Emptied meanwhile (cannot happen: only this task drains it).
                        None => continue,
                    }
                }
            }
        }
    }

    /// Send (and flush) the close frame that ends the connection.
    pub async fn stop(&mut self, stop: Stop) {
        match stop {
            Stop::Close(code) => {
                self.socket
                    .close(Frame::close(Some((code.code(), code.reason()))));
                let _ = timeout(CLOSE_GRACE, self.socket.flush()).await;
            }
            Stop::Echo => {
                let _ = timeout(CLOSE_GRACE, self.socket.flush()).await;
            }
        }
    }

    /// Write `first` and whatever else is queued (up to a batch) and the replies waiting beside
    /// the queue, flush, then catch up on topics whose frames were dropped while the queue was
    /// full.
    pub async fn batch(&mut self, first: Outbound) -> Result<(), Failed> {
        self.write(first).await?;
        for _ in 1..MAX_BATCH {
            let Some(item) = self.mailbox.try_recv() else {
                break;
            };
            self.write(item).await?;
        }
        for reply in self.mailbox.pending().take() {
            self.feed(reply).await?;
        }
        self.flush().await?;
        if self.mailbox.take_lagging() {
            for topic in self.cursors.topics() {
                Box::pin(self.sync(&topic, false)).await?;
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Write everything queued in the socket.
    pub async fn flush(&mut self) -> Result<(), Failed> {
        bounded(
            self.shared.ops.config.slow_consumer_timeout,
            self.socket.flush(),
        )
        .await
    }

    /// Queue `frame` in the socket, writing first if a lot is queued already.
    async fn feed(&mut self, frame: Frame) -> Result<(), Failed> {
        if self.socket.queued() >= WRITE_BUFFER {
            self.flush().await?;
        }
        self.socket.feed(frame);
        Ok(())
    }

    async fn write(&mut self, item: Outbound) -> Result<(), Failed> {
        match item {
            Outbound::Frame(text) => self.feed(text).await,
            Outbound::Heartbeat => {
                let beat = ServerMessage::Heartbeat(Heartbeat {
                    timestamp: Some(clock::now_rfc3339()),
                });
                self.feed(Frame::encode(&beat)).await?;
                self.feed(Frame::ping()).await
            }
            Outbound::Track { topic, from } => {
                self.cursors.track(topic, from);
                Ok(())
            }
            Outbound::Untrack { topic } => {
                self.cursors.untrack(&topic);
                Ok(())
            }
            Outbound::Sync { topic, own } => Box::pin(self.sync(&topic, own)).await,
            Outbound::Durable(run) => self.write_run(run).await,
            // The pending replies are written after the batch.
            Outbound::Wake => Ok(()),
        }
    }

    /// Write the frames of `run` the cursor rule admits, except the ones this connection
    /// published.
    async fn write_run(&mut self, run: Arc<DurableRun>) -> Result<(), Failed> {
        let skip = match self.cursors.admit(&run.topic, run.first, run.last()) {
            Admit::Ignore => return Ok(()),
            Admit::Deliver { skip } => skip,
            Admit::Fill { upto } => {
                Box::pin(self.fill(&run.topic, upto, false)).await?;
                self.cursors.advance(&run.topic, run.last());
                0
            }
        };
        if self.socket.queued() >= WRITE_BUFFER {
            self.flush().await?;
        }
        // One shared item for the whole run: no reference count per frame.
        self.socket.feed_run(run, skip, self.id);
        Ok(())
    }

    /// Deliver everything stored for `topic` up to its current head.
    /// (`own`: the client asked for this replay with `since`, so its own messages are part of
    /// it.)
    async fn sync(&mut self, topic: &Arc<str>, own: bool) -> Result<(), Failed> {
        match self.shared.ops.store.head(topic).await {
            Ok(Some(head)) => self.fill(topic, head.latest, own).await,
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!("catch-up head of {topic} failed: {e}");
                Err(Failed::Slow)
            }
        }
    }

    /// Send stored messages of `topic` after the cursor, up to and including `target`.
    /// This connection's own rows are skipped (no echo) unless `own`.
    async fn fill(&mut self, topic: &Arc<str>, target: u64, own: bool) -> Result<(), Failed> {
        let Some(mut cursor) = self.cursors.get(topic) else {
            return Ok(());
        };
        let epoch = match self.shared.ops.store.head(topic).await {
            Ok(head) => head.map(|h| h.epoch).unwrap_or_default(),
            Err(e) => {
                tracing::warn!("catch-up head of {topic} failed: {e}");
                return Err(Failed::Slow);
            }
        };
        while cursor < target {
            let rows = match self
                .shared
                .ops
                .store
                .read(topic, cursor, CATCH_UP_PAGE)
                .await
            {
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
                if !own && *row.from == *self.client_id {
                    continue;
                }
                let frame = ServerMessage::Message(ops::message(&row, &epoch));
                self.feed(Frame::encode(&frame)).await?;
            }
            self.cursors.advance(topic, cursor);
            self.flush().await?;
        }
        Ok(())
    }
}

/// Runs one socket write, arming the slow-consumer timer only if it cannot complete at once.
/// Almost every flush completes in one vectored `send`, so the common path creates no timer
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
