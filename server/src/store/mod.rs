//! Durable topics: offsets, epochs, history, event streams and snapshots.
//!
//! Writes go through one **writer** (`writer.rs`) on its own thread: it takes commands from a
//! bounded channel, batches whatever is waiting into one transaction (group commit), assigns
//! offsets, commits, and only then fans the committed messages out through the hub, in offset
//! order. So a subscriber never sees an offset that a crash can take back, and per-topic order
//! is the commit order on every connection.
//!
//! Reads (history, recovery, catch-up, stream reads) go through a [`Reader`] and never block
//! the writer. Every read is bounded twice: by a number of rows and by bytes (the
//! `max_reply_bytes` setting), and says whether more is stored ([`Page::more`]). Two backends
//! implement both halves: SQLite (`sqlite.rs`, the embedded default, WAL mode) and memory
//! (`memory.rs`, nothing survives a restart).
//!
//! Background work (retention, freeing the state of topics that hold nothing) is scheduled by
//! what changed, so its cost follows the writes, not the number of topics ever written.
//!
//! Architecture invariant: the store knows nothing about sockets or sessions; it talks to the
//! hub (fan-out) and to [`Reply`] targets (a connection's mailbox, or a oneshot for Rust callers).

mod memory;
mod sqlite;
mod writer;

pub use sqlite::{BackupReport, backup};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use tidings_protocol::{Json, NewEvent};
use tokio::sync::{mpsc, oneshot};

use crate::hub::{Hub, Mailbox};
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

/// What a successful write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The topic or stream.
    pub topic: String,
    /// The last offset written (for a duplicate publish: the original offset).
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: String,
}

/// Where the writer sends the outcome of a command.
pub enum Reply {
    /// Nobody is waiting.
    None,
    /// A WebSocket client: the writer pushes `published` / `appended` / `error` frames into
    /// its mailbox (waiting for room like every reply, see [`Mailbox::offer_reply`]), echoing
    /// `ref`.
    Client {
        /// The requesting connection.
        mailbox: Mailbox,
        /// The request's `ref`.
        r#ref: Option<String>,
        /// Whether a success needs a frame (a publish without `ref` is not acknowledged).
        ack: bool,
    },
    /// A Rust caller awaiting the result.
    Caller(oneshot::Sender<Result<Committed, StoreError>>),
}

/// A request to the writer.
pub enum Command {
    /// Store and fan out one message.
    Publish {
        /// Topic.
        topic: Arc<str>,
        /// Payload.
        data: Json,
        /// Publisher's client id (or `"server"`).
        from: String,
        /// The publishing connection (it gets no echo), if any.
        publisher: Option<Mailbox>,
        /// Idempotency key.
        id: Option<IdempotencyKey>,
        /// Who gets the outcome.
        reply: Reply,
        /// When the publish was decoded (fan-out latency metric).
        started: Instant,
    },
    /// Append events to a stream, optionally at an expected version.
    Append {
        /// Stream name.
        stream: Arc<str>,
        /// `None`: any version; `Some(0)`: must not exist; `Some(n)`: must be at n.
        expected: Option<u64>,
        /// Events in order.
        events: Vec<NewEvent>,
        /// Appender's client id (or `"server"`).
        from: String,
        /// Who gets the outcome.
        reply: Reply,
    },
    /// Save a snapshot of a stream's folded state.
    Snapshot {
        /// Stream name.
        stream: String,
        /// The version the state includes.
        version: u64,
        /// The state as JSON.
        state: Json,
        /// Completion.
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Background upkeep, a bounded amount per command: retention, freeing empty topics,
    /// probing a failing backend.
    Maintain,
    /// Answer once everything sent before has been committed.
    Flush(oneshot::Sender<()>),
}

/// Commands carry payloads and reply channels; their kind is what a log line needs.
impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Publish { .. } => "Publish",
            Command::Append { .. } => "Append",
            Command::Snapshot { .. } => "Snapshot",
            Command::Maintain => "Maintain",
            Command::Flush(_) => "Flush",
        })
    }
}

/// Which storage to use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded SQLite under the data directory: survives restarts and crashes.
    Sqlite,
    /// Process memory: history is bounded by retention and lost on restart.
    Memory,
}

impl StoreKind {
    /// The name used in flags and `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
        }
    }
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

/// Heads of every topic, shared between the writer (which updates them after each commit,
/// before fan-out) and readers (recovery decisions, `history.latest`).
#[derive(Default)]
pub struct Heads(RwLock<HashMap<Arc<str>, Head>>);

