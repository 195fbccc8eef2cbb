//! `fanout`: S subscribers on one topic, P publishers, M messages; delivered msgs/s,
//! end-to-end latency, lost / duplicated / out-of-order.
//!
//! Phases: connect and subscribe everyone (not measured) -> publish, bounded by count,
//! time and an in-flight window -> drain (wait for deliveries, bounded by time) -> stop
//! every task and add up.
//!
//! The in-flight window is driven by what subscribers *received*, not by server acks (the
//! template has none): a publisher may run at most `window` messages ahead of the average
//! subscriber. That keeps every server's queues bounded without any server-specific feature.
//!
//! Latency runs from when a message was meant to be sent to when a subscriber parsed it. With
//! `--rate R` each message has an intended send time on an evenly spaced schedule
//! ([`stats::Schedule`]); a publisher that falls behind (the window is full, the socket pushes
//! back, the bench is descheduled) sends late but never skips, and the delay counts as latency:
//! the correction for coordinated omission, as in wrk2. The payload carries both the intended
//! and the actual send time, so the report also gives the service time (from the actual send)
//! and how far the publishers ran behind. Without `--rate` there is no schedule to be behind
//! and latency is service time only.
//!
//! Subscribers connect to `--url`, publishers to `--publish-url` (default: the same). Give two
//! nodes of one cluster (e.g. two `tidings --redis-url` on one Redis) to measure cross-node
//! fan-out: every delivery then travels publisher -> node 1 -> store / Redis -> node 2 ->
//! subscriber, and `--server-pid P1,P2` adds up both nodes' CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{Barrier, Notify, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Envelope, Incoming, PublishFrames, Ws};
use crate::common::{
    ErrorTally, Run, emit, extend, fmt_opt, health_stores, opt_r3, parse_targets, r3,
};
use crate::stats::{self, LatencySummary, Schedule, SeqTracker};

/// Options of `fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Number of subscriber connections (all on the one topic).
    #[arg(short = 's', long, default_value_t = 100)]
    pub subscribers: usize,

    /// Number of publisher connections (not subscribed; messages are split among them).
    #[arg(short = 'p', long, default_value_t = 1)]
    pub publishers: usize,

    /// Total messages to publish (upper bound; --duration may stop publishing earlier).
    #[arg(short = 'm', long, default_value_t = 100_000)]
    pub messages: u64,

    /// Size of each message's `data` JSON value in bytes (sequence, time, padding).
    #[arg(short = 'b', long = "payload", default_value_t = 100)]
    pub payload_bytes: usize,

    /// Target publish rate in messages/s over all publishers; 0 = as fast as the window allows.
    /// With a rate, latency is measured from each message's intended send time on that
    /// schedule (corrected for coordinated omission); without, from the actual send.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Most messages the publishers may be ahead of the average subscriber (default:
    /// 100,000 deliveries' worth, i.e. 100,000 / subscribers, between 10 and 1,000).
    #[arg(long)]
    pub window: Option<u64>,

    /// Stop publishing after this many seconds even if messages remain.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,

    /// After publishing ends, wait at most this many seconds for deliveries; missing ones are lost.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,

    /// Give up (publishing or draining) when no delivery arrives for this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub stall_timeout: f64,

    /// Messages a publisher writes before flushing the socket (as-fast-as-possible mode).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,

    /// Topic name (default: a fresh one per run).
    #[arg(long)]
    pub topic: Option<String>,

    /// Give every publish a unique idempotency `id`, as the SDK does (the server then checks
    /// each against the ids it remembers).
    #[arg(long)]
    pub ids: bool,

    /// Connect the publishers here instead of to `--url` (comma-separated: round-robin),
    /// e.g. another node of the same cluster: cross-node fan-out.
    #[arg(long)]
    pub publish_url: Option<String>,
}

/// Counters shared by publishers and subscribers while messages flow.
#[derive(Debug, Default)]
struct Flow {
    /// Messages published so far (all publishers).
    sent: AtomicU64,
    /// Deliveries so far (all subscribers, duplicates included).
    delivered: AtomicU64,
    /// A waiting publisher wants a wake-up once `delivered` reaches this.
    wake_at: AtomicU64,
    /// Wakes publishers waiting for the window to open.
    notify: Notify,
    /// `error` frames with code RATE_LIMITED sent to publishers.
    rate_limited: AtomicU64,
    /// Other `error` frames sent to publishers.
    publisher_errors: AtomicU64,
}

