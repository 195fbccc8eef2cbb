//! Folding an event stream on the client: which event to apply, in which order, and where to
//! follow the stream from. The reducer itself belongs to the application (the wasm layer calls
//! it); every decision about versions is made here, on plain data.
//!
//! Rules:
//! * events apply one version at a time: only `version + 1` is next, anything else is skipped
//!   (a duplicate, or a later event that the subscription's replay will bring in order);
//! * the state advances only when the reducer accepted the event ([`StreamFold::applied`]);
//! * after the initial `read`, the stream is followed with `since` = the folded version, so no
//!   event between the read and the live feed is missed or applied twice;
//! * an `append` of ours that was accepted at `version` is folded at once if nothing else was
//!   appended in between; otherwise the live feed brings every event in order.

use std::ops::RangeInclusive;

use tidings_protocol::server::Events;

/// What to do with the reply to the initial `read`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Start from the snapshot at this version (its state replaces the initial one).
    pub snapshot: Option<u64>,
    /// The indexes in `events` to apply, in order (each is the next version).
    pub apply: Vec<usize>,
}

/// The version bookkeeping of one folded stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFold {
    version: u64,
}

impl StreamFold {
    /// A stream folded from its beginning.
    pub fn new() -> Self {
        Self::default()
    }

    /// The version of the last applied event (0: none).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether an event of `version` is the next one to apply.
    pub fn is_next(&self, version: u64) -> bool {
        version == self.version.saturating_add(1)
    }

    /// The reducer accepted the event of `version`.
    pub fn applied(&mut self, version: u64) {
        if self.is_next(version) {
            self.version = version;
        }
    }

    /// Plan the fold of the initial `read` (call [`StreamFold::restored`] for the snapshot and
    /// [`StreamFold::applied`] for each event the reducer accepts).
    pub fn load(&self, events: &Events) -> Load {
        let snapshot = events.snapshot.as_ref().map(|s| s.version);
        let mut next = snapshot.unwrap_or(self.version).saturating_add(1);
        let mut apply = Vec::new();
        for (i, e) in events.events.iter().enumerate() {
            if e.version == next {
                apply.push(i);
                next = next.saturating_add(1);
            }
        }
        Load { snapshot, apply }
    }

    /// The snapshot at `version` replaced the state.
    pub fn restored(&mut self, version: u64) {
        self.version = version;
    }

    /// After the initial `read` was folded: an empty stream takes the server's version (it has
    /// no events to apply, but follows from there).
    pub fn loaded(&mut self, events: &Events) {
        if events.events.is_empty() && events.snapshot.is_none() {
            self.version = events.version;
        }
    }

    /// Where to follow the stream from once loaded.
    pub fn resume_after(&self) -> u64 {
        self.version
    }

    /// Our append of `count` events was accepted, the stream now at `version`: the versions to
    /// fold locally, or `None` when someone else appended in between.
    pub fn appended(&self, count: u64, version: u64) -> Option<RangeInclusive<u64>> {
        if count == 0 || self.version.checked_add(count) != Some(version) {
            return None;
        }
        Some(self.version + 1..=version)
    }
}

#[cfg(test)]
mod tests {
    use tidings_protocol::json_null;
    use tidings_protocol::server::{Snapshot, StoredEvent};

    use super::*;

    fn events(version: u64, snapshot: Option<u64>, versions: &[u64]) -> Events {
        Events {
            r#ref: None,
            stream: "s".into(),
            version,
            snapshot: snapshot.map(|v| Snapshot {
                version: v,
                state: json_null(),
            }),
            events: versions
                .iter()
                .map(|v| StoredEvent {
                    version: *v,
                    r#type: "e".into(),
                    data: json_null(),
                    timestamp: "t".into(),
                })
                .collect(),
            more: false,
        }
    }

    #[test]
    fn a_load_applies_the_snapshot_then_the_events_in_order() {
        let mut f = StreamFold::new();
        let e = events(12, Some(10), &[11, 12]);
        let plan = f.load(&e);
        assert_eq!(
            plan,
            Load {
                snapshot: Some(10),
                apply: vec![0, 1]
            }
        );
        f.restored(10);
        for i in plan.apply {
            f.applied(e.events[i].version);
        }
        f.loaded(&e);
        assert_eq!((f.version(), f.resume_after()), (12, 12));
    }

    #[test]
    fn events_out_of_order_or_repeated_are_skipped() {
        let f = StreamFold::new();
        assert_eq!(f.load(&events(5, None, &[1, 3, 2, 2])).apply, [0, 2]);
        let mut f = StreamFold::new();
        assert!(f.is_next(1) && !f.is_next(2));
        f.applied(2);
        assert_eq!(f.version(), 0, "not the next one");
        f.applied(1);
        f.applied(1);
        assert_eq!(f.version(), 1, "once");
    }

    #[test]
    fn an_empty_stream_follows_from_the_servers_version() {
        let mut f = StreamFold::new();
        let e = events(0, None, &[]);
        assert_eq!(f.load(&e).apply, Vec::<usize>::new());
        f.loaded(&e);
        assert_eq!(f.resume_after(), 0);
    }

    #[test]
    fn our_append_is_folded_at_once_only_if_nothing_came_between() {
        let mut f = StreamFold::new();
        f.restored(4);
        assert_eq!(f.appended(2, 6), Some(5..=6));
        assert_eq!(f.appended(2, 7), None, "someone else appended first");
        assert_eq!(f.appended(0, 4), None);
    }
}