impl Heads {
    /// The head of `topic`, if it has ever been written.
    pub fn get(&self, topic: &str) -> Option<Head> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    fn set_all(&self, updates: impl IntoIterator<Item = (Arc<str>, Head)>) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in updates {
            map.insert(k, v);
        }
    }

    fn remove(&self, topic: &str) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
    }

    fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Whether the store can write, for `/health`.
#[derive(Default)]
pub struct Health {
    /// Set while `error` holds one: the writer checks it after every commit without locking.
    failing: AtomicBool,
    /// The last write (or probe) failed with this error; cleared by the next success.
    error: Mutex<Option<String>>,
    /// The writer thread died: nothing will be written any more.
    stopped: AtomicBool,
}

impl Health {
    fn failed(&self, error: &StoreError) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        self.failing.store(true, Ordering::Release);
    }

    /// Clear a failure; returns whether there was one.
    fn recovered(&self) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return false;
        }
        self.failing.store(false, Ordering::Release);
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// `Ok` while writes work; otherwise why not.
    ///
    /// # Errors
    /// The reason writes fail.
    pub fn check(&self) -> Result<(), String> {
        if self.stopped.load(Ordering::Acquire) {
            return Err("the store writer stopped; restart the server".into());
        }
        match &*self.error.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

/// Settings the store needs.
#[derive(Debug, Clone)]
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
}

