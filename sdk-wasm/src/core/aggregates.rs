//! Built-in aggregates: an event stream folded by a Rust [`Aggregate`] instead of a JavaScript
//! reducer, with its commands decided here too ([`Decide`]).
//!
//! The fold is the server's: [`Versioned::apply_stored`] on the snapshot and then each event,
//! as `Repository::load` does (an event this build cannot read is skipped, the version still
//! advances). Which event is next and where to follow from is [`StreamFold`]'s decision, as for
//! reducer streams. The shell only converts: JSON text in (commands, stored events), JSON text
//! out (the state), and calls the application's handlers. The Rust API (`native`) uses
//! [`AggregateFold`] directly, typed, for any [`Aggregate`] (and decides with it for any
//! [`Decide`]).

use std::ops::RangeInclusive;

use tidings_protocol::NewEvent;
use tidings_protocol::aggregate::{Aggregate, CommandError, Decide, EventError, Versioned};
#[cfg(feature = "aggregates")]
use tidings_protocol::order::Order;
use tidings_protocol::server::{Events, Message, StoredEvent};

use super::SdkError;
use super::streams::StreamFold;
use tidings_protocol::json::{Fields, Invalid};

/// The built-in aggregates, by the name `client.stream(id, name)` takes (none in a build
/// without the `aggregates` feature: the npm package's `tidings` entry).
#[cfg(feature = "aggregates")]
pub const NAMES: &[&str] = &["order"];
/// The built-in aggregates, by the name `client.stream(id, name)` takes (none in a build
/// without the `aggregates` feature: the npm package's `tidings` entry).
#[cfg(not(feature = "aggregates"))]
pub const NAMES: &[&str] = &[];

/// The built-in aggregate called `name` (see [`NAMES`]), at version 0.
pub fn builtin(name: &str) -> Option<Box<dyn Model>> {
    match name {
        #[cfg(feature = "aggregates")]
        "order" => Some(Box::new(AggregateFold::<Order>::new())),
        _ => None,
    }
}

/// Why `client.stream(id, name)` has no aggregate called `name`.
pub fn unknown(name: &str) -> String {
    if NAMES.is_empty() {
        format!(
            "no built-in aggregate {name:?}: this build has none; import the package's \
             \"tidings/aggregates\" entry for them"
        )
    } else {
        format!(
            "no built-in aggregate {name:?} (built in: {})",
            NAMES.join(", ")
        )
    }
}

/// What folding one stored event did.
#[derive(Debug)]
pub enum Applied {
    /// Not the next version (a duplicate, or one the subscription's replay brings in order).
    Skipped,
    /// Folded: the version advanced.
    Folded,
    /// The version advanced but this build could not read the event (an unknown type from a
    /// newer writer, or bad data), so the state is unchanged: worth a warning, not a stop.
    Unreadable(EventError),
}

impl Applied {
    /// Whether the version advanced.
    pub fn advanced(&self) -> bool {
        !matches!(self, Applied::Skipped)
    }
}

/// A folded stream of some built-in aggregate, for the shell (object safe, so the shell picks
/// the aggregate by name at run time).
pub trait Model {
    /// The version of the last folded event (0: none).
    fn version(&self) -> u64;
    /// The state in its serde form (JSON text): what the application sees.
    fn state_json(&self) -> String;
    /// Fold the reply to the initial `read`: the snapshot (if any), then its events in order.
    /// Returns, for each event folded (by index into `events.events`), what it did.
    ///
    /// # Errors
    /// `INVALID_SNAPSHOT` when the snapshot's state does not decode as this aggregate: there
    /// is then nothing safe to fold the later events onto.
    fn load(&mut self, events: &Events) -> Result<Vec<(usize, Applied)>, SdkError>;
    /// Fold one event of the stream (live, or our own append accepted at its version).
    fn apply(&mut self, event: &StoredEvent) -> Applied;
    /// Decide `command` (JSON text) on the current state: the events to append.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` when the command does not decode; the aggregate's own code (e.g.
    /// `INVALID_STATE`) when it refuses.
    fn decide(&self, command: &str) -> Result<Vec<NewEvent>, SdkError>;
    /// Where to follow the stream from once loaded.
    fn resume_after(&self) -> u64;
    /// Our append of `count` events was accepted with the stream at `version`: the versions
    /// to fold locally, or `None` when someone else appended in between.
    fn appended(&self, count: u64, version: u64) -> Option<RangeInclusive<u64>>;
}

