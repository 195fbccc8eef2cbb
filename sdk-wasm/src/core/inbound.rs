//! What comes from outside: the start, a token from `getToken`, the socket closing, a frame
//! from the server, the timer. Each routes to the part that owns it.

use tidings_protocol::client::{self, Ping};
use tidings_protocol::{ClientMessage, CloseCode, ErrorCode, ServerMessage};

use super::*;

impl Core {
    pub(super) fn begin_attempt(&mut self, ctx: Ctx) {
        if self.config.token_provider {
            self.conn.fetch_token(ctx.now);
            self.actions.push_back(Action::FetchToken);
            return;
        }
        // A fixed token past its `exp` is dead: the server refuses the upgrade (HTTP 401),
        // which a browser cannot tell from a network failure, so retrying would loop forever.
        if let Some(exp) = self.token.as_deref().and_then(token::jwt_expiry)
            && token::expired(exp, ctx.unix_ms)
        {
            let why =
                format!("the token expired at {exp} (Unix seconds); pass getToken to renew tokens");
            self.shut_down(Some(SdkError::Unauthorized(why)), 0, "");
            return;
        }
        self.open_socket(ctx);
    }

    pub(super) fn open_socket(&mut self, ctx: Ctx) {
        let socket = self.conn.open(ctx.now);
        let url = token::url_with_token(self.conn.url(), self.token.as_deref());
        self.actions.push_back(Action::OpenSocket { socket, url });
    }

    pub(super) fn on_token(&mut self, ctx: Ctx, result: Result<String, String>) {
        let result = result.and_then(|t| {
            if t.trim().is_empty() {
                Err("getToken returned an empty token".to_owned())
            } else {
                Ok(t)
            }
        });
        match self.conn.phase() {
            Phase::FetchingToken { .. } => match result {
                Ok(t) => {
                    if let Some(exp) = token::jwt_expiry(&t)
                        && token::expired(exp, ctx.unix_ms)
                    {
                        // Asking the server would only get a 401: ask getToken again later.
                        let e = format!("getToken returned a token that expired at {exp}");
                        self.actions
                            .push_back(Action::Error(SdkError::TokenProvider(e)));
                        self.lost(ctx);
                        return;
                    }
                    self.token = Some(t);
                    self.open_socket(ctx);
                }
                Err(e) => {
                    self.actions
                        .push_back(Action::Error(SdkError::TokenProvider(e)));
                    self.lost(ctx);
                }
            },
            Phase::Connected { .. } if self.refreshing => {
                self.refreshing = false;
                match result {
                    Ok(t) => {
                        self.token = Some(t.clone());
                        let id = self.requests.register(RequestKind::Auth);
                        let msg = ClientMessage::Auth(client::Auth {
                            token: t,
                            r#ref: Some(id.wire_ref()),
                        });
                        self.send_message(ctx, &msg);
                        self.requests.sent(id, ctx.now);
                    }
                    Err(e) => {
                        self.actions
                            .push_back(Action::Error(SdkError::TokenProvider(e)));
                        self.refresh_at = Some(ctx.now + self.config.min_delay_ms.max(1_000));
                    }
                }
            }
            _ => {} // a late answer for an attempt that was abandoned
        }
    }

    pub(super) fn on_closed(&mut self, ctx: Ctx, code: u16, reason: String) {
        if code == CloseCode::MessageTooBig.code() {
            self.reject_too_big_in_flight();
        }
        match CloseCode::from_code(code) {
            Some(CloseCode::Normal) => self.shut_down(None, 1000, ""),
            Some(CloseCode::PolicyViolation | CloseCode::TokenExpired) => {
                if self.config.token_provider {
                    // Never retry with the token that was refused.
                    self.token = None;
                    self.lost(ctx);
                } else {
                    let why = if reason.is_empty() {
                        format!("closed with {code}")
                    } else {
                        reason
                    };
                    self.shut_down(Some(SdkError::Unauthorized(why)), 0, "");
                }
            }
            _ => self.lost(ctx),
        }
    }

