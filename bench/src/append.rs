//! `append`: K connections appending batches of E events to event streams with expected
//! versions; events/s, appends/s, latency percentiles and version conflicts.
//!
//! By default each connection owns one fresh stream, so conflicts should stay at zero; with
//! `--shared-stream` every connection appends to the same stream and conflicts are the point.
//!
//! A connection keeps up to `--window` appends in flight. Each is sent with the version the
//! connection *predicts* the stream will have when it arrives (the last one plus the events
//! already in flight): the server handles one connection's frames in order, so a lone writer
//! never conflicts however deep its pipeline. On `VERSION_CONFLICT` the append is retried at
//! the reported `current_version` (appends already in flight that were predicted from the
//! failed one will conflict as well and are retried in turn). The bookkeeping is in
//! [`Book`], a pure state machine unit-tested below.
//!
//! Latency is from the first send of an append to its `appended` reply (retries included).
//! Only Tidings speaks `append`; the template has no event streams.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Ws;
use crate::common::{ErrorTally, Run, emit, extend, fmt_opt, health_stores, opt_r3, r3};
use crate::stats::{self, LatencySummary};

/// Options of `append`.
#[derive(Debug, Clone, Args)]
pub struct AppendArgs {
    /// Number of connections (each appends to its own stream unless --shared-stream).
    #[arg(short = 'k', long, default_value_t = 10)]
    pub connections: usize,

    /// Events per append (one `append` frame, committed atomically).
    #[arg(short = 'e', long, default_value_t = 10)]
    pub events: usize,

    /// Appends each connection keeps in flight.
    #[arg(short = 'w', long, default_value_t = 16)]
    pub window: usize,

    /// Total appends over all connections (upper bound; retries after a conflict not counted).
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    pub count: u64,

    /// Stop sending new appends after this many seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,

    /// Size of each event's `data` JSON value in bytes.
    #[arg(short = 'b', long = "payload", default_value_t = 100)]
    pub payload_bytes: usize,

    /// Every connection appends to one shared stream (conflicts expected) instead of its own.
    #[arg(long)]
    pub shared_stream: bool,

    /// A reply not arriving within this many seconds ends that connection's loop.
    #[arg(long, default_value_t = 5.0)]
    pub reply_timeout: f64,
}

/// One append in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The generation of the prediction it was sent under (see [`Book`]).
    generation: u64,
    /// When it was first sent (a retry keeps the original time).
    first_sent: Instant,
}

/// What a reply meant to the bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The append committed; its latency from the first send.
    Appended(Duration),
    /// A version conflict; the append is queued for a retry.
    Conflict,
    /// Another error: the append is dropped.
    Failed,
    /// A reply for no append in flight (unknown or repeated ref).
    Unknown,
}

/// Per-connection bookkeeping of expected versions, in-flight appends, retries and counts.
///
/// `next_expected` is the version the stream should have when the next append arrives.
/// Sending adds `events` to it. A conflict on an append sent under the current generation
/// means the prediction is wrong: it is reset to the reported current version and the
/// generation advances, so the stale appends still in flight (which will conflict too) only
/// queue their retry instead of resetting the prediction again.
#[derive(Debug)]
pub struct Book {
    /// Events per append.
    events: u64,
    /// Most appends in flight.
    window: usize,
    /// Expected version for the next send.
    next_expected: u64,
    /// Bumped whenever `next_expected` is corrected after a conflict.
    generation: u64,
    /// Next `ref` to use.
    next_ref: u64,
    /// In flight, by ref.
    in_flight: HashMap<u64, InFlight>,
    /// First-send times of appends waiting to be retried.
    retries: VecDeque<Instant>,
    /// Committed appends.
    pub appended: u64,
    /// Version conflicts received.
    pub conflicts: u64,
    /// Other errors received for an append.
    pub failed: u64,
    /// Replies that matched nothing in flight.
    pub unknown: u64,
    /// Highest version the server reported.
    pub version: u64,
}

