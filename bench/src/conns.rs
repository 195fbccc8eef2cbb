//! `conns`: open C idle connections, hold them, report how many held and what they cost the
//! server in resident memory.
//!
//! Connections are spread over several loopback source addresses (127.0.0.2, .3, ...) so the
//! ephemeral-port range of one address is not the limit. This process needs one file
//! descriptor per connection, so C is clamped to our own open-file limit (with a message),
//! never left to fail with EMFILE halfway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws, WsConfig};
use crate::common::{ErrorTally, Run, emit, fmt_opt, opt_r3, r3};
use crate::procfs;
use crate::stats;

/// File descriptors kept free for everything that is not a test connection.
const FD_RESERVE: u64 = 64;

/// Options of `conns`.
#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    /// Number of idle connections to open (clamped to this process's open-file limit).
    #[arg(short = 'c', long, default_value_t = 10_000)]
    pub connections: usize,

    /// Seconds to hold the connections open once all attempts have finished.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,

    /// Loopback source addresses to spread over when --source-ips is not given.
    #[arg(long, default_value_t = 4)]
    pub default_source_ips: usize,
}

/// Runs the scenario and prints the report.
pub async fn run(run: Arc<Run>, a: ConnsArgs) -> Result<()> {
    let limit = procfs::read_open_files_limit();
    let soft = limit.and_then(|l| l.soft);
    let open_now = procfs::count_open_fds().unwrap_or(0) as u64;
    let budget = soft.map(|s| s.saturating_sub(open_now + FD_RESERVE));
    let wanted = a.connections;
    let n = match budget {
        Some(b) if (wanted as u64) > b => {
            eprintln!(
                "conns: clamping {wanted} connections to {b}: this process's open-file limit is {} \
                 ({open_now} open, {FD_RESERVE} kept in reserve)",
                soft.unwrap_or(0)
            );
            usize::try_from(b).unwrap_or(usize::MAX)
        }
        _ => wanted,
    };
    if n == 0 {
        bail!("no file descriptors left for connections (open-file limit {soft:?})");
    }

    let rss_before = run.server_rss_kib();
    let self_rss_before = procfs::read_rss_kib("self");
    let probe = run.probe();

    // Small buffers: these connections only ever see a few short frames.
    let config = WsConfig::default()
        .read_buffer_size(run.args.read_buffer.clamp(256, 4096))
        .write_buffer_size(0)
        .max_message_size(Some(64 << 10))
        .max_frame_size(Some(64 << 10));
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now();
    // Each connection starts reading as soon as it is open, so it answers the server's
    // pings even while the rest are still connecting.
    let results = run
        .connect_many("idle", n, a.default_source_ips, Some(config), |ws| {
            let stop = stop_rx.clone();
            async move { Ok(tokio::spawn(idle(ws, stop))) }
        })
        .await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let mut errors = ErrorTally::default();
    let mut held = Vec::with_capacity(n);
    for r in results {
        match r {
            Ok(task) => held.push(task),
            Err(e) => errors.add(&e),
        }
    }
    let connected = held.len();
    eprintln!(
        "conns: {connected} of {n} connected in {connect_secs:.2} s; holding for {:.1} s",
        a.hold
    );

    tokio::time::sleep(Duration::from_secs_f64(a.hold.max(0.0))).await;
    let rss_after = run.server_rss_kib();
    let self_rss_after = procfs::read_rss_kib("self");
    let mut health_clients = Some(0);
    for t in &run.targets {
        health_clients = match (health_clients, client::health_clients(t.addr).await) {
            (Some(sum), Some(c)) => Some(sum + c),
            _ => None,
        };
    }
    let reading = probe.read();
    let still_open = held.iter().filter(|t| !t.is_finished()).count();
    let _ = stop_tx.send(true);
    let mut dropped = ErrorTally::default();
    for t in held {
        if let Ok(Some(reason)) = t.await {
            dropped.add(&anyhow::anyhow!("{reason}"));
        }
    }

    let rss_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if still_open > 0 => {
            Some(a.saturating_sub(b) as f64 / still_open as f64)
        }
        _ => None,
    };
    let bench_rss_per_conn = match (self_rss_before, self_rss_after) {
        (Some(b), Some(a)) if still_open > 0 => {
            Some(a.saturating_sub(b) as f64 / still_open as f64)
        }
        _ => None,
    };
    let cpu_per = stats::cpu_us_per(reading.server_cpu_ms, connected as u64);
    let summary = vec![
        format!(
            "conns {}: {connected} of {n} connected ({wanted} requested) in {connect_secs:.2} s = {:.0} conn/s",
            run.args.label,
            stats::per_sec(connected as u64, connect_secs)
        ),
        format!(
            "  after {:.1} s hold: {still_open} still open; server /health clients: {}",
            a.hold,
            health_clients.map_or("n/a".into(), |c| c.to_string())
        ),
        format!(
            "  server RSS {} -> {} KiB = {} per connection; bench RSS {} per connection",
            rss_before.map_or("n/a".into(), |v| v.to_string()),
            rss_after.map_or("n/a".into(), |v| v.to_string()),
            fmt_opt(rss_per_conn, "KiB"),
            fmt_opt(bench_rss_per_conn, "KiB"),
        ),
        format!(
            "  server CPU {} = {} per connection",
            fmt_opt(reading.server_cpu_ms, "ms"),
            fmt_opt(cpu_per, "µs")
        ),
        format!(
            "  errors: connect {} {}; dropped while idle {}",
            errors.total(),
            errors.top(3),
            dropped.total()
        ),
    ];
    let report = json!({
        "bench": "conns",
        "label": run.args.label,
        "url": run.args.url,
        "requested": wanted,
        "attempted": n,
        "clamped": n < wanted,
        "open_files_soft_limit": soft,
        "connected": connected,
        "still_open": still_open,
        "health_clients": health_clients,
        "connect_secs": r3(connect_secs),
        "connects_per_sec": r3(stats::per_sec(connected as u64, connect_secs)),
        "hold_secs": a.hold,
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_rss_kib_per_conn": opt_r3(rss_per_conn),
        "bench_rss_kib_per_conn": opt_r3(bench_rss_per_conn),
        "server_cpu_ms": opt_r3(reading.server_cpu_ms),
        "server_cpu_us_per_conn": opt_r3(cpu_per),
        "bench_cpu_ms": opt_r3(reading.bench_cpu_ms),
        "connect_errors": errors.total(),
        "connect_error_kinds": errors.top(3),
        "dropped": dropped.total(),
        "dropped_kinds": dropped.top(3),
    });
    emit(&summary, &report);
    Ok(())
}

/// Holds one connection: reads (so pings are answered and heartbeats consumed) until told to
/// stop. Returns why it ended early, if the server closed it.
async fn idle(mut ws: Ws, mut stop: watch::Receiver<bool>) -> Option<String> {
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => return Some(format!("closed by server: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(format!("read error: {e}")),
                None => return Some("connection ended".into()),
            },
        }
    }
}
