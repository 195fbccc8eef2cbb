//! The hub: which connections subscribe to which topic, and fan-out.
//!
//! Architecture invariant: the hub knows nothing about sockets, JSON or storage. It holds one
//! [`Mailbox`] per (topic, connection) and pushes already-encoded frames into them: a publish
//! is encoded once (by the operations layer, with the protocol's constructors) and every
//! subscriber gets a clone of the same reference-counted buffer.
//!
//! A publisher never waits: frames are queued with `try_send`. A mailbox whose queue is full
//! belongs to a slow consumer: the hub trips its overflow signal and moves on; the session
//! closes that connection (close code 4002) and the client recovers on reconnect.
//!
//! Locks are `std` locks, never held across an `.await`. Lock order: the topic map first,
//! then a topic's subscriber list.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use std::future::poll_fn;
use std::task::Poll;

use futures_util::task::AtomicWaker;

use crate::metrics::Metrics;
use crate::wire::Frame;

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
    Frame(Frame),
    /// Time for a `heartbeat` frame and a WebSocket ping.
    Heartbeat,
    /// `message` frames of a durable topic with consecutive offsets (what one commit wrote
    /// to it), shared by every subscriber: one queue item per subscriber per commit, not one
    /// per message. Frames this connection published itself only advance its cursor (no echo).
    Durable(Arc<DurableRun>),
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
        /// The client asked to resume from a position (`since`): replay its own messages too.
        /// (Otherwise catch-up skips them: it has them already, from its own publishes.)
        own: bool,
    },
    /// Forget the cursor for `topic` (unsubscribed).
    Untrack {
        /// The topic.
        topic: Arc<str>,
    },
    /// Replies are waiting beside the queue (see [`Mailbox::offer_reply`]): write them.
    Wake,
}

/// Committed `message` frames of one durable topic with consecutive offsets, in order.
#[derive(Debug)]
pub struct DurableRun {
    /// The topic.
    pub topic: Arc<str>,
    /// Offset of `frames[0]`; `frames[i]` has offset `first + i`.
    pub first: u64,
    /// Each encoded frame, and the connection that published it (which gets no echo).
    pub frames: Vec<(Frame, Option<ConnId>)>,
}

impl DurableRun {
    /// Offset of the last frame (`first - 1` if there is none).
    pub fn last(&self) -> u64 {
        (self.first + self.frames.len() as u64).saturating_sub(1)
    }
}

/// Replies that found the queue full and wait beside it for the connection's writer, which
/// writes them after every batch. Bounded: a connection with more than `cap` unwritten
/// replies is a slow consumer.
#[derive(Debug)]
pub struct Pending {
    replies: Mutex<VecDeque<Frame>>,
    /// Whether `replies` may be non-empty: the writer checks this without taking the lock.
    waiting: AtomicBool,
    cap: usize,
}

impl Pending {
    /// Take every waiting reply, oldest first (nothing, without locking, when none wait).
    pub fn take(&self) -> VecDeque<Frame> {
        if !self.waiting.load(Ordering::Acquire) {
            return VecDeque::new();
        }
        let mut replies = self.replies.lock().unwrap_or_else(PoisonError::into_inner);
        self.waiting.store(false, Ordering::Release);
        std::mem::take(&mut *replies)
    }
}

/// The fewest replies that may wait beside a full queue, whatever `queue_capacity` is.
const MIN_PENDING: usize = 256;

/// One connection's outbound queue and signals, shared by its [`Mailbox`]es (the hub's, the
/// store's reply callbacks') and the connection's task, which drains it.
///
/// The queue is a `VecDeque` behind a lock, allocated on the first item and released when a
/// burst has drained: an idle connection holds none of it. (tokio's channel allocates a block
/// of 32 slots for every connection up front.)
#[derive(Debug)]
struct Inner {
    queue: Mutex<Queue>,
    /// Most items queued at once.
    capacity: usize,
    /// The connection task, woken when an item or a waiting reply arrives.
    waker: AtomicWaker,
    /// Why the connection must end, if it must ([`Stop`] as a number; 0: it need not). Set
    /// by an overflow or by the server's shutdown, which wake the connection's task. A flag
    /// rather than a cancellation token or a waiter: nothing per connection but this byte.
    stop: AtomicU8,
    /// Set when a durable frame could not be queued: the connection catches up from the store.
    lagging: AtomicBool,
    /// Replies from the store's writer that found the queue full.
    pending: Pending,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// The connection ended: items are dropped, not queued.
    closed: bool,
}