impl Flow {
    /// Counts one delivery and wakes a waiting publisher if it asked for this many.
    fn delivered_one(&self) {
        let d = self.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        if d >= self.wake_at.load(Ordering::SeqCst) {
            self.wake_at.store(u64::MAX, Ordering::SeqCst);
            self.notify.notify_waiters();
        }
    }
}

/// What one subscriber saw.
#[derive(Debug)]
struct SubResult {
    /// One tracker per publisher.
    trackers: Vec<SeqTracker>,
    /// End-to-end latency samples, ns: from the intended send time when paced, else from the
    /// actual one.
    latency: hdrhistogram::Histogram<u64>,
    /// Service time samples of paced messages, ns: from the actual send time.
    service: hdrhistogram::Histogram<u64>,
    /// When its last bench message arrived (ns since run start).
    last_ns: u64,
    /// Messages without bench data or from an unknown publisher.
    foreign: u64,
    /// Frames that were not JSON.
    parse_errors: u64,
    /// `error` frames received.
    errors: u64,
    /// The server closed the connection (or it failed) before the end.
    closed: Option<String>,
}

/// Why a publisher stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PubEnd {
    /// All its messages were sent.
    Done,
    /// `--duration` ran out.
    Deadline,
    /// No delivery for `--stall-timeout` while the window was full.
    Stalled,
    /// Its connection failed.
    Failed,
}

/// A publisher that finished sending; its connection stays open until the drain ends.
struct PubResult {
    /// How many messages it sent (sequence numbers `0..sent`).
    sent: u64,
    /// Why it stopped.
    end: PubEnd,
    /// How late each message went out against its intended send time, ns (paced only).
    lag: hdrhistogram::Histogram<u64>,
    /// Messages that were due by the time it stopped but not sent (paced only).
    behind: u64,
    /// The write half, kept open so the server does not see the publisher leave early.
    _sink: Option<SplitSink<Ws, Message>>,
    /// Counts `error` frames (e.g. RATE_LIMITED) sent to the publisher into [`Flow`].
    reader: JoinHandle<()>,
}

