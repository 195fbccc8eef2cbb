//! One connection's protocol logic, sans-IO: a frame and the time come in, [`Action`]s go out.
//!
//! The session rate-limits (the limiter's clock is the time of the frame, given by the caller),
//! decodes, checks what only it can (`ref` length, its own subscriptions against the limit,
//! the token's `subscribe` patterns, a refreshed token) and says what to do: reply, subscribe,
//! unsubscribe, publish, read, append. It touches no socket, hub or store and reads no clock,
//! so its tests start no thread; the connection carries the actions out through the
//! operations layer, which authorizes and routes publishes, reads and appends.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tidings_protocol::client::{Append, History, PresenceQuery, Publish, Read, Subscribe};
use tidings_protocol::server::{Authenticated, Connected, Pong, Refusal, Unsubscribed};
use tidings_protocol::{
    ClientMessage, ErrorCode, MAX_REF_LEN, PROTOCOL_VERSION, Position, ServerMessage, TopicMap,
};

use crate::auth::{Authenticator, Identity, unix_seconds};
use crate::clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::topic;

/// What the connection must do, in order, after a frame.
#[derive(Debug)]
pub enum Action {
    /// Queue this reply to the client.
    Reply(ServerMessage),
    /// Subscribe: register the topics, find where each durable one starts, and reply.
    Subscribe(SubscribeAction),
    /// Remove these topics from the hub (the `unsubscribed` reply follows as a `Reply`).
    Unsubscribe(Vec<Arc<str>>),
    /// Publish (decoded at `started`).
    Publish(Publish, Instant),
    /// Answer a `history` request.
    History(History),
    /// Answer a `read` request.
    Read(Read),
    /// Append events.
    Append(Append),
    /// Answer a `presence` request.
    Presence(PresenceQuery),
    /// Answer a `presence_stats` request.
    PresenceStats(PresenceQuery),
}

/// A `subscribe` the session accepted, for the connection to carry out.
#[derive(Debug)]
pub struct SubscribeAction {
    /// The accepted topics: name, whether it is new to this connection, and the client's
    /// resume position.
    pub topics: Vec<(Arc<str>, bool, Option<Position>)>,
    /// The refused topics and why.
    pub refused: TopicMap<Refusal>,
    /// Every subscription of the connection afterwards, sorted (the reply's `topics`).
    pub all: Vec<String>,
    /// The request's `ref`.
    pub r#ref: Option<String>,
}

/// The settings a session works with, copied from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Messages per second (token bucket refill).
    pub rate_limit: u32,
    /// Token bucket size.
    pub rate_burst: u32,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Longest topic name in bytes.
    pub max_topic_len: usize,
    /// Sent in `connected`.
    pub heartbeat_ms: u64,
    /// Sent in `connected`.
    pub max_message_bytes: u64,
}

impl Limits {
    /// The limits `config` sets.
    pub fn of(config: &Config) -> Self {
        Limits {
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            max_subscriptions: config.max_subscriptions,
            max_topic_len: config.max_topic_len,
            heartbeat_ms: u64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
            max_message_bytes: config.max_message_bytes as u64,
        }
    }
}

/// What a session borrows to handle a frame.
pub struct Env<'a> {
    /// To verify a token sent with `auth`.
    pub auth: &'a Authenticator,
    /// To count frames and errors.
    pub metrics: &'a Metrics,
}

/// The rate limiter's clock: the time of the frame being handled, as the session was told.
///
/// The session sets it on the calling thread right before it asks the limiter, in the same
/// synchronous call, so a thread-local holds it: no shared cell per connection.
#[derive(Debug, Clone, Copy, Default)]
struct FrameClock;

thread_local! {
    /// Nanoseconds since the session's origin of the frame being rate-limited.
    static FRAME_TIME: Cell<u64> = const { Cell::new(0) };
}

impl FrameClock {
    fn set(nanos: u64) {
        FRAME_TIME.with(|t| t.set(nanos));
    }
}

impl governor::clock::Clock for FrameClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(FRAME_TIME.with(Cell::get))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, FrameClock, NoOpMiddleware<Nanos>>;

/// The state of one authenticated connection.
pub struct Session {
    client_id: Arc<str>,
    identity: Identity,
    limits: Limits,
    /// Sorted, because `subscribed`/`unsubscribed` list them (template behaviour).
    subscriptions: BTreeSet<Arc<str>>,
    /// An `auth` replaced the identity since the connection last asked
    /// ([`Session::take_renewed`]).
    renewed: bool,
    limiter: Limiter,
    /// The time the limiter's clock counts from.
    origin: Instant,
}

