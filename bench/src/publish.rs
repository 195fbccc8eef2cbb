//! `publish`: K connections publishing with `ref`, each keeping W publishes in flight;
//! acknowledged (`published`) publishes/s, latency from send to ack, errors by code.
//!
//! This is the durable write path on its own: no subscriber, so what limits it is the
//! server's (and its store's) cost per committed publish. Each connection publishes to its
//! own fresh topic by default (`--topics N` spreads them over N topics instead, `--topics 1`
//! is one contended topic). With `--ids` every publish carries an idempotency key, as the SDK
//! sends, so the store's dedup check is part of what is measured.
//!
//! Connections go round-robin over the `--url` endpoints, so several nodes of one cluster
//! can be loaded at once. An ack that carries no `offset` was not stored (an ephemeral topic)
//! and is counted apart, so a run that silently measured pure pub/sub shows it.
//! Tidings only: the template acknowledges nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{PublishFrames, Ws};
use crate::common::{ErrorTally, Run, emit, extend, fmt_opt, health_stores, opt_r3, r3};
use crate::stats::{self, LatencySummary};

/// Options of `publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Number of publishing connections.
    #[arg(short = 'k', long, default_value_t = 50)]
    pub connections: usize,

    /// Publishes each connection keeps in flight (sent, not yet acknowledged).
    #[arg(short = 'w', long, default_value_t = 32)]
    pub window: usize,

    /// Total publishes over all connections (upper bound; --duration may stop earlier).
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    pub count: u64,

    /// Stop sending new publishes after this many seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,

    /// Size of each message's `data` JSON value in bytes.
    #[arg(short = 'b', long = "payload", default_value_t = 100)]
    pub payload_bytes: usize,

    /// Spread the connections over this many topics (connection i publishes to topic
    /// i mod N); 0 = one topic per connection.
    #[arg(long, default_value_t = 0)]
    pub topics: usize,

    /// Give every publish a unique idempotency `id`, as the SDK does.
    #[arg(long)]
    pub ids: bool,

    /// An ack not arriving within this many seconds ends that connection's loop.
    #[arg(long, default_value_t = 5.0)]
    pub reply_timeout: f64,
}

/// The fields of a reply the bench looks at.
#[derive(Debug, Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, rename = "ref", borrow)]
    r#ref: Option<&'a str>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
}

/// What a reply meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `published` for a publish in flight, stored at an offset (or not: ephemeral).
    Acked { stored: bool },
    /// An `error` for a publish in flight.
    Failed,
    /// A frame that answers nothing in flight, or not a reply at all.
    Ignored,
}

/// One connection's publishes in flight and what came back.
#[derive(Debug)]
struct Book {
    /// Send time by ref (the sequence number).
    in_flight: HashMap<u64, Instant>,
    /// Next sequence number.
    next: u64,
    /// Acks with an offset.
    acked: u64,
    /// Acks without an offset (not stored).
    acked_unstored: u64,
    /// Error replies.
    failed: u64,
    /// Highest offset acknowledged; with a topic per connection, offsets must grow.
    last_offset: u64,
    /// Acks whose offset was not above the previous one (only checked on an own topic).
    offset_regressions: u64,
}

impl Book {
    fn new() -> Self {
        Book {
            in_flight: HashMap::new(),
            next: 0,
            acked: 0,
            acked_unstored: 0,
            failed: 0,
            last_offset: 0,
            offset_regressions: 0,
        }
    }

