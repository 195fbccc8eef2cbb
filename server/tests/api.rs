//! The backend HTTP API (`/api/...`) against a real server: every endpoint, every error
//! status, live fan-out of an API publish to a WebSocket subscriber, and concurrent appends.

mod common;

use common::{TempDir, WAIT, config, sqlite_config, start};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings_protocol::ServerMessage;
use tidings_server::Config;

/// The key every test server is configured with.
const KEY: &str = "test-api-key-0123456789";

/// A config with the API enabled and `live.*` ephemeral.
fn api_config(base: Config) -> Config {
    Config {
        api_key: Some(KEY.into()),
        ephemeral_topics: vec!["live.*".into()],
        ..base
    }
}

/// A small HTTP client for the API, every request bounded by [`WAIT`].
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &common::TestServer) -> Api {
        Api {
            base: format!("http://{}", server.addr),
            http: reqwest::Client::builder()
                .timeout(WAIT)
                .build()
                .expect("http client"),
        }
    }

    /// Send `request` with the right key; returns the status and the JSON body.
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.bearer_auth(KEY).send().await.expect("http request");
        read(response).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string()).await
    }

    async fn post_raw(&self, path: &str, body: String) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).body(body)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Status and JSON body of a response; every API response, errors included, is JSON.
async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    assert!(
        content_type.starts_with("application/json"),
        "{status}: content type {content_type:?}, body {text:?}"
    );
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {e}: {text}"));
    (status, body)
}

/// Assert an error response's status and code.
fn assert_error(reply: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["type"], "error", "{}", reply.1);
    assert_eq!(reply.1["code"], code, "{}", reply.1);
    assert!(reply.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn publish_reaches_a_websocket_subscriber_live_with_its_offset() {
    let server = start(api_config(config())).await;
    let api = Api::new(&server);
    let mut alice = server.connect("alice").await;
    alice.subscribe(&["chat/room 1"]).await;

    // A raw body: the payload must arrive byte for byte (key order, number spelling).
    let raw = r#"{"topic": "chat/room 1", "data": {"text":"hi","n":1.50}}"#;
    let (status, body) = api.post_raw("/api/publish", raw.to_owned()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "published");
    assert_eq!(body["topic"], "chat/room 1");
    assert_eq!(body["offset"], 1);
    let epoch = body["epoch"].as_str().expect("epoch").to_owned();
    assert!(body.get("queued").is_none());

    match alice.recv().await {
        ServerMessage::Message(m) => {
            assert_eq!(m.topic, "chat/room 1");
            assert_eq!(m.offset, Some(1));
            assert_eq!(m.epoch.as_deref(), Some(epoch.as_str()));
            assert_eq!(m.from, "api");
            assert_eq!(m.data.get(), r#"{"text":"hi","n":1.50}"#, "byte for byte");
        }
        other => panic!("expected the message, got {other:?}"),
    }

    // An idempotent retry is acknowledged with the original offset and not delivered twice.
    let retry = json!({"topic": "chat/room 1", "data": 2, "id": "m-2"});
    let (_, first) = api.post("/api/publish", &retry).await;
    let (_, second) = api.post("/api/publish", &retry).await;
    assert_eq!(first["offset"], 2);
    assert_eq!(second["offset"], 2, "{second}");
    match alice.recv().await {
        ServerMessage::Message(m) => assert_eq!(m.offset, Some(2)),
        other => panic!("expected the message, got {other:?}"),
    }
}

#[tokio::test]
async fn history_decodes_names_and_pages_with_since_and_limit() {
    let dir = TempDir::new("api-history");
    let server = start(api_config(sqlite_config(&dir))).await;
    let api = Api::new(&server);
    for n in 1..=5 {
        let (status, body) = api
            .post("/api/publish", &json!({"topic": "a/b c?#%", "data": n}))
            .await;
        assert_eq!((status, body["offset"].as_u64()), (StatusCode::OK, Some(n)));
    }
    // The name may come as one encoded segment or with literal slashes.
    for path in [
        "/api/topics/a%2Fb%20c%3F%23%25/history",
        "/api/topics/a/b%20c%3F%23%25/history",
    ] {
        let (status, page) = api.get(&format!("{path}?since=2&limit=2")).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(page["type"], "history");
        assert_eq!(page["topic"], "a/b c?#%");
        assert_eq!(page["latest"], 5);
        let offsets: Vec<_> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| (m["offset"].as_u64(), m["data"].as_u64(), m["from"].clone()))
            .collect();
        assert_eq!(
            offsets,
            [
                (Some(3), Some(3), json!("api")),
                (Some(4), Some(4), json!("api"))
            ]
        );
    }
    // A topic never written is an empty page, not an error (topics exist implicitly).
    let (status, page) = api.get("/api/topics/nothing-yet/history").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["latest"], 0);
    assert_eq!(page["messages"], json!([]));
}