    pub(super) fn on_message(&mut self, ctx: Ctx, socket: SocketId, message: ServerMessage) {
        match message {
            ServerMessage::Connected(c) => {
                if self.conn.established(socket, ctx.now) {
                    self.presence.connected(&c.client_id);
                    if let Some(hb) = c.heartbeat_ms.filter(|hb| *hb > 0) {
                        self.liveness.set_server_heartbeat(hb);
                    }
                    if let Some(max) = c.max_message_bytes {
                        self.max_frame = Some(usize::try_from(max).unwrap_or(usize::MAX));
                    }
                    let exp = self.token.as_deref().and_then(token::jwt_expiry);
                    self.schedule_refresh(ctx, exp);
                    self.on_connected(ctx);
                }
            }
            ServerMessage::Subscribed(s) => {
                let topics = match self.requests.complete(s.r#ref.as_deref()) {
                    Some((_, RequestKind::Subscribe(topics))) => topics,
                    Some(_) => return,
                    // A server that does not echo `ref`: settle every pending topic it lists.
                    None => self
                        .subs
                        .pending()
                        .into_iter()
                        .filter(|t| s.topics.contains(t))
                        .collect(),
                };
                self.subscribe_attempt = 0;
                // Each topic on its own: the server subscribes the ones it may and lists the
                // others in `refused`.
                for topic in topics {
                    let events = match s.refused.as_ref().and_then(|m| m.get(&topic)) {
                        Some(refusal) => {
                            let error = SdkError::Server {
                                code: refusal.code,
                                message: refusal.message.clone(),
                                current_version: None,
                            };
                            self.subs.on_subscribe_error(&topic, &error)
                        }
                        None => {
                            if let Some(p) = s.positions.as_ref().and_then(|m| m.get(&topic)) {
                                self.subs.set_baseline(&topic, p);
                            }
                            let recovered =
                                s.recovered.as_ref().and_then(|m| m.get(&topic).copied());
                            self.subs.on_subscribed(&topic, recovered)
                        }
                    };
                    self.apply(ctx, events);
                    // Back on the server: a watched topic is read (again) now.
                    self.read_presence_if_due(ctx, &topic);
                }
            }
            ServerMessage::Message(m) => {
                let events = self.subs.on_message(m);
                self.apply(ctx, events);
            }
            ServerMessage::Error(e) => {
                if e.code == ErrorCode::RateLimited && self.retry_later(ctx, e.r#ref.as_deref()) {
                    return;
                }
                let wire_ref = e.r#ref.clone();
                let error = SdkError::from(e);
                match self.requests.complete(wire_ref.as_deref()) {
                    Some((id, RequestKind::Subscribe(topics))) => {
                        let _ = id;
                        for topic in topics {
                            let events = self.subs.on_subscribe_error(&topic, &error);
                            self.apply(ctx, events);
                        }
                    }
                    Some((request, kind)) if kind.is_user() => {
                        self.outbox.remove(request);
                        self.actions.push_back(Action::Reject { request, error });
                    }
                    Some((request, RequestKind::PresenceSync(topic))) => {
                        for sub in self.presence.read_failed(&topic, request) {
                            self.actions.push_back(Action::PresenceFailed {
                                sub,
                                error: error.clone(),
                            });
                        }
                    }
                    Some((_, RequestKind::Auth)) => {
                        // The refresh was refused; try again a little later. If it never
                        // works, the server closes with 4001 and we reconnect with a new token.
                        self.refresh_at = Some(ctx.now + self.config.min_delay_ms.max(1_000));
                        self.actions.push_back(Action::Error(error));
                    }
                    Some(_) => {}
                    None => self.actions.push_back(Action::Error(error)),
                }
            }
            ServerMessage::Published(p) => {
                if let Some((request, RequestKind::Publish)) =
                    self.requests.complete(p.r#ref.as_deref())
                {
                    self.outbox.remove(request);
                    if let Some(offset) = p.offset {
                        self.subs
                            .on_own_publish(&p.topic, offset, p.epoch.as_deref());
                    }
                    self.resolve(
                        request,
                        Reply::Published {
                            topic: p.topic,
                            offset: p.offset,
                            epoch: p.epoch,
                        },
                    );
                }
            }
            ServerMessage::Authenticated(a) => {
                if let Some((_, RequestKind::Auth)) = self.requests.complete(a.r#ref.as_deref()) {
                    let exp = a
                        .expires_at
                        .or_else(|| self.token.as_deref().and_then(token::jwt_expiry));
                    self.schedule_refresh(ctx, exp);
                }
            }
            ServerMessage::History(h) => {
                if let Some((request, RequestKind::History)) =
                    self.requests.complete(h.r#ref.as_deref())
                {
                    self.resolve(request, Reply::History(h));
                }
            }
            ServerMessage::Appended(a) => {
                if let Some((request, RequestKind::Append)) =
                    self.requests.complete(a.r#ref.as_deref())
                {
                    self.resolve(
                        request,
                        Reply::Appended {
                            stream: a.stream,
                            version: a.version,
                        },
                    );
                }
            }
            ServerMessage::Events(e) => {
                if let Some((request, RequestKind::Read)) =
                    self.requests.complete(e.r#ref.as_deref())
                {
                    self.resolve(request, Reply::Events(e));
                }
            }
            ServerMessage::Unsubscribed(u) => {
                self.requests.complete(u.r#ref.as_deref());
            }
            ServerMessage::Presence(p) => match self.requests.complete(p.r#ref.as_deref()) {
                Some((request, RequestKind::Presence)) => {
                    self.resolve(request, Reply::Presence(p));
                }
                Some((request, RequestKind::PresenceSync(_))) => {
                    let changes = self.presence.on_reply(request, p);
                    self.report_members(changes);
                }
                _ => {}
            },
            ServerMessage::PresenceStats(p) => {
                if let Some((request, RequestKind::PresenceStats)) =
                    self.requests.complete(p.r#ref.as_deref())
                {
                    self.resolve(request, Reply::PresenceStats(p));
                }
            }
            ServerMessage::Join(e) => {
                let change = self.presence.on_event(Change::Join, e);
                self.report_members(change);
            }
            ServerMessage::Leave(e) => {
                let change = self.presence.on_event(Change::Leave, e);
                self.report_members(change);
            }
            ServerMessage::Pong(_) | ServerMessage::Heartbeat(_) => {}
        }
    }

    pub(super) fn on_timer(&mut self, ctx: Ctx) {
        // Whatever was armed has fired; finish() arms the next deadline.
        self.armed = None;
        let now = ctx.now;
        match self.conn.phase() {
            Phase::FetchingToken { deadline } if now >= deadline => self.lost(ctx),
            Phase::Opening {
                socket, deadline, ..
            } if now >= deadline => {
                self.close_socket(socket, CLIENT_TIMEOUT_CLOSE, "connect timeout");
                self.lost(ctx);
            }
            Phase::Waiting { retry_at: Some(at) } if now >= at => self.begin_attempt(ctx),
            Phase::Connected { socket, .. } => {
                match self.liveness.on_timer(now) {
                    Verdict::Alive => {}
                    Verdict::SendPing => {
                        self.send_message(ctx, &ClientMessage::Ping(Ping::default()))
                    }
                    Verdict::Dead => {
                        self.close_socket(socket, CLIENT_TIMEOUT_CLOSE, "liveness timeout");
                        self.lost(ctx);
                    }
                }
                if self.conn.is_connected() && self.refresh_at.is_some_and(|t| t <= now) {
                    self.refresh_at = None;
                    if self.config.token_provider && !self.refreshing {
                        self.refreshing = true;
                        self.actions.push_back(Action::FetchToken);
                    }
                }
            }
            _ => {}
        }
        for (request, kind) in self.requests.expired(now) {
            match kind {
                kind if kind.is_user() => {
                    self.outbox.remove(request);
                    self.actions.push_back(Action::Reject {
                        request,
                        error: SdkError::Timeout(self.requests.timeout_ms()),
                    });
                }
                // No answer to a subscribe: send it again (a dead socket is the liveness
                // check's to find; a lost reply must not leave topics silently unsubscribed).
                RequestKind::Subscribe(topics) => {
                    for topic in &topics {
                        self.subs.mark_unsent(topic);
                    }
                    self.subscribe_unsent(ctx);
                }
                // No answer to a presence read: ask again.
                RequestKind::PresenceSync(topic) => {
                    self.presence.read_lost(&topic, request);
                    self.read_presence_if_due(ctx, &topic);
                }
                // An unanswered refresh is tried again a little later.
                RequestKind::Auth => {
                    self.refresh_at = Some(now + self.config.min_delay_ms.max(1_000));
                }
                _ => {}
            }
        }
        if self.subscribe_retry_at.is_some_and(|at| at <= now) {
            self.subscribe_retry_at = None;
            self.subscribe_unsent(ctx);
        }
        let mut resend_outbox = false;
        for (request, kind, frame) in self.requests.due_retries(now) {
            match (kind, frame) {
                (RequestKind::Publish, _) => resend_outbox = true,
                (_, Some(frame)) if self.conn.is_connected() => {
                    self.send_frame(ctx, frame);
                    self.requests.sent(request, now);
                }
                (_, Some(frame)) => self.requests.queue(request, frame),
                (_, None) => {
                    self.requests.forget(request);
                }
            }
        }
        if resend_outbox && self.conn.is_connected() {
            self.flush_outbox(ctx);
        }
    }
}