    /// Registers a send; returns its sequence number (also its `ref`).
    fn send(&mut self, now: Instant) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.in_flight.insert(seq, now);
        seq
    }

    /// Handles one text frame; `Some(latency)` for an ack.
    fn on_frame(
        &mut self,
        text: &str,
        now: Instant,
        own_topic: bool,
        codes: &mut ErrorTally,
    ) -> (Outcome, Option<Duration>) {
        let Ok(reply) = serde_json::from_str::<Reply>(text) else {
            return (Outcome::Ignored, None);
        };
        let Some(seq) = reply.r#ref.and_then(|r| r.parse::<u64>().ok()) else {
            return (Outcome::Ignored, None);
        };
        match reply.kind {
            "published" => {
                let Some(sent) = self.in_flight.remove(&seq) else {
                    return (Outcome::Ignored, None);
                };
                let stored = reply.offset.is_some();
                if let Some(off) = reply.offset {
                    if own_topic && off <= self.last_offset {
                        self.offset_regressions += 1;
                    }
                    self.last_offset = self.last_offset.max(off);
                    self.acked += 1;
                } else {
                    self.acked_unstored += 1;
                }
                (
                    Outcome::Acked { stored },
                    Some(now.saturating_duration_since(sent)),
                )
            }
            "error" => {
                if self.in_flight.remove(&seq).is_none() {
                    return (Outcome::Ignored, None);
                }
                codes.add(&anyhow::anyhow!("{}", reply.code.unwrap_or("no code")));
                self.failed += 1;
                (Outcome::Failed, None)
            }
            _ => (Outcome::Ignored, None),
        }
    }
}

/// What one connection did.
#[derive(Debug)]
struct ConnResult {
    latency: hdrhistogram::Histogram<u64>,
    sent: u64,
    acked: u64,
    acked_unstored: u64,
    failed: u64,
    offset_regressions: u64,
    error_codes: ErrorTally,
    failure: Option<String>,
    /// When its last ack arrived.
    last_ack: Option<Instant>,
}

