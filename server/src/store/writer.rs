//! The single writer: batches commands into transactions, then reports in commit order.
//!
//! Runs on its own OS thread because every backend call blocks (SQLite, fsync). Per batch:
//! 1. decide ([`plan`](super::plan)): offsets, expected versions, idempotency keys, in
//!    command order, at the time the [`Clock`] gives;
//! 2. commit every row in one transaction (group commit);
//! 3. publish the new heads, hand the committed rows to the [`Listeners`] (fan-out), then
//!    answer every command, in the order they arrived.
//!
//! If the commit fails nothing was written: every command of the batch gets the error, the
//! heads are left as they were, and the store reports itself failing (`/health`) until a
//! later write or probe succeeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::plan::{self, Inputs, Outcome, Plan};
use super::upkeep::{Round, Upkeep};
use super::{Backend, Command, Commit, Committed, Head, Heads, Health, Listeners, StoreError};
use crate::clock::{Clock, unix_millis};
use crate::metrics::Metrics;
use crate::retention::Retention;

/// Most commands folded into one transaction.
const MAX_BATCH: usize = 2048;

/// Everything the writer thread owns.
pub(super) struct Setup {
    pub backend: Box<dyn Backend>,
    pub rx: mpsc::Receiver<Command>,
    pub heads: Arc<Heads>,
    pub health: Arc<Health>,
    pub listeners: Arc<dyn Listeners>,
    pub metrics: Arc<Metrics>,
    pub retention: Retention,
    pub dedup_window: Duration,
    pub clock: Arc<dyn Clock>,
}

/// Load the heads, then start the writer thread.
pub(super) fn start(setup: Setup) -> Result<(), StoreError> {
    let Setup {
        mut backend,
        rx,
        heads,
        health,
        listeners,
        metrics,
        retention,
        dedup_window,
        clock,
    } = setup;
    let loaded = backend.heads()?;
    let cache: HashMap<Arc<str>, Head> =
        loaded.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
    heads.set_all(cache.iter().map(|(k, v)| (Arc::clone(k), v.clone())));
    let mut upkeep = Upkeep::default();
    let now = unix_millis(clock.now());
    for (topic, head) in &cache {
        // Loaded topics with an age limit are checked soon (spread by the check budget).
        upkeep.schedule(&retention, topic, None, head, now);
    }
    let writer = Writer {
        backend,
        rx,
        heads,
        health: Arc::clone(&health),
        cache,
        listeners,
        metrics,
        retention,
        dedup_window,
        clock,
        upkeep,
    };
    std::thread::Builder::new()
        .name("tidings-store".into())
        .spawn(move || {
            let _guard = StopGuard(health);
            writer.run();
        })
        .map_err(|e| StoreError::Backend(format!("start writer thread: {e}")))?;
    Ok(())
}

