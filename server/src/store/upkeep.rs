//! Background upkeep of the log: retention by count and by age, and freeing the state of
//! topics that hold nothing. Its cost follows what changed, never the number of topics ever
//! written:
//! * count retention looks only at topics a commit pushed over their `max_messages`;
//! * age retention keeps a queue ordered by when each topic's oldest message expires;
//! * freeing looks at topics that became empty or lost their last subscriber; a freed topic's
//!   next message starts a new history (offset 1, a new epoch).
//!
//! One round ([`Upkeep::maintain`]) deletes at most [`TRIM_CHUNK`] rows, examines at most
//! [`MAX_CHECKS`] topics and frees at most [`MAX_FREES`] in one transaction.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Backend, Head, Heads, Health, Listeners};
use crate::clock::{self, parse_millis, unix_millis};
use crate::metrics::Metrics;
use crate::retention::Retention;

/// Most rows one round deletes, so upkeep never stalls writes for long.
pub(super) const TRIM_CHUNK: usize = 5_000;
/// Most topics one round examines for retention.
pub(super) const MAX_CHECKS: usize = 1_000;
/// Most topics one round frees (in one transaction).
pub(super) const MAX_FREES: usize = 10_000;

/// What upkeep has to look at: only topics whose writes made it necessary.
#[derive(Default)]
pub(super) struct Upkeep {
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

/// Everything one round works on, borrowed from the writer.
pub(super) struct Round<'a> {
    pub backend: &'a mut dyn Backend,
    /// The writer's own copy of the heads.
    pub cache: &'a mut HashMap<Arc<str>, Head>,
    /// The heads readers see.
    pub heads: &'a Heads,
    pub listeners: &'a dyn Listeners,
    pub retention: &'a Retention,
    pub health: &'a Health,
    pub metrics: &'a Metrics,
}

impl Upkeep {
    /// Note what upkeep `topic` needs now that its head went from `before` to `after`.
    pub fn schedule(
        &mut self,
        retention: &Retention,
        topic: &Arc<str>,
        before: Option<&Head>,
        after: &Head,
        now_ms: u64,
    ) {
        if after.is_empty() {
            self.to_free.insert(Arc::clone(topic));
            return;
        }
        let limits = retention.limits(topic);
        if let Some(max) = limits.max_messages
            && stored(after) > max
            && self.over_count_set.insert(Arc::clone(topic))
        {
            self.over_count.push_back(Arc::clone(topic));
        }
        if let Some(age) = limits.max_age
            && before.is_none_or(Head::is_empty)
        {
            let due = now_ms.saturating_add(millis(age));
            self.by_age.push(Reverse((due, Arc::clone(topic))));
        }
    }

