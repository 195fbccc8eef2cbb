//! The single writer: batches commands into transactions, then fans out in commit order.
//!
//! Runs on its own OS thread because every backend call blocks (SQLite, fsync). Per batch:
//! 1. decide: assign offsets, check expected versions and idempotency keys, in command order;
//! 2. commit everything in one transaction (group commit);
//! 3. publish the new heads, then fan out each committed row through the hub and answer
//!    every command, in the order they arrived.
//!
//! If the commit fails nothing was written: every command of the batch gets the error, the
//! in-memory heads are left as they were, and the store reports itself failing (`/health`)
//! until a later write or probe succeeds.
//!
//! Between batches, `Maintain` (once a second) does bounded upkeep whose cost follows what
//! changed, never the number of topics ever written:
//! * count retention: only topics a commit pushed over their `max_messages`;
//! * age retention: a queue ordered by when each topic's oldest message expires;
//! * freeing: a topic that holds nothing and has no subscriber loses its head (memory and
//!   database row); its next message starts a new history (offset 1, a new epoch).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tidings_protocol::server::{Appended, Error as ErrorFrame, Message, Published};
use tidings_protocol::{ErrorCode, Json, RawValue, ServerMessage};
use tokio::sync::mpsc;

use super::{
    Backend, Command, Committed, Head, Heads, Health, IdempotencyKey, Reply, Row, StoreError,
};
use crate::clock;
use crate::hub::{ConnId, DurableRun, Hub};
use crate::metrics::Metrics;
use crate::retention::Retention;

/// Most commands folded into one transaction.
const MAX_BATCH: usize = 2048;
/// Most frames in one fan-out run (one queue slot of each subscriber): a queue of
/// `queue_capacity` slots then holds at most this many times as many frames, all shared.
const MAX_RUN: usize = 64;
/// Most rows one `Maintain` deletes, so upkeep never stalls writes for long.
const TRIM_CHUNK: usize = 5_000;
/// Most topics one `Maintain` examines for retention.
const MAX_CHECKS: usize = 1_000;
/// Most topics one `Maintain` frees (in one transaction).
const MAX_FREES: usize = 10_000;

/// Everything the writer thread owns.
pub(super) struct Setup {
    pub backend: Box<dyn Backend>,
    pub rx: mpsc::Receiver<Command>,
    pub heads: Arc<Heads>,
    pub health: Arc<Health>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub retention: Retention,
    pub dedup_window: Duration,
}

/// Load the heads, then start the writer thread.
pub(super) fn start(setup: Setup) -> Result<(), StoreError> {
    let Setup {
        mut backend,
        rx,
        heads,
        health,
        hub,
        metrics,
        retention,
        dedup_window,
    } = setup;
    let loaded = backend.heads()?;
    let cache: HashMap<Arc<str>, Head> =
        loaded.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
    heads.set_all(cache.iter().map(|(k, v)| (Arc::clone(k), v.clone())));
    let mut writer = Writer {
        backend,
        rx,
        heads,
        health: Arc::clone(&health),
        cache,
        hub,
        metrics,
        retention,
        dedup_window,
        upkeep: Upkeep::default(),
    };
    let now = unix_millis(SystemTime::now());
    let loaded: Vec<(Arc<str>, Head)> = writer
        .cache
        .iter()
        .map(|(k, v)| (Arc::clone(k), v.clone()))
        .collect();
    for (topic, head) in &loaded {
        // Loaded topics with an age limit are checked soon (spread by the check budget).
        writer.schedule(topic, None, head, now);
    }
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
    cache: HashMap<Arc<str>, Head>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    retention: Retention,
    dedup_window: Duration,
    upkeep: Upkeep,
}

