//! Where `serve`, `check-config` and `backup` get their settings: built-in defaults, then a
//! TOML file (`--config`), then `TIDINGS_*` environment variables, then flags. One function
//! ([`Settings::load`]) does it for every command, so `check-config` validates exactly what
//! `serve` would run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tidings_server::{Config, StoreKind};

/// The settings shared by `serve` and `check-config` (flags with their env variables).
#[derive(Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys are the long flag names with `_`).
    #[arg(long, env = "TIDINGS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on. [default: 127.0.0.1:8000]
    #[arg(long, env = "TIDINGS_BIND")]
    pub bind: Option<SocketAddr>,
    /// HS256 secret for client tokens (required unless --dev or public keys are given).
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA, EC or Ed25519) for RS*/PS*/ES*/EdDSA tokens; repeatable.
    #[arg(
        long = "jwt-public-key",
        env = "TIDINGS_JWT_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub jwt_public_keys: Vec<PathBuf>,
    /// Accept tokens without an `exp` claim. [default: false]
    #[arg(long, env = "TIDINGS_ALLOW_TOKENS_WITHOUT_EXP")]
    pub allow_tokens_without_exp: Option<bool>,
    /// Clock skew tolerated on `exp` and `nbf`; a token stays valid until exp + leeway. [default: 30s]
    #[arg(long, env = "TIDINGS_JWT_LEEWAY", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Option<Duration>,
    /// Required `aud`: tokens must name this audience. [default: aud not checked]
    #[arg(long, env = "TIDINGS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss`: tokens must come from this issuer. [default: iss not checked]
    #[arg(long, env = "TIDINGS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Messages per second per connection. [default: 100]
    #[arg(long, env = "TIDINGS_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Burst size of the per-connection rate limit. [default: 200]
    #[arg(long, env = "TIDINGS_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Largest frame in bytes; larger ones close the connection with 1009. [default: 1048576]
    #[arg(long, env = "TIDINGS_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Subscriptions per connection. [default: 100]
    #[arg(long, env = "TIDINGS_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Longest topic name in bytes. [default: 256]
    #[arg(long, env = "TIDINGS_MAX_TOPIC_LEN")]
    pub max_topic_len: Option<usize>,
    /// Open connections in total (more get HTTP 503). [default: 10000]
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open WebSocket connections per client IP (more get HTTP 429). [default: 1000]
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// HTTP connections per client IP that are not WebSockets (more get 429). [default: 100]
    #[arg(long, env = "TIDINGS_MAX_HTTP_CONNECTIONS_PER_IP")]
    pub max_http_connections_per_ip: Option<usize>,
    /// Time a client has to send a request's headers (new or keep-alive connection). [default: 30s]
    #[arg(long, env = "TIDINGS_HTTP_HEADER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Option<Duration>,
    /// Close an HTTP connection (not a WebSocket) on which nothing moves this long. [default: 30s]
    #[arg(long, env = "TIDINGS_HTTP_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Option<Duration>,
    /// Proxy (CIDR or address) whose X-Forwarded-For / Forwarded name the client; repeatable. [default: none]
    #[arg(
        long = "trusted-proxy",
        env = "TIDINGS_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = tidings_server::config::parse_cidr
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Frames queued per connection before it is closed as a slow consumer (4002). [default: 4096]
    #[arg(long, env = "TIDINGS_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Interval of `heartbeat` frames and WebSocket pings. [default: 25s]
    #[arg(long, env = "TIDINGS_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Close a connection silent (no frame, no pong) for this long (4003). [default: 60s]
    #[arg(long, env = "TIDINGS_HEARTBEAT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Allowed browser Origin (exact, e.g. https://app.example); repeatable. [default: any]
    #[arg(
        long = "allowed-origin",
        env = "TIDINGS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Longest a graceful shutdown may take. [default: 10s]
    #[arg(long, env = "TIDINGS_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Storage: `sqlite` (durable, under --data-dir) or `memory` (lost on restart). [default: sqlite]
    #[arg(long, env = "TIDINGS_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Directory of the SQLite database. [default: ./data]
    #[arg(long, env = "TIDINGS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// fsync every commit (survives power loss, not just a crash). [default: true]
    #[arg(long, env = "TIDINGS_FSYNC")]
    pub fsync: Option<bool>,
    /// Topic glob that is pure pub/sub (not stored, no offsets); repeatable. [default: none]
    #[arg(
        long = "ephemeral-topic",
        env = "TIDINGS_EPHEMERAL_TOPICS",
        value_delimiter = ','
    )]
    pub ephemeral_topics: Vec<String>,
    /// Messages kept per durable topic (0 = unlimited). [default: 100000]
    #[arg(long, env = "TIDINGS_RETENTION_MAX_MESSAGES")]
    pub retention_max_messages: Option<u64>,
    /// Age after which stored messages are dropped, e.g. `7d`. [default: never]
    #[arg(long, env = "TIDINGS_RETENTION_MAX_AGE", value_parser = humantime::parse_duration)]
    pub retention_max_age: Option<Duration>,
    /// Most messages or events in one `history` / `read` reply. [default: 1000]
    #[arg(long, env = "TIDINGS_HISTORY_LIMIT")]
    pub history_limit: Option<u32>,
    /// Most bytes of messages in one history/read reply or catch-up page. [default: 4194304]
    #[arg(long, env = "TIDINGS_MAX_REPLY_BYTES")]
    pub max_reply_bytes: Option<usize>,
    /// Close a connection whose socket accepts nothing for this long (4002). [default: 30s]
    #[arg(long, env = "TIDINGS_SLOW_CONSUMER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub slow_consumer_timeout: Option<Duration>,
    /// How long a publish `id` is remembered for idempotent retries. [default: 1h]
    #[arg(long, env = "TIDINGS_DEDUP_WINDOW", value_parser = humantime::parse_duration)]
    pub dedup_window: Option<Duration>,
    /// Redis server for durable topics and streams, shared by every node (redis://[user:pass@]host:port,
    /// rediss:// for TLS); repeatable: several shard topics by name (same order on every node).
    /// Set: the node runs on Redis instead of --store. [default: none]
    #[arg(
        long = "redis-url",
        env = "TIDINGS_REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_url: Vec<String>,
    /// Topic glob whose subscribers are presence members (who is here, join/leave); repeatable. [default: none]
    #[arg(
        long = "presence-topic",
        env = "TIDINGS_PRESENCE_TOPICS",
        value_delimiter = ','
    )]
    pub presence_topics: Vec<String>,
    /// How long a crashed node's presence members stay listed (nodes refresh every third). [default: 30s]
    #[arg(long, env = "TIDINGS_PRESENCE_TTL", value_parser = humantime::parse_duration)]
    pub presence_ttl: Option<Duration>,
    /// Most members in one presence reply. [default: 1000]
    #[arg(long, env = "TIDINGS_PRESENCE_MAX_MEMBERS")]
    pub presence_max_members: Option<usize>,
    /// Prefix of every Redis key and channel (several deployments can share a Redis). [default: tidings]
    #[arg(long, env = "TIDINGS_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Key for the backend HTTP API under /api (Authorization: Bearer KEY). [default: API off]
    #[arg(long, env = "TIDINGS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Development mode: a throwaway JWT secret (configured keys are ignored), a logged token
    /// and GET /dev/token. Never in production.
    #[arg(long, env = "TIDINGS_DEV")]
    pub dev: bool,
    /// Serve the files of this directory at `/` (e.g. the demo page `www/`). [default: none]
    #[arg(long, env = "TIDINGS_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,tidings_server=debug`). [default: info]
    #[arg(long, env = "TIDINGS_LOG")]
    pub log: Option<String>,
}

