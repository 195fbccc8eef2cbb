//! One connection's protocol logic, with no socket in sight.
//!
//! A [`Session`] takes decoded frames and answers with [`ServerMessage`]s; it talks to the
//! hub for subscribe/publish. The socket glue in `connection` feeds it frames and writes
//! its replies, so everything here is unit-tested on the host without a network.
//!
//! Dropping a session removes all its subscriptions, so cleanup also happens when a
//! connection task ends by panic.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tidings_protocol::client::{Auth, Publish, Subscribe, Unsubscribe};
use tidings_protocol::server::{
    Authenticated, Connected, Pong, Published, Subscribed, Unsubscribed,
};
use tidings_protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};

use crate::auth::{Identity, unix_seconds};
use crate::hub::Mailbox;
use crate::state::Shared;
use crate::{clock, topic};

/// The state of one authenticated connection.
pub struct Session {
    shared: Arc<Shared>,
    client_id: String,
    identity: Identity,
    mailbox: Mailbox,
    /// Sorted, because `subscribed`/`unsubscribed` list them (template behaviour).
    subscriptions: BTreeSet<String>,
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

    /// When the current token expires, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.identity.expires_at
    }

    /// The first frame of the connection.
    pub fn connected(&self) -> ServerMessage {
        ServerMessage::Connected(Connected {
            client_id: self.client_id.clone(),
            timestamp: clock::now_rfc3339(),
            protocol: Some(PROTOCOL_VERSION),
            heartbeat_ms: Some(self.shared.config.heartbeat_interval.as_millis() as u64),
            user: Some(self.identity.user.clone()),
        })
    }

    /// Handle one text frame, pushing replies to `out`.
    pub fn on_text(&mut self, text: &str, out: &mut Vec<ServerMessage>) {
        let started = Instant::now();
        self.shared.metrics.messages_in.inc();
        if self.limiter.check().is_err() {
            return self.fail(out, ErrorCode::RateLimited, "Too many requests", None);
        }
        match ClientMessage::decode(text) {
            Ok(msg) => self.handle(msg, started, out),
            Err(e) => self.fail(out, e.code(), e.to_string(), None),
        }
    }

    /// Handle one binary frame: the protocol is JSON text only.
    pub fn on_binary(&mut self, out: &mut Vec<ServerMessage>) {
        self.shared.metrics.messages_in.inc();
        self.fail(
            out,
            ErrorCode::InvalidMessage,
            "binary frames are not supported; send JSON text frames",
            None,
        );
    }

    fn handle(&mut self, msg: ClientMessage, started: Instant, out: &mut Vec<ServerMessage>) {
        match msg {
            ClientMessage::Subscribe(m) => self.subscribe(m, out),
            ClientMessage::Unsubscribe(m) => self.unsubscribe(m, out),
            ClientMessage::Publish(m) => self.publish(m, started, out),
            ClientMessage::Ping(m) => out.push(ServerMessage::Pong(Pong { r#ref: m.r#ref })),
            ClientMessage::Auth(m) => self.reauthenticate(m, out),
            other @ (ClientMessage::History(_)
            | ClientMessage::Append(_)
            | ClientMessage::Read(_)) => {
                let r#ref = other.request_ref().map(str::to_owned);
                self.fail(
                    out,
                    ErrorCode::Unavailable,
                    format!(
                        "`{}` needs a durable store, which this server does not run",
                        other.kind()
                    ),
                    r#ref,
                )
            }
        }
    }

    fn subscribe(&mut self, m: Subscribe, out: &mut Vec<ServerMessage>) {
        // Validate everything first: a request either subscribes to all its topics or to none.
        for name in &m.topics {
            if let Err(e) = topic::validate(name, &self.shared.config) {
                return self.fail(
                    out,
                    ErrorCode::InvalidTopic,
                    format!("{e}: {name:?}"),
                    m.r#ref,
                );
            }
            if !self.identity.subscribe.allows(name) {
                return self.fail(
                    out,
                    ErrorCode::Forbidden,
                    format!("token may not subscribe to {name:?}"),
                    m.r#ref,
                );
            }
        }
        let new: BTreeSet<&String> = m
            .topics
            .iter()
            .filter(|t| !self.subscriptions.contains(*t))
            .collect();
        let max = self.shared.config.max_subscriptions;
        if self.subscriptions.len() + new.len() > max {
            return self.fail(
                out,
                ErrorCode::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
                m.r#ref,
            );
        }
        for name in new {
            self.shared.hub.subscribe(name, &self.mailbox);
            self.subscriptions.insert(name.clone());
        }
        // Without a durable store nothing can be replayed: recovery is reported incomplete.
        let recovered = m.since.map(|since| {
            since
                .into_keys()
                .filter(|t| self.subscriptions.contains(t))
                .map(|t| (t, false))
                .collect::<BTreeMap<_, _>>()
        });
        out.push(ServerMessage::Subscribed(Subscribed {
            topics: self.subscriptions.iter().cloned().collect(),
            recovered,
            r#ref: m.r#ref,
        }));
    }

    fn unsubscribe(&mut self, m: Unsubscribe, out: &mut Vec<ServerMessage>) {
        for name in &m.topics {
            if self.subscriptions.remove(name) {
                self.shared.hub.unsubscribe(name, self.mailbox.id());
            }
        }
        out.push(ServerMessage::Unsubscribed(Unsubscribed {
            topics: self.subscriptions.iter().cloned().collect(),
            r#ref: m.r#ref,
        }));
    }

    fn publish(&mut self, m: Publish, started: Instant, out: &mut Vec<ServerMessage>) {
        if let Err(e) = topic::validate(&m.topic, &self.shared.config) {
            let message = format!("{e}: {:?}", m.topic);
            return self.fail(out, ErrorCode::InvalidTopic, message, m.r#ref);
        }
        if !self.identity.publish.allows(&m.topic) {
            let message = format!("token may not publish to {:?}", m.topic);
            return self.fail(out, ErrorCode::Forbidden, message, m.r#ref);
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
            out.push(ServerMessage::Published(Published {
                r#ref: m.r#ref,
                topic,
                offset: None,
                epoch: None,
            }));
        }
    }

    fn reauthenticate(&mut self, m: Auth, out: &mut Vec<ServerMessage>) {
        match self.shared.auth.verify(&m.token) {
            Ok(identity) if identity.user == self.identity.user => {
                let expires_at = identity.expires_at.map(unix_seconds);
                self.identity = identity;
                out.push(ServerMessage::Authenticated(Authenticated {
                    r#ref: m.r#ref,
                    user: self.identity.user.clone(),
                    expires_at,
                }));
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
        out: &mut Vec<ServerMessage>,
        code: ErrorCode,
        message: impl Into<String>,
        r#ref: Option<String>,
    ) {
        self.shared.metrics.error(code);
        out.push(ServerMessage::error(code, message, r#ref));
    }
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

    fn shared(config: Config) -> Arc<Shared> {
        Arc::new(
            Shared::new(Config {
                jwt_secret: Some("k".into()),
                ..config
            })
            .expect("shared"),
        )
    }

    fn session(shared: &Arc<Shared>, spec: TokenSpec) -> (Session, mpsc::Receiver<Outbound>) {
        let token = mint("k", &spec).expect("mint");
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

    fn one(s: &mut Session, text: &str) -> ServerMessage {
        let mut out = Vec::new();
        s.on_text(text, &mut out);
        assert_eq!(out.len(), 1, "{text} -> {out:?}");
        out.remove(0)
    }

    fn error_code(msg: &ServerMessage) -> Option<ErrorCode> {
        match msg {
            ServerMessage::Error(e) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn template_flow_subscribe_publish_unsubscribe() {
        let shared = shared(Config::default());
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
    fn publish_with_ref_is_acknowledged() {
        let shared = shared(Config::default());
        let (mut a, _rx) = session(&shared, user("alice"));
        let ServerMessage::Published(p) = one(
            &mut a,
            r#"{"type":"publish","topic":"t","data":1,"ref":"r1"}"#,
        ) else {
            panic!("no ack")
        };
        assert_eq!((p.r#ref.as_deref(), p.topic.as_str()), (Some("r1"), "t"));
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
                r#"{"type":"subscribe","topics":["a","b","c"]}"#,
                ErrorCode::TooManySubscriptions,
            ),
            (
                r#"{"type":"history","topic":"a","ref":"h"}"#,
                ErrorCode::Unavailable,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(error_code(&one(&mut a, text)), Some(code), "{text}");
        }
        let mut out = Vec::new();
        a.on_binary(&mut out);
        assert_eq!(error_code(&out[0]), Some(ErrorCode::InvalidMessage));
        assert!(
            a.subscriptions.is_empty(),
            "a refused subscribe adds nothing"
        );
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
            r#"{"type":"subscribe","topics":["public.a","private"]}"#,
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
            "k",
            &TokenSpec {
                ttl: Some(Duration::from_secs(7200)),
                ..user("alice")
            },
        )
        .expect("mint");
        let before = a.expires_at();
        let reply = one(
            &mut a,
            &format!(r#"{{"type":"auth","token":"{fresh}","ref":"a"}}"#),
        );
        assert!(
            matches!(reply, ServerMessage::Authenticated(_)),
            "{reply:?}"
        );
        assert!(a.expires_at() > before);
        let other = mint("k", &user("mallory")).expect("mint");
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

    #[test]
    fn arbitrary_input_never_panics_and_gets_at_most_one_reply() {
        let shared = shared(Config {
            rate_limit: 1_000_000,
            rate_burst: 1_000_000,
            ..Config::default()
        });
        let (mut s, _rx) = session(&shared, user("fuzz"));
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            "\"type\"",
            ":",
            ",",
            "\"publish\"",
            "\"subscribe\"",
            "\"topics\"",
            "\"topic\"",
            "\"data\"",
            "\"since\"",
            "null",
            "1e999",
            "-0",
            "\"\\u0000\"",
            "\"ref\"",
            "\"\\ud800\"",
            "true",
            "{\"offset\":18446744073709551616}",
            "\u{1F600}",
            " ",
        ];
        // A fixed-seed xorshift keeps the run reproducible.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            let len = 1 + (state % 12) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            let mut out = Vec::new();
            s.on_text(&text, &mut out);
            assert!(out.len() <= 1, "{text} -> {out:?}");
        }
        assert!(matches!(
            one(&mut s, r#"{"type":"ping"}"#),
            ServerMessage::Pong(_)
        ));
    }
}