/// What background upkeep has to look at: only topics whose writes made it necessary.
#[derive(Default)]
struct Upkeep {
    /// Topics over their count limit, in the order they went over.
    over_count: VecDeque<Arc<str>>,
    /// The same topics, so each is queued once.
    over_count_set: HashSet<Arc<str>>,
    /// Topics with an age limit and stored messages, by when their oldest message expires
    /// (milliseconds since the Unix epoch). A topic may appear twice; a stale entry costs one
    /// check.
    by_age: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    /// Topics that may hold nothing: freed if so and nobody subscribes.
    to_free: HashSet<Arc<str>>,
}

/// What to do for one command once the batch is committed.
enum Outcome {
    Published {
        row: usize,
        publisher: Option<crate::hub::Mailbox>,
        reply: Reply,
        started: Instant,
    },
    Duplicate {
        topic: Arc<str>,
        offset: u64,
        epoch: String,
        reply: Reply,
    },
    Appended {
        stream: Arc<str>,
        version: u64,
        reply: Reply,
    },
    Conflict {
        stream: Arc<str>,
        expected: u64,
        current: u64,
        reply: Reply,
    },
    Failed {
        error: StoreError,
        reply: Reply,
    },
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// An event as subscribers of its stream see it in `message.data`.
#[derive(Serialize)]
struct Envelope<'a> {
    r#type: &'a str,
    data: &'a RawValue,
}

/// What an idempotency key already stands for.
enum Known {
    /// Nothing within the window: store the publish.
    New,
    /// The same payload was stored at this offset: acknowledge it again.
    Same(u64),
    /// Another payload was stored at this offset: refuse.
    Different(u64),
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

    fn head_for(&self, dirty: &HashMap<Arc<str>, Head>, topic: &Arc<str>) -> Head {
        dirty
            .get(topic)
            .or_else(|| self.cache.get(topic))
            .cloned()
            .unwrap_or_else(|| Head {
                epoch: new_epoch(),
                latest: 0,
                first: 1,
            })
    }

    /// Look `key` up among this batch's rows, then in the backend.
    fn known(
        &mut self,
        topic: &Arc<str>,
        key: &IdempotencyKey,
        data: &Json,
        in_batch: &HashMap<(Arc<str>, IdempotencyKey), usize>,
        rows: &[Row],
        since: &str,
    ) -> Result<Known, StoreError> {
        let found = match in_batch
            .get(&(Arc::clone(topic), key.clone()))
            .and_then(|&i| rows.get(i))
        {
            Some(row) => Some((row.offset, row.data.clone())),
            None => self.backend.find_id(topic, key, since)?,
        };
        Ok(match found {
            None => Known::New,
            Some((offset, stored)) if stored.get() == data.get() => Known::Same(offset),
            Some((offset, _)) => Known::Different(offset),
        })
    }