/// Runs the scenario and prints the report.
pub async fn run(run: Arc<Run>, a: PublishArgs) -> Result<()> {
    if a.connections == 0 {
        bail!("need at least one connection");
    }
    let t_setup = Instant::now();
    let conns = run
        .connect_many("pub", a.connections, 1, None, |ws| async move { Ok(ws) })
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
    let own_topic = a.topics == 0 || a.topics >= a.connections;

    let budget = Arc::new(AtomicI64::new(i64::try_from(a.count).unwrap_or(i64::MAX)));
    let (go_tx, go_rx) = watch::channel(false);
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration.max(0.0));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let topic = if a.topics == 0 {
                format!("bench-{}-t{i}", run.run_id)
            } else {
                format!("bench-{}-t{}", run.run_id, i % a.topics)
            };
            let mut frames = PublishFrames::new(&topic, i as u32, a.payload_bytes).with_refs();
            if a.ids {
                frames = frames.with_ids(&format!("r{}", run.run_id));
            }
            let (budget, mut go, a) = (budget.clone(), go_rx.clone(), a.clone());
            tokio::spawn(async move {
                let _ = go.wait_for(|&g| g).await;
                conn_loop(ws, &a, &frames, &budget, deadline, own_topic).await
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
    let reading = probe.read();
    let stores = health_stores(&run.targets).await;
    // Throughput runs to the last ack, not to the end of a connection's reply timeout.
    let end = results
        .iter()
        .filter_map(|r| r.last_ack)
        .max()
        .unwrap_or(start);
    let elapsed = end.saturating_duration_since(start).as_secs_f64();

    let mut latency = stats::new_histogram();
    let (mut sent, mut acked, mut unstored, mut failed, mut regressions) = (0, 0, 0, 0, 0);
    let mut failures = ErrorTally::default();
    let mut codes = ErrorTally::default();
    for r in &results {
        let _ = latency.add(&r.latency);
        sent += r.sent;
        acked += r.acked;
        unstored += r.acked_unstored;
        failed += r.failed;
        regressions += r.offset_regressions;
        if let Some(f) = &r.failure {
            failures.add(&anyhow::anyhow!("{f}"));
        }
        codes.merge(&r.error_codes);
    }
    let unanswered = sent.saturating_sub(acked + unstored + failed);
    let lat = LatencySummary::from_ns(&latency);
    let pps = stats::per_sec(acked, elapsed);
    let cpu_per = stats::cpu_us_per(reading.server_cpu_ms, acked + unstored);
    let mut summary = vec![
        format!(
            "publish {}: {} connections ({} connected) on {} endpoint(s), window {}, {}, payload {} B{}, setup {setup_secs:.2} s",
            run.args.label,
            a.connections,
            results.len(),
            run.targets.len(),
            a.window.max(1),
            if a.topics == 0 {
                "one topic per connection".to_string()
            } else {
                format!("{} topic(s)", a.topics)
            },
            a.payload_bytes,
            if a.ids { ", with ids" } else { "" }
        ),
        format!(
            "  {acked} publishes acked with an offset in {elapsed:.2} s = {pps:.0} publishes/s (sent {sent}, acked without offset {unstored}, errors {failed}, unanswered {unanswered})"
        ),
        format!("  latency (send to published) {}", lat.line()),
        format!(
            "  server CPU {} = {} per publish; bench CPU {}; stores {stores}",
            fmt_opt(reading.server_cpu_ms, "ms"),
            fmt_opt(cpu_per, "µs"),
            fmt_opt(reading.bench_cpu_ms, "ms")
        ),
        format!(
            "  errors {}, offsets not increasing {regressions}, connect errors {}, connections failed {} {}",
            codes.top(3),
            connect_errors.total(),
            failures.total(),
            failures.top(2)
        ),
    ];
    summary.extend(reading.cluster_line(acked, "publish"));
    let mut report = json!({
        "bench": "publish",
        "label": run.args.label,
        "url": run.args.url,
        "stores": stores,
        "connections": a.connections,
        "connected": results.len(),
        "window": a.window.max(1),
        "topics": a.topics,
        "ids": a.ids,
        "payload_bytes": a.payload_bytes,
        "setup_secs": r3(setup_secs),
        "sent": sent,
        "published": acked,
        "published_unstored": unstored,
        "unanswered": unanswered,
        "elapsed_secs": r3(elapsed),
        "published_per_sec": r3(pps),
        "latency_us": lat,
        "errors": failed,
        "error_codes": codes.top(5),
        "offset_regressions": regressions,
        "server_cpu_ms": opt_r3(reading.server_cpu_ms),
        "server_cpu_us_per_publish": opt_r3(cpu_per),
        "server_rss_kib": reading.server_rss_kib,
        "bench_cpu_ms": opt_r3(reading.bench_cpu_ms),
        "connect_errors": connect_errors.total(),
        "connect_error_kinds": connect_errors.top(3),
        "failed": failures.total(),
        "failure_kinds": failures.top(3),
    });
    extend(&mut report, reading.cluster_json(acked, "publish"));
    emit(&summary, &report);
    Ok(())
}

/// Publishes until the budget or the deadline runs out, then collects the last acks.
async fn conn_loop(
    mut ws: Ws,
    a: &PublishArgs,
    frames: &PublishFrames,
    budget: &AtomicI64,
    deadline: Instant,
    own_topic: bool,
) -> ConnResult {
    let mut book = Book::new();
    let mut r = ConnResult {
        latency: stats::new_histogram(),
        sent: 0,
        acked: 0,
        acked_unstored: 0,
        failed: 0,
        offset_regressions: 0,
        error_codes: ErrorTally::default(),
        failure: None,
        last_ack: None,
    };
    let window = a.window.max(1);
    let reply_timeout = Duration::from_secs_f64(a.reply_timeout.max(0.01));
    let origin = Instant::now();
    let mut sending = true;
    'run: loop {
        // Top up the pipeline while budget and time last.
        let mut fed = false;
        while sending && book.in_flight.len() < window {
            let now = Instant::now();
            if now >= deadline || budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                sending = false;
                break;
            }
            let seq = book.send(now);
            let t_ns = u64::try_from(now.duration_since(origin).as_nanos()).unwrap_or(0);
            if let Err(e) = ws.feed(Message::text(frames.frame(seq, t_ns))).await {
                r.failure = Some(format!("send: {e}"));
                break 'run;
            }
            fed = true;
        }
        if fed && let Err(e) = ws.flush().await {
            r.failure = Some(format!("send: {e}"));
            break;
        }
        if book.in_flight.is_empty() {
            break;
        }
        // One frame (waiting for it), then whatever else is already readable.
        let mut next = match tokio::time::timeout(reply_timeout, ws.next()).await {
            Ok(m) => m,
            Err(_) => {
                r.failure = Some(format!("no reply within {reply_timeout:?}"));
                break;
            }
        };
        loop {
            match next {
                Some(Ok(Message::Text(text))) => {
                    let now = Instant::now();
                    let (outcome, lat) =
                        book.on_frame(text.as_str(), now, own_topic, &mut r.error_codes);
                    if let Some(d) = lat {
                        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                        r.latency.saturating_record(ns.max(1));
                    }
                    if matches!(outcome, Outcome::Acked { .. }) {
                        r.last_ack = Some(now);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    r.failure = Some(format!("closed by server: {frame:?}"));
                    break 'run;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    r.failure = Some(format!("read: {e}"));
                    break 'run;
                }
                None => {
                    r.failure = Some("connection ended".into());
                    break 'run;
                }
            }
            match ws.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    r.sent = book.next;
    r.acked = book.acked;
    r.acked_unstored = book.acked_unstored;
    r.failed = book.failed;
    r.offset_regressions = book.offset_regressions;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_errors_and_strangers_are_told_apart() {
        let t0 = Instant::now();
        let mut b = Book::new();
        let mut codes = ErrorTally::default();
        assert_eq!(b.send(t0), 0);
        assert_eq!(b.send(t0), 1);
        assert_eq!(b.send(t0), 2);
        let later = t0 + Duration::from_millis(3);
        let (o, lat) = b.on_frame(
            r#"{"type":"published","ref":"0","topic":"t","offset":1,"epoch":"e"}"#,
            later,
            true,
            &mut codes,
        );
        assert_eq!(o, Outcome::Acked { stored: true });
        assert_eq!(lat, Some(Duration::from_millis(3)));
        // The same ref again answers nothing in flight.
        let (o, _) = b.on_frame(
            r#"{"type":"published","ref":"0","topic":"t","offset":1}"#,
            later,
            true,
            &mut codes,
        );
        assert_eq!(o, Outcome::Ignored);
        let (o, _) = b.on_frame(
            r#"{"type":"published","ref":"1","topic":"t"}"#,
            later,
            true,
            &mut codes,
        );
        assert_eq!(o, Outcome::Acked { stored: false });
        let (o, _) = b.on_frame(
            r#"{"type":"error","code":"RATE_LIMITED","message":"m","ref":"2"}"#,
            later,
            true,
            &mut codes,
        );
        assert_eq!(o, Outcome::Failed);
        let (o, _) = b.on_frame(r#"{"type":"heartbeat"}"#, later, true, &mut codes);
        assert_eq!(o, Outcome::Ignored);
        assert_eq!((b.acked, b.acked_unstored, b.failed), (1, 1, 1));
        assert!(b.in_flight.is_empty());
        assert_eq!(codes.total(), 1);
    }

    #[test]
    fn offsets_on_an_own_topic_must_grow() {
        let t0 = Instant::now();
        let mut b = Book::new();
        let mut codes = ErrorTally::default();
        for _ in 0..3 {
            b.send(t0);
        }
        for (r, off) in [(0, 5), (1, 4), (2, 6)] {
            let f = format!(r#"{{"type":"published","ref":"{r}","topic":"t","offset":{off}}}"#);
            b.on_frame(&f, t0, true, &mut codes);
        }
        assert_eq!((b.acked, b.offset_regressions, b.last_offset), (3, 1, 6));
    }
}