impl Session {
    /// A session for an authenticated connection named `client_id`, opened at `now`.
    pub fn new(client_id: String, identity: Identity, limits: Limits, now: Instant) -> Self {
        let rate = NonZeroU32::new(limits.rate_limit).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.rate_burst).unwrap_or(NonZeroU32::MIN);
        Session {
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                FrameClock,
            ),
            origin: now,
            client_id: Arc::from(client_id),
            identity,
            limits,
            subscriptions: BTreeSet::new(),
            renewed: false,
        }
    }

    /// The id clients see in `connected.client_id` and `message.from`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether an `auth` renewed the identity (and so its expiry) since the last call.
    pub fn take_renewed(&mut self) -> bool {
        std::mem::take(&mut self.renewed)
    }

    /// The client id, shared (the connection's writer keeps it to recognise its own rows).
    pub fn shared_client_id(&self) -> Arc<str> {
        Arc::clone(&self.client_id)
    }

    /// Who this connection is (the operations authorize with it).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Until when the current token is accepted (`exp + leeway`), if it expires: the
    /// connection is closed with 4001 then.
    pub fn valid_until(&self) -> Option<std::time::SystemTime> {
        self.identity.valid_until
    }

    /// Drop `topic` from the subscriptions without a reply (its subscription could not start).
    pub fn forget(&mut self, topic: &str) {
        self.subscriptions.remove(topic);
    }

    /// The topics this connection subscribes to.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Arc<str>> {
        self.subscriptions.iter()
    }

    /// The first frame of the connection.
    pub fn connected(&self) -> ServerMessage {
        ServerMessage::Connected(Connected {
            client_id: self.client_id.to_string(),
            timestamp: clock::now_rfc3339(),
            protocol: Some(PROTOCOL_VERSION),
            heartbeat_ms: Some(self.limits.heartbeat_ms),
            user: Some(self.identity.user.clone()),
            max_message_bytes: Some(self.limits.max_message_bytes),
        })
    }

    /// Handle one text frame that arrived at `now`, pushing what to do to `out`.
    ///
    /// Every error caused by a frame echoes its `ref` when the frame is an object with a
    /// string `ref` of at most [`MAX_REF_LEN`] bytes, even if nothing else in it decodes.
    pub fn on_text(&mut self, env: &Env<'_>, text: &str, now: Instant, out: &mut Vec<Action>) {
        env.metrics.messages_in.inc();
        let since = now.saturating_duration_since(self.origin).as_nanos();
        FrameClock::set(u64::try_from(since).unwrap_or(u64::MAX));
        if self.limiter.check().is_err() {
            return fail(
                env,
                out,
                ErrorCode::RateLimited,
                "Too many requests",
                request_ref(text),
            );
        }
        match ClientMessage::decode(text) {
            Ok(msg) => {
                if let Some(r) = msg.request_ref()
                    && r.len() > MAX_REF_LEN
                {
                    let message = format!("ref is longer than {MAX_REF_LEN} bytes");
                    return fail(env, out, ErrorCode::InvalidMessage, message, None);
                }
                self.handle(env, msg, now, out)
            }
            Err(e) => fail(env, out, e.code(), e.to_string(), request_ref(text)),
        }
    }

    /// Handle one binary frame: the protocol is JSON text only.
    pub fn on_binary(&mut self, env: &Env<'_>, out: &mut Vec<Action>) {
        env.metrics.messages_in.inc();
        fail(
            env,
            out,
            ErrorCode::InvalidMessage,
            "binary frames are not supported; send JSON text frames",
            None,
        );
    }

    fn handle(&mut self, env: &Env<'_>, msg: ClientMessage, now: Instant, out: &mut Vec<Action>) {
        match msg {
            ClientMessage::Subscribe(m) => self.subscribe(env, m, out),
            ClientMessage::Unsubscribe(m) => {
                let mut removed = Vec::new();
                for name in &m.topics {
                    if let Some(name) = self.subscriptions.take(name.as_str()) {
                        removed.push(name);
                    }
                }
                out.push(Action::Unsubscribe(removed));
                out.push(Action::Reply(ServerMessage::Unsubscribed(Unsubscribed {
                    topics: self.subscriptions.iter().map(|t| t.to_string()).collect(),
                    r#ref: m.r#ref,
                })));
            }
            ClientMessage::Publish(m) => out.push(Action::Publish(m, now)),
            ClientMessage::Ping(m) => {
                out.push(Action::Reply(ServerMessage::Pong(Pong { r#ref: m.r#ref })))
            }
            ClientMessage::Auth(m) => match env.auth.verify(&m.token) {
                Ok(identity) if identity.user == self.identity.user => {
                    let expires_at = identity.expires_at.map(unix_seconds);
                    self.identity = identity;
                    self.renewed = true;
                    out.push(Action::Reply(ServerMessage::Authenticated(Authenticated {
                        r#ref: m.r#ref,
                        user: self.identity.user.clone(),
                        expires_at,
                    })));
                }
                Ok(_) => fail(
                    env,
                    out,
                    ErrorCode::Unauthorized,
                    "the new token is for a different identity",
                    m.r#ref,
                ),
                Err(e) => fail(env, out, ErrorCode::Unauthorized, e.to_string(), m.r#ref),
            },
            ClientMessage::History(m) => out.push(Action::History(m)),
            ClientMessage::Read(m) => out.push(Action::Read(m)),
            ClientMessage::Presence(m) => out.push(Action::Presence(m)),
            ClientMessage::PresenceStats(m) => out.push(Action::PresenceStats(m)),
            ClientMessage::Append(m) => out.push(Action::Append(m)),
        }
    }

    /// Why `name` cannot be subscribed by this connection, if it cannot.
    fn refuse_subscribe(&self, name: &str) -> Option<Refusal> {
        if let Err(e) = topic::validate(name, self.limits.max_topic_len) {
            return Some(Refusal {
                code: ErrorCode::InvalidTopic,
                message: format!("{e}: {name:?}"),
            });
        }
        if !self.identity.subscribe.allows(name) {
            return Some(Refusal {
                code: ErrorCode::Forbidden,
                message: format!("token may not subscribe to {name:?}"),
            });
        }
        let max = self.limits.max_subscriptions;
        if !self.subscriptions.contains(name) && self.subscriptions.len() >= max {
            return Some(Refusal {
                code: ErrorCode::TooManySubscriptions,
                message: format!("at most {max} subscriptions per connection"),
            });
        }
        None
    }

    /// Each topic of the request is answered on its own: the ones that may be subscribed are,
    /// the others are listed in `subscribed.refused` with their code (in name order, so with
    /// the subscription limit the first names fit). A request for a single topic that is
    /// refused gets an `error`, as it always did.
    fn subscribe(&mut self, env: &Env<'_>, m: Subscribe, out: &mut Vec<Action>) {
        let requested: BTreeSet<&str> = m.topics.iter().map(String::as_str).collect();
        let mut refused = TopicMap::new();
        let mut topics = Vec::new();
        for name in &requested {
            if let Some(refusal) = self.refuse_subscribe(name) {
                env.metrics.error(refusal.code);
                refused.insert((*name).to_owned(), refusal);
                continue;
            }
            let since = m.since.as_ref().and_then(|s| s.get(*name)).cloned();
            let name: Arc<str> = Arc::from(*name);
            let new = self.subscriptions.insert(Arc::clone(&name));
            topics.push((name, new, since));
        }
        if requested.len() == 1
            && let Some((_, refusal)) = refused.pop_first()
        {
            out.push(Action::Reply(ServerMessage::error(
                refusal.code,
                refusal.message,
                m.r#ref,
            )));
            return;
        }
        out.push(Action::Subscribe(SubscribeAction {
            topics,
            refused,
            all: self.subscriptions.iter().map(|t| t.to_string()).collect(),
            r#ref: m.r#ref,
        }));
    }
}

/// Queue an error reply (and count it).
fn fail(
    env: &Env<'_>,
    out: &mut Vec<Action>,
    code: ErrorCode,
    message: impl Into<String>,
    r#ref: Option<String>,
) {
    env.metrics.error(code);
    out.push(Action::Reply(ServerMessage::error(code, message, r#ref)));
}

/// The `ref` of a frame that could not be handled, if it is an object with a short string
/// `ref` (read without decoding anything else).
fn request_ref(text: &str) -> Option<String> {
    let r = tidings_protocol::decode::envelope(text).ok()?.r#ref?;
    (r.len() <= MAX_REF_LEN).then(|| r.into_owned())
}

#[cfg(test)]
mod tests;