/// Why a connection must end, as its mailbox says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its queue overflowed: it is a slow consumer (close code 4002).
    Overflow,
    /// The server is shutting down (close code 1001).
    Shutdown,
}

/// Why an item was not queued.
enum Refused {
    Full(Outbound),
    Closed,
}

/// The sending side of one connection's bounded outbound queue (and, for the connection's
/// own task, the receiving side).
#[derive(Debug, Clone)]
pub struct Mailbox {
    id: ConnId,
    inner: Arc<Inner>,
}

impl Mailbox {
    /// A mailbox for connection `id` whose queue holds at most `capacity` items.
    pub fn new(id: ConnId, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Mailbox {
            id,
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue::default()),
                capacity,
                waker: AtomicWaker::new(),
                stop: AtomicU8::new(0),
                lagging: AtomicBool::new(false),
                pending: Pending {
                    replies: Mutex::new(VecDeque::new()),
                    waiting: AtomicBool::new(false),
                    cap: capacity.max(MIN_PENDING),
                },
            }),
        }
    }

    fn push(&self, item: Outbound) -> Result<(), Refused> {
        let mut queue = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queue.closed {
            return Err(Refused::Closed);
        }
        if queue.items.len() >= self.inner.capacity {
            return Err(Refused::Full(item));
        }
        queue.items.push_back(item);
        drop(queue);
        self.inner.waker.wake();
        Ok(())
    }

    /// The next queued item, if any (the connection's task only).
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut queue = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let item = queue.items.pop_front();
        if queue.items.is_empty() && queue.items.capacity() > 0 {
            // Give the memory back: most connections now go quiet.
            queue.items = VecDeque::new();
        }
        item
    }

    /// Wait for the next queued item (the connection's task only). Also wakes, with
    /// [`Outbound::Wake`], when replies wait beside the queue.
    ///
    /// # Errors
    /// [`Stop`] once the connection must end: its queue overflowed, or the server is
    /// shutting down.
    pub async fn recv(&self) -> Result<Outbound, Stop> {
        poll_fn(|cx| {
            if let Some(stop) = self.stopped() {
                return Poll::Ready(Err(stop));
            }
            if let Some(item) = self.try_recv() {
                return Poll::Ready(Ok(item));
            }
            self.inner.waker.register(cx.waker());
            // An item (or a stop) may have arrived between the check and the registration.
            if let Some(stop) = self.stopped() {
                return Poll::Ready(Err(stop));
            }
            match self.try_recv() {
                Some(item) => Poll::Ready(Ok(item)),
                None if self.inner.pending.waiting.load(Ordering::Acquire) => {
                    Poll::Ready(Ok(Outbound::Wake))
                }
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Whether the queue has overflowed: the connection is a slow consumer.
    pub fn overflowed(&self) -> bool {
        self.stopped() == Some(Stop::Overflow)
    }

    /// Why the connection must end, if it must.
    pub fn stopped(&self) -> Option<Stop> {
        match self.inner.stop.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Stop::Overflow),
            _ => Some(Stop::Shutdown),
        }
    }

    /// Mark the queue as overflowed and wake the connection to close it.
    fn trip(&self) {
        self.stop(Stop::Overflow);
    }

    /// Tell the connection to end (the first reason given wins) and wake it.
    pub fn stop(&self, why: Stop) {
        let code = match why {
            Stop::Overflow => 1,
            Stop::Shutdown => 2,
        };
        let _ = self
            .inner
            .stop
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.inner.waker.wake();
    }

    /// The connection ended: drop what is queued and refuse what comes.
    pub fn close(&self) {
        let mut queue = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        queue.closed = true;
        queue.items = VecDeque::new();
    }

    /// The replies waiting beside the queue, for the connection's writer.
    pub fn pending(&self) -> &Pending {
        &self.inner.pending
    }

    /// Queue a reply from a thread that cannot wait (the store's writer: acks, conflicts,
    /// errors). Like every reply it must not be lost, and a subscriber catching up with a
    /// full queue is not slow for that: a reply that finds the queue full waits beside it
    /// (in order with the replies before it) and the writer writes it after its current
    /// batch. Only a connection with more unwritten replies than the bound (the queue
    /// capacity, at least 256) is closed as a slow consumer.
    pub fn offer_reply(&self, frame: Frame) {
        let pending = &self.inner.pending;
        let mut replies = pending
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if replies.is_empty() {
            match self.push(Outbound::Frame(frame)) {
                Ok(()) | Err(Refused::Closed) => return,
                Err(Refused::Full(Outbound::Frame(frame))) => replies.push_back(frame),
                Err(Refused::Full(_)) => return,
            }
        } else if replies.len() >= pending.cap {
            drop(replies);
            self.trip();
            return;
        } else {
            replies.push_back(frame);
        }
        pending.waiting.store(true, Ordering::Release);
        drop(replies);
        // Wake the connection if it is idle; if the queue is full it is busy and will see the
        // pending replies after its batch.
        self.inner.waker.wake();
    }

    /// Queue an item if there is room right now; a full queue gives it back. A closed queue
    /// drops it: the connection is ending anyway.
    pub fn try_queue(&self, item: Outbound) -> Result<(), Outbound> {
        match self.push(item) {
            Ok(()) | Err(Refused::Closed) => Ok(()),
            Err(Refused::Full(item)) => Err(item),
        }
    }

    /// Whether the connection must catch up from the store (and clear the flag).
    pub fn take_lagging(&self) -> bool {
        self.inner.lagging.swap(false, Ordering::AcqRel)
    }

    /// Queue a frame of a durable topic without waiting. A full queue does not close the
    /// connection: the frame can be read back from the store, so the mailbox is marked as
    /// lagging and the writer catches up once it drains.
    pub fn offer_durable(&self, item: Outbound) -> bool {
        match self.push(item) {
            Ok(()) => true,
            Err(Refused::Full(_)) => {
                self.inner.lagging.store(true, Ordering::Release);
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// The connection this mailbox delivers to.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queue a frame without waiting. Returns false (and trips the overflow signal when the
    /// queue is full) if the frame was not queued.
    pub fn offer(&self, item: Outbound) -> bool {
        match self.push(item) {
            Ok(()) => true,
            Err(Refused::Full(_)) => {
                self.trip();
                false
            }
            Err(Refused::Closed) => false,
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
    /// Topics that lost their last subscriber since the store last asked (it frees the state
    /// of those that hold nothing). A set, so it never holds more than the topics that exist.
    released: Mutex<HashSet<Arc<str>>>,
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
            released: Mutex::default(),
            next_conn: AtomicU64::new(1),
            metrics,
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A topic's subscriber list, taken out of the map so the map lock is held only briefly.
    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(Arc::clone)
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
        if subs.is_empty()
            && let Some((name, _)) = topics.remove_entry(topic)
        {
            self.released
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name);
        }
        self.metrics.subscriptions.dec();
        true
    }

    /// The topics that lost their last subscriber since the last call.
    pub fn take_released(&self) -> HashSet<Arc<str>> {
        std::mem::take(&mut *self.released.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Run `free` if `topic` has no subscriber, holding the topic map's lock so that nobody
    /// subscribes meanwhile. Returns whether it ran. The store frees a topic's state this way:
    /// a subscriber registers before it reads the topic's head, so it never holds a head that
    /// is freed under it.
    pub fn free_if_unsubscribed(&self, topic: &str, free: impl FnOnce()) -> bool {
        let topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if topics.contains_key(topic) {
            return false;
        }
        free();
        true
    }

    /// Queue one already-encoded frame for every subscriber of `topic` except the publishing
    /// connection (`from`). `frame` is called only if someone subscribes. Never waits.
    pub fn publish(
        &self,
        topic: &str,
        from: Option<ConnId>,
        frame: impl FnOnce() -> Frame,
        started: Instant,
    ) -> Delivery {
        let entry = self.topic(topic);
        self.metrics.publishes.inc();
        let Some(entry) = entry else {
            return Delivery {
                queued: 0,
                overflowed: 0,
            };
        };
        let frame = frame();
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
                } else if mailbox.overflowed() {
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
    /// Restart every subscriber's cursor of `topic` at `from` (its history was replaced by a
    /// new epoch). A subscriber whose queue is full is closed as a slow consumer instead: it
    /// resubscribes and learns the same from `recovered: false`.
    pub fn retrack(&self, topic: &Arc<str>, from: u64) {
        let Some(entry) = self.topic(topic) else {
            return;
        };
        let subs = entry
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for mailbox in subs.iter() {
            mailbox.offer(Outbound::Track {
                topic: Arc::clone(topic),
                from,
            });
        }
    }

    /// Queue a run of already-committed, already-encoded durable `message` frames for every
    /// subscriber of its topic (one shared item each; a publisher's own frames are skipped by
    /// its connection's writer). Called by the store's writer, in offset order. Never waits.
    /// Returns the number of frames queued for delivery.
    pub fn publish_durable(&self, run: Arc<DurableRun>, started: Instant) -> usize {
        let entry = self.topic(&run.topic);
        self.metrics.publishes.inc_by(run.frames.len() as u64);
        let Some(entry) = entry else { return 0 };
        // How many frames of the run each publishing connection sent (usually one publisher).
        let mut own: Vec<(ConnId, usize)> = Vec::new();
        for id in run.frames.iter().filter_map(|(_, p)| *p) {
            match own.iter_mut().find(|(p, _)| *p == id) {
                Some((_, n)) => *n += 1,
                None => own.push((id, 1)),
            }
        }
        let mut queued = 0;
        {
            let subs = entry
                .subscribers
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for mailbox in subs.iter() {
                let skipped = own
                    .iter()
                    .find(|(p, _)| *p == mailbox.id)
                    .map_or(0, |(_, n)| *n);
                mailbox.offer_durable(Outbound::Durable(Arc::clone(&run)));
                queued += run.frames.len() - skipped;
            }
        }
        self.metrics.messages_out.inc_by(queued as u64);
        self.metrics
            .fanout_seconds
            .observe(started.elapsed().as_secs_f64());
        queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection's side of a mailbox, as a channel receiver reads.
    struct Rx(Mailbox);

    impl Rx {
        fn try_recv(&mut self) -> Result<Outbound, ()> {
            self.0.try_recv().ok_or(())
        }
    }

    fn mailbox(hub: &Hub, cap: usize) -> (Mailbox, Rx) {
        let m = Mailbox::new(hub.next_conn_id(), cap);
        (m.clone(), Rx(m))
    }

    /// A `message` frame as the operations layer encodes it.
    fn frame(from: &str, data: &str) -> Frame {
        let data: tidings_protocol::Json = serde_json::from_str(data).expect("json");
        let msg =
            tidings_protocol::server::Message::live("t".into(), data, from.into(), "now".into());
        Frame::encode(&tidings_protocol::ServerMessage::Message(msg))
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
            "t",
            Some(a.id()),
            || frame("client-a", "{\"x\":1}"),
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
        let msg = tidings_protocol::ServerMessage::decode(frame.json()).expect("decode");
        let tidings_protocol::ServerMessage::Message(m) = msg else {
            panic!("not a message")
        };
        assert_eq!(
            (m.topic.as_str(), m.data.get(), m.from.as_str()),
            ("t", "{\"x\":1}", "client-a")
        );
    }

    #[test]
    fn a_durable_run_is_one_shared_item_per_subscriber() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (a, mut rx_a) = mailbox(&hub, 8);
        let (b, mut rx_b) = mailbox(&hub, 8);
        hub.subscribe("t", &a);
        hub.subscribe("t", &b);
        let frame = |n: u8| Frame::text(format!("{{\"n\":{n}}}"));
        let run = Arc::new(DurableRun {
            topic: Arc::from("t"),
            first: 7,
            frames: vec![
                (frame(7), Some(a.id())),
                (frame(8), None),
                (frame(9), Some(a.id())),
            ],
        });
        assert_eq!(run.last(), 9);
        // a published two of the three frames itself: 1 for a, 3 for b.
        assert_eq!(hub.publish_durable(Arc::clone(&run), Instant::now()), 4);
        for rx in [&mut rx_a, &mut rx_b] {
            let Ok(Outbound::Durable(got)) = rx.try_recv() else {
                panic!("no run queued")
            };
            assert!(Arc::ptr_eq(&got, &run), "shared, not copied");
            assert!(rx.try_recv().is_err(), "one item per subscriber");
        }
        // Nobody subscribed: nothing queued.
        let other = Arc::new(DurableRun {
            topic: Arc::from("u"),
            first: 1,
            frames: vec![(frame(1), None)],
        });
        assert_eq!(hub.publish_durable(other, Instant::now()), 0);
    }

    #[test]
    fn full_queue_trips_overflow_without_blocking() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (slow, _rx_slow) = mailbox(&hub, 1);
        let (fast, mut rx_fast) = mailbox(&hub, 16);
        hub.subscribe("t", &slow);
        hub.subscribe("t", &fast);
        for _ in 0..3 {
            hub.publish("t", None, || frame("server", "1"), Instant::now());
            assert!(rx_fast.try_recv().is_ok());
        }
        assert!(slow.overflowed());
        assert!(!fast.overflowed());
    }

    #[tokio::test]
    async fn a_stop_ends_receiving_before_what_is_queued_and_the_first_reason_wins() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (m, _rx) = mailbox(&hub, 8);
        assert!(m.offer(Outbound::Frame(Frame::text("queued".into()))));
        assert!(m.stopped().is_none());
        m.stop(Stop::Shutdown);
        m.stop(Stop::Overflow);
        assert_eq!(m.stopped(), Some(Stop::Shutdown));
        assert!(!m.overflowed());
        assert_eq!(m.recv().await.map(|_| ()), Err(Stop::Shutdown));
        // A stop wakes a connection waiting on an empty queue.
        let (m, _rx) = mailbox(&hub, 8);
        let waiting = tokio::spawn({
            let m = m.clone();
            async move { m.recv().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        m.stop(Stop::Overflow);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("woken in time")
            .expect("task");
        assert_eq!(got, Err(Stop::Overflow));
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
        let d = hub.publish("t", None, || frame("server", "1"), Instant::now());
        assert_eq!(d.queued, 0);
    }

    #[test]
    fn replies_wait_beside_a_full_queue_in_order_and_only_too_many_overflow() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (m, mut rx) = mailbox(&hub, 2);
        m.offer_reply("r0".into());
        m.offer_reply("r1".into());
        // The queue is full: replies wait beside it, in order, and nothing overflows.
        for i in 2..(MIN_PENDING + 2) {
            m.offer_reply(format!("r{i}").into());
        }
        assert!(!m.overflowed());
        let waiting: Vec<String> = m
            .pending()
            .take()
            .iter()
            .map(|f| f.json().to_owned())
            .collect();
        assert_eq!(waiting.len(), MIN_PENDING);
        assert_eq!(waiting.first().map(String::as_str), Some("r2"));
        assert_eq!(
            waiting.last().map(String::as_str),
            Some(&*format!("r{}", MIN_PENDING + 1))
        );
        assert!(m.pending().take().is_empty(), "taken once");
        // With nothing waiting any more, a reply goes straight into the queue.
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(f)) if f.json() == "r0"));
        m.offer_reply("late".into());
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(f)) if f.json() == "r1"));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(f)) if f.json() == "late"));
        // Past the bound the connection is a slow consumer.
        m.offer_reply("a".into());
        m.offer_reply("b".into());
        for _ in 0..=MIN_PENDING {
            m.offer_reply("more".into());
        }
        assert!(m.overflowed());
    }
}
