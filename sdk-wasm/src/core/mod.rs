//! The sans-IO client: every rule of the SDK, with no sockets, clocks or randomness inside.
//!
//! The shell (the wasm layer, or a test) feeds [`Input`]s and calls user operations, each with a
//! [`Ctx`] carrying the current time and a fresh random number; the core queues [`Action`]s,
//! which the shell drains with [`Core::poll_action`] and carries out: open a socket, send a
//! frame, arm the one timer, hand a message to a subscriber, settle a promise.
//!
//! Map of the parts:
//! * [`connection`] — which socket is current; connecting / connected / reconnecting / closed.
//! * [`backoff`] — how long to wait before the next attempt.
//! * [`liveness`] — heartbeats, probes and the pong timeout.
//! * [`subscriptions`] — per-topic position, dedup, gap detection and recovery.
//! * [`outbox`] — unacknowledged publishes, resent after a reconnect.
//! * [`requests`] — `ref` → pending request, offline queue, timeouts.
//! * [`token`] — the token in the connect URL and when to refresh it.
//!
//! Architecture invariant: nothing in this module touches web-sys or js-sys; it builds and is
//! tested on the host, and only [`tidings_protocol`] knows the JSON shape of a frame.

pub mod backoff;
pub mod connection;
pub mod error;
pub mod liveness;
pub mod outbox;
pub mod requests;
pub mod subscriptions;
pub mod token;
pub mod vecmap;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use tidings_protocol::client::{self, Ping};
use tidings_protocol::server::{Events, HistoryPage, Message};
use tidings_protocol::{ClientMessage, CloseCode, ErrorCode, Json, ServerMessage};
pub use tidings_protocol::{NewEvent, Position};

pub use backoff::Backoff;
pub use connection::{Connection, ConnectionState, Phase, SocketId};
pub use error::SdkError;
pub use liveness::{Liveness, Verdict};
pub use outbox::Outbox;
pub use requests::{RequestId, RequestKind, Requests};
pub use subscriptions::{SubEvent, SubId, Subscriptions};

/// The close code the client uses when it gives up on a socket itself (liveness or connect
/// timeout). Browsers only let scripts send 1000 or 3000–4999.
pub const CLIENT_TIMEOUT_CLOSE: u16 = 4000;

/// How often an application request the server answered `RATE_LIMITED` is sent again before
/// it is rejected with that code. Subscriptions are retried until they are answered.
pub const RATE_LIMIT_RETRIES: u32 = 5;

/// The first wait before sending a rate-limited request again (ms); it doubles with every
/// further `RATE_LIMITED`, up to the reconnect backoff's ceiling, with jitter.
pub const RATE_LIMIT_FIRST_DELAY_MS: u64 = 1_000;

/// Settings of a client; the wasm layer fills them from the JS options.
///
/// Exists so every tunable is named in one place with its default.
#[derive(Debug, Clone)]
pub struct Config {
    /// WebSocket endpoints (`ws://host/ws`), tried in turn after failed attempts.
    pub urls: Vec<String>,
    /// A fixed token, used when there is no token provider.
    pub token: Option<String>,
    /// Whether the application supplied `getToken`: called before every connection attempt and
    /// before the token expires.
    pub token_provider: bool,
    /// First reconnect delay ceiling (ms).
    pub min_delay_ms: u64,
    /// Largest reconnect delay (ms).
    pub max_delay_ms: u64,
    /// An attempt (token + socket + `connected`) that takes longer than this fails (ms).
    pub connect_timeout_ms: u64,
    /// A request without a reply this long after it was sent fails with `TIMEOUT` (ms).
    pub request_timeout_ms: u64,
    /// Silence after which the socket is probed, until the server announces its heartbeat (ms).
    pub idle_timeout_ms: u64,
    /// How long a probe waits for an answer (ms).
    pub pong_timeout_ms: u64,
    /// Most publishes waiting for an acknowledgement.
    pub outbox_capacity: usize,
    /// A random string unique to this client instance; publish ids are `instance-n`, so
    /// retries are recognised by the server and ids of two clients never collide.
    pub instance_id: String,
}

