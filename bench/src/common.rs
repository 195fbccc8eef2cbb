//! What every scenario shares: the options for reaching the server, the run's clock,
//! opening many connections at once, watching the server process, and the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::client::{self, ConnectOptions, Target, Ws};
use crate::procfs::{self, CpuMeter};

/// Options shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// WebSocket endpoint of the server under test; must be a loopback address. Several
    /// comma-separated endpoints (nodes of one cluster) take the connections round-robin.
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,

    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "TIDINGS_BENCH_SECRET", default_value = "bench-secret")]
    pub secret: String,

    /// Pid of the server process: report its CPU time (and RSS) over the measured phase.
    /// Several comma-separated pids (the nodes of a cluster) are added up, and each is also
    /// reported on its own.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Pid of a backing store process (e.g. `redis-server`): its CPU time over the measured
    /// phase is reported apart from the server's.
    #[arg(long)]
    pub redis_pid: Option<u32>,

    /// Free-form name for this run, copied into the JSON line (e.g. "tidings-memory").
    #[arg(long, default_value = "")]
    pub label: String,

    /// Seconds allowed for one connection (TCP, upgrade and the `connected` frame).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// How many connections are opened concurrently during setup.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// tungstenite read buffer per connection, bytes. tungstenite zero-fills the free part of
    /// this buffer before every socket read, so a large one costs CPU on every frame.
    #[arg(long, default_value_t = 16 * 1024)]
    pub read_buffer: usize,

    /// Spread connections over this many loopback source addresses (127.0.0.2, .3, ...);
    /// 1 lets the kernel choose (127.0.0.1).
    #[arg(long)]
    pub source_ips: Option<usize>,
}

/// The run's shared state: target, clock, and the server probe.
#[derive(Debug)]
pub struct Run {
    /// Where the server is (the first of `targets`).
    pub target: Target,
    /// Every endpoint given by `--url`, in order; connections go round-robin over them.
    pub targets: Vec<Target>,
    /// The options as given.
    pub args: CommonArgs,
    /// Time zero for send timestamps carried in payloads.
    start: Instant,
    /// Distinguishes this run's users and topics from any earlier run's on the same server.
    pub run_id: String,
    /// Clock ticks per second for `/proc` CPU times.
    pub ticks_per_sec: u64,
}

impl Run {
    /// Validates the target and starts the clock.
    pub fn new(args: CommonArgs) -> Result<Arc<Self>> {
        let targets = parse_targets(&args.url, &args.secret)?;
        let target = targets[0].clone();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(Arc::new(Run {
            target,
            targets,
            args,
            start: Instant::now(),
            run_id: format!("{}-{:x}", std::process::id(), nanos),
            ticks_per_sec: procfs::clock_ticks_per_sec(),
        }))
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The moment `ns` nanoseconds after the run started (for sleeping until a time on the
    /// run clock); far in the future if that is past what `Instant` can hold.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.start
            .checked_add(Duration::from_nanos(ns))
            .unwrap_or_else(|| self.start + Duration::from_secs(100 * 365 * 86_400))
    }

    /// Connection options for the `i`th connection: source address round-robin over
    /// `--source-ips` (or `default_sources`), and `config` or the default buffer sizes.
    pub fn connect_options(
        &self,
        default_sources: usize,
        config: Option<client::WsConfig>,
    ) -> impl Fn(usize) -> ConnectOptions + '_ {
        let ips = client::source_ips(
            &self.target,
            self.args.source_ips.unwrap_or(default_sources),
        );
        let timeout = Duration::from_secs_f64(self.args.connect_timeout.max(0.1));
        let config = config.unwrap_or_else(|| {
            client::WsConfig::default().read_buffer_size(self.args.read_buffer.max(256))
        });
        move |i| ConnectOptions {
            source: ips[i % ips.len()],
            timeout,
            config: Some(config),
        }
    }

