//! The sans-IO client: every rule of the SDK, with no sockets, clocks or randomness inside.
//!
//! The shell (the wasm layer, or a test) feeds [`Input`]s and calls user operations, each with a
//! [`Ctx`] carrying the current time and a fresh random number; the core queues [`Action`]s,
//! which the shell drains with [`Core::poll_action`] and carries out: open a socket, send a
//! frame, arm the one timer, hand a message to a subscriber, settle a promise.
//!
//! Map of the parts:
//! * `calls`, `inbound`, `outbound` — the [`Core`] itself, in three files: the application's
//!   calls; what comes from outside (socket, frames, token, timer); what goes to the server and
//!   how requests settle (resubscribes, the outbox, retries, closing).
//! * [`connection`] — which socket is current; connecting / connected / reconnecting / closed.
//! * [`backoff`] — how long to wait before the next attempt.
//! * [`liveness`] — heartbeats, probes and the pong timeout.
//! * [`subscriptions`] — per-topic position, dedup, gap detection and recovery.
//! * [`outbox`] — unacknowledged publishes, resent after a reconnect.
//! * [`requests`] — `ref` → pending request, offline queue, timeouts.
//! * [`token`] — the token in the connect URL, when to refresh it, when it is dead.
//! * [`streams`] — folding an event stream: which event applies next, where to resume.
//! * [`aggregates`] — streams folded (and commands decided) by a built-in Rust aggregate.
//! * [`presence`] — the members of watched presence topics; the difference after a reconnect.
//!
//! Architecture invariant: nothing in this module touches web-sys or js-sys; it builds and is
//! tested on the host, and only [`tidings_protocol`] knows the JSON shape of a frame.

pub mod aggregates;
pub mod backoff;
mod calls;
pub mod connection;
pub mod error;
mod inbound;
pub mod liveness;
mod outbound;
pub mod outbox;
pub mod presence;
pub mod requests;
pub mod streams;
pub mod subscriptions;
pub mod token;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use tidings_protocol::server::{
    Events, HistoryPage, Member, MemberEvent, Message, PresenceReply, PresenceStats,
};
use tidings_protocol::{ClientMessage, Json, TopicMap};
pub use tidings_protocol::{NewEvent, Position};

pub use backoff::Backoff;
pub use connection::{Connection, ConnectionState, Phase, SocketId};
pub use error::SdkError;
pub use liveness::{Liveness, Verdict};
pub use outbox::Outbox;
pub use presence::{Change, MemberChange, Presence};
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
    /// Who is on a presence topic.
    Presence(PresenceReply),
    /// How many are on a presence topic.
    PresenceStats(PresenceStats),
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
    /// A member joined or left a presence topic the subscriber watches (`onJoin`/`onLeave`).
    MemberChanged {
        /// The subscriber.
        sub: SubId,
        /// Joined or left.
        change: Change,
        /// The member and its topic.
        event: MemberEvent,
    },
    /// The presence read for a watching subscriber was refused (`PRESENCE_DISABLED`,
    /// `FORBIDDEN`): joins and leaves are no longer tracked; the subscription itself lives on.
    PresenceFailed {
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
    presence: Presence,
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
            presence: Presence::new(),
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
    pub fn positions(&self) -> TopicMap<Position> {
        self.subs.positions()
    }

    /// The topic a subscriber listens to.
    pub fn topic_of(&self, sub: SubId) -> Option<&str> {
        self.subs.topic_of(sub)
    }

    /// The members of a presence topic as this client knows them, for a subscriber that
    /// watches it (None: it does not, or the first read has not been answered).
    pub fn members(&self, sub: SubId) -> Option<Vec<Member>> {
        self.presence.members(self.subs.topic_of(sub)?)
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
                    if let Ok(message) = wire::decode(&text) {
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

/// `since` for one topic.
fn one_topic(topic: String, position: Position) -> TopicMap<Position> {
    let mut map = TopicMap::new();
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
    Ok(wire::encode(message))
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
