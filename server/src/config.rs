//! Server configuration: every limit and interval, with the defaults operators get.
//!
//! The binary fills a [`Config`] from a TOML file, `TIDINGS_*` environment variables and
//! flags (in rising priority); library users build one in code. Nothing else reads the
//! environment.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::retention::Retention;
pub use crate::retention::RetentionRule;
pub use crate::store::StoreKind;

/// Everything the server needs to know to run. `Config::default()` is a sane production
/// setup except for the JWT key, which has no default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HS256 shared secret for client tokens.
    pub jwt_secret: Option<String>,
    /// PEM files with RSA, EC or Ed25519 public keys, for RS*/PS*/ES*/EdDSA tokens.
    pub jwt_public_keys: Vec<PathBuf>,
    /// Accept tokens without an `exp` claim (they then never expire).
    pub allow_tokens_without_exp: bool,
    /// Clock skew tolerated when checking `exp`.
    #[serde(with = "duration_str")]
    pub jwt_leeway: Duration,
    /// Messages per second per connection (token bucket refill rate).
    pub rate_limit: u32,
    /// Token bucket size: messages a connection may send in a burst.
    pub rate_burst: u32,
    /// Largest accepted frame, in bytes; larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Longest topic name, in bytes.
    pub max_topic_len: usize,
    /// Open WebSocket connections in total; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Open WebSocket connections per client IP; more are refused with HTTP 429.
    pub max_connections_per_ip: usize,
    /// Frames queued for one connection before it counts as a slow consumer and is closed.
    pub queue_capacity: usize,
    /// How often the server sends `heartbeat` and a WebSocket ping.
    #[serde(with = "duration_str")]
    pub heartbeat_interval: Duration,
    /// A connection from which nothing (not even a pong) arrived for this long is closed.
    #[serde(with = "duration_str")]
    pub heartbeat_timeout: Duration,
    /// Browser origins allowed to open a WebSocket (exact `scheme://host[:port]`).
    /// Empty: any origin (tokens, not cookies, authenticate, so this is defence in depth).
    pub allowed_origins: Vec<String>,
    /// How long a graceful shutdown may take before remaining connections are dropped.
    #[serde(with = "duration_str")]
    pub shutdown_timeout: Duration,
    /// Where history lives: `sqlite` (durable, the default) or `memory`.
    pub store: StoreKind,
    /// Directory of the SQLite database.
    pub data_dir: PathBuf,
    /// fsync every commit (an acknowledged message then survives a power cut, not just a
    /// crash of the process).
    pub fsync: bool,
    /// Topic globs that are pure pub/sub: nothing stored, no offsets.
    pub ephemeral_topics: Vec<String>,
    /// Per-pattern retention (first match wins); other topics use the defaults below.
    pub retention: Vec<RetentionRule>,
    /// Messages kept per durable topic by default (0 = unlimited).
    pub retention_max_messages: u64,
    /// Age after which messages are dropped by default (unset = never).
    #[serde(with = "opt_duration_str")]
    pub retention_max_age: Option<Duration>,
    /// Most messages or events in one `history` / `read` reply.
    pub history_limit: u32,
    /// A connection whose socket accepts nothing for this long while frames wait is closed
    /// as a slow consumer (4002).
    #[serde(with = "duration_str")]
    pub slow_consumer_timeout: Duration,
    /// Key for the backend HTTP API (`Authorization: Bearer KEY`); unset = API disabled.
    pub api_key: Option<String>,
    /// How long a publish `id` is remembered: a retry within it is acknowledged with the
    /// original offset instead of being stored again.
    #[serde(with = "duration_str")]
    pub dedup_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            jwt_secret: None,
            jwt_public_keys: Vec::new(),
            allow_tokens_without_exp: false,
            jwt_leeway: Duration::from_secs(30),
            rate_limit: 100,
            rate_burst: 200,
            max_message_bytes: 1024 * 1024,
            max_subscriptions: 100,
            max_topic_len: 256,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            queue_capacity: 4096,
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(60),
            allowed_origins: Vec::new(),
            shutdown_timeout: Duration::from_secs(10),
            store: StoreKind::Sqlite,
            data_dir: PathBuf::from("./data"),
            fsync: true,
            ephemeral_topics: Vec::new(),
            retention: Vec::new(),
            retention_max_messages: 100_000,
            retention_max_age: None,
            history_limit: 1000,
            slow_consumer_timeout: Duration::from_secs(30),
            api_key: None,
            dedup_window: Duration::from_secs(3600),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No way to verify tokens was configured.
    #[error(
        "no JWT key configured: set --jwt-secret / TIDINGS_JWT_SECRET (or --dev for a throwaway one)"
    )]
    NoJwtKey,
    /// The HS256 secret is empty.
    #[error("the JWT secret is empty")]
    EmptySecret,
    /// A public key file could not be read or parsed.
    #[error("JWT public key {path}: {reason}")]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A topic pattern in the retention settings does not parse.
    #[error("invalid topic pattern: {0}")]
    Pattern(#[from] glob::PatternError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A numeric limit is zero or out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting's name.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Config {
    /// Check the settings that would otherwise fail at run time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("rate_limit", self.rate_limit as usize),
            ("rate_burst", self.rate_burst as usize),
            ("max_message_bytes", self.max_message_bytes),
            ("max_subscriptions", self.max_subscriptions),
            ("max_topic_len", self.max_topic_len),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("queue_capacity", self.queue_capacity),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be at least 1",
                });
            }
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::Invalid {
                name: "heartbeat_interval",
                reason: "must be positive",
            });
        }
        if self.history_limit == 0 {
            return Err(ConfigError::Invalid {
                name: "history_limit",
                reason: "must be at least 1",
            });
        }
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Invalid {
                name: "api_key",
                reason: "must not be empty",
            });
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(ConfigError::Invalid {
                name: "heartbeat_timeout",
                reason: "must be longer than heartbeat_interval",
            });
        }
        Ok(())
    }

    /// The compiled retention rules.
    pub fn compile_retention(&self) -> Result<Retention, ConfigError> {
        Ok(Retention::new(
            &self.ephemeral_topics,
            &self.retention,
            self.retention_max_messages,
            self.retention_max_age,
        )?)
    }
}

/// Optional durations in TOML as human strings.
mod opt_duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Durations in TOML as human strings: `"25s"`, `"1m 30s"`, `"500ms"`.
mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_parses_durations() {
        let config: Config = toml::from_str(
            r#"
            jwt_secret = "s3cret"
            rate_limit = 5
            heartbeat_interval = "500ms"
            heartbeat_timeout = "2s"
            allowed_origins = ["https://app.example"]
            "#,
        )
        .expect("parse");
        assert_eq!(config.rate_limit, 5);
        assert_eq!(config.rate_burst, Config::default().rate_burst);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_refused() {
        assert!(toml::from_str::<Config>("rate_limt = 5").is_err());
        let config = Config {
            queue_capacity: 0,
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                name: "queue_capacity",
                ..
            })
        ));
    }
}
