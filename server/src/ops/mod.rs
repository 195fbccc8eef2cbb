//! Operations: what every transport asks of the server — publish, history, read, append,
//! subscribe. The WebSocket session, the HTTP API, [`crate::Tidings::publish`] and
//! [`crate::Repository`] all come through here, so each rule is decided once: a name is
//! validated, the caller authorized, and a topic routed between ephemeral (the hub only) and
//! durable (the store, then the fan-out after the commit).
//!
//! * `publish` — one message, to the hub or the store.
//! * `read` — `history` of a topic and `read` of a stream, as protocol replies.
//! * `append` — events to a stream at an expected version.
//! * `subscribe` — a connection's registration in the hub and where its delivery starts.
//! * `fanout` — the store's [`Listeners`](crate::store::Listeners): committed rows become
//!   `message` frames (encoded once, by the protocol's constructor) for the hub.
//!
//! Layering: operations sit above the store and the hub and below the transports; they build
//! every frame with `tidings-protocol`'s types and never touch a socket.

mod append;
pub mod fanout;
pub mod presence;
mod publish;
mod read;
mod subscribe;

use std::sync::Arc;

use tidings_protocol::ErrorCode;

pub use append::{AppendOp, append};
pub use publish::{PublishOp, Routed, publish};
pub use read::{history, message, read};
pub use subscribe::{Subscription, subscribe, unsubscribe};

use crate::auth::{Authenticator, Identity};
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::retention::Retention;
use crate::store::{RedisConfig, Store, StoreConfig, StoreError};
use crate::topic::{self, TopicError};

/// What every operation works with: one server instance's configuration, token verifier,
/// retention rules, metrics, hub and store.
pub struct Ops {
    /// The validated configuration.
    pub config: Config,
    /// Token verification.
    pub auth: Authenticator,
    /// Which topics are ephemeral, and how long others are kept.
    pub retention: Retention,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Topics and fan-out.
    pub hub: Arc<Hub>,
    /// Durable history and event streams.
    pub store: Store,
    /// Presence patterns and this node's members.
    pub presence: Arc<Presence>,
}

impl Ops {
    /// Validate `config` and build the instance's parts (this opens the store, which reads
    /// the time from `clock`).
    ///
    /// # Errors
    /// [`ConfigError`] for a setting out of range, an unusable key, a bad pattern, or a store
    /// that cannot be opened.
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Ops, ConfigError> {
        config.validate()?;
        let auth = Authenticator::from_config(&config)?;
        let retention = config.compile_retention()?;
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(Arc::clone(&metrics)));
        let store = Store::open(
            &StoreConfig {
                kind: config.store_kind(),
                data_dir: config.data_dir.clone(),
                fsync: config.fsync,
                retention: retention.clone(),
                queue: 8192,
                dedup_window: config.dedup_window,
                max_read_bytes: config.max_reply_bytes,
                clock,
                presence_ttl: config.presence_ttl,
                redis: (!config.redis_url.is_empty()).then(|| RedisConfig {
                    urls: config.redis_url.clone(),
                    prefix: config.redis_prefix.clone(),
                }),
            },
            Arc::new(fanout::Fanout::new(Arc::clone(&hub))),
            Arc::clone(&metrics),
        )
        .map_err(|e| ConfigError::Store(Box::new(e)))?;
        let presence = Arc::new(Presence::new(&config.presence_topics)?);
        if store.is_shared() && presence.any() {
            tokio::spawn(presence::upkeep(
                Arc::clone(&presence),
                store.clone(),
                config.presence_ttl,
            ));
        }
        Ok(Ops {
            config,
            auth,
            retention,
            metrics,
            hub,
            store,
            presence,
        })
    }

    /// A valid topic or stream name.
    fn check_name(&self, name: &str) -> Result<(), OpError> {
        topic::validate(name, self.config.max_topic_len).map_err(|error| OpError::InvalidName {
            name: name.to_owned(),
            error,
        })
    }

    /// A valid name the token may read (`subscribe` patterns) and that is stored.
    fn check_readable(&self, who: Who<'_>, name: &str) -> Result<(), OpError> {
        self.check_name(name)?;
        if let Who::User(identity) = who
            && !identity.subscribe.allows(name)
        {
            return Err(OpError::Forbidden {
                name: name.to_owned(),
                action: "read",
            });
        }
        if self.retention.is_ephemeral(name) {
            return Err(OpError::Ephemeral(name.to_owned()));
        }
        Ok(())
    }

    /// A valid name the token may write (`publish` patterns).
    fn check_writable(
        &self,
        who: Who<'_>,
        name: &str,
        action: &'static str,
    ) -> Result<(), OpError> {
        self.check_name(name)?;
        if let Who::User(identity) = who
            && !identity.publish.allows(name)
        {
            return Err(OpError::Forbidden {
                name: name.to_owned(),
                action,
            });
        }
        Ok(())
    }
}

/// Who asks for an operation.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// A WebSocket client: its token's patterns apply, and its idempotency keys are its
    /// user's own (`user:<sub>`).
    User(&'a Identity),
    /// The HTTP API (API key) or the server's own code: any topic; keys scoped by `from`.
    Trusted,
}

/// Why an operation was refused before it reached the store. The text is safe to show.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The topic or stream name breaks the naming rules.
    #[error("{error}: {name:?}")]
    InvalidName {
        /// The name.
        name: String,
        /// Which rule it breaks.
        error: TopicError,
    },
    /// The token's patterns do not allow this.
    #[error("token may not {action} {name:?}")]
    Forbidden {
        /// The topic or stream.
        name: String,
        /// `publish to`, `append to`, `read`.
        action: &'static str,
    },
    /// History or a stream of a topic that is never stored.
    #[error("{0:?} is ephemeral: nothing is stored")]
    Ephemeral(String),
    /// The request is malformed in a way the decoder cannot see (no events, an overlong id).
    #[error("{0}")]
    Invalid(String),
    /// `presence` on a topic no `presence_topics` pattern matches.
    #[error("no presence is kept for {0:?} (see --presence-topic)")]
    PresenceDisabled(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OpError {
    /// The protocol's code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            OpError::InvalidName { .. } => ErrorCode::InvalidTopic,
            OpError::Forbidden { .. } => ErrorCode::Forbidden,
            OpError::Ephemeral(_) => ErrorCode::Unavailable,
            OpError::Invalid(_) => ErrorCode::InvalidMessage,
            OpError::PresenceDisabled(_) => ErrorCode::PresenceDisabled,
            OpError::Store(e) => store_code(e),
        }
    }
}

/// The protocol's code for a store failure.
pub fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
        StoreError::Conflict { .. } => ErrorCode::VersionConflict,
        StoreError::Backend(_) | StoreError::Closed => ErrorCode::Unavailable,
    }
}
