//! Durable topics and event streams over real WebSockets: offsets, acks, idempotency,
//! recovery without gaps under concurrent load, retention, catch-up, version conflicts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;
use tidings_protocol::{ErrorCode, ServerMessage};
use tidings_server::Config;

/// Send `n` publishes with refs (pipelined) and collect the acks: offset by ref.
async fn publish_acked(
    c: &mut Client,
    topic: &str,
    range: std::ops::Range<usize>,
) -> BTreeMap<usize, u64> {
    for i in range.clone() {
        c.send(
            &json!({"type":"publish","topic":topic,"data":{"i":i},"ref":i.to_string()}).to_string(),
        )
        .await;
    }
    let mut acks = BTreeMap::new();
    while acks.len() < range.len() {
        match c.recv().await {
            ServerMessage::Published(p) => {
                let i: usize = p
                    .r#ref
                    .as_deref()
                    .and_then(|r| r.parse().ok())
                    .expect("ref");
                acks.insert(i, p.offset.expect("durable ack has an offset"));
            }
            ServerMessage::Message(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    acks
}

/// The next `message` (skipping acks and others); returns (offset, data.i).
async fn next_message(c: &mut Client) -> (u64, u64) {
    loop {
        if let ServerMessage::Message(m) = c.recv().await {
            let v: serde_json::Value = serde_json::from_str(m.data.get()).expect("json");
            return (m.offset.expect("offset"), v["i"].as_u64().expect("i"));
        }
    }
}

#[tokio::test]
async fn offsets_are_contiguous_acks_carry_them_and_subscribers_see_them_in_order() {
    let dir = TempDir::new("offsets");
    let server = start(sqlite_config(&dir)).await;
    let mut sub = server.connect("sub").await;
    sub.subscribe(&["orders"]).await;
    let mut publisher = server.connect("pub").await;
    let acks = publish_acked(&mut publisher, "orders", 0..200).await;
    let offsets: Vec<u64> = acks.values().copied().collect();
    assert_eq!(
        offsets,
        (1..=200).collect::<Vec<_>>(),
        "offsets follow publish order, no gaps"
    );
    for expected in 1..=200u64 {
        assert_eq!(next_message(&mut sub).await, (expected, expected - 1));
    }
    let reply = sub
        .request(r#"{"type":"history","topic":"orders","since":190,"ref":"h"}"#)
        .await;
    let ServerMessage::History(page) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(page.latest, 200);
    let got: Vec<u64> = page
        .messages
        .iter()
        .map(|m| m.offset.expect("offset"))
        .collect();
    assert_eq!(got, (191..=200).collect::<Vec<_>>());
    assert!(
        page.messages
            .iter()
            .all(|m| m.epoch.as_deref() == Some(page.epoch.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_with_since_under_concurrent_load_has_no_gap_and_no_duplicate() {
    const TOTAL: u64 = 3000;
    let dir = TempDir::new("recovery");
    let server = start(Config {
        rate_limit: 1_000_000,
        rate_burst: 1_000_000,
        ..sqlite_config(&dir)
    })
    .await;
    let mut first = server.connect("reader").await;
    first.subscribe(&["feed"]).await;

    // A publisher streams TOTAL messages while the reader drops and resumes.
    let mut publisher = server.connect("writer").await;
    let writer = tokio::spawn(async move {
        let acks = publish_acked(&mut publisher, "feed", 0..TOTAL as usize).await;
        acks.len()
    });

    let mut seen = Vec::new();
    let mut epoch = None;
    while seen.len() < 400 {
        if let ServerMessage::Message(m) = first.recv().await {
            epoch = m.epoch.clone();
            seen.push(m.offset.expect("offset"));
        }
    }
    drop(first); // mid-stream, without a goodbye
    let last = *seen.last().expect("some");

    let mut again = server.connect("reader").await;
    let since = json!({"type":"subscribe","topics":["feed"],"since":{"feed":{"offset":last,"epoch":epoch}}});
    again.send(&since.to_string()).await;
    while (seen.len() as u64) < TOTAL {
        match again.recv().await {
            ServerMessage::Message(m) => seen.push(m.offset.expect("offset")),
            ServerMessage::Subscribed(s) => {
                assert_eq!(s.recovered.and_then(|r| r.get("feed").copied()), Some(true));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every offset exactly once, in order"
    );
    assert_eq!(writer.await.expect("writer"), TOTAL as usize);
}

#[tokio::test]
async fn idempotent_publish_retried_after_a_dropped_connection_is_stored_once() {
    let dir = TempDir::new("idempotent");
    let server = start(sqlite_config(&dir)).await;
    let publish =
        r#"{"type":"publish","topic":"pay","data":{"amount":5},"id":"payment-42","ref":"p"}"#;
    let mut c = server.connect("payer").await;
    let ServerMessage::Published(first) = c.request(publish).await else {
        panic!()
    };
    drop(c);
    let mut c = server.connect("payer").await;
    let ServerMessage::Published(retry) = c.request(publish).await else {
        panic!()
    };
    assert_eq!(
        first.offset, retry.offset,
        "the retry is acknowledged with the original offset"
    );
    let ServerMessage::History(page) = c.request(r#"{"type":"history","topic":"pay"}"#).await
    else {
        panic!()
    };
    assert_eq!(page.messages.len(), 1, "stored once");
    assert_eq!(page.latest, 1);
}

#[tokio::test]
async fn trimmed_history_and_changed_epochs_report_recovered_false() {
    let server = start(Config {
        retention_max_messages: 10,
        ..config()
    })
    .await;
    let mut p = server.connect("p").await;
    publish_acked(&mut p, "short", 0..50).await;
    // Retention runs in the background; wait for it to trim.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ServerMessage::History(page) = p.request(r#"{"type":"history","topic":"short"}"#).await
        else {
            panic!()
        };
        if page.messages.first().and_then(|m| m.offset) == Some(41) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never trimmed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = server.connect("s").await;
    let reply = s
        .request(r#"{"type":"subscribe","topics":["short"],"since":{"short":{"offset":5}}}"#)
        .await;
    let ServerMessage::Subscribed(sub) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        sub.recovered.and_then(|r| r.get("short").copied()),
        Some(false)
    );
    assert_eq!(
        next_message(&mut s).await.0,
        41,
        "what is left is delivered"
    );

    let mut t = server.connect("t").await;
    let reply = t
        .request(r#"{"type":"subscribe","topics":["short"],"since":{"short":{"offset":45,"epoch":"not-this-one"}}}"#)
        .await;
    let ServerMessage::Subscribed(sub) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        sub.recovered.and_then(|r| r.get("short").copied()),
        Some(false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_overflows_its_queue_catches_up_from_the_store_without_loss() {
    const TOTAL: u64 = 2000;
    let dir = TempDir::new("catchup");
    let server = start(Config {
        queue_capacity: 16,
        rate_limit: 1_000_000,
        rate_burst: 1_000_000,
        ..sqlite_config(&dir)
    })
    .await;
    // A reader with a tiny socket buffer that does not read until everything is published.
    let mut lazy = Client::connect_small_buffer(&server, "lazy").await;
    lazy.subscribe(&["big"]).await;
    let mut p = server.connect("p").await;
    let pad = "x".repeat(1000);
    for i in 0..TOTAL {
        p.send(&json!({"type":"publish","topic":"big","data":{"i":i,"pad":pad}}).to_string())
            .await;
    }
    let ServerMessage::Published(last) = p
        .request(r#"{"type":"publish","topic":"big","data":{"i":-1},"ref":"last"}"#)
        .await
    else {
        panic!()
    };
    assert_eq!(last.offset, Some(TOTAL + 1));
    // Now read: every message arrives, in order, and the connection was never closed.
    for expected in 1..=TOTAL {
        let (offset, _) = next_message(&mut lazy).await;
        assert_eq!(offset, expected);
    }
    let metrics = server.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("tidings_slow_consumer_closes_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_subscriber_stuck_past_the_timeout_is_closed_as_slow() {
    let server = start(Config {
        queue_capacity: 4,
        slow_consumer_timeout: Duration::from_millis(300),
        rate_limit: 1_000_000,
        rate_burst: 1_000_000,
        ..config()
    })
    .await;
    let mut stuck = Client::connect_small_buffer(&server, "stuck").await;
    stuck.subscribe(&["t"]).await;
    let mut p = server.connect("p").await;
    // 12 MB: more than the kernel's socket buffers can absorb for it.
    let pad = "y".repeat(4000);
    for i in 0..3000 {
        p.send(&json!({"type":"publish","topic":"t","data":{"i":i,"pad":pad}}).to_string())
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = server.get("/metrics").await.text().await.expect("metrics");
        if metrics.contains("tidings_slow_consumer_closes_total 1\n") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never closed: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The publisher was unaffected throughout.
    assert!(matches!(
        p.request(r#"{"type":"ping"}"#).await,
        ServerMessage::Pong(_)
    ));
    drop(stuck); // kept open (and unread) until the checks above were done
}

#[tokio::test]
async fn appends_at_the_same_expected_version_exactly_one_wins() {
    let dir = TempDir::new("append");
    let server = start(sqlite_config(&dir)).await;
    let mut watcher = server.connect("w").await;
    watcher.subscribe(&["order-1"]).await;
    let append = r#"{"type":"append","stream":"order-1","expected_version":0,"events":[{"type":"order_created","data":{"customer_id":"c","items":[],"total":0}}],"ref":"a"}"#;
    let mut a = server.connect("a").await;
    let mut b = server.connect("b").await;
    a.send(append).await;
    b.send(append).await;
    let (ra, rb) = tokio::join!(a.recv(), b.recv());
    let outcomes = [&ra, &rb];
    let wins = outcomes
        .iter()
        .filter(|m| matches!(m, ServerMessage::Appended(x) if x.version == 1))
        .count();
    let conflicts: Vec<_> = outcomes
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Error(e) if e.code == ErrorCode::VersionConflict => {
                Some(e.current_version)
            }
            _ => None,
        })
        .collect();
    assert_eq!((wins, conflicts), (1, vec![Some(1)]), "{ra:?} / {rb:?}");

    // Subscribers of the stream see the event live, as an envelope with its version.
    let ServerMessage::Message(m) = watcher.recv().await else {
        panic!()
    };
    assert_eq!(m.offset, Some(1));
    let envelope: serde_json::Value = serde_json::from_str(m.data.get()).expect("json");
    assert_eq!(envelope["type"], "order_created");

    let reply = a
        .request(r#"{"type":"read","stream":"order-1","ref":"r"}"#)
        .await;
    let ServerMessage::Events(events) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((events.version, events.events.len()), (1, 1));
    assert_eq!(events.events[0].r#type, "order_created");
    assert_eq!(
        events.events[0].data.get(),
        r#"{"customer_id":"c","items":[],"total":0}"#
    );
}

/// The error code and ref of a reply (panics on anything but an error).
fn error_of(reply: &ServerMessage) -> (ErrorCode, Option<String>) {
    match reply {
        ServerMessage::Error(e) => (e.code, e.r#ref.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn positions_out_of_range_are_refused_on_every_websocket_path() {
    let dir = TempDir::new("positions");
    for config in [config(), sqlite_config(&dir)] {
        let server = start(config).await;
        let mut c = server.connect("alice").await;
        for i in 0..3 {
            c.send(&json!({"type":"publish","topic":"t","data":i}).to_string())
                .await;
        }
        c.request(r#"{"type":"append","stream":"s","events":[{"type":"x"}],"ref":"a"}"#)
            .await;
        let over = tidings_protocol::MAX_POSITION + 1;
        for frame in [
            json!({"type":"history","topic":"t","since":u64::MAX,"ref":"r"}),
            json!({"type":"history","topic":"t","since":over,"ref":"r"}),
            json!({"type":"read","stream":"s","from_version":u64::MAX,"ref":"r"}),
            json!({"type":"append","stream":"s","expected_version":u64::MAX,"events":[{"type":"x"}],"ref":"r"}),
            json!({"type":"subscribe","topics":["t"],"since":{"t":{"offset":u64::MAX}},"ref":"r"}),
        ] {
            let reply = c.request(&frame.to_string()).await;
            assert_eq!(
                error_of(&reply),
                (ErrorCode::InvalidMessage, Some("r".into())),
                "{frame}"
            );
        }
        // The largest valid position is simply past the end: nothing, not everything.
        let reply = c
            .request(
                &json!({"type":"history","topic":"t","since":tidings_protocol::MAX_POSITION})
                    .to_string(),
            )
            .await;
        let ServerMessage::History(page) = reply else {
            panic!("{reply:?}")
        };
        assert!(page.messages.is_empty());
        assert_eq!((page.latest, page.more), (3, false));
        server.stop().await;
    }
}

#[tokio::test]
async fn history_and_read_pages_are_bounded_in_bytes_and_say_there_is_more() {
    let dir = TempDir::new("pages");
    for base in [config(), sqlite_config(&dir)] {
        let server = start(Config {
            max_reply_bytes: 64 * 1024,
            ..base
        })
        .await;
        let mut c = server.connect("alice").await;
        let pad = "x".repeat(20 * 1024);
        for i in 0..10 {
            c.send(&json!({"type":"publish","topic":"big","data":{"i":i,"pad":pad}}).to_string())
                .await;
            c.send(
                &json!({"type":"append","stream":"log","events":[{"type":"e","data":{"i":i,"pad":pad}}]})
                    .to_string(),
            )
            .await;
        }
        // Every append is acknowledged; publishes without ref are not, but are committed first.
        for _ in 0..10 {
            let reply = c.recv().await;
            assert!(matches!(reply, ServerMessage::Appended(_)), "{reply:?}");
        }
        // history: three 20 KiB messages per 64 KiB page, then page on.
        let mut since = 0;
        let mut got = Vec::new();
        loop {
            let frame = json!({"type":"history","topic":"big","since":since,"ref":"h"});
            let ServerMessage::History(page) = c.request(&frame.to_string()).await else {
                panic!()
            };
            assert!(page.messages.len() <= 3, "{} messages", page.messages.len());
            got.extend(page.messages.iter().map(|m| m.offset.expect("offset")));
            since = *got.last().expect("a page holds at least one message");
            if !page.more {
                break;
            }
        }
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
        // read: the same bound, paged with from_version.
        let mut from = 0;
        let mut versions = Vec::new();
        loop {
            let frame = json!({"type":"read","stream":"log","from_version":from,"ref":"r"});
            let ServerMessage::Events(page) = c.request(&frame.to_string()).await else {
                panic!()
            };
            assert!(page.events.len() <= 3);
            versions.extend(page.events.iter().map(|e| e.version));
            from = *versions.last().expect("events");
            if !page.more {
                break;
            }
        }
        assert_eq!(versions, (1..=10).collect::<Vec<_>>());
        // A resubscribe from 0 replays all ten through bounded catch-up reads.
        let mut s = server.connect("bob").await;
        let reply = s
            .request(r#"{"type":"subscribe","topics":["big"],"since":{"big":{"offset":0}}}"#)
            .await;
        assert!(matches!(reply, ServerMessage::Subscribed(_)), "{reply:?}");
        for expected in 1..=10 {
            assert_eq!(next_message(&mut s).await, (expected, expected - 1));
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_user_and_a_reused_key_is_a_conflict() {
    let dir = TempDir::new("idem-scope");
    for config in [config(), sqlite_config(&dir)] {
        let server = start(config).await;
        let mut watcher = server.connect("watcher").await;
        watcher.subscribe(&["chat"]).await;
        let mut mallory = server.connect("mallory").await;
        let mut alice = server.connect("alice").await;
        let forged =
            r#"{"type":"publish","topic":"chat","id":"order-42","data":"forged","ref":"m"}"#;
        let ServerMessage::Published(m) = mallory.request(forged).await else {
            panic!()
        };
        let real = r#"{"type":"publish","topic":"chat","id":"order-42","data":"real","ref":"a"}"#;
        let ServerMessage::Published(a) = alice.request(real).await else {
            panic!()
        };
        assert_eq!((m.offset, a.offset), (Some(1), Some(2)), "two messages");
        let ServerMessage::Published(again) = alice.request(real).await else {
            panic!()
        };
        assert_eq!(again.offset, Some(2), "alice's retry is her message");
        let reuse = r#"{"type":"publish","topic":"chat","id":"order-42","data":"other","ref":"b"}"#;
        assert_eq!(
            error_of(&alice.request(reuse).await),
            (ErrorCode::IdempotencyConflict, Some("b".into()))
        );
        let mut seen = Vec::new();
        for _ in 0..2 {
            let ServerMessage::Message(msg) = watcher.recv().await else {
                panic!()
            };
            seen.push(msg.data.get().to_owned());
        }
        assert_eq!(seen, ["\"forged\"", "\"real\""]);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_is_not_closed_by_its_own_ack() {
    const TOTAL: u64 = 1000;
    let server = start(Config {
        queue_capacity: 2,
        slow_consumer_timeout: Duration::from_secs(30),
        rate_limit: 1_000_000,
        rate_burst: 1_000_000,
        ..config()
    })
    .await;
    let mut lazy = Client::connect_small_buffer(&server, "lazy").await;
    lazy.subscribe(&["t"]).await;
    let mut p = server.connect("p").await;
    // 8 MB the lazy reader does not read yet: its socket and its queue (2 items) fill up.
    let pad = "z".repeat(8 * 1024);
    for i in 0..TOTAL {
        p.send(&json!({"type":"publish","topic":"t","data":{"i":i,"pad":pad}}).to_string())
            .await;
    }
    let ServerMessage::Pong(_) = p.request(r#"{"type":"ping"}"#).await else {
        panic!()
    };
    p.request(r#"{"type":"publish","topic":"t","data":{"i":-1},"ref":"flush"}"#)
        .await;
    // Now the lagging subscriber publishes with a ref: the ack must wait, not close it.
    lazy.send(r#"{"type":"publish","topic":"t","data":{"i":-2},"ref":"mine"}"#)
        .await;
    let mut offsets = Vec::new();
    let mut acked = None;
    while offsets.len() < TOTAL as usize + 1 || acked.is_none() {
        match lazy.recv().await {
            ServerMessage::Message(m) => offsets.push(m.offset.expect("offset")),
            ServerMessage::Published(a) => {
                assert_eq!(a.r#ref.as_deref(), Some("mine"));
                acked = a.offset;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(offsets, (1..=TOTAL + 1).collect::<Vec<_>>());
    assert_eq!(acked, Some(TOTAL + 2));
    let reply = lazy.request(r#"{"type":"ping"}"#).await;
    assert!(matches!(reply, ServerMessage::Pong(_)), "{reply:?}");
    let metrics = server.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("tidings_slow_consumer_closes_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_resume_with_since_replays_the_clients_own_messages_too() {
    let server = start(config()).await;
    let mut alice = server.connect("alice").await;
    alice.subscribe(&["own"]).await;
    let mut bob = server.connect("bob").await;
    // Alice publishes (no echo live), Bob publishes after her.
    publish_acked(&mut alice, "own", 0..2).await;
    publish_acked(&mut bob, "own", 2..3).await;
    assert_eq!(next_message(&mut alice).await, (3, 2), "live: only Bob's");
    // Alice resumes from 0 on the same connection (a gap she saw, a state she rebuilds): the
    // replay she asked for holds everything after 0, her own messages included.
    match alice
        .request(r#"{"type":"subscribe","topics":["own"],"since":{"own":{"offset":0}}}"#)
        .await
    {
        ServerMessage::Subscribed(s) => {
            assert_eq!(s.recovered.and_then(|r| r.get("own").copied()), Some(true));
        }
        other => panic!("{other:?}"),
    }
    for want in [(1, 0), (2, 1), (3, 2)] {
        assert_eq!(next_message(&mut alice).await, want);
    }
    // Live traffic goes on without echo.
    publish_acked(&mut alice, "own", 3..4).await;
    match alice.request(r#"{"type":"ping","ref":"p"}"#).await {
        ServerMessage::Pong(_) => {}
        other => panic!("no echo after the replay: {other:?}"),
    }
}
