//! Presence on one node: members of presence topics, `join` / `leave`, `presence`,
//! `presence_stats`, permissions, and the HTTP API's view. Real WebSocket clients against a
//! real server on 127.0.0.1:0. (Across nodes on Redis: `tests/cluster`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tidings_protocol::server::{Member, MemberEvent};
use tidings_protocol::{ErrorCode, ServerMessage};
use tidings_server::{Config, TokenSpec};

const API_KEY: &str = "presence-api-key-0123456789abcdef";

fn presence_config() -> Config {
    Config {
        presence_topics: vec!["room.*".into()],
        presence_max_members: 3,
        api_key: Some(API_KEY.into()),
        ..config()
    }
}

/// A client of `user` whose token carries `info`.
async fn member(server: &TestServer, user: &str, info: Option<Value>) -> Client {
    let token = token_with(TokenSpec {
        sub: user.into(),
        ttl: Some(Duration::from_secs(3600)),
        info,
        ..TokenSpec::default()
    });
    Client::connect(&server.ws_url(&token)).await
}

fn joined(msg: ServerMessage) -> MemberEvent {
    match msg {
        ServerMessage::Join(j) => j,
        other => panic!("expected a join, got {other:?}"),
    }
}

/// Nothing but the `pong` of a ping sent now: no stray join or leave is queued.
async fn quiet(c: &mut Client) {
    match c.request(r#"{"type":"ping","ref":"quiet"}"#).await {
        ServerMessage::Pong(_) => {}
        other => panic!("expected nothing before the pong, got {other:?}"),
    }
}

