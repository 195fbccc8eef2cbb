//! Prometheus metrics for `/metrics`.
//!
//! Each server instance owns its own registry (no global recorder), so several servers in
//! one process — tests, or an app embedding two routers — never mix their numbers.
//! Hot-path metrics are plain atomic counters resolved once; labelled families are only
//! touched on rare events (errors, refusals).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tidings_protocol::ErrorCode;

/// Label for errors sent to clients.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code, e.g. `RATE_LIMITED`.
    pub code: &'static str,
}

/// Label for refused connection attempts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why: `auth`, `origin`, `max_connections`, `max_connections_per_ip`,
    /// `max_http_connections_per_ip`, `shutting_down`.
    pub reason: &'static str,
}

/// Label for server-initiated closes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    /// The close code number.
    pub code: u16,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket sessions.
    pub connections: Gauge,
    /// Sessions ever opened.
    pub connections_opened: Counter,
    /// Upgrade attempts refused, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Closes initiated by the server, by close code.
    pub server_closes: Family<CloseLabel, Counter>,
    /// Active (connection, topic) subscriptions.
    pub subscriptions: Gauge,
    /// Frames received from clients.
    pub messages_in: Counter,
    /// Publishes accepted.
    pub publishes: Counter,
    /// `message` frames queued to subscribers.
    pub messages_out: Counter,
    /// `error` replies, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumer_closes: Counter,
    /// Time from a publish being decoded to its frame sitting in every subscriber's queue.
    pub fanout_seconds: Histogram,
    /// Topics examined by background retention (it looks only at topics whose writes or
    /// age made a look necessary, so this grows with the writes, not with the topics).
    pub retention_checks: Counter,
    /// Topics the store keeps a head for.
    pub stored_topics: Gauge,
    /// Round-trip time of Redis requests (a pipeline counts once).
    pub redis_seconds: Histogram,
    /// Commands sent to Redis per writer round (the group-commit batch size).
    pub redis_batch: Histogram,
    /// Times a pub/sub connection to Redis was re-established.
    pub redis_pubsub_reconnects: Counter,
    /// Presence members on this node (connections subscribed to presence topics).
    pub presence_members: Gauge,
    /// Members that joined a presence topic on this node.
    pub presence_joins: Counter,
    /// Members that left a presence topic on this node.
    pub presence_leaves: Counter,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tidings");
        let m = Metrics {
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            connections_refused: Family::default(),
            server_closes: Family::default(),
            subscriptions: Gauge::default(),
            messages_in: Counter::default(),
            publishes: Counter::default(),
            messages_out: Counter::default(),
            errors: Family::default(),
            slow_consumer_closes: Counter::default(),
            fanout_seconds: Histogram::new([
                1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1,
            ]),
            retention_checks: Counter::default(),
            stored_topics: Gauge::default(),
            redis_seconds: Histogram::new([
                5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0,
            ]),
            redis_batch: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
            redis_pubsub_reconnects: Counter::default(),
            presence_members: Gauge::default(),
            presence_joins: Counter::default(),
            presence_leaves: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket sessions",
            m.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket sessions opened",
            m.connections_opened.clone(),
        );
        registry.register(
            "connections_refused",
            "WebSocket upgrades refused, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "server_closes",
            "Sessions closed by the server, by close code",
            m.server_closes.clone(),
        );
        registry.register(
            "subscriptions",
            "Active subscriptions",
            m.subscriptions.clone(),
        );
        registry.register(
            "messages_in",
            "Frames received from clients",
            m.messages_in.clone(),
        );
        registry.register("publishes", "Publishes accepted", m.publishes.clone());
        registry.register(
            "messages_out",
            "Message frames queued to subscribers",
            m.messages_out.clone(),
        );
        registry.register("errors", "Error replies sent, by code", m.errors.clone());
        registry.register(
            "slow_consumer_closes",
            "Sessions closed because their outbound queue overflowed",
            m.slow_consumer_closes.clone(),
        );
        registry.register(
            "fanout_seconds",
            "Time from decoding a publish to queueing it for every subscriber",
            m.fanout_seconds.clone(),
        );
        registry.register(
            "retention_checks",
            "Topics examined by background retention",
            m.retention_checks.clone(),
        );
        registry.register(
            "stored_topics",
            "Topics the store keeps a head for (holding messages, or subscribed)",
            m.stored_topics.clone(),
        );
        registry.register(
            "redis_seconds",
            "Round-trip time of Redis requests and pipelines",
            m.redis_seconds.clone(),
        );
        registry.register(
            "redis_batch_commands",
            "Commands sent to Redis per writer round",
            m.redis_batch.clone(),
        );
        registry.register(
            "redis_pubsub_reconnects",
            "Times a Redis pub/sub connection was re-established",
            m.redis_pubsub_reconnects.clone(),
        );
        registry.register(
            "presence_members",
            "Presence members on this node",
            m.presence_members.clone(),
        );
        registry.register(
            "presence_joins",
            "Members that joined a presence topic on this node",
            m.presence_joins.clone(),
        );
        registry.register(
            "presence_leaves",
            "Members that left a presence topic on this node",
            m.presence_leaves.clone(),
        );
        for code in ErrorCode::ALL {
            // Pre-create every series so dashboards see zeros, not gaps.
            let _ = m.errors.get_or_create(&CodeLabel {
                code: code.as_str(),
            });
        }
        Metrics { registry, ..m }
    }

    /// Count an error reply.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Count a refused upgrade.
    pub fn refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Count a server-initiated close.
    pub fn closed(&self, code: u16) {
        self.server_closes.get_or_create(&CloseLabel { code }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
