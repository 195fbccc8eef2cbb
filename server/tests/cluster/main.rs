//! Several `tidings` nodes on one Redis (or on Redis shards) behave as one server: cross-node
//! fan-out in offset order, one winner per stream version, idempotent retries through another
//! node, no acknowledged message lost to a SIGKILLed node or a Redis restart, epochs that say
//! when a history was lost, `/health` that follows Redis.
//!
//! Real processes: `redis-server` (the Debian package; the tests fail, not skip, without it) and
//! the `tidings` binary, both on free ports on 127.0.0.1 (see `harness.rs`).

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tidings_protocol::{ErrorCode, ServerMessage};
use tokio_tungstenite::tungstenite::Message as Frame;

use common::{Client, WAIT};
use harness::{Node, RECOVERY, Redis, UrlsVia, prefix};
use wire::{
    Ack, Follower, Next, code, expect_quiet, history_all, next, payload, publish, publish_frame,
    publish_id, publish_pipelined, read_all,
};

/// `/health` while the store works: 200 with the template's `healthy` (the brief says "ok";
/// either is accepted, anything else is not).
fn healthy(body: &serde_json::Value) -> bool {
    body["status"] == "ok" || body["status"] == "healthy"
}

/// `1..=n` as a vector, to compare offset lists against.
fn one_to(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

async fn nodes(n: usize, urls: &[String], prefix: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start(urls, prefix).await);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_a_thousand_messages_in_offset_order_once() {
    const N: u64 = 1000;
    let redis = Redis::start();
    let nodes = nodes(3, &[redis.url()], &prefix("thousand")).await;
    let topic = "cluster.thousand";

    // Subscribers on nodes 2 and 3, each collecting in its own task.
    let mut followers = Vec::new();
    for (n, node) in nodes.iter().enumerate().skip(1) {
        let follower = Follower::subscribe(&node.url(&format!("reader{n}")), topic).await;
        followers.push(tokio::spawn(async move {
            let mut follower = follower;
            follower
                .follow_until(N, Duration::from_secs(120), None)
                .await;
            follower
        }));
    }

    // 1,000 pipelined publishes on node 1, every one acknowledged.
    let frames = (0..N as usize)
        .map(|i| {
            let r = format!("{i}");
            let frame = publish_frame(topic, &payload("thousand", i), &r, None);
            (r, frame)
        })
        .collect();
    let acks = publish_pipelined(nodes[0].connect("publisher").await, frames).await;
    let mut sent: BTreeMap<u64, String> = BTreeMap::new();
    for (r, ack) in &acks {
        let i: usize = r.parse().expect("numeric ref");
        assert!(
            sent.insert(ack.offset, payload("thousand", i)).is_none(),
            "offset {} acknowledged twice",
            ack.offset
        );
    }
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        one_to(N),
        "acks: offsets 1..=1000"
    );
    let epochs: BTreeSet<&str> = acks.values().map(|a| a.epoch.as_str()).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    let epoch = epochs.into_iter().next().expect("an epoch").to_owned();

    for follower in followers {
        let mut follower = tokio::time::timeout(Duration::from_secs(150), follower)
            .await
            .expect("subscriber finished in time")
            .expect("subscriber task");
        assert_eq!(follower.offsets(), one_to(N), "in offset order, each once");
        for m in &follower.received {
            let offset = m.offset.expect("offset");
            assert_eq!(m.data.get(), sent[&offset], "data of offset {offset}");
            assert_eq!(m.epoch.as_deref(), Some(epoch.as_str()));
        }
        expect_quiet(&mut follower.client, "a subscriber after 1,000 messages").await;
    }

    // The same history, page by page, from every node.
    let mut histories = Vec::new();
    for node in &nodes {
        let mut auditor = node.connect("auditor").await;
        let history = history_all(&mut auditor, topic, 100).await;
        assert_eq!(history.epoch, epoch);
        assert_eq!(history.latest, N);
        assert!(
            history.pages >= 10,
            "paged with `more`: {} pages",
            history.pages
        );
        assert_eq!(history.offsets(), one_to(N));
        for m in &history.messages {
            let offset = m.offset.expect("offset");
            assert_eq!(
                m.data.get(),
                sent[&offset],
                "stored data of offset {offset}"
            );
        }
        histories.push(history.encoded());
    }
    assert!(
        histories[0] == histories[1],
        "nodes 1 and 2 serve the same history"
    );
    assert!(
        histories[0] == histories[2],
        "nodes 1 and 3 serve the same history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_through_different_nodes_have_one_winner_per_version() {
    const VERSIONS: u64 = 40;
    const WRITERS_PER_NODE: usize = 2;
    const STREAM: &str = "cluster.race";
    let redis = Redis::start();
    let nodes = nodes(3, &[redis.url()], &prefix("race")).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(nodes.len() * WRITERS_PER_NODE));
    let mut writers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for k in 0..WRITERS_PER_NODE {
            let writer = format!("w{n}.{k}");
            let mut c = node.connect(&writer).await;
            let barrier = Arc::clone(&barrier);
            writers.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut known = 0;
                let mut wins = Vec::new();
                let mut conflicts = 0u64;
                for attempt in 0.. {
                    if known >= VERSIONS {
                        break;
                    }
                    let r = format!("{writer}/{attempt}");
                    let frame = json!({
                        "type": "append",
                        "stream": STREAM,
                        "expected_version": known,
                        "events": [{"type": "step", "data": {"writer": writer, "expected": known}}],
                        "ref": r,
                    });
                    match c.request(&frame.to_string()).await {
                        ServerMessage::Appended(a) => {
                            assert_eq!(a.r#ref.as_deref(), Some(r.as_str()));
                            assert_eq!(a.version, known + 1, "{writer} appended at {known}");
                            wins.push(a.version);
                            known = a.version;
                        }
                        ServerMessage::Error(e) if e.code == ErrorCode::VersionConflict => {
                            assert_eq!(e.r#ref.as_deref(), Some(r.as_str()));
                            let current = e
                                .current_version
                                .expect("VERSION_CONFLICT carries current_version");
                            assert!(
                                current > known,
                                "{writer}: conflict at expected {known} reports current {current}"
                            );
                            known = current;
                            conflicts += 1;
                        }
                        other => panic!("{writer}: append at {known} got {other:?}"),
                    }
                }
                (writer, wins, conflicts)
            }));
        }
    }

    let mut winners: BTreeMap<u64, String> = BTreeMap::new();
    let mut conflicts = 0;
    for task in writers {
        let (writer, wins, lost) = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("writers finished in time")
            .expect("writer task");
        conflicts += lost;
        for version in wins {
            if let Some(other) = winners.insert(version, writer.clone()) {
                panic!("version {version} was won by both {other} and {writer}");
            }
        }
    }
    assert_eq!(
        winners.keys().copied().collect::<Vec<_>>(),
        one_to(VERSIONS),
        "exactly one winner per version"
    );
    assert!(
        conflicts > 0,
        "the writers actually raced (no conflict seen)"
    );
    eprintln!("{VERSIONS} versions, {conflicts} conflicts");

    for node in &nodes {
        let mut reader = node.connect("reader").await;
        let (version, events) = read_all(&mut reader, STREAM).await;
        assert_eq!(version, VERSIONS);
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, one_to(VERSIONS), "contiguous versions");
        for e in &events {
            let data: serde_json::Value = serde_json::from_str(e.data.get()).expect("event data");
            assert_eq!(e.r#type, "step");
            assert_eq!(data["writer"], winners[&e.version], "version {}", e.version);
            assert_eq!(data["expected"], e.version - 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_through_another_node_is_published_once() {
    let redis = Redis::start();
    let nodes = nodes(3, &[redis.url()], &prefix("idempotent")).await;
    let topic = "cluster.idempotent";
    let mut watcher = Follower::subscribe(&nodes[2].url("watcher"), topic).await;

    let data = payload("once", 1);
    let mut first = nodes[0].connect("alice").await;
    let original = publish_id(&mut first, topic, &data, "r1", Some("k1")).await;
    assert_eq!(original.offset, 1);
    // The same user retries through another node: same id, same data.
    let mut retry = nodes[1].connect("alice").await;
    let again = publish_id(&mut retry, topic, &data, "r2", Some("k1")).await;
    assert_eq!(
        again, original,
        "the retry is acked with the original offset and epoch"
    );
    // The retry took no offset: the next publish follows the original directly.
    let next_data = payload("once", 2);
    let after = publish_id(&mut retry, topic, &next_data, "r3", Some("k2")).await;
    assert_eq!(
        after.offset,
        original.offset + 1,
        "the retry stored nothing"
    );

    watcher.follow_until(after.offset, WAIT, None).await;
    let got: Vec<(u64, &str)> = watcher
        .received
        .iter()
        .map(|m| (m.offset.expect("offset"), m.data.get()))
        .collect();
    assert_eq!(
        got,
        vec![(1, data.as_str()), (2, next_data.as_str())],
        "delivered once"
    );
    expect_quiet(&mut watcher.client, "the watcher").await;

    for node in &nodes[..2] {
        let mut auditor = node.connect("auditor").await;
        let history = history_all(&mut auditor, topic, 100).await;
        let stored: Vec<&str> = history.messages.iter().map(|m| m.data.get()).collect();
        assert_eq!(
            stored,
            vec![data.as_str(), next_data.as_str()],
            "stored once"
        );
    }
}

/// Publish `tag-i` messages in batches of `batch` (each batch acked before the next) until
/// `total` are acked or the connection ends; returns the acks and how it ended, if it did.
async fn publish_in_batches(
    client: Client,
    topic: &'static str,
    tag: &'static str,
    total: usize,
    batch: usize,
) -> (Vec<(usize, Ack)>, Option<String>) {
    let (mut sink, mut stream) = client.ws.split();
    let mut acks = Vec::new();
    let mut i = 0;
    while i < total {
        let end = (i + batch).min(total);
        for j in i..end {
            let frame = publish_frame(topic, &payload(tag, j), &format!("{tag}-{j}"), None);
            if let Err(e) = sink.send(Frame::Text(frame.into())).await {
                return (acks, Some(format!("send: {e}")));
            }
        }
        let mut pending = end - i;
        while pending > 0 {
            let frame = match tokio::time::timeout(WAIT, stream.next()).await {
                Err(_) => panic!("{tag}: acks stalled after {} acks", acks.len()),
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => return (acks, Some(format!("read: {e}"))),
                Ok(None) => return (acks, Some("closed".into())),
            };
            let text = match frame {
                Frame::Text(text) => text,
                Frame::Close(f) => return (acks, Some(format!("close {f:?}"))),
                _ => continue,
            };
            match ServerMessage::decode(text.as_str()).expect("decodable") {
                ServerMessage::Published(p) => {
                    let r = p.r#ref.expect("ref");
                    let j: usize = r
                        .strip_prefix(&format!("{tag}-"))
                        .and_then(|j| j.parse().ok())
                        .expect("our ref");
                    let ack = Ack {
                        offset: p.offset.expect("offset"),
                        epoch: p.epoch.expect("epoch"),
                    };
                    acks.push((j, ack));
                    pending -= 1;
                }
                ServerMessage::Heartbeat(_) => {}
                other => panic!("{tag}: publish got {other:?}"),
            }
        }
        i = end;
    }
    (acks, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_loses_nothing_its_clients_had_acknowledged() {
    const FROM_B: usize = 1000;
    const TOPIC: &str = "cluster.sigkill";
    let redis = Redis::start();
    let mut nodes = nodes(3, &[redis.url()], &prefix("sigkill")).await;
    let mut follower = Follower::subscribe(&nodes[0].url("reader"), TOPIC).await;

    // A publisher on A (until A dies) and one on B (throughout), both acked batch by batch.
    let on_a = nodes[0].connect("writer-a").await;
    let task_a = tokio::spawn(publish_in_batches(on_a, TOPIC, "a", usize::MAX, 10));
    let on_b = nodes[1].connect("writer-b").await;
    let task_b = tokio::spawn(publish_in_batches(on_b, TOPIC, "b", FROM_B, 20));

    // Mid-stream, SIGKILL node A; read what it managed to send.
    follower
        .follow_until(200, Duration::from_secs(60), None)
        .await;
    nodes[0].kill9();
    follower.drain_until_ended().await;
    let seen_on_a = follower.received.len();

    let (acks_a, end_a) = tokio::time::timeout(RECOVERY, task_a)
        .await
        .expect("the publisher on A noticed its node died")
        .expect("task a");
    assert!(end_a.is_some(), "the publisher on A lost its connection");
    let (acks_b, end_b) = tokio::time::timeout(Duration::from_secs(120), task_b)
        .await
        .expect("the publisher on B finished")
        .expect("task b");
    assert_eq!(end_b, None, "B's connection is unaffected");
    assert_eq!(acks_b.len(), FROM_B);
    assert!(!acks_a.is_empty(), "A's publisher had acks before the kill");
    eprintln!(
        "before the kill: {} acks on A, subscriber on A saw {seen_on_a}; {FROM_B} acks on B",
        acks_a.len()
    );

    // Every acknowledged message is stored, at its offset, intact.
    let mut auditor = nodes[2].connect("auditor").await;
    let history = history_all(&mut auditor, TOPIC, 1000).await;
    assert_eq!(history.offsets(), one_to(history.latest), "contiguous");
    let tagged = acks_a
        .iter()
        .map(|(i, ack)| ("a", i, ack))
        .chain(acks_b.iter().map(|(i, ack)| ("b", i, ack)));
    for (tag, i, ack) in tagged {
        assert_eq!(ack.epoch, history.epoch, "{tag}-{i}: the epoch");
        let stored = usize::try_from(ack.offset - 1)
            .ok()
            .and_then(|k| history.messages.get(k))
            .unwrap_or_else(|| panic!("{tag}-{i} acked at {} is not stored", ack.offset));
        assert_eq!(
            stored.data.get(),
            payload(tag, *i),
            "{tag}-{i} at {}",
            ack.offset
        );
    }

    // The subscriber resumes on node C from the last message it got: exactly the rest.
    let recovered = follower.resume(&nodes[2].url("reader"), WAIT).await;
    assert_eq!(
        recovered,
        Some(true),
        "subscribed.recovered after the node died"
    );
    follower
        .follow_until(history.latest, Duration::from_secs(60), None)
        .await;
    assert_eq!(
        follower.offsets(),
        one_to(history.latest),
        "none lost, none twice"
    );
    for m in &follower.received {
        let offset = m.offset.expect("offset");
        let stored = &history.messages[usize::try_from(offset - 1).expect("offset fits")];
        assert_eq!(m.data.get(), stored.data.get(), "data of offset {offset}");
    }
    expect_quiet(&mut follower.client, "the resumed subscriber").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_appendonly_keeps_acknowledged_messages() {
    const TOPIC: &str = "cluster.aof";
    let mut redis = Redis::start_persistent();
    let nodes = nodes(2, &[redis.url()], &prefix("aof")).await;
    let mut follower = Follower::subscribe(&nodes[1].url("reader"), TOPIC).await;
    let mut publisher = nodes[0].connect("writer").await;

    let mut sent: BTreeMap<u64, String> = BTreeMap::new();
    let mut epoch = String::new();
    for i in 0..50 {
        let data = payload("before", i);
        let ack = publish(&mut publisher, TOPIC, &data, &format!("b{i}")).await;
        assert_eq!(ack.offset, i as u64 + 1);
        epoch = ack.epoch;
        sent.insert(ack.offset, data);
    }
    follower
        .follow_until(50, Duration::from_secs(30), None)
        .await;

    // Redis dies (SIGKILL: only the fsynced append-only file survives).
    redis.kill9();
    let down = Instant::now();
    for node in &nodes {
        let (_, body) = node.wait_health(503, RECOVERY).await;
        assert_eq!(body["status"], "degraded", "{body}");
        assert_eq!(body["store"], "redis", "{body}");
    }
    eprintln!("both nodes degraded {:?} after the kill", down.elapsed());
    let refused = payload("refused", 0);
    publisher
        .send(&publish_frame(TOPIC, &refused, "down", None))
        .await;
    match next(&mut publisher, RECOVERY).await {
        Next::Msg(ServerMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
            assert_eq!(e.r#ref.as_deref(), Some("down"));
        }
        other => panic!("a publish while Redis is down must get UNAVAILABLE, got {other:?}"),
    }
    let append = json!({"type": "append", "stream": "cluster.aof.stream", "expected_version": 0,
        "events": [{"type": "e", "data": 1}], "ref": "append-down"});
    let reply = tokio::time::timeout(RECOVERY, publisher.request(&append.to_string()))
        .await
        .expect("an answer to the append");
    assert_eq!(
        code(&reply),
        Some(ErrorCode::Unavailable),
        "an append while Redis is down: {reply:?}"
    );

    // Redis comes back on the same port and directory; the nodes reconnect by themselves.
    redis.restart();
    let up = Instant::now();
    for node in &nodes {
        let (_, body) = node.wait_health(200, RECOVERY).await;
        assert!(healthy(&body), "{body}");
    }
    eprintln!("both nodes healthy {:?} after the restart", up.elapsed());

    for node in &nodes {
        let mut auditor = node.connect("auditor").await;
        let history = history_all(&mut auditor, TOPIC, 1000).await;
        assert_eq!(history.epoch, epoch, "the same history after the restart");
        assert_eq!(history.offsets(), one_to(50), "every acknowledged message");
        for m in &history.messages {
            let offset = m.offset.expect("offset");
            assert_eq!(m.data.get(), sent[&offset], "offset {offset}");
        }
    }

    // Live delivery resumes, continuing the same history.
    for i in 0..50 {
        let data = payload("after", i);
        let ack = publish(&mut publisher, TOPIC, &data, &format!("a{i}")).await;
        assert_eq!(
            ack.offset,
            51 + i as u64,
            "offsets continue after the restart"
        );
        assert_eq!(ack.epoch, epoch);
        sent.insert(ack.offset, data);
    }
    follower
        .follow_until(100, RECOVERY, Some(&nodes[1].url("reader")))
        .await;
    assert_eq!(follower.offsets(), one_to(100), "none lost, none twice");
    for m in &follower.received {
        let offset = m.offset.expect("offset");
        assert_eq!(m.data.get(), sent[&offset], "offset {offset}");
    }
    eprintln!("subscriber resumes: {:?}", follower.resumes);
    expect_quiet(&mut follower.client, "the subscriber").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_persistence_changes_epochs_and_recovery_says_so() {
    const TOPIC: &str = "cluster.amnesia";
    let mut redis = Redis::start();
    let nodes = nodes(2, &[redis.url()], &prefix("amnesia")).await;

    let mut publisher = nodes[0].connect("writer").await;
    let mut old_epoch = String::new();
    for i in 0..10 {
        let ack = publish(&mut publisher, TOPIC, &payload("old", i), &format!("o{i}")).await;
        assert_eq!(ack.offset, i as u64 + 1);
        old_epoch = ack.epoch;
    }
    // Node 2 has seen the topic too.
    let mut auditor = nodes[1].connect("auditor").await;
    let before = history_all(&mut auditor, TOPIC, 1000).await;
    assert_eq!(
        (before.epoch.as_str(), before.latest),
        (old_epoch.as_str(), 10)
    );

    // Redis restarts empty.
    redis.restart();
    for node in &nodes {
        let (_, body) = node.wait_health(200, RECOVERY).await;
        assert!(healthy(&body), "{body}");
    }

    let mut publisher = wire::connect_retry(&nodes[0].url("writer"), WAIT).await;
    let mut new_epoch = String::new();
    for i in 0..5 {
        let ack = publish(&mut publisher, TOPIC, &payload("new", i), &format!("n{i}")).await;
        assert_ne!(ack.epoch, old_epoch, "a lost history gets a new epoch");
        assert_eq!(
            ack.offset,
            i as u64 + 1,
            "the new history starts at offset 1"
        );
        new_epoch = ack.epoch;
    }

    // A client resuming from the old history, through the other node.
    let mut reader = nodes[1].connect("reader").await;
    let resume = json!({
        "type": "subscribe",
        "topics": [TOPIC],
        "since": {TOPIC: {"offset": 10, "epoch": old_epoch}},
        "ref": "old",
    });
    let reply = reader.request(&resume.to_string()).await;
    let ServerMessage::Subscribed(s) = reply else {
        panic!("subscribe with the old since got {reply:?}")
    };
    assert_eq!(
        s.recovered.as_ref().and_then(|r| r.get(TOPIC)).copied(),
        Some(false),
        "recovery says the old history is gone: {s:?}"
    );
    let position = s
        .positions
        .as_ref()
        .and_then(|p| p.get(TOPIC))
        .unwrap_or_else(|| panic!("subscribed.positions[{TOPIC}]: {s:?}"));
    assert_eq!(position.epoch.as_deref(), Some(new_epoch.as_str()));
    assert_eq!(position.offset, 5, "delivery starts at the current head");

    // It receives the next message, in the new epoch, and nothing from before it.
    let ack = publish(&mut publisher, TOPIC, &payload("new", 5), "n5").await;
    assert_eq!((ack.offset, ack.epoch.as_str()), (6, new_epoch.as_str()));
    match next(&mut reader, WAIT).await {
        Next::Msg(ServerMessage::Message(m)) => {
            assert_eq!(m.offset, Some(6));
            assert_eq!(m.epoch.as_deref(), Some(new_epoch.as_str()));
            assert_eq!(m.data.get(), payload("new", 5));
        }
        other => panic!("the resumed reader got {other:?}"),
    }

    // Both nodes serve the new history only.
    for node in &nodes {
        let mut auditor = node.connect("auditor").await;
        let history = history_all(&mut auditor, TOPIC, 1000).await;
        assert_eq!(history.epoch, new_epoch);
        let stored: Vec<(u64, &str)> = history
            .messages
            .iter()
            .map(|m| (m.offset.expect("offset"), m.data.get()))
            .collect();
        let expected: Vec<String> = (0..6).map(|i| payload("new", i)).collect();
        let expected: Vec<(u64, &str)> = (1..=6).zip(expected.iter().map(String::as_str)).collect();
        assert_eq!(stored, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_shards_spread_topics_and_keep_each_topics_order() {
    const TOPICS: usize = 20;
    const EACH: usize = 10;
    let first = Redis::start();
    let second = Redis::start();
    let prefix = prefix("shards");
    let urls = [first.url(), second.url()];
    let nodes = nodes(2, &urls, &prefix).await;
    let topic = |t: usize| format!("spread.{t:02}.t");

    // Round-robin over the topics, alternating nodes: each topic's offsets continue across
    // nodes.
    let mut publishers = [
        nodes[0].connect("writer").await,
        nodes[1].connect("writer").await,
    ];
    let mut epochs: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..EACH {
        for t in 0..TOPICS {
            let name = topic(t);
            let publisher = &mut publishers[(round + t) % 2];
            let ack = publish(
                publisher,
                &name,
                &payload(&name, round),
                &format!("{t}/{round}"),
            )
            .await;
            assert_eq!(ack.offset, round as u64 + 1, "{name}: contiguous offsets");
            let epoch = epochs.entry(name.clone()).or_insert(ack.epoch.clone());
            assert_eq!(*epoch, ack.epoch, "{name}: one epoch");
        }
    }

    // Both instances hold data.
    let keys = [first.keys(&prefix), second.keys(&prefix)];
    eprintln!(
        "keys under {prefix}: {} on shard 1, {} on shard 2",
        keys[0].len(),
        keys[1].len()
    );
    assert!(
        !keys[0].is_empty() && !keys[1].is_empty(),
        "keys on both shards: {} and {}",
        keys[0].len(),
        keys[1].len()
    );
    // When key names show topic names, each topic lives on one shard, and both shards have
    // topics.
    let named = |shard: usize| -> BTreeSet<usize> {
        (0..TOPICS)
            .filter(|t| keys[shard].iter().any(|k| k.contains(&topic(*t))))
            .collect()
    };
    let (on_first, on_second) = (named(0), named(1));
    eprintln!("topics named on shard 1: {on_first:?}, on shard 2: {on_second:?}");
    if !on_first.is_empty() || !on_second.is_empty() {
        assert!(
            on_first.is_disjoint(&on_second),
            "topics with keys on both shards: {:?}",
            on_first.intersection(&on_second).collect::<Vec<_>>()
        );
        assert_eq!(
            on_first.len() + on_second.len(),
            TOPICS,
            "every topic on a shard"
        );
        assert!(
            !on_first.is_empty() && !on_second.is_empty(),
            "topics on both shards"
        );
    }

    // Each topic's history: in order, contiguous, the same from both nodes.
    let mut auditors = [
        nodes[0].connect("auditor").await,
        nodes[1].connect("auditor").await,
    ];
    for t in 0..TOPICS {
        let name = topic(t);
        let mut seen = Vec::new();
        for auditor in &mut auditors {
            let history = history_all(auditor, &name, 1000).await;
            assert_eq!(history.epoch, epochs[&name]);
            assert_eq!(history.offsets(), one_to(EACH as u64), "{name}");
            let data: Vec<&str> = history.messages.iter().map(|m| m.data.get()).collect();
            let expected: Vec<String> = (0..EACH).map(|round| payload(&name, round)).collect();
            assert_eq!(data, expected, "{name}: in publish order");
            seen.push(history.encoded());
        }
        assert!(
            seen[0] == seen[1],
            "{name}: both nodes serve the same history"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_redis_is_down() {
    let mut redis = Redis::start();
    let node = Node::start(&[redis.url()], &prefix("health")).await;
    let (status, body) = node.health().await;
    assert_eq!(status, 200, "{body}");
    assert!(healthy(&body), "{body}");
    assert_eq!(body["store"], "redis");

    redis.kill9();
    let down = Instant::now();
    let (_, body) = node.wait_health(503, RECOVERY).await;
    eprintln!("degraded {:?} after the kill: {body}", down.elapsed());
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["store"], "redis", "{body}");
    // It stays degraded while Redis is down.
    for _ in 0..5 {
        let (status, body) = node.health().await;
        assert_eq!(
            (status, &body["status"]),
            (503, &json!("degraded")),
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    redis.restart();
    let up = Instant::now();
    let (_, body) = node.wait_health(200, RECOVERY).await;
    eprintln!("healthy {:?} after the restart: {body}", up.elapsed());
    assert!(healthy(&body), "{body}");
    assert_eq!(body["store"], "redis");

    // The metrics tell the same story: round trips were timed, the feed reconnected.
    let metrics = reqwest::get(format!("http://{}/metrics", node.addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("tidings_redis_pubsub_reconnects_total ") >= 1.0);
    assert!(value("tidings_redis_seconds_count ") >= 1.0);
    assert!(
        metrics.contains("tidings_redis_batch_commands_bucket"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_urls_from_flags_env_or_toml_name_the_same_shards() {
    const TOPICS: usize = 12;
    let first = Redis::start();
    let second = Redis::start();
    let prefix = prefix("via");
    let urls = [first.url(), second.url()];
    let mut nodes = Vec::new();
    for via in [UrlsVia::Flags, UrlsVia::Env, UrlsVia::Toml] {
        nodes.push(Node::start_via(&urls, &prefix, via).await);
    }
    let mut publishers = Vec::new();
    for node in &nodes {
        publishers.push(node.connect("writer").await);
    }
    // Every topic is written through all three nodes in turn: had one node mapped the topic to
    // the other shard, its offsets would not continue.
    for round in 0..3 {
        for t in 0..TOPICS {
            let name = format!("via.{t:02}.t");
            let publisher = &mut publishers[(round + t) % 3];
            let ack = publish(
                publisher,
                &name,
                &payload(&name, round),
                &format!("{t}/{round}"),
            )
            .await;
            assert_eq!(
                ack.offset,
                round as u64 + 1,
                "{name}: one history through every node"
            );
        }
    }
    let keys = [first.keys(&prefix), second.keys(&prefix)];
    assert!(
        !keys[0].is_empty() && !keys[1].is_empty(),
        "keys on both shards: {} and {}",
        keys[0].len(),
        keys[1].len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_topics_reach_subscribers_on_other_nodes_live_only() {
    let redis = Redis::start();
    let nodes = nodes(2, &[redis.url()], &prefix("ephemeral")).await;
    let topic = "live.typing";
    let mut watcher = nodes[1].connect("watcher").await;
    watcher.subscribe(&[topic]).await;
    let mut publisher = nodes[0].connect("alice").await;
    for i in 0..20 {
        publisher
            .send(&json!({"type": "publish", "topic": topic, "data": i}).to_string())
            .await;
    }
    for i in 0..20 {
        match next(&mut watcher, WAIT).await {
            Next::Msg(ServerMessage::Message(m)) => {
                assert_eq!(m.data.get(), i.to_string(), "in publish order");
                assert_eq!((m.offset, m.epoch), (None, None), "live only: no position");
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    // The publisher's node does not deliver its own message twice (once locally, once from
    // Redis), and nothing was stored.
    let mut local = nodes[0].connect("local").await;
    local.subscribe(&[topic]).await;
    publisher
        .send(&json!({"type": "publish", "topic": topic, "data": "once"}).to_string())
        .await;
    for client in [&mut local, &mut watcher] {
        match next(client, WAIT).await {
            Next::Msg(ServerMessage::Message(m)) => assert_eq!(m.data.get(), "\"once\""),
            other => panic!("{other:?}"),
        }
        expect_quiet(client, "a subscriber of an ephemeral topic").await;
    }
    assert!(
        redis.keys(&prefix("ephemeral")).is_empty(),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_credentials_come_from_the_url() {
    let redis = Redis::start();
    let created = redis.command(&[
        "ACL",
        "SETUSER",
        "tidings",
        "on",
        ">s3cret-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    assert!(format!("{created:?}").contains("OK"), "{created:?}");
    // Nobody else gets in: the default user is switched off.
    redis.command(&["ACL", "SETUSER", "default", "off"]);
    let url = redis
        .url()
        .replacen("redis://", "redis://tidings:s3cret-pw@", 1);
    let nodes = nodes(2, &[url], &prefix("auth")).await;
    let mut follower = Follower::subscribe(&nodes[1].url("watcher"), "cluster.auth").await;
    let mut publisher = nodes[0].connect("alice").await;
    let ack = publish(&mut publisher, "cluster.auth", &payload("auth", 1), "r1").await;
    follower.follow_until(ack.offset, WAIT, None).await;
    assert_eq!(follower.offsets(), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls() {
    let (redis, ca) = Redis::start_tls();
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    // The node trusts the test CA through the system trust store's standard override.
    let ca = ca.to_str().expect("utf-8 path");
    let env = [("SSL_CERT_FILE", ca)];
    let prefix = prefix("tls");
    let a = Node::start_with_env(std::slice::from_ref(&url), &prefix, &env).await;
    let b = Node::start_with_env(std::slice::from_ref(&url), &prefix, &env).await;
    let mut follower = Follower::subscribe(&b.url("watcher"), "cluster.tls").await;
    let mut publisher = a.connect("alice").await;
    let ack = publish(&mut publisher, "cluster.tls", &payload("tls", 1), "r1").await;
    follower.follow_until(ack.offset, WAIT, None).await;
    assert_eq!(follower.offsets(), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_scripts_is_not_a_client_error() {
    let redis = Redis::start();
    let node = Node::start(&[redis.url()], &prefix("noscript")).await;
    let mut publisher = node.connect("alice").await;
    let first = publish(&mut publisher, "cluster.noscript", &payload("s", 1), "r1").await;
    // A failover or an operator empties the script cache; the node does not notice until
    // its next call says NOSCRIPT.
    let flushed = redis.command(&["SCRIPT", "FLUSH"]);
    assert!(format!("{flushed:?}").contains("OK"), "{flushed:?}");
    let second = publish(&mut publisher, "cluster.noscript", &payload("s", 2), "r2").await;
    assert_eq!(second.offset, first.offset + 1, "acked, stored once");
    let history = history_all(&mut publisher, "cluster.noscript", 10).await;
    assert_eq!(history.offsets(), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_and_http_apis_see_one_server_from_every_node() {
    use tidings_protocol::order::{Item, Money, Order, OrderEvent};
    use tidings_server::{Repository, RepositoryError};

    const KEY: &str = "cluster-api-key-0123456789abcdef";
    let redis = Redis::start();
    let config = tidings_server::Config {
        redis_url: vec![redis.url()],
        redis_prefix: prefix("library"),
        api_key: Some(KEY.into()),
        ..common::config()
    };
    let one = common::start(config.clone()).await;
    let two = common::start(config).await;
    for node in [&one, &two] {
        let deadline = Instant::now() + RECOVERY;
        while !healthy(&node.health().await) {
            assert!(Instant::now() < deadline, "{}", node.health().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // `Tidings::publish` on node one reaches a subscriber of node two.
    let mut watcher = two.connect("watcher").await;
    watcher.subscribe(&["lib.news"]).await;
    let published = one
        .tidings
        .publish("lib.news", &json!({"n": 1}))
        .await
        .expect("publish from Rust");
    assert_eq!(published.offset, Some(1));
    match next(&mut watcher, WAIT).await {
        Next::Msg(ServerMessage::Message(m)) => {
            assert_eq!((m.offset, m.from.as_str()), (Some(1), "server"));
        }
        other => panic!("{other:?}"),
    }

    // The HTTP API: publish through node two, history through node one.
    let http = reqwest::Client::new();
    let body: serde_json::Value = http
        .post(format!("http://{}/api/publish", two.addr))
        .bearer_auth(KEY)
        .json(&json!({"topic": "lib.news", "data": 2, "id": "api-1"}))
        .send()
        .await
        .expect("POST /api/publish")
        .json()
        .await
        .expect("json");
    assert_eq!(body["offset"], 2, "{body}");
    let history: serde_json::Value = http
        .get(format!("http://{}/api/topics/lib.news/history", one.addr))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("GET history")
        .json()
        .await
        .expect("json");
    let offsets: Vec<u64> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [1, 2], "{history}");
    assert_eq!(history["epoch"], json!(published.epoch), "one epoch");

    // `Repository`: saved through node one (with a snapshot), loaded through node two; a save
    // from a stale load through node two is a conflict.
    let repo_one = Repository::<Order>::new(one.tidings.store().clone(), 2);
    let repo_two = Repository::<Order>::new(two.tidings.store().clone(), 2);
    let mut order = repo_one.load("order-lib").await.expect("load");
    let stale = repo_two.load("order-lib").await.expect("load");
    let item = |id: &str| Item {
        id: id.into(),
        name: id.into(),
        price: Money::from_cents(250),
        quantity: 1,
    };
    let version = repo_one
        .save(
            "order-lib",
            &mut order,
            vec![
                OrderEvent::OrderCreated {
                    customer_id: "c1".into(),
                    items: vec![item("a")],
                    total: Money::from_cents(250),
                },
                OrderEvent::ItemAdded(item("b")),
                OrderEvent::OrderConfirmed {},
            ],
        )
        .await
        .expect("save");
    assert_eq!(version, 3);
    let loaded = repo_two.load("order-lib").await.expect("load");
    assert_eq!(loaded, order, "the same aggregate from the other node");
    let mut stale = stale;
    let refused = repo_two
        .save("order-lib", &mut stale, vec![OrderEvent::OrderConfirmed {}])
        .await;
    assert!(
        matches!(
            refused,
            Err(RepositoryError::Conflict {
                expected: 0,
                current: 3
            })
        ),
        "{refused:?}"
    );
}

/// The presence of `topic` as `(sorted client ids, clients, users)`, asked through `c`.
async fn presence_of(c: &mut Client, topic: &str) -> (Vec<String>, u64, u64) {
    let ask = |kind: &str| json!({"type": kind, "topic": topic, "ref": kind}).to_string();
    let mut ids = match c.request(&ask("presence")).await {
        ServerMessage::Presence(p) => p
            .members
            .into_iter()
            .map(|m| m.client_id)
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    ids.sort();
    match c.request(&ask("presence_stats")).await {
        ServerMessage::PresenceStats(s) => (ids, s.clients, s.users),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_the_same_from_every_node_and_a_killed_nodes_members_leave() {
    let redis = Redis::start();
    let mut nodes = nodes(2, &[redis.url()], &prefix("presence")).await;
    let topic = "presence.room";
    let mut alice = nodes[0].connect("alice").await;
    alice.subscribe(&[topic]).await;
    let mut bob = nodes[1].connect("bob").await;
    bob.subscribe(&[topic]).await;
    // Alice (node 1) sees Bob (node 2) join.
    match next(&mut alice, WAIT).await {
        Next::Msg(ServerMessage::Join(j)) => {
            assert_eq!(
                (j.client_id.as_str(), j.user.as_str()),
                (bob.client_id.as_str(), "bob")
            );
        }
        other => panic!("{other:?}"),
    }
    let mut tab = nodes[1].connect("bob").await;
    tab.subscribe(&[topic]).await;
    for c in [&mut alice, &mut bob] {
        match next(c, WAIT).await {
            Next::Msg(ServerMessage::Join(j)) => assert_eq!(j.client_id, tab.client_id),
            other => panic!("{other:?}"),
        }
    }
    let mut everyone = vec![
        alice.client_id.clone(),
        bob.client_id.clone(),
        tab.client_id.clone(),
    ];
    everyone.sort();
    let mut observers = [nodes[0].connect("o1").await, nodes[1].connect("o2").await];
    for o in &mut observers {
        assert_eq!(presence_of(o, topic).await, (everyone.clone(), 3, 2));
    }

    // A clean leave on node 2 reaches node 1 at once.
    tab.ws.close(None).await.expect("close");
    match next(&mut alice, WAIT).await {
        Next::Msg(ServerMessage::Leave(l)) => assert_eq!(l.client_id, tab.client_id),
        other => panic!("{other:?}"),
    }

    // Node 2 dies: its members leave within the presence TTL (2 s here), seen from node 1.
    nodes[1].kill9();
    let killed = Instant::now();
    match next(&mut alice, RECOVERY).await {
        Next::Msg(ServerMessage::Leave(l)) => {
            assert_eq!(
                (l.client_id.as_str(), l.user.as_str()),
                (bob.client_id.as_str(), "bob")
            );
        }
        other => panic!("{other:?}"),
    }
    let waited = killed.elapsed();
    assert!(waited < Duration::from_secs(4), "left after {waited:?}");
    assert_eq!(
        presence_of(&mut observers[0], topic).await,
        (vec![alice.client_id.clone()], 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pubsub_connection_is_caught_up_from_the_streams() {
    let redis = Redis::start();
    let nodes = nodes(2, &[redis.url()], &prefix("pubsub-lost")).await;
    let topic = "cluster.pubsub-lost";
    let mut follower = Follower::subscribe(&nodes[1].url("watcher"), topic).await;
    let frames = |tag: &str| -> Vec<(String, String)> {
        (0..100)
            .map(|i| {
                let r = format!("{tag}-{i}");
                (r.clone(), publish_frame(topic, &payload(tag, i), &r, None))
            })
            .collect()
    };
    let first = publish_pipelined(nodes[0].connect("alice").await, frames("a")).await;
    // Redis drops every pub/sub connection (as it does to one over its output buffer
    // limit): notices published meanwhile are lost, and the subscriber's node must read
    // them back from the stream. The subscriber itself stays connected.
    let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // (Only node 2's feed subscribes to anything, so only it is a pub/sub client.)
    assert!(
        format!("{killed:?}").contains('1'),
        "node 2's feed: {killed:?}"
    );
    let second = publish_pipelined(nodes[0].connect("alice").await, frames("b")).await;
    let last = second.values().map(|a| a.offset).max().expect("acks");
    assert_eq!(first.len() + second.len(), 200);
    follower.follow_until(last, RECOVERY, None).await;
    assert_eq!(
        follower.offsets(),
        one_to(last),
        "every offset once, in order"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", nodes[1].addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tidings_redis_pubsub_reconnects_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
