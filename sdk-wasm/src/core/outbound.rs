//! What goes to the server and how requests settle: (re)subscribing, the outbox, retries of
//! rate-limited requests, the frame-size limit, losing and closing the connection.

use tidings_protocol::client::{self, Ping};
use tidings_protocol::{ClientMessage, TopicMap};

use super::*;

impl Core {
    /// The server said `connected`: restore subscriptions (with `since` where we have a
    /// position), resend unacknowledged publishes, send requests queued while offline.
    pub(super) fn on_connected(&mut self, ctx: Ctx) {
        self.subscribe_retry_at = None;
        self.subscribe_unsent(ctx);
        self.flush_outbox(ctx);
        if let Some(limit) = self.max_frame {
            for (request, bytes) in self.requests.too_large(limit) {
                self.requests.forget(request);
                self.reject_too_large(request, bytes);
            }
        }
        for (id, frame) in self.requests.take_queued() {
            self.send_frame(ctx, frame);
            self.requests.sent(id, ctx.now);
        }
    }

    /// Send one `subscribe` for every topic not subscribed on this socket yet (with `since`
    /// where a position is known), unless the server asked to wait (`RATE_LIMITED`).
    pub(super) fn subscribe_unsent(&mut self, ctx: Ctx) {
        if !self.conn.is_connected() || self.subscribe_retry_at.is_some() {
            return;
        }
        let topics = self.subs.unsent();
        if topics.is_empty() {
            return;
        }
        let mut since = TopicMap::new();
        for t in &topics {
            if let Some(p) = self.subs.mark_sent(t) {
                since.insert(t.clone(), p);
            }
        }
        self.send_subscribe(ctx, topics, (!since.is_empty()).then_some(since));
    }

    /// The server answered `RATE_LIMITED` to the request with `wire_ref`: it did nothing with
    /// it, so send it again after a growing, jittered delay. Returns false when the request is
    /// not ours or has been retried enough (it is then rejected like any other error).
    pub(super) fn retry_later(&mut self, ctx: Ctx, wire_ref: Option<&str>) -> bool {
        let Some((id, kind, attempts)) = self.requests.peek(wire_ref) else {
            return false;
        };
        match kind {
            RequestKind::Subscribe(topics) => {
                self.requests.forget(id);
                for topic in &topics {
                    self.subs.mark_unsent(topic);
                }
                self.subscribe_attempt = self.subscribe_attempt.saturating_add(1);
                let delay = self.retry_delay(self.subscribe_attempt, ctx.random);
                self.subscribe_retry_at = Some(ctx.now + delay);
                true
            }
            _ if attempts >= RATE_LIMIT_RETRIES => false,
            RequestKind::Auth => false,
            kind => {
                let delay = self.retry_delay(attempts + 1, ctx.random);
                self.requests.retry_at(id, ctx.now + delay);
                if kind == RequestKind::Publish {
                    self.outbox.mark_unsent(id);
                }
                true
            }
        }
    }

    /// The wait before the `attempt`-th resend of a rate-limited request: 1 s, 2 s, 4 s, …
    /// up to the reconnect ceiling, each between half and all of it (jitter spreads a herd).
    pub(super) fn retry_delay(&self, attempt: u32, random: f64) -> u64 {
        let base = RATE_LIMIT_FIRST_DELAY_MS
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(self.config.max_delay_ms.max(RATE_LIMIT_FIRST_DELAY_MS));
        base / 2 + (base as f64 / 2.0 * random.clamp(0.0, 1.0)) as u64
    }

    /// `frame` if it fits the server's frame limit (when known).
    pub(super) fn check_size(&self, frame: String) -> Result<String, SdkError> {
        match self.max_frame {
            Some(limit) if frame.len() > limit => Err(SdkError::TooLarge {
                bytes: frame.len(),
                limit: Some(limit),
            }),
            _ => Ok(frame),
        }
    }

    pub(super) fn reject_too_large(&mut self, request: RequestId, bytes: usize) {
        self.outbox.remove(request);
        self.actions.push_back(Action::Reject {
            request,
            error: SdkError::TooLarge {
                bytes,
                limit: self.max_frame,
            },
        });
    }

    /// The server closed with 1009: a frame was over its limit. The largest request sent on
    /// this socket is the one: it is rejected (never replayed on the next connection) and the
    /// limit is taken to be below it.
    pub(super) fn reject_too_big_in_flight(&mut self) {
        let culprit = self
            .outbox
            .in_flight()
            .into_iter()
            .chain(self.requests.in_flight())
            .max_by_key(|(_, len)| *len);
        if let Some((request, bytes)) = culprit {
            let below = bytes.saturating_sub(1);
            self.max_frame = Some(self.max_frame.map_or(below, |m| m.min(below)));
            self.requests.forget(request);
            self.reject_too_large(request, bytes);
        }
    }

    /// The socket is gone (or the attempt failed): reset per-socket state and wait to retry.
    pub(super) fn lost(&mut self, ctx: Ctx) {
        self.subs.on_disconnect();
        self.presence.on_disconnect();
        self.outbox.mark_all_unsent();
        for request in self.requests.on_disconnect() {
            self.actions.push_back(Action::Reject {
                request,
                error: SdkError::Disconnected,
            });
        }
        self.refreshing = false;
        self.refresh_at = None;
        self.conn.failed(ctx.now, ctx.random, self.online);
    }

