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
    /// WebSocket endpoint of the server under test; must be a loopback address.
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,

    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "TIDINGS_BENCH_SECRET", default_value = "bench-secret")]
    pub secret: String,

    /// Pid of the server process: report its CPU time (and RSS) over the measured phase.
    #[arg(long)]
    pub server_pid: Option<u32>,

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
    /// Where the server is.
    pub target: Target,
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
        let target = Target::parse(&args.url, &args.secret)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(Arc::new(Run {
            target,
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

    /// Opens `n` connections as users `bench-RUN-ROLE-i`, at most `connect_concurrency`
    /// at a time, running `setup` on each once it is connected. Results keep their order.
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
        let opts = self.connect_options(default_sources, config);
        let setup = &setup;
        futures_util::stream::iter(0..n)
            .map(|i| {
                let user = format!("bench-{}-{role}-{i}", self.run_id);
                let o = opts(i);
                async move { setup(client::connect(&self.target, &user, o).await?).await }
            })
            .buffered(self.args.connect_concurrency.max(1))
            .collect()
            .await
    }

    /// Starts watching the server's (and our own) CPU time.
    pub fn probe(&self) -> Probe {
        let server = self.args.server_pid.map(|pid| pid.to_string());
        Probe {
            server_cpu: server
                .as_deref()
                .map(|pid| CpuMeter::start(pid, self.ticks_per_sec)),
            self_cpu: CpuMeter::start("self", self.ticks_per_sec),
            server,
        }
    }
}

/// CPU meters over a measured phase.
#[derive(Debug)]
pub struct Probe {
    /// The server's pid as text, if given.
    server: Option<String>,
    /// The server's CPU at the start.
    server_cpu: Option<CpuMeter>,
    /// Our own CPU at the start.
    self_cpu: CpuMeter,
}

/// What the probe saw.
#[derive(Debug, Clone, Copy)]
pub struct ProbeReading {
    /// Server CPU time (user + system) in ms over the phase, if known.
    pub server_cpu_ms: Option<f64>,
    /// Server resident memory at the end, KiB.
    pub server_rss_kib: Option<u64>,
    /// The bench's own CPU time in ms over the phase.
    pub bench_cpu_ms: Option<f64>,
}

impl Probe {
    /// Reads the meters now.
    pub fn read(&self) -> ProbeReading {
        ProbeReading {
            server_cpu_ms: match (&self.server, &self.server_cpu) {
                (Some(pid), Some(m)) => m.elapsed_ms(pid),
                _ => None,
            },
            server_rss_kib: self.server.as_deref().and_then(procfs::read_rss_kib),
            bench_cpu_ms: self.self_cpu.elapsed_ms("self"),
        }
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
