//! Durable topics: offsets, epochs, history, event streams and snapshots.
//!
//! Writes go through one **writer** (`writer.rs`) on its own thread: it takes commands from a
//! bounded channel, batches whatever is waiting into one transaction (group commit), assigns
//! offsets, commits, and only then hands the committed rows to its [`Listeners`] (the fan-out), in
//! offset order. So a subscriber never sees an offset that a crash can take back, and per-topic order
//! is the commit order on every connection.
//!
//! Reads (history, recovery, catch-up, stream reads) go through a [`Reader`] and never block
//! the writer. Every read is bounded twice: by a number of rows and by bytes (the
//! `max_reply_bytes` setting), and says whether more is stored ([`Page::more`]). Two backends
//! implement both halves: SQLite (`sqlite.rs`, the embedded default, WAL mode) and memory
//! (`memory.rs`, nothing survives a restart).
//!
//! Background work (retention, freeing the state of topics that hold nothing, `upkeep.rs`) is
//! scheduled by what changed, so its cost follows the writes, not the number of topics ever
//! written.
//!
//! The writer's decisions (offsets, idempotency, expected versions) are a pure function of a
//! batch, the heads and the time (`plan.rs`), tested on plain data. Time comes from a
//! [`Clock`], so the dedup window and age retention are tested without sleeping.
//!
//! **Architecture invariant:** the store owns only the log. It knows nothing of sockets, frames
//! or subscribers: committed batches go to a [`Listeners`] (the fan-out side implements it)
//! and each command's outcome to its [`Reply`] callback. This is the seam another backend
//! (Redis) plugs into.

mod command;
mod memory;
mod plan;
mod redis;
mod shared;
mod sqlite;
mod upkeep;
mod writer;

#[cfg(test)]
mod tests;

pub use command::{Command, Committed, PresenceChange, PresenceEntry, Reply, reply_channel};
pub use redis::RedisConfig;
pub use shared::{Heads, Health};
pub use sqlite::{BackupReport, backup};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tidings_protocol::{Json, NewEvent};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
pub use crate::config::StoreKind;
use crate::metrics::Metrics;
use crate::retention::Retention;

/// Where a topic's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Names this continuous history; a new one means the old history is gone.
    pub epoch: String,
    /// The last offset written (0 = nothing yet).
    pub latest: u64,
    /// The oldest offset still stored (`latest + 1` when everything was trimmed).
    pub first: u64,
}

impl Head {
    /// Whether no message of the topic is stored any more.
    pub fn is_empty(&self) -> bool {
        self.first > self.latest
    }
}

/// An idempotency key: a publish `id`, scoped by who published it, so one publisher's ids can
/// never match (and so hide) another's messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The publisher: `user:<sub>` for WebSocket clients, `api` for the HTTP API, the `from`
    /// of a publish from Rust code.
    pub scope: String,
    /// The client-chosen id.
    pub id: String,
}

/// One stored message (or event: events are messages of a stream topic).
#[derive(Debug, Clone)]
pub struct Row {
    /// Topic (or stream) name.
    pub topic: Arc<str>,
    /// Offset (= event version for streams).
    pub offset: u64,
    /// The published payload, or for events the envelope `{"type":..,"data":..}`.
    pub data: Json,
    /// Publisher's client id, or `"server"`.
    pub from: String,
    /// RFC 3339 time of the write.
    pub timestamp: String,
    /// Idempotency key of the publish, if it had one (not filled in by reads).
    pub key: Option<IdempotencyKey>,
    /// For events: the event type.
    pub event_type: Option<String>,
}

impl Row {
    /// Bytes this row adds to a reply: its payload and strings plus the JSON around them.
    pub fn reply_bytes(&self) -> usize {
        reply_bytes(
            self.data.get().len(),
            &self.from,
            &self.timestamp,
            &self.topic,
        )
    }
}

/// The size a row of these parts adds to a reply (see [`Row::reply_bytes`]).
fn reply_bytes(data: usize, from: &str, timestamp: &str, topic: &str) -> usize {
    /// `{"type":"message","topic":"","data":,"from":"","timestamp":"","offset":N,"epoch":"…"}`
    const FRAMING: usize = 120;
    data.saturating_add(from.len() + timestamp.len() + topic.len() + FRAMING)
}

