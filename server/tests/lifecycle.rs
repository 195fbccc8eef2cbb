//! Connection lifecycle: churn, heartbeats, graceful shutdown, health and metrics.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tidings_protocol::ServerMessage;
use tidings_server::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_connections_open_and_close_then_health_shows_zero() {
    let server = start(config()).await;
    for batch in 0..10 {
        let mut clients = Vec::new();
        for i in 0..50 {
            let mut c = server.connect(&format!("churn-{batch}-{i}")).await;
            if i % 2 == 0 {
                c.subscribe(&["churn"]).await;
            }
            clients.push(c);
        }
        for mut c in clients {
            c.ws.close(None).await.expect("close");
            // Finish the close handshake half the time; drop the socket the other half.
            if batch % 2 == 0 {
                while let Some(Ok(_)) = c.ws.next().await {}
            }
        }
    }
    server.wait_for_clients(0).await;
    let health = server.health().await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(
        health["topics"], 0,
        "no topic outlives its subscribers: {health}"
    );
    assert_eq!(health["subscriptions"], 0);
}

#[tokio::test]
async fn silent_peer_is_closed_but_one_answering_pings_is_kept() {
    let server = start(Config {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(350),
        ..config()
    })
    .await;
    // `silent` never polls its socket, so it never answers the server's pings.
    let mut silent = server.connect("silent").await;
    // `live` reads (its client library answers pings) but never sends a request.
    let mut live = server.connect("live").await;
    let mut heartbeats = 0;
    while heartbeats < 10 {
        if let ServerMessage::Heartbeat(h) = live.recv_any().await {
            assert!(h.timestamp.is_some());
            heartbeats += 1;
        }
    }
    assert_eq!(silent.closed().await, Ended::Close(4003));
    assert!(matches!(
        live.request(r#"{"type":"ping"}"#).await,
        ServerMessage::Pong(_)
    ));
}

#[tokio::test]
async fn graceful_shutdown_closes_every_client_with_1001() {
    let server = start(config()).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = server.connect(&format!("c{i}")).await;
        c.subscribe(&["t"]).await;
        clients.push(c);
    }
    let addr = server.addr;
    let closes = tokio::spawn(async move {
        let mut codes = Vec::new();
        for c in &mut clients {
            codes.push(c.closed().await);
        }
        codes
    });
    assert!(
        server.stop().await,
        "all sessions ended before the deadline"
    );
    let codes = closes.await.expect("closes");
    assert!(codes.iter().all(|c| *c == Ended::Close(1001)), "{codes:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn health_and_metrics_report_the_server() {
    let server = start(config()).await;
    let mut a = server.connect("a").await;
    let mut b = server.connect("b").await;
    a.subscribe(&["x", "y"]).await;
    b.subscribe(&["x"]).await;
    b.send(r#"{"type":"publish","topic":"x","data":1}"#).await;
    assert!(matches!(a.recv().await, ServerMessage::Message(_)));
    b.send(r#"{"type":"nope"}"#).await;
    b.recv().await;

    let health = server.health().await;
    assert_eq!(
        (
            &health["status"],
            &health["clients"],
            &health["topics"],
            &health["subscriptions"]
        ),
        (&"healthy".into(), &2.into(), &2.into(), &3.into()),
        "{health}"
    );

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?} in\n{text}"))
    };
    assert_eq!(value("tidings_connections", None), 2.0);
    assert_eq!(value("tidings_subscriptions", None), 3.0);
    assert_eq!(value("tidings_publishes_total", None), 1.0);
    assert_eq!(value("tidings_messages_out_total", None), 1.0);
    assert_eq!(
        value(
            "tidings_errors_total",
            Some(("code", "INVALID_MESSAGE_TYPE"))
        ),
        1.0
    );
    assert_eq!(
        value("tidings_errors_total", Some(("code", "RATE_LIMITED"))),
        0.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("tidings_fanout_seconds")),
        "fan-out latency histogram is exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_the_store_cannot_write() {
    let dir = TempDir::new("degraded");
    let server = start(sqlite_config(&dir)).await;
    let mut c = server.connect("alice").await;
    let ok = c
        .request(r#"{"type":"publish","topic":"t","data":1,"ref":"p1"}"#)
        .await;
    assert!(matches!(ok, ServerMessage::Published(_)), "{ok:?}");
    // Another process takes the database's write lock and keeps it past the busy timeout.
    let other = rusqlite::Connection::open(dir.0.join("tidings.db")).expect("open");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let failed = c
        .request(r#"{"type":"publish","topic":"t","data":2,"ref":"p2"}"#)
        .await;
    let ServerMessage::Error(e) = failed else {
        panic!("{failed:?}")
    };
    assert_eq!(
        (e.code, e.r#ref.as_deref()),
        (tidings_protocol::ErrorCode::Unavailable, Some("p2"))
    );
    let response = server.get("/health").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["status"], "degraded");
    assert!(
        body["store_error"]
            .as_str()
            .is_some_and(|e| e.contains("locked")),
        "{body}"
    );
    // The lock goes away: a probe write finds out, health is back, writes work.
    other.execute_batch("COMMIT").expect("unlock");
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.get("/health").await.status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let ok = c
        .request(r#"{"type":"publish","topic":"t","data":3,"ref":"p3"}"#)
        .await;
    let ServerMessage::Published(p) = ok else {
        panic!("{ok:?}")
    };
    assert_eq!(p.offset, Some(2), "nothing of the failed batch was written");
}
