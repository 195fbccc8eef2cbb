//! The application's calls: subscribe, unsubscribe, watching presence, publish, history,
//! append, read, presence, presence stats, close.
//! Each checks its arguments, registers the request and sends it (or queues it while offline).

use tidings_protocol::ClientMessage;
use tidings_protocol::client;

use super::*;

impl Core {
    /// Listen to `topic`. `since`: resume after this position (replaying what was missed),
    /// honoured when the topic is new to this client. New topics go to the server together,
    /// in one `subscribe`, when the current task is done ([`Action::ScheduleFlush`]).
    pub fn subscribe(
        &mut self,
        _ctx: Ctx,
        topic: &str,
        since: Option<Position>,
    ) -> Result<SubId, SdkError> {
        self.check_open()?;
        check_name("topic", topic)?;
        let (id, is_new) = self.subs.add(topic, since);
        if is_new && self.conn.is_connected() && !self.flush_scheduled {
            self.flush_scheduled = true;
            self.actions.push_back(Action::ScheduleFlush);
        }
        self.finish();
        Ok(id)
    }

    /// Stop a subscriber; the topic is unsubscribed on the server when it was the last one.
    pub fn unsubscribe(&mut self, ctx: Ctx, sub: SubId) {
        if let Some(topic) = self.subs.topic_of(sub) {
            let topic = topic.to_owned();
            self.presence.unwatch(&topic, sub);
        }
        let gone = self.subs.remove(sub);
        if let Some(topic) = &gone {
            self.presence.forget(topic);
        }
        if let Some(topic) = gone
            && self.conn.is_connected()
        {
            let id = self.requests.register(RequestKind::Unsubscribe);
            let msg = ClientMessage::Unsubscribe(client::Unsubscribe {
                topics: vec![topic],
                r#ref: Some(id.wire_ref()),
            });
            self.send_message(ctx, &msg);
            self.requests.sent(id, ctx.now);
        }
        self.finish();
    }

    /// `sub` wants to hear joins and leaves of its topic (its first `onJoin`/`onLeave`). The
    /// topic's members are read when its subscription is active (now, if it is), and after
    /// every reconnect; the difference is reported as joins and leaves (see [`presence`]).
    /// A subscriber that is gone (unsubscribed, refused) is ignored.
    pub fn watch_presence(&mut self, ctx: Ctx, sub: SubId) {
        if let Some(topic) = self.subs.topic_of(sub) {
            let topic = topic.to_owned();
            self.presence.watch(&topic, sub);
            self.read_presence_if_due(ctx, &topic);
        }
        self.finish();
    }

    /// Who is on presence topic `topic` (`PRESENCE_DISABLED` if the server keeps no presence
    /// for it).
    pub fn presence(&mut self, ctx: Ctx, topic: &str) -> Result<RequestId, SdkError> {
        check_name("topic", topic)?;
        self.request(ctx, RequestKind::Presence, |r| {
            ClientMessage::Presence(client::PresenceQuery {
                topic: topic.to_owned(),
                r#ref: Some(r),
            })
        })
    }

    /// How many connections and users are on presence topic `topic`.
    pub fn presence_stats(&mut self, ctx: Ctx, topic: &str) -> Result<RequestId, SdkError> {
        check_name("topic", topic)?;
        self.request(ctx, RequestKind::PresenceStats, |r| {
            ClientMessage::PresenceStats(client::PresenceQuery {
                topic: topic.to_owned(),
                r#ref: Some(r),
            })
        })
    }

    /// Publish `data` (raw JSON) to `topic`. The request resolves with the acknowledgement;
    /// while offline it waits in the outbox and is sent after reconnecting.
    pub fn publish(&mut self, ctx: Ctx, topic: &str, data: Json) -> Result<RequestId, SdkError> {
        self.check_open()?;
        check_name("topic", topic)?;
        self.outbox.check_capacity()?;
        self.publish_seq += 1;
        let request = self.requests.register(RequestKind::Publish);
        let msg = ClientMessage::Publish(client::Publish {
            topic: topic.to_owned(),
            data,
            id: Some(publish_id(&self.config.instance_id, self.publish_seq)),
            r#ref: Some(request.wire_ref()),
        });
        let frame = match encode(&msg).and_then(|f| self.check_size(f)) {
            Ok(f) => f,
            Err(e) => {
                self.requests.forget(request);
                return Err(e);
            }
        };
        if let Err(e) = self.outbox.push(request, frame) {
            self.requests.forget(request);
            return Err(e);
        }
        if self.conn.is_connected() {
            self.flush_outbox(ctx);
        }
        self.finish();
        Ok(request)
    }

    /// Fetch stored messages of `topic` after offset `since`.
    pub fn history(
        &mut self,
        ctx: Ctx,
        topic: &str,
        since: Option<u64>,
        limit: Option<u32>,
    ) -> Result<RequestId, SdkError> {
        check_name("topic", topic)?;
        self.request(ctx, RequestKind::History, |r| {
            ClientMessage::History(client::History {
                topic: topic.to_owned(),
                since,
                limit,
                r#ref: Some(r),
            })
        })
    }

    /// Append `events` to `stream`, only if its version is `expected_version` (when given).
    pub fn append(
        &mut self,
        ctx: Ctx,
        stream: &str,
        expected_version: Option<u64>,
        events: Vec<NewEvent>,
    ) -> Result<RequestId, SdkError> {
        check_name("stream", stream)?;
        if events.is_empty() {
            return Err(SdkError::InvalidArgument("no events to append".into()));
        }
        self.request(ctx, RequestKind::Append, |r| {
            ClientMessage::Append(client::Append {
                stream: stream.to_owned(),
                expected_version,
                events,
                r#ref: Some(r),
            })
        })
    }

    /// Read `stream`'s events after `from_version` (and its latest snapshot).
    pub fn read(
        &mut self,
        ctx: Ctx,
        stream: &str,
        from_version: Option<u64>,
    ) -> Result<RequestId, SdkError> {
        check_name("stream", stream)?;
        self.request(ctx, RequestKind::Read, |r| {
            ClientMessage::Read(client::Read {
                stream: stream.to_owned(),
                from_version,
                r#ref: Some(r),
            })
        })
    }

    /// Close for good: the socket is closed, pending requests fail with `CLOSED`, the timer
    /// is disarmed.
    pub fn close(&mut self) {
        if self.conn.phase() == Phase::Closed {
            return;
        }
        self.shut_down(None, 1000, "client closed");
        self.finish();
    }

    pub(super) fn request(
        &mut self,
        ctx: Ctx,
        kind: RequestKind,
        build: impl FnOnce(String) -> ClientMessage,
    ) -> Result<RequestId, SdkError> {
        self.check_open()?;
        let id = self.requests.register(kind);
        let frame = match encode(&build(id.wire_ref())).and_then(|f| self.check_size(f)) {
            Ok(f) => f,
            Err(e) => {
                self.requests.forget(id);
                return Err(e);
            }
        };
        self.requests.keep_frame(id, &frame);
        if self.conn.is_connected() {
            self.send_frame(ctx, frame);
            self.requests.sent(id, ctx.now);
        } else {
            self.requests.queue(id, frame);
        }
        self.finish();
        Ok(id)
    }
}
