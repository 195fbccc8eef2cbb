//! One connection's protocol logic, with no socket in sight.
//!
//! A [`Session`] takes frames and answers with [`Action`]s: replies, markers for the
//! connection's writer, and commands for the store. It registers subscriptions in the hub
//! itself. The socket glue in `connection` executes the actions in order, so everything here
//! is unit-tested on the host without a network.
//!
//! Dropping a session removes all its subscriptions, so cleanup also happens when a
//! connection task ends by panic.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tidings_protocol::client::{Append, Auth, History, Publish, Read, Subscribe, Unsubscribe};
use tidings_protocol::server::{
    Authenticated, Connected, Pong, Published, Refusal, Subscribed, Unsubscribed,
};
use tidings_protocol::{
    ClientMessage, ErrorCode, MAX_ID_LEN, MAX_REF_LEN, PROTOCOL_VERSION, Position, ServerMessage,
};

use crate::auth::{Identity, unix_seconds};
use crate::hub::{Mailbox, Outbound};
use crate::state::Shared;
use crate::store::{Command, IdempotencyKey, Reply};
use crate::{clock, topic};

/// What the connection glue must do, in order, after a frame.
#[derive(Debug)]
pub enum Action {
    /// Queue this reply to the client.
    Reply(ServerMessage),
    /// Queue this marker for the connection's writer (cursor bookkeeping).
    Mark(Outbound),
    /// Hand this command to the store's writer (waits only if the store is saturated).
    Store(Command),
    /// Answer a `history` request from the store.
    History(History),
    /// Answer a `read` request from the store.
    Read(Read),
}

/// The state of one authenticated connection.
pub struct Session {
    shared: Arc<Shared>,
    client_id: String,
    identity: Identity,
    mailbox: Mailbox,
    /// Sorted, because `subscribed`/`unsubscribed` list them (template behaviour).
    subscriptions: BTreeSet<Arc<str>>,
    limiter: DefaultDirectRateLimiter,
}