impl Config {
    /// Defaults for connecting to `urls`.
    pub fn new(urls: Vec<String>, instance_id: impl Into<String>) -> Self {
        Config {
            urls,
            token: None,
            token_provider: false,
            min_delay_ms: 500,
            max_delay_ms: 20_000,
            connect_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 30_000,
            pong_timeout_ms: 10_000,
            outbox_capacity: 1_000,
            instance_id: instance_id.into(),
        }
    }
}

/// What the outside world supplies with every call: the time and one random number.
///
/// Exists so the core is deterministic: tests choose the clock and the dice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ctx {
    /// Monotonic milliseconds (`performance.now()`); all deadlines are in this clock.
    pub now: u64,
    /// Wall-clock milliseconds since the Unix epoch (`Date.now()`), to read token expiry.
    pub unix_ms: u64,
    /// A uniform random number in `[0, 1)`.
    pub random: f64,
}

/// Something that happened outside the core.
#[derive(Debug, Clone)]
pub enum Input {
    /// Begin connecting (once, after construction).
    Start,
    /// `getToken` settled.
    Token(Result<String, String>),
    /// The socket's `open` event.
    SocketOpened(SocketId),
    /// The socket's `close` event.
    SocketClosed {
        /// Which socket.
        socket: SocketId,
        /// The close code (1006 when the connection just dropped).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// A text frame arrived.
    Frame {
        /// Which socket.
        socket: SocketId,
        /// The frame.
        text: String,
    },
    /// The timer armed by [`Action::ArmTimer`] fired (perhaps late).
    TimerFired,
    /// The browser's `online` event.
    Online,
    /// The browser's `offline` event.
    Offline,
    /// The page became visible again (`visibilitychange`).
    Visible,
    /// The shell's answer to [`Action::ScheduleFlush`]: the current task is over.
    Flush,
}

/// A successful reply to an application request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A publish was acknowledged.
    Published {
        /// The topic.
        topic: String,
        /// Its offset (durable topics only).
        offset: Option<u64>,
        /// The topic's epoch (durable topics only).
        epoch: Option<String>,
    },
    /// A page of history.
    History(HistoryPage),
    /// Events were appended.
    Appended {
        /// The stream.
        stream: String,
        /// Its version after the append.
        version: u64,
    },
    /// A stream's events.
    Events(Events),
}

/// Something the shell must do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Open a WebSocket to `url` (the token is already in it) and report its events with `socket`.
    OpenSocket {
        /// The id to report events with.
        socket: SocketId,
        /// Where to connect.
        url: String,
    },
    /// Close this socket (and stop reporting its events).
    CloseSocket {
        /// Which socket.
        socket: SocketId,
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Send a text frame.
    Send {
        /// On which socket.
        socket: SocketId,
        /// The frame.
        frame: String,
    },
    /// (Re)arm the single timer to fire at `at` (monotonic ms), replacing any armed one.
    ArmTimer {
        /// When.
        at: u64,
    },
    /// Disarm the timer.
    CancelTimer,
    /// Feed [`Input::Flush`] once the current task is done (a microtask): subscriptions made
    /// in one task go to the server in one `subscribe`.
    ScheduleFlush,
    /// Call `getToken` and report the result with [`Input::Token`].
    FetchToken,
    /// The connection state changed.
    StateChanged(ConnectionState),
    /// Hand a message to a subscriber.
    Deliver {
        /// The subscriber.
        sub: SubId,
        /// The message.
        message: Message,
    },
    /// A subscriber's topic finished a recovery.
    Recovery {
        /// The subscriber.
        sub: SubId,
        /// The topic.
        topic: String,
        /// Whether every missed message was replayed.
        recovered: bool,
    },
    /// The server refused a subscription; the subscriber will get nothing more.
    SubscriptionFailed {
        /// The subscriber.
        sub: SubId,
        /// Why.
        error: SdkError,
    },
    /// Settle a request's promise successfully.
    Resolve {
        /// The request.
        request: RequestId,
        /// The reply.
        reply: Reply,
    },
    /// Settle a request's promise with an error.
    Reject {
        /// The request.
        request: RequestId,
        /// Why.
        error: SdkError,
    },
    /// An error not tied to any request (rate limited, unauthorized, `getToken` failed).
    Error(SdkError),
}

