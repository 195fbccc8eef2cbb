//! Fan-out under load: a subscriber that never reads cannot slow anyone else down.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use futures_util::StreamExt;
use tidings_protocol::ServerMessage;
use tidings_server::Config;
use tokio_tungstenite::tungstenite::Message;

const SUBSCRIBERS: usize = 50;
const MESSAGES: usize = 10_000;
const WINDOW: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_while_fifty_others_get_everything_in_order() {
    let server = start(Config {
        rate_limit: 1_000_000,
        rate_burst: 1_000_000,
        queue_capacity: 256,
        // Ephemeral: nothing to catch up from, so an overflowing subscriber must be closed.
        ephemeral_topics: vec!["firehose".into()],
        ..config()
    })
    .await;

    // The slow consumer subscribes, then never reads again. Its socket has a tiny receive
    // buffer, so the kernel cannot absorb the stream for it and its queue overflows.
    let mut slow = Client::connect_small_buffer(&server, "slow").await;
    slow.subscribe(&["firehose"]).await;

    // The publisher stays at most WINDOW messages ahead of the slowest *fast* reader, so
    // their queues never overflow; the slow one falls behind without bound.
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..SUBSCRIBERS).map(|_| AtomicUsize::new(0)).collect());

    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = server.connect(&format!("fast-{i}")).await;
        c.subscribe(&["firehose"]).await;
        let progress = Arc::clone(&progress);
        readers.push(tokio::spawn(async move {
            let mut next = 0usize;
            while next < MESSAGES {
                let frame = tokio::time::timeout(WAIT, c.ws.next())
                    .await
                    .expect("a message in time")
                    .expect("open")
                    .expect("frame");
                let Message::Text(text) = frame else { continue };
                match ServerMessage::decode(text.as_str()).expect("decode") {
                    ServerMessage::Message(m) => {
                        let seq: usize = m
                            .data
                            .get()
                            .split(',')
                            .next()
                            .and_then(|s| s.trim_start_matches('[').parse().ok())
                            .expect("seq");
                        assert_eq!(seq, next, "subscriber {i}: out of order or lost");
                        next += 1;
                        progress[i].store(next, Ordering::Release);
                    }
                    ServerMessage::Heartbeat(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            next
        }));
    }

    let mut publisher = server.connect("publisher").await;
    let pad = "x".repeat(1000);
    for seq in 0..MESSAGES {
        let deadline = tokio::time::Instant::now() + WAIT;
        while seq
            >= WINDOW
                + progress
                    .iter()
                    .map(|p| p.load(Ordering::Acquire))
                    .min()
                    .unwrap_or(0)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fast readers stalled at {seq}"
            );
            tokio::task::yield_now().await;
        }
        publisher
            .send(&format!(
                r#"{{"type":"publish","topic":"firehose","data":[{seq},"{pad}"]}}"#
            ))
            .await;
    }
    // The publisher was never held up: its own request is answered right away.
    assert!(matches!(
        publisher.request(r#"{"type":"ping"}"#).await,
        ServerMessage::Pong(_)
    ));

    for r in readers {
        assert_eq!(r.await.expect("reader"), MESSAGES);
    }
    // The server closed it as a slow consumer: a 4002 close frame if the client was still
    // reading within the close grace, otherwise (as here, it never reads) a dropped socket.
    let ended = slow.closed().await;
    assert!(
        matches!(ended, Ended::Close(4002) | Ended::Dropped),
        "{ended:?}"
    );
    let metrics = server.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("tidings_slow_consumer_closes_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidings_server_closes_total{code=\"4002\"} 1\n"),
        "{metrics}"
    );
    // The readers have hung up and the slow consumer is gone: only the publisher is left.
    server.wait_for_clients(1).await;
}