/// Marks the store as stopped if the writer thread dies by panic, so `/health` says so
/// instead of the server silently failing every write.
struct StopGuard(Arc<Health>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the store writer panicked; writes fail until the server restarts");
            self.0
                .stopped
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

struct Writer {
    backend: Box<dyn Backend>,
    rx: mpsc::Receiver<Command>,
    heads: Arc<Heads>,
    health: Arc<Health>,
    /// The writer's own copy of every head (the shared [`Heads`] are for readers).
    cache: HashMap<Arc<str>, Head>,
    listeners: Arc<dyn Listeners>,
    metrics: Arc<Metrics>,
    retention: Retention,
    dedup_window: Duration,
    clock: Arc<dyn Clock>,
    upkeep: Upkeep,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        tracing::debug!("store writer stopped");
    }

    fn process(&mut self, batch: Vec<Command>) {
        let now = self.clock.now();
        let backend = &mut self.backend;
        let plan = plan::plan(
            batch,
            &Inputs {
                heads: &self.cache,
                now,
                dedup_window: self.dedup_window,
            },
            &mut |topic, key, since| backend.find_id(topic, key, since),
            &mut new_epoch,
        );
        let Plan {
            rows,
            origins,
            dirty,
            outcomes,
            snapshots,
            flushes,
            maintain,
            started,
        } = plan;

        if !rows.is_empty() {
            let head_refs: Vec<(&str, &Head)> =
                dirty.iter().map(|(k, v)| (k.as_ref(), v)).collect();
            if let Err(error) = self.backend.commit(&rows, &head_refs) {
                tracing::error!("store commit failed: {error}");
                self.health.failed(&error);
                for outcome in outcomes {
                    match outcome {
                        Outcome::Published { reply, .. } | Outcome::Appended { reply, .. } => {
                            answer(reply, Err(error.clone()))
                        }
                        other => self.finish(other, &rows),
                    }
                }
                self.after(snapshots, flushes, maintain, now);
                return;
            }
            if self.health.recovered() {
                tracing::info!("store writes work again");
            }
            self.heads
                .set_all(dirty.iter().map(|(k, v)| (Arc::clone(k), v.clone())));
            let now_ms = unix_millis(now);
            for (topic, head) in &dirty {
                let before = self.cache.get(topic);
                self.upkeep
                    .schedule(&self.retention, topic, before, head, now_ms);
            }
            self.cache
                .extend(dirty.iter().map(|(k, v)| (Arc::clone(k), v.clone())));
            self.listeners.committed(&Commit {
                rows: &rows,
                origins: &origins,
                heads: &dirty,
                started: started.unwrap_or_else(Instant::now),
            });
        }
        for outcome in outcomes {
            self.finish(outcome, &rows);
        }
        self.after(snapshots, flushes, maintain, now);
    }

    /// The rest of a batch, after its rows: snapshots, upkeep, then flushes (which promise
    /// that everything sent before them is done).
    fn after(
        &mut self,
        snapshots: Vec<plan::SnapshotTask>,
        flushes: Vec<tokio::sync::oneshot::Sender<()>>,
        maintain: bool,
        now: SystemTime,
    ) {
        for s in snapshots {
            let _ = s.done.send(
                self.backend
                    .save_snapshot(&s.stream, s.version, s.state.get()),
            );
        }
        if maintain {
            self.upkeep.maintain(
                Round {
                    backend: self.backend.as_mut(),
                    cache: &mut self.cache,
                    heads: &self.heads,
                    listeners: self.listeners.as_ref(),
                    retention: &self.retention,
                    health: &self.health,
                    metrics: &self.metrics,
                },
                now,
            );
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Answer one command after a successful commit (and its fan-out).
    fn finish(&self, outcome: Outcome, rows: &[super::Row]) {
        match outcome {
            Outcome::Published { row, reply } => {
                let Some(row) = rows.get(row) else { return };
                answer(
                    reply,
                    Ok(Committed {
                        topic: row.topic.to_string(),
                        offset: row.offset,
                        epoch: self.epoch(&row.topic),
                    }),
                );
            }
            Outcome::Duplicate {
                topic,
                offset,
                epoch,
                reply,
            } => answer(
                reply,
                Ok(Committed {
                    topic: topic.to_string(),
                    offset,
                    epoch,
                }),
            ),
            Outcome::Appended {
                stream,
                version,
                reply,
            } => answer(
                reply,
                Ok(Committed {
                    topic: stream.to_string(),
                    offset: version,
                    epoch: self.epoch(&stream),
                }),
            ),
            Outcome::Failed { error, reply } => answer(reply, Err(error)),
        }
    }

    fn epoch(&self, topic: &str) -> String {
        self.cache
            .get(topic)
            .map(|h| h.epoch.clone())
            .unwrap_or_default()
    }
}

fn answer(reply: Option<super::Reply>, outcome: Result<Committed, StoreError>) {
    if let Some(reply) = reply {
        reply(outcome);
    }
}

fn new_epoch() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as u64;
        bytes.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