/// The client's whole state.
///
/// Exists as the one object the shell talks to: it routes each input to the part that owns
/// it and turns their decisions into [`Action`]s.
#[derive(Debug)]
pub struct Core {
    config: Config,
    conn: Connection,
    liveness: Liveness,
    subs: Subscriptions,
    outbox: Outbox,
    requests: Requests,
    /// The token of the current (or next) connection.
    token: Option<String>,
    /// When to refresh the token in-band (monotonic ms).
    refresh_at: Option<u64>,
    /// A `getToken` for an in-band refresh is outstanding.
    refreshing: bool,
    /// Publishes so far, for their ids.
    publish_seq: u64,
    /// The browser's last word on connectivity.
    online: bool,
    /// The state last reported with [`Action::StateChanged`].
    reported: ConnectionState,
    /// The timer deadline last armed.
    armed: Option<u64>,
    /// The largest frame the server reads (from `connected`, or learned from a 1009 close).
    max_frame: Option<usize>,
    /// An [`Action::ScheduleFlush`] is out and its [`Input::Flush`] not back yet.
    flush_scheduled: bool,
    /// When to subscribe again the topics the server rate-limited.
    subscribe_retry_at: Option<u64>,
    /// `RATE_LIMITED` answers to subscribes in a row.
    subscribe_attempt: u32,
    actions: VecDeque<Action>,
}

impl Core {
    /// A client that has not started; call [`Core::handle`] with [`Input::Start`].
    pub fn new(config: Config) -> Result<Core, SdkError> {
        if config.urls.is_empty() || config.urls.iter().any(|u| u.trim().is_empty()) {
            return Err(SdkError::InvalidArgument(
                "`url` or `urls` is required".into(),
            ));
        }
        let backoff = Backoff::new(config.min_delay_ms, config.max_delay_ms);
        Ok(Core {
            conn: Connection::new(config.urls.clone(), backoff, config.connect_timeout_ms),
            liveness: Self::fresh_liveness(&config),
            subs: Subscriptions::new(),
            outbox: Outbox::new(config.outbox_capacity),
            requests: Requests::new(config.request_timeout_ms),
            token: config.token.clone(),
            refresh_at: None,
            refreshing: false,
            publish_seq: 0,
            online: true,
            reported: ConnectionState::Connecting,
            armed: None,
            max_frame: None,
            flush_scheduled: false,
            subscribe_retry_at: None,
            subscribe_attempt: 0,
            actions: VecDeque::new(),
            config,
        })
    }

    fn fresh_liveness(config: &Config) -> Liveness {
        let keepalive = config.idle_timeout_ms * 5 / 6;
        Liveness::new(config.idle_timeout_ms, config.pong_timeout_ms, keepalive)
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        self.conn.state()
    }

    /// The detailed connection phase.
    pub fn phase(&self) -> Phase {
        self.conn.phase()
    }

    /// Every topic's last delivered position (what `persistOffsets` saves).
    pub fn positions(&self) -> BTreeMap<String, Position> {
        self.subs.positions()
    }

    /// The topic a subscriber listens to.
    pub fn topic_of(&self, sub: SubId) -> Option<&str> {
        self.subs.topic_of(sub)
    }

    /// Publishes waiting for an acknowledgement.
    pub fn unacknowledged(&self) -> usize {
        self.outbox.len()
    }