#[tokio::test]
async fn ephemeral_publish_reports_queued_and_has_no_history() {
    let server = start(api_config(config())).await;
    let api = Api::new(&server);
    let mut bob = server.connect("bob").await;
    bob.subscribe(&["live.scores"]).await;

    let (status, body) = api
        .post(
            "/api/publish",
            &json!({"topic": "live.scores", "data": [1, 0]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["offset"], Value::Null);
    assert_eq!(body["epoch"], Value::Null);
    assert_eq!(body["queued"], 1);
    match bob.recv().await {
        ServerMessage::Message(m) => {
            assert_eq!((m.offset, m.from.as_str()), (None, "api"));
            assert_eq!(m.data.get(), "[1,0]");
        }
        other => panic!("expected the message, got {other:?}"),
    }

    let history = api.get("/api/topics/live.scores/history").await;
    assert_error(&history, StatusCode::BAD_REQUEST, "UNAVAILABLE");
    let read = api.get("/api/streams/live.scores").await;
    assert_error(&read, StatusCode::BAD_REQUEST, "UNAVAILABLE");
    let events = json!({"events": [{"type": "x", "data": 1}]});
    let append = api.post("/api/streams/live.scores/events", &events).await;
    assert_error(&append, StatusCode::BAD_REQUEST, "UNAVAILABLE");
}

#[tokio::test]
async fn append_then_read_a_stream() {
    let server = start(api_config(config())).await;
    let api = Api::new(&server);
    let created = json!({
        "expected_version": 0,
        "events": [
            {"type": "order_created", "data": {"customer": "c1"}},
            {"type": "item_added", "data": {"sku": "A", "qty": 2}},
        ]
    });
    let (status, body) = api.post("/api/streams/orders%2F1/events", &created).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"type": "appended", "stream": "orders/1", "version": 2})
    );

    // No expected version: append at any version.
    let more = json!({"events": [{"type": "order_confirmed"}]});
    let (status, body) = api.post("/api/streams/orders/1/events", &more).await;
    assert_eq!(
        (status, body["version"].as_u64()),
        (StatusCode::CREATED, Some(3))
    );

    let (status, page) = api.get("/api/streams/orders%2F1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["type"], "events");
    assert_eq!(page["stream"], "orders/1");
    assert_eq!(page["version"], 3);
    let events = page["events"].as_array().expect("events");
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e["version"].as_u64(), e["type"].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(1), Some("order_created")),
            (Some(2), Some("item_added")),
            (Some(3), Some("order_confirmed")),
        ]
    );
    assert_eq!(events[1]["data"], json!({"sku": "A", "qty": 2}));
    assert_eq!(events[2]["data"], Value::Null);

    let (status, page) = api.get("/api/streams/orders/1?from_version=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["events"][0]["version"], 3);
}

#[tokio::test]
async fn version_conflict_is_409_with_the_current_version() {
    let server = start(api_config(config())).await;
    let api = Api::new(&server);
    let event = |expected: u64| json!({"expected_version": expected, "events": [{"type": "e"}]});
    let (status, _) = api.post("/api/streams/s/events", &event(0)).await;
    assert_eq!(status, StatusCode::CREATED);

    let reply = api.post("/api/streams/s/events", &event(0)).await;
    assert_error(&reply, StatusCode::CONFLICT, "VERSION_CONFLICT");
    assert_eq!(reply.1["current_version"], 1);
    let reply = api.post("/api/streams/s/events", &event(5)).await;
    assert_error(&reply, StatusCode::CONFLICT, "VERSION_CONFLICT");
    assert_eq!(reply.1["current_version"], 1);
}