/// A stream folded by aggregate `A`: its state with the version it includes, and the version
/// bookkeeping every folded stream shares.
#[derive(Debug, Clone, Default)]
pub struct AggregateFold<A> {
    current: Versioned<A>,
    fold: StreamFold,
}

impl<A: Aggregate> AggregateFold<A> {
    /// The default state at version 0.
    pub fn new() -> Self {
        AggregateFold {
            current: Versioned::default(),
            fold: StreamFold::new(),
        }
    }

    /// The state folded so far, with its version.
    pub fn current(&self) -> &Versioned<A> {
        &self.current
    }

    /// The version bookkeeping moved (restore, load of an empty stream): keep the state's
    /// version equal to it.
    fn sync(&mut self) {
        self.current.version = self.fold.version();
    }

    /// The version of the last folded event (0: none).
    pub fn version(&self) -> u64 {
        self.fold.version()
    }

    /// Fold the reply to the initial `read` (see [`Model::load`]).
    ///
    /// # Errors
    /// `INVALID_SNAPSHOT` when the snapshot's state does not decode as `A`.
    pub fn load(&mut self, events: &Events) -> Result<Vec<(usize, Applied)>, SdkError> {
        let plan = self.fold.load(events);
        if let (Some(version), Some(snapshot)) = (plan.snapshot, &events.snapshot) {
            self.current = Versioned::from_snapshot(snapshot).map_err(|e| SdkError::Aggregate {
                code: "INVALID_SNAPSHOT",
                message: format!("the snapshot at version {version} does not decode: {e}"),
            })?;
            self.fold.restored(version);
            self.sync();
        }
        let mut done = Vec::with_capacity(plan.apply.len());
        for i in plan.apply {
            if let Some(event) = events.events.get(i) {
                done.push((i, self.apply(event)));
            }
        }
        self.fold.loaded(events);
        self.sync();
        Ok(done)
    }

    /// Fold one event of the stream (live, or our own append accepted at its version).
    pub fn apply(&mut self, event: &StoredEvent) -> Applied {
        if !self.fold.is_next(event.version) {
            return Applied::Skipped;
        }
        let result = self.current.apply_stored(event);
        self.fold.applied(event.version);
        self.sync();
        match result {
            Ok(()) => Applied::Folded,
            Err(e) => Applied::Unreadable(e),
        }
    }

    /// Where to follow the stream from once loaded.
    pub fn resume_after(&self) -> u64 {
        self.fold.resume_after()
    }

    /// Our append of `count` events was accepted with the stream at `version`: the versions
    /// to fold locally, or `None` when someone else appended in between.
    pub fn appended(&self, count: u64, version: u64) -> Option<RangeInclusive<u64>> {
        self.fold.appended(count, version)
    }
}

impl<A: Decide> AggregateFold<A> {
    /// Decide `command` on the current state: the events to append, encoded for the wire.
    ///
    /// # Errors
    /// The aggregate's own code (e.g. `INVALID_STATE`) when it refuses; `INVALID_ARGUMENT`
    /// when an event does not encode.
    pub fn decide_command(&self, command: &A::Command) -> Result<Vec<NewEvent>, SdkError> {
        let events = self
            .current
            .state
            .handle(command)
            .map_err(|e| SdkError::Aggregate {
                code: e.code(),
                message: e.to_string(),
            })?;
        events
            .iter()
            .map(A::to_new_event)
            .collect::<Result<_, _>>()
            .map_err(|e| SdkError::InvalidArgument(format!("cannot encode an event: {e}")))
    }
}