/// One page of a read: rows in offset order, bounded by a count and by bytes.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The rows; at least one when any row is stored after the position read from, even if
    /// that one row alone is larger than the byte bound.
    pub rows: Vec<Row>,
    /// Whether more rows are stored after the last one (the page was cut by a bound).
    pub more: bool,
}

/// How much one read may return.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimit {
    /// Most rows.
    pub rows: usize,
    /// Most bytes (as counted by [`Row::reply_bytes`]); the first row is always included.
    pub bytes: usize,
}

impl ReadLimit {
    /// Whether a page holding `rows` rows of `bytes` bytes can take one more of `next` bytes
    /// (the first row always fits the byte bound).
    fn fits(&self, rows: usize, bytes: usize, next: usize) -> bool {
        rows < self.rows && (rows == 0 || bytes.saturating_add(next) <= self.bytes)
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (disk full, database locked, corruption, ...). The operation did
    /// not happen.
    #[error("storage failure: {0}")]
    Backend(String),
    /// `append` with an expected version that is not the stream's current one.
    #[error("expected version {expected}, stream is at {current}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// The stream's actual version.
        current: u64,
    },
    /// A publish reused an idempotency key of the same publisher, within the dedup window,
    /// with a different payload. Nothing was written.
    #[error("id {id:?} was already used for a different payload (offset {offset})")]
    IdempotencyConflict {
        /// The reused id.
        id: String,
        /// The offset of the message first published with it.
        offset: u64,
    },
    /// The store is shutting down or its writer is gone.
    #[error("store unavailable")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// A batch the writer just committed, in commit order, for the fan-out.
pub struct Commit<'a> {
    /// The committed rows; a topic's rows have consecutive offsets, in row order.
    pub rows: &'a [Row],
    /// For each row, the `origin` its publish carried.
    pub origins: &'a [Option<u64>],
    /// The new head of every topic the batch wrote (for its epoch).
    pub heads: &'a HashMap<Arc<str>, Head>,
    /// When the earliest publish of the batch was decoded.
    pub started: Instant,
}

/// The store's view of the fan-out side: where committed batches go, and who still listens to
/// a topic (a topic's state is freed only while nobody does). Implemented outside the store,
/// so the log never names the hub.
pub trait Listeners: Send + Sync + 'static {
    /// Fan out a committed batch (called on the writer thread, after the commit, before the
    /// commands are answered). Must not block.
    fn committed(&self, commit: &Commit<'_>);
    /// Topics that lost their last subscriber since the last call.
    fn released(&self) -> Vec<Arc<str>>;
    /// Run `free` if nobody subscribes to `topic`, holding off new subscribers meanwhile;
    /// returns whether it ran. A subscriber registers before it reads a topic's head, so it
    /// never holds the head of a history freed under it.
    fn free_if_unsubscribed(&self, topic: &str, free: &mut dyn FnMut()) -> bool;
    /// An ephemeral `message` frame another node published to `topic` (Redis only): deliver
    /// it to local subscribers.
    fn ephemeral(&self, topic: &str, frame: &str);
    /// `topic`'s history was replaced by a new epoch (a Redis that lost its data): every
    /// subscriber's cursor restarts at `from` in the new epoch.
    fn rebased(&self, topic: &Arc<str>, from: u64);
}

/// Read access to stored messages and snapshots; safe to call from any thread.
pub trait Reader: Send + Sync + 'static {
    /// Rows of `topic` with offsets greater than `after`, in offset order, within `limit`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend fails.
    fn read(&self, topic: &str, after: u64, limit: ReadLimit) -> Result<Page, StoreError>;
    /// The latest snapshot of `stream`: its version and state.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend fails.
    fn snapshot(&self, stream: &str) -> Result<Option<(u64, Json)>, StoreError>;
}

