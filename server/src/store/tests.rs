//! The store through its handle, on both backends, with a clock the tests move: retention by
//! count and age, the dedup window, scoped idempotency, bounded pages, freeing empty topics,
//! and what the fan-out side is handed. Upkeep rounds are run on demand, so nothing sleeps.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::clock::ManualClock;
use crate::retention::Retention;

/// One committed row as the fan-out saw it: topic, offset, origin, epoch.
type Seen = (String, u64, Option<u64>, String);

/// The fan-out side, recorded.
#[derive(Default)]
struct Recorder {
    /// Every committed row, in the order handed over.
    rows: Mutex<Vec<Seen>>,
    /// Topics someone subscribes to.
    subscribed: Mutex<HashSet<String>>,
    /// Topics that lost their last subscriber.
    released: Mutex<Vec<Arc<str>>>,
}

impl Listeners for Recorder {
    fn committed(&self, commit: &Commit<'_>) {
        let mut rows = self.rows.lock().expect("lock");
        for (row, origin) in commit.rows.iter().zip(commit.origins) {
            let epoch = commit.heads[&row.topic].epoch.clone();
            rows.push((row.topic.to_string(), row.offset, *origin, epoch));
        }
    }

    fn released(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *self.released.lock().expect("lock"))
    }

    fn free_if_unsubscribed(&self, topic: &str, free: &mut dyn FnMut()) -> bool {
        let subscribed = self.subscribed.lock().expect("lock");
        if subscribed.contains(topic) {
            return false;
        }
        free();
        true
    }

    fn rebased(&self, _topic: &Arc<str>, _from: u64) {}

    fn ephemeral(&self, _topic: &str, _frame: &str) {}
}

impl Recorder {
    fn subscribe(&self, topic: &str) {
        self.subscribed
            .lock()
            .expect("lock")
            .insert(topic.to_owned());
    }

    fn unsubscribe(&self, topic: &str) {
        self.subscribed.lock().expect("lock").remove(topic);
        self.released.lock().expect("lock").push(Arc::from(topic));
    }
}

struct Fixture {
    store: Store,
    listeners: Arc<Recorder>,
    metrics: Arc<Metrics>,
    clock: Arc<ManualClock>,
}

const START: Duration = Duration::from_secs(1_800_000_000);

fn open_with(
    kind: StoreKind,
    dir: &std::path::Path,
    retention: Retention,
    max_read_bytes: usize,
) -> Fixture {
    let metrics = Arc::new(Metrics::new());
    let listeners = Arc::new(Recorder::default());
    let clock = ManualClock::at(UNIX_EPOCH + START);
    let store = Store::open(
        &StoreConfig {
            kind,
            data_dir: dir.to_owned(),
            fsync: false,
            retention,
            queue: 64,
            dedup_window: Duration::from_secs(60),
            max_read_bytes,
            clock: Arc::clone(&clock) as Arc<dyn Clock>,
            redis: None,
            presence_ttl: Duration::from_secs(30),
        },
        Arc::clone(&listeners) as Arc<dyn Listeners>,
        Arc::clone(&metrics),
    )
    .expect("open");
    Fixture {
        store,
        listeners,
        metrics,
        clock,
    }
}

