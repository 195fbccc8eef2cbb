//! Tidings server: real-time pub/sub over WebSocket, as a library and the `tidings` binary.
//!
//! Map of the crate (each module has one job):
//!
//! Layers, each using only the ones below it (a test keeps it so; ARCHITECTURE.md has the
//! picture):
//!
//! 1. leaves — [`config`] (every setting, its default and range), `auth` (JWT verification,
//!    identities), `topic` (names, permission patterns), `retention`, `limits`, `metrics`,
//!    `clock`, `forwarded` (client IPs behind proxies);
//! 2. [`store`](Store) — the durable log only (offsets, idempotency, versions, group commit,
//!    retention), and `hub` — fan-out only (topic → bounded mailboxes, never waits);
//! 3. `ops` — the operations every transport calls: publish, history, read, append,
//!    subscribe; each validates, authorizes and routes ephemeral/durable once;
//! 4. `state` — one instance's shared state;
//! 5. transports — `ws` (the sans-IO session, the connection, its writer, the cursor rule),
//!    `api` (the backend HTTP API), [`Repository`] (event-sourced aggregates for Rust code);
//! 6. `http` (routes; every refusal happens before the upgrade) and `listener` (serving
//!    HTTP with timeouts and per-IP caps);
//! 7. this file: [`Tidings`] and [`serve`].
//!
//! Embedding: build a [`Tidings`], nest [`Tidings::router`] in your app, publish from your
//! code with [`Tidings::publish`], and call [`Tidings::shutdown`] on the way out.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_server::{Config, Tidings};
//! let tidings = Tidings::new(Config { jwt_secret: Some("change-me".into()), ..Config::default() })?;
//! let app = axum::Router::new().nest("/realtime", tidings.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! tidings.publish("news", &serde_json::json!({"headline": "hello"})).await?;
//! tidings_server::serve(listener, app, &tidings, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod api;
mod auth;
mod clock;
pub mod config;
mod forwarded;
mod http;
mod hub;
mod limits;
mod listener;
mod metrics;
mod ops;
mod presence;
mod repository;
mod retention;
mod state;
mod store;
mod stream;
mod topic;
mod wire;
mod ws;

use std::future::Future;
use std::sync::Arc;

use std::time::Instant;

pub use auth::{AuthError, MIN_SECRET_BYTES, TokenSpec, mint as mint_token};
pub use config::{Config, ConfigError, redact_url};
pub use hub::Delivery;
pub use repository::{Repository, RepositoryError};
pub use retention::RetentionRule;
pub use store::{
    BackupReport, Committed, Head, IdempotencyKey, Page, Row, Store, StoreError, StoreKind, backup,
};

/// This build: the crate version and the git commit it was built from, e.g.
/// `0.1.0 (4f2c1a9b3d7e)` (`unknown` outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TIDINGS_GIT_COMMIT"),
    ")"
);

/// Check a configuration as [`Tidings::new`] would, without opening the store or binding
/// anything: every range, the JWT keys (public key files are read), the topic patterns.
///
/// # Errors
/// The first [`ConfigError`] found.
pub fn check_config(config: &Config) -> Result<(), ConfigError> {
    config.validate()?;
    auth::Authenticator::from_config(config)?;
    config.compile_retention()?;
    Ok(())
}

use state::Shared;

/// One Tidings server instance: its hub, limits, metrics and shutdown switch.
///
/// Cheap to clone; every clone is the same instance.
#[derive(Clone)]
pub struct Tidings {
    shared: Arc<Shared>,
}