    /// Feed one event.
    pub fn handle(&mut self, ctx: Ctx, input: Input) {
        match input {
            Input::Start => {
                if self.conn.phase() == Phase::Idle {
                    self.begin_attempt(ctx);
                }
            }
            Input::Token(result) => self.on_token(ctx, result),
            Input::SocketOpened(socket) => {
                if self.conn.opened(socket) {
                    self.liveness = Self::fresh_liveness(&self.config);
                    self.liveness.reset(ctx.now);
                }
            }
            Input::SocketClosed {
                socket,
                code,
                reason,
            } => {
                if self.conn.is_current(socket) {
                    self.on_closed(ctx, code, reason);
                }
            }
            Input::Frame { socket, text } => {
                if self.conn.is_current(socket) {
                    self.liveness.on_received(ctx.now);
                    // Frames we cannot decode (a newer server's types) are skipped: the
                    // protocol only ever adds types and optional fields.
                    if let Ok(message) = ServerMessage::decode(&text) {
                        self.on_message(ctx, socket, message);
                    }
                }
            }
            Input::TimerFired => self.on_timer(ctx),
            Input::Online => {
                self.online = true;
                if let Phase::Waiting { .. } = self.conn.phase() {
                    self.begin_attempt(ctx);
                }
            }
            Input::Offline => {
                self.online = false;
                match self.conn.phase() {
                    Phase::Waiting { .. } => self.conn.set_retry(None),
                    Phase::Connected { .. } => self.probe(ctx),
                    _ => {}
                }
            }
            Input::Visible => match self.conn.phase() {
                Phase::Waiting { .. } if self.online => self.begin_attempt(ctx),
                Phase::Connected { .. } => self.probe(ctx),
                _ => {}
            },
            Input::Flush => {
                self.flush_scheduled = false;
                self.subscribe_unsent(ctx);
            }
        }
        self.finish();
    }

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
        if let Some(topic) = self.subs.remove(sub)
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

    // ---- inputs -------------------------------------------------------------------------

