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
    /// Redis (set by `redis_url`): several nodes share history and fan-out.
    Redis,
}

impl StoreKind {
    /// The name used in flags and `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        }
    }
}

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
    /// Clock skew tolerated when checking `exp` and `nbf`: a token is accepted until
    /// `exp + leeway`, and an open connection is closed then (RFC 7519 §4.1.4).
    #[serde(with = "duration_str")]
    pub jwt_leeway: Duration,
    /// When set, a token's `aud` must contain this value (and `aud` is required). Unset:
    /// `aud` is not checked.
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must equal this value (and `iss` is required). Unset: `iss`
    /// is not checked.
    pub jwt_issuer: Option<String>,
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
    /// HTTP connections per client IP that are not (yet) WebSockets: idle keep-alive
    /// connections, requests in progress, handshakes. More are answered 429 and closed.
    /// Connections from a trusted proxy are not counted (the proxy multiplexes many clients).
    pub max_http_connections_per_ip: usize,
    /// How long a client has to send a request's complete headers, counted from when the
    /// server starts waiting for them (a new connection, or an idle keep-alive one).
    #[serde(with = "duration_str")]
    pub http_header_timeout: Duration,
    /// An HTTP connection (not yet a WebSocket) on which no byte moves either way for this
    /// long is closed: a stalled body upload or a response nobody reads.
    #[serde(with = "duration_str")]
    pub http_idle_timeout: Duration,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers name the client IP (CIDRs or
    /// single addresses). From any other peer those headers are ignored.
    #[serde(with = "cidr_list")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
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
    /// Most bytes of stored messages in one `history` / `read` reply or one page of a
    /// subscriber's catch-up read (a page always holds at least one message).
    pub max_reply_bytes: usize,
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
    /// Redis servers (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS). Set: durable
    /// topics and streams live in Redis and every node on the same servers is one server.
    /// Several URLs shard topics across them by topic name; every node must list the same
    /// URLs in the same order.
    #[serde(with = "one_or_many")]
    pub redis_url: Vec<String>,
    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    pub redis_prefix: String,
    /// Topic globs whose subscribers are presence members: others can ask who is there
    /// (`presence`, `presence_stats`) and see them `join` and `leave`. Empty: no presence.
    pub presence_topics: Vec<String>,
    /// On Redis, how long a member of a node that stopped answering stays listed: each
    /// node refreshes its members every third of this; a crashed node's members leave
    /// when it runs out.
    #[serde(with = "duration_str")]
    pub presence_ttl: Duration,
    /// Most members in one `presence` reply (more: the reply says `more`, count them with
    /// `presence_stats`).
    pub presence_max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            jwt_secret: None,
            jwt_public_keys: Vec::new(),
            allow_tokens_without_exp: false,
            jwt_leeway: Duration::from_secs(30),
            jwt_audience: None,
            jwt_issuer: None,
            rate_limit: 100,
            rate_burst: 200,
            max_message_bytes: 1024 * 1024,
            max_subscriptions: 100,
            max_topic_len: 256,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_http_connections_per_ip: 100,
            http_header_timeout: Duration::from_secs(30),
            http_idle_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
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
            max_reply_bytes: 4 * 1024 * 1024,
            slow_consumer_timeout: Duration::from_secs(30),
            api_key: None,
            dedup_window: Duration::from_secs(3600),
            redis_url: Vec::new(),
            redis_prefix: "tidings".into(),
            presence_topics: Vec::new(),
            presence_ttl: Duration::from_secs(30),
            presence_max_members: 1000,
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
    /// The HS256 secret is shorter than RFC 7518 §3.2 allows.
    #[error(
        "the JWT secret is {len} bytes; HS256 needs at least 32 (RFC 7518 §3.2). \
         Make one with `openssl rand -hex 32`"
    )]
    WeakSecret {
        /// The secret's length in bytes.
        len: usize,
    },
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
    /// The store could not be opened (the source says why).
    #[error("cannot open the store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A setting is out of its range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting's name (as in the TOML file).
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Most Redis servers topics can be sharded over.
pub const MAX_REDIS_SHARDS: usize = 64;

