//! The fan-in from Redis: what other nodes (and this one) committed reaches this node's
//! subscribers through Redis pub/sub.
//!
//! One task per shard owns one pub/sub connection and subscribes **one channel per topic**
//! that has local subscribers — never one per client. The hub counts subscribers: the first
//! local subscriber of a topic asks [`Feed::watch`] (answered once the channel subscription is
//! confirmed, *before* the subscriber reads the head, so nothing committed after that read is
//! missed), and [`release`] unsubscribes topics whose last local subscriber left.
//!
//! Per topic the feed keeps the epoch and the last offset it delivered. Channel order is
//! offset order (the write script publishes inside the commit), so a notice that starts past
//! `last + 1` means notices were lost (a reconnect): the gap is read from the stream and
//! delivered first. After a reconnect every watched topic is caught up the same way. A notice
//! in another epoch means Redis lost the topic's history: subscribers' cursors are rebased to
//! the new epoch (clients see the epoch change and report `recovered: false`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use tidings_protocol::Json;
use tokio::sync::{mpsc, oneshot};

use super::{CONNECT_TIMEOUT, MAX_BACKOFF, RedisLog};
use crate::store::{Commit, Head, Listeners, ReadLimit, Row, StoreError};

/// Rows read per page when a gap is filled from the stream.
const GAP_PAGE: usize = 1024;
/// How often topics that lost their last local subscriber are unsubscribed.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// A handle to one shard's feed task.
#[derive(Clone)]
pub(crate) struct Feed {
    tx: mpsc::UnboundedSender<Request>,
}

enum Request {
    Watch(Arc<str>, oneshot::Sender<Result<(), StoreError>>),
    Unwatch(Arc<str>),
}

impl Feed {
    /// Make sure this node receives what is committed to `topic` from now on.
    ///
    /// # Errors
    /// [`StoreError::Backend`] while the shard's pub/sub connection is down.
    pub(crate) async fn watch(&self, topic: Arc<str>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request::Watch(topic, done))
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }
}