/// Binary-only settings that may also appear in the TOML file.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOnly {
    bind: Option<SocketAddr>,
    log: Option<String>,
}

/// Everything a command needs, merged from every source.
pub struct Settings {
    /// The library's configuration.
    pub config: Config,
    /// Where to listen.
    pub bind: SocketAddr,
    /// The log filter.
    pub log: String,
    /// `--dev`: the throwaway secret in force (configured keys are ignored).
    pub dev_secret: Option<String>,
}

impl Settings {
    /// Merge defaults, the TOML file, the environment and the flags.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or has unknown keys.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Settings> {
        let (mut config, file) = load_file(args.config.as_deref())?;
        let log = args
            .log
            .clone()
            .or(file.log)
            .unwrap_or_else(|| "info".into());
        let bind = args
            .bind
            .or(file.bind)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000)));
        apply_overrides(&mut config, args);
        // Dev mode mints tokens for anyone at /dev/token, so it must never sign with a real
        // key: it always runs on its own throwaway secret.
        let dev_secret = if args.dev {
            let secret = random_secret()?;
            config.jwt_secret = Some(secret.clone());
            config.jwt_public_keys.clear();
            Some(secret)
        } else {
            None
        };
        Ok(Settings {
            config,
            bind,
            log,
            dev_secret,
        })
    }

    /// The effective settings as TOML, secrets replaced by a note of their length, so they
    /// can be shown and logged.
    pub fn redacted_toml(&self) -> anyhow::Result<String> {
        let mut config = self.config.clone();
        let note = |secret: &Option<String>| {
            secret
                .as_ref()
                .map(|s| format!("<redacted, {} bytes>", s.len()))
        };
        config.jwt_secret = if self.dev_secret.is_some() {
            Some("<throwaway dev secret>".into())
        } else {
            note(&config.jwt_secret)
        };
        config.api_key = note(&config.api_key);
        config.redis_url = config
            .redis_url
            .iter()
            .map(|u| tidings_server::redact_url(u))
            .collect();
        let mut table = toml::Table::try_from(&config).context("render the configuration")?;
        table.insert("bind".into(), toml::Value::String(self.bind.to_string()));
        table.insert("log".into(), toml::Value::String(self.log.clone()));
        Ok(toml::to_string(&table)?)
    }
}

