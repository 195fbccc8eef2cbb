//! The session on its own: frames and times in, actions out. No thread, no store, no socket.

use std::sync::OnceLock;
use std::time::Duration;

use super::*;
use crate::auth::{TokenSpec, mint};

const K: &str = "session-test-secret-0123456789abcdef";

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        Authenticator::from_config(&Config {
            jwt_secret: Some(K.into()),
            ..Config::default()
        })
        .expect("auth")
    })
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn env() -> Env<'static> {
    Env {
        auth: authenticator(),
        metrics: metrics(),
    }
}

fn limits() -> Limits {
    Limits::of(&Config::default())
}

fn user(name: &str) -> TokenSpec {
    TokenSpec {
        info: None,
        sub: name.into(),
        ttl: Some(Duration::from_secs(60)),
        ..TokenSpec::default()
    }
}

fn session(limits: Limits, spec: TokenSpec) -> Session {
    let token = mint(K, &spec).expect("mint");
    let identity = authenticator().verify(&token).expect("verify");
    Session::new("n-1".into(), identity, limits, Instant::now())
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

fn actions(s: &mut Session, text: &str) -> Vec<Action> {
    let mut out = Vec::new();
    s.on_text(&env(), text, Instant::now(), &mut out);
    out
}

fn one(s: &mut Session, text: &str) -> ServerMessage {
    let mut replies = replies(actions(s, text));
    assert_eq!(replies.len(), 1, "{text} -> {replies:?}");
    replies.remove(0)
}

fn error_code(msg: &ServerMessage) -> Option<ErrorCode> {
    match msg {
        ServerMessage::Error(e) => Some(e.code),
        _ => None,
    }
}

fn subscribe_action(out: Vec<Action>) -> SubscribeAction {
    match out.into_iter().next() {
        Some(Action::Subscribe(a)) => a,
        other => panic!("expected a subscribe, got {other:?}"),
    }
}

#[test]
fn template_flow_subscribe_publish_unsubscribe() {
    let mut b = session(limits(), user("alice"));
    let a = subscribe_action(actions(
        &mut b,
        r#"{"type":"subscribe","topics":["news","chat","chat"]}"#,
    ));
    let names: Vec<(&str, bool)> = a
        .topics
        .iter()
        .map(|(t, new, _)| (t.as_ref(), *new))
        .collect();
    assert_eq!(names, [("chat", true), ("news", true)]);
    assert_eq!(a.all, ["chat", "news"]);
    let again = subscribe_action(actions(
        &mut b,
        r#"{"type":"subscribe","topics":["chat"],"since":{"chat":{"offset":3}}}"#,
    ));
    assert!(!again.topics[0].1, "already subscribed");
    assert_eq!(again.topics[0].2.as_ref().map(|p| p.offset), Some(3));
    let out = actions(
        &mut b,
        r#"{"type":"publish","topic":"chat","data":{"text":"hi"}}"#,
    );
    assert!(matches!(out.as_slice(), [Action::Publish(p, _)] if p.topic == "chat"));
    let out = actions(
        &mut b,
        r#"{"type":"unsubscribe","topics":["chat","never"]}"#,
    );
    let [
        Action::Unsubscribe(removed),
        Action::Reply(ServerMessage::Unsubscribed(u)),
    ] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    assert_eq!(removed.len(), 1);
    assert_eq!(
        u.topics,
        ["news"],
        "reply lists the remaining subscriptions"
    );
    assert!(matches!(
        one(&mut b, r#"{"type":"ping"}"#),
        ServerMessage::Pong(_)
    ));
    assert_eq!(b.subscriptions().count(), 1);
}

#[test]
fn reads_and_writes_go_to_the_operations() {
    let mut a = session(limits(), user("alice"));
    for text in [
        r#"{"type":"history","topic":"t","ref":"h"}"#,
        r#"{"type":"read","stream":"s"}"#,
        r#"{"type":"append","stream":"s","events":[]}"#,
    ] {
        let out = actions(&mut a, text);
        assert!(
            matches!(
                out.as_slice(),
                [Action::History(_) | Action::Read(_) | Action::Append(_)]
            ),
            "{text} -> {out:?}"
        );
    }
}

#[test]
fn bad_input_gets_precise_errors() {
    let mut a = session(limits(), user("alice"));
    let cases = [
        ("{nope", ErrorCode::InvalidMessage),
        (r#"{"type":"warp"}"#, ErrorCode::InvalidMessageType),
        (r#"{"topic":"x"}"#, ErrorCode::InvalidMessageType),
        (
            r#"{"type":"subscribe","topics":["a\u0000"]}"#,
            ErrorCode::InvalidTopic,
        ),
        (
            r#"{"type":"history","topic":"t","since":-1}"#,
            ErrorCode::InvalidMessage,
        ),
    ];
    for (text, code) in cases {
        assert_eq!(error_code(&one(&mut a, text)), Some(code), "{text}");
    }
    let mut out = Vec::new();
    a.on_binary(&env(), &mut out);
    assert_eq!(
        error_code(&replies(out)[0]),
        Some(ErrorCode::InvalidMessage)
    );
    assert_eq!(
        a.subscriptions().count(),
        0,
        "a refused subscribe adds nothing"
    );
}

#[test]
fn a_multi_topic_subscribe_is_answered_per_topic() {
    let spec = TokenSpec {
        info: None,
        subscribe: vec!["ok.*".into()],
        ..user("bob")
    };
    let mut s = session(
        Limits {
            max_subscriptions: 2,
            ..limits()
        },
        spec,
    );
    let a = subscribe_action(actions(
        &mut s,
        r#"{"type":"subscribe","topics":["ok.a","secret.b","","ok.b","ok.c"],"ref":"r"}"#,
    ));
    let accepted: Vec<&str> = a.topics.iter().map(|(t, _, _)| t.as_ref()).collect();
    assert_eq!(accepted, ["ok.a", "ok.b"]);
    assert_eq!(a.r#ref.as_deref(), Some("r"));
    let codes: Vec<(&str, ErrorCode)> = a
        .refused
        .iter()
        .map(|(t, r)| (t.as_str(), r.code))
        .collect();
    assert_eq!(
        codes,
        [
            ("", ErrorCode::InvalidTopic),
            ("ok.c", ErrorCode::TooManySubscriptions),
            ("secret.b", ErrorCode::Forbidden),
        ]
    );
    // One topic refused on its own is an error, as it always was.
    let reply = one(
        &mut s,
        r#"{"type":"subscribe","topics":["secret.b"],"ref":"x"}"#,
    );
    assert_eq!(error_code(&reply), Some(ErrorCode::Forbidden));
}

#[test]
fn the_rate_limit_runs_on_the_time_it_is_given() {
    let mut a = session(
        Limits {
            rate_limit: 1,
            rate_burst: 3,
            ..limits()
        },
        user("alice"),
    );
    let t0 = Instant::now();
    let at = |s: &mut Session, t: Instant| {
        let mut out = Vec::new();
        s.on_text(&env(), r#"{"type":"ping","ref":"p"}"#, t, &mut out);
        replies(out).remove(0)
    };
    for _ in 0..3 {
        assert!(matches!(at(&mut a, t0), ServerMessage::Pong(_)));
    }
    let limited = at(&mut a, t0);
    assert_eq!(error_code(&limited), Some(ErrorCode::RateLimited));
    let ServerMessage::Error(e) = limited else {
        unreachable!()
    };
    assert_eq!(
        e.r#ref.as_deref(),
        Some("p"),
        "the ref of the dropped frame"
    );
    // A second later (by the frames' clock, not the wall clock) one more fits.
    assert!(matches!(
        at(&mut a, t0 + Duration::from_secs(1)),
        ServerMessage::Pong(_)
    ));
    assert_eq!(
        error_code(&at(&mut a, t0 + Duration::from_secs(1))),
        Some(ErrorCode::RateLimited)
    );
}

#[test]
fn auth_refresh_keeps_identity_and_refuses_another() {
    let mut a = session(limits(), user("alice"));
    let fresh = mint(
        K,
        &TokenSpec {
            info: None,
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
fn connected_announces_the_session() {
    let a = session(limits(), user("alice"));
    let ServerMessage::Connected(c) = a.connected() else {
        panic!()
    };
    assert_eq!(c.client_id, "n-1");
    assert_eq!(c.user.as_deref(), Some("alice"));
    assert_eq!(c.max_message_bytes, Some(1024 * 1024));
    assert_eq!(c.heartbeat_ms, Some(25_000));
}

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
        s.on_text(&env(), text, Instant::now(), &mut out);
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
        s.on_text(
            &env(),
            r#"{"type":"ping","ref":"alive"}"#,
            Instant::now(),
            &mut out,
        );
        let pong = replies(out);
        prop_assert!(
            matches!(pong.as_slice(), [ServerMessage::Pong(p)] if p.r#ref.as_deref() == Some("alive")),
            "after {}: {:?}",
            text,
            pong
        );
        Ok(())
    }

    /// A fresh session per case.
    fn session_for_props() -> Session {
        session(
            Limits {
                rate_limit: 1_000_000,
                rate_burst: 1_000_000,
                max_subscriptions: 4,
                ..limits()
            },
            user("fuzz"),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
            let mut s = session_for_props();
            run(&mut s, &String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn arbitrary_json(value in any_json()) {
            let mut s = session_for_props();
            run(&mut s, &value.to_string())?;
        }

        #[test]
        fn near_valid_messages(values in prop::collection::vec(near_valid(), 1..6)) {
            // Several frames on one connection, so state (subscriptions) carries over.
            let mut s = session_for_props();
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
            let mut s = session_for_props();
            run(&mut s, &pieces.concat())?;
        }
    }
}