/// Runs the scenario and prints the report.
pub async fn run(run: Arc<Run>, a: FanoutArgs) -> Result<()> {
    if a.subscribers == 0 || a.publishers == 0 {
        bail!("need at least one subscriber and one publisher");
    }
    if !a.rate.is_finite() {
        bail!("--rate must be a finite number of messages/s (0: as fast as possible)");
    }
    let topic = a
        .topic
        .clone()
        .unwrap_or_else(|| format!("bench-{}", run.run_id));
    let per_pub: Vec<u64> = (0..a.publishers as u64)
        .map(|p| a.messages / a.publishers as u64 + u64::from(p < a.messages % a.publishers as u64))
        .collect();

    let pub_targets = match &a.publish_url {
        Some(urls) => parse_targets(urls, &run.args.secret)?,
        None => run.targets.clone(),
    };

    // Setup: subscribers, then publishers. Not measured.
    let t_setup = Instant::now();
    let sub_frame = client::subscribe_frame(&topic);
    let subs = run
        .connect_many("sub", a.subscribers, 1, None, |mut ws: Ws| {
            let frame = sub_frame.clone();
            async move {
                ws.send(Message::text(frame)).await?;
                client::await_type(&mut ws, "subscribed").await?;
                Ok(ws)
            }
        })
        .await;
    let pubs = run
        .connect_many_on(
            &pub_targets,
            "pub",
            a.publishers,
            1,
            None,
            |ws| async move { Ok(ws) },
        )
        .await;
    let mut connect_errors = ErrorTally::default();
    let subs: Vec<Ws> = subs
        .into_iter()
        .filter_map(|r| r.map_err(|e| connect_errors.add(&e)).ok())
        .collect();
    let pubs: Vec<Ws> = pubs
        .into_iter()
        .filter_map(|r| r.map_err(|e| connect_errors.add(&e)).ok())
        .collect();
    if subs.is_empty() || pubs.len() != a.publishers {
        bail!(
            "setup failed: {} of {} subscribers, {} of {} publishers connected; errors: {}",
            subs.len(),
            a.subscribers,
            pubs.len(),
            a.publishers,
            connect_errors.top(3)
        );
    }
    let setup_secs = t_setup.elapsed().as_secs_f64();
    let n_subs = subs.len() as u64;
    let window = a
        .window
        .unwrap_or((100_000 / n_subs).clamp(10, 1000))
        .max(1);

    // Measured phase.
    let flow = Arc::new(Flow {
        wake_at: AtomicU64::new(u64::MAX),
        ..Flow::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every task first sets itself up (histograms, the pacer thread) and meets the others
    // here; only then does the clock start, so setting up is not counted as publishers
    // running behind. `go` then carries the publishers' start and deadline.
    let ready = Arc::new(Barrier::new(subs.len() + pubs.len() + 1));
    let (go_tx, go_rx) = watch::channel(None);
    let sub_tasks: Vec<JoinHandle<SubResult>> = subs
        .into_iter()
        .map(|ws| {
            tokio::spawn(subscriber(
                ws,
                run.clone(),
                flow.clone(),
                stop_rx.clone(),
                per_pub.clone(),
                ready.clone(),
            ))
        })
        .collect();
    let pub_tasks: Vec<JoinHandle<PubResult>> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            tokio::spawn(publisher(
                ws,
                i as u32,
                per_pub[i],
                topic.clone(),
                a.clone(),
                run.clone(),
                flow.clone(),
                n_subs,
                window,
                ready.clone(),
                go_rx.clone(),
            ))
        })
        .collect();
    ready.wait().await;
    let probe = run.probe();
    let pub_start_ns = run.now_ns();
    // `as` saturates: a huge --duration is "no deadline".
    let deadline_ns = pub_start_ns.saturating_add((a.duration.max(0.0) * 1e9) as u64);
    let _ = go_tx.send(Some(Go {
        start_ns: pub_start_ns,
        deadline_ns,
    }));
    let mut pub_results = Vec::with_capacity(pub_tasks.len());
    for t in pub_tasks {
        pub_results.push(t.await?);
    }
    let publish_secs = (run.now_ns() - pub_start_ns) as f64 / 1e9;
    let sent_total = flow.sent.load(Ordering::SeqCst);

    // Drain: wait for every expected delivery, for progress to stop, or for the timeout.
    let expected = sent_total * n_subs;
    let drain_deadline = Instant::now() + Duration::from_secs_f64(a.drain_timeout.max(0.0));
    let stall = Duration::from_secs_f64(a.stall_timeout.max(0.1));
    let (mut last_seen, mut last_progress) =
        (flow.delivered.load(Ordering::SeqCst), Instant::now());
    let drain_end = loop {
        let d = flow.delivered.load(Ordering::SeqCst);
        if d >= expected {
            break "complete";
        }
        if sub_tasks.iter().all(|t| t.is_finished()) {
            break "all subscribers closed";
        }
        let now = Instant::now();
        if d != last_seen {
            (last_seen, last_progress) = (d, now);
        } else if now - last_progress >= stall {
            break "stalled";
        }
        if now >= drain_deadline {
            break "timeout";
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let reading = probe.read();
    let _ = stop_tx.send(true);
    let sub_stores = health_stores(&run.targets).await;
    let pub_stores = health_stores(&pub_targets).await;

    let mut results = Vec::with_capacity(sub_tasks.len());
    for t in sub_tasks {
        results.push(t.await?);
    }
    let sent: Vec<u64> = pub_results.iter().map(|p| p.sent).collect();
    let mut send_lag = stats::new_histogram();
    for p in &pub_results {
        let _ = send_lag.add(&p.lag);
    }
    let behind: u64 = pub_results.iter().map(|p| p.behind).sum();
    let ends: Vec<PubEnd> = pub_results.iter().map(|p| p.end).collect();
    for p in pub_results {
        p.reader.abort();
    }
    let rate_limited = flow.rate_limited.load(Ordering::SeqCst);
    let pub_errors = flow.publisher_errors.load(Ordering::SeqCst);

    // Add up.
    let counts = stats::total_counts(results.iter().map(|r| r.trackers.as_slice()), &sent);
    let mut latency = stats::new_histogram();
    let mut service = stats::new_histogram();
    let mut last_ns = pub_start_ns;
    let (mut foreign, mut parse_errors, mut sub_errors, mut closed) = (0, 0, 0, 0);
    let mut close_reasons = ErrorTally::default();
    for r in &results {
        // Same bounds on both sides, so adding cannot fail.
        let _ = latency.add(&r.latency);
        let _ = service.add(&r.service);
        last_ns = last_ns.max(r.last_ns);
        foreign += r.foreign;
        parse_errors += r.parse_errors;
        sub_errors += r.errors;
        if let Some(reason) = &r.closed {
            closed += 1;
            close_reasons.add(&anyhow::anyhow!("{reason}"));
        }
    }
    let elapsed = (last_ns - pub_start_ns) as f64 / 1e9;
    let lat = LatencySummary::from_ns(&latency);
    let paced = a.rate > 0.0;
    // Unpaced, latency is the service time: one histogram for both.
    let service = if paced {
        LatencySummary::from_ns(&service)
    } else {
        lat
    };
    let lag = LatencySummary::from_ns(&send_lag);
    let latency_lines = if paced {
        vec![
            format!("  latency (from intended send) {}", lat.line()),
            format!("  service time (from actual send) {}", service.line()),
            format!(
                "  publishers behind schedule (actual - intended send) {}; due but unsent at stop {behind}",
                lag.line()
            ),
        ]
    } else {
        vec![format!(
            "  latency = service time (from actual send; no --rate, no intended schedule) {}",
            lat.line()
        )]
    };
    let delivered_per_sec = stats::per_sec(counts.delivered, elapsed);
    let cpu_per_msg = stats::cpu_us_per(reading.server_cpu_ms, counts.delivered);
    let end_of = |e: PubEnd| ends.iter().filter(|&&x| x == e).count();

    let mut summary = vec![
        format!(
            "fanout {}: {} subscribers ({} connected), {} publishers, payload {} B, rate {}, window {}",
            run.args.label,
            a.subscribers,
            n_subs,
            a.publishers,
            a.payload_bytes,
            if a.rate > 0.0 {
                format!("{} msg/s", a.rate)
            } else {
                "max".into()
            },
            window
        ),
        format!(
            "  setup {setup_secs:.2} s; published {sent_total} of {} in {publish_secs:.2} s ({:.0} msg/s); drain: {drain_end}",
            a.messages,
            stats::per_sec(sent_total, publish_secs)
        ),
        format!(
            "  delivered {} of {} in {elapsed:.2} s = {delivered_per_sec:.0} msg/s; lost {}, duplicated {}, out of order {}",
            counts.delivered, counts.expected, counts.lost, counts.duplicated, counts.out_of_order
        ),
    ];
    summary.extend(latency_lines);
    summary.extend([
        format!(
            "  server CPU {} = {} per delivered message; bench CPU {}",
            fmt_opt(reading.server_cpu_ms, "ms"),
            fmt_opt(cpu_per_msg, "µs"),
            fmt_opt(reading.bench_cpu_ms, "ms")
        ),
        format!(
            "  errors: connect {}, rate limited {rate_limited}, other to publishers {pub_errors}, to subscribers {sub_errors}, subscribers closed early {closed}, unparseable {parse_errors}",
            connect_errors.total()
        ),
    ]);
    summary.extend(reading.cluster_line(counts.delivered, "delivered message"));
    if a.publish_url.is_some() {
        summary.push(format!(
            "  subscribers on {} (store {}), publishers on {} (store {})",
            run.args.url,
            sub_stores,
            a.publish_url.as_deref().unwrap_or_default(),
            pub_stores
        ));
    }
    let mut report = json!({
        "bench": "fanout",
        "label": run.args.label,
        "url": run.args.url,

        "subscribers": a.subscribers,
        "subscribers_connected": n_subs,
        "publishers": a.publishers,
        "messages": a.messages,
        "payload_bytes": a.payload_bytes,
        "rate_target": a.rate,
        "window": window,
        "setup_secs": r3(setup_secs),
        "sent": sent_total,
        "publish_secs": r3(publish_secs),
        "publish_per_sec": r3(stats::per_sec(sent_total, publish_secs)),
        "publishers_done": end_of(PubEnd::Done),
        "publishers_deadline": end_of(PubEnd::Deadline),
        "publishers_stalled": end_of(PubEnd::Stalled),
        "publishers_failed": end_of(PubEnd::Failed),
        "drain_end": drain_end,
        "elapsed_secs": r3(elapsed),
        "expected": counts.expected,
        "delivered": counts.delivered,
        "delivered_per_sec": r3(delivered_per_sec),
        "lost": counts.lost,
        "duplicated": counts.duplicated,
        "out_of_order": counts.out_of_order,
        "unexpected": counts.unexpected + foreign,
        "latency_us": lat,
        "server_cpu_ms": opt_r3(reading.server_cpu_ms),
        "server_cpu_us_per_msg": opt_r3(cpu_per_msg),
        "server_rss_kib": reading.server_rss_kib,
        "bench_cpu_ms": opt_r3(reading.bench_cpu_ms),
        "connect_errors": connect_errors.total(),
        "connect_error_kinds": connect_errors.top(3),
        "rate_limited": rate_limited,
        "publisher_errors": pub_errors,
        "subscriber_errors": sub_errors,
        "subscribers_closed": closed,
        "close_reasons": close_reasons.top(3),
        "parse_errors": parse_errors,
    });
    let mut extra = reading.cluster_json(counts.delivered, "msg");
    // `latency_us` is measured from the intended send time when paced, else from the actual
    // one; `service_time_us` always from the actual one (the same numbers when unpaced).
    extra.insert(
        "latency_from".into(),
        json!(if paced {
            "intended_send"
        } else {
            "actual_send"
        }),
    );
    extra.insert("service_time_us".into(), json!(service));
    extra.insert("send_lag_us".into(), json!(paced.then_some(lag)));
    extra.insert("due_unsent".into(), json!(paced.then_some(behind)));
    extra.insert(
        "publish_url".into(),
        json!(a.publish_url.as_deref().unwrap_or(run.args.url.as_str())),
    );
    extra.insert("stores".into(), sub_stores);
    extra.insert("publish_stores".into(), pub_stores);
    extend(&mut report, extra);
    emit(&summary, &report);
    Ok(())
}

/// One subscriber: reads until told to stop, recording every bench message.
async fn subscriber(
    mut ws: Ws,
    run: Arc<Run>,
    flow: Arc<Flow>,
    mut stop: watch::Receiver<bool>,
    per_pub: Vec<u64>,
    ready: Arc<Barrier>,
) -> SubResult {
    let mut r = SubResult {
        trackers: per_pub.iter().map(|&n| SeqTracker::new(n)).collect(),
        latency: stats::new_histogram(),
        service: stats::new_histogram(),
        last_ns: 0,
        foreign: 0,
        parse_errors: 0,
        errors: 0,
        closed: None,
    };
    ready.wait().await;
    // Created once: polling a fresh `changed()` per frame would take the watch channel's
    // lock on every delivery, shared by all subscribers.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        // `biased`, stream first: the stop signal is looked at only when no frame is ready,
        // which is soon after the publishers stop.
        let msg = tokio::select! {
            biased;
            msg = ws.next() => msg,
            _ = &mut stopped => break,
        };
        match msg {
            Some(Ok(Message::Text(text))) => match client::classify(text.as_str()) {
                Incoming::Message(Some(d)) if (d.p as usize) < r.trackers.len() => {
                    let now = run.now_ns();
                    r.trackers[d.p as usize].record(d.s);
                    let service = now.saturating_sub(d.t).max(1);
                    match d.i {
                        Some(intended) => {
                            r.latency
                                .saturating_record(now.saturating_sub(intended).max(1));
                            r.service.saturating_record(service);
                        }
                        None => r.latency.saturating_record(service),
                    }
                    r.last_ns = now;
                    flow.delivered_one();
                }
                Incoming::Message(_) => r.foreign += 1,
                Incoming::Error => r.errors += 1,
                Incoming::Other => {}
                Incoming::Invalid => r.parse_errors += 1,
            },
            Some(Ok(Message::Close(frame))) => {
                r.closed = Some(format!("closed by server: {frame:?}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                r.closed = Some(format!("read error: {e}"));
                break;
            }
            None => {
                r.closed = Some("connection ended".into());
                break;
            }
        }
    }
    r
}

/// When publishing starts and stops, ns on the run clock: sent to the publishers once every
/// task is ready.
#[derive(Debug, Clone, Copy)]
struct Go {
    /// Publishing starts.
    start_ns: u64,
    /// Publishing stops (`--duration` after the start).
    deadline_ns: u64,
}

/// How long after the start a paced publisher's first slot is: time for the `go` signal to wake
/// it, so that is not counted as it running behind.
const PACE_LEAD_NS: u64 = 1_000_000;

/// One publisher: sets up, waits at `ready` and for `go`, then sends its share, paced by
/// `--rate` or the window, until the deadline.
///
/// Paced, message `seq` is due at its [`Schedule`] time; it is sent then or, if the publisher is
/// behind (the window was full, a write blocked), as soon as possible after, never skipped:
/// messages that fell due meanwhile go out back to back (flushed every `--batch`), each
/// carrying its intended send time for the subscribers to measure from.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    ws: Ws,
    idx: u32,
    count: u64,
    topic: String,
    a: FanoutArgs,
    run: Arc<Run>,
    flow: Arc<Flow>,
    n_subs: u64,
    window: u64,
    ready: Arc<Barrier>,
    mut go: watch::Receiver<Option<Go>>,
) -> PubResult {
    let (mut sink, stream) = ws.split();
    let reader = tokio::spawn(count_errors(stream, flow.clone()));
    let mut frames = PublishFrames::new(&topic, idx, a.payload_bytes);
    if a.ids {
        frames = frames.with_ids(&format!("r{}", run.run_id));
    }
    let mut lag = stats::new_histogram();
    ready.wait().await;
    // `run` sends `go` right after the barrier and keeps the sender until the end; should it
    // not, the deadline is now.
    let Go {
        start_ns,
        deadline_ns,
    } = go
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|g| *g)
        .unwrap_or(Go {
            start_ns: run.now_ns(),
            deadline_ns: run.now_ns(),
        });
    let schedule = Schedule::new(
        start_ns + PACE_LEAD_NS,
        a.rate,
        a.publishers as u64,
        u64::from(idx),
    );
    let pacer = schedule.map(|sched| Pacer::start(idx, run.clone(), sched, count, deadline_ns));
    let deadline = run.instant_at(deadline_ns);
    let low_water = window - window / 4;
    let stall = Duration::from_secs_f64(a.stall_timeout.max(0.1));
    let batch = a.batch.max(1);
    let mut seq = 0u64;
    let mut unflushed = 0usize;
    let in_flight = || {
        flow.sent
            .load(Ordering::SeqCst)
            .saturating_sub(flow.delivered.load(Ordering::SeqCst) / n_subs)
    };

    let end = 'send: loop {
        if seq >= count {
            break PubEnd::Done;
        }
        if Instant::now() >= deadline {
            break PubEnd::Deadline;
        }
        if let Some(sched) = &schedule {
            let due_ns = sched.intended_ns(seq);
            if due_ns > run.now_ns() {
                // Not due yet: whatever is fed goes out now, then wait for the slot.
                if unflushed > 0 && sink.flush().await.is_err() {
                    break PubEnd::Failed;
                }
                unflushed = 0;
                // The pacer's wake-up, or tokio's timer (late, but a fallback) if it is missed.
                let wake = tokio::time::sleep_until(run.instant_at(due_ns).min(deadline).into());
                match &pacer {
                    Some(p) => tokio::select! {
                        _ = p.notify.notified() => {}
                        _ = wake => {}
                    },
                    None => wake.await,
                }
                continue;
            }
        }
        if in_flight() >= window {
            // Flush first: what we hold back cannot be delivered.
            if unflushed > 0 && sink.flush().await.is_err() {
                break PubEnd::Failed;
            }
            unflushed = 0;
            let mut last = flow.delivered.load(Ordering::SeqCst);
            let mut last_progress = Instant::now();
            loop {
                let notified = flow.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let target = flow
                    .sent
                    .load(Ordering::SeqCst)
                    .saturating_sub(low_water)
                    .saturating_mul(n_subs);
                flow.wake_at.fetch_min(target, Ordering::SeqCst);
                let d = flow.delivered.load(Ordering::SeqCst);
                if d >= target {
                    break;
                }
                // A short timeout as a safety net: another publisher may have reset `wake_at`.
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
                let d = flow.delivered.load(Ordering::SeqCst);
                let now = Instant::now();
                if d != last {
                    (last, last_progress) = (d, now);
                } else if now - last_progress >= stall {
                    break 'send PubEnd::Stalled;
                }
                if now >= deadline {
                    break 'send PubEnd::Deadline;
                }
            }
        }
        let now = run.now_ns();
        let frame = match &schedule {
            Some(sched) => {
                lag.saturating_record(sched.lag_ns(seq, now));
                frames.paced_frame(seq, now, sched.intended_ns(seq))
            }
            None => frames.frame(seq, now),
        };
        if sink.feed(Message::text(frame)).await.is_err() {
            break PubEnd::Failed;
        }
        seq += 1;
        flow.sent.fetch_add(1, Ordering::SeqCst);
        unflushed += 1;
        // Paced, a message on time is flushed before the wait for the next slot above; only
        // a catch-up run of overdue messages reaches the batch size.
        if unflushed >= batch {
            if sink.flush().await.is_err() {
                break PubEnd::Failed;
            }
            unflushed = 0;
        }
    };
    drop(pacer);
    let ok = sink.flush().await.is_ok();
    // Due by the time it stopped (at most the deadline, at most its share) but never sent.
    let behind = schedule.map_or(0, |sched| {
        sched
            .due_by(run.now_ns().min(deadline_ns))
            .min(count)
            .saturating_sub(seq)
    });
    PubResult {
        sent: seq,
        end: if ok { end } else { PubEnd::Failed },
        lag,
        behind,
        _sink: Some(sink),
        reader,
    }
}

