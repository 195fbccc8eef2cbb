//! What goes into the writer ([`Command`]) and what comes out of it for each command
//! ([`Committed`] or a [`StoreError`], through the command's [`Reply`]).

use std::sync::Arc;
use std::time::Instant;

use tidings_protocol::{Json, NewEvent};
use tokio::sync::oneshot;

use super::{IdempotencyKey, StoreError};

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

/// Where the writer sends the outcome of a command: called once, on the writer thread, so it
/// must not block (queue a frame, send on a channel).
pub type Reply = Box<dyn FnOnce(Result<Committed, StoreError>) + Send>;

/// A request to the writer.
pub enum Command {
    /// Store and fan out one message.
    Publish {
        /// Topic.
        topic: Arc<str>,
        /// Payload.
        data: Json,
        /// Publisher's client id (or `"server"`, `"api"`).
        from: String,
        /// The publishing connection, handed back with the committed row so the fan-out can
        /// skip it (no echo); the store gives it no meaning.
        origin: Option<u64>,
        /// Idempotency key.
        id: Option<IdempotencyKey>,
        /// Who gets the outcome.
        reply: Option<Reply>,
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
        reply: Option<Reply>,
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
    /// Change the shared presence set of `topic` and announce the change to the other
    /// nodes (Redis only; a local store ignores it: one node's presence is its own registry).
    Presence {
        /// Topic.
        topic: Arc<str>,
        /// Who joined (or is still there) or left.
        change: PresenceChange,
    },
    /// Carry an ephemeral topic's encoded `message` frame to the other nodes (Redis only;
    /// nothing is stored, and a local store ignores it).
    Broadcast {
        /// Topic.
        topic: Arc<str>,
        /// The encoded frame, as local subscribers got it.
        frame: String,
    },
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
            Command::Broadcast { .. } => "Broadcast",
            Command::Presence { .. } => "Presence",
        })
    }
}

/// A change to a topic's shared presence set.
#[derive(Debug)]
pub enum PresenceChange {
    /// These members joined, or (a refresh) are still here.
    Join(Vec<PresenceEntry>),
    /// These members left.
    Leave(Vec<PresenceEntry>),
}

/// One member in a [`PresenceChange`]: what Redis keeps of it and the frame that announces the
/// change to the other nodes' subscribers.
#[derive(Debug, Clone)]
pub struct PresenceEntry {
    /// The member's connection.
    pub client_id: String,
    /// The member's user.
    pub user: String,
    /// The member as the protocol encodes it (`{"client_id","user","info"}`).
    pub member: String,
    /// The encoded `join` or `leave` frame.
    pub frame: String,
}

/// A [`Reply`] that sends the outcome to the returned receiver.
pub fn reply_channel() -> (Reply, oneshot::Receiver<Result<Committed, StoreError>>) {
    let (done, wait) = oneshot::channel();
    let reply: Reply = Box::new(move |outcome| {
        let _ = done.send(outcome);
    });
    (reply, wait)
}