    /// Opens `n` connections as users `bench-RUN-ROLE-i`, round-robin over the `--url`
    /// targets, at most `connect_concurrency` at a time, running `setup` on each once it is
    /// connected. Results keep their order.
    pub async fn connect_many<F, Fut, T>(
        &self,
        role: &str,
        n: usize,
        default_sources: usize,
        config: Option<client::WsConfig>,
        setup: F,
    ) -> Vec<Result<T>>
    where
        F: Fn(Ws) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.connect_many_on(&self.targets, role, n, default_sources, config, setup)
            .await
    }

    /// [`Run::connect_many`], round-robin over `targets` instead of the `--url` ones.
    pub async fn connect_many_on<F, Fut, T>(
        &self,
        targets: &[Target],
        role: &str,
        n: usize,
        default_sources: usize,
        config: Option<client::WsConfig>,
        setup: F,
    ) -> Vec<Result<T>>
    where
        F: Fn(Ws) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let targets = if targets.is_empty() {
            std::slice::from_ref(&self.target)
        } else {
            targets
        };
        let opts = self.connect_options(default_sources, config);
        let setup = &setup;
        futures_util::stream::iter(0..n)
            .map(|i| {
                let user = format!("bench-{}-{role}-{i}", self.run_id);
                let o = opts(i);
                let target = &targets[i % targets.len()];
                async move { setup(client::connect(target, &user, o).await?).await }
            })
            .buffered(self.args.connect_concurrency.max(1))
            .collect()
            .await
    }

    /// Starts watching the server's (and our own) CPU time.
    pub fn probe(&self) -> Probe {
        let meter = |pid: u32| CpuMeter::start(&pid.to_string(), self.ticks_per_sec);
        Probe {
            servers: self
                .args
                .server_pid
                .iter()
                .map(|&pid| (pid, meter(pid)))
                .collect(),
            redis: self.args.redis_pid.map(|pid| (pid, meter(pid))),
            self_cpu: CpuMeter::start("self", self.ticks_per_sec),
        }
    }

    /// Resident memory of every `--server-pid` added up, KiB (`None`: no pid, or one of
    /// them unreadable).
    pub fn server_rss_kib(&self) -> Option<u64> {
        sum_rss(&self.args.server_pid)
    }
}

/// Parses a comma-separated list of `ws://` URLs (at least one).
pub fn parse_targets(urls: &str, secret: &str) -> Result<Vec<Target>> {
    let targets = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| Target::parse(u, secret))
        .collect::<Result<Vec<_>>>()?;
    if targets.is_empty() {
        anyhow::bail!("no URL given");
    }
    Ok(targets)
}

/// Resident memory of `pids` added up, KiB; `None` if there are none or one is unreadable.
fn sum_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| procfs::read_rss_kib(&pid.to_string()))
        .sum()
}

/// CPU meters over a measured phase.
#[derive(Debug)]
pub struct Probe {
    /// Each server process and its CPU at the start.
    servers: Vec<(u32, CpuMeter)>,
    /// The backing store process (`--redis-pid`) and its CPU at the start.
    redis: Option<(u32, CpuMeter)>,
    /// Our own CPU at the start.
    self_cpu: CpuMeter,
}

/// What the probe saw.
#[derive(Debug, Clone)]
pub struct ProbeReading {
    /// Server CPU time (user + system) in ms over the phase, all server pids added up, if
    /// every one is known.
    pub server_cpu_ms: Option<f64>,
    /// The same per server pid, in `--server-pid` order.
    pub server_cpu_ms_by_pid: Vec<(u32, Option<f64>)>,
    /// Server resident memory at the end (all server pids), KiB.
    pub server_rss_kib: Option<u64>,
    /// CPU time of the `--redis-pid` process in ms over the phase.
    pub redis_cpu_ms: Option<f64>,
    /// The bench's own CPU time in ms over the phase.
    pub bench_cpu_ms: Option<f64>,
}

impl Probe {
    /// Reads the meters now.
    pub fn read(&self) -> ProbeReading {
        let by_pid: Vec<(u32, Option<f64>)> = self
            .servers
            .iter()
            .map(|(pid, m)| (*pid, m.elapsed_ms(&pid.to_string())))
            .collect();
        let pids: Vec<u32> = self.servers.iter().map(|(pid, _)| *pid).collect();
        ProbeReading {
            server_cpu_ms: if by_pid.is_empty() {
                None
            } else {
                by_pid.iter().map(|(_, ms)| *ms).sum()
            },
            server_cpu_ms_by_pid: by_pid,
            server_rss_kib: sum_rss(&pids),
            redis_cpu_ms: self
                .redis
                .as_ref()
                .and_then(|(pid, m)| m.elapsed_ms(&pid.to_string())),
            bench_cpu_ms: self.self_cpu.elapsed_ms("self"),
        }
    }
}