    fn begin_attempt(&mut self, ctx: Ctx) {
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

    fn open_socket(&mut self, ctx: Ctx) {
        let socket = self.conn.open(ctx.now);
        let url = token::url_with_token(self.conn.url(), self.token.as_deref());
        self.actions.push_back(Action::OpenSocket { socket, url });
    }

    fn on_token(&mut self, ctx: Ctx, result: Result<String, String>) {
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

    fn on_closed(&mut self, ctx: Ctx, code: u16, reason: String) {
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

    fn on_message(&mut self, ctx: Ctx, socket: SocketId, message: ServerMessage) {
        match message {
            ServerMessage::Connected(c) => {
                if self.conn.established(socket, ctx.now) {
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
            ServerMessage::Pong(_) | ServerMessage::Heartbeat(_) => {}
        }
    }

    fn on_timer(&mut self, ctx: Ctx) {
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

    // ---- helpers ------------------------------------------------------------------------

    /// The server said `connected`: restore subscriptions (with `since` where we have a
    /// position), resend unacknowledged publishes, send requests queued while offline.
    fn on_connected(&mut self, ctx: Ctx) {
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
    fn subscribe_unsent(&mut self, ctx: Ctx) {
        if !self.conn.is_connected() || self.subscribe_retry_at.is_some() {
            return;
        }
        let topics = self.subs.unsent();
        if topics.is_empty() {
            return;
        }
        let mut since = BTreeMap::new();
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
    fn retry_later(&mut self, ctx: Ctx, wire_ref: Option<&str>) -> bool {
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
    fn retry_delay(&self, attempt: u32, random: f64) -> u64 {
        let base = RATE_LIMIT_FIRST_DELAY_MS
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(self.config.max_delay_ms.max(RATE_LIMIT_FIRST_DELAY_MS));
        base / 2 + (base as f64 / 2.0 * random.clamp(0.0, 1.0)) as u64
    }

    /// `frame` if it fits the server's frame limit (when known).
    fn check_size(&self, frame: String) -> Result<String, SdkError> {
        match self.max_frame {
            Some(limit) if frame.len() > limit => Err(SdkError::TooLarge {
                bytes: frame.len(),
                limit: Some(limit),
            }),
            _ => Ok(frame),
        }
    }

    fn reject_too_large(&mut self, request: RequestId, bytes: usize) {
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
    fn reject_too_big_in_flight(&mut self) {
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
    fn lost(&mut self, ctx: Ctx) {
        self.subs.on_disconnect();
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
    fn shut_down(&mut self, error: Option<SdkError>, code: u16, reason: &str) {
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

    fn probe(&mut self, ctx: Ctx) {
        if self.liveness.probe_now(ctx.now) {
            self.send_message(ctx, &ClientMessage::Ping(Ping::default()));
        }
    }

    fn schedule_refresh(&mut self, ctx: Ctx, exp_secs: Option<u64>) {
        self.refresh_at = match exp_secs {
            Some(exp) if self.config.token_provider => {
                Some(ctx.now + token::refresh_delay(exp, ctx.unix_ms))
            }
            _ => None,
        };
    }

    fn apply(&mut self, ctx: Ctx, events: Vec<SubEvent>) {
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
                SubEvent::Failed { subs, error, .. } => {
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

    fn request(
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

    fn send_subscribe(
        &mut self,
        ctx: Ctx,
        topics: Vec<String>,
        since: Option<BTreeMap<String, Position>>,
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

    fn flush_outbox(&mut self, ctx: Ctx) {
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

    fn send_message(&mut self, ctx: Ctx, message: &ClientMessage) {
        if let Ok(frame) = encode(message) {
            self.send_frame(ctx, frame);
        }
    }

    fn send_frame(&mut self, ctx: Ctx, frame: String) {
        if let Phase::Connected { socket, .. } = self.conn.phase() {
            self.liveness.on_sent(ctx.now);
            self.actions.push_back(Action::Send { socket, frame });
        }
    }

    fn close_socket(&mut self, socket: SocketId, code: u16, reason: &str) {
        self.actions.push_back(Action::CloseSocket {
            socket,
            code,
            reason: reason.to_owned(),
        });
    }

    fn resolve(&mut self, request: RequestId, reply: Reply) {
        self.actions.push_back(Action::Resolve { request, reply });
    }

    fn check_open(&self) -> Result<(), SdkError> {
        if self.conn.phase() == Phase::Closed {
            Err(SdkError::Closed)
        } else {
            Ok(())
        }
    }

    /// After every entry point: report a state change and (re)arm the timer.
    fn finish(&mut self) {
        let state = self.conn.state();
        if state != self.reported {
            self.reported = state;
            self.actions.push_back(Action::StateChanged(state));
        }
        let next = self.next_deadline();
        if next != self.armed {
            self.armed = next;
            self.actions.push_back(match next {
                Some(at) => Action::ArmTimer { at },
                None => Action::CancelTimer,
            });
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        if self.conn.phase() == Phase::Closed {
            return None;
        }
        let connected = self.conn.is_connected();
        [
            self.conn.deadline(),
            connected.then(|| self.liveness.next_deadline()),
            self.requests.next_deadline(),
            self.refresh_at.filter(|_| connected),
            self.subscribe_retry_at.filter(|_| connected),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// `since` for one topic. (`BTreeMap::from` would build through a stable sort: more wasm.)
fn one_topic(topic: String, position: Position) -> BTreeMap<String, Position> {
    let mut map = BTreeMap::new();
    map.insert(topic, position);
    map
}

/// `<instance>-<n>`: unique per client instance, the same for every retry of one publish.
fn publish_id(instance: &str, seq: u64) -> String {
    let mut id = String::with_capacity(instance.len() + 21);
    id.push_str(instance);
    id.push('-');
    id.push_str(&seq.to_string());
    id
}

/// Encode a client message.
fn encode(message: &ClientMessage) -> Result<String, SdkError> {
    serde_json::to_string(message).map_err(|e| SdkError::InvalidArgument(e.to_string()))
}

/// Reject empty names early with a clear error (the server would answer `INVALID_TOPIC`).
fn check_name(what: &str, name: &str) -> Result<(), SdkError> {
    if name.is_empty() {
        Err(SdkError::InvalidArgument(format!(
            "{what} must not be empty"
        )))
    } else {
        Ok(())
    }
}