#[tokio::test]
async fn concurrent_appends_at_the_same_version_one_wins() {
    let dir = TempDir::new("api-race");
    let server = start(api_config(sqlite_config(&dir))).await;
    let api = Api::new(&server);
    for version in 0..20u64 {
        let body = |who: &str| json!({"expected_version": version, "events": [{"type": "claimed", "data": who}]});
        let (first, second) = (body("a"), body("b"));
        let (a, b) = tokio::join!(
            api.post("/api/streams/race/events", &first),
            api.post("/api/streams/race/events", &second),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "round {version}: {} / {}",
            a.1,
            b.1
        );
        let (winner, loser) = if a.0 == StatusCode::CREATED {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(winner.1["version"], version + 1);
        assert_eq!(loser.1["current_version"], version + 1);
    }
    let (_, page) = api.get("/api/streams/race").await;
    assert_eq!(page["version"], 20);
    assert_eq!(page["events"].as_array().map(Vec::len), Some(20));
}

#[tokio::test]
async fn bad_requests_are_400_with_a_json_error() {
    let server = start(api_config(config())).await;
    let api = Api::new(&server);
    let cases = [
        ("/api/publish", "{not json".to_owned(), "INVALID_MESSAGE"),
        (
            "/api/publish",
            json!({"data": 1}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "/api/publish",
            json!({"topic": 7}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "/api/publish",
            json!({"topic": "t", "dta": 1}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "/api/publish",
            json!({"topic": ""}).to_string(),
            "INVALID_TOPIC",
        ),
        (
            "/api/publish",
            json!({"topic": "a\nb"}).to_string(),
            "INVALID_TOPIC",
        ),
        ("/api/publish", "x".repeat(300), "INVALID_MESSAGE"),
        (
            "/api/streams/s/events",
            json!({"events": []}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "/api/streams/s/events",
            json!({"expected_version": -1, "events": [{"type": "e"}]}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "/api/streams/s/events",
            json!({"expected_verison": 1, "events": [{"type": "e"}]}).to_string(),
            "INVALID_MESSAGE",
        ),
        (
            "/api/streams/a%00b/events",
            json!({"events": [{"type": "e"}]}).to_string(),
            "INVALID_TOPIC",
        ),
    ];
    for (path, body, code) in cases {
        let reply = api.post_raw(path, body.clone()).await;
        assert_eq!(
            reply.0,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {}",
            reply.1
        );
        assert_eq!(reply.1["code"], code, "{path} {body}: {}", reply.1);
    }
    let long = "x".repeat(Config::default().max_topic_len + 1);
    for path in [
        "/api/topics/a%0Ab/history".to_owned(),
        format!("/api/topics/{long}/history"),
        "/api/streams/a%0Ab".to_owned(),
    ] {
        assert_error(
            &api.get(&path).await,
            StatusCode::BAD_REQUEST,
            "INVALID_TOPIC",
        );
    }
    for path in [
        "/api/topics/t/history?since=abc",
        "/api/topics/t/history?limit=-1",
        "/api/topics/t/history?sinse=1",
        "/api/streams/s?from_version=x",
        "/api/topics/%FF/history",
    ] {
        assert_error(
            &api.get(path).await,
            StatusCode::BAD_REQUEST,
            "INVALID_MESSAGE",
        );
    }
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401() {
    let server = start(api_config(config())).await;
    let api = Api::new(&server);
    let body = json!({"topic": "t", "data": 1}).to_string();
    let url = api.url("/api/publish");
    let attempts = [
        api.http.post(&url),
        api.http.post(&url).bearer_auth("wrong"),
        api.http.post(&url).bearer_auth(format!("{KEY}x")),
        api.http.post(&url).header("x-api-key", &KEY[1..]),
        api.http
            .post(&url)
            .header("authorization", format!("Basic {KEY}")),
        api.http.get(api.url("/api/streams/s")).bearer_auth("wrong"),
    ];
    for attempt in attempts {
        let response = attempt.body(body.clone()).send().await.expect("request");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        assert_error(
            &read(response).await,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        );
    }
    // Both header forms work; the Bearer scheme is case-insensitive.
    for request in [
        api.http.post(&url).header("x-api-key", KEY),
        api.http
            .post(&url)
            .header("authorization", format!("bearer {KEY}")),
    ] {
        let (status, reply) = read(request.body(body.clone()).send().await.expect("req")).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    // The key is checked before the body: no key and bad JSON is still a 401.
    let response = api.http.post(&url).body("{").send().await.expect("request");
    assert_error(
        &read(response).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
}

#[tokio::test]
async fn without_an_api_key_every_api_route_is_404() {
    let server = start(config()).await;
    let api = Api::new(&server);
    let body = json!({"topic": "t", "data": 1});
    for reply in [
        api.post("/api/publish", &body).await,
        api.get("/api/topics/t/history").await,
        api.get("/api/streams/s").await,
        api.post("/api/streams/s/events", &json!({"events": [{"type": "e"}]}))
            .await,
    ] {
        assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");
        let message = reply.1["message"].as_str().unwrap_or_default();
        assert!(message.contains("disabled"), "{message}");
    }
}

#[tokio::test]
async fn unknown_streams_and_endpoints_are_404_and_wrong_methods_405() {
    let server = start(api_config(config())).await;
    let api = Api::new(&server);
    let reply = api.get("/api/streams/never-written").await;
    assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert!(
        reply.1["message"]
            .as_str()
            .unwrap_or_default()
            .contains("never-written")
    );
    for path in ["/api/nope", "/api/topics/t", "/api/topics/t/histories"] {
        assert_error(&api.get(path).await, StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    let events = json!({"events": [{"type": "e"}]});
    let reply = api.post("/api/streams/s", &events).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");

    let response = api
        .http
        .get(api.url("/api/publish"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"POST"[..])
    );
    assert_error(
        &read(response).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "INVALID_MESSAGE",
    );
}

#[tokio::test]
async fn a_body_over_max_message_bytes_is_a_json_413() {
    let server = start(Config {
        max_message_bytes: 1024,
        ..api_config(config())
    })
    .await;
    let api = Api::new(&server);
    let big = json!({"topic": "t", "data": "x".repeat(4096)});
    let reply = api.post("/api/publish", &big).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "MESSAGE_TOO_LARGE");
    let events = json!({"events": [{"type": "e", "data": "x".repeat(4096)}]});
    let reply = api.post("/api/streams/s/events", &events).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "MESSAGE_TOO_LARGE");
    // Just under the limit is fine.
    let small = json!({"topic": "t", "data": "x".repeat(900)});
    assert_eq!(api.post("/api/publish", &small).await.0, StatusCode::OK);
}

#[tokio::test]
async fn positions_out_of_range_are_400_on_every_route() {
    let dir = TempDir::new("api-positions");
    for base in [config(), sqlite_config(&dir)] {
        let server = start(api_config(base)).await;
        let api = Api::new(&server);
        for n in 0..3 {
            api.post("/api/publish", &json!({"topic": "t", "data": n}))
                .await;
        }
        let (status, _) = api
            .post("/api/streams/s/events", &json!({"events": [{"type": "x"}]}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        for path in [
            "/api/topics/t/history?since=18446744073709551615",
            "/api/topics/t/history?since=9007199254740992",
            "/api/topics/t/history?since=-1",
            "/api/streams/s?from_version=18446744073709551615",
        ] {
            assert_error(
                &api.get(path).await,
                StatusCode::BAD_REQUEST,
                "INVALID_MESSAGE",
            );
        }
        let over = json!({"expected_version": u64::MAX, "events": [{"type": "x"}]});
        assert_error(
            &api.post("/api/streams/s/events", &over).await,
            StatusCode::BAD_REQUEST,
            "INVALID_MESSAGE",
        );
        let (status, page) = api
            .get("/api/topics/t/history?since=9007199254740991")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            page["messages"],
            json!([]),
            "past the end is nothing, not everything"
        );
        let long_id = "i".repeat(tidings_protocol::MAX_ID_LEN + 1);
        assert_error(
            &api.post("/api/publish", &json!({"topic": "t", "id": long_id}))
                .await,
            StatusCode::BAD_REQUEST,
            "INVALID_MESSAGE",
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn api_pages_are_bounded_in_bytes_and_say_there_is_more() {
    let dir = TempDir::new("api-pages");
    for base in [config(), sqlite_config(&dir)] {
        let server = start(api_config(Config {
            max_reply_bytes: 64 * 1024,
            ..base
        }))
        .await;
        let api = Api::new(&server);
        let pad = "x".repeat(20 * 1024);
        for i in 0..7 {
            api.post(
                "/api/publish",
                &json!({"topic": "big", "data": {"i": i, "pad": pad}}),
            )
            .await;
            api.post(
                "/api/streams/log/events",
                &json!({"events": [{"type": "e", "data": {"i": i, "pad": pad}}]}),
            )
            .await;
        }
        let (_, page) = api.get("/api/topics/big/history").await;
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            (page["more"].clone(), page["latest"].clone()),
            (json!(true), json!(7))
        );
        let (_, page) = api.get("/api/topics/big/history?since=6").await;
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
        assert_eq!(page.get("more"), None, "the last page says nothing more");
        let (_, events) = api.get("/api/streams/log").await;
        assert_eq!(events["events"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            (events["more"].clone(), events["version"].clone()),
            (json!(true), json!(7))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn api_idempotency_keys_are_its_own_and_a_reused_key_is_409() {
    let dir = TempDir::new("api-idem");
    let server = start(api_config(sqlite_config(&dir))).await;
    let api = Api::new(&server);
    let first = json!({"topic": "orders", "id": "order-42", "data": {"n": 1}});
    let (status, a) = api.post("/api/publish", &first).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = api.post("/api/publish", &first).await;
    assert_eq!(
        again["offset"], a["offset"],
        "a retry gets the original offset"
    );
    let changed = json!({"topic": "orders", "id": "order-42", "data": {"n": 2}});
    assert_error(
        &api.post("/api/publish", &changed).await,
        StatusCode::CONFLICT,
        "IDEMPOTENCY_CONFLICT",
    );
    // A WebSocket client using the same id publishes its own message.
    let mut c = server.connect("alice").await;
    let reply = c
        .request(r#"{"type":"publish","topic":"orders","id":"order-42","data":{"n":9},"ref":"r"}"#)
        .await;
    let ServerMessage::Published(p) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(p.offset, Some(2));
}