impl<A: Decide> Model for AggregateFold<A> {
    fn version(&self) -> u64 {
        AggregateFold::version(self)
    }

    fn state_json(&self) -> String {
        serde_json::to_string(&self.current.state).unwrap_or_else(|_| "null".to_owned())
    }

    fn load(&mut self, events: &Events) -> Result<Vec<(usize, Applied)>, SdkError> {
        AggregateFold::load(self, events)
    }

    fn apply(&mut self, event: &StoredEvent) -> Applied {
        AggregateFold::apply(self, event)
    }

    fn decide(&self, command: &str) -> Result<Vec<NewEvent>, SdkError> {
        let command: A::Command = serde_json::from_str(command)
            .map_err(|e| SdkError::InvalidArgument(format!("invalid command: {e}")))?;
        self.decide_command(&command)
    }

    fn resume_after(&self) -> u64 {
        AggregateFold::resume_after(self)
    }

    fn appended(&self, count: u64, version: u64) -> Option<RangeInclusive<u64>> {
        AggregateFold::appended(self, count, version)
    }
}

/// A live message on a stream's topic as the stored event it is: its offset is the version
/// and its data the event's `{type, data}` (anything else, a plain publish to the stream,
/// reads as type `"message"`, as the server's `read` does).
pub fn stored_event(version: u64, message: &Message) -> StoredEvent {
    let envelope = || {
        let f = Fields::of(message.data.get())?;
        Ok::<_, Invalid>((f.string("type")?, f.opt_raw("data")?))
    };
    let (r#type, data) =
        envelope().unwrap_or_else(|_| ("message".to_owned(), message.data.clone()));
    StoredEvent {
        version,
        r#type,
        data,
        timestamp: message.timestamp.clone(),
    }
}

/// One of our appended events, accepted at `version`, as the stored event it became (the
/// timestamp is the server's and not known here: empty).
pub fn appended_event(version: u64, event: &NewEvent) -> StoredEvent {
    StoredEvent {
        version,
        r#type: event.r#type.clone(),
        data: event.data.clone(),
        timestamp: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use tidings_protocol::order::{Order, OrderStatus};
    use tidings_protocol::server::Snapshot;

    use super::*;

    fn read(version: u64, snapshot: Option<Snapshot>, events: Vec<StoredEvent>) -> Events {
        Events {
            r#ref: None,
            stream: "order-1".into(),
            version,
            snapshot,
            events,
            more: false,
        }
    }

    fn order() -> AggregateFold<Order> {
        AggregateFold::new()
    }

    /// Decide `command` on `f`, fold what it decided as if the server accepted it next;
    /// returns the events as stored.
    fn run(f: &mut AggregateFold<Order>, command: &str) -> Vec<StoredEvent> {
        let events = f.decide(command).expect("accepted");
        let from = f.version();
        let stored: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, e)| appended_event(from + 1 + i as u64, e))
            .collect();
        for e in &stored {
            assert!(f.apply(e).advanced());
        }
        stored
    }

    #[test]
    fn commands_decide_and_fold_like_the_aggregate() {
        let mut f = order();
        run(
            &mut f,
            r#"{"type":"create","customer_id":"alice","items":[]}"#,
        );
        run(
            &mut f,
            r#"{"type":"add_item","id":"tee-1","name":"T-shirt","price":19.99,"quantity":3}"#,
        );
        run(&mut f, r#"{"type":"confirm"}"#);
        assert_eq!(f.version(), 3);
        assert_eq!(f.current().state.status, OrderStatus::Confirmed);
        let state: serde_json::Value = serde_json::from_str(&f.state_json()).expect("json");
        assert_eq!(state["total"], serde_json::json!(59.97));
        assert_eq!(state["status"], "confirmed");

        let refused = f.decide(r#"{"type":"add_item","id":"x","name":"X","price":1,"quantity":1}"#);
        let e = refused.expect_err("confirmed orders are fixed");
        assert_eq!(e.code(), "INVALID_STATE");
        assert_eq!(e.to_string(), "cannot add_item an order that is confirmed");
        let bad = f.decide(r#"{"type":"teleport"}"#).expect_err("unknown");
        assert_eq!(bad.code(), "INVALID_ARGUMENT");
        assert_eq!(f.version(), 3, "deciding changes nothing");
    }

    #[test]
    fn a_load_from_a_snapshot_equals_the_full_fold() {
        let mut partial = order();
        let mut log = run(
            &mut partial,
            r#"{"type":"create","customer_id":"c","items":[]}"#,
        );
        log.extend(run(
            &mut partial,
            r#"{"type":"add_item","id":"a","name":"A","price":0.07,"quantity":3}"#,
        ));
        let snapshot = partial.current().to_snapshot().expect("snapshot");
        let mut full = partial.clone();
        let tail = run(
            &mut full,
            r#"{"type":"add_item","id":"b","name":"B","price":19.99,"quantity":3}"#,
        );
        log.extend(tail.clone());

        let mut from_snapshot = order();
        let done = from_snapshot
            .load(&read(3, Some(snapshot), tail))
            .expect("load");
        assert_eq!(done.len(), 1);
        assert_eq!(from_snapshot.current(), full.current());
        assert_eq!(from_snapshot.resume_after(), 3);

        let mut from_scratch = order();
        from_scratch.load(&read(3, None, log)).expect("load");
        assert_eq!(from_scratch.current(), full.current());
    }

    #[test]
    fn unknown_events_advance_the_version_and_bad_snapshots_fail() {
        let mut f = order();
        let unknown = StoredEvent {
            version: 1,
            r#type: "gift_wrapped".into(),
            data: tidings_protocol::json_null(),
            timestamp: String::new(),
        };
        assert!(matches!(
            f.apply(&unknown),
            Applied::Unreadable(EventError::UnknownType(_))
        ));
        assert!(matches!(f.apply(&unknown), Applied::Skipped), "once");
        assert_eq!(f.version(), 1);

        let bad = Snapshot {
            version: 4,
            state: tidings_protocol::Json::to_json(&"not an order").expect("raw"),
        };
        let e = order()
            .load(&read(4, Some(bad), vec![]))
            .expect_err("bad snapshot");
        assert_eq!(e.code(), "INVALID_SNAPSHOT");
    }

    #[test]
    fn builtin_aggregates_are_found_by_name_and_the_lean_build_says_where_they_are() {
        assert!(builtin("invoice").is_none());
        assert!(unknown("invoice").contains("\"invoice\""));
        if cfg!(feature = "aggregates") {
            assert!(builtin("order").is_some());
            assert!(unknown("invoice").contains("built in: order"));
        } else {
            assert!(builtin("order").is_none());
            assert!(unknown("order").contains("tidings/aggregates"));
        }
    }

    #[test]
    fn live_messages_read_as_their_stored_events() {
        let m: Message = serde_json::from_str(
            r#"{"type":"message","topic":"order-1","data":{"type":"order_confirmed","data":{}},
                "from":"x","timestamp":"t","offset":7,"epoch":"e"}"#,
        )
        .expect("message");
        let e = stored_event(7, &m);
        assert_eq!(
            (e.version, e.r#type.as_str(), e.data.get()),
            (7, "order_confirmed", "{}")
        );
        let plain: Message = serde_json::from_str(
            r#"{"type":"message","topic":"order-1","data":"hi","from":"x","timestamp":"t","offset":8}"#,
        )
        .expect("message");
        assert_eq!(stored_event(8, &plain).r#type, "message");
    }
}