impl Book {
    /// Bookkeeping for a connection appending `events` events per append, `window` deep,
    /// to a stream it believes is at `start_version` (0: does not exist yet).
    pub fn new(events: usize, window: usize, start_version: u64) -> Self {
        Book {
            events: events.max(1) as u64,
            window: window.max(1),
            next_expected: start_version,
            generation: 0,
            next_ref: 1,
            in_flight: HashMap::new(),
            retries: VecDeque::new(),
            appended: 0,
            conflicts: 0,
            failed: 0,
            unknown: 0,
            version: start_version,
        }
    }

    /// Whether another append may be sent now.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.window
    }

    /// Whether a conflicted append waits for its retry.
    pub fn has_retry(&self) -> bool {
        !self.retries.is_empty()
    }

    /// Appends in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Registers a send: a pending retry first, else a new append (`new_work` must then have
    /// been granted by the caller's budget). Returns `(ref, expected_version)` to put in the
    /// frame, or `None` when the window is full or there is nothing to send.
    pub fn send(&mut self, now: Instant, new_work: bool) -> Option<(u64, u64)> {
        if !self.has_room() {
            return None;
        }
        let first_sent = match self.retries.pop_front() {
            Some(t) => t,
            None if new_work => now,
            None => return None,
        };
        let r = self.next_ref;
        self.next_ref += 1;
        let expected = self.next_expected;
        self.next_expected += self.events;
        self.in_flight.insert(
            r,
            InFlight {
                generation: self.generation,
                first_sent,
            },
        );
        Some((r, expected))
    }

    /// `appended` for `r` at `version`.
    pub fn on_appended(&mut self, r: u64, version: u64, now: Instant) -> Outcome {
        let Some(f) = self.in_flight.remove(&r) else {
            self.unknown += 1;
            return Outcome::Unknown;
        };
        self.appended += 1;
        self.version = self.version.max(version);
        Outcome::Appended(now.saturating_duration_since(f.first_sent))
    }

    /// `VERSION_CONFLICT` for `r`, the stream being at `current`.
    pub fn on_conflict(&mut self, r: u64, current: u64) -> Outcome {
        let Some(f) = self.in_flight.remove(&r) else {
            self.unknown += 1;
            return Outcome::Unknown;
        };
        self.conflicts += 1;
        self.version = self.version.max(current);
        if f.generation == self.generation {
            self.generation += 1;
            self.next_expected = current;
        }
        self.retries.push_back(f.first_sent);
        Outcome::Conflict
    }

    /// Any other `error` for `r`: the append is given up.
    pub fn on_error(&mut self, r: u64) -> Outcome {
        if self.in_flight.remove(&r).is_none() {
            self.unknown += 1;
            return Outcome::Unknown;
        }
        self.failed += 1;
        Outcome::Failed
    }
}

/// The fields of a reply the bench looks at.
#[derive(Debug, Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, rename = "ref", borrow)]
    r#ref: Option<&'a str>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default)]
    current_version: Option<u64>,
}

/// Builds `append` frames for one stream with a fixed batch of events.
#[derive(Debug, Clone)]
pub struct AppendFrames {
    /// `{"type":"append","stream":"..","expected_version":`
    prefix: String,
    /// `,"events":[...],"ref":"`
    middle: String,
}