/// Wakes a paced publisher at its intended send times, more precisely than tokio's timer.
///
/// tokio's timer works in 1 ms ticks and rounds a deadline up to the next one (and the poller's
/// timeout up again), so a publisher sleeping on it would send most messages 1-2 ms after
/// their intended time, and with latency measured from that time the bench's own timer would
/// be counted as the server's latency. Instead a plain thread sleeps to each slot
/// (`nanosleep`, tens of µs of slack) and notifies the publisher; the publisher still sets a
/// tokio timer as a fallback. The thread ends after the last slot, at the deadline, or soon
/// after the pacer is dropped.
struct Pacer {
    /// One permit per slot reached (at most one stored): "look at the time again".
    notify: Arc<Notify>,
    /// Set on drop: the thread stops at its next wake-up (within 50 ms).
    stop: Arc<AtomicBool>,
}

impl Pacer {
    /// Starts the thread for `count` messages on `sched`, none at or after `deadline_ns`. If
    /// the thread cannot be started the publisher falls back to tokio's timer alone.
    fn start(idx: u32, run: Arc<Run>, sched: Schedule, count: u64, deadline_ns: u64) -> Self {
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (n, st) = (notify.clone(), stop.clone());
        let _ = std::thread::Builder::new()
            .name(format!("pacer-{idx}"))
            .spawn(move || {
                let mut seq = 0;
                while seq < count && !st.load(Ordering::Relaxed) {
                    let due = sched.intended_ns(seq);
                    if due >= deadline_ns {
                        break;
                    }
                    let now = run.now_ns();
                    if due > now {
                        // In slices, so a dropped pacer at a low rate does not linger.
                        std::thread::sleep(Duration::from_nanos((due - now).min(50_000_000)));
                        continue;
                    }
                    n.notify_one();
                    seq += 1;
                }
            });
        Pacer { notify, stop }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads a publisher's incoming frames, counting `error` frames into `flow`.
async fn count_errors(mut stream: SplitStream<Ws>, flow: Arc<Flow>) {
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(text) = msg
            && let Ok(env) = Envelope::parse(text.as_str())
            && env.kind == "error"
        {
            if env.code == Some("RATE_LIMITED") {
                flow.rate_limited.fetch_add(1, Ordering::SeqCst);
            } else {
                flow.publisher_errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
