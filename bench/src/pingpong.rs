//! `pingpong`: K connections each sending `ping` and waiting for `pong`, for N round trips
//! in total or D seconds, whichever comes first; round trips/s and latency percentiles.
//!
//! With `--depth` above 1 a connection keeps that many pings in flight; pongs carry no
//! reference, so they are matched to pings in order (the server answers in order).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Envelope, PING_FRAME, Ws};
use crate::common::{ErrorTally, Run, emit, fmt_opt, opt_r3, r3};
use crate::stats::{self, LatencySummary};

/// Options of `pingpong`.
#[derive(Debug, Clone, Args)]
pub struct PingpongArgs {
    /// Number of connections.
    #[arg(short = 'k', long, default_value_t = 50)]
    pub connections: usize,

    /// Total round trips over all connections (upper bound).
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    pub count: u64,

    /// Stop after this many seconds even if round trips remain.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,

    /// Pings each connection keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,

    /// A pong not arriving within this many seconds ends that connection's loop.
    #[arg(long, default_value_t = 5.0)]
    pub reply_timeout: f64,
}

/// What one connection did.
#[derive(Debug)]
struct ConnResult {
    /// Round-trip times, ns.
    latency: hdrhistogram::Histogram<u64>,
    /// Completed round trips.
    round_trips: u64,
    /// Why it stopped early, if it did.
    failure: Option<String>,
}

/// Runs the scenario and prints the report.
pub async fn run(run: Arc<Run>, a: PingpongArgs) -> Result<()> {
    if a.connections == 0 {
        bail!("need at least one connection");
    }
    let t_setup = Instant::now();
    let conns = run
        .connect_many("ping", a.connections, 1, None, |ws| async move { Ok(ws) })
        .await;
    let mut connect_errors = ErrorTally::default();
    let conns: Vec<Ws> = conns
        .into_iter()
        .filter_map(|r| r.map_err(|e| connect_errors.add(&e)).ok())
        .collect();
    if conns.is_empty() {
        bail!("no connection succeeded: {}", connect_errors.top(3));
    }
    let setup_secs = t_setup.elapsed().as_secs_f64();

    // All connections start together once every one is open.
    let budget = Arc::new(AtomicI64::new(i64::try_from(a.count).unwrap_or(i64::MAX)));
    let (go_tx, go_rx) = watch::channel(false);
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration.max(0.0));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| {
            let (budget, mut go, a) = (budget.clone(), go_rx.clone(), a.clone());
            tokio::spawn(async move {
                let _ = go.wait_for(|&g| g).await;
                conn_loop(ws, &a, &budget, deadline).await
            })
        })
        .collect();
    let probe = run.probe();
    let start = Instant::now();
    let _ = go_tx.send(true);
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let reading = probe.read();

    let mut latency = stats::new_histogram();
    let mut total = 0;
    let mut failures = ErrorTally::default();
    for r in &results {
        let _ = latency.add(&r.latency);
        total += r.round_trips;
        if let Some(f) = &r.failure {
            failures.add(&anyhow::anyhow!("{f}"));
        }
    }
    let lat = LatencySummary::from_ns(&latency);
    let rps = stats::per_sec(total, elapsed);
    let cpu_per = stats::cpu_us_per(reading.server_cpu_ms, total);
    let summary = vec![
        format!(
            "pingpong {}: {} connections ({} connected), depth {}, setup {setup_secs:.2} s",
            run.args.label,
            a.connections,
            results.len(),
            a.depth
        ),
        format!("  {total} round trips in {elapsed:.2} s = {rps:.0} round trips/s"),
        format!("  latency {}", lat.line()),
        format!(
            "  server CPU {} = {} per round trip; bench CPU {}",
            fmt_opt(reading.server_cpu_ms, "ms"),
            fmt_opt(cpu_per, "µs"),
            fmt_opt(reading.bench_cpu_ms, "ms")
        ),
        format!(
            "  errors: connect {}, connections failed during the run {}",
            connect_errors.total(),
            failures.total()
        ),
    ];
    let report = json!({
        "bench": "pingpong",
        "label": run.args.label,
        "url": run.args.url,
        "connections": a.connections,
        "connected": results.len(),
        "depth": a.depth,
        "setup_secs": r3(setup_secs),
        "round_trips": total,
        "elapsed_secs": r3(elapsed),
        "round_trips_per_sec": r3(rps),
        "latency_us": lat,
        "server_cpu_ms": opt_r3(reading.server_cpu_ms),
        "server_cpu_us_per_msg": opt_r3(cpu_per),
        "server_rss_kib": reading.server_rss_kib,
        "bench_cpu_ms": opt_r3(reading.bench_cpu_ms),
        "connect_errors": connect_errors.total(),
        "connect_error_kinds": connect_errors.top(3),
        "failed": failures.total(),
        "failure_kinds": failures.top(3),
    });
    emit(&summary, &report);
    Ok(())
}

/// Pings until the shared budget or the deadline runs out, then collects the last pongs.
async fn conn_loop(
    mut ws: Ws,
    a: &PingpongArgs,
    budget: &AtomicI64,
    deadline: Instant,
) -> ConnResult {
    let mut r = ConnResult {
        latency: stats::new_histogram(),
        round_trips: 0,
        failure: None,
    };
    let reply_timeout = Duration::from_secs_f64(a.reply_timeout.max(0.01));
    let depth = a.depth.max(1);
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(depth);
    let mut sending = true;
    loop {
        // Top up the pipeline while there is budget and time.
        if sending {
            let mut fed = false;
            while in_flight.len() < depth {
                if Instant::now() >= deadline || budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                    sending = false;
                    break;
                }
                if let Err(e) = ws.feed(Message::text(PING_FRAME)).await {
                    r.failure = Some(format!("send: {e}"));
                    return r;
                }
                in_flight.push_back(Instant::now());
                fed = true;
            }
            if fed && let Err(e) = ws.flush().await {
                r.failure = Some(format!("send: {e}"));
                return r;
            }
        }
        if in_flight.is_empty() {
            break;
        }
        // Wait for the next pong, skipping heartbeats and anything else.
        let msg = match tokio::time::timeout(reply_timeout, ws.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => {
                r.failure = Some(format!("read: {e}"));
                break;
            }
            Ok(None) => {
                r.failure = Some("connection ended".into());
                break;
            }
            Err(_) => {
                r.failure = Some(format!("no pong within {reply_timeout:?}"));
                break;
            }
        };
        match msg {
            Message::Text(text) => {
                if let Ok(env) = Envelope::parse(text.as_str())
                    && env.kind == "pong"
                    && let Some(sent) = in_flight.pop_front()
                {
                    let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    r.latency.saturating_record(ns.max(1));
                    r.round_trips += 1;
                }
            }
            Message::Close(frame) => {
                r.failure = Some(format!("closed by server: {frame:?}"));
                break;
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    r
}
