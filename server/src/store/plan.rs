//! The writer's decisions for one batch, as a pure function: which rows to write at which
//! offsets, which publishes are retries of earlier ones (or reuse an id for another payload),
//! which appends are at the wrong version. No I/O: the heads, the time and an id lookup come in
//! as arguments, so every rule is tested on plain data.
//!
//! Invariants it keeps (and checks with `debug_assert!`): a topic's new offsets continue its
//! head's `latest` with no gap, in command order; a duplicate is answered with the original
//! offset and writes nothing; a failed append writes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidings_protocol::Json;
use tokio::sync::oneshot;

use super::{Command, Head, IdempotencyKey, Reply, Row, StoreError};
use crate::clock;

/// What to do for one command once the batch is committed.
pub(super) enum Outcome {
    /// A publish was written as `rows[row]`.
    Published { row: usize, reply: Option<Reply> },
    /// A publish retried with the same key and payload: the original offset.
    Duplicate {
        topic: Arc<str>,
        offset: u64,
        epoch: String,
        reply: Option<Reply>,
    },
    /// An append was written; `version` is the stream's new version.
    Appended {
        stream: Arc<str>,
        version: u64,
        reply: Option<Reply>,
    },
    /// Nothing was written for this command.
    Failed {
        error: StoreError,
        reply: Option<Reply>,
    },
}