/// Why a server-side publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic name is not valid.
    #[error(transparent)]
    InvalidTopic(#[from] topic::TopicError),
    /// The publish was refused before the store (an overlong id, say).
    #[error("{0}")]
    Refused(String),
    /// The payload could not be serialized to JSON.
    #[error("payload is not serializable: {0}")]
    Payload(#[from] serde_json::Error),
    /// The store failed or is closed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of [`Tidings::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message's offset (durable topics).
    pub offset: Option<u64>,
    /// The topic's epoch (durable topics).
    pub epoch: Option<String>,
    /// Subscribers it was queued for (ephemeral topics).
    pub queued: Option<usize>,
}

impl From<ops::OpError> for PublishError {
    fn from(e: ops::OpError) -> Self {
        match e {
            ops::OpError::InvalidName { error, .. } => PublishError::InvalidTopic(error),
            ops::OpError::Store(e) => PublishError::Store(e),
            other => PublishError::Refused(other.to_string()),
        }
    }
}

impl Tidings {
    /// Validate `config` and create the instance.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Ok(Tidings {
            shared: Arc::new(Shared::new(config)?),
        })
    }

    /// The axum router: `/ws`, `/health`, `/metrics`. Nest it anywhere. Serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` for per-IP limits.
    pub fn router(&self) -> axum::Router {
        http::router(Arc::clone(&self.shared))
    }

    /// Publish `data` to `topic` from the server itself (`message.from` is `"server"`).
    ///
    /// On a durable topic this returns once the message is committed, with its offset; on an
    /// ephemeral topic once it is queued to every subscriber (no offset).
    pub async fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<Published, PublishError> {
        let data = tidings_protocol::Json::to_json(data)?;
        let (reply, committed) = store::reply_channel();
        let op = ops::PublishOp {
            topic: topic.to_owned(),
            data,
            from: "server".to_owned(),
            origin: None,
            id: None,
            started: Instant::now(),
        };
        match ops::publish(&self.shared.ops, ops::Who::Trusted, op, Some(reply)).await? {
            ops::Routed::Ephemeral { queued } => Ok(Published {
                offset: None,
                epoch: None,
                queued: Some(queued),
            }),
            ops::Routed::Durable => {
                let committed = committed.await.map_err(|_| StoreError::Closed)??;
                Ok(Published {
                    offset: Some(committed.offset),
                    epoch: Some(committed.epoch),
                    queued: None,
                })
            }
        }
    }

    /// The durable store (history, streams, snapshots) of this instance.
    pub fn store(&self) -> &Store {
        &self.shared.ops.store
    }

    /// Open WebSocket sessions.
    pub fn clients(&self) -> usize {
        self.shared.limits.current()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.shared.ops.config
    }

    /// Prometheus text of this instance's metrics.
    pub fn metrics_text(&self) -> String {
        self.shared.ops.metrics.encode()
    }

    /// Begin a graceful shutdown: refuse new upgrades and close every session with 1001.
    pub fn begin_shutdown(&self) {
        self.shared.shut_down();
        self.shared.sessions.close();
    }

    /// Shut down gracefully and wait for every session to end, at most the configured
    /// `shutdown_timeout`. Returns false if sessions were still open at the deadline.
    pub async fn shutdown(&self) -> bool {
        self.begin_shutdown();
        let deadline = self.shared.ops.config.shutdown_timeout;
        let clean = tokio::time::timeout(deadline, self.shared.sessions.wait())
            .await
            .is_ok();
        // Everything acknowledged is already committed; this waits for publishes still in
        // flight from the sessions that just closed.
        let _ = tokio::time::timeout(deadline, self.shared.ops.store.flush()).await;
        clean
    }
}

/// Serve `app` (which contains `tidings`' router) on `listener` until `signal` resolves,
/// then shut down gracefully within `shutdown_timeout`. This is what `tidings serve` runs.
///
/// HTTP connections get the header-read and idle timeouts and the per-IP cap of the
/// configuration (see `http_header_timeout`, `http_idle_timeout`,
/// `max_http_connections_per_ip`), and every request carries the peer's address as
/// `ConnectInfo<SocketAddr>`, which per-IP limits and `trusted_proxies` rely on.
///
/// # Errors
/// When the listener fails for good (not for one failed connection).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tidings: &Tidings,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    let trigger = tidings.clone();
    tokio::spawn(async move {
        signal.await;
        trigger.begin_shutdown();
    });
    let mut http = tokio::spawn(listener::run(listener, app, Arc::clone(&tidings.shared)));
    tokio::select! {
        result = &mut http => {
            // The accept loop ended by itself (it only does on an I/O error): stop too.
            let clean = tidings.shutdown().await;
            result.map_err(std::io::Error::other)??;
            return Ok(clean);
        }
        _ = tidings.shared.shutdown.cancelled() => {}
    }
    // Shutdown has begun: sessions are closing with 1001 and the listener is closed.
    let deadline = tidings.shared.ops.config.shutdown_timeout;
    let (served, clean) = tokio::join!(
        tokio::time::timeout(deadline, &mut http),
        tidings.shutdown()
    );
    match served {
        Ok(result) => result.map_err(std::io::Error::other)??,
        Err(_) => {
            tracing::warn!("HTTP connections still open at the shutdown deadline");
            http.abort();
        }
    }
    Ok(clean)
}
