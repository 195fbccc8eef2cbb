//! The single writer: batches commands into transactions, then fans out in commit order.
//!
//! Runs on its own OS thread because every backend call blocks (SQLite, fsync). Per batch:
//! 1. decide: assign offsets, check expected versions and idempotency keys, in command order;
//! 2. commit everything in one transaction (group commit);
//! 3. publish the new heads, then fan out each committed row through the hub and answer
//!    every command, in the order they arrived.
//!
//! If the commit fails nothing was written: every command of the batch gets the error and
//! the in-memory heads are left as they were.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tidings_protocol::server::{Appended, Error as ErrorFrame, Message, Published};
use tidings_protocol::{ErrorCode, RawValue, ServerMessage};
use tokio::sync::mpsc;

use super::{Backend, Command, Committed, Head, Heads, Reply, Row, StoreError};
use crate::clock;
use crate::hub::{ConnId, DurableRun, Hub, Outbound};
use crate::retention::Retention;

/// Most commands folded into one transaction.
const MAX_BATCH: usize = 2048;
/// Most frames in one fan-out run (one queue slot of each subscriber): a queue of
/// `queue_capacity` slots then holds at most this many times as many frames, all shared.
const MAX_RUN: usize = 64;
/// Most rows one `Trim` command deletes, so trimming never stalls writes for long.
const TRIM_CHUNK: usize = 5_000;

/// Load the heads, then start the writer thread.
pub(super) fn start(
    mut backend: Box<dyn Backend>,
    rx: mpsc::Receiver<Command>,
    heads: Arc<Heads>,
    hub: Arc<Hub>,
    retention: Retention,
    dedup_window: Duration,
) -> Result<(), StoreError> {
    let loaded = backend.heads()?;
    let cache: HashMap<Arc<str>, Head> =
        loaded.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
    heads.set_all(cache.iter().map(|(k, v)| (Arc::clone(k), v.clone())));
    let writer = Writer {
        backend,
        rx,
        heads,
        cache,
        hub,
        retention,
        trim_next: 0,
        dedup_window,
    };
    std::thread::Builder::new()
        .name("tidings-store".into())
        .spawn(move || writer.run())
        .map_err(|e| StoreError::Backend(format!("start writer thread: {e}")))?;
    Ok(())
}

struct Writer {
    backend: Box<dyn Backend>,
    rx: mpsc::Receiver<Command>,
    heads: Arc<Heads>,
    cache: HashMap<Arc<str>, Head>,
    hub: Arc<Hub>,
    retention: Retention,
    trim_next: usize,
    dedup_window: Duration,
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

    fn process(&mut self, batch: Vec<Command>) {
        let timestamp = clock::now_rfc3339();
        let dedup_since = humantime::format_rfc3339_millis(
            SystemTime::now()
                .checked_sub(self.dedup_window)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
        .to_string();
        let mut rows: Vec<Row> = Vec::new();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        let mut dirty: HashMap<Arc<str>, Head> = HashMap::new();
        let mut batch_ids: HashMap<(Arc<str>, String), u64> = HashMap::new();
        let mut trim = false;

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
                    if let Some(id) = &id {
                        let known = match batch_ids.get(&(Arc::clone(&topic), id.clone())) {
                            Some(offset) => Ok(Some(*offset)),
                            None => self.backend.find_id(&topic, id, &dedup_since),
                        };
                        match known {
                            Ok(Some(offset)) => {
                                let epoch = self.head_for(&dirty, &topic).epoch;
                                outcomes.push(Outcome::Duplicate {
                                    topic,
                                    offset,
                                    epoch,
                                    reply,
                                });
                                continue;
                            }
                            Ok(None) => {}
                            Err(error) => {
                                outcomes.push(Outcome::Failed { error, reply });
                                continue;
                            }
                        }
                    }
                    let mut head = self.head_for(&dirty, &topic);
                    head.latest += 1;
                    if let Some(id) = &id {
                        batch_ids.insert((Arc::clone(&topic), id.clone()), head.latest);
                    }
                    rows.push(Row {
                        topic: Arc::clone(&topic),
                        offset: head.latest,
                        data,
                        from,
                        timestamp: timestamp.clone(),
                        msg_id: id,
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
                                    msg_id: None,
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
                Command::Trim => trim = true,
                Command::Flush(done) => outcomes.push(Outcome::Flushed(done)),
            }
        }

        if !rows.is_empty() {
            let head_refs: Vec<(&str, &Head)> =
                dirty.iter().map(|(k, v)| (k.as_ref(), v)).collect();
            if let Err(error) = self.backend.commit(&rows, &head_refs) {
                tracing::error!("store commit failed: {error}");
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
            self.heads
                .set_all(dirty.iter().map(|(k, v)| (Arc::clone(k), v.clone())));
            self.cache.extend(dirty);
            self.fan_out(&rows, &outcomes);
        }
        for outcome in outcomes {
            self.finish(outcome, &rows);
        }
        if trim {
            self.trim_some();
        }
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

    /// Apply retention to a few topics (round robin), a bounded number of rows at a time.
    fn trim_some(&mut self) {
        let topics = self.heads.topics();
        if topics.is_empty() {
            return;
        }
        let mut budget = TRIM_CHUNK;
        for i in 0..topics.len() {
            if budget == 0 {
                break;
            }
            let (topic, head) = &topics[(self.trim_next + i) % topics.len()];
            let limits = self.retention.limits(topic);
            let mut keep_from = head.first;
            if let Some(max) = limits.max_messages
                && head.latest >= max
            {
                keep_from = keep_from.max(head.latest - max + 1);
            }
            let result = if keep_from > head.first {
                self.backend
                    .trim(topic, keep_from, head, budget)
                    .map(|deleted| (head.first + deleted as u64, deleted))
            } else if let Some(age) = limits.max_age {
                let cutoff = humantime::format_rfc3339_millis(
                    SystemTime::now()
                        .checked_sub(age)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                )
                .to_string();
                self.backend
                    .trim_older(topic, &cutoff, head, budget)
                    .map(|first| (first, (first - head.first) as usize))
            } else {
                Ok((head.first, 0))
            };
            match result {
                Ok((first, deleted)) if first != head.first => {
                    budget = budget.saturating_sub(deleted);
                    let new = Head {
                        first,
                        ..head.clone()
                    };
                    self.cache.insert(Arc::clone(topic), new.clone());
                    self.heads.set_all([(Arc::clone(topic), new)]);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("retention on {topic}: {e}"),
            }
        }
        self.trim_next = (self.trim_next + 1) % topics.len().max(1);
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

fn frame(msg: &ServerMessage) -> Outbound {
    Outbound::Frame(Utf8Bytes::from(msg.encode()))
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
                    mailbox.offer(frame(&ServerMessage::Published(Published {
                        r#ref,
                        topic: c.topic,
                        offset: Some(c.offset),
                        epoch: Some(c.epoch),
                    })));
                }
            }
            Err(e) => {
                mailbox.offer(frame(&ServerMessage::error(
                    ErrorCode::Unavailable,
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
            mailbox.offer(frame(&ServerMessage::Appended(Appended {
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
            mailbox.offer(frame(&ServerMessage::Error(ErrorFrame {
                code: ErrorCode::VersionConflict,
                message: format!("expected version {expected}, {stream} is at {current}"),
                r#ref,
                current_version: Some(current),
            })));
        }
        other => answer(other, Err(StoreError::Conflict { expected, current })),
    }
}
