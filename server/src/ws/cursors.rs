//! The cursor rule: what a connection's writer does with each run of a durable topic's
//! messages, so that replay, live traffic and catch-up meet with no gap and no duplicate.
//!
//! Per durable topic the connection keeps a cursor: the last offset it has sent (or that the
//! client already had). For a run of consecutive offsets `first..=last`:
//! * everything at or below the cursor is a duplicate: skipped;
//! * a run that starts at or before `cursor + 1` is delivered from `cursor + 1` on;
//! * a run that starts further ahead leaves a gap: read `cursor + 1 ..= first - 1` from the
//!   store first, then deliver the whole run.
//!
//! The cursor only moves forward. Pure data, tested on its own.

use std::sync::Arc;

use rustc_hash::FxHashMap;

/// What to do with one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Not tracked, or nothing new in it: drop the run.
    Ignore,
    /// Deliver the run's frames from index `skip` on (the cursor is now at its end).
    Deliver {
        /// Frames at the start of the run that were already sent.
        skip: usize,
    },
    /// Read the store up to `upto` (inclusive) first, then [`Cursors::advance`] to the run's
    /// end and deliver all of it.
    Fill {
        /// The offset just before the run.
        upto: u64,
    },
}

/// Per-topic delivery cursors of one connection. The keys are its own subscriptions (at most
/// `max_subscriptions`) and the map is looked up once per durable run, so it uses a fast,
/// non-DoS-resistant hash: flooding it can only slow down the client doing it.
#[derive(Debug, Default)]
pub struct Cursors(FxHashMap<Arc<str>, u64>);

impl Cursors {
    /// Start tracking `topic`: the client already has everything up to `from`.
    pub fn track(&mut self, topic: Arc<str>, from: u64) {
        self.0.insert(topic, from);
    }

    /// Stop tracking `topic` (unsubscribed).
    pub fn untrack(&mut self, topic: &str) {
        self.0.remove(topic);
    }

    /// The cursor of `topic`, if tracked.
    pub fn get(&self, topic: &str) -> Option<u64> {
        self.0.get(topic).copied()
    }

    /// Every tracked topic.
    pub fn topics(&self) -> Vec<Arc<str>> {
        self.0.keys().cloned().collect()
    }

    /// Move `topic`'s cursor forward to `to` (never back).
    pub fn advance(&mut self, topic: &str, to: u64) {
        if let Some(cursor) = self.0.get_mut(topic) {
            debug_assert!(to >= *cursor, "cursors only move forward");
            *cursor = (*cursor).max(to);
        }
    }

    /// Apply the cursor rule to a run of offsets `first..=last` of `topic`.
    pub fn admit(&mut self, topic: &str, first: u64, last: u64) -> Admit {
        let Some(cursor) = self.0.get_mut(topic) else {
            return Admit::Ignore;
        };
        if last < first || last <= *cursor {
            return Admit::Ignore;
        }
        let next = cursor.saturating_add(1);
        if first <= next {
            let skip = usize::try_from(next - first).unwrap_or(usize::MAX);
            *cursor = last;
            Admit::Deliver { skip }
        } else {
            Admit::Fill { upto: first - 1 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(from: u64) -> Cursors {
        let mut c = Cursors::default();
        c.track(Arc::from("t"), from);
        c
    }

    #[test]
    fn the_next_run_is_delivered_whole() {
        let mut c = tracked(10);
        assert_eq!(c.admit("t", 11, 14), Admit::Deliver { skip: 0 });
        assert_eq!(c.get("t"), Some(14));
    }

    #[test]
    fn an_overlapping_run_is_delivered_from_the_cursor() {
        let mut c = tracked(10);
        assert_eq!(c.admit("t", 8, 12), Admit::Deliver { skip: 3 });
        assert_eq!(c.get("t"), Some(12));
    }

    #[test]
    fn duplicates_and_strangers_are_ignored() {
        let mut c = tracked(10);
        assert_eq!(c.admit("t", 3, 10), Admit::Ignore);
        assert_eq!(c.admit("t", 11, 10), Admit::Ignore, "an empty run");
        assert_eq!(c.admit("other", 1, 5), Admit::Ignore);
        assert_eq!(c.get("t"), Some(10), "unchanged");
    }

    #[test]
    fn a_gap_is_filled_first_and_the_cursor_only_moves_forward() {
        let mut c = tracked(10);
        assert_eq!(c.admit("t", 15, 20), Admit::Fill { upto: 14 });
        assert_eq!(c.get("t"), Some(10), "the fill moves it");
        c.advance("t", 14);
        c.advance("t", 20);
        assert_eq!(c.get("t"), Some(20));
        assert_eq!(c.admit("t", 18, 21), Admit::Deliver { skip: 3 });
        c.untrack("t");
        assert_eq!(c.admit("t", 22, 22), Admit::Ignore);
        assert!(c.topics().is_empty());
    }

    #[test]
    fn offsets_at_the_top_of_the_range_do_not_wrap() {
        let mut c = tracked(u64::MAX - 1);
        assert_eq!(c.admit("t", u64::MAX, u64::MAX), Admit::Deliver { skip: 0 });
        assert_eq!(c.admit("t", u64::MAX, u64::MAX), Admit::Ignore);
    }
}
