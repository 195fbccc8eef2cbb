//! One upgraded connection from start to close: the reader loop and the executor of the
//! session's actions.
//!
//! **One task per connection.** It owns the [`Session`] and the [`Writer`] (the whole
//! WebSocket and the connection's queue) and selects between them: queued items are written
//! (the writer's batch), frames read are fed (with the time) to the session, whose
//! [`Action`]s it carries out through the operations layer. It also runs the
//! heartbeat/liveness timer, watches shutdown, overflow and token expiry, and picks the close
//! code. A reply that finds the queue full makes this task write what is queued first (it is
//! the one that drains it), so nothing waits on another task.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tidings_protocol::server::{Appended, Error as ErrorFrame, Member, Published, Subscribed};
use tidings_protocol::{CloseCode, ServerMessage, TopicMap};
use tokio::time::{Instant, sleep_until, timeout};

use super::codec::Incoming;
use super::cursors::Cursors;
use super::session::{Action, Env, Limits, Session, SubscribeAction};
use super::socket::ReadError;
use super::upgrade::WebSocket;
use super::writer::{CLOSE_GRACE, Failed, Stop, Writer};
use crate::auth::Identity;
use crate::hub::{self, Mailbox, Outbound};
use crate::limits::ConnPermit;
use crate::ops::{self, AppendOp, OpError, PublishOp, Routed, Subscription, Who};
use crate::state::Shared;
use crate::store::{Reply, StoreError};
use crate::wire::Frame;

/// Start one upgraded connection; the future runs it to its end.
///
/// The connection's state is built here, before the future exists, and moved into it once:
/// an `async fn` would keep its arguments in the future beside the state made of them, and
/// this future is what every idle connection holds.
pub fn run(
    socket: WebSocket,
    shared: Arc<Shared>,
    identity: Identity,
    permit: ConnPermit,
) -> impl Future<Output = ()> + Send + 'static {
    let ops = &shared.ops;
    let config = &ops.config;
    let mailbox = Mailbox::new(ops.hub.next_conn_id(), config.queue_capacity);
    let client_id = format!("{}-{}", shared.node, mailbox.id());
    let session = Session::new(
        client_id,
        identity,
        Limits::of(config),
        Instant::now().into(),
    );
    ops.metrics.connections.inc();
    ops.metrics.connections_opened.inc();
    tracing::debug!(client_id = session.client_id(), "connected");
    mailbox.offer(encode(&session.connected()));
    shared.enter(&mailbox);
    let writer = Writer {
        id: mailbox.id(),
        client_id: session.shared_client_id(),
        socket,
        mailbox,
        shared: Arc::clone(&shared),
        cursors: Cursors::default(),
    };
    let mut connection = Connection {
        session,
        writer,
        shared,
        _permit: permit,
    };
    async move { connection.drive().await }
}

/// One live connection. Dropping it, however the connection ends (a panic included: tokio
/// catches it and drops the task), removes it from every topic it subscribed to, makes it
/// leave their presence, and stops counting it in the `connections` gauge; the permit goes
/// last.
struct Connection {
    session: Session,
    writer: Writer,
    shared: Arc<Shared>,
    _permit: ConnPermit,
}

