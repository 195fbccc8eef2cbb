//! The hub: which connections subscribe to which topic, and fan-out.
//!
//! Architecture invariant: the hub knows nothing about sockets, JSON parsing or storage.
//! It holds one [`Mailbox`] per (topic, connection) and pushes already-encoded frames into
//! them. A publish encodes its `message` frame once; every subscriber gets a clone of the
//! same reference-counted buffer.
//!
//! A publisher never waits: frames are queued with `try_send`. A mailbox whose queue is full
//! belongs to a slow consumer: the hub trips its overflow signal and moves on; the session
//! closes that connection (close code 4002) and the client recovers on reconnect.
//!
//! Locks are `std` locks, never held across an `.await`. Lock order: the topic map first,
//! then a topic's subscriber list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tidings_protocol::server::Message;
use tidings_protocol::{Json, ServerMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::metrics::Metrics;

/// Identifies one connection inside this process.
pub type ConnId = u64;

/// One item of a connection's outbound queue.
///
/// Durable topics carry their offset so the connection's writer can keep a per-topic cursor:
/// it drops what it already sent and fills any gap from the store before writing on, which is
/// what makes recovery and catch-up exact (no gap, no duplicate).
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An encoded text frame (replies, ephemeral topics).
    Frame(Utf8Bytes),
    /// Time for a `heartbeat` frame and a WebSocket ping.
    Heartbeat,
    /// A `message` frame of a durable topic.
    Durable {
        /// The topic.
        topic: Arc<str>,
        /// Its offset.
        offset: u64,
        /// The encoded frame, shared by every subscriber.
        frame: Utf8Bytes,
    },
    /// This connection published `offset` itself: advance the cursor without sending (no echo).
    Skip {
        /// The topic.
        topic: Arc<str>,
        /// The publisher's own offset.
        offset: u64,
    },
    /// Start a cursor for `topic`: everything after `from` is to be delivered.
    Track {
        /// The topic.
        topic: Arc<str>,
        /// Last offset the client already has.
        from: u64,
    },
    /// Deliver everything stored for `topic` up to its current head.
    Sync {
        /// The topic.
        topic: Arc<str>,
    },
    /// Forget the cursor for `topic` (unsubscribed).
    Untrack {
        /// The topic.
        topic: Arc<str>,
    },
}

/// The sending side of one connection's bounded outbound queue.
#[derive(Debug, Clone)]
pub struct Mailbox {
    id: ConnId,
    tx: mpsc::Sender<Outbound>,
    /// Tripped when the queue overflows; the session watches it.
    overflow: CancellationToken,
    /// Set when a durable frame could not be queued: the writer catches up from the store.
    lagging: Arc<AtomicBool>,
}

impl Mailbox {
    /// A mailbox for connection `id`.
    pub fn new(id: ConnId, tx: mpsc::Sender<Outbound>, overflow: CancellationToken) -> Self {
        Mailbox {
            id,
            tx,
            overflow,
            lagging: Arc::default(),
        }
    }

    /// Queue an item if there is room right now; otherwise drop it (for heartbeats, which
    /// are pointless on a connection that is busy writing anyway).
    pub fn offer_if_room(&self, item: Outbound) {
        let _ = self.tx.try_send(item);
    }

    /// Queue an item that must not be lost (a reply, a cursor marker), waiting for room.
    /// If the queue stays full for `patience`, the connection is a slow consumer: the
    /// overflow signal trips and the item is dropped with the connection.
    pub async fn send(&self, item: Outbound, patience: std::time::Duration) {
        match tokio::time::timeout(patience, self.tx.send(item)).await {
            Ok(_) => {}
            Err(_) => self.overflow.cancel(),
        }
    }

