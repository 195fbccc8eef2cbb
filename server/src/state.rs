//! State shared by every connection of one server instance.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::hub::Hub;
use crate::limits::ConnLimits;
use crate::metrics::Metrics;
use crate::retention::Retention;
use crate::store::{Store, StoreConfig};

/// Everything a connection task needs, behind one `Arc`.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Token verification.
    pub auth: Authenticator,
    /// Topics and fan-out.
    pub hub: Arc<Hub>,
    /// Durable history and event streams.
    pub store: Store,
    /// Which topics are ephemeral, and how long others are kept.
    pub retention: Retention,
    /// WebSocket session counting (total and per IP).
    pub limits: ConnLimits,
    /// HTTP connections that are not WebSockets, per client IP (see `listener`).
    pub http_connections: ConnLimits,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when graceful shutdown begins; every session watches it.
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Random prefix of this node's client ids (unique across nodes and restarts).
    pub node: String,
    /// When this instance started, for `/health`.
    pub started: Instant,
}

impl Shared {
    /// Validate `config` and build the shared state.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let auth = Authenticator::from_config(&config)?;
        let retention = config.compile_retention()?;
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(Arc::clone(&metrics)));
        let store = Store::open(
            &StoreConfig {
                kind: config.store,
                data_dir: config.data_dir.clone(),
                fsync: config.fsync,
                retention: retention.clone(),
                queue: 8192,
                dedup_window: config.dedup_window,
                max_read_bytes: config.max_reply_bytes,
            },
            Arc::clone(&hub),
            Arc::clone(&metrics),
        )?;
        Ok(Shared {
            auth,
            hub,
            store,
            retention,
            limits: ConnLimits::new(config.max_connections, config.max_connections_per_ip),
            http_connections: ConnLimits::new(usize::MAX, config.max_http_connections_per_ip),
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            node: node_id(),
            started: Instant::now(),
            config,
        })
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
