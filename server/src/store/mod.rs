//! Durable topics: offsets, epochs, history, event streams and snapshots.
//!
//! Writes go through one **writer** (`writer.rs`) on its own thread: it takes commands from a
//! bounded channel, batches whatever is waiting into one transaction (group commit), assigns
//! offsets, commits, and only then fans the committed messages out through the hub, in offset
//! order. So a subscriber never sees an offset that a crash can take back, and per-topic order
//! is the commit order on every connection.
//!
//! Reads (history, recovery, catch-up, stream reads) go through a [`Reader`] and never block
//! the writer. Two backends implement both halves: SQLite (`sqlite.rs`, the embedded default,
//! WAL mode) and memory (`memory.rs`, nothing survives a restart).
//!
//! Architecture invariant: the store knows nothing about sockets or sessions; it talks to the
//! hub (fan-out) and to [`Reply`] targets (a connection's mailbox, or a oneshot for Rust callers).

mod memory;
mod sqlite;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use tidings_protocol::{Json, NewEvent};
use tokio::sync::{mpsc, oneshot};

use crate::hub::{Hub, Mailbox};
#[cfg(test)]
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
    /// Idempotency key of the publish, if it had one.
    pub msg_id: Option<String>,
    /// For events: the event type.
    pub event_type: Option<String>,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (disk, corruption, ...). The operation did not happen.
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
    /// its mailbox, echoing `ref`.
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
        id: Option<String>,
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
    /// Drop messages outside the retention rules, a bounded amount per command.
    Trim,
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
            Command::Trim => "Trim",
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
    /// Up to `limit` rows of `topic` with offsets greater than `after`, in offset order.
    fn read(&self, topic: &str, after: u64, limit: usize) -> Result<Vec<Row>, StoreError>;
    /// The latest snapshot of `stream`: its version and state.
    fn snapshot(&self, stream: &str) -> Result<Option<(u64, Json)>, StoreError>;
}

/// The writer's view of a backend: runs only on the writer thread.
pub(crate) trait Backend: Send + 'static {
    /// Every known topic's head (loaded once at start).
    fn heads(&mut self) -> Result<HashMap<String, Head>, StoreError>;
    /// The offset an earlier publish with this id got, if it is still stored.
    /// The offset an earlier publish with this id got, if it was written at or after `since`
    /// (RFC 3339): the idempotency window.
    fn find_id(&mut self, topic: &str, id: &str, since: &str) -> Result<Option<u64>, StoreError>;
    /// Write rows and updated heads in one transaction.
    fn commit(&mut self, rows: &[Row], heads: &[(&str, &Head)]) -> Result<(), StoreError>;
    /// Save a snapshot.
    fn save_snapshot(&mut self, stream: &str, version: u64, state: &str) -> Result<(), StoreError>;
    /// Delete rows of `topic` below `keep_from` (at most `limit`); returns rows deleted.
    fn trim(
        &mut self,
        topic: &str,
        keep_from: u64,
        head: &Head,
        limit: usize,
    ) -> Result<usize, StoreError>;
    /// The last offset among the oldest `limit` rows of `topic` written before `cutoff`
    /// (RFC 3339), if any.
    fn last_older_than(
        &mut self,
        topic: &str,
        cutoff: &str,
        head: &Head,
        limit: usize,
    ) -> Result<Option<u64>, StoreError>;

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
            Some(last) => {
                self.trim(topic, last + 1, head, limit)?;
                Ok(last + 1)
            }
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

    fn topics(&self) -> Vec<(Arc<str>, Head)> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (Arc::clone(k), v.clone()))
            .collect()
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
}

/// Handle to the store: the writer's channel, a reader and the shared heads.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    reader: Arc<dyn Reader>,
    heads: Arc<Heads>,
    kind: StoreKind,
}

