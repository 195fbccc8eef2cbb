//! The Redis backend (`--redis-url`): durable topics and event streams in Redis, shared by
//! every node that points at the same servers, so several `tidings` nodes behave as one.
//!
//! * `script.rs` — the Lua scripts: offsets, epochs, idempotency, expected versions and
//!   retention are decided atomically inside Redis, and the same script publishes the
//!   committed rows on the topic's channel (so channel order is offset order).
//! * `writer.rs` — the writer task: drains the store's command channel and sends whatever is
//!   waiting as one pipeline per shard (group commit over the network: one round trip for
//!   many publishes).
//! * `feed.rs` — the fan-in: one pub/sub connection per shard, one channel subscription per
//!   topic that has local subscribers (the hub counts them), gaps read back from the stream,
//!   and a reconnect loop that catches up what was published while it was away.
//!
//! Key layout, per topic `T` under prefix `P` (the hash tag `{T}` keeps a topic's keys in one
//! Redis Cluster slot): `P:{T}:h` head hash (`e` epoch, `l` latest, `f` first), `P:{T}:s`
//! stream (entry id `<offset>-0`), `P:{T}:i` idempotency keys, `P:{T}:t` their times,
//! `P:{T}:n` snapshot (`v`, `s`); channel `P:{T}:m`. Several servers shard topics by a jump
//! consistent hash of the topic name (Lamping & Veach, 2014), so every node maps a topic to
//! the same server as long as the URLs are listed in the same order.
//!
//! A Redis that lost its data has no head for a topic: the next write starts a new epoch, so
//! a client resuming with an old position is told `recovered: false`, never a silent gap.

mod feed;
mod script;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ::redis::Value;
use ::redis::aio::ConnectionManager;
use sha2::Digest;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Command, Head, Health, Listeners, Page, ReadLimit, Row, StoreConfig, StoreError};
use crate::metrics::Metrics;

pub(crate) use feed::Feed;

/// How long one Redis request may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often each shard is pinged for `/health`.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where the Redis servers are.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One URL per shard, in the same order on every node.
    pub urls: Vec<String>,
    /// Prefix of every key and channel.
    pub prefix: String,
}

/// One Redis server and the connections this node keeps to it.
struct Shard {
    /// Index in the URL list (logs).
    index: usize,
    client: ::redis::Client,
    /// The command connection, once the first connect succeeded (it then reconnects by itself).
    conn: OnceCell<ConnectionManager>,
    /// The last probe or write failed.
    failing: AtomicBool,
    /// The feed's pub/sub connection is up (live delivery works).
    feed_up: AtomicBool,
}

impl Shard {
    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.conn
            .get()
            .cloned()
            .ok_or_else(|| StoreError::Backend(format!("redis shard {} not connected", self.index)))
    }
}

/// The node's view of the shared log: the shards, the key layout, and health.
pub(crate) struct RedisLog {
    shards: Vec<Shard>,
    prefix: String,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Topics with a channel subscription on this node.
    watched: AtomicUsize,
    /// Cancelled when the store is dropped: the background tasks end.
    pub(super) stop: CancellationToken,
}

/// The keys and channel of one topic.
pub(super) struct Keys {
    pub head: String,
    pub log: String,
    pub ids: String,
    pub id_times: String,
    pub snapshot: String,
    pub presence: String,
    pub presence_expiry: String,
    pub presence_users: String,
    pub channel: String,
}

impl RedisLog {
    /// The keys of `topic`.
    pub(super) fn keys(&self, topic: &str) -> Keys {
        let base = format!("{}:{{{topic}}}:", self.prefix);
        Keys {
            head: format!("{base}h"),
            log: format!("{base}s"),
            ids: format!("{base}i"),
            id_times: format!("{base}t"),
            snapshot: format!("{base}n"),
            presence: format!("{base}p"),
            presence_expiry: format!("{base}e"),
            presence_users: format!("{base}u"),
            channel: format!("{base}m"),
        }
    }

