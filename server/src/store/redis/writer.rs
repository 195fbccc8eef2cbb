//! The Redis writer: a task that drains the store's command channel and sends everything
//! waiting as **one pipeline per shard** — the network form of the SQLite writer's group
//! commit. Consecutive publishes to one topic become one script call (`EVALSHA`). The scripts
//! are loaded (`SCRIPT LOAD`, in the same pipeline) on the first round and after any failure;
//! a `NOSCRIPT` (a Redis that lost its cache unseen, a failover) loads them and runs the round
//! again, so it is never a client's error.
//!
//! A command is answered only from Redis's reply: on a failure (Redis down, a timeout) every
//! command of that shard's pipeline gets [`StoreError::Backend`] (`UNAVAILABLE` on the wire),
//! never an ack. A timed-out write may still have happened; a client retrying with its
//! publish `id` is deduplicated.
//!
//! Fan-out is not done here: the script publishes committed rows on the topic's channel and
//! every node (this one included) delivers them from its feed, in channel order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::{Pipeline, Script, Value};
use futures_util::future::join_all;
use tidings_protocol::Json;
use tokio::sync::{mpsc, oneshot};

use super::script;
use super::{RedisLog, backend, text};
use crate::clock::{Clock, rfc3339, unix_millis};
use crate::retention::Retention;
use crate::store::{
    Command, Committed, IdempotencyKey, PresenceChange, Reply, StoreConfig, StoreError,
};

/// Most commands taken for one round of pipelines.
const MAX_BATCH: usize = 4096;

/// One message or event of a script call.
struct Item {
    key: Option<IdempotencyKey>,
    data: Json,
    from: String,
    event_type: Option<String>,
    origin: Option<u64>,
}

/// Who gets the outcome of a write call.
enum Answer {
    /// A publish group: one reply per message.
    Each(Vec<Option<Reply>>),
    /// An append: one reply for all its events.
    Whole(Option<Reply>),
}

/// One script call.
enum Call {
    Write {
        topic: Arc<str>,
        expected: Option<u64>,
        items: Vec<Item>,
        answer: Answer,
    },
    Snapshot {
        stream: String,
        version: u64,
        state: Json,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// An ephemeral frame for the other nodes: `~<node>\n<frame>` on the topic's channel.
    Broadcast { topic: Arc<str>, frame: String },
    /// A change to the topic's presence set (announced by the script).
    Presence {
        topic: Arc<str>,
        change: PresenceChange,
    },
}

/// The writer task's state.
pub(super) struct Writer {
    log: Arc<RedisLog>,
    node: Arc<str>,
    retention: Retention,
    dedup_window: Duration,
    clock: Arc<dyn Clock>,
    write: Script,
    snapshot: Script,
    presence_join: Script,
    presence_leave: Script,
    /// How long a member stays listed without a refresh.
    presence_ttl: Duration,
    /// Numbers the epochs this node proposes for new topics (with the node id: unique).
    epochs: AtomicU64,
    /// Per shard: the scripts are in its cache (so a pipeline need not load them). Cleared by
    /// any failure, since the next success may be a restarted Redis.
    loaded: Vec<AtomicBool>,
}

impl Writer {
    pub(super) fn new(log: Arc<RedisLog>, node: Arc<str>, config: &StoreConfig) -> Writer {
        let shards = log.shards.len();
        Writer {
            log,
            node,
            retention: config.retention.clone(),
            dedup_window: config.dedup_window,
            clock: Arc::clone(&config.clock),
            write: Script::new(script::WRITE),
            snapshot: Script::new(script::SNAPSHOT),
            presence_join: Script::new(script::PRESENCE_JOIN),
            presence_leave: Script::new(script::PRESENCE_LEAVE),
            presence_ttl: config.presence_ttl,
            epochs: AtomicU64::new(0),
            loaded: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Take commands until the store is dropped.
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.process(std::mem::take(&mut batch)).await;
        }
        tracing::debug!("redis writer stopped");
    }

