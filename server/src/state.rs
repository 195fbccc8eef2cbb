//! State shared by every connection of one server instance: the operations context and what
//! only the transports need (connection limits, the shutdown switch, the session tracker, the
//! open connections' mailboxes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{self, Clock};
use crate::config::{Config, ConfigError};
use crate::hub::{ConnId, Mailbox, Stop};
use crate::limits::ConnLimits;
use crate::ops::Ops;

/// Everything a connection task needs, behind one `Arc`.
pub struct Shared {
    /// Configuration, token verification, retention, metrics, hub and store.
    pub ops: Ops,
    /// WebSocket session counting (total and per IP).
    pub limits: ConnLimits,
    /// HTTP connections that are not WebSockets, per client IP (see `listener`).
    pub http_connections: ConnLimits,
    /// Cancelled when graceful shutdown begins; every session watches it.
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// The mailbox of every open WebSocket connection, so that shutdown reaches them all
    /// through what they already wait on (no waiter per connection).
    open: Mutex<HashMap<ConnId, Mailbox>>,
    /// Random prefix of this node's client ids (unique across nodes and restarts).
    pub node: String,
    /// When this instance started, for `/health`.
    pub started: Instant,
}

impl Shared {
    /// Validate `config` and build the shared state.
    ///
    /// # Errors
    /// As [`Ops::with_clock`].
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::with_clock(config, clock::system())
    }

    /// As [`Shared::new`], with the store reading time from `clock`.
    ///
    /// # Errors
    /// As [`Ops::with_clock`].
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let ops = Ops::with_clock(config, clock)?;
        let config = &ops.config;
        Ok(Shared {
            limits: ConnLimits::new(config.max_connections, config.max_connections_per_ip),
            http_connections: ConnLimits::new(usize::MAX, config.max_http_connections_per_ip),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            open: Mutex::new(HashMap::new()),
            node: node_id(),
            started: Instant::now(),
            ops,
        })
    }
}

impl Shared {
    /// Count a connection's mailbox among the open ones until [`Shared::leave`]; if shutdown
    /// has already begun, the connection is told to end at once.
    pub fn enter(&self, mailbox: &Mailbox) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mailbox.id(), mailbox.clone());
        // After the insert: a shutdown that began before it did not see this mailbox.
        if self.shutdown.is_cancelled() {
            mailbox.stop(Stop::Shutdown);
        }
    }

    /// The connection `id` has ended.
    pub fn leave(&self, id: ConnId) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.remove(&id);
        if open.is_empty() {
            // Give the table's memory back once every connection is gone.
            open.shrink_to_fit();
        }
    }

    /// Begin shutting down: the token is cancelled (refusing new upgrades), then every open
    /// connection is told to close with 1001.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        for mailbox in self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            mailbox.stop(Stop::Shutdown);
        }
    }
}

/// Six random hex digits (falls back to the process id and time if the OS has no entropy).
fn node_id() -> String {
    let mut bytes = [0u8; 3];
    if getrandom::fill(&mut bytes).is_err() {
        let seed = std::process::id() ^ (Instant::now().elapsed().subsec_nanos());
        bytes.copy_from_slice(&seed.to_le_bytes()[..3]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