    /// Closed for good, with `error` reported to the application if given.
    pub(super) fn shut_down(&mut self, error: Option<SdkError>, code: u16, reason: &str) {
        if let Some(socket) = self.conn.socket()
            && code != 0
        {
            self.close_socket(socket, code, reason);
        }
        self.conn.close();
        self.outbox.drain();
        let fail = error.clone().unwrap_or(SdkError::Closed);
        for request in self.requests.drain_user() {
            self.actions.push_back(Action::Reject {
                request,
                error: fail.clone(),
            });
        }
        if let Some(e) = error {
            self.actions.push_back(Action::Error(e));
        }
        self.refresh_at = None;
    }

    pub(super) fn probe(&mut self, ctx: Ctx) {
        if self.liveness.probe_now(ctx.now) {
            self.send_message(ctx, &ClientMessage::Ping(Ping::default()));
        }
    }

    pub(super) fn schedule_refresh(&mut self, ctx: Ctx, exp_secs: Option<u64>) {
        self.refresh_at = match exp_secs {
            Some(exp) if self.config.token_provider => {
                Some(ctx.now + token::refresh_delay(exp, ctx.unix_ms))
            }
            _ => None,
        };
    }

    pub(super) fn apply(&mut self, ctx: Ctx, events: Vec<SubEvent>) {
        for event in events {
            match event {
                SubEvent::Deliver { subs, message } => {
                    for sub in subs {
                        self.actions.push_back(Action::Deliver {
                            sub,
                            message: message.clone(),
                        });
                    }
                }
                SubEvent::Recover { topic, since } => {
                    if self.conn.is_connected() {
                        self.subs.mark_sent(&topic);
                        let since = one_topic(topic.clone(), since);
                        self.send_subscribe(ctx, vec![topic], Some(since));
                    }
                }
                SubEvent::Recovered {
                    subs,
                    topic,
                    recovered,
                } => {
                    for sub in subs {
                        self.actions.push_back(Action::Recovery {
                            sub,
                            topic: topic.clone(),
                            recovered,
                        });
                    }
                }
                SubEvent::Failed {
                    subs, error, topic, ..
                } => {
                    self.presence.forget(&topic);
                    for sub in subs {
                        self.actions.push_back(Action::SubscriptionFailed {
                            sub,
                            error: error.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Read `topic`'s members if it is watched, a read is due and its subscription is active
    /// on this socket (so the joins and leaves after the snapshot reach us too).
    pub(super) fn read_presence_if_due(&mut self, ctx: Ctx, topic: &str) {
        if !self.conn.is_connected()
            || !self.subs.is_active(topic)
            || !self.presence.needs_read(topic)
        {
            return;
        }
        let id = self
            .requests
            .register(RequestKind::PresenceSync(topic.to_owned()));
        let msg = ClientMessage::Presence(client::PresenceQuery {
            topic: topic.to_owned(),
            r#ref: Some(id.wire_ref()),
        });
        match encode(&msg) {
            Ok(frame) => {
                // Kept to send it again after `RATE_LIMITED`.
                self.requests.keep_frame(id, &frame);
                self.send_frame(ctx, frame);
                self.requests.sent(id, ctx.now);
                self.presence.read_sent(topic, id);
            }
            Err(_) => {
                self.requests.forget(id);
            }
        }
    }

    /// Tell each watching subscriber about each join and leave.
    pub(super) fn report_members(&mut self, changes: impl IntoIterator<Item = MemberChange>) {
        for c in changes {
            for sub in c.subs {
                self.actions.push_back(Action::MemberChanged {
                    sub,
                    change: c.change,
                    event: c.event.clone(),
                });
            }
        }
    }

    pub(super) fn send_subscribe(
        &mut self,
        ctx: Ctx,
        topics: Vec<String>,
        since: Option<TopicMap<Position>>,
    ) {
        let id = self
            .requests
            .register(RequestKind::Subscribe(topics.clone()));
        let msg = ClientMessage::Subscribe(client::Subscribe {
            topics,
            since,
            r#ref: Some(id.wire_ref()),
        });
        self.send_message(ctx, &msg);
        self.requests.sent(id, ctx.now);
    }

    pub(super) fn flush_outbox(&mut self, ctx: Ctx) {
        if let Some(limit) = self.max_frame {
            for (request, bytes) in self.outbox.too_large(limit) {
                self.requests.forget(request);
                self.reject_too_large(request, bytes);
            }
        }
        for (id, frame) in self.outbox.take_unsent() {
            self.send_frame(ctx, frame);
            self.requests.sent(id, ctx.now);
        }
    }

    pub(super) fn send_message(&mut self, ctx: Ctx, message: &ClientMessage) {
        if let Ok(frame) = encode(message) {
            self.send_frame(ctx, frame);
        }
    }

    pub(super) fn send_frame(&mut self, ctx: Ctx, frame: String) {
        if let Phase::Connected { socket, .. } = self.conn.phase() {
            self.liveness.on_sent(ctx.now);
            self.actions.push_back(Action::Send { socket, frame });
        }
    }

    pub(super) fn close_socket(&mut self, socket: SocketId, code: u16, reason: &str) {
        self.actions.push_back(Action::CloseSocket {
            socket,
            code,
            reason: reason.to_owned(),
        });
    }

    pub(super) fn resolve(&mut self, request: RequestId, reply: Reply) {
        self.actions.push_back(Action::Resolve { request, reply });
    }

    pub(super) fn check_open(&self) -> Result<(), SdkError> {
        if self.conn.phase() == Phase::Closed {
            Err(SdkError::Closed)
        } else {
            Ok(())
        }
    }
}