    /// The topic a channel name belongs to.
    pub(super) fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:m")
    }

    /// Which shard holds `topic`.
    pub(super) fn shard_of(&self, topic: &str) -> usize {
        shard_index(topic, self.shards.len())
    }

    /// Record a failed request (`/health` turns degraded until a probe succeeds).
    pub(super) fn failed(&self, shard: usize, error: &StoreError) {
        if let Some(s) = self.shards.get(shard)
            && !s.failing.swap(true, Ordering::AcqRel)
        {
            tracing::warn!("redis shard {shard}: {error}");
        }
        self.health.failed(error);
    }

    /// Report the store healthy again if every shard answers and every feed is connected.
    pub(super) fn maybe_recovered(&self) {
        let all_up = self
            .shards
            .iter()
            .all(|s| !s.failing.load(Ordering::Acquire) && s.feed_up.load(Ordering::Acquire));
        if all_up && self.health.recovered() {
            tracing::info!("redis store healthy");
        }
    }

    /// Whether shard `index`'s feed is connected.
    pub(super) fn feed_up(&self, index: usize, up: bool) {
        if let Some(shard) = self.shards.get(index) {
            shard.feed_up.store(up, Ordering::Release);
        }
        if up {
            self.maybe_recovered();
        }
    }

    /// Time one round trip for the latency metric.
    pub(super) fn timed(&self, started: Instant) {
        self.metrics
            .redis_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// The head of `topic`, read from its shard.
    pub(crate) async fn head(&self, topic: &str) -> Result<Option<Head>, StoreError> {
        let index = self.shard_of(topic);
        let mut conn = self.shards[index].conn()?;
        let started = Instant::now();
        let reply: Result<(Option<String>, Option<u64>, Option<u64>), _> = ::redis::cmd("HMGET")
            .arg(self.keys(topic).head)
            .arg(&["e", "l", "f"])
            .query_async(&mut conn)
            .await;
        self.timed(started);
        match reply {
            Ok((Some(epoch), latest, first)) => Ok(Some(Head {
                epoch,
                latest: latest.unwrap_or(0),
                first: first.unwrap_or(1),
            })),
            Ok(_) => Ok(None),
            Err(e) => {
                let e = backend(e);
                self.failed(index, &e);
                Err(e)
            }
        }
    }

    /// One page of `topic` after `after`.
    pub(crate) async fn read(
        &self,
        topic: &str,
        after: u64,
        limit: ReadLimit,
    ) -> Result<Page, StoreError> {
        let index = self.shard_of(topic);
        let mut conn = self.shards[index].conn()?;
        let topic: Arc<str> = Arc::from(topic);
        let start = format!("{}-0", after.saturating_add(1));
        let count = limit.rows.saturating_add(1);
        let started = Instant::now();
        let reply: Result<Value, _> = ::redis::cmd("XRANGE")
            .arg(self.keys(&topic).log)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await;
        self.timed(started);
        let entries = match reply {
            Ok(Value::Array(entries)) => entries,
            Ok(_) => Vec::new(),
            Err(e) => {
                let e = backend(e);
                self.failed(index, &e);
                return Err(e);
            }
        };
        let mut page = Page::default();
        let mut bytes = 0usize;
        for entry in entries {
            let row = entry_row(&topic, entry)?;
            let size = row.reply_bytes();
            if !limit.fits(page.rows.len(), bytes, size) {
                page.more = true;
                break;
            }
            bytes = bytes.saturating_add(size);
            page.rows.push(row);
        }
        Ok(page)
    }

    /// The latest snapshot of `stream`.
    pub(crate) async fn snapshot(
        &self,
        stream: &str,
    ) -> Result<Option<(u64, super::Json)>, StoreError> {
        let index = self.shard_of(stream);
        let mut conn = self.shards[index].conn()?;
        let reply: Result<(Option<u64>, Option<String>), _> = ::redis::cmd("HMGET")
            .arg(self.keys(stream).snapshot)
            .arg(&["v", "s"])
            .query_async(&mut conn)
            .await;
        match reply {
            Ok((Some(version), Some(state))) => {
                let state = serde_json::value::RawValue::from_string(state)
                    .map_err(|e| StoreError::Backend(format!("stored snapshot: {e}")))?;
                Ok(Some((version, state.into())))
            }
            Ok(_) => Ok(None),
            Err(e) => {
                let e = backend(e);
                self.failed(index, &e);
                Err(e)
            }
        }
    }

    /// Reap `topic`'s members whose node stopped refreshing them (announcing their `leave`),
    /// then read its presence: `(clients, users, at most max members as JSON, more)`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis fails.
    pub(crate) async fn presence(
        &self,
        topic: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<(u64, u64, Vec<String>, bool), StoreError> {
        static READ: std::sync::LazyLock<::redis::Script> =
            std::sync::LazyLock::new(|| ::redis::Script::new(script::PRESENCE_READ));
        let index = self.shard_of(topic);
        let mut conn = self.shards[index].conn()?;
        let keys = self.keys(topic);
        let topic_json =
            serde_json::to_string(topic).map_err(|e| StoreError::Backend(e.to_string()))?;
        let started = Instant::now();
        let reply: Result<Vec<Value>, _> = READ
            .key(keys.presence)
            .key(keys.presence_expiry)
            .key(keys.presence_users)
            .arg(now_ms)
            .arg(keys.channel)
            .arg(topic_json)
            .arg(max)
            .invoke_async(&mut conn)
            .await;
        self.timed(started);
        let values = match reply {
            Ok(values) => values,
            Err(e) => {
                let e = backend(e);
                self.failed(index, &e);
                return Err(e);
            }
        };
        let mut values = values.into_iter();
        let count = |v: Option<Value>| match v {
            Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
            _ => 0,
        };
        let clients = count(values.next());
        let users = count(values.next());
        let mut members: Vec<String> = values.filter_map(text).collect();
        let more = members.len() > max;
        members.truncate(max);
        Ok((clients, users, members, more))
    }

    /// Topics with a channel subscription on this node.
    pub(crate) fn watched(&self) -> usize {
        self.watched.load(Ordering::Relaxed)
    }
}

/// A stream entry `[id, [field, value, ...]]` as a row.
fn entry_row(topic: &Arc<str>, entry: Value) -> Result<Row, StoreError> {
    let bad = || StoreError::Backend(format!("malformed stream entry of {topic}"));
    let Value::Array(mut parts) = entry else {
        return Err(bad());
    };
    let (Some(Value::Array(fields)), Some(id)) = (parts.pop(), parts.pop()) else {
        return Err(bad());
    };
    let id = text(id).ok_or_else(bad)?;
    let offset = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let (mut data, mut from, mut timestamp, mut event_type) = (None, None, None, None);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let (Some(name), Some(value)) = (text(name), text(value)) else {
            return Err(bad());
        };
        match name.as_str() {
            "d" => data = Some(value),
            "f" => from = Some(value),
            "t" => timestamp = Some(value),
            "e" => event_type = Some(value),
            _ => {}
        }
    }
    let data = serde_json::value::RawValue::from_string(data.ok_or_else(bad)?)
        .map_err(|_| bad())?
        .into();
    Ok(Row {
        topic: Arc::clone(topic),
        offset,
        data,
        from: from.unwrap_or_default(),
        timestamp: timestamp.unwrap_or_default(),
        key: None,
        event_type,
    })
}