/// A random id for this process, carried in every notice it publishes (its own connections'
/// origins mean nothing elsewhere) and in the epochs it proposes.
pub(super) fn node_id() -> Arc<str> {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        // Without OS randomness, the time still tells nodes apart in practice.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    Arc::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A committed batch as the write script publishes it.
#[derive(Deserialize)]
struct Notice {
    node: String,
    epoch: String,
    timestamp: String,
    rows: Vec<NoticeRow>,
}

#[derive(Deserialize)]
struct NoticeRow {
    offset: u64,
    origin: Option<u64>,
    from: String,
    r#type: Option<String>,
    data: Json,
}

/// What the feed knows of a watched topic.
struct Watched {
    epoch: Option<String>,
    /// The last offset delivered (or the head when the watch began).
    last: u64,
}

/// The feed task of shard `index` and its handle.
pub(super) fn start(
    log: Arc<RedisLog>,
    index: usize,
    node: Arc<str>,
    listeners: Arc<dyn Listeners>,
) -> (Feed, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = FeedTask {
        log,
        index,
        node,
        listeners,
        topics: HashMap::new(),
    }
    .run(rx);
    (Feed { tx }, task)
}

/// Every second, unsubscribe the channels of topics that lost their last local subscriber
/// (checked under the hub's lock, so a subscriber arriving meanwhile re-watches after the
/// unsubscribe, in order).
pub(super) async fn release(log: Arc<RedisLog>, feeds: Vec<Feed>, listeners: Arc<dyn Listeners>) {
    let mut tick = tokio::time::interval(RELEASE_EVERY);
    loop {
        tick.tick().await;
        if log.stop.is_cancelled() {
            return;
        }
        for topic in listeners.released() {
            let feed = &feeds[log.shard_of(&topic)];
            let tx = feed.tx.clone();
            let name = Arc::clone(&topic);
            listeners.free_if_unsubscribed(&topic, &mut || {
                let _ = tx.send(Request::Unwatch(Arc::clone(&name)));
            });
        }
    }
}

struct FeedTask {
    log: Arc<RedisLog>,
    index: usize,
    node: Arc<str>,
    listeners: Arc<dyn Listeners>,
    topics: HashMap<Arc<str>, Watched>,
}

impl FeedTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            let client = &self.log.shards[self.index].client;
            let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await;
            let pubsub = match pubsub {
                Ok(Ok(pubsub)) => pubsub,
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".into(),
                    };
                    tracing::debug!("redis shard {} pub/sub: {why}", self.index);
                    // Answer requests while waiting to retry: nothing can be watched now.
                    let retry = tokio::time::sleep(backoff);
                    tokio::pin!(retry);
                    loop {
                        tokio::select! {
                            () = self.log.stop.cancelled() => return,
                            () = &mut retry => break,
                            request = rx.recv() => match request {
                                None => return,
                                Some(request) => self.refuse(request),
                            },
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            if connected_before {
                self.log.metrics.redis_pubsub_reconnects.inc();
                tracing::info!("redis shard {} pub/sub reconnected", self.index);
            }
            let channels: Vec<String> = self
                .topics
                .keys()
                .map(|t| self.log.keys(t).channel)
                .collect();
            if !channels.is_empty()
                && let Err(e) = sink.subscribe(&channels).await
            {
                tracing::debug!("redis shard {} resubscribe: {e}", self.index);
                continue;
            }
            connected_before = true;
            backoff = Duration::from_millis(100);
            if self.catch_up_all().await.is_err() {
                continue;
            }
            self.log.feed_up(self.index, true);
            loop {
                tokio::select! {
                    () = self.log.stop.cancelled() => return,
                    request = rx.recv() => match request {
                        None => return,
                        Some(Request::Watch(topic, done)) => {
                            if self.topics.contains_key(&topic) {
                                let _ = done.send(Ok(()));
                                continue;
                            }
                            let channel = self.log.keys(&topic).channel;
                            if let Err(e) = sink.subscribe(&channel).await {
                                let _ = done.send(Err(super::backend(e)));
                                break;
                            }
                            // The head after the subscription: everything later arrives on
                            // the channel.
                            match self.log.head(&topic).await {
                                Ok(head) => {
                                    let watched = Watched {
                                        epoch: head.as_ref().map(|h| h.epoch.clone()),
                                        last: head.map_or(0, |h| h.latest),
                                    };
                                    self.topics.insert(topic, watched);
                                    self.log.watched.fetch_add(1, Ordering::Relaxed);
                                    let _ = done.send(Ok(()));
                                }
                                Err(e) => {
                                    let _ = sink.unsubscribe(&channel).await;
                                    let _ = done.send(Err(e));
                                }
                            }
                        }
                        Some(Request::Unwatch(topic)) => {
                            if self.topics.remove(&topic).is_some() {
                                self.log.watched.fetch_sub(1, Ordering::Relaxed);
                                if sink.unsubscribe(self.log.keys(&topic).channel).await.is_err() {
                                    break;
                                }
                            }
                        }
                    },
                    message = stream.next() => match message {
                        None => break,
                        Some(message) => {
                            let channel = message.get_channel_name().to_owned();
                            let payload = message.get_payload_bytes().to_vec();
                            if self.on_notice(&channel, &payload).await.is_err() {
                                break;
                            }
                        }
                    },
                }
            }
            tracing::warn!("redis shard {} pub/sub connection lost", self.index);
            self.log.feed_up(self.index, false);
            self.log.failed(
                self.index,
                &StoreError::Backend("redis pub/sub connection lost".into()),
            );
        }
    }

    fn refuse(&mut self, request: Request) {
        match request {
            Request::Watch(_, done) => {
                let _ = done.send(Err(StoreError::Backend(format!(
                    "redis shard {} unreachable",
                    self.index
                ))));
            }
            Request::Unwatch(topic) => {
                if self.topics.remove(&topic).is_some() {
                    self.log.watched.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Deliver one notice, filling a gap before it from the stream. Fails (and the feed
    /// reconnects) only when a gap cannot be read.
    async fn on_notice(&mut self, channel: &str, payload: &[u8]) -> Result<(), StoreError> {
        let Some((topic, _)) = self
            .log
            .topic_of(channel)
            .and_then(|t| self.topics.get_key_value(t))
        else {
            return Ok(()); // unsubscribed meanwhile
        };
        let topic = Arc::clone(topic);
        if let Some(rest) = payload.strip_prefix(b"~") {
            // An ephemeral frame: `~<node>\n<frame>`; this node delivered its own already.
            let text = std::str::from_utf8(rest).unwrap_or_default();
            if let Some((node, frame)) = text.split_once('\n')
                && node != &*self.node
            {
                self.listeners.ephemeral(&topic, frame);
            }
            return Ok(());
        }
        let notice: Notice = match serde_json::from_slice(payload) {
            Ok(notice) => notice,
            Err(e) => {
                tracing::warn!("malformed notice on {channel}: {e}");
                return Ok(());
            }
        };
        let Some(first) = notice.rows.first().map(|r| r.offset) else {
            return Ok(());
        };
        let head = Head {
            epoch: notice.epoch.clone(),
            latest: notice.rows.last().map_or(first, |r| r.offset),
            first: 1,
        };
        self.rebase_if_new_epoch(&topic, &notice.epoch);
        let last = self.topics.get(&topic).map_or(0, |w| w.last);
        if first > last.saturating_add(1) {
            self.fill(&topic, &head, last, first - 1).await?;
        }
        // Rows at or below `last` reached every current subscriber already (a subscriber's
        // start is a head read after the watch, and heads only grow within an epoch).
        let fresh = notice.rows.iter().filter(|r| r.offset > last);
        let rows: Vec<Row> = fresh
            .clone()
            .map(|r| Row {
                topic: Arc::clone(&topic),
                offset: r.offset,
                data: r.data.clone(),
                from: r.from.clone(),
                timestamp: notice.timestamp.clone(),
                key: None,
                event_type: r.r#type.clone(),
            })
            .collect();
        let origins: Vec<Option<u64>> = if *notice.node == *self.node {
            fresh.map(|r| r.origin).collect()
        } else {
            vec![None; rows.len()]
        };
        self.deliver(&topic, &head, &rows, &origins);
        Ok(())
    }

    /// A notice or head in another epoch than the one watched: the topic's history was
    /// replaced. Subscribers start over at the new epoch's beginning.
    fn rebase_if_new_epoch(&mut self, topic: &Arc<str>, epoch: &str) {
        let Some(watched) = self.topics.get_mut(topic) else {
            return;
        };
        if watched.epoch.as_deref() == Some(epoch) {
            return;
        }
        if watched.epoch.is_some() {
            tracing::warn!(%topic, "new epoch: the topic's history in Redis was lost");
            self.listeners.rebased(topic, 0);
        }
        watched.epoch = Some(epoch.to_owned());
        watched.last = 0;
    }

    /// Read `(after, upto]` of `topic` from the stream and deliver it.
    async fn fill(
        &mut self,
        topic: &Arc<str>,
        head: &Head,
        mut after: u64,
        upto: u64,
    ) -> Result<(), StoreError> {
        let limit = ReadLimit {
            rows: GAP_PAGE,
            bytes: usize::MAX,
        };
        while after < upto {
            let page = self.log.read(topic, after, limit).await?;
            let rows: Vec<Row> = page.rows.into_iter().filter(|r| r.offset <= upto).collect();
            let Some(last) = rows.last().map(|r| r.offset) else {
                break; // trimmed meanwhile: subscribers' writers see the gap themselves
            };
            let origins = vec![None; rows.len()];
            self.deliver(topic, head, &rows, &origins);
            after = last;
        }
        Ok(())
    }

    /// Catch every watched topic up after a (re)connect: what was committed while the feed
    /// was away is read from the streams.
    async fn catch_up_all(&mut self) -> Result<(), StoreError> {
        let topics: Vec<Arc<str>> = self.topics.keys().cloned().collect();
        for topic in topics {
            let Some(head) = self.log.head(&topic).await? else {
                // Redis lost the topic entirely; the next write starts a new epoch.
                continue;
            };
            self.rebase_if_new_epoch(&topic, &head.epoch);
            let last = self.topics.get(&topic).map_or(0, |w| w.last);
            if head.latest > last {
                self.fill(&topic, &head, last, head.latest).await?;
            }
        }
        Ok(())
    }

    fn deliver(&mut self, topic: &Arc<str>, head: &Head, rows: &[Row], origins: &[Option<u64>]) {
        let Some(last) = rows.last().map(|r| r.offset) else {
            return;
        };
        let heads = HashMap::from([(Arc::clone(topic), head.clone())]);
        self.listeners.committed(&Commit {
            rows,
            origins,
            heads: &heads,
            started: Instant::now(),
        });
        if let Some(watched) = self.topics.get_mut(topic) {
            watched.last = watched.last.max(last);
        }
    }
}