    fn process(&mut self, batch: Vec<Command>) {
        let now = SystemTime::now();
        let timestamp = clock::rfc3339(now);
        let dedup_since = clock::rfc3339(now.checked_sub(self.dedup_window).unwrap_or(UNIX_EPOCH));
        let mut rows: Vec<Row> = Vec::new();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        let mut dirty: HashMap<Arc<str>, Head> = HashMap::new();
        let mut in_batch: HashMap<(Arc<str>, IdempotencyKey), usize> = HashMap::new();
        let mut maintain = false;

        for command in batch {
            match command {
                Command::Publish {
                    topic,
                    data,
                    from,
                    publisher,
                    id,
                    reply,
                    started,
                } => {
                    if let Some(key) = &id {
                        match self.known(&topic, key, &data, &in_batch, &rows, &dedup_since) {
                            Ok(Known::New) => {}
                            Ok(Known::Same(offset)) => {
                                let epoch = self.head_for(&dirty, &topic).epoch;
                                outcomes.push(Outcome::Duplicate {
                                    topic,
                                    offset,
                                    epoch,
                                    reply,
                                });
                                continue;
                            }
                            Ok(Known::Different(offset)) => {
                                let error = StoreError::IdempotencyConflict {
                                    id: key.id.clone(),
                                    offset,
                                };
                                outcomes.push(Outcome::Failed { error, reply });
                                continue;
                            }
                            Err(error) => {
                                outcomes.push(Outcome::Failed { error, reply });
                                continue;
                            }
                        }
                    }
                    let mut head = self.head_for(&dirty, &topic);
                    head.latest += 1;
                    if let Some(key) = &id {
                        in_batch.insert((Arc::clone(&topic), key.clone()), rows.len());
                    }
                    rows.push(Row {
                        topic: Arc::clone(&topic),
                        offset: head.latest,
                        data,
                        from,
                        timestamp: timestamp.clone(),
                        key: id,
                        event_type: None,
                    });
                    dirty.insert(topic, head);
                    outcomes.push(Outcome::Published {
                        row: rows.len() - 1,
                        publisher,
                        reply,
                        started,
                    });
                }
                Command::Append {
                    stream,
                    expected,
                    events,
                    from,
                    reply,
                } => {
                    let mut head = self.head_for(&dirty, &stream);
                    if let Some(expected) = expected
                        && expected != head.latest
                    {
                        outcomes.push(Outcome::Conflict {
                            stream,
                            expected,
                            current: head.latest,
                            reply,
                        });
                        continue;
                    }
                    let start = rows.len();
                    let mut failed = None;
                    for event in &events {
                        let envelope = Envelope {
                            r#type: &event.r#type,
                            data: &event.data,
                        };
                        match serde_json::value::to_raw_value(&envelope) {
                            Ok(data) => {
                                head.latest += 1;
                                rows.push(Row {
                                    topic: Arc::clone(&stream),
                                    offset: head.latest,
                                    data,
                                    from: from.clone(),
                                    timestamp: timestamp.clone(),
                                    key: None,
                                    event_type: Some(event.r#type.clone()),
                                });
                            }
                            Err(e) => {
                                failed = Some(StoreError::Backend(e.to_string()));
                                break;
                            }
                        }
                    }
                    if let Some(error) = failed {
                        rows.truncate(start);
                        outcomes.push(Outcome::Failed { error, reply });
                        continue;
                    }
                    let version = head.latest;
                    if start != rows.len() {
                        dirty.insert(Arc::clone(&stream), head);
                    }
                    outcomes.push(Outcome::Appended {
                        stream,
                        version,
                        reply,
                    });
                }
                Command::Snapshot {
                    stream,
                    version,
                    state,
                    done,
                } => {
                    let _ = done.send(self.backend.save_snapshot(&stream, version, state.get()));
                }
                Command::Maintain => maintain = true,
                Command::Flush(done) => outcomes.push(Outcome::Flushed(done)),
            }
        }

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
                return;
            }
            if self.health.recovered() {
                tracing::info!("store writes work again");
            }
            self.heads
                .set_all(dirty.iter().map(|(k, v)| (Arc::clone(k), v.clone())));
            let now_ms = unix_millis(now);
            for (topic, head) in &dirty {
                let before = self.cache.get(topic).cloned();
                self.schedule(topic, before.as_ref(), head, now_ms);
            }
            self.cache.extend(dirty);
            self.fan_out(&rows, &outcomes);
        }
        for outcome in outcomes {
            self.finish(outcome, &rows);
        }
        if maintain {
            self.maintain();
        }
    }

    /// Note what upkeep `topic` needs now that its head went from `before` to `after`.
    fn schedule(&mut self, topic: &Arc<str>, before: Option<&Head>, after: &Head, now_ms: u64) {
        if after.is_empty() {
            self.upkeep.to_free.insert(Arc::clone(topic));
            return;
        }
        let limits = self.retention.limits(topic);
        if let Some(max) = limits.max_messages
            && stored(after) > max
            && self.upkeep.over_count_set.insert(Arc::clone(topic))
        {
            self.upkeep.over_count.push_back(Arc::clone(topic));
        }
        if let Some(age) = limits.max_age
            && before.is_none_or(Head::is_empty)
        {
            let due = now_ms.saturating_add(millis(age));
            self.upkeep.by_age.push(Reverse((due, Arc::clone(topic))));
        }
    }

    /// One bounded round of upkeep: count retention, age retention, freeing empty topics,
    /// and a probe write while the backend is failing.
    fn maintain(&mut self) {
        let now = SystemTime::now();
        let now_ms = unix_millis(now);
        let mut budget = TRIM_CHUNK;
        let mut checks = 0usize;

        while budget > 0 && checks < MAX_CHECKS {
            let Some(topic) = self.upkeep.over_count.pop_front() else {
                break;
            };
            self.upkeep.over_count_set.remove(&topic);
            checks += 1;
            let Some(head) = self.cache.get(&topic).cloned() else {
                continue;
            };
            let Some(max) = self.retention.limits(&topic).max_messages else {
                continue;
            };
            if stored(&head) <= max {
                continue;
            }
            let keep_from = head.latest.saturating_sub(max).saturating_add(1);
            match self.backend.trim(&topic, keep_from, &head, budget) {
                Ok(first) => {
                    budget = budget.saturating_sub(trimmed(&head, first));
                    self.set_first(&topic, &head, first);
                    if first < keep_from && self.upkeep.over_count_set.insert(Arc::clone(&topic)) {
                        self.upkeep.over_count.push_back(topic);
                    }
                }
                Err(e) => {
                    tracing::warn!("retention on {topic}: {e}");
                    self.health.failed(&e);
                    if self.upkeep.over_count_set.insert(Arc::clone(&topic)) {
                        self.upkeep.over_count.push_back(topic);
                    }
                    break;
                }
            }
        }

        while budget > 0 && checks < MAX_CHECKS {
            match self.upkeep.by_age.peek() {
                Some(Reverse((due, _))) if *due <= now_ms => {}
                _ => break,
            }
            let Some(Reverse((_, topic))) = self.upkeep.by_age.pop() else {
                break;
            };
            checks += 1;
            let Some(head) = self.cache.get(&topic).cloned() else {
                continue;
            };
            let Some(age) = self.retention.limits(&topic).max_age else {
                continue;
            };
            if head.is_empty() {
                self.upkeep.to_free.insert(topic);
                continue;
            }
            let cutoff = clock::rfc3339(now.checked_sub(age).unwrap_or(UNIX_EPOCH));
            let chunk = budget;
            let next = match self.backend.trim_older(&topic, &cutoff, &head, chunk) {
                Ok(first) => {
                    let deleted = trimmed(&head, first);
                    budget = budget.saturating_sub(deleted);
                    let head = self.set_first(&topic, &head, first);
                    if head.is_empty() {
                        self.upkeep.to_free.insert(topic);
                        continue;
                    }
                    if deleted >= chunk {
                        // The chunk ran out: more may be old already.
                        Ok(now_ms)
                    } else {
                        self.backend.oldest_timestamp(&topic, &head).map(|ts| {
                            match ts.and_then(|t| parse_millis(&t)) {
                                Some(oldest) => oldest.saturating_add(millis(age)),
                                None => now_ms,
                            }
                        })
                    }
                }
                Err(e) => Err(e),
            };
            let due = next.unwrap_or_else(|e| {
                tracing::warn!("retention on {topic}: {e}");
                self.health.failed(&e);
                now_ms.saturating_add(1000)
            });
            self.upkeep
                .by_age
                .push(Reverse((due.max(now_ms.saturating_add(1)), topic)));
        }
        self.metrics.retention_checks.inc_by(checks as u64);

        self.upkeep.to_free.extend(self.hub.take_released());
        self.free_some();

        if self.health.is_failing() {
            match self.backend.probe() {
                Ok(()) => {
                    if self.health.recovered() {
                        tracing::info!("store writes work again");
                    }
                }
                Err(e) => self.health.failed(&e),
            }
        }
        self.metrics.stored_topics.set(self.heads.len() as i64);
    }

    /// Free the state of candidate topics that hold nothing and have no subscriber, in one
    /// backend transaction.
    fn free_some(&mut self) {
        let mut freed: Vec<Arc<str>> = Vec::new();
        let candidates: Vec<Arc<str>> = self
            .upkeep
            .to_free
            .iter()
            .take(MAX_FREES)
            .cloned()
            .collect();
        for topic in candidates {
            self.upkeep.to_free.remove(&topic);
            if !self.cache.get(&topic).is_some_and(Head::is_empty) {
                continue;
            }
            let heads = &self.heads;
            // A subscribed topic stays; it is a candidate again when its last subscriber
            // leaves (the hub reports it).
            if self
                .hub
                .free_if_unsubscribed(&topic, || heads.remove(&topic))
            {
                self.cache.remove(&topic);
                freed.push(topic);
            }
        }
        if freed.is_empty() {
            return;
        }
        if let Err(e) = self.backend.forget(&freed) {
            // The heads are gone from memory; the rows (none) and head rows stay in the file
            // and are loaded (and freed again) at the next start.
            tracing::warn!("freeing {} empty topics: {e}", freed.len());
            self.health.failed(&e);
        }
    }

    /// Record that `topic` now starts at `first`; returns the new head.
    fn set_first(&mut self, topic: &Arc<str>, head: &Head, first: u64) -> Head {
        let new = Head {
            first,
            ..head.clone()
        };
        if first != head.first {
            self.cache.insert(Arc::clone(topic), new.clone());
            self.heads.set_all([(Arc::clone(topic), new.clone())]);
        }
        new
    }

    /// Answer one command after a successful commit (and its fan-out).
    fn finish(&self, outcome: Outcome, rows: &[Row]) {
        match outcome {
            Outcome::Published { row, reply, .. } => {
                let Some(row) = rows.get(row) else { return };
                let epoch = self.epoch(&row.topic);
                answer(
                    reply,
                    Ok(Committed {
                        topic: row.topic.to_string(),
                        offset: row.offset,
                        epoch,
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
                ..
            } => {
                let epoch = self.epoch(&stream);
                answer_append(reply, &stream, version, epoch);
            }
            Outcome::Conflict {
                stream,
                expected,
                current,
                reply,
            } => answer_conflict(reply, &stream, expected, current),
            Outcome::Failed { error, reply } => answer(reply, Err(error)),
            Outcome::Flushed(done) => {
                let _ = done.send(());
            }
        }
    }

    fn epoch(&self, topic: &str) -> String {
        self.cache
            .get(topic)
            .map(|h| h.epoch.clone())
            .unwrap_or_default()
    }

    /// Fan out every committed row, in offset order: each row's `message` frame is encoded
    /// once, and the rows of one topic go to the hub as one run, so a subscriber gets one queue
    /// item per topic per commit instead of one per message. A publisher's own rows are marked
    /// with its connection (no echo); appended events are echoed to the appender too.
    fn fan_out(&self, rows: &[Row], outcomes: &[Outcome]) {
        let mut publisher: Vec<Option<ConnId>> = vec![None; rows.len()];
        let mut started: Option<Instant> = None;
        for outcome in outcomes {
            if let Outcome::Published {
                row,
                publisher: p,
                started: s,
                ..
            } = outcome
            {
                if let Some(slot) = publisher.get_mut(*row) {
                    *slot = p.as_ref().map(|m| m.id());
                }
                started = Some(started.map_or(*s, |t| t.min(*s)));
            }
        }
        let started = started.unwrap_or_else(Instant::now);
        // Rows of a topic have consecutive offsets in row order, so each run is contiguous;
        // runs of one topic are handed to the hub in offset order.
        let mut runs: Vec<DurableRun> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut epochs: HashMap<&str, String> = HashMap::new();
        for (row, publisher) in rows.iter().zip(publisher) {
            let epoch = epochs
                .entry(row.topic.as_ref())
                .or_insert_with(|| self.epoch(&row.topic));
            let frame = ServerMessage::Message(Message {
                topic: row.topic.to_string(),
                data: row.data.clone(),
                from: row.from.clone(),
                timestamp: row.timestamp.clone(),
                offset: Some(row.offset),
                epoch: Some(epoch.clone()),
            });
            let frame = (Utf8Bytes::from(frame.encode()), publisher);
            let open = index
                .get(row.topic.as_ref())
                .copied()
                .filter(|&i| runs.get(i).is_some_and(|r| r.frames.len() < MAX_RUN));
            let i = open.unwrap_or_else(|| {
                runs.push(DurableRun {
                    topic: Arc::clone(&row.topic),
                    first: row.offset,
                    frames: Vec::with_capacity(MAX_RUN.min(rows.len())),
                });
                index.insert(row.topic.as_ref(), runs.len() - 1);
                runs.len() - 1
            });
            if let Some(run) = runs.get_mut(i) {
                run.frames.push(frame);
            }
        }
        for run in runs {
            self.hub.publish_durable(Arc::new(run), started);
        }
    }
}

/// Messages stored for a head.
fn stored(head: &Head) -> u64 {
    (head.latest.saturating_add(1)).saturating_sub(head.first)
}

/// Rows a trim from `head.first` to `first` removed.
fn trimmed(head: &Head, first: u64) -> usize {
    usize::try_from(first.saturating_sub(head.first)).unwrap_or(usize::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis(t: SystemTime) -> u64 {
    millis(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn parse_millis(rfc3339: &str) -> Option<u64> {
    humantime::parse_rfc3339(rfc3339).ok().map(unix_millis)
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

fn frame(msg: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(msg.encode())
}

/// The code a client sees for a failed write.
fn error_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
        StoreError::Conflict { .. } => ErrorCode::VersionConflict,
        StoreError::Backend(_) | StoreError::Closed => ErrorCode::Unavailable,
    }
}

/// Deliver a publish outcome.
fn answer(reply: Reply, result: Result<Committed, StoreError>) {
    match reply {
        Reply::None => {}
        Reply::Caller(done) => {
            let _ = done.send(result);
        }
        Reply::Client {
            mailbox,
            r#ref,
            ack,
        } => match result {
            Ok(c) => {
                if ack {
                    mailbox.offer_reply(frame(&ServerMessage::Published(Published {
                        r#ref,
                        topic: c.topic,
                        offset: Some(c.offset),
                        epoch: Some(c.epoch),
                    })));
                }
            }
            Err(e) => {
                mailbox.offer_reply(frame(&ServerMessage::error(
                    error_code(&e),
                    e.to_string(),
                    r#ref,
                )));
            }
        },
    }
}

fn answer_append(reply: Reply, stream: &str, version: u64, epoch: String) {
    match reply {
        Reply::Client { mailbox, r#ref, .. } => {
            mailbox.offer_reply(frame(&ServerMessage::Appended(Appended {
                r#ref,
                stream: stream.to_owned(),
                version,
            })));
        }
        other => answer(
            other,
            Ok(Committed {
                topic: stream.to_owned(),
                offset: version,
                epoch,
            }),
        ),
    }
}

fn answer_conflict(reply: Reply, stream: &str, expected: u64, current: u64) {
    match reply {
        Reply::Client { mailbox, r#ref, .. } => {
            mailbox.offer_reply(frame(&ServerMessage::Error(ErrorFrame {
                code: ErrorCode::VersionConflict,
                message: format!("expected version {expected}, {stream} is at {current}"),
                r#ref,
                current_version: Some(current),
            })));
        }
        other => answer(other, Err(StoreError::Conflict { expected, current })),
    }
}