#[tokio::test]
async fn members_join_are_listed_counted_and_leave_on_close() {
    let server = start(presence_config()).await;
    let mut alice = member(&server, "alice", Some(json!({"name": "Alice"}))).await;
    alice.subscribe(&["room.1"]).await;
    let mut bob = member(
        &server,
        "bob",
        Some(json!({"name": "Bob", "color": "#36c"})),
    )
    .await;
    bob.subscribe(&["room.1"]).await;

    // Alice sees Bob arrive, with his user and his token's info as it was; Bob does not see
    // his own join.
    let join = joined(alice.recv().await);
    assert_eq!(
        (
            join.topic.as_str(),
            join.client_id.as_str(),
            join.user.as_str()
        ),
        ("room.1", bob.client_id.as_str(), "bob")
    );
    let info: Value = serde_json::from_str(join.info.get()).expect("info");
    assert_eq!(info, json!({"name": "Bob", "color": "#36c"}));
    quiet(&mut bob).await;

    // A second tab of Bob's: two members, still two users.
    let mut tab = member(&server, "bob", None).await;
    tab.subscribe(&["room.1"]).await;
    assert_eq!(joined(alice.recv().await).client_id, tab.client_id);
    assert_eq!(joined(bob.recv().await).client_id, tab.client_id);

    match alice
        .request(r#"{"type":"presence","topic":"room.1","ref":"p1"}"#)
        .await
    {
        ServerMessage::Presence(p) => {
            assert_eq!(p.r#ref.as_deref(), Some("p1"));
            assert!(!p.more);
            let mut members: Vec<(String, String, String)> = p
                .members
                .iter()
                .map(|m| {
                    let info: Value = serde_json::from_str(m.info.get()).expect("info");
                    (m.client_id.clone(), m.user.clone(), info.to_string())
                })
                .collect();
            members.sort();
            let mut want = vec![
                (
                    alice.client_id.clone(),
                    "alice".into(),
                    json!({"name": "Alice"}).to_string(),
                ),
                (
                    bob.client_id.clone(),
                    "bob".into(),
                    json!({"name": "Bob", "color": "#36c"}).to_string(),
                ),
                (tab.client_id.clone(), "bob".into(), "null".into()),
            ];
            want.sort();
            assert_eq!(members, want);
        }
        other => panic!("{other:?}"),
    }
    match bob
        .request(r#"{"type":"presence_stats","topic":"room.1","ref":"s1"}"#)
        .await
    {
        ServerMessage::PresenceStats(s) => {
            assert_eq!((s.clients, s.users, s.r#ref.as_deref()), (3, 2, Some("s1")));
        }
        other => panic!("{other:?}"),
    }

    // A clean close: the others see the leave within a second.
    let closed = Instant::now();
    tab.ws.close(None).await.expect("close");
    for c in [&mut alice, &mut bob] {
        match c.recv().await {
            ServerMessage::Leave(l) => {
                assert_eq!(
                    (l.client_id.as_str(), l.user.as_str()),
                    (tab.client_id.as_str(), "bob")
                );
                assert_eq!(l.info.get(), "null");
            }
            other => panic!("expected a leave, got {other:?}"),
        }
    }
    assert!(
        closed.elapsed() < Duration::from_secs(1),
        "{:?}",
        closed.elapsed()
    );

    // Unsubscribing leaves too.
    bob.request(r#"{"type":"unsubscribe","topics":["room.1"]}"#)
        .await;
    match alice.recv().await {
        ServerMessage::Leave(l) => assert_eq!(l.client_id, bob.client_id),
        other => panic!("{other:?}"),
    }
    match alice
        .request(r#"{"type":"presence_stats","topic":"room.1"}"#)
        .await
    {
        ServerMessage::PresenceStats(s) => assert_eq!((s.clients, s.users), (1, 1)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_topic_without_presence_has_no_members_and_says_so() {
    let server = start(presence_config()).await;
    let mut alice = server.connect("alice").await;
    alice.subscribe(&["chat"]).await;
    let mut bob = server.connect("bob").await;
    bob.subscribe(&["chat"]).await;
    bob.ws.close(None).await.expect("close");
    quiet(&mut alice).await; // no join, no leave

    for kind in ["presence", "presence_stats"] {
        let reply = alice
            .request(&json!({"type": kind, "topic": "chat", "ref": "x"}).to_string())
            .await;
        assert_eq!(
            error_code(&reply),
            Some(ErrorCode::PresenceDisabled),
            "{reply:?}"
        );
    }
}

#[tokio::test]
async fn presence_needs_the_permission_to_subscribe() {
    let server = start(presence_config()).await;
    let token = token_with(TokenSpec {
        sub: "eve".into(),
        ttl: Some(Duration::from_secs(3600)),
        subscribe: vec!["room.public".into()],
        ..TokenSpec::default()
    });
    let mut eve = Client::connect(&server.ws_url(&token)).await;
    let reply = eve
        .request(r#"{"type":"presence","topic":"room.secret","ref":"p"}"#)
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::Forbidden), "{reply:?}");
    let reply = eve
        .request(r#"{"type":"presence_stats","topic":"room.public","ref":"s"}"#)
        .await;
    assert!(
        matches!(reply, ServerMessage::PresenceStats(_)),
        "{reply:?}"
    );
    let reply = eve
        .request(r#"{"type":"presence","topic":"","ref":"e"}"#)
        .await;
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::InvalidTopic),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_reply_is_bounded_and_the_http_api_sees_the_same() {
    let server = start(presence_config()).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = member(&server, &format!("u{i}"), Some(json!({"n": i}))).await;
        c.subscribe(&["room.big"]).await;
        clients.push(c);
    }
    // Asked by a client that is not a member (members hear the joins).
    let mut observer = server.connect("observer").await;
    match observer
        .request(r#"{"type":"presence","topic":"room.big"}"#)
        .await
    {
        ServerMessage::Presence(p) => {
            assert_eq!(p.members.len(), 3, "presence_max_members");
            assert!(p.more, "more members than one reply carries");
        }
        other => panic!("{other:?}"),
    }

    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("http://{}{path}", server.addr))
            .bearer_auth(API_KEY)
            .send()
    };
    let response = get("/api/topics/room.big/presence").await.expect("GET");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        (body["type"].as_str(), body["more"].as_bool()),
        (Some("presence"), Some(true))
    );
    let members: Vec<Member> = serde_json::from_value(body["members"].clone()).expect("members");
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.user.starts_with('u')));

    let response = get("/api/topics/chat/presence").await.expect("GET");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["code"], "PRESENCE_DISABLED", "{body}");
}