/// Handle to the store: the writer's channel, a reader and the shared heads.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    reader: Arc<dyn Reader>,
    heads: Arc<Heads>,
    health: Arc<Health>,
    kind: StoreKind,
    max_read_bytes: usize,
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
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let (backend, reader): (Box<dyn Backend>, Arc<dyn Reader>) = match config.kind {
            StoreKind::Sqlite => {
                let (b, r) = sqlite::open(&config.data_dir, config.fsync)?;
                (Box::new(b), Arc::new(r))
            }
            StoreKind::Memory => {
                let (b, r) = memory::open();
                (Box::new(b), Arc::new(r))
            }
        };
        let heads = Arc::new(Heads::default());
        let health = Arc::new(Health::default());
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        writer::start(writer::Setup {
            backend,
            rx,
            heads: Arc::clone(&heads),
            health: Arc::clone(&health),
            hub,
            metrics,
            retention: config.retention.clone(),
            dedup_window: config.dedup_window,
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
            reader,
            heads,
            health,
            kind: config.kind,
            max_read_bytes: config.max_read_bytes,
        })
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
    pub fn topic_count(&self) -> usize {
        self.heads.len()
    }

    /// Send a command to the writer, waiting if its queue is full.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the writer is gone.
    pub async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.tx.send(command).await.map_err(|_| StoreError::Closed)
    }

    /// The head of `topic`, if it exists.
    pub fn head(&self, topic: &str) -> Option<Head> {
        self.heads.get(topic)
    }

    /// One page of `topic` after offset `after`: at most `rows` rows and the store's byte
    /// bound (`max_reply_bytes`), read off the async runtime.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend fails.
    pub async fn read(&self, topic: &str, after: u64, rows: usize) -> Result<Page, StoreError> {
        let reader = Arc::clone(&self.reader);
        let topic = topic.to_owned();
        let limit = ReadLimit {
            rows,
            bytes: self.max_read_bytes,
        };
        tokio::task::spawn_blocking(move || reader.read(&topic, after, limit))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// The latest snapshot of `stream`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend fails.
    pub async fn snapshot(&self, stream: &str) -> Result<Option<(u64, Json)>, StoreError> {
        let reader = Arc::clone(&self.reader);
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
        let (done, wait) = oneshot::channel();
        self.send(Command::Publish {
            topic: Arc::from(topic),
            data,
            from: from.to_owned(),
            publisher: None,
            id: id.map(|id| IdempotencyKey {
                scope: from.to_owned(),
                id,
            }),
            reply: Reply::Caller(done),
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
        let (done, wait) = oneshot::channel();
        self.send(Command::Append {
            stream: Arc::from(stream),
            expected,
            events,
            from: from.to_owned(),
            reply: Reply::Caller(done),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::retention::Retention;

    struct Fixture {
        store: Store,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    }

    fn open_with(
        kind: StoreKind,
        dir: &std::path::Path,
        retention: Retention,
        max_read_bytes: usize,
    ) -> Fixture {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(Arc::clone(&metrics)));
        let store = Store::open(
            &StoreConfig {
                kind,
                data_dir: dir.to_owned(),
                fsync: false,
                retention,
                queue: 64,
                dedup_window: Duration::from_secs(60),
                max_read_bytes,
            },
            Arc::clone(&hub),
            Arc::clone(&metrics),
        )
        .expect("open");
        Fixture {
            store,
            hub,
            metrics,
        }
    }

    fn store(kind: StoreKind, dir: &std::path::Path, max: u64) -> Store {
        let retention = Retention::new(&[], &[], max, None).expect("retention");
        open_with(kind, dir, retention, 1 << 20).store
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tidings-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn json(v: impl serde::Serialize) -> Json {
        serde_json::value::to_raw_value(&v).expect("json")
    }

    /// Poll `check` until it holds (background upkeep runs once a second).
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn retention_trims_in_the_background_on_both_backends() {
        let dir = temp_dir("count");
        for kind in [StoreKind::Memory, StoreKind::Sqlite] {
            let s = store(kind, &dir.join(kind.as_str()), 10);
            for i in 0..50 {
                s.publish("t", json(i), "test", None)
                    .await
                    .expect("publish");
            }
            eventually("the count trim", || {
                s.head("t").map(|h| h.first) == Some(41)
            })
            .await;
            let rows = s.read("t", 0, 100).await.expect("read").rows;
            assert_eq!(rows.first().map(|r| r.offset), Some(41), "{kind:?}");
            assert_eq!(rows.len(), 10);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn messages_older_than_max_age_are_trimmed_on_both_backends() {
        let dir = temp_dir("age");
        for kind in [StoreKind::Memory, StoreKind::Sqlite] {
            let retention =
                Retention::new(&[], &[], 0, Some(Duration::from_millis(200))).expect("retention");
            let f = open_with(kind, &dir.join(kind.as_str()), retention, 1 << 20);
            let s = f.store;
            // A subscriber keeps the emptied topic's head (and so its offsets) alive.
            let (tx, _rx) = tokio::sync::mpsc::channel(4);
            let mailbox = Mailbox::new(1, tx, tokio_util::sync::CancellationToken::new());
            f.hub.subscribe("aging", &mailbox);
            for i in 0..5 {
                s.publish("aging", json(i), "test", None)
                    .await
                    .expect("publish");
            }
            eventually("the age trim", || {
                s.head("aging").map(|h| h.first) == Some(6)
            })
            .await;
            assert!(s.read("aging", 0, 10).await.expect("read").rows.is_empty());
            assert_eq!(
                s.head("aging").map(|h| h.latest),
                Some(5),
                "offsets are never reused while the topic lives"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn idempotency_keys_are_scoped_and_payloads_compared_on_both_backends() {
        let dir = temp_dir("idem");
        for kind in [StoreKind::Memory, StoreKind::Sqlite] {
            let s = store(kind, &dir.join(kind.as_str()), 0);
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
    async fn reads_are_bounded_by_rows_and_bytes_on_both_backends() {
        let dir = temp_dir("pages");
        for kind in [StoreKind::Memory, StoreKind::Sqlite] {
            let retention = Retention::new(&[], &[], 0, None).expect("retention");
            let s = open_with(kind, &dir.join(kind.as_str()), retention, 64 * 1024).store;
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
    async fn emptied_topics_are_freed_and_stay_freed_after_a_restart() {
        let dir = temp_dir("free");
        for kind in [StoreKind::Memory, StoreKind::Sqlite] {
            let path = dir.join(kind.as_str());
            let retention =
                Retention::new(&[], &[], 0, Some(Duration::from_millis(300))).expect("retention");
            let f = open_with(kind, &path, retention.clone(), 1 << 20);
            let (tx, _rx) = tokio::sync::mpsc::channel(4);
            let mailbox = Mailbox::new(1, tx, tokio_util::sync::CancellationToken::new());
            f.hub.subscribe("kept", &mailbox);
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
            eventually("the topics to be freed and `kept` emptied", || {
                f.store.topic_count() == 1 && f.store.head("kept").is_some_and(|h| h.is_empty())
            })
            .await;
            let kept = f
                .store
                .head("kept")
                .expect("a subscribed topic keeps its head");
            assert!(kept.is_empty());
            assert_eq!(kept.latest, 1);
            // Retention looked at each written topic about once, not once per tick.
            let checks = f.metrics.retention_checks.get();
            assert!(checks <= 2 * 2001 + 10, "{kind:?}: {checks} checks");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(
                f.metrics.retention_checks.get(),
                checks,
                "{kind:?}: nothing changed, nothing examined"
            );
            // The last subscriber leaves: the head goes too.
            f.hub.unsubscribe("kept", 1);
            eventually("the unsubscribed topic to be freed", || {
                f.store.topic_count() == 0
            })
            .await;
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
                let reopened = open_with(kind, &path, retention, 1 << 20);
                assert_eq!(reopened.store.topic_count(), 1, "only t7 comes back");
                assert_eq!(reopened.store.head("t7").map(|h| h.latest), Some(1));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
