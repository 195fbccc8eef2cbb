//! Template-compatible pub/sub over real WebSockets.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tidings_protocol::{ErrorCode, ServerMessage};
use tidings_server::{Config, TokenSpec};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn template_client_flow_works_unchanged() {
    let server = start(config()).await;
    // Exactly the JSON a template client sends, including its spacing and the user_id claim.
    let template_token = {
        let claims = json!({"user_id": "alice", "exp": 4102444800u64});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
        )
        .expect("encode")
    };
    let mut alice = Client::connect(&server.ws_url(&template_token)).await;
    let mut bob = server.connect("bob").await;
    assert!(!alice.client_id.is_empty());

    let reply = bob
        .request(r#"{"type": "subscribe", "topics": ["chat"]}"#)
        .await;
    let ServerMessage::Subscribed(s) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(s.topics, ["chat"]);

    alice.subscribe(&["chat"]).await;
    alice
        .send(r#"{"type": "publish", "topic": "chat", "data": {"text": "hello"}}"#)
        .await;
    let ServerMessage::Message(m) = bob.recv().await else {
        panic!("no message")
    };
    assert_eq!(m.topic, "chat");
    assert_eq!(
        m.data.get(),
        r#"{"text": "hello"}"#,
        "payload passes through byte for byte"
    );
    assert_eq!(m.from, alice.client_id);
    assert!(m.timestamp.ends_with('Z'));

    // No echo to the publisher: alice's next frame is the pong to her own ping.
    assert!(matches!(
        alice.request(r#"{"type": "ping"}"#).await,
        ServerMessage::Pong(_)
    ));

    let reply = bob
        .request(r#"{"type": "unsubscribe", "topics": ["chat"]}"#)
        .await;
    let ServerMessage::Unsubscribed(u) = reply else {
        panic!("{reply:?}")
    };
    assert!(u.topics.is_empty());
    alice
        .send(r#"{"type": "publish", "topic": "chat", "data": 2}"#)
        .await;
    assert!(
        matches!(
            bob.request(r#"{"type": "ping"}"#).await,
            ServerMessage::Pong(_)
        ),
        "no message after unsubscribe"
    );

    // The raw frames keep the template's field names.
    let raw: Value = serde_json::from_str(&ServerMessage::Message(m).encode()).expect("json");
    for field in ["type", "topic", "data", "from", "timestamp"] {
        assert!(raw.get(field).is_some(), "message lacks {field}");
    }
    assert!(server.stop().await);
}

#[tokio::test]
async fn same_user_on_two_connections_both_work() {
    let server = start(config()).await;
    let mut tab1 = server.connect("carol").await;
    let mut tab2 = server.connect("carol").await;
    assert_ne!(tab1.client_id, tab2.client_id);
    tab1.subscribe(&["room"]).await;
    tab2.subscribe(&["room"]).await;
    let mut other = server.connect("dave").await;
    other
        .send(r#"{"type":"publish","topic":"room","data":"x"}"#)
        .await;
    for tab in [&mut tab1, &mut tab2] {
        assert!(matches!(tab.recv().await, ServerMessage::Message(_)));
    }
    tab1.send(r#"{"type":"publish","topic":"room","data":"from tab1"}"#)
        .await;
    let ServerMessage::Message(m) = tab2.recv().await else {
        panic!()
    };
    assert_eq!(
        m.from, tab1.client_id,
        "the other tab of the same user receives it"
    );
    assert_eq!(server.health().await["clients"], 3);
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_keeps_working() {
    let server = start(config()).await;
    let mut c = server.connect("eve").await;
    let cases = [
        ("{not json", ErrorCode::InvalidMessage),
        ("[]", ErrorCode::InvalidMessage),
        (r#"{"type":"publish","topic":7}"#, ErrorCode::InvalidMessage),
        (r#"{"type":"explode"}"#, ErrorCode::InvalidMessageType),
        (
            r#"{"type":"subscribe","topics":[""]}"#,
            ErrorCode::InvalidTopic,
        ),
    ];
    for (text, code) in cases {
        assert_eq!(error_code(&c.request(text).await), Some(code), "{text}");
    }
    c.ws.send(Message::Binary(vec![0, 159, 146, 150].into()))
        .await
        .expect("send");
    assert_eq!(error_code(&c.recv().await), Some(ErrorCode::InvalidMessage));
    let reply = c.request(r#"{"type":"ping","ref":"still-alive"}"#).await;
    let ServerMessage::Pong(p) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(p.r#ref.as_deref(), Some("still-alive"));
}

#[tokio::test]
async fn oversize_frame_closes_with_1009_and_others_keep_working() {
    let server = start(Config {
        max_message_bytes: 64 * 1024,
        ..config()
    })
    .await;
    let mut big = server.connect("big").await;
    let mut a = server.connect("a").await;
    let mut b = server.connect("b").await;
    b.subscribe(&["t"]).await;
    let huge = format!(
        r#"{{"type":"publish","topic":"t","data":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    big.send(&huge).await;
    assert_eq!(big.closed().await, Ended::Close(1009));
    a.send(r#"{"type":"publish","topic":"t","data":"small"}"#)
        .await;
    let ServerMessage::Message(m) = b.recv().await else {
        panic!()
    };
    assert_eq!(m.data.get(), r#""small""#);
    server.wait_for_clients(2).await;
}

#[tokio::test]
async fn rate_limit_answers_rate_limited_then_recovers() {
    let server = start(Config {
        rate_limit: 1,
        rate_burst: 5,
        ..config()
    })
    .await;
    let mut c = server.connect("fast").await;
    let mut limited = 0;
    for _ in 0..8 {
        if error_code(&c.request(r#"{"type":"ping"}"#).await) == Some(ErrorCode::RateLimited) {
            limited += 1;
        }
    }
    assert!(
        limited >= 2,
        "burst of 5 then limited, got {limited} limited of 8"
    );
    let mut other = server.connect("calm").await;
    assert!(matches!(
        other.request(r#"{"type":"ping"}"#).await,
        ServerMessage::Pong(_)
    ));
}

#[tokio::test]
async fn token_claims_restrict_topics() {
    let server = start(config()).await;
    let t = token_with(TokenSpec {
        info: None,
        sub: "guest".into(),
        ttl: Some(std::time::Duration::from_secs(60)),
        subscribe: vec!["public.*".into()],
        publish: vec!["public.chat".into()],
    });
    let mut c = Client::connect(&server.ws_url(&t)).await;
    let reply = c
        .request(r#"{"type":"subscribe","topics":["admin"],"ref":"s"}"#)
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::Forbidden));
    let ServerMessage::Error(e) = reply else {
        panic!()
    };
    assert_eq!(e.r#ref.as_deref(), Some("s"));
    assert_eq!(
        error_code(
            &c.request(r#"{"type":"publish","topic":"public.news","data":1}"#)
                .await
        ),
        Some(ErrorCode::Forbidden)
    );
    c.subscribe(&["public.news"]).await;
    let reply = c
        .request(r#"{"type":"publish","topic":"public.chat","data":1,"ref":"p"}"#)
        .await;
    assert!(matches!(reply, ServerMessage::Published(_)), "{reply:?}");
}

#[tokio::test]
async fn subscription_limit_is_enforced() {
    let server = start(Config {
        max_subscriptions: 3,
        ..config()
    })
    .await;
    let mut c = server.connect("u").await;
    c.subscribe(&["a", "b", "c"]).await;
    let reply = c.request(r#"{"type":"subscribe","topics":["d"]}"#).await;
    assert_eq!(error_code(&reply), Some(ErrorCode::TooManySubscriptions));
    c.subscribe(&["a"]).await; // already subscribed: still fine
}

#[tokio::test]
async fn origin_allow_list_refuses_cross_site_upgrades() {
    let server = start(Config {
        allowed_origins: vec!["https://app.example".into()],
        ..config()
    })
    .await;
    let url = server.ws_url(&token("o"));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .expect("request");
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().expect("header"));
    assert_eq!(Client::refused(req).await, 403);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .expect("request");
    req.headers_mut()
        .insert("Origin", "https://app.example".parse().expect("header"));
    let (_ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("allowed origin");
}

#[tokio::test]
async fn connection_limits_refuse_with_http_status() {
    let server = start(Config {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..config()
    })
    .await;
    let _a = server.connect("a").await;
    let _b = server.connect("b").await;
    assert_eq!(Client::refused(server.ws_url(&token("c"))).await, 429);
    let metrics = server.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("reason=\"max_connections_per_ip\""));
}

#[tokio::test]
async fn backend_publishes_through_the_library_and_router_nests() {
    let tidings = tidings_server::Tidings::new(config()).expect("config");
    let app = axum::Router::new().nest("/rt", tidings.router());
    let server = start_with(tidings.clone(), app).await;
    let url = format!("ws://{}/rt/ws?token={}", server.addr, token("sub"));
    let mut c = Client::connect(&url).await;
    c.subscribe(&["news"]).await;
    let published = tidings
        .publish("news", &json!({"headline": "hi"}))
        .await
        .expect("publish");
    assert_eq!(published.offset, Some(1));
    let ServerMessage::Message(m) = c.recv().await else {
        panic!()
    };
    assert_eq!(
        (m.from.as_str(), m.data.get(), m.offset),
        ("server", r#"{"headline":"hi"}"#, Some(1))
    );
    assert!(tidings.publish("", &1).await.is_err());
}

#[tokio::test]
async fn every_error_caused_by_a_frame_with_a_ref_echoes_it() {
    let server = start(Config {
        rate_limit: 1,
        rate_burst: 30,
        ..config()
    })
    .await;
    let mut c = server.connect("eve").await;
    let long = "r".repeat(tidings_protocol::MAX_REF_LEN + 1);
    let long_id = "i".repeat(tidings_protocol::MAX_ID_LEN + 1);
    let cases: Vec<(String, ErrorCode, Option<&str>)> = vec![
        // Template clients switch on INVALID_MESSAGE_TYPE for objects without a string type.
        (
            r#"{"topic":"x"}"#.into(),
            ErrorCode::InvalidMessageType,
            None,
        ),
        (
            r#"{"topic":"x","ref":"t1"}"#.into(),
            ErrorCode::InvalidMessageType,
            Some("t1"),
        ),
        (
            r#"{"type":5,"ref":"t2"}"#.into(),
            ErrorCode::InvalidMessageType,
            Some("t2"),
        ),
        (
            r#"{"type":"warp","ref":"t3"}"#.into(),
            ErrorCode::InvalidMessageType,
            Some("t3"),
        ),
        (
            r#"{"type":"publish","ref":"t4"}"#.into(),
            ErrorCode::InvalidMessage,
            Some("t4"),
        ),
        (
            r#"{"type":"subscribe","topics":"chat","ref":"t5"}"#.into(),
            ErrorCode::InvalidMessage,
            Some("t5"),
        ),
        (r#"[{"ref":"t6"}]"#.into(), ErrorCode::InvalidMessage, None),
        (
            format!(r#"{{"type":"ping","ref":"{long}"}}"#),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            format!(r#"{{"type":"publish","topic":"t","id":"{long_id}","ref":"t7"}}"#),
            ErrorCode::InvalidMessage,
            Some("t7"),
        ),
        (
            r#"{"type":"history","topic":"","ref":"t8"}"#.into(),
            ErrorCode::InvalidTopic,
            Some("t8"),
        ),
    ];
    for (text, code, r) in &cases {
        let reply = c.request(text).await;
        let ServerMessage::Error(e) = &reply else {
            panic!("{text} -> {reply:?}")
        };
        assert_eq!((e.code, e.r#ref.as_deref()), (*code, *r), "{text}");
    }
    // Past the burst, RATE_LIMITED echoes the ref of the frame it dropped.
    let mut limited = None;
    for i in 0..40 {
        let reply = c
            .request(&format!(r#"{{"type":"ping","ref":"p{i}"}}"#))
            .await;
        if let ServerMessage::Error(e) = reply {
            assert_eq!(e.code, ErrorCode::RateLimited);
            limited = Some((i, e.r#ref));
            break;
        }
    }
    let (i, r) = limited.expect("rate limited within 40 pings");
    assert_eq!(r, Some(format!("p{i}")));
}