impl Store {
    /// Open the backend, load every topic's head and start the writer thread.
    pub fn open(config: &StoreConfig, hub: Arc<Hub>) -> Result<Store, StoreError> {
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
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        writer::start(
            backend,
            rx,
            Arc::clone(&heads),
            hub,
            config.retention.clone(),
            config.dedup_window,
        )?;
        // Retention runs in the background: a tick asks the writer for one bounded trim.
        // The ticker holds only a weak sender, so it ends when the store is dropped.
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("tidings-retention".into())
            .spawn(move || {
                while let Some(tx) = weak.upgrade() {
                    let _ = tx.try_send(Command::Trim);
                    drop(tx);
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            })
            .map_err(|e| StoreError::Backend(format!("start retention thread: {e}")))?;
        Ok(Store {
            tx,
            reader,
            heads,
            kind: config.kind,
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Send a command to the writer, waiting if its queue is full.
    pub async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.tx.send(command).await.map_err(|_| StoreError::Closed)
    }

    /// The head of `topic`, if it exists.
    pub fn head(&self, topic: &str) -> Option<Head> {
        self.heads.get(topic)
    }

    /// Read rows off the async runtime.
    pub async fn read(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let reader = Arc::clone(&self.reader);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || reader.read(&topic, after, limit))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// The latest snapshot of `stream`.
    pub async fn snapshot(&self, stream: &str) -> Result<Option<(u64, Json)>, StoreError> {
        let reader = Arc::clone(&self.reader);
        let stream = stream.to_owned();
        tokio::task::spawn_blocking(move || reader.snapshot(&stream))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// Publish from Rust code and wait for the commit.
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
            id,
            reply: Reply::Caller(done),
            started: Instant::now(),
        })
        .await?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Append events from Rust code and wait for the commit.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::Retention;

    fn store(kind: StoreKind, dir: &std::path::Path, max: u64) -> Store {
        store_with(
            kind,
            dir,
            Retention::new(&[], &[], max, None).expect("retention"),
        )
    }

    fn store_with(kind: StoreKind, dir: &std::path::Path, retention: Retention) -> Store {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics));
        Store::open(
            &StoreConfig {
                kind,
                data_dir: dir.to_owned(),
                fsync: false,
                retention,
                queue: 64,
                dedup_window: std::time::Duration::from_secs(60),
            },
            hub,
        )
        .expect("open")
    }

    #[tokio::test]
    async fn retention_trims_in_the_background_on_both_backends() {
        let dir = std::env::temp_dir().join(format!("tidings-store-unit-{}", std::process::id()));
        for kind in [StoreKind::Memory, StoreKind::Sqlite] {
            let s = store(kind, &dir, 10);
            for i in 0..50 {
                let data = serde_json::value::to_raw_value(&i).expect("json");
                s.publish("t", data, "test", None).await.expect("publish");
            }
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while s.head("t").map(|h| h.first) != Some(41) {
                assert!(
                    Instant::now() < deadline,
                    "{kind:?}: head {:?}",
                    s.head("t")
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let rows = s.read("t", 0, 100).await.expect("read");
            assert_eq!(rows.first().map(|r| r.offset), Some(41), "{kind:?}");
            assert_eq!(rows.len(), 10);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn messages_older_than_max_age_are_trimmed_on_both_backends() {
        let dir = std::env::temp_dir().join(format!("tidings-store-age-{}", std::process::id()));
        for kind in [StoreKind::Memory, StoreKind::Sqlite] {
            let retention =
                Retention::new(&[], &[], 0, Some(std::time::Duration::from_millis(200)))
                    .expect("retention");
            let s = store_with(kind, &dir.join(kind.as_str()), retention);
            for i in 0..5 {
                let data = serde_json::value::to_raw_value(&i).expect("json");
                s.publish("aging", data, "test", None)
                    .await
                    .expect("publish");
            }
            // Age is the behaviour under test: wait for the background trim to drop them all.
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while s.head("aging").map(|h| h.first) != Some(6) {
                assert!(
                    Instant::now() < deadline,
                    "{kind:?}: head {:?}",
                    s.head("aging")
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert!(s.read("aging", 0, 10).await.expect("read").is_empty());
            assert_eq!(
                s.head("aging").map(|h| h.latest),
                Some(5),
                "offsets are never reused"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