impl Session {
    /// A session for an authenticated connection whose frames go to `mailbox`.
    pub fn new(shared: Arc<Shared>, identity: Identity, mailbox: Mailbox) -> Self {
        let config = &shared.config;
        let rate = NonZeroU32::new(config.rate_limit).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_burst).unwrap_or(NonZeroU32::MIN);
        let client_id = format!("{}-{}", shared.node, mailbox.id());
        Session {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            shared,
            client_id,
            identity,
            mailbox,
            subscriptions: BTreeSet::new(),
        }
    }

    /// The id clients see in `connected.client_id` and `message.from`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Until when the current token is accepted (`exp + leeway`), if it expires: the
    /// connection is closed with 4001 then.
    pub fn valid_until(&self) -> Option<SystemTime> {
        self.identity.valid_until
    }

    /// The first frame of the connection.
    pub fn connected(&self) -> ServerMessage {
        ServerMessage::Connected(Connected {
            client_id: self.client_id.clone(),
            timestamp: clock::now_rfc3339(),
            protocol: Some(PROTOCOL_VERSION),
            heartbeat_ms: Some(self.shared.config.heartbeat_interval.as_millis() as u64),
            user: Some(self.identity.user.clone()),
            max_message_bytes: Some(self.shared.config.max_message_bytes as u64),
        })
    }

    /// Handle one text frame, pushing what to do to `out`.
    ///
    /// Every error caused by a frame echoes its `ref` when the frame is an object with a
    /// string `ref` of at most [`MAX_REF_LEN`] bytes, even if nothing else in it decodes.
    pub fn on_text(&mut self, text: &str, out: &mut Vec<Action>) {
        let started = Instant::now();
        self.shared.metrics.messages_in.inc();
        if self.limiter.check().is_err() {
            return self.fail(
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
                    return self.fail(out, ErrorCode::InvalidMessage, message, None);
                }
                self.handle(msg, started, out)
            }
            Err(e) => self.fail(out, e.code(), e.to_string(), request_ref(text)),
        }
    }

    /// Handle one binary frame: the protocol is JSON text only.
    pub fn on_binary(&mut self, out: &mut Vec<Action>) {
        self.shared.metrics.messages_in.inc();
        self.fail(
            out,
            ErrorCode::InvalidMessage,
            "binary frames are not supported; send JSON text frames",
            None,
        );
    }

    fn handle(&mut self, msg: ClientMessage, started: Instant, out: &mut Vec<Action>) {
        match msg {
            ClientMessage::Subscribe(m) => self.subscribe(m, out),
            ClientMessage::Unsubscribe(m) => self.unsubscribe(m, out),
            ClientMessage::Publish(m) => self.publish(m, started, out),
            ClientMessage::Ping(m) => {
                out.push(Action::Reply(ServerMessage::Pong(Pong { r#ref: m.r#ref })))
            }
            ClientMessage::Auth(m) => self.reauthenticate(m, out),
            ClientMessage::History(m) => {
                if let Some((code, message)) = self.check_read(&m.topic) {
                    return self.fail(out, code, message, m.r#ref);
                }
                out.push(Action::History(m));
            }
            ClientMessage::Read(m) => {
                if let Some((code, message)) = self.check_read(&m.stream) {
                    return self.fail(out, code, message, m.r#ref);
                }
                out.push(Action::Read(m));
            }
            ClientMessage::Append(m) => self.append(m, out),
        }
    }

    /// Whether the token may read `name` and it is stored at all.
    fn check_read(&self, name: &str) -> Option<(ErrorCode, String)> {
        if let Err(e) = topic::validate(name, &self.shared.config) {
            return Some((ErrorCode::InvalidTopic, format!("{e}: {name:?}")));
        }
        if !self.identity.subscribe.allows(name) {
            return Some((ErrorCode::Forbidden, format!("token may not read {name:?}")));
        }
        if self.shared.retention.is_ephemeral(name) {
            return Some((
                ErrorCode::Unavailable,
                format!("{name:?} is ephemeral: nothing is stored"),
            ));
        }
        None
    }

    /// Why `name` cannot be subscribed by this connection, if it cannot.
    fn refuse_subscribe(&self, name: &str) -> Option<Refusal> {
        if let Err(e) = topic::validate(name, &self.shared.config) {
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
        let max = self.shared.config.max_subscriptions;
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
    fn subscribe(&mut self, m: Subscribe, out: &mut Vec<Action>) {
        let requested: BTreeSet<&str> = m.topics.iter().map(String::as_str).collect();
        let since = m.since.as_ref();
        let mut refused = BTreeMap::new();
        let mut recovered = BTreeMap::new();
        let mut positions = BTreeMap::new();
        let mut syncs = Vec::new();
        for name in &requested {
            if let Some(refusal) = self.refuse_subscribe(name) {
                self.shared.metrics.error(refusal.code);
                refused.insert((*name).to_owned(), refusal);
                continue;
            }
            let is_new = !self.subscriptions.contains(*name);
            let position = since.and_then(|s| s.get(*name));
            let name: Arc<str> = Arc::from(*name);
            // Registered first, the head read after: the store frees the state of a topic
            // only while nobody is registered (under the hub's lock), so the head read here
            // cannot belong to a history that is freed and restarted under this subscriber.
            if is_new {
                self.shared.hub.subscribe(&name, &self.mailbox);
                self.subscriptions.insert(Arc::clone(&name));
            }
            if self.shared.retention.is_ephemeral(&name) {
                if position.is_some() {
                    recovered.insert(name.to_string(), false);
                }
            } else if is_new || position.is_some() {
                // The writer learns the cursor (Track) and then reads the store up to the
                // head (Sync), after these actions are queued. Live frames queued before the
                // Track are dropped by the writer and re-read by the Sync; later ones pass
                // the cursor rule. Every offset is then delivered once, in order.
                let (start, complete) = self.start_position(&name, position);
                if let Some(complete) = complete {
                    recovered.insert(name.to_string(), complete);
                }
                out.push(Action::Mark(Outbound::Track {
                    topic: Arc::clone(&name),
                    from: start.offset,
                }));
                positions.insert(name.to_string(), start);
                syncs.push(Arc::clone(&name));
            }
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
        out.push(Action::Reply(ServerMessage::Subscribed(Subscribed {
            topics: self.subscriptions.iter().map(|t| t.to_string()).collect(),
            recovered: (!recovered.is_empty()).then_some(recovered),
            positions: (!positions.is_empty()).then_some(positions),
            refused: (!refused.is_empty()).then_some(refused),
            r#ref: m.r#ref,
        })));
        for topic in syncs {
            out.push(Action::Mark(Outbound::Sync { topic }));
        }
    }

    /// Where delivery of a durable topic starts (the last position the client is taken to
    /// have), and (when the client asked to resume) whether the resume is complete.
    fn start_position(&self, name: &str, position: Option<&Position>) -> (Position, Option<bool>) {
        let head = self.shared.store.head(name);
        let at = |offset: u64| Position {
            offset,
            epoch: head.as_ref().map(|h| h.epoch.clone()),
        };
        let Some(position) = position else {
            return (at(head.as_ref().map_or(0, |h| h.latest)), None);
        };
        let Some(h) = &head else {
            // Nothing was ever stored here: complete only if the client has nothing either.
            return (at(0), Some(position.offset == 0));
        };
        let same_history = position.epoch.as_deref().is_none_or(|e| e == h.epoch);
        if !same_history || position.offset > h.latest {
            // The history the client's offset refers to is gone: deliver from now on.
            (at(h.latest), Some(false))
        } else if position.offset + 1 < h.first {
            // Part of what was missed has been trimmed: deliver what is left.
            (at(h.first - 1), Some(false))
        } else {
            (at(position.offset), Some(true))
        }
    }

    fn unsubscribe(&mut self, m: Unsubscribe, out: &mut Vec<Action>) {
        for name in &m.topics {
            if let Some(name) = self.subscriptions.take(name.as_str()) {
                self.shared.hub.unsubscribe(&name, self.mailbox.id());
                out.push(Action::Mark(Outbound::Untrack { topic: name }));
            }
        }
        out.push(Action::Reply(ServerMessage::Unsubscribed(Unsubscribed {
            topics: self.subscriptions.iter().map(|t| t.to_string()).collect(),
            r#ref: m.r#ref,
        })));
    }

    fn publish(&mut self, m: Publish, started: Instant, out: &mut Vec<Action>) {
        if let Err(e) = topic::validate(&m.topic, &self.shared.config) {
            let message = format!("{e}: {:?}", m.topic);
            return self.fail(out, ErrorCode::InvalidTopic, message, m.r#ref);
        }
        if !self.identity.publish.allows(&m.topic) {
            let message = format!("token may not publish to {:?}", m.topic);
            return self.fail(out, ErrorCode::Forbidden, message, m.r#ref);
        }
        if m.id.as_ref().is_some_and(|id| id.len() > MAX_ID_LEN) {
            let message = format!("id is longer than {MAX_ID_LEN} bytes");
            return self.fail(out, ErrorCode::InvalidMessage, message, m.r#ref);
        }
        if !self.shared.retention.is_ephemeral(&m.topic) {
            let ack = m.r#ref.is_some();
            out.push(Action::Store(Command::Publish {
                topic: Arc::from(m.topic),
                data: m.data,
                from: self.client_id.clone(),
                publisher: Some(self.mailbox.clone()),
                // Idempotency keys are the user's own: another user's id never matches.
                id: m.id.map(|id| IdempotencyKey {
                    scope: format!("user:{}", self.identity.user),
                    id,
                }),
                reply: Reply::Client {
                    mailbox: self.mailbox.clone(),
                    r#ref: m.r#ref,
                    ack,
                },
                started,
            }));
            return;
        }
        let ack_topic = m.r#ref.is_some().then(|| m.topic.clone());
        self.shared.hub.publish(
            Some(self.mailbox.id()),
            &self.client_id,
            m.topic,
            m.data,
            started,
        );
        if let Some(topic) = ack_topic {
            out.push(Action::Reply(ServerMessage::Published(Published {
                r#ref: m.r#ref,
                topic,
                offset: None,
                epoch: None,
            })));
        }
    }

    fn append(&mut self, m: Append, out: &mut Vec<Action>) {
        if let Err(e) = topic::validate(&m.stream, &self.shared.config) {
            let message = format!("{e}: {:?}", m.stream);
            return self.fail(out, ErrorCode::InvalidTopic, message, m.r#ref);
        }
        if !self.identity.publish.allows(&m.stream) {
            let message = format!("token may not append to {:?}", m.stream);
            return self.fail(out, ErrorCode::Forbidden, message, m.r#ref);
        }
        if self.shared.retention.is_ephemeral(&m.stream) {
            let message = format!("{:?} is ephemeral: streams must be stored", m.stream);
            return self.fail(out, ErrorCode::Unavailable, message, m.r#ref);
        }
        if m.events.is_empty() {
            return self.fail(
                out,
                ErrorCode::InvalidMessage,
                "append needs at least one event",
                m.r#ref,
            );
        }
        out.push(Action::Store(Command::Append {
            stream: Arc::from(m.stream),
            expected: m.expected_version,
            events: m.events,
            from: self.client_id.clone(),
            reply: Reply::Client {
                mailbox: self.mailbox.clone(),
                r#ref: m.r#ref,
                ack: true,
            },
        }));
    }

    fn reauthenticate(&mut self, m: Auth, out: &mut Vec<Action>) {
        match self.shared.auth.verify(&m.token) {
            Ok(identity) if identity.user == self.identity.user => {
                let expires_at = identity.expires_at.map(unix_seconds);
                self.identity = identity;
                out.push(Action::Reply(ServerMessage::Authenticated(Authenticated {
                    r#ref: m.r#ref,
                    user: self.identity.user.clone(),
                    expires_at,
                })));
            }
            Ok(_) => self.fail(
                out,
                ErrorCode::Unauthorized,
                "the new token is for a different identity",
                m.r#ref,
            ),
            Err(e) => self.fail(out, ErrorCode::Unauthorized, e.to_string(), m.r#ref),
        }
    }

    fn fail(
        &self,
        out: &mut Vec<Action>,
        code: ErrorCode,
        message: impl Into<String>,
        r#ref: Option<String>,
    ) {
        self.shared.metrics.error(code);
        out.push(Action::Reply(ServerMessage::error(code, message, r#ref)));
    }
}

/// The `ref` of a frame that could not be handled, if it is an object with a short string
/// `ref` (read without decoding anything else).
fn request_ref(text: &str) -> Option<String> {
    let r = tidings_protocol::decode::envelope(text).ok()?.r#ref?;
    (r.len() <= MAX_REF_LEN).then(|| r.into_owned())
}

impl Drop for Session {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.subscriptions) {
            self.shared.hub.unsubscribe(&name, self.mailbox.id());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::auth::{TokenSpec, mint};
    use crate::config::Config;
    use crate::hub::Outbound;

    const K: &str = "session-test-secret-0123456789abcdef";

    fn shared(config: Config) -> Arc<Shared> {
        Arc::new(
            Shared::new(Config {
                jwt_secret: Some(K.into()),
                store: crate::config::StoreKind::Memory,
                ..config
            })
            .expect("shared"),
        )
    }

    fn session(shared: &Arc<Shared>, spec: TokenSpec) -> (Session, mpsc::Receiver<Outbound>) {
        let token = mint(K, &spec).expect("mint");
        let identity = shared.auth.verify(&token).expect("verify");
        let (tx, rx) = mpsc::channel(16);
        let mailbox = Mailbox::new(shared.hub.next_conn_id(), tx, CancellationToken::new());
        (Session::new(Arc::clone(shared), identity, mailbox), rx)
    }

    fn user(name: &str) -> TokenSpec {
        TokenSpec {
            sub: name.into(),
            ttl: Some(Duration::from_secs(60)),
            ..TokenSpec::default()
        }
    }

    /// The replies among the actions.
    fn replies(out: Vec<Action>) -> Vec<ServerMessage> {
        out.into_iter()
            .filter_map(|a| match a {
                Action::Reply(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn one(s: &mut Session, text: &str) -> ServerMessage {
        let mut out = Vec::new();
        s.on_text(text, &mut out);
        let mut replies = replies(out);
        assert_eq!(replies.len(), 1, "{text} -> {replies:?}");
        replies.remove(0)
    }

    fn error_code(msg: &ServerMessage) -> Option<ErrorCode> {
        match msg {
            ServerMessage::Error(e) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn template_flow_subscribe_publish_unsubscribe() {
        let shared = shared(Config {
            ephemeral_topics: vec!["*".into()],
            ..Config::default()
        });
        let (mut a, _rx_a) = session(&shared, user("alice"));
        let (mut b, mut rx_b) = session(&shared, user("alice"));
        assert_ne!(
            a.client_id(),
            b.client_id(),
            "two tabs of one user get two ids"
        );
        let ServerMessage::Subscribed(s) =
            one(&mut b, r#"{"type":"subscribe","topics":["chat","news"]}"#)
        else {
            panic!("not subscribed")
        };
        assert_eq!(s.topics, ["chat", "news"]);
        let mut out = Vec::new();
        a.on_text(
            r#"{"type":"publish","topic":"chat","data":{"text":"hi"}}"#,
            &mut out,
        );
        assert!(
            out.is_empty(),
            "publish without ref has no reply (template)"
        );
        assert!(matches!(rx_b.try_recv(), Ok(Outbound::Frame(_))));
        let ServerMessage::Unsubscribed(u) =
            one(&mut b, r#"{"type":"unsubscribe","topics":["chat"]}"#)
        else {
            panic!("not unsubscribed")
        };
        assert_eq!(
            u.topics,
            ["news"],
            "reply lists the remaining subscriptions"
        );
        assert!(matches!(
            one(&mut a, r#"{"type":"ping"}"#),
            ServerMessage::Pong(_)
        ));
    }

    #[test]
    fn ephemeral_publish_with_ref_is_acknowledged_at_once() {
        let shared = shared(Config {
            ephemeral_topics: vec!["live.*".into()],
            ..Config::default()
        });
        let (mut a, _rx) = session(&shared, user("alice"));
        let ServerMessage::Published(p) = one(
            &mut a,
            r#"{"type":"publish","topic":"live.t","data":1,"ref":"r1"}"#,
        ) else {
            panic!("no ack")
        };
        assert_eq!(
            (p.r#ref.as_deref(), p.topic.as_str(), p.offset),
            (Some("r1"), "live.t", None)
        );
    }

    #[test]
    fn durable_publish_and_append_go_to_the_store() {
        let shared = shared(Config::default());
        let (mut a, _rx) = session(&shared, user("alice"));
        for text in [
            r#"{"type":"publish","topic":"t","data":1,"ref":"r1","id":"m1"}"#,
            r#"{"type":"append","stream":"s","expected_version":0,"events":[{"type":"x","data":{}}]}"#,
        ] {
            let mut out = Vec::new();
            a.on_text(text, &mut out);
            assert!(
                matches!(out.as_slice(), [Action::Store(_)]),
                "{text} -> {out:?}"
            );
        }
        let reply = one(&mut a, r#"{"type":"append","stream":"s","events":[]}"#);
        assert_eq!(error_code(&reply), Some(ErrorCode::InvalidMessage));
    }

    #[test]
    fn subscribe_tracks_durable_topics_around_the_hub_registration() {
        let shared = shared(Config {
            ephemeral_topics: vec!["live".into()],
            ..Config::default()
        });
        let (mut a, _rx) = session(&shared, user("alice"));
        let mut out = Vec::new();
        a.on_text(
            r#"{"type":"subscribe","topics":["d","live"],"since":{"d":{"offset":0},"live":{"offset":3}}}"#,
            &mut out,
        );
        let kinds: Vec<&str> = out
            .iter()
            .map(|a| match a {
                Action::Mark(Outbound::Track { .. }) => "track",
                Action::Mark(Outbound::Sync { .. }) => "sync",
                Action::Reply(ServerMessage::Subscribed(_)) => "subscribed",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["track", "subscribed", "sync"]);
        let Some(Action::Reply(ServerMessage::Subscribed(s))) = out.get(1) else {
            panic!()
        };
        let recovered = s.recovered.as_ref().expect("recovered");
        assert_eq!(
            recovered.get("d"),
            Some(&true),
            "nothing stored, nothing missed"
        );
        assert_eq!(
            recovered.get("live"),
            Some(&false),
            "ephemeral topics cannot recover"
        );
    }

    #[test]
    fn bad_input_gets_precise_errors() {
        let shared = shared(Config {
            max_subscriptions: 2,
            ..Config::default()
        });
        let (mut a, _rx) = session(&shared, user("alice"));
        let cases = [
            ("{nope", ErrorCode::InvalidMessage),
            (r#"{"type":"warp"}"#, ErrorCode::InvalidMessageType),
            (r#"{"type":"publish","topic":""}"#, ErrorCode::InvalidTopic),
            (
                r#"{"type":"subscribe","topics":["a\u0000"]}"#,
                ErrorCode::InvalidTopic,
            ),
            (
                r#"{"type":"history","topic":"","ref":"h"}"#,
                ErrorCode::InvalidTopic,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(error_code(&one(&mut a, text)), Some(code), "{text}");
        }
        let mut out = Vec::new();
        a.on_binary(&mut out);
        assert_eq!(
            error_code(&replies(out)[0]),
            Some(ErrorCode::InvalidMessage)
        );
        assert!(
            a.subscriptions.is_empty(),
            "a refused subscribe adds nothing"
        );
    }

    #[test]
    fn a_multi_topic_subscribe_is_answered_per_topic() {
        let shared = shared(Config {
            max_subscriptions: 2,
            ..Config::default()
        });
        let spec = TokenSpec {
            subscribe: vec!["ok.*".into()],
            ..user("bob")
        };
        let (mut s, _rx) = session(&shared, spec);
        let ServerMessage::Subscribed(sub) = one(
            &mut s,
            r#"{"type":"subscribe","topics":["ok.a","secret.b","","ok.b","ok.c"],"ref":"r"}"#,
        ) else {
            panic!("expected subscribed")
        };
        assert_eq!(sub.topics, ["ok.a", "ok.b"]);
        assert_eq!(sub.r#ref.as_deref(), Some("r"));
        let refused = sub.refused.expect("refused");
        let codes: Vec<(&str, ErrorCode)> =
            refused.iter().map(|(t, r)| (t.as_str(), r.code)).collect();
        assert_eq!(
            codes,
            [
                ("", ErrorCode::InvalidTopic),
                ("ok.c", ErrorCode::TooManySubscriptions),
                ("secret.b", ErrorCode::Forbidden),
            ]
        );
        let positions = sub.positions.expect("positions");
        assert_eq!(positions.get("ok.a").map(|p| p.offset), Some(0));
        assert!(!positions.contains_key("secret.b"));
        // One topic refused on its own is an error, as it always was.
        let reply = one(
            &mut s,
            r#"{"type":"subscribe","topics":["secret.b"],"ref":"x"}"#,
        );
        assert_eq!(error_code(&reply), Some(ErrorCode::Forbidden));
    }

    #[test]
    fn token_patterns_are_enforced() {
        let shared = shared(Config::default());
        let spec = TokenSpec {
            subscribe: vec!["public.*".into()],
            publish: vec!["public.chat".into()],
            ..user("bob")
        };
        let (mut s, _rx) = session(&shared, spec);
        let forbidden = [
            r#"{"type":"subscribe","topics":["private"]}"#,
            r#"{"type":"publish","topic":"public.news","data":1}"#,
        ];
        for text in forbidden {
            assert_eq!(
                error_code(&one(&mut s, text)),
                Some(ErrorCode::Forbidden),
                "{text}"
            );
        }
        assert!(matches!(
            one(&mut s, r#"{"type":"subscribe","topics":["public.a"]}"#),
            ServerMessage::Subscribed(_)
        ));
    }

    #[test]
    fn rate_limit_applies_per_connection() {
        let shared = shared(Config {
            rate_limit: 1,
            rate_burst: 3,
            ..Config::default()
        });
        let (mut a, _rx) = session(&shared, user("alice"));
        let (mut b, _rx_b) = session(&shared, user("bob"));
        for _ in 0..3 {
            assert!(matches!(
                one(&mut a, r#"{"type":"ping"}"#),
                ServerMessage::Pong(_)
            ));
        }
        assert_eq!(
            error_code(&one(&mut a, r#"{"type":"ping"}"#)),
            Some(ErrorCode::RateLimited)
        );
        assert!(matches!(
            one(&mut b, r#"{"type":"ping"}"#),
            ServerMessage::Pong(_)
        ));
    }

    #[test]
    fn auth_refresh_keeps_identity_and_refuses_another() {
        let shared = shared(Config::default());
        let (mut a, _rx) = session(&shared, user("alice"));
        let fresh = mint(
            K,
            &TokenSpec {
                ttl: Some(Duration::from_secs(7200)),
                ..user("alice")
            },
        )
        .expect("mint");
        let before = a.valid_until();
        let reply = one(
            &mut a,
            &format!(r#"{{"type":"auth","token":"{fresh}","ref":"a"}}"#),
        );
        assert!(
            matches!(reply, ServerMessage::Authenticated(_)),
            "{reply:?}"
        );
        assert!(a.valid_until() > before);
        let other = mint(K, &user("mallory")).expect("mint");
        let reply = one(&mut a, &format!(r#"{{"type":"auth","token":"{other}"}}"#));
        assert_eq!(error_code(&reply), Some(ErrorCode::Unauthorized));
        let reply = one(&mut a, r#"{"type":"auth","token":"garbage"}"#);
        assert_eq!(error_code(&reply), Some(ErrorCode::Unauthorized));
    }

    #[test]
    fn dropping_a_session_removes_its_subscriptions() {
        let shared = shared(Config::default());
        let (mut a, _rx) = session(&shared, user("alice"));
        one(&mut a, r#"{"type":"subscribe","topics":["x","y"]}"#);
        assert_eq!(shared.hub.topic_count(), 2);
        drop(a);
        assert_eq!(shared.hub.topic_count(), 0);
    }

    /// Property tests: whatever a client sends, the session never panics, answers at most
    /// one reply, answers exactly the documented error for frames that cannot be handled
    /// (echoing their `ref`), and the connection stays usable.
    mod props {
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::*;

        const KNOWN: [&str; 8] = [
            "subscribe",
            "unsubscribe",
            "publish",
            "ping",
            "auth",
            "history",
            "append",
            "read",
        ];

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                ".{0,8}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 16, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                    prop::collection::btree_map(".{0,5}", inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A known or almost known type with plausible, edge and random fields.
        fn near_valid() -> impl Strategy<Value = Value> {
            let value = prop_oneof![
                Just(json!("chat")),
                Just(json!("")),
                Just(json!(["chat", "news", "x"])),
                Just(json!(["a\u{0}"])),
                Just(json!({"chat": {"offset": 2}})),
                Just(json!({"chat": {"offset": u64::MAX}})),
                Just(json!(tidings_protocol::MAX_POSITION)),
                Just(json!(u64::MAX)),
                Just(json!([{"type": "e", "data": 1}])),
                Just(json!([])),
                Just(json!("r".repeat(300))),
                any_json(),
            ];
            let field = prop::sample::select(vec![
                "topic",
                "topics",
                "data",
                "ref",
                "id",
                "since",
                "limit",
                "stream",
                "events",
                "expected_version",
                "from_version",
                "token",
            ]);
            let kind = prop_oneof![
                prop::sample::select(KNOWN.to_vec()).prop_map(Value::from),
                Just(json!("warp")),
                Just(json!(3)),
            ];
            (
                prop::option::of(kind),
                prop::collection::btree_map(field, value, 0..5),
            )
                .prop_map(|(kind, fields)| {
                    let mut object: serde_json::Map<String, Value> =
                        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                    if let Some(kind) = kind {
                        object.insert("type".into(), kind);
                    }
                    Value::Object(object)
                })
        }

        /// The documented answer for a frame that cannot be handled, if that is decided
        /// before any field is looked at: the error code and the ref it echoes.
        fn expected_error(text: &str) -> Option<(ErrorCode, Option<String>)> {
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                return Some((ErrorCode::InvalidMessage, None));
            };
            let object = match value.as_object() {
                Some(object) => object,
                None => return Some((ErrorCode::InvalidMessage, None)),
            };
            let r#ref = object
                .get("ref")
                .and_then(Value::as_str)
                .filter(|r| r.len() <= MAX_REF_LEN)
                .map(str::to_owned);
            match object.get("type").and_then(Value::as_str) {
                Some(kind) if KNOWN.contains(&kind) => None,
                _ => Some((ErrorCode::InvalidMessageType, r#ref)),
            }
        }

        fn run(s: &mut Session, text: &str) -> Result<(), TestCaseError> {
            let mut out = Vec::new();
            s.on_text(text, &mut out);
            let answers = replies(out);
            prop_assert!(answers.len() <= 1, "{} -> {:?}", text, answers);
            if let Some((code, r#ref)) = expected_error(text) {
                let Some(ServerMessage::Error(e)) = answers.first() else {
                    return Err(TestCaseError::fail(format!("{text} -> {answers:?}")));
                };
                prop_assert_eq!((e.code, &e.r#ref), (code, &r#ref), "{}", text);
            }
            if let Some(ServerMessage::Error(e)) = answers.first() {
                // An error for a known type is one of the documented request errors, and
                // echoes the ref when the frame carried a short string one.
                prop_assert!(
                    matches!(
                        e.code,
                        ErrorCode::InvalidMessage
                            | ErrorCode::InvalidMessageType
                            | ErrorCode::InvalidTopic
                            | ErrorCode::TooManySubscriptions
                            | ErrorCode::Unauthorized
                    ),
                    "{} -> {:?}",
                    text,
                    e
                );
                if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text)
                    && let Some(r) = o.get("ref").and_then(Value::as_str)
                    && r.len() <= MAX_REF_LEN
                {
                    prop_assert_eq!(e.r#ref.as_deref(), Some(r), "{}", text);
                }
            }
            // The connection is still usable.
            let mut out = Vec::new();
            s.on_text(r#"{"type":"ping","ref":"alive"}"#, &mut out);
            let pong = replies(out);
            prop_assert!(
                matches!(pong.as_slice(), [ServerMessage::Pong(p)] if p.r#ref.as_deref() == Some("alive")),
                "after {}: {:?}",
                text,
                pong
            );
            Ok(())
        }

        /// A fresh session per case, on one server instance for all of them.
        fn session_for_props() -> (Session, mpsc::Receiver<Outbound>) {
            static SHARED: std::sync::OnceLock<Arc<Shared>> = std::sync::OnceLock::new();
            let shared = SHARED.get_or_init(|| {
                shared(Config {
                    rate_limit: 1_000_000,
                    rate_burst: 1_000_000,
                    max_subscriptions: 4,
                    ..Config::default()
                })
            });
            session(shared, user("fuzz"))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
                let (mut s, _rx) = session_for_props();
                run(&mut s, &String::from_utf8_lossy(&bytes))?;
            }

            #[test]
            fn arbitrary_json(value in any_json()) {
                let (mut s, _rx) = session_for_props();
                run(&mut s, &value.to_string())?;
            }

            #[test]
            fn near_valid_messages(values in prop::collection::vec(near_valid(), 1..6)) {
                // Several frames on one connection, so state (subscriptions) carries over.
                let (mut s, _rx) = session_for_props();
                for value in values {
                    run(&mut s, &value.to_string())?;
                }
            }

            #[test]
            fn spliced_json_tokens(pieces in prop::collection::vec(prop::sample::select(vec![
                "{", "}", "[", "]", "\"type\"", ":", ",", "\"publish\"", "\"subscribe\"",
                "\"topics\"", "\"topic\"", "\"data\"", "\"since\"", "null", "1e999", "-0",
                "\"\\u0000\"", "\"ref\"", "\"\\ud800\"", "true", "{\"offset\":18446744073709551616}",
                "\u{1F600}", " ",
            ]), 1..14)) {
                let (mut s, _rx) = session_for_props();
                run(&mut s, &pieces.concat())?;
            }
        }
    }
}
