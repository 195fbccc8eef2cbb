//! The socket side of a session: a reader loop and a writer task per connection.
//!
//! The reader owns the [`Session`] and the read half of the WebSocket; it decodes frames,
//! runs the heartbeat/liveness timer and watches for shutdown, overflow and token expiry.
//! The writer owns the write half and drains the connection's bounded outbound queue,
//! batching whatever is already queued into one flush. Publishers only ever `try_send`
//! into that queue, so a slow socket stalls nobody but its own writer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tidings_protocol::server::Heartbeat;
use tidings_protocol::{CloseCode, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::clock;
use crate::hub::{Mailbox, Outbound};
use crate::limits::ConnPermit;
use crate::session::Session;
use crate::state::Shared;

/// How long a closing connection gets to flush its close frame and hear the reply.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames written before a flush, at most, when several are queued.
const MAX_BATCH: usize = 64;

/// Run one upgraded connection to its end.
pub async fn run(socket: WebSocket, shared: Arc<Shared>, identity: Identity, permit: ConnPermit) {
    let _permit = permit;
    let config = &shared.config;
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let overflow = CancellationToken::new();
    let mailbox = Mailbox::new(shared.hub.next_conn_id(), tx, overflow.clone());
    let mut session = Session::new(Arc::clone(&shared), identity, mailbox.clone());
    shared.metrics.connections.inc();
    shared.metrics.connections_opened.inc();
    tracing::debug!(client_id = session.client_id(), "connected");

    let (sink, mut stream) = socket.split();
    let (close_tx, close_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(sink, rx, close_rx));
    mailbox.offer(encode(&session.connected()));

    let close = read_loop(
        &shared,
        &mut session,
        &mailbox,
        &overflow,
        &mut stream,
        &mut writer,
    )
    .await;

    if let Some(code) = close {
        shared.metrics.closed(code.code());
        if code == CloseCode::SlowConsumer {
            shared.metrics.slow_consumer_closes.inc();
        }
        tracing::debug!(
            client_id = session.client_id(),
            code = code.code(),
            "closing"
        );
        let _ = close_tx.send(code);
        // Give the client a moment to answer the close frame, then let go either way.
        let _ = timeout(CLOSE_GRACE, async {
            while let Some(Ok(frame)) = stream.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    } else {
        drop(close_tx);
    }
    if !writer.is_finished() && timeout(CLOSE_GRACE, &mut writer).await.is_err() {
        writer.abort();
    }
    shared.metrics.connections.dec();
    tracing::debug!(client_id = session.client_id(), "disconnected");
}

/// Read frames until the connection should end; returns the close code to send, or `None`
/// when the peer is already gone.
async fn read_loop(
    shared: &Shared,
    session: &mut Session,
    mailbox: &Mailbox,
    overflow: &CancellationToken,
    stream: &mut SplitStream<WebSocket>,
    writer: &mut tokio::task::JoinHandle<()>,
) -> Option<CloseCode> {
    let config = &shared.config;
    let mut heartbeat = interval_at(
        Instant::now() + config.heartbeat_interval,
        config.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let mut expires_at = session.expires_at();
    let expiry = sleep_until(deadline(expires_at));
    tokio::pin!(expiry);
    let mut replies = Vec::new();

    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return Some(CloseCode::GoingAway),
            _ = overflow.cancelled() => return Some(CloseCode::SlowConsumer),
            _ = &mut *writer => return None,
            _ = &mut expiry => return Some(CloseCode::TokenExpired),
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > config.heartbeat_timeout {
                    return Some(CloseCode::HeartbeatTimeout);
                }
                mailbox.offer(Outbound::Heartbeat);
            }
            frame = stream.next() => {
                let frame = match frame {
                    None => return None,
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => return read_error(e),
                };
                last_seen = Instant::now();
                match frame {
                    Message::Text(text) => session.on_text(text.as_str(), &mut replies),
                    Message::Binary(_) => session.on_binary(&mut replies),
                    // tungstenite answers pings itself; a pong only proves liveness.
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => return None,
                }
                for reply in replies.drain(..) {
                    // A client that does not read its replies is a slow consumer like any
                    // other: the overflow signal fires and the next loop turn closes it.
                    mailbox.offer(encode(&reply));
                }
                if session.expires_at() != expires_at {
                    expires_at = session.expires_at();
                    expiry.as_mut().reset(deadline(expires_at));
                }
            }
        }
    }
}

/// The close code for a failed read, if a close frame can still be sent.
fn read_error(e: axum::Error) -> Option<CloseCode> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some(CloseCode::MessageTooBig),
        _ => {
            tracing::debug!(error = %inner, "read failed");
            None
        }
    }
}

/// When a token expiring at `at` should close the connection (far away for no expiry).
fn deadline(at: Option<SystemTime>) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    match at {
        None => Instant::now() + NEVER,
        Some(at) => Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default(),
    }
}

fn encode(msg: &ServerMessage) -> Outbound {
    Outbound::Frame(Utf8Bytes::from(msg.encode()))
}

/// Drain the outbound queue into the socket until told to close or the socket fails.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    mut close_rx: oneshot::Receiver<CloseCode>,
) {
    loop {
        tokio::select! {
            biased;
            code = &mut close_rx => {
                if let Ok(code) = code {
                    let frame = CloseFrame { code: code.code(), reason: code.reason().into() };
                    let _ = timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
                }
                return;
            }
            item = rx.recv() => {
                let Some(item) = item else { return };
                if write(&mut sink, item).await.is_err() {
                    return;
                }
                let mut batched = 1;
                while batched < MAX_BATCH {
                    let Ok(item) = rx.try_recv() else { break };
                    if write(&mut sink, item).await.is_err() {
                        return;
                    }
                    batched += 1;
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Queue one item into the socket's write buffer (flushed by the caller).
async fn write(
    sink: &mut SplitSink<WebSocket, Message>,
    item: Outbound,
) -> Result<(), axum::Error> {
    match item {
        Outbound::Frame(text) => sink.feed(Message::Text(text)).await,
        Outbound::Heartbeat => {
            let beat = ServerMessage::Heartbeat(Heartbeat {
                timestamp: Some(clock::now_rfc3339()),
            });
            sink.feed(Message::Text(beat.encode().into())).await?;
            sink.feed(Message::Ping(Default::default())).await
        }
    }
}