impl AppendFrames {
    /// Frames appending `events` events of `payload_bytes` bytes each to `stream`.
    pub fn new(stream: &str, events: usize, payload_bytes: usize) -> Self {
        let stream_json = serde_json::Value::from(stream).to_string();
        let pad = payload_bytes.saturating_sub(r#"{"x":""}"#.len());
        let event = format!(r#"{{"type":"bench","data":{{"x":"{}"}}}}"#, "x".repeat(pad));
        let list = vec![event; events.max(1)].join(",");
        AppendFrames {
            prefix: format!(r#"{{"type":"append","stream":{stream_json},"expected_version":"#),
            middle: format!(r#","events":[{list}],"ref":""#),
        }
    }

    /// The frame for `r` at `expected`.
    pub fn frame(&self, r: u64, expected: u64) -> String {
        format!("{}{expected}{}{r}\"}}", self.prefix, self.middle)
    }
}

/// What one connection did.
#[derive(Debug)]
struct ConnResult {
    latency: hdrhistogram::Histogram<u64>,
    appended: u64,
    conflicts: u64,
    failed: u64,
    unknown: u64,
    error_codes: ErrorTally,
    failure: Option<String>,
}

/// Runs the scenario and prints the report.
pub async fn run(run: Arc<Run>, a: AppendArgs) -> Result<()> {
    if a.connections == 0 {
        bail!("need at least one connection");
    }
    let t_setup = Instant::now();
    let conns = run
        .connect_many("append", a.connections, 1, None, |ws| async move { Ok(ws) })
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

    let budget = Arc::new(AtomicI64::new(i64::try_from(a.count).unwrap_or(i64::MAX)));
    let (go_tx, go_rx) = watch::channel(false);
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration.max(0.0));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let stream = if a.shared_stream {
                format!("bench-{}-shared", run.run_id)
            } else {
                format!("bench-{}-s{i}", run.run_id)
            };
            let frames = AppendFrames::new(&stream, a.events, a.payload_bytes);
            let (budget, mut go, a) = (budget.clone(), go_rx.clone(), a.clone());
            tokio::spawn(async move {
                let _ = go.wait_for(|&g| g).await;
                conn_loop(ws, &a, &frames, &budget, deadline).await
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
    let stores = health_stores(&run.targets).await;

    let mut latency = stats::new_histogram();
    let (mut appends, mut conflicts, mut failed, mut unknown) = (0, 0, 0, 0);
    let mut failures = ErrorTally::default();
    let mut codes = ErrorTally::default();
    for r in &results {
        let _ = latency.add(&r.latency);
        appends += r.appended;
        conflicts += r.conflicts;
        failed += r.failed;
        unknown += r.unknown;
        if let Some(f) = &r.failure {
            failures.add(&anyhow::anyhow!("{f}"));
        }
        codes.merge(&r.error_codes);
    }
    let events = appends * a.events.max(1) as u64;
    let lat = LatencySummary::from_ns(&latency);
    let eps = stats::per_sec(events, elapsed);
    let aps = stats::per_sec(appends, elapsed);
    let cpu_per_event = stats::cpu_us_per(reading.server_cpu_ms, events);
    let cpu_per_append = stats::cpu_us_per(reading.server_cpu_ms, appends);
    let mut summary = vec![
        format!(
            "append {}: {} connections ({} connected), {} events per append, window {}, {}, setup {setup_secs:.2} s",
            run.args.label,
            a.connections,
            results.len(),
            a.events.max(1),
            a.window.max(1),
            if a.shared_stream {
                "one shared stream"
            } else {
                "one stream per connection"
            }
        ),
        format!(
            "  {appends} appends ({events} events) in {elapsed:.2} s = {aps:.0} appends/s, {eps:.0} events/s"
        ),
        format!("  latency (first send to appended) {}", lat.line()),
        format!(
            "  server CPU {} = {} per event, {} per append; bench CPU {}",
            fmt_opt(reading.server_cpu_ms, "ms"),
            fmt_opt(cpu_per_event, "µs"),
            fmt_opt(cpu_per_append, "µs"),
            fmt_opt(reading.bench_cpu_ms, "ms")
        ),
        format!(
            "  conflicts {conflicts} (retried), other errors {failed} {}, connect errors {}, connections failed {}",
            codes.top(3),
            connect_errors.total(),
            failures.total()
        ),
    ];
    summary.extend(reading.cluster_line(events, "event"));
    let mut report = json!({
        "bench": "append",
        "label": run.args.label,
        "url": run.args.url,
        "stores": stores,
        "connections": a.connections,
        "connected": results.len(),
        "events_per_append": a.events.max(1),
        "window": a.window.max(1),
        "payload_bytes": a.payload_bytes,
        "shared_stream": a.shared_stream,
        "setup_secs": r3(setup_secs),
        "appends": appends,
        "events": events,
        "elapsed_secs": r3(elapsed),
        "appends_per_sec": r3(aps),
        "events_per_sec": r3(eps),
        "latency_us": lat,
        "conflicts": conflicts,
        "errors": failed,
        "error_codes": codes.top(5),
        "unknown_replies": unknown,
        "server_cpu_ms": opt_r3(reading.server_cpu_ms),
        "server_cpu_us_per_event": opt_r3(cpu_per_event),
        "server_cpu_us_per_append": opt_r3(cpu_per_append),
        "server_rss_kib": reading.server_rss_kib,
        "bench_cpu_ms": opt_r3(reading.bench_cpu_ms),
        "connect_errors": connect_errors.total(),
        "connect_error_kinds": connect_errors.top(3),
        "failed": failures.total(),
        "failure_kinds": failures.top(3),
    });
    extend(&mut report, reading.cluster_json(events, "event"));
    emit(&summary, &report);
    Ok(())
}

/// Appends until the budget or the deadline runs out, then collects the last replies.
async fn conn_loop(
    mut ws: Ws,
    a: &AppendArgs,
    frames: &AppendFrames,
    budget: &AtomicI64,
    deadline: Instant,
) -> ConnResult {
    let mut book = Book::new(a.events, a.window, 0);
    let mut r = ConnResult {
        latency: stats::new_histogram(),
        appended: 0,
        conflicts: 0,
        failed: 0,
        unknown: 0,
        error_codes: ErrorTally::default(),
        failure: None,
    };
    let reply_timeout = Duration::from_secs_f64(a.reply_timeout.max(0.01));
    let mut sending = true;
    loop {
        // Top up the pipeline: retries first, then new appends while budget and time last.
        let mut fed = false;
        while book.has_room() {
            let now = Instant::now();
            if now >= deadline {
                sending = false;
            }
            let new_work = sending
                && !book.has_retry()
                && (budget.fetch_sub(1, Ordering::Relaxed) > 0 || {
                    sending = false;
                    false
                });
            // After the deadline, conflicted appends are not retried.
            let Some((reference, expected)) = (if sending || new_work {
                book.send(now, new_work)
            } else {
                None
            }) else {
                break;
            };
            if let Err(e) = ws
                .feed(Message::text(frames.frame(reference, expected)))
                .await
            {
                r.failure = Some(format!("send: {e}"));
                return finish(r, &book);
            }
            fed = true;
        }
        if fed && let Err(e) = ws.flush().await {
            r.failure = Some(format!("send: {e}"));
            return finish(r, &book);
        }
        if book.in_flight() == 0 {
            break;
        }
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
                r.failure = Some(format!("no reply within {reply_timeout:?}"));
                break;
            }
        };
        match msg {
            Message::Text(text) => {
                let Ok(reply) = serde_json::from_str::<Reply>(text.as_str()) else {
                    continue;
                };
                let Some(reference) = reply.r#ref.and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                match (reply.kind, reply.code) {
                    ("appended", _) => {
                        let v = reply.version.unwrap_or(0);
                        if let Outcome::Appended(d) = book.on_appended(reference, v, Instant::now())
                        {
                            let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                            r.latency.saturating_record(ns.max(1));
                        }
                    }
                    ("error", Some("VERSION_CONFLICT")) => {
                        book.on_conflict(reference, reply.current_version.unwrap_or(0));
                    }
                    ("error", code) => {
                        r.error_codes
                            .add(&anyhow::anyhow!("{}", code.unwrap_or("no code")));
                        book.on_error(reference);
                    }
                    _ => {}
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
    finish(r, &book)
}

fn finish(mut r: ConnResult, book: &Book) -> ConnResult {
    r.appended = book.appended;
    r.conflicts = book.conflicts;
    r.failed = book.failed;
    r.unknown = book.unknown;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        // A fixed origin so latencies are exact.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn a_lone_pipelined_writer_predicts_every_version() {
        let mut b = Book::new(10, 3, 0);
        assert_eq!(b.send(at(0), true), Some((1, 0)));
        assert_eq!(b.send(at(0), true), Some((2, 10)));
        assert_eq!(b.send(at(1), true), Some((3, 20)));
        assert_eq!(b.send(at(1), true), None, "window of 3 is full");
        assert_eq!(
            b.on_appended(1, 10, at(5)),
            Outcome::Appended(Duration::from_millis(5))
        );
        assert_eq!(b.send(at(5), true), Some((4, 30)));
        for (r, v) in [(2, 20), (3, 30), (4, 40)] {
            assert!(matches!(b.on_appended(r, v, at(9)), Outcome::Appended(_)));
        }
        assert_eq!(
            (b.appended, b.conflicts, b.version, b.in_flight()),
            (4, 0, 40, 0)
        );
        assert_eq!(
            b.send(at(9), false),
            None,
            "no budget, no retry: nothing to send"
        );
    }

    #[test]
    fn a_conflict_resets_the_prediction_once_and_retries_everything_stale() {
        let mut b = Book::new(2, 4, 0);
        // Sent at 0, 2, 4; another writer got in first and the stream is at 5.
        for _ in 0..3 {
            assert!(b.send(at(0), true).is_some());
        }
        assert_eq!(b.on_conflict(1, 5), Outcome::Conflict);
        // The retry goes out at the corrected version, before any new work.
        assert!(b.has_retry());
        assert_eq!(b.send(at(3), true), Some((4, 5)));
        // The two stale appends conflict too, but do not reset the prediction again.
        assert_eq!(b.on_conflict(2, 5), Outcome::Conflict);
        assert_eq!(b.on_conflict(3, 5), Outcome::Conflict);
        assert_eq!(b.send(at(4), false), Some((5, 7)));
        assert_eq!(b.send(at(4), false), Some((6, 9)));
        assert_eq!(b.conflicts, 3);
        // Latency of a retried append runs from its first send.
        assert_eq!(
            b.on_appended(4, 7, at(10)),
            Outcome::Appended(Duration::from_millis(10))
        );
        assert!(matches!(b.on_appended(5, 9, at(10)), Outcome::Appended(_)));
        assert!(matches!(b.on_appended(6, 11, at(10)), Outcome::Appended(_)));
        assert_eq!((b.appended, b.version, b.in_flight()), (3, 11, 0));
        assert!(!b.has_retry());
    }

    #[test]
    fn a_conflict_under_the_new_prediction_resets_it_again() {
        let mut b = Book::new(1, 2, 0);
        assert_eq!(b.send(at(0), true), Some((1, 0)));
        b.on_conflict(1, 3);
        assert_eq!(b.send(at(0), false), Some((2, 3)));
        b.on_conflict(2, 4); // someone else appended again
        assert_eq!(b.send(at(0), false), Some((3, 4)));
        assert_eq!(b.conflicts, 2);
    }

    #[test]
    fn errors_and_unknown_refs_are_counted_apart() {
        let mut b = Book::new(1, 2, 0);
        assert_eq!(b.send(at(0), true), Some((1, 0)));
        assert_eq!(b.on_error(1), Outcome::Failed);
        assert_eq!(b.on_error(1), Outcome::Unknown);
        assert_eq!(b.on_appended(99, 1, at(0)), Outcome::Unknown);
        assert_eq!(b.on_conflict(98, 1), Outcome::Unknown);
        assert_eq!((b.failed, b.unknown, b.appended, b.conflicts), (1, 3, 0, 0));
        assert!(!b.has_retry());
    }

    #[test]
    fn frames_decode_as_the_server_expects() {
        let f = AppendFrames::new("s\"1", 3, 50);
        let text = f.frame(7, 42);
        let Ok(tidings_protocol::ClientMessage::Append(m)) =
            tidings_protocol::ClientMessage::decode(&text)
        else {
            panic!("not an append: {text}")
        };
        assert_eq!(m.stream, "s\"1");
        assert_eq!(m.expected_version, Some(42));
        assert_eq!(m.r#ref.as_deref(), Some("7"));
        assert_eq!(m.events.len(), 3);
        assert_eq!(m.events[0].data.get().len(), 50);
    }

    #[test]
    fn replies_parse() {
        let ok: Reply =
            serde_json::from_str(r#"{"type":"appended","ref":"3","stream":"s","version":30}"#)
                .expect("appended");
        assert_eq!(
            (ok.kind, ok.r#ref, ok.version),
            ("appended", Some("3"), Some(30))
        );
        let c: Reply = serde_json::from_str(
            r#"{"type":"error","code":"VERSION_CONFLICT","message":"m","ref":"4","current_version":12}"#,
        )
        .expect("conflict");
        assert_eq!(
            (c.code, c.r#ref, c.current_version),
            (Some("VERSION_CONFLICT"), Some("4"), Some(12))
        );
    }
}