/// `url` with its password replaced by `<redacted>`, for logs and `check-config`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// The longest any configured duration may be (ten years): far beyond any sensible timeout
/// or window, and short enough that `now - duration` stays after 1970 and `now + duration`
/// fits every clock.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Config {
    /// Check every setting against its range, so a configuration that cannot work is refused
    /// at start with the setting's name, never at run time.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_limits()?;
        self.validate_redis()
    }

    /// Where durable topics live: Redis when `redis_url` is set, otherwise `store`.
    pub fn store_kind(&self) -> StoreKind {
        if self.redis_url.is_empty() {
            self.store
        } else {
            StoreKind::Redis
        }
    }

    /// The Redis settings: parseable URLs, at most [`MAX_REDIS_SHARDS`], a prefix that keeps
    /// every key of a topic in one Redis Cluster hash slot (no braces).
    fn validate_redis(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: String| ConfigError::Invalid { name, reason };
        if self.store == StoreKind::Redis && self.redis_url.is_empty() {
            return Err(invalid(
                "store",
                "`redis` needs redis_url (--redis-url / TIDINGS_REDIS_URL)".into(),
            ));
        }
        if self.redis_url.len() > MAX_REDIS_SHARDS {
            return Err(invalid(
                "redis_url",
                format!("at most {MAX_REDIS_SHARDS} URLs"),
            ));
        }
        for url in &self.redis_url {
            let parsed = redis::parse_redis_url(url)
                .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "unix" | "redis+unix"));
            if parsed.is_none() {
                return Err(invalid(
                    "redis_url",
                    format!("not a redis:// or rediss:// URL: {:?}", redact_url(url)),
                ));
            }
        }
        let prefix = &self.redis_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(invalid(
                "redis_prefix",
                "1 to 64 bytes, no whitespace, control characters or braces".into(),
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                name,
                reason: reason.into(),
            }
        }
        const MIB: usize = 1024 * 1024;
        let counts: [(&'static str, usize, usize, usize); 13] = [
            ("rate_limit", self.rate_limit as usize, 1, u32::MAX as usize),
            ("rate_burst", self.rate_burst as usize, 1, u32::MAX as usize),
            ("max_message_bytes", self.max_message_bytes, 64, 64 * MIB),
            ("max_subscriptions", self.max_subscriptions, 1, 1_000_000),
            ("max_topic_len", self.max_topic_len, 1, 64 * 1024),
            ("max_connections", self.max_connections, 1, 10_000_000),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip,
                1,
                10_000_000,
            ),
            (
                "max_http_connections_per_ip",
                self.max_http_connections_per_ip,
                1,
                10_000_000,
            ),
            ("queue_capacity", self.queue_capacity, 1, 1_000_000),
            (
                "presence_max_members",
                self.presence_max_members,
                1,
                100_000,
            ),
            ("history_limit", self.history_limit as usize, 1, 1_000_000),
            ("max_reply_bytes", self.max_reply_bytes, 1024, 1024 * MIB),
            (
                "retention_max_messages",
                usize::try_from(self.retention_max_messages).unwrap_or(usize::MAX),
                0,
                usize::try_from(tidings_protocol::MAX_POSITION).unwrap_or(usize::MAX),
            ),
        ];
        for (name, value, min, max) in counts {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    name,
                    format!("must be from {min} to {max}, not {value}"),
                ));
            }
        }
        let ms = Duration::from_millis;
        let durations = [
            (
                "jwt_leeway",
                Some(self.jwt_leeway),
                Duration::ZERO,
                ms(600_000),
            ),
            (
                "heartbeat_interval",
                Some(self.heartbeat_interval),
                ms(10),
                MAX_DURATION,
            ),
            (
                "heartbeat_timeout",
                Some(self.heartbeat_timeout),
                ms(10),
                MAX_DURATION,
            ),
            (
                "shutdown_timeout",
                Some(self.shutdown_timeout),
                Duration::ZERO,
                MAX_DURATION,
            ),
            (
                "slow_consumer_timeout",
                Some(self.slow_consumer_timeout),
                ms(1),
                MAX_DURATION,
            ),
            (
                "dedup_window",
                Some(self.dedup_window),
                Duration::ZERO,
                MAX_DURATION,
            ),
            (
                "presence_ttl",
                Some(self.presence_ttl),
                ms(1000),
                ms(24 * 3600 * 1000),
            ),
            (
                "http_header_timeout",
                Some(self.http_header_timeout),
                ms(10),
                MAX_DURATION,
            ),
            (
                "http_idle_timeout",
                Some(self.http_idle_timeout),
                ms(10),
                MAX_DURATION,
            ),
            (
                "retention_max_age",
                self.retention_max_age,
                ms(1),
                MAX_DURATION,
            ),
        ];
        for (name, value, min, max) in durations {
            if let Some(d) = value
                && !(min..=max).contains(&d)
            {
                return Err(invalid(
                    name,
                    format!(
                        "must be from {} to {}, not {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max),
                        humantime::format_duration(d)
                    ),
                ));
            }
        }
        for rule in &self.retention {
            if let Some(d) = rule.max_age
                && !(ms(1)..=MAX_DURATION).contains(&d)
            {
                return Err(invalid(
                    "retention.max_age",
                    format!(
                        "{}: must be from 1ms to {}",
                        rule.pattern,
                        humantime::format_duration(MAX_DURATION)
                    ),
                ));
            }
            if rule
                .max_messages
                .is_some_and(|n| n > tidings_protocol::MAX_POSITION)
            {
                return Err(invalid(
                    "retention.max_messages",
                    format!("{}: too large", rule.pattern),
                ));
            }
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(invalid(
                "heartbeat_timeout",
                "must be longer than heartbeat_interval",
            ));
        }
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("api_key", "must not be empty"));
        }
        for (name, value) in [
            ("jwt_audience", &self.jwt_audience),
            ("jwt_issuer", &self.jwt_issuer),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(name, "must not be empty (leave it unset instead)"));
            }
        }
        Ok(())
    }

    /// The compiled retention rules.
    ///
    /// # Errors
    /// [`ConfigError::Pattern`] when a topic pattern does not parse.
    pub fn compile_retention(&self) -> Result<Retention, ConfigError> {
        Ok(Retention::new(
            &self.ephemeral_topics,
            &self.retention,
            self.retention_max_messages,
            self.retention_max_age,
        )?)
    }
}