fn load_file(path: Option<&std::path::Path>) -> anyhow::Result<(Config, FileOnly)> {
    let Some(path) = path else {
        return Ok((Config::default(), FileOnly::default()));
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let mut file_only = toml::Table::new();
    for key in ["bind", "log"] {
        if let Some(v) = table.remove(key) {
            file_only.insert(key.into(), v);
        }
    }
    let config: Config = table
        .try_into()
        .with_context(|| format!("settings in {}", path.display()))?;
    let file: FileOnly = file_only
        .try_into()
        .with_context(|| format!("settings in {}", path.display()))?;
    Ok((config, file))
}

fn apply_overrides(config: &mut Config, a: &ServeArgs) {
    fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
        if let Some(v) = value {
            *slot = v.clone();
        }
    }
    if a.jwt_secret.is_some() {
        config.jwt_secret = a.jwt_secret.clone();
    }
    if !a.jwt_public_keys.is_empty() {
        config.jwt_public_keys = a.jwt_public_keys.clone();
    }
    if !a.allowed_origins.is_empty() {
        config.allowed_origins = a.allowed_origins.clone();
    }
    if !a.trusted_proxies.is_empty() {
        config.trusted_proxies = a.trusted_proxies.clone();
    }
    if a.jwt_audience.is_some() {
        config.jwt_audience = a.jwt_audience.clone();
    }
    if a.jwt_issuer.is_some() {
        config.jwt_issuer = a.jwt_issuer.clone();
    }
    set(
        &mut config.allow_tokens_without_exp,
        &a.allow_tokens_without_exp,
    );
    set(&mut config.jwt_leeway, &a.jwt_leeway);
    set(&mut config.rate_limit, &a.rate_limit);
    set(&mut config.rate_burst, &a.rate_burst);
    set(&mut config.max_message_bytes, &a.max_message_bytes);
    set(&mut config.max_subscriptions, &a.max_subscriptions);
    set(&mut config.max_topic_len, &a.max_topic_len);
    set(&mut config.max_connections, &a.max_connections);
    set(
        &mut config.max_connections_per_ip,
        &a.max_connections_per_ip,
    );
    set(
        &mut config.max_http_connections_per_ip,
        &a.max_http_connections_per_ip,
    );
    set(&mut config.http_header_timeout, &a.http_header_timeout);
    set(&mut config.http_idle_timeout, &a.http_idle_timeout);
    set(&mut config.max_reply_bytes, &a.max_reply_bytes);
    set(&mut config.queue_capacity, &a.queue_capacity);
    set(&mut config.heartbeat_interval, &a.heartbeat_interval);
    set(&mut config.heartbeat_timeout, &a.heartbeat_timeout);
    set(&mut config.shutdown_timeout, &a.shutdown_timeout);
    set(&mut config.store, &a.store);
    set(&mut config.data_dir, &a.data_dir);
    set(&mut config.fsync, &a.fsync);
    set(
        &mut config.retention_max_messages,
        &a.retention_max_messages,
    );
    set(&mut config.history_limit, &a.history_limit);
    set(&mut config.slow_consumer_timeout, &a.slow_consumer_timeout);
    set(&mut config.dedup_window, &a.dedup_window);
    if a.retention_max_age.is_some() {
        config.retention_max_age = a.retention_max_age;
    }
    if a.api_key.is_some() {
        config.api_key = a.api_key.clone();
    }
    if !a.ephemeral_topics.is_empty() {
        config.ephemeral_topics = a.ephemeral_topics.clone();
    }
    if !a.redis_url.is_empty() {
        config.redis_url = a.redis_url.clone();
    }
    set(&mut config.redis_prefix, &a.redis_prefix);
    if !a.presence_topics.is_empty() {
        config.presence_topics = a.presence_topics.clone();
    }
    set(&mut config.presence_ttl, &a.presence_ttl);
    set(&mut config.presence_max_members, &a.presence_max_members);
}

fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_split_between_binary_and_library() {
        let dir = std::env::temp_dir().join(format!("tidings-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9000\"\nrate_limit = 7\nstore = \"memory\"\n[[retention]]\npattern = \"chat.*\"\nmax_messages = 10\n",
        )
        .expect("write");
        let (config, file) = load_file(Some(&path)).expect("load");
        assert_eq!(config.rate_limit, 7);
        assert_eq!(config.store, StoreKind::Memory);
        assert_eq!(config.retention[0].max_messages, Some(10));
        assert_eq!(config.retention[0].max_messages, Some(10));
        assert_eq!(file.bind, Some(SocketAddr::from(([127, 0, 0, 1], 9000))));
        std::fs::write(&path, "nonsense_key = 1\n").expect("write");
        assert!(load_file(Some(&path)).is_err(), "unknown keys are refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