    /// Group a batch into script calls per shard, send every shard's pipeline at once, and
    /// answer each command from the reply.
    async fn process(&self, batch: Vec<Command>) {
        self.log.metrics.redis_batch.observe(batch.len() as f64);
        let shards = self.log.shards.len();
        let mut calls: Vec<Vec<Call>> = (0..shards).map(|_| Vec::new()).collect();
        // The open publish group of each topic: (shard, call index).
        let mut open: HashMap<Arc<str>, (usize, usize)> = HashMap::new();
        let mut flushes = Vec::new();
        for command in batch {
            match command {
                Command::Publish {
                    topic,
                    data,
                    from,
                    origin,
                    id,
                    reply,
                    started: _,
                } => {
                    let item = Item {
                        key: id.filter(|_| !self.dedup_window.is_zero()),
                        data,
                        from,
                        event_type: None,
                        origin,
                    };
                    let shard = self.log.shard_of(&topic);
                    if let Some(&(s, i)) = open.get(&topic)
                        && let Some(Call::Write {
                            items,
                            answer: Answer::Each(replies),
                            ..
                        }) = calls[s].get_mut(i)
                    {
                        items.push(item);
                        replies.push(reply);
                        continue;
                    }
                    open.insert(Arc::clone(&topic), (shard, calls[shard].len()));
                    calls[shard].push(Call::Write {
                        topic,
                        expected: None,
                        items: vec![item],
                        answer: Answer::Each(vec![reply]),
                    });
                }
                Command::Append {
                    stream,
                    expected,
                    events,
                    from,
                    reply,
                } => {
                    let items: Result<Vec<Item>, _> = events
                        .iter()
                        .map(|event| {
                            event.to_stored().map(|data| Item {
                                key: None,
                                data,
                                from: from.clone(),
                                event_type: Some(event.r#type.clone()),
                                origin: None,
                            })
                        })
                        .collect();
                    let items = match items {
                        Ok(items) if !items.is_empty() => items,
                        Ok(_) => continue,
                        Err(e) => {
                            answer(reply, Err(StoreError::Backend(e.to_string())));
                            continue;
                        }
                    };
                    // Later publishes to this stream go after the append.
                    open.remove(&stream);
                    let shard = self.log.shard_of(&stream);
                    calls[shard].push(Call::Write {
                        topic: stream,
                        expected,
                        items,
                        answer: Answer::Whole(reply),
                    });
                }
                Command::Snapshot {
                    stream,
                    version,
                    state,
                    done,
                } => {
                    let shard = self.log.shard_of(&stream);
                    calls[shard].push(Call::Snapshot {
                        stream,
                        version,
                        state,
                        done,
                    });
                }
                // Retention runs inside the write script and by key expiry.
                Command::Maintain => {}
                Command::Presence { topic, change } => {
                    let shard = self.log.shard_of(&topic);
                    calls[shard].push(Call::Presence { topic, change });
                }
                Command::Broadcast { topic, frame } => {
                    let shard = self.log.shard_of(&topic);
                    calls[shard].push(Call::Broadcast { topic, frame });
                }
                Command::Flush(done) => flushes.push(done),
            }
        }
        let now = self.clock.now();
        let rounds = calls
            .into_iter()
            .enumerate()
            .filter(|(_, calls)| !calls.is_empty())
            .map(|(shard, calls)| self.send(shard, calls, now));
        join_all(rounds).await;
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Send one shard's calls as one pipeline and answer them.
    async fn send(&self, shard: usize, calls: Vec<Call>, now: std::time::SystemTime) {
        let now_ms = unix_millis(now);
        let timestamp = rfc3339(now);
        let window_ms = u64::try_from(self.dedup_window.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(window_ms);
        let times = (now_ms, timestamp.as_str(), cutoff, window_ms);
        let loaded = &self.loaded[shard];
        let load = !loaded.load(Ordering::Acquire);
        let mut result = self
            .query(shard, &self.pipeline(&calls, times, load, true))
            .await;
        if let Err(e) = &result
            && e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript)
        {
            // Redis lost its script cache (a restart we did not see, a failover): load the
            // scripts and run the calls again. Nothing ran: every script call failed alike. The
            // broadcasts did go out, so they are not repeated (a PING keeps the replies aligned).
            tracing::info!("redis shard {shard} lost its scripts; loading them again");
            result = self
                .query(shard, &self.pipeline(&calls, times, true, false))
                .await;
        }
        let result = match result {
            Ok(replies) => {
                loaded.store(true, Ordering::Release);
                Ok(replies)
            }
            Err(e) => {
                loaded.store(false, Ordering::Release);
                Err(backend(e))
            }
        };
        let replies = match result {
            Ok(replies) if replies.len() == calls.len() => replies,
            Ok(replies) => {
                let e = StoreError::Backend(format!(
                    "redis answered {} of {} calls",
                    replies.len(),
                    calls.len()
                ));
                return fail(calls, &e);
            }
            Err(e) => {
                self.log.failed(shard, &e);
                return fail(calls, &e);
            }
        };
        for (call, reply) in calls.into_iter().zip(replies) {
            match call {
                Call::Write {
                    topic,
                    expected,
                    items,
                    answer,
                } => deliver(&topic, expected, &items, answer, reply),
                Call::Broadcast { .. } | Call::Presence { .. } => {}
                Call::Snapshot { done, .. } => {
                    let outcome = match reply {
                        Value::ServerError(e) => Err(StoreError::Backend(format!("redis: {e:?}"))),
                        _ => Ok(()),
                    };
                    let _ = done.send(outcome);
                }
            }
        }
    }

    /// The pipeline for `calls`: the scripts loaded first when `load`, each broadcast a
    /// `PUBLISH` when `broadcast` (else a `PING`, so replies still line up with calls).
    fn pipeline(
        &self,
        calls: &[Call],
        times: (u64, &str, u64, u64),
        load: bool,
        broadcast: bool,
    ) -> Pipeline {
        let mut pipe = ::redis::pipe();
        if load {
            pipe.load_script(&self.write).ignore();
            pipe.load_script(&self.snapshot).ignore();
            pipe.load_script(&self.presence_join).ignore();
            pipe.load_script(&self.presence_leave).ignore();
        }
        for call in calls {
            match call {
                Call::Write {
                    topic,
                    expected,
                    items,
                    ..
                } => self.add_write(&mut pipe, topic, *expected, items, times),
                Call::Snapshot {
                    stream,
                    version,
                    state,
                    ..
                } => {
                    let mut invocation = self.snapshot.key(self.log.keys(stream).snapshot);
                    invocation.arg(*version).arg(state.get());
                    pipe.invoke_script(&invocation);
                }
                Call::Broadcast { topic, frame } if broadcast => {
                    pipe.cmd("PUBLISH")
                        .arg(self.log.keys(topic).channel)
                        .arg(format!("~{}\n{frame}", self.node));
                }
                Call::Broadcast { .. } => {
                    pipe.cmd("PING");
                }
                Call::Presence { topic, change } => {
                    self.add_presence(&mut pipe, topic, change, times.0)
                }
            }
        }
        pipe
    }

    /// Send `pipe` to shard `shard`, timing the round trip.
    async fn query(
        &self,
        shard: usize,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>, ::redis::RedisError> {
        let Ok(mut conn) = self.log.shards[shard].conn() else {
            return Err(::redis::RedisError::from((
                ::redis::ErrorKind::Io,
                "not connected",
            )));
        };
        let started = Instant::now();
        let reply = pipe.query_async(&mut conn).await;
        self.log.timed(started);
        reply
    }

    fn add_presence(&self, pipe: &mut Pipeline, topic: &str, change: &PresenceChange, now_ms: u64) {
        let keys = self.log.keys(topic);
        let ttl = u64::try_from(self.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        match change {
            PresenceChange::Join(entries) => {
                let mut invocation = self.presence_join.key(keys.presence);
                invocation
                    .key(keys.presence_expiry)
                    .key(keys.presence_users)
                    .arg(now_ms.saturating_add(ttl))
                    .arg(ttl)
                    .arg(keys.channel)
                    .arg(self.node.as_ref());
                for e in entries {
                    invocation
                        .arg(&e.client_id)
                        .arg(&e.user)
                        .arg(&e.member)
                        .arg(&e.frame);
                }
                pipe.invoke_script(&invocation);
            }
            PresenceChange::Leave(entries) => {
                let mut invocation = self.presence_leave.key(keys.presence);
                invocation
                    .key(keys.presence_expiry)
                    .key(keys.presence_users)
                    .arg(keys.channel)
                    .arg(self.node.as_ref());
                for e in entries {
                    invocation.arg(&e.client_id).arg(&e.user).arg(&e.frame);
                }
                pipe.invoke_script(&invocation);
            }
        }
    }

    fn add_write(
        &self,
        pipe: &mut Pipeline,
        topic: &str,
        expected: Option<u64>,
        items: &[Item],
        (now_ms, timestamp, cutoff, window_ms): (u64, &str, u64, u64),
    ) {
        let keys = self.log.keys(topic);
        let limits = self.retention.limits(topic);
        let max_age = limits
            .max_age
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let epoch = format!(
            "{}{:x}",
            self.node,
            self.epochs.fetch_add(1, Ordering::Relaxed)
        );
        let mut invocation = self.write.key(keys.head);
        invocation
            .key(keys.log)
            .key(keys.ids)
            .key(keys.id_times)
            .arg(keys.channel)
            .arg(epoch)
            .arg(now_ms)
            .arg(timestamp)
            .arg(cutoff)
            .arg(window_ms)
            .arg(limits.max_messages)
            .arg(max_age)
            .arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(self.node.as_ref());
        for item in items {
            let key = item.key.as_ref().map(|k| {
                // Length-prefixed, so no scope and id can spell another pair.
                format!("{}:{}{}", k.scope.len(), k.scope, k.id)
            });
            invocation
                .arg(key.unwrap_or_default())
                .arg(item.data.get())
                .arg(&item.from)
                .arg(item.event_type.as_deref().unwrap_or(""))
                .arg(item.origin.map(|o| o.to_string()).unwrap_or_default());
        }
        pipe.invoke_script(&invocation);
    }
}

/// Answer every command of `calls` with `error`.
fn fail(calls: Vec<Call>, error: &StoreError) {
    for call in calls {
        match call {
            Call::Write { answer: a, .. } => match a {
                Answer::Each(replies) => {
                    for reply in replies {
                        answer(reply, Err(error.clone()));
                    }
                }
                Answer::Whole(reply) => answer(reply, Err(error.clone())),
            },
            Call::Snapshot { done, .. } => {
                let _ = done.send(Err(error.clone()));
            }
            Call::Broadcast { .. } | Call::Presence { .. } => {}
        }
    }
}

/// Answer a write call from the script's reply (see [`script::WRITE`]).
fn deliver(topic: &str, expected: Option<u64>, items: &[Item], to: Answer, reply: Value) {
    let parsed = parse_write(reply);
    let Some((epoch, latest, status, results)) = parsed else {
        let e = StoreError::Backend(format!("redis: unexpected reply writing {topic}"));
        return fail_answer(to, &e);
    };
    let committed = |offset| Committed {
        topic: topic.to_owned(),
        offset,
        epoch: epoch.clone(),
    };
    match to {
        Answer::Whole(reply) => {
            let outcome = if status == "conflict" {
                Err(StoreError::Conflict {
                    expected: expected.unwrap_or(0),
                    current: latest,
                })
            } else {
                Ok(committed(results.last().map_or(latest, |&(_, o)| o)))
            };
            answer(reply, outcome);
        }
        Answer::Each(replies) => {
            for ((reply, (status, offset)), item) in replies.into_iter().zip(results).zip(items) {
                let outcome = match status {
                    2 => Err(StoreError::IdempotencyConflict {
                        id: item.key.as_ref().map(|k| k.id.clone()).unwrap_or_default(),
                        offset,
                    }),
                    _ => Ok(committed(offset)),
                };
                answer(reply, outcome);
            }
        }
    }
}

fn fail_answer(to: Answer, e: &StoreError) {
    match to {
        Answer::Each(replies) => {
            for reply in replies {
                answer(reply, Err(e.clone()));
            }
        }
        Answer::Whole(reply) => answer(reply, Err(e.clone())),
    }
}

/// `{epoch, first, latest, status, (code, offset)...}` from the write script.
#[allow(clippy::type_complexity)]
fn parse_write(reply: Value) -> Option<(String, u64, String, Vec<(i64, u64)>)> {
    let Value::Array(values) = reply else {
        return None;
    };
    let mut values = values.into_iter();
    let epoch = text(values.next()?)?;
    let _first = int(values.next()?)?;
    let latest = int(values.next()?)?;
    let status = text(values.next()?)?;
    let mut results = Vec::new();
    while let (Some(code), Some(offset)) = (values.next(), values.next()) {
        results.push((i64::try_from(int(code)?).ok()?, int(offset)?));
    }
    Some((epoch, latest, status, results))
}

fn int(value: Value) -> Option<u64> {
    match value {
        Value::Int(i) => u64::try_from(i).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn answer(reply: Option<Reply>, outcome: Result<Committed, StoreError>) {
    if let Some(reply) = reply {
        reply(outcome);
    }
}