impl ProbeReading {
    /// The per-node and backing-store fields every scenario adds to its JSON line: CPU per
    /// server pid, and the store process's CPU in total and per `unit` (e.g. "msg").
    pub fn cluster_json(&self, units: u64, unit: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "server_cpu_ms_by_pid".into(),
            Value::Object(
                self.server_cpu_ms_by_pid
                    .iter()
                    .map(|(pid, ms)| (pid.to_string(), opt_r3(*ms)))
                    .collect(),
            ),
        );
        m.insert("redis_cpu_ms".into(), opt_r3(self.redis_cpu_ms));
        m.insert(
            format!("redis_cpu_us_per_{unit}"),
            opt_r3(crate::stats::cpu_us_per(self.redis_cpu_ms, units)),
        );
        m
    }

    /// One summary line on how the server CPU splits over the nodes and the store process,
    /// when there is more than one process to tell apart.
    pub fn cluster_line(&self, units: u64, unit: &str) -> Option<String> {
        if self.server_cpu_ms_by_pid.len() < 2 && self.redis_cpu_ms.is_none() {
            return None;
        }
        let nodes: Vec<String> = self
            .server_cpu_ms_by_pid
            .iter()
            .map(|(pid, ms)| format!("pid {pid} {}", fmt_opt(*ms, "ms")))
            .collect();
        Some(format!(
            "  per node: {}; redis CPU {} = {} per {unit}",
            if nodes.is_empty() {
                "n/a".into()
            } else {
                nodes.join(", ")
            },
            fmt_opt(self.redis_cpu_ms, "ms"),
            fmt_opt(crate::stats::cpu_us_per(self.redis_cpu_ms, units), "µs"),
        ))
    }
}

/// Asks every target's `GET /health` for its `store` field ("memory", "sqlite", "redis",
/// ...), so a report says what it measured; `null` where a server does not answer.
pub async fn health_stores(targets: &[Target]) -> Value {
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let store = client::health(t.addr)
            .await
            .and_then(|h| h.get("store").cloned())
            .unwrap_or(Value::Null);
        out.push(store);
    }
    Value::Array(out)
}

/// Adds `extra`'s fields to the JSON object `report`.
pub fn extend(report: &mut Value, extra: serde_json::Map<String, Value>) {
    if let Value::Object(m) = report {
        m.extend(extra);
    }
}

/// Counts failures by message so the report can show the first few kinds.
#[derive(Debug, Default)]
pub struct ErrorTally {
    /// Error text (its first line) to count.
    by_kind: BTreeMap<String, u64>,
}

impl ErrorTally {
    /// Counts one error.
    pub fn add(&mut self, err: &anyhow::Error) {
        let text = format!("{err:#}");
        let kind = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(160)
            .collect();
        *self.by_kind.entry(kind).or_default() += 1;
    }

    /// Adds another tally's counts to this one.
    pub fn merge(&mut self, other: &ErrorTally) {
        for (kind, n) in &other.by_kind {
            *self.by_kind.entry(kind.clone()).or_default() += n;
        }
    }

    /// Total errors counted.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// The most frequent kinds, for the report.
    pub fn top(&self, n: usize) -> Value {
        let mut kinds: Vec<_> = self.by_kind.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        Value::Object(
            kinds
                .into_iter()
                .take(n)
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        )
    }
}

/// Prints the human summary lines, then the one JSON line (always last, always one line).
pub fn emit(summary: &[String], report: &Value) {
    for line in summary {
        println!("{line}");
    }
    println!("{report}");
}

/// Rounds a float for the report (3 decimals), keeping JSON readable.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `Some(x)` rounded, or JSON null.
pub fn opt_r3(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |v| json!(r3(v)))
}

/// Formats an optional number for the human summary.
pub fn fmt_opt(x: Option<f64>, unit: &str) -> String {
    x.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3} {unit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_make_several_targets() {
        let t = parse_targets("ws://127.0.0.1:1/ws, ws://127.0.0.1:2/ws,", "s").expect("two");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].addr.port(), 2);
        assert!(parse_targets("", "s").is_err());
        assert!(parse_targets("ws://127.0.0.1:1/ws,ws://10.0.0.1:2/ws", "s").is_err());
    }
}