    /// The flag the connection's writer checks to know it must catch up from the store.
    pub fn lagging(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.lagging)
    }

    /// Queue a frame of a durable topic without waiting. A full queue does not close the
    /// connection: the frame can be read back from the store, so the mailbox is marked as
    /// lagging and the writer catches up once it drains.
    pub fn offer_durable(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagging.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The connection this mailbox delivers to.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queue a frame without waiting. Returns false (and trips the overflow signal when the
    /// queue is full) if the frame was not queued.
    pub fn offer(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// One topic's subscribers.
#[derive(Default)]
struct Topic {
    subscribers: RwLock<Vec<Mailbox>>,
}

/// Shared pub/sub state of one server.
pub struct Hub {
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Subscribers the frame was queued for.
    pub queued: usize,
    /// Subscribers skipped because their queue was full (now being closed).
    pub overflowed: usize,
}

impl Hub {
    /// An empty hub reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            topics: RwLock::default(),
            next_conn: AtomicU64::new(1),
            metrics,
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Add `mailbox` to `topic`. Returns false if it was already subscribed.
    ///
    /// Subscribe and unsubscribe hold the map's write lock for their whole (short) run, so
    /// a topic is never removed from the map while a subscriber is being added to it.
    pub fn subscribe(&self, topic: &str, mailbox: &Mailbox) -> bool {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let entry = topics
            .entry(Arc::from(topic))
            .or_insert_with(|| Arc::new(Topic::default()));
        let mut subs = entry
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if subs.iter().any(|m| m.id == mailbox.id) {
            return false;
        }
        subs.push(mailbox.clone());
        self.metrics.subscriptions.inc();
        true
    }

    /// Remove connection `id` from `topic`. Returns false if it was not subscribed.
    pub fn unsubscribe(&self, topic: &str, id: ConnId) -> bool {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = topics.get(topic).map(Arc::clone) else {
            return false;
        };
        let mut subs = entry
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(pos) = subs.iter().position(|m| m.id == id) else {
            return false;
        };
        subs.swap_remove(pos);
        if subs.is_empty() {
            topics.remove(topic);
        }
        self.metrics.subscriptions.dec();
        true
    }

    /// Encode one `message` frame and queue it for every subscriber of `topic` except the
    /// publisher (`from`). Never waits.
    pub fn publish(
        &self,
        from: Option<ConnId>,
        from_client: &str,
        topic: String,
        data: Json,
        started: Instant,
    ) -> Delivery {
        let entry = {
            let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
            topics.get(topic.as_str()).map(Arc::clone)
        };
        self.metrics.publishes.inc();
        let Some(entry) = entry else {
            return Delivery {
                queued: 0,
                overflowed: 0,
            };
        };
        let frame = encode_message(topic, data, from_client.to_owned());
        let mut delivery = Delivery {
            queued: 0,
            overflowed: 0,
        };
        {
            let subs = entry
                .subscribers
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for mailbox in subs.iter() {
                if Some(mailbox.id) == from {
                    continue;
                }
                if mailbox.offer(Outbound::Frame(frame.clone())) {
                    delivery.queued += 1;
                } else if mailbox.overflow.is_cancelled() {
                    delivery.overflowed += 1;
                }
            }
        }
        self.metrics.messages_out.inc_by(delivery.queued as u64);
        self.metrics
            .fanout_seconds
            .observe(started.elapsed().as_secs_f64());
        delivery
    }
}

impl Hub {
    /// Queue an already-committed, already-encoded durable `message` for every subscriber of
    /// `topic`; the publisher's own connection gets a [`Outbound::Skip`] instead (no echo).
    /// Called by the store's writer, in offset order. Never waits.
    pub fn publish_durable(
        &self,
        topic: &Arc<str>,
        offset: u64,
        frame: Utf8Bytes,
        publisher: Option<ConnId>,
        started: Instant,
    ) -> usize {
        let entry = {
            let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
            topics.get(topic.as_ref()).map(Arc::clone)
        };
        self.metrics.publishes.inc();
        let Some(entry) = entry else { return 0 };
        let mut queued = 0;
        {
            let subs = entry
                .subscribers
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for mailbox in subs.iter() {
                let item = if Some(mailbox.id) == publisher {
                    Outbound::Skip {
                        topic: Arc::clone(topic),
                        offset,
                    }
                } else {
                    queued += 1;
                    Outbound::Durable {
                        topic: Arc::clone(topic),
                        offset,
                        frame: frame.clone(),
                    }
                };
                mailbox.offer_durable(item);
            }
        }
        self.metrics.messages_out.inc_by(queued as u64);
        self.metrics
            .fanout_seconds
            .observe(started.elapsed().as_secs_f64());
        queued
    }
}

/// Encode a `message` frame once, into a buffer that is shared by every subscriber.
fn encode_message(topic: String, data: Json, from: String) -> Utf8Bytes {
    let msg = ServerMessage::Message(Message {
        topic,
        data,
        from,
        timestamp: clock::now_rfc3339(),
        offset: None,
        epoch: None,
    });
    Utf8Bytes::from(msg.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(hub: &Hub, cap: usize) -> (Mailbox, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            Mailbox::new(hub.next_conn_id(), tx, CancellationToken::new()),
            rx,
        )
    }

    fn data(text: &str) -> Json {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn publish_reaches_other_subscribers_once_encoded() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (a, mut rx_a) = mailbox(&hub, 8);
        let (b, mut rx_b) = mailbox(&hub, 8);
        assert!(hub.subscribe("t", &a));
        assert!(!hub.subscribe("t", &a), "second subscribe is a no-op");
        assert!(hub.subscribe("t", &b));
        let d = hub.publish(
            Some(a.id()),
            "client-a",
            "t".into(),
            data("{\"x\":1}"),
            Instant::now(),
        );
        assert_eq!(
            d,
            Delivery {
                queued: 1,
                overflowed: 0
            }
        );
        assert!(rx_a.try_recv().is_err(), "no echo to the publisher");
        let Ok(Outbound::Frame(frame)) = rx_b.try_recv() else {
            panic!("b got nothing")
        };
        let msg = ServerMessage::decode(frame.as_str()).expect("decode");
        let ServerMessage::Message(m) = msg else {
            panic!("not a message")
        };
        assert_eq!(
            (m.topic.as_str(), m.data.get(), m.from.as_str()),
            ("t", "{\"x\":1}", "client-a")
        );
    }

    #[test]
    fn full_queue_trips_overflow_without_blocking() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (slow, _rx_slow) = mailbox(&hub, 1);
        let (fast, mut rx_fast) = mailbox(&hub, 16);
        hub.subscribe("t", &slow);
        hub.subscribe("t", &fast);
        for _ in 0..3 {
            hub.publish(None, "server", "t".into(), data("1"), Instant::now());
            assert!(rx_fast.try_recv().is_ok());
        }
        assert!(slow.overflow.is_cancelled());
        assert!(!fast.overflow.is_cancelled());
    }

    #[test]
    fn topics_disappear_with_their_last_subscriber() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (a, _rx) = mailbox(&hub, 1);
        hub.subscribe("t", &a);
        assert_eq!(hub.topic_count(), 1);
        assert!(hub.unsubscribe("t", a.id()));
        assert!(!hub.unsubscribe("t", a.id()));
        assert_eq!(hub.topic_count(), 0);
        let d = hub.publish(None, "server", "t".into(), data("1"), Instant::now());
        assert_eq!(d.queued, 0);
    }
}