/// The writer's view of a backend: runs only on the writer thread.
pub(crate) trait Backend: Send + 'static {
    /// Every known topic's head (loaded once at start).
    fn heads(&mut self) -> Result<HashMap<String, Head>, StoreError>;
    /// The offset and payload of the newest message of `topic` published with `key` at or
    /// after `since` (RFC 3339): the idempotency window. An index lookup on both backends.
    fn find_id(
        &mut self,
        topic: &str,
        key: &IdempotencyKey,
        since: &str,
    ) -> Result<Option<(u64, Json)>, StoreError>;
    /// Write rows and updated heads in one transaction.
    fn commit(&mut self, rows: &[Row], heads: &[(&str, &Head)]) -> Result<(), StoreError>;
    /// Save a snapshot.
    fn save_snapshot(&mut self, stream: &str, version: u64, state: &str) -> Result<(), StoreError>;
    /// Delete rows of `topic` below `keep_from` (at most `limit`); returns the new first offset.
    fn trim(
        &mut self,
        topic: &str,
        keep_from: u64,
        head: &Head,
        limit: usize,
    ) -> Result<u64, StoreError>;
    /// The last offset among the oldest `limit` rows of `topic` written before `cutoff`
    /// (RFC 3339), if any.
    fn last_older_than(
        &mut self,
        topic: &str,
        cutoff: &str,
        head: &Head,
        limit: usize,
    ) -> Result<Option<u64>, StoreError>;
    /// The write time (RFC 3339) of the oldest stored row of `topic`.
    fn oldest_timestamp(&mut self, topic: &str, head: &Head) -> Result<Option<String>, StoreError>;
    /// Forget everything about these topics: heads, rows and snapshots (one transaction).
    fn forget(&mut self, topics: &[Arc<str>]) -> Result<(), StoreError>;
    /// Write something small and durable, to learn whether writes work again.
    fn probe(&mut self) -> Result<(), StoreError>;

    /// Delete rows of `topic` written before `cutoff`, at most `limit`; returns the new first
    /// offset.
    fn trim_older(
        &mut self,
        topic: &str,
        cutoff: &str,
        head: &Head,
        limit: usize,
    ) -> Result<u64, StoreError> {
        match self.last_older_than(topic, cutoff, head, limit)? {
            Some(last) => self.trim(topic, last.saturating_add(1), head, limit),
            None => Ok(head.first),
        }
    }
}

/// Settings the store needs.
#[derive(Clone)]
pub struct StoreConfig {
    /// Backend.
    pub kind: StoreKind,
    /// Directory of the SQLite file.
    pub data_dir: PathBuf,
    /// fsync every commit (`true`) or leave it to the OS (`false`: survives a process crash,
    /// not a power cut).
    pub fsync: bool,
    /// Retention and ephemeral rules.
    pub retention: Retention,
    /// Commands queued for the writer before publishers wait.
    pub queue: usize,
    /// How long a publish `id` is remembered for idempotent retries.
    pub dedup_window: std::time::Duration,
    /// Most bytes one read returns (the first row is always returned).
    pub max_read_bytes: usize,
    /// Where the writer reads the time (the dedup window, age retention, row timestamps).
    pub clock: Arc<dyn Clock>,
    /// The Redis servers when `kind` is [`StoreKind::Redis`].
    pub redis: Option<RedisConfig>,
    /// On Redis: how long a presence member stays listed without its node's refresh.
    pub presence_ttl: std::time::Duration,
}

/// Handle to the store: the writer's channel, and where reads go.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    log: Log,
    health: Arc<Health>,
    kind: StoreKind,
    max_read_bytes: usize,
}

/// Where reads go: this process's reader and heads, or Redis.
#[derive(Clone)]
enum Log {
    Local {
        reader: Arc<dyn Reader>,
        heads: Arc<Heads>,
    },
    Redis {
        log: Arc<redis::RedisLog>,
        feeds: Vec<redis::Feed>,
        /// Ends the Redis tasks when the last handle goes.
        _stop: Arc<tokio_util::sync::DropGuard>,
    },
}