fn retention(max_messages: u64, max_age: Option<Duration>) -> Retention {
    Retention::new(&[], &[], max_messages, max_age).expect("retention")
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidings-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn json(v: impl serde::Serialize) -> Json {
    Json::to_json(&v).expect("json")
}

const KINDS: [StoreKind; 2] = [StoreKind::Memory, StoreKind::Sqlite];

#[tokio::test]
async fn retention_by_count_trims_on_both_backends() {
    let dir = temp_dir("count");
    for kind in KINDS {
        let f = open_with(kind, &dir.join(kind.as_str()), retention(10, None), 1 << 20);
        for i in 0..50 {
            f.store
                .publish("t", json(i), "test", None)
                .await
                .expect("publish");
        }
        f.store.maintain().await;
        assert_eq!(
            f.store.head("t").await.expect("head").map(|h| h.first),
            Some(41),
            "{kind:?}"
        );
        let rows = f.store.read("t", 0, 100).await.expect("read").rows;
        assert_eq!(rows.first().map(|r| r.offset), Some(41), "{kind:?}");
        assert_eq!(rows.len(), 10);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn messages_older_than_max_age_are_trimmed_on_both_backends() {
    let dir = temp_dir("age");
    for kind in KINDS {
        let f = open_with(
            kind,
            &dir.join(kind.as_str()),
            retention(0, Some(Duration::from_secs(60))),
            1 << 20,
        );
        // A subscriber keeps the emptied topic's head (and so its offsets) alive.
        f.listeners.subscribe("aging");
        for i in 0..5 {
            f.store
                .publish("aging", json(i), "test", None)
                .await
                .expect("publish");
            f.clock.advance(Duration::from_secs(10));
        }
        f.store.maintain().await;
        assert_eq!(
            f.store.head("aging").await.expect("head").map(|h| h.first),
            Some(1),
            "{kind:?}: none is old yet"
        );
        // 70 s after the first: the one written at 0 s is older than 60 s; the one at 10 s is
        // exactly 60 s old, not older.
        f.clock.advance(Duration::from_secs(20));
        f.store.maintain().await;
        assert_eq!(
            f.store.head("aging").await.expect("head").map(|h| h.first),
            Some(2),
            "{kind:?}"
        );
        f.clock.advance(Duration::from_millis(1));
        f.store.maintain().await;
        assert_eq!(
            f.store.head("aging").await.expect("head").map(|h| h.first),
            Some(3),
            "{kind:?}"
        );
        f.clock.advance(Duration::from_secs(3600));
        f.store.maintain().await;
        assert!(
            f.store
                .read("aging", 0, 10)
                .await
                .expect("read")
                .rows
                .is_empty()
        );
        assert_eq!(
            f.store
                .head("aging")
                .await
                .expect("head")
                .map(|h| (h.first, h.latest)),
            Some((6, 5)),
            "{kind:?}: emptied, offsets never reused while the topic lives"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_and_payloads_compared_on_both_backends() {
    let dir = temp_dir("idem");
    for kind in KINDS {
        let f = open_with(kind, &dir.join(kind.as_str()), retention(0, None), 1 << 20);
        let s = &f.store;
        let forged = s
            .publish(
                "chat",
                json("forged"),
                "user:mallory",
                Some("order-42".into()),
            )
            .await
            .expect("mallory");
        let real = s
            .publish("chat", json("real"), "user:alice", Some("order-42".into()))
            .await
            .expect("alice's key is her own");
        assert_ne!(real.offset, forged.offset, "{kind:?}");
        let retry = s
            .publish("chat", json("real"), "user:alice", Some("order-42".into()))
            .await
            .expect("a retry");
        assert_eq!(
            retry.offset, real.offset,
            "{kind:?}: a retry gets the offset"
        );
        let reuse = s
            .publish("chat", json("other"), "user:alice", Some("order-42".into()))
            .await;
        assert!(
            matches!(reuse, Err(StoreError::IdempotencyConflict { offset, .. }) if offset == real.offset),
            "{kind:?}: {reuse:?}"
        );
        let rows = s.read("chat", 0, 10).await.expect("read").rows;
        let data: Vec<&str> = rows.iter().map(|r| r.data.get()).collect();
        assert_eq!(data, ["\"forged\"", "\"real\""], "{kind:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_id_is_forgotten_after_the_dedup_window_on_both_backends() {
    let dir = temp_dir("window");
    for kind in KINDS {
        let f = open_with(kind, &dir.join(kind.as_str()), retention(0, None), 1 << 20);
        let publish = || f.store.publish("t", json(1), "server", Some("once".into()));
        let a = publish().await.expect("first");
        f.clock.advance(Duration::from_secs(59));
        assert_eq!(
            publish().await.expect("retry").offset,
            a.offset,
            "{kind:?}: within"
        );
        f.clock.advance(Duration::from_secs(2));
        assert_eq!(
            publish().await.expect("later").offset,
            2,
            "{kind:?}: past the window"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reads_are_bounded_by_rows_and_bytes_on_both_backends() {
    let dir = temp_dir("pages");
    for kind in KINDS {
        let f = open_with(
            kind,
            &dir.join(kind.as_str()),
            retention(0, None),
            64 * 1024,
        );
        let s = &f.store;
        let big = "x".repeat(20 * 1024);
        for i in 0..10 {
            s.publish("big", json(format!("{i}{big}")), "test", None)
                .await
                .expect("publish");
        }
        let page = s.read("big", 0, 1000).await.expect("read");
        assert_eq!(page.rows.len(), 3, "{kind:?}: 3 × 20 KiB fit in 64 KiB");
        assert!(page.more);
        let page = s.read("big", 8, 1000).await.expect("read");
        assert_eq!(page.rows.len(), 2, "{kind:?}");
        assert!(!page.more, "{kind:?}: the last page");
        let page = s.read("big", 0, 2).await.expect("read");
        assert_eq!((page.rows.len(), page.more), (2, true), "{kind:?}");
        let page = s.read("big", 0, 0).await.expect("read");
        assert_eq!((page.rows.len(), page.more), (0, true), "{kind:?}");
        // One message larger than the bound still comes back, alone.
        s.publish("huge", json("y".repeat(100 * 1024)), "test", None)
            .await
            .expect("publish");
        s.publish("huge", json(1), "test", None)
            .await
            .expect("publish");
        let page = s.read("huge", 0, 1000).await.expect("read");
        assert_eq!((page.rows.len(), page.more), (1, true), "{kind:?}");
        let page = s.read("big", u64::MAX, 10).await.expect("read");
        assert!(page.rows.is_empty(), "{kind:?}: positions never wrap");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn emptied_topics_are_freed_by_work_that_follows_the_writes() {
    let dir = temp_dir("free");
    for kind in KINDS {
        let path = dir.join(kind.as_str());
        let rules = retention(0, Some(Duration::from_secs(60)));
        let f = open_with(kind, &path, rules.clone(), 1 << 20);
        f.listeners.subscribe("kept");
        for i in 0..2000 {
            f.store
                .publish(&format!("t{i}"), json(i), "test", None)
                .await
                .expect("publish");
        }
        f.store
            .publish("kept", json(1), "test", None)
            .await
            .expect("publish");
        assert_eq!(f.store.topic_count(), 2001);
        f.clock.advance(Duration::from_secs(61));
        // Each topic is looked at about once; a round examines at most MAX_CHECKS of them.
        for _ in 0..4 {
            f.store.maintain().await;
        }
        assert_eq!(
            f.store.topic_count(),
            1,
            "{kind:?}: only the subscribed one is kept"
        );
        let kept = f
            .store
            .head("kept")
            .await
            .expect("head")
            .expect("a subscribed topic keeps its head");
        assert!(kept.is_empty() && kept.latest == 1);
        let checks = f.metrics.retention_checks.get();
        assert!(checks <= 2001 + 10, "{kind:?}: {checks} checks");
        f.store.maintain().await;
        f.store.maintain().await;
        assert_eq!(
            f.metrics.retention_checks.get(),
            checks,
            "{kind:?}: nothing changed, nothing examined"
        );
        // The last subscriber leaves: the head goes too.
        f.listeners.unsubscribe("kept");
        f.store.maintain().await;
        assert_eq!(f.store.topic_count(), 0, "{kind:?}");
        // A new message starts a new history.
        let again = f
            .store
            .publish("t7", json("again"), "test", None)
            .await
            .expect("publish");
        assert_eq!(again.offset, 1, "{kind:?}");
        f.store.flush().await;
        drop(f);
        if kind == StoreKind::Sqlite {
            let reopened = open_with(kind, &path, rules, 1 << 20);
            assert_eq!(reopened.store.topic_count(), 1, "only t7 comes back");
            assert_eq!(
                reopened
                    .store
                    .head("t7")
                    .await
                    .expect("head")
                    .map(|h| h.latest),
                Some(1)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_fan_out_gets_each_commit_in_order_with_origins_and_epochs() {
    let dir = temp_dir("sink");
    for kind in KINDS {
        let f = open_with(kind, &dir.join(kind.as_str()), retention(0, None), 1 << 20);
        for (i, origin) in [(0, Some(4)), (1, None), (2, Some(9))] {
            let (reply, done) = reply_channel();
            f.store
                .send(Command::Publish {
                    topic: Arc::from("t"),
                    data: json(i),
                    from: "c".into(),
                    origin,
                    id: None,
                    reply: Some(reply),
                    started: std::time::Instant::now(),
                })
                .await
                .expect("send");
            done.await.expect("answered").expect("committed");
        }
        let appended = f
            .store
            .append(
                "s",
                Some(0),
                vec![tidings_protocol::NewEvent {
                    r#type: "e".into(),
                    data: json(1),
                }],
                "c",
            )
            .await
            .expect("append");
        let conflict = f.store.append("s", Some(0), vec![], "c").await;
        assert!(matches!(
            conflict,
            Err(StoreError::Conflict {
                expected: 0,
                current: 1
            })
        ));
        let rows = f.listeners.rows.lock().expect("lock").clone();
        let epoch = f.store.head("t").await.expect("head").expect("head").epoch;
        assert_eq!(
            rows,
            [
                ("t".to_owned(), 1, Some(4), epoch.clone()),
                ("t".to_owned(), 2, None, epoch.clone()),
                ("t".to_owned(), 3, Some(9), epoch),
                ("s".to_owned(), 1, None, appended.epoch),
            ],
            "{kind:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