    /// One bounded round at time `now`: count retention, age retention, freeing empty
    /// topics, and a probe write while the backend is failing.
    pub fn maintain(&mut self, round: Round<'_>, now: SystemTime) {
        let Round {
            backend,
            cache,
            heads,
            listeners,
            retention,
            health,
            metrics,
        } = round;
        let now_ms = unix_millis(now);
        let mut budget = TRIM_CHUNK;
        let mut checks = 0usize;
        let set_first =
            |cache: &mut HashMap<Arc<str>, Head>, topic: &Arc<str>, head: &Head, first: u64| {
                let new = Head {
                    first,
                    ..head.clone()
                };
                if first != head.first {
                    cache.insert(Arc::clone(topic), new.clone());
                    heads.set_all([(Arc::clone(topic), new.clone())]);
                }
                new
            };

        while budget > 0 && checks < MAX_CHECKS {
            let Some(topic) = self.over_count.pop_front() else {
                break;
            };
            self.over_count_set.remove(&topic);
            checks += 1;
            let Some(head) = cache.get(&topic).cloned() else {
                continue;
            };
            let Some(max) = retention.limits(&topic).max_messages else {
                continue;
            };
            if stored(&head) <= max {
                continue;
            }
            let keep_from = head.latest.saturating_sub(max).saturating_add(1);
            match backend.trim(&topic, keep_from, &head, budget) {
                Ok(first) => {
                    budget = budget.saturating_sub(trimmed(&head, first));
                    set_first(cache, &topic, &head, first);
                    if first < keep_from && self.over_count_set.insert(Arc::clone(&topic)) {
                        self.over_count.push_back(topic);
                    }
                }
                Err(e) => {
                    tracing::warn!("retention on {topic}: {e}");
                    health.failed(&e);
                    if self.over_count_set.insert(Arc::clone(&topic)) {
                        self.over_count.push_back(topic);
                    }
                    break;
                }
            }
        }

        while budget > 0 && checks < MAX_CHECKS {
            match self.by_age.peek() {
                Some(Reverse((due, _))) if *due <= now_ms => {}
                _ => break,
            }
            let Some(Reverse((_, topic))) = self.by_age.pop() else {
                break;
            };
            checks += 1;
            let Some(head) = cache.get(&topic).cloned() else {
                continue;
            };
            let Some(age) = retention.limits(&topic).max_age else {
                continue;
            };
            if head.is_empty() {
                self.to_free.insert(topic);
                continue;
            }
            let cutoff = clock::rfc3339(now.checked_sub(age).unwrap_or(UNIX_EPOCH));
            let chunk = budget;
            let next = match backend.trim_older(&topic, &cutoff, &head, chunk) {
                Ok(first) => {
                    let deleted = trimmed(&head, first);
                    budget = budget.saturating_sub(deleted);
                    let head = set_first(cache, &topic, &head, first);
                    if head.is_empty() {
                        self.to_free.insert(topic);
                        continue;
                    }
                    if deleted >= chunk {
                        // The chunk ran out: more may be old already.
                        Ok(now_ms)
                    } else {
                        backend.oldest_timestamp(&topic, &head).map(|ts| {
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
                health.failed(&e);
                now_ms.saturating_add(1000)
            });
            self.by_age
                .push(Reverse((due.max(now_ms.saturating_add(1)), topic)));
        }
        metrics.retention_checks.inc_by(checks as u64);

        self.to_free.extend(listeners.released());
        self.free_some(backend, cache, heads, listeners, health);

        if health.is_failing() {
            match backend.probe() {
                Ok(()) => {
                    if health.recovered() {
                        tracing::info!("store writes work again");
                    }
                }
                Err(e) => health.failed(&e),
            }
        }
        metrics.stored_topics.set(heads.len() as i64);
    }

    /// Free the state of candidate topics that hold nothing and have no subscriber, in one
    /// backend transaction.
    fn free_some(
        &mut self,
        backend: &mut dyn Backend,
        cache: &mut HashMap<Arc<str>, Head>,
        heads: &Heads,
        listeners: &dyn Listeners,
        health: &Health,
    ) {
        let mut freed: Vec<Arc<str>> = Vec::new();
        let candidates: Vec<Arc<str>> = self.to_free.iter().take(MAX_FREES).cloned().collect();
        for topic in candidates {
            self.to_free.remove(&topic);
            if !cache.get(&topic).is_some_and(Head::is_empty) {
                continue;
            }
            // A subscribed topic stays; it is a candidate again when its last subscriber
            // leaves (the listeners report it).
            if listeners.free_if_unsubscribed(&topic, &mut || heads.remove(&topic)) {
                cache.remove(&topic);
                freed.push(topic);
            }
        }
        if freed.is_empty() {
            return;
        }
        if let Err(e) = backend.forget(&freed) {
            // The heads are gone from memory; the head rows stay in the file and are loaded
            // (and freed again) at the next start.
            tracing::warn!("freeing {} empty topics: {e}", freed.len());
            health.failed(&e);
        }
    }
}

/// Messages stored for a head.
pub(super) fn stored(head: &Head) -> u64 {
    (head.latest.saturating_add(1)).saturating_sub(head.first)
}

/// Rows a trim from `head.first` to `first` removed.
fn trimmed(head: &Head, first: u64) -> usize {
    usize::try_from(first.saturating_sub(head.first)).unwrap_or(usize::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