/// How often the writer is asked for background upkeep.
const MAINTAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Store {
    /// Open the backend, load every topic's head and start the writer thread.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend cannot be opened or a thread not started.
    pub fn open(
        config: &StoreConfig,
        listeners: Arc<dyn Listeners>,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let health = Arc::new(Health::default());
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        if config.kind == StoreKind::Redis {
            let redis = config
                .redis
                .as_ref()
                .ok_or_else(|| StoreError::Backend("no Redis URL configured".into()))?;
            let (log, feeds) =
                redis::open(config, redis, rx, listeners, metrics, Arc::clone(&health))?;
            let stop = log.stop.clone().drop_guard();
            return Ok(Store {
                tx,
                log: Log::Redis {
                    log,
                    feeds,
                    _stop: Arc::new(stop),
                },
                health,
                kind: config.kind,
                max_read_bytes: config.max_read_bytes,
            });
        }
        let (backend, reader): (Box<dyn Backend>, Arc<dyn Reader>) = match config.kind {
            StoreKind::Sqlite => {
                let (b, r) = sqlite::open(&config.data_dir, config.fsync)?;
                (Box::new(b), Arc::new(r))
            }
            StoreKind::Memory | StoreKind::Redis => {
                let (b, r) = memory::open();
                (Box::new(b), Arc::new(r))
            }
        };
        let heads = Arc::new(Heads::default());
        writer::start(writer::Setup {
            backend,
            rx,
            heads: Arc::clone(&heads),
            health: Arc::clone(&health),
            listeners,
            metrics,
            retention: config.retention.clone(),
            dedup_window: config.dedup_window,
            clock: Arc::clone(&config.clock),
        })?;
        // Upkeep runs in the background: a tick asks the writer for one bounded round. The
        // ticker holds only a weak sender, so it ends when the store is dropped.
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("tidings-retention".into())
            .spawn(move || {
                while let Some(tx) = weak.upgrade() {
                    let _ = tx.try_send(Command::Maintain);
                    drop(tx);
                    std::thread::sleep(MAINTAIN_EVERY);
                }
            })
            .map_err(|e| StoreError::Backend(format!("start retention thread: {e}")))?;
        Ok(Store {
            tx,
            log: Log::Local { reader, heads },
            health,
            kind: config.kind,
            max_read_bytes: config.max_read_bytes,
        })
    }

    /// On Redis: reap `topic`'s members whose node went away (announcing their `leave`) and
    /// read its presence: `(clients, users, at most max members as JSON, more)`. `None` for
    /// a local store (a node's own registry is the whole truth then).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis fails.
    pub async fn shared_presence(
        &self,
        topic: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Option<(u64, u64, Vec<String>, bool)>, StoreError> {
        match &self.log {
            Log::Local { .. } => Ok(None),
            Log::Redis { log, .. } => log.presence(topic, max, now_ms).await.map(Some),
        }
    }

    /// Send a command without waiting: at once if the queue has room, else from a task (for
    /// callers that cannot wait, like a connection's cleanup).
    pub fn send_soon(&self, command: Command) {
        if let Err(mpsc::error::TrySendError::Full(command)) = self.tx.try_send(command) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(command).await;
            });
        }
    }

    /// Whether other nodes share this store (Redis): ephemeral messages are then sent to
    /// them with [`Command::Broadcast`].
    pub fn is_shared(&self) -> bool {
        matches!(self.log, Log::Redis { .. })
    }

    /// Which backend this is.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Whether writes work right now: `Err` with the reason when the last write failed (disk
    /// full, database locked, ...) or the writer stopped.
    ///
    /// # Errors
    /// The reason writes fail.
    pub fn health(&self) -> Result<(), String> {
        self.health.check()
    }

    /// Topics the store keeps a head for: those holding messages, and emptied ones that
    /// still have subscribers (the others are freed in the background).
    /// On Redis: the topics this node watches (has local subscribers of).
    pub fn topic_count(&self) -> usize {
        match &self.log {
            Log::Local { heads, .. } => heads.len(),
            Log::Redis { log, .. } => log.watched(),
        }
    }

    /// Make sure what is committed to `topic` from now on reaches this node's fan-out: on
    /// Redis, the node's channel subscription for the topic (one per topic, however many
    /// local subscribers), confirmed before this returns. Call it after registering a
    /// subscriber and before reading the head. Nothing to do for a local store.
    ///
    /// # Errors
    /// [`StoreError::Backend`] while Redis is unreachable.
    pub async fn watch(&self, topic: &Arc<str>) -> Result<(), StoreError> {
        match &self.log {
            Log::Local { .. } => Ok(()),
            Log::Redis { log, feeds, .. } => {
                feeds[log.shard_of(topic)].watch(Arc::clone(topic)).await
            }
        }
    }

    /// Send a command to the writer, waiting if its queue is full.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the writer is gone.
    pub async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.tx.send(command).await.map_err(|_| StoreError::Closed)
    }

    /// The head of `topic`, if it exists.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be read (a local store never fails).
    pub async fn head(&self, topic: &str) -> Result<Option<Head>, StoreError> {
        match &self.log {
            Log::Local { heads, .. } => Ok(heads.get(topic)),
            Log::Redis { log, .. } => log.head(topic).await,
        }
    }

    /// One page of `topic` after offset `after`: at most `rows` rows and the store's byte
    /// bound (`max_reply_bytes`), read off the async runtime.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend fails.
    pub async fn read(&self, topic: &str, after: u64, rows: usize) -> Result<Page, StoreError> {
        let limit = ReadLimit {
            rows,
            bytes: self.max_read_bytes,
        };
        let reader = match &self.log {
            Log::Local { reader, .. } => Arc::clone(reader),
            Log::Redis { log, .. } => return log.read(topic, after, limit).await,
        };
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || reader.read(&topic, after, limit))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// The latest snapshot of `stream`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend fails.
    pub async fn snapshot(&self, stream: &str) -> Result<Option<(u64, Json)>, StoreError> {
        let reader = match &self.log {
            Log::Local { reader, .. } => Arc::clone(reader),
            Log::Redis { log, .. } => return log.snapshot(stream).await,
        };
        let stream = stream.to_owned();
        tokio::task::spawn_blocking(move || reader.snapshot(&stream))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// Publish from Rust code and wait for the commit. An `id` makes the publish idempotent
    /// within the dedup window, scoped by `from`: a retry with the same `from`, id and payload
    /// gets the original offset.
    ///
    /// # Errors
    /// [`StoreError::IdempotencyConflict`] when the id was used with another payload;
    /// [`StoreError::Backend`] or [`StoreError::Closed`] when nothing could be written.
    pub async fn publish(
        &self,
        topic: &str,
        data: Json,
        from: &str,
        id: Option<String>,
    ) -> Result<Committed, StoreError> {
        let (reply, wait) = reply_channel();
        self.send(Command::Publish {
            topic: Arc::from(topic),
            data,
            from: from.to_owned(),
            origin: None,
            id: id.map(|id| IdempotencyKey {
                scope: from.to_owned(),
                id,
            }),
            reply: Some(reply),
            started: Instant::now(),
        })
        .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Append events from Rust code and wait for the commit.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when `expected` is not the stream's version;
    /// [`StoreError::Backend`] or [`StoreError::Closed`] when nothing could be written.
    pub async fn append(
        &self,
        stream: &str,
        expected: Option<u64>,
        events: Vec<NewEvent>,
        from: &str,
    ) -> Result<Committed, StoreError> {
        let (reply, wait) = reply_channel();
        self.send(Command::Append {
            stream: Arc::from(stream),
            expected,
            events,
            from: from.to_owned(),
            reply: Some(reply),
        })
        .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Save a snapshot and wait for it.
    ///
    /// # Errors
    /// [`StoreError::Backend`] or [`StoreError::Closed`] when it could not be saved.
    pub async fn save_snapshot(
        &self,
        stream: &str,
        version: u64,
        state: Json,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Snapshot {
            stream: stream.to_owned(),
            version,
            state,
            done,
        })
        .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Wait until everything sent so far is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Run one round of background upkeep now and wait for it (tests; the server runs one a
    /// second by itself).
    #[cfg(test)]
    pub(crate) async fn maintain(&self) {
        if self.send(Command::Maintain).await.is_ok() {
            self.flush().await;
        }
    }
}

/// An `i64` column value for an offset; offsets are range-checked where clients send them
/// (at most [`tidings_protocol::MAX_POSITION`]), so this only saturates on a bug.
fn sql_offset(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// An offset read back from an `i64` column (never negative when written by us).
fn offset_of(column: i64) -> u64 {
    u64::try_from(column).unwrap_or(0)
}