/// A bulk or simple string reply as text.
pub(super) fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A Redis failure as a store error (the operation's outcome is unknown or it did not run).
pub(super) fn backend(e: ::redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// The shard of `topic` among `shards`: a jump consistent hash (Lamping & Veach, "A Fast,
/// Minimal Memory, Consistent Hash Algorithm", 2014) of the first 8 bytes of the name's
/// SHA-256, so adding a shard at the end moves only 1/n of the topics.
pub fn shard_index(topic: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let digest = sha2::Sha256::digest(topic.as_bytes());
    let mut key = digest
        .iter()
        .take(8)
        .fold(0u64, |k, &b| (k << 8) | u64::from(b));
    let (mut b, mut j) = (-1i64, 0i64);
    let n = i64::try_from(shards).unwrap_or(i64::MAX);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (b + 1) * 2^31 / ((key >> 33) + 1), in floating point as in the paper.
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    usize::try_from(b).unwrap_or(0)
}

/// Connect to every shard (in the background: a node starts even while Redis is down, and
/// reports itself degraded until it is up), and start the writer, the feeds and the probes.
///
/// # Errors
/// [`StoreError::Backend`] for a URL the client refuses, or when called outside a tokio
/// runtime.
pub(super) fn open(
    config: &StoreConfig,
    redis: &RedisConfig,
    rx: mpsc::Receiver<Command>,
    listeners: Arc<dyn Listeners>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<(Arc<RedisLog>, Vec<Feed>), StoreError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| StoreError::Backend("the Redis store needs a tokio runtime".into()))?;
    // rustls needs a process-wide crypto provider for rediss:// URLs; another part of the
    // program may have installed one already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut shards = Vec::with_capacity(redis.urls.len());
    for (index, url) in redis.urls.iter().enumerate() {
        let client = ::redis::Client::open(url.as_str()).map_err(|e| {
            StoreError::Backend(format!("redis URL {}: {e}", crate::config::redact_url(url)))
        })?;
        shards.push(Shard {
            index,
            client,
            conn: OnceCell::new(),
            failing: AtomicBool::new(true),
            feed_up: AtomicBool::new(false),
        });
    }
    health.failed(&StoreError::Backend("connecting to redis".into()));
    let log = Arc::new(RedisLog {
        shards,
        prefix: redis.prefix.clone(),
        health,
        metrics,
        watched: AtomicUsize::new(0),
        stop: CancellationToken::new(),
    });
    let node = feed::node_id();
    let mut feeds = Vec::with_capacity(log.shards.len());
    for index in 0..log.shards.len() {
        let (feed, task) = feed::start(
            Arc::clone(&log),
            index,
            Arc::clone(&node),
            Arc::clone(&listeners),
        );
        runtime.spawn(task);
        feeds.push(feed);
        runtime.spawn(connect(Arc::clone(&log), index));
    }
    runtime.spawn(feed::release(Arc::clone(&log), feeds.clone(), listeners));
    runtime.spawn(writer::Writer::new(Arc::clone(&log), node, config).run(rx));
    Ok((log, feeds))
}

/// Open shard `index`'s command connection, retrying with backoff until it works, then
/// probe it for `/health` as long as the store lives.
async fn connect(log: Arc<RedisLog>, index: usize) {
    let shard = &log.shards[index];
    let config = ::redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_max_delay(MAX_BACKOFF)
        .set_number_of_retries(2);
    let mut backoff = Duration::from_millis(100);
    let conn = loop {
        if log.stop.is_cancelled() {
            return;
        }
        match shard
            .client
            .get_connection_manager_with_config(config.clone())
            .await
        {
            Ok(conn) => break conn,
            Err(e) => {
                log.failed(index, &backend(e));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let _ = shard.conn.set(conn.clone());
    tracing::info!("redis shard {index} connected");
    probe(log, index, conn).await;
}

/// Ping shard `index` every [`PROBE_EVERY`]; the store is healthy again when every shard
/// answers.
async fn probe(log: Arc<RedisLog>, index: usize, mut conn: ConnectionManager) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if log.stop.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let pong: Result<String, _> = ::redis::cmd("PING").query_async(&mut conn).await;
        log.timed(started);
        match pong {
            Ok(_) => {
                let shard = &log.shards[index];
                if shard.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("redis shard {index} answers again");
                }
                log.maybe_recovered();
            }
            Err(e) => log.failed(index, &backend(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_index("any", 1), 0);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            let topic = format!("topic.{i}");
            let s = shard_index(&topic, 4);
            assert_eq!(s, shard_index(&topic, 4), "same topic, same shard");
            counts[s] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        // Adding a shard moves only the topics that go to the new one.
        for i in 0..1000 {
            let topic = format!("t{i}");
            let (before, after) = (shard_index(&topic, 4), shard_index(&topic, 5));
            assert!(
                after == before || after == 4,
                "{topic}: {before} -> {after}"
            );
        }
    }
}