impl Connection {
    /// Read, write and carry out the session's actions until the connection ends, then
    /// close it as RFC 6455 asks.
    async fn drive(&mut self) {
        let end = read_loop(&self.shared, &mut self.session, &mut self.writer).await;
        self.writer.mailbox.close();
        let client_id = self.session.client_id();
        let metrics = &self.shared.ops.metrics;
        match end {
            End::Close(code) => {
                metrics.closed(code.code());
                if code == CloseCode::SlowConsumer {
                    metrics.slow_consumer_closes.inc();
                }
                tracing::debug!(client_id, code = code.code(), "closing");
                Box::pin(self.writer.stop(Stop::Close(code))).await;
                // Give the client a moment to answer the close frame, then let go either way.
                let socket = &mut self.writer.socket;
                let _ = Box::pin(timeout(CLOSE_GRACE, async {
                    while let Some(Ok(frame)) = socket.next().await {
                        if matches!(frame, Incoming::Close(_)) {
                            break;
                        }
                    }
                }))
                .await;
            }
            End::PeerClosed => {
                // The socket queued the answer to the peer's close frame (its code echoed);
                // it leaves with this flush. (A code that may not be sent is a protocol
                // error: 1002.)
                Box::pin(self.writer.stop(Stop::Echo)).await;
            }
            End::Gone => {}
        }
        tracing::debug!(client_id, "disconnected");
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let ops = &self.shared.ops;
        let client_id = self.session.client_id();
        for topic in self.session.subscriptions() {
            ops::unsubscribe(ops, self.writer.mailbox.id(), topic);
            ops::presence::leave(ops, topic, client_id);
        }
        ops.metrics.connections.dec();
        self.shared.leave(self.writer.mailbox.id());
    }
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

/// Read frames until the connection should end, and say how it ended.
///
/// Most connections wait here almost all the time, so what this future holds while it
/// waits is what an idle connection costs: the session, the writer, one timer (the next
/// heartbeat or the token's expiry, whichever comes first) and the shutdown signal. The work
/// a wake-up does (writing a batch, carrying out the session's actions) runs in boxed
/// futures that exist only while it runs.
async fn read_loop(shared: &Shared, session: &mut Session, writer: &mut Writer) -> End {
    let config = &shared.ops.config;
    let mut next_beat = Instant::now() + config.heartbeat_interval;
    let mut last_seen = Instant::now();
    let mut expires = deadline(session.valid_until());
    let timer = sleep_until(next_beat.min(expires));
    tokio::pin!(timer);

    loop {
        let woke = tokio::select! {
            biased;
            _ = &mut timer => Wake::Timer,
            // Shutdown and overflow come through the mailbox too.
            item = writer.mailbox.recv() => match item {
                Ok(item) => Wake::Queued(item),
                Err(hub::Stop::Overflow) => return End::Close(CloseCode::SlowConsumer),
                Err(hub::Stop::Shutdown) => return End::Close(CloseCode::GoingAway),
            },
            frame = writer.socket.next() => match frame {
                None => return End::Gone,
                Some(Ok(frame)) => Wake::Read(frame),
                Some(Err(e)) => return read_error(e),
            },
        };
        // A timer that fired must be armed again even for the same deadline.
        let fired = matches!(woke, Wake::Timer);
        match woke {
            Wake::Timer => {
                let now = Instant::now();
                if now >= expires {
                    return End::Close(CloseCode::TokenExpired);
                }
                if now >= next_beat {
                    if last_seen.elapsed() > config.heartbeat_timeout {
                        return End::Close(CloseCode::HeartbeatTimeout);
                    }
                    // A full queue is busy writing anyway: skip the beat rather than wait.
                    let _ = writer.mailbox.try_queue(Outbound::Heartbeat);
                    next_beat = now + config.heartbeat_interval;
                }
            }
            Wake::Queued(item) => {
                if let Err(failed) = Box::pin(writer.batch(item)).await {
                    return ended(failed);
                }
            }
            Wake::Read(frame) => {
                last_seen = Instant::now();
                if let Err(end) =
                    Box::pin(on_frame(shared, session, writer, frame, last_seen)).await
                {
                    return end;
                }
                if session.take_renewed() {
                    expires = deadline(session.valid_until());
                }
            }
        }
        let wake_at = next_beat.min(expires);
        if fired || timer.deadline() != wake_at {
            timer.as_mut().reset(wake_at);
        }
    }
}

/// What woke the connection.
enum Wake {
    /// The heartbeat or the token's expiry is due.
    Timer,
    /// An item arrived in the queue.
    Queued(Outbound),
    /// A frame arrived from the client.
    Read(Incoming),
}

/// Handle one frame from the client: feed it to the session, carry out its actions, and
/// write the replies (and any pong) in this turn rather than on the next wake-up.
async fn on_frame(
    shared: &Shared,
    session: &mut Session,
    writer: &mut Writer,
    frame: Incoming,
    now: Instant,
) -> Result<(), End> {
    let ops = &shared.ops;
    let env = Env {
        auth: &ops.auth,
        metrics: &ops.metrics,
    };
    let mut actions = Vec::new();
    match frame {
        Incoming::Text(text) => session.on_text(&env, &text, now.into(), &mut actions),
        Incoming::Binary => session.on_binary(&env, &mut actions),
        // The socket queued the pong; a pong only proves liveness.
        Incoming::Ping(_) | Incoming::Pong => {}
        Incoming::Close(_) => return Err(End::PeerClosed),
    }
    let mut unavailable = Vec::new();
    for action in actions {
        let who = (session.identity(), session.client_id());
        perform(shared, who, writer, action, &mut unavailable).await?;
        // Subscriptions the store could not start are not subscriptions.
        for topic in unavailable.drain(..) {
            session.forget(&topic);
        }
    }
    if let Some(item) = writer.mailbox.try_recv() {
        writer.batch(item).await.map_err(ended)?;
    }
    if writer.socket.queued() > 0 {
        writer.flush().await.map_err(ended)?;
    }
    Ok(())
}

/// Carry out one action of the session.
///
/// Replies and markers must not be lost, so a full queue is written out first (a subscriber
/// of a durable topic may be catching up with a full queue and is not slow for that); a
/// socket that accepts nothing for `slow_consumer_timeout` is a slow consumer. Fails when the
/// connection must end: the store is gone (1001), the socket failed, or it is slow (4002).
/// Topics whose subscription could not start (the store is unreachable) are added to
/// `unavailable`.
async fn perform(
    shared: &Shared,
    (identity, client_id): (&Identity, &str),
    writer: &mut Writer,
    action: Action,
    unavailable: &mut Vec<Arc<str>>,
) -> Result<(), End> {
    let ops = &shared.ops;
    let mailbox = &writer.mailbox.clone();
    let who = Who::User(identity);
    let reply = match action {
        Action::Reply(reply) => reply,
        Action::Subscribe(request) => {
            let member = Member {
                client_id: client_id.to_owned(),
                user: identity.user.clone(),
                info: identity
                    .info
                    .clone()
                    .unwrap_or_else(tidings_protocol::json_null),
            };
            return Box::pin(subscribe(shared, writer, request, member, unavailable)).await;
        }
        Action::Unsubscribe(topics) => {
            for topic in topics {
                ops::unsubscribe(ops, mailbox.id(), &topic);
                ops::presence::leave(ops, &topic, client_id);
                writer
                    .queue(Outbound::Untrack { topic })
                    .await
                    .map_err(ended)?;
            }
            return Ok(());
        }
        // Boxed: the operations' futures are the largest state of the read loop, which every
        // idle connection would otherwise carry.
        Action::Publish(m, started) => {
            let r#ref = m.r#ref.clone();
            // Only a request with a `ref` gets an ack on an ephemeral topic, naming the topic.
            let ack_topic = r#ref.as_ref().map(|_| m.topic.clone());
            let op = PublishOp {
                topic: m.topic,
                data: m.data,
                from: client_id.to_owned(),
                origin: Some(mailbox.id()),
                id: m.id,
                started,
            };
            let on_commit = publish_reply(mailbox.clone(), r#ref.clone());
            match Box::pin(ops::publish(ops, who, op, Some(on_commit))).await {
                Ok(Routed::Durable) => return Ok(()),
                Ok(Routed::Ephemeral { .. }) => match ack_topic {
                    None => return Ok(()),
                    Some(topic) => ServerMessage::Published(Published {
                        r#ref,
                        topic,
                        offset: None,
                        epoch: None,
                    }),
                },
                Err(OpError::Store(StoreError::Closed)) => {
                    return Err(End::Close(CloseCode::GoingAway));
                }
                Err(e) => refusal(ops, &e, r#ref),
            }
        }
        Action::Append(m) => {
            let r#ref = m.r#ref.clone();
            let op = AppendOp {
                stream: m.stream.clone(),
                expected: m.expected_version,
                events: m.events,
                from: client_id.to_owned(),
            };
            let on_commit = append_reply(mailbox.clone(), m.stream, r#ref.clone());
            match Box::pin(ops::append(ops, who, op, Some(on_commit))).await {
                Ok(()) => return Ok(()),
                Err(OpError::Store(StoreError::Closed)) => {
                    return Err(End::Close(CloseCode::GoingAway));
                }
                Err(e) => refusal(ops, &e, r#ref),
            }
        }
        Action::History(request) => {
            let r#ref = request.r#ref.clone();
            Box::pin(ops::history(ops, who, request))
                .await
                .unwrap_or_else(|e| refusal(ops, &e, r#ref))
        }
        Action::Presence(q) => {
            let r#ref = q.r#ref.clone();
            Box::pin(ops::presence::query(ops, who, q, false))
                .await
                .unwrap_or_else(|e| refusal(ops, &e, r#ref))
        }
        Action::PresenceStats(q) => {
            let r#ref = q.r#ref.clone();
            Box::pin(ops::presence::query(ops, who, q, true))
                .await
                .unwrap_or_else(|e| refusal(ops, &e, r#ref))
        }
        Action::Read(request) => {
            let r#ref = request.r#ref.clone();
            Box::pin(ops::read(ops, who, request))
                .await
                .unwrap_or_else(|e| refusal(ops, &e, r#ref))
        }
    };
    writer.queue(encode(&reply)).await.map_err(ended)
}

/// Carry out an accepted `subscribe`: the cursor of every durable topic goes to the writer
/// before the reply, and the store sync after it, so replay and live traffic meet with no
/// gap and no duplicate (the cursor rule drops what arrives twice). A topic the store cannot
/// start (Redis unreachable) is refused with `UNAVAILABLE`.
async fn subscribe(
    shared: &Shared,
    writer: &mut Writer,
    mut request: SubscribeAction,
    member: Member,
    unavailable: &mut Vec<Arc<str>>,
) -> Result<(), End> {
    let mailbox = &writer.mailbox.clone();
    let mut joined = Vec::new();
    let mut recovered = TopicMap::new();
    let mut positions = TopicMap::new();
    let mut syncs = Vec::new();
    for (topic, new, since) in &request.topics {
        let subscription =
            match ops::subscribe(&shared.ops, mailbox, topic, *new, since.as_ref()).await {
                Ok(subscription) => subscription,
                Err(e) => {
                    let code = ops::store_code(&e);
                    shared.ops.metrics.error(code);
                    request.refused.insert(
                        topic.to_string(),
                        tidings_protocol::server::Refusal {
                            code,
                            message: e.to_string(),
                        },
                    );
                    request.all.retain(|t| **t != **topic);
                    if *new {
                        unavailable.push(Arc::clone(topic));
                    }
                    continue;
                }
            };
        if *new {
            joined.push(Arc::clone(topic));
        }
        match subscription {
            Subscription::Unchanged => {}
            Subscription::Live { recovered: r } => {
                if let Some(r) = r {
                    recovered.insert(topic.to_string(), r);
                }
            }
            Subscription::Durable {
                start,
                recovered: r,
            } => {
                if let Some(r) = r {
                    recovered.insert(topic.to_string(), r);
                }
                let from = start.offset;
                positions.insert(topic.to_string(), start);
                writer
                    .queue(Outbound::Track {
                        topic: Arc::clone(topic),
                        from,
                    })
                    .await
                    .map_err(ended)?;
                syncs.push((Arc::clone(topic), since.is_some()));
            }
        }
    }
    if request.topics.len() == 1
        && request.refused.len() == 1
        && positions.is_empty()
        && recovered.is_empty()
        && let Some((_, refusal)) = request.refused.pop_first()
    {
        // A request for a single topic that is refused gets an `error`, as it always did.
        let error = ServerMessage::error(refusal.code, refusal.message, request.r#ref);
        return writer.queue(encode(&error)).await.map_err(ended);
    }
    let reply = ServerMessage::Subscribed(Subscribed {
        topics: request.all,
        recovered: (!recovered.is_empty()).then_some(recovered),
        positions: (!positions.is_empty()).then_some(positions),
        refused: (!request.refused.is_empty()).then_some(request.refused),
        r#ref: request.r#ref,
    });
    writer.queue(encode(&reply)).await.map_err(ended)?;
    for (topic, own) in syncs {
        writer
            .queue(Outbound::Sync { topic, own })
            .await
            .map_err(ended)?;
    }
    // Members of presence topics are announced once subscribed.
    for topic in joined {
        ops::presence::join(&shared.ops, &topic, mailbox.id(), member.clone());
    }
    Ok(())
}

/// How a write failure ends the connection.
fn ended(failed: Failed) -> End {
    match failed {
        Failed::Socket => End::Gone,
        Failed::Slow => End::Close(CloseCode::SlowConsumer),
    }
}

/// The `error` a refused operation gets (counted).
fn refusal(ops: &ops::Ops, e: &OpError, r#ref: Option<String>) -> ServerMessage {
    let code = e.code();
    ops.metrics.error(code);
    let current_version = match e {
        OpError::Store(StoreError::Conflict { current, .. }) => Some(*current),
        _ => None,
    };
    ServerMessage::Error(ErrorFrame {
        code,
        message: e.to_string(),
        r#ref,
        current_version,
    })
}

/// Where a durable publish's outcome goes: a `published` ack when the request had a `ref`, an
/// `error` (with the `ref`, if any) when the store refused or failed.
fn publish_reply(mailbox: Mailbox, r#ref: Option<String>) -> Reply {
    Box::new(move |outcome| {
        let frame = match outcome {
            Ok(c) if r#ref.is_some() => ServerMessage::Published(Published {
                r#ref,
                topic: c.topic,
                offset: Some(c.offset),
                epoch: Some(c.epoch),
            }),
            Ok(_) => return,
            Err(e) => store_refusal(&e, r#ref),
        };
        mailbox.offer_reply(Frame::encode(&frame));
    })
}

/// Where an append's outcome goes: `appended`, or an `error` (`VERSION_CONFLICT` with the
/// stream's version).
fn append_reply(mailbox: Mailbox, stream: String, r#ref: Option<String>) -> Reply {
    Box::new(move |outcome| {
        let frame = match outcome {
            Ok(c) => ServerMessage::Appended(Appended {
                r#ref,
                stream,
                version: c.offset,
            }),
            Err(e) => store_refusal(&e, r#ref),
        };
        mailbox.offer_reply(Frame::encode(&frame));
    })
}

/// The `error` for a store outcome (on the writer thread: no metrics lock contention).
fn store_refusal(e: &StoreError, r#ref: Option<String>) -> ServerMessage {
    let current_version = match e {
        StoreError::Conflict { current, .. } => Some(*current),
        _ => None,
    };
    let message = match e {
        StoreError::Conflict { expected, current } => {
            format!("expected version {expected}, the stream is at {current}")
        }
        other => other.to_string(),
    };
    ServerMessage::Error(ErrorFrame {
        code: ops::store_code(e),
        message,
        r#ref,
        current_version,
    })
}

/// How a failed read ends the connection: a frame fault with the close code RFC 6455
/// §7.4.1 gives it, a failed socket without a word.
fn read_error(e: ReadError) -> End {
    tracing::debug!(error = %e, "read failed");
    match e {
        ReadError::Frame(fault) => End::Close(fault.close_code()),
        ReadError::Io(_) => End::Gone,
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
    Outbound::Frame(Frame::encode(msg))
}
