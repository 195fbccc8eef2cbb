//! Server configuration: every limit and interval, with the defaults operators get.
//!
//! The binary fills a [`Config`] from a TOML file, `TIDINGS_*` environment variables and
//! flags (in rising priority); library users build one in code. Nothing else reads the
//! environment.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(ConfigError::Invalid {
                name: "heartbeat_timeout",
                reason: "must be longer than heartbeat_interval",
            });
        }
        Ok(())
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
