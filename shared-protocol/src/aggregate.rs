//! Aggregates: state folded from an event stream, shared by the server and the browser SDK.
//!
//! This is the template's `Aggregate` base class split into what is pure and what is not.
//! The pure part lives here: an [`Aggregate`] applies typed events to its state, and converts
//! them to and from the wire shape `{"type": "...", "data": ...}` ([`NewEvent`] to append,
//! [`StoredEvent`] when read back). Loading, saving and snapshot scheduling (the template's
//! `Repository`) need a store and belong to the server; this crate does no I/O.
//!
//! Versions are not part of an aggregate's state. The template kept `self.version` on the
//! aggregate, which meant every aggregate re-implemented the bookkeeping and its snapshots
//! carried the version twice. Here the state is only what the events say, and [`Versioned`]
//! pairs it with the stream version it includes: exactly the wire's [`Snapshot`] shape, and
//! the number a writer sends as `expected_version` on its next `append`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Json;
use crate::client::NewEvent;
use crate::server::{Snapshot, StoredEvent};

/// State folded from a stream of events. Pure: no I/O, no clock, no randomness, so the same
/// events give the same state on the server and in the browser.
///
/// Commands (validating a request and deciding which events to append) are ordinary methods
/// on the implementing type; see [`crate::order::Order`] for the worked example. An aggregate
/// whose commands are data (so a browser can send them to the SDK) also implements [`Decide`].
pub trait Aggregate: Default + Clone + Serialize + DeserializeOwned {
    /// The event type. It must serialize as `{"type": "...", "data": {...}}`, i.e. with
    /// `#[serde(tag = "type", content = "data")]`, so that [`Aggregate::to_new_event`] and
    /// [`Aggregate::from_wire`] can map it onto the wire's `type` and `data` fields.
    type Event: Serialize + DeserializeOwned + Clone;

    /// Every wire `type` that [`Aggregate::Event`] decodes.
    ///
    /// Used only to tell an event from a newer writer (an unknown type, safe to skip) from a
    /// known type with data that does not fit (a bug or corruption worth stopping for).
    const EVENT_TYPES: &'static [&'static str];

    /// Apply one event. Never fails: an event is a fact that already happened, so an
    /// aggregate records it even where its own commands would have refused to emit it.
    fn apply(&mut self, event: &Self::Event);

    /// Fold events, in order, starting from this state: how a stream (or the tail after a
    /// snapshot) becomes the current state.
    fn fold<'a>(mut self, events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        for event in events {
            self.apply(event);
        }
        self
    }

    /// Encode an event for an `append` request.
    fn to_new_event(event: &Self::Event) -> Result<NewEvent, serde_json::Error> {
        let text = serde_json::to_string(event)?;
        let wire: OwnedWire = serde_json::from_str(&text)?;
        Ok(NewEvent {
            r#type: wire.r#type,
            data: wire.data,
        })
    }

    /// Decode an event from the wire's `type` and `data` (of a [`StoredEvent`], a live
    /// stream message, or a [`NewEvent`]).
    fn from_wire(event_type: &str, data: &Json) -> Result<Self::Event, EventError> {
        let text = serde_json::to_string(&BorrowedWire {
            r#type: event_type,
            data,
        })
        .map_err(|source| invalid(event_type, source))?;
        serde_json::from_str(&text).map_err(|source| {
            if Self::EVENT_TYPES.contains(&event_type) {
                invalid(event_type, source)
            } else {
                EventError::UnknownType(event_type.to_owned())
            }
        })
    }

    /// Decode and apply one wire event. On error the state is unchanged and the error says
    /// why, so a reader can skip events from newer writers ([`EventError::UnknownType`])
    /// and keep going instead of failing the whole stream.
    fn apply_wire(&mut self, event_type: &str, data: &Json) -> Result<(), EventError> {
        let event = Self::from_wire(event_type, data)?;
        self.apply(&event);
        Ok(())
    }
}