/// A snapshot to save once the batch is committed.
pub(super) struct SnapshotTask {
    pub stream: String,
    pub version: u64,
    pub state: Json,
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

/// The decisions for one batch.
#[derive(Default)]
pub(super) struct Plan {
    /// Rows to write, in command order.
    pub rows: Vec<Row>,
    /// Per row: the `origin` of its publish.
    pub origins: Vec<Option<u64>>,
    /// The new head of every topic written.
    pub dirty: HashMap<Arc<str>, Head>,
    /// One per publish or append, in command order.
    pub outcomes: Vec<Outcome>,
    /// Snapshots to save.
    pub snapshots: Vec<SnapshotTask>,
    /// Flushes to answer once everything before them is done.
    pub flushes: Vec<oneshot::Sender<()>>,
    /// Whether a round of upkeep was asked for.
    pub maintain: bool,
    /// When the earliest publish of the batch was decoded.
    pub started: Option<Instant>,
}

/// The batch's inputs that are not commands.
pub(super) struct Inputs<'a> {
    /// Every known topic's head before the batch.
    pub heads: &'a HashMap<Arc<str>, Head>,
    /// The time of the batch.
    pub now: SystemTime,
    /// How long a publish id is remembered.
    pub dedup_window: Duration,
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

/// Looks an idempotency key of a topic up among the rows written at or after a time
/// (RFC 3339): the offset and payload of the newest match.
pub(super) type FindId<'a> =
    dyn FnMut(&str, &IdempotencyKey, &str) -> Result<Option<(u64, Json)>, StoreError> + 'a;

/// Decide a batch. `find_id` looks keys up in the store; `new_epoch` names the history of a
/// topic written for the first time.
pub(super) fn plan(
    batch: Vec<Command>,
    inputs: &Inputs<'_>,
    find_id: &mut FindId<'_>,
    new_epoch: &mut dyn FnMut() -> String,
) -> Plan {
    let timestamp = clock::rfc3339(inputs.now);
    let dedup_since = clock::rfc3339(
        inputs
            .now
            .checked_sub(inputs.dedup_window)
            .unwrap_or(UNIX_EPOCH),
    );
    let mut plan = Plan {
        rows: Vec::with_capacity(batch.len()),
        origins: Vec::with_capacity(batch.len()),
        outcomes: Vec::with_capacity(batch.len()),
        ..Plan::default()
    };
    // Keys written by this batch, to the row that holds them.
    let mut in_batch: HashMap<(Arc<str>, IdempotencyKey), usize> = HashMap::new();
    let head_for = |dirty: &HashMap<Arc<str>, Head>,
                    topic: &Arc<str>,
                    new_epoch: &mut dyn FnMut() -> String| {
        dirty
            .get(topic)
            .or_else(|| inputs.heads.get(topic))
            .cloned()
            .unwrap_or_else(|| Head {
                epoch: new_epoch(),
                latest: 0,
                first: 1,
            })
    };

    for command in batch {
        match command {
            Command::Publish {
                topic,
                data,
                from,
                origin,
                id,
                reply,
                started,
            } => {
                if let Some(key) = &id {
                    let known = match in_batch
                        .get(&(Arc::clone(&topic), key.clone()))
                        .and_then(|&i| plan.rows.get(i))
                    {
                        Some(row) => Ok(Some((row.offset, row.data.clone()))),
                        None => find_id(&topic, key, &dedup_since),
                    }
                    .map(|found| match found {
                        None => Known::New,
                        Some((offset, stored)) if stored.get() == data.get() => Known::Same(offset),
                        Some((offset, _)) => Known::Different(offset),
                    });
                    match known {
                        Ok(Known::New) => {}
                        Ok(Known::Same(offset)) => {
                            let epoch = head_for(&plan.dirty, &topic, new_epoch).epoch;
                            plan.outcomes.push(Outcome::Duplicate {
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
                            plan.outcomes.push(Outcome::Failed { error, reply });
                            continue;
                        }
                        Err(error) => {
                            plan.outcomes.push(Outcome::Failed { error, reply });
                            continue;
                        }
                    }
                }
                let mut head = head_for(&plan.dirty, &topic, new_epoch);
                head.latest += 1;
                if let Some(key) = &id {
                    in_batch.insert((Arc::clone(&topic), key.clone()), plan.rows.len());
                }
                plan.rows.push(Row {
                    topic: Arc::clone(&topic),
                    offset: head.latest,
                    data,
                    from,
                    timestamp: timestamp.clone(),
                    key: id,
                    event_type: None,
                });
                plan.origins.push(origin);
                plan.dirty.insert(topic, head);
                plan.started = Some(plan.started.map_or(started, |t| t.min(started)));
                plan.outcomes.push(Outcome::Published {
                    row: plan.rows.len() - 1,
                    reply,
                });
            }
            Command::Append {
                stream,
                expected,
                events,
                from,
                reply,
            } => {
                let mut head = head_for(&plan.dirty, &stream, new_epoch);
                if let Some(expected) = expected
                    && expected != head.latest
                {
                    let error = StoreError::Conflict {
                        expected,
                        current: head.latest,
                    };
                    plan.outcomes.push(Outcome::Failed { error, reply });
                    continue;
                }
                let start = plan.rows.len();
                let mut failed = None;
                for event in &events {
                    match event.to_stored() {
                        Ok(data) => {
                            head.latest += 1;
                            plan.rows.push(Row {
                                topic: Arc::clone(&stream),
                                offset: head.latest,
                                data,
                                from: from.clone(),
                                timestamp: timestamp.clone(),
                                key: None,
                                event_type: Some(event.r#type.clone()),
                            });
                            plan.origins.push(None);
                        }
                        Err(e) => {
                            failed = Some(StoreError::Backend(e.to_string()));
                            break;
                        }
                    }
                }
                if let Some(error) = failed {
                    plan.rows.truncate(start);
                    plan.origins.truncate(start);
                    plan.outcomes.push(Outcome::Failed { error, reply });
                    continue;
                }
                let version = head.latest;
                if start != plan.rows.len() {
                    plan.dirty.insert(Arc::clone(&stream), head);
                }
                plan.outcomes.push(Outcome::Appended {
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
            } => plan.snapshots.push(SnapshotTask {
                stream,
                version,
                state,
                done,
            }),
            Command::Maintain => plan.maintain = true,
            Command::Flush(done) => plan.flushes.push(done),
            // Nothing to store; other nodes exist only with Redis.
            Command::Broadcast { .. } | Command::Presence { .. } => {}
        }
    }
    debug_assert!(
        contiguous(&plan, inputs.heads),
        "offsets must continue each head"
    );
    plan
}

/// Each topic's rows continue its previous head (or start at 1), one by one.
fn contiguous(plan: &Plan, heads: &HashMap<Arc<str>, Head>) -> bool {
    let mut last: HashMap<&str, u64> = HashMap::new();
    plan.rows.iter().all(|row| {
        let previous = last
            .get(row.topic.as_ref())
            .copied()
            .unwrap_or_else(|| heads.get(&row.topic).map_or(0, |h| h.latest));
        last.insert(&row.topic, row.offset);
        row.offset == previous + 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: impl serde::Serialize) -> Json {
        Json::to_json(&v).expect("json")
    }

    fn publish(topic: &str, data: Json, key: Option<(&str, &str)>) -> Command {
        Command::Publish {
            topic: Arc::from(topic),
            data,
            from: "c".into(),
            origin: Some(7),
            id: key.map(|(scope, id)| IdempotencyKey {
                scope: scope.into(),
                id: id.into(),
            }),
            reply: None,
            started: Instant::now(),
        }
    }

    fn append(stream: &str, expected: Option<u64>, n: usize) -> Command {
        Command::Append {
            stream: Arc::from(stream),
            expected,
            events: (0..n)
                .map(|i| tidings_protocol::NewEvent {
                    r#type: format!("e{i}"),
                    data: json(i),
                })
                .collect(),
            from: "c".into(),
            reply: None,
        }
    }

    fn inputs(heads: &HashMap<Arc<str>, Head>) -> Inputs<'_> {
        Inputs {
            heads,
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            dedup_window: Duration::from_secs(60),
        }
    }

    /// Plan with an empty backend and numbered epochs.
    fn run(batch: Vec<Command>, heads: &HashMap<Arc<str>, Head>) -> Plan {
        let mut n = 0;
        plan(batch, &inputs(heads), &mut |_, _, _| Ok(None), &mut || {
            n += 1;
            format!("epoch{n}")
        })
    }

    fn offsets(plan: &Plan) -> Vec<(&str, u64)> {
        plan.rows
            .iter()
            .map(|r| (r.topic.as_ref(), r.offset))
            .collect()
    }

    #[test]
    fn offsets_continue_each_head_in_command_order() {
        let mut heads = HashMap::new();
        heads.insert(
            Arc::from("a"),
            Head {
                epoch: "old".into(),
                latest: 41,
                first: 1,
            },
        );
        let p = run(
            vec![
                publish("a", json(1), None),
                publish("b", json(2), None),
                publish("a", json(3), None),
                append("s", Some(0), 2),
                publish("b", json(4), None),
            ],
            &heads,
        );
        assert_eq!(
            offsets(&p),
            [("a", 42), ("b", 1), ("a", 43), ("s", 1), ("s", 2), ("b", 2)]
        );
        assert_eq!(
            p.dirty[&Arc::<str>::from("a")].epoch,
            "old",
            "an existing history"
        );
        assert_eq!(p.dirty[&Arc::<str>::from("b")].epoch, "epoch1", "a new one");
        assert_eq!(p.dirty[&Arc::<str>::from("s")].latest, 2);
        assert_eq!(p.origins, [Some(7), Some(7), Some(7), None, None, Some(7)]);
        assert!(p.started.is_some());
        assert_eq!(p.rows[3].data.get(), r#"{"type":"e0","data":0}"#);
        assert_eq!(p.rows[3].event_type.as_deref(), Some("e0"));
    }

    #[test]
    fn an_append_at_the_wrong_version_writes_nothing() {
        let p = run(
            vec![
                append("s", Some(0), 2),
                append("s", Some(0), 1),
                append("s", Some(2), 1),
                append("s", None, 1),
            ],
            &HashMap::new(),
        );
        assert_eq!(offsets(&p), [("s", 1), ("s", 2), ("s", 3), ("s", 4)]);
        let outcomes: Vec<String> = p
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Appended { version, .. } => format!("v{version}"),
                Outcome::Failed {
                    error: StoreError::Conflict { expected, current },
                    ..
                } => format!("conflict {expected}/{current}"),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(outcomes, ["v2", "conflict 0/2", "v3", "v4"]);
    }

    #[test]
    fn keys_dedup_within_the_batch_and_against_the_store_and_are_scoped() {
        let mut stored = HashMap::new();
        stored.insert(("t", "user:a", "old"), (5u64, json("x")));
        let mut lookups = Vec::new();
        let p = plan(
            vec![
                publish("t", json("x"), Some(("user:a", "k1"))),
                publish("t", json("x"), Some(("user:a", "k1"))),
                publish("t", json("y"), Some(("user:a", "k1"))),
                publish("t", json("x"), Some(("user:b", "k1"))),
                publish("t", json("x"), Some(("user:a", "old"))),
                publish("t", json("z"), Some(("user:a", "old"))),
            ],
            &inputs(&HashMap::new()),
            &mut |topic, key, since| {
                lookups.push(since.to_owned());
                Ok(stored
                    .get(&(topic, key.scope.as_str(), key.id.as_str()))
                    .cloned())
            },
            &mut || "e".into(),
        );
        assert_eq!(offsets(&p), [("t", 1), ("t", 2)], "k1 of a, then k1 of b");
        let kinds: Vec<String> = p
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Published { row, .. } => format!("row{row}"),
                Outcome::Duplicate { offset, .. } => format!("dup{offset}"),
                Outcome::Failed {
                    error: StoreError::IdempotencyConflict { offset, .. },
                    ..
                } => format!("conflict{offset}"),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            ["row0", "dup1", "conflict1", "row1", "dup5", "conflict5"]
        );
        // The window reaches back dedup_window from the batch's time.
        assert!(
            lookups.iter().all(|s| s == "2027-01-15T07:59:00.000Z"),
            "{lookups:?}"
        );
    }

    #[test]
    fn a_failing_lookup_fails_only_its_publish() {
        let p = plan(
            vec![
                publish("t", json(1), Some(("s", "k"))),
                publish("t", json(2), None),
            ],
            &inputs(&HashMap::new()),
            &mut |_, _, _| Err(StoreError::Backend("disk".into())),
            &mut || "e".into(),
        );
        assert_eq!(offsets(&p), [("t", 1)]);
        assert!(matches!(p.outcomes[0], Outcome::Failed { .. }));
    }

    #[test]
    fn snapshots_flushes_and_upkeep_are_collected() {
        let (done, _) = oneshot::channel();
        let (flush, _) = oneshot::channel();
        let p = run(
            vec![
                Command::Snapshot {
                    stream: "s".into(),
                    version: 3,
                    state: json(serde_json::json!({})),
                    done,
                },
                Command::Maintain,
                Command::Flush(flush),
            ],
            &HashMap::new(),
        );
        assert!(p.rows.is_empty() && p.maintain);
        assert_eq!((p.snapshots.len(), p.flushes.len()), (1, 1));
    }
}