/// Parse a trusted proxy: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address.
///
/// # Errors
/// A message saying what was expected.
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{text:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
}

/// CIDR lists in TOML as strings: `["10.0.0.0/8", "127.0.0.1"]`.
/// `redis_url` in TOML: one URL as a string, or a list of them.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(url) => vec![url],
            OneOrMany::Many(urls) => urls,
        })
    }
}

mod cidr_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| super::parse_cidr(t).map_err(serde::de::Error::custom))
            .collect()
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
    fn every_setting_is_range_checked_at_start() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let cases: Vec<(&str, Config)> = vec![
            (
                "dedup_window",
                Config {
                    dedup_window: 60 * year,
                    ..Config::default()
                },
            ),
            (
                "retention_max_age",
                Config {
                    retention_max_age: Some(60 * year),
                    ..Config::default()
                },
            ),
            (
                "heartbeat_interval",
                Config {
                    heartbeat_interval: 1000 * year,
                    ..Config::default()
                },
            ),
            (
                "jwt_leeway",
                Config {
                    jwt_leeway: year,
                    ..Config::default()
                },
            ),
            (
                "queue_capacity",
                Config {
                    queue_capacity: usize::MAX,
                    ..Config::default()
                },
            ),
            (
                "max_reply_bytes",
                Config {
                    max_reply_bytes: 10,
                    ..Config::default()
                },
            ),
            (
                "http_header_timeout",
                Config {
                    http_header_timeout: Duration::ZERO,
                    ..Config::default()
                },
            ),
            (
                "jwt_audience",
                Config {
                    jwt_audience: Some(String::new()),
                    ..Config::default()
                },
            ),
            (
                "retention.max_age",
                Config {
                    retention: vec![RetentionRule {
                        pattern: "x".into(),
                        max_messages: None,
                        max_age: Some(100 * year),
                    }],
                    ..Config::default()
                },
            ),
        ];
        for (name, config) in cases {
            match config.validate() {
                Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn trusted_proxies_parse_as_cidrs_or_addresses() {
        let config: Config =
            toml::from_str(r#"trusted_proxies = ["10.0.0.0/8", "192.168.1.7", "fd00::1/8"]"#)
                .expect("parse");
        let shown: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        assert!(toml::from_str::<Config>(r#"trusted_proxies = ["nope"]"#).is_err());
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