/// The optional command half of an [`Aggregate`]: commands as data, decided by one function.
///
/// [`Aggregate`] alone folds events; an aggregate that also implements `Decide` can be
/// driven by commands that arrive as JSON (the browser SDK's `stream.execute(command)`), and
/// its refusals carry a stable code ([`CommandError::code`]) so an application can branch on
/// them wherever the command ran. Deciding is pure, like folding: the same state and command
/// give the same events (or the same refusal) on the server and in the browser.
pub trait Decide: Aggregate {
    /// A command: a request to change the aggregate. Serialized like the events, tagged by
    /// `"type"` (e.g. `{"type": "confirm"}`).
    type Command: Serialize + DeserializeOwned;

    /// Why a command was refused.
    type Error: CommandError;

    /// Check `command` against the current state and return the events to append, or why
    /// not. Does not change the state: apply the events once they are stored.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// A refused command: a readable message (`Display`) and a stable code.
pub trait CommandError: std::error::Error {
    /// The stable, machine-readable code, e.g. `INVALID_STATE`: what applications branch on.
    fn code(&self) -> &'static str;
}

/// Why a wire event was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The event's `type` is not one this aggregate knows, typically written by a newer
    /// version of the application. Skipping it is forward compatible.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The `type` is known but its `data` does not have that event's shape.
    #[error("invalid {event_type} event: {source}")]
    InvalidData {
        /// The event's type.
        event_type: String,
        /// serde's description of what was wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A stored event's version is not the next one ([`Versioned::apply_stored`]): an event
    /// was missed or delivered twice, and applying it would corrupt the state.
    #[error("event version {found} out of order: expected {expected}")]
    OutOfOrder {
        /// The version that would have been next.
        expected: u64,
        /// The version the event carried.
        found: u64,
    },
}

fn invalid(event_type: &str, source: serde_json::Error) -> EventError {
    EventError::InvalidData {
        event_type: event_type.to_owned(),
        source,
    }
}

/// An event in wire shape, decoded from an [`Aggregate::Event`]'s serialization.
#[derive(Deserialize)]
struct OwnedWire {
    r#type: String,
    /// Absent for unit variants, which adjacently tagged serde writes without `data`.
    #[serde(default = "crate::json_null")]
    data: Json,
}

/// An event in wire shape, to be decoded as an [`Aggregate::Event`].
#[derive(Serialize)]
struct BorrowedWire<'a> {
    r#type: &'a str,
    data: &'a Json,
}

/// An aggregate's state together with the stream version it includes.
///
/// Serializes as `{"version": n, "state": {...}}`, the shape of the wire's [`Snapshot`].
/// `version` is 0 for a stream that does not exist yet (so it is also the right
/// `expected_version` for the `append` that creates it), and the version of the last applied
/// event otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Versioned<A> {
    /// The version of the last event folded into `state` (0: none).
    pub version: u64,
    /// The folded state.
    pub state: A,
}

impl<A: Aggregate> Versioned<A> {
    /// Restore from a snapshot a `read` returned, so only the events after it need applying.
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Self, serde_json::Error> {
        Ok(Versioned {
            version: snapshot.version,
            state: serde_json::from_str(snapshot.state.get())?,
        })
    }

    /// Encode as a snapshot for the store to save.
    pub fn to_snapshot(&self) -> Result<Snapshot, serde_json::Error> {
        Ok(Snapshot {
            version: self.version,
            state: Json::to_json(&self.state)?,
        })
    }

    /// Apply the next stored event of the stream.
    ///
    /// Its version must be exactly `self.version + 1`; otherwise nothing changes and the
    /// error is [`EventError::OutOfOrder`]. If the event cannot be decoded (unknown type or
    /// bad data) the state is unchanged but the version still advances, because the event
    /// is in the stream whether or not this reader understands it; the error is a report
    /// for the caller to log, not a reason to stop.
    pub fn apply_stored(&mut self, event: &StoredEvent) -> Result<(), EventError> {
        let expected = self.version.saturating_add(1);
        if event.version != expected {
            return Err(EventError::OutOfOrder {
                expected,
                found: event.version,
            });
        }
        self.version = expected;
        self.state.apply_wire(&event.r#type, &event.data)
    }
}
