//! Event-sourced aggregates for Rust users: load from the latest snapshot plus later events,
//! save new events with optimistic concurrency, snapshot every N events.
//!
//! This is the template's `Repository`, made durable and safe under concurrent writers: a
//! save appends at the version the aggregate was loaded at, so of two writers that loaded the
//! same version exactly one succeeds and the other gets [`RepositoryError::Conflict`] (reload
//! and retry). Snapshots are an optimisation only; the events are the truth.

use std::marker::PhantomData;

use tidings_protocol::Aggregate;
use tidings_protocol::aggregate::{EventError, Versioned};
use tidings_protocol::server::Snapshot;

use tidings_protocol::server::StoredEvent;

use crate::store::{Row, Store, StoreError};

/// Events read per page while loading.
const LOAD_PAGE: usize = 1000;

/// Why loading or saving an aggregate failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// Another writer appended since this aggregate was loaded.
    #[error("stream is at version {current}, the aggregate was loaded at {expected}")]
    Conflict {
        /// The version the save expected.
        expected: u64,
        /// The stream's actual version.
        current: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// A stored event or snapshot could not be decoded, or the stream has a gap.
    #[error(transparent)]
    Event(#[from] EventError),
    /// An event or the state could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<StoreError> for RepositoryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { expected, current } => {
                RepositoryError::Conflict { expected, current }
            }
            other => RepositoryError::Store(other),
        }
    }
}

/// Loads and saves aggregates of type `A`, one stream per aggregate id.
pub struct Repository<A> {
    store: Store,
    snapshot_every: u64,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Repository<A> {
    /// A repository on `store` that saves a snapshot whenever a save crosses a multiple of
    /// `snapshot_every` events (0: never).
    pub fn new(store: Store, snapshot_every: u64) -> Self {
        Repository {
            store,
            snapshot_every,
            _aggregate: PhantomData,
        }
    }

    /// The current state of aggregate `id` (the default state at version 0 if it has no
    /// events). Events of types this build does not know are skipped with a warning.
    pub async fn load(&self, id: &str) -> Result<Versioned<A>, RepositoryError> {
        let latest = self.store.head(id).await?.map_or(0, |h| h.latest);
        let mut current = match self.store.snapshot(id).await? {
            Some((version, state)) if version <= latest => {
                Versioned::from_snapshot(&Snapshot { version, state })?
            }
            _ => Versioned::default(),
        };
        while current.version < latest {
            let rows = self.store.read(id, current.version, LOAD_PAGE).await?.rows;
            if rows.is_empty() {
                return Err(EventError::OutOfOrder {
                    expected: current.version + 1,
                    found: latest,
                }
                .into());
            }
            for row in rows {
                match current.apply_stored(&event(row)) {
                    Ok(()) => {}
                    Err(e @ EventError::OutOfOrder { .. }) => return Err(e.into()),
                    Err(e) => tracing::warn!(stream = id, "skipping event: {e}"),
                }
            }
        }
        Ok(current)
    }

    /// Append `events` to aggregate `id` at the version `current` was loaded at, then apply
    /// them to `current`. Returns the new version.
    pub async fn save(
        &self,
        id: &str,
        current: &mut Versioned<A>,
        events: Vec<A::Event>,
    ) -> Result<u64, RepositoryError> {
        if events.is_empty() {
            return Ok(current.version);
        }
        let wire = events
            .iter()
            .map(A::to_new_event)
            .collect::<Result<Vec<_>, _>>()?;
        let before = current.version;
        let committed = self.store.append(id, Some(before), wire, "server").await?;
        current.state = std::mem::take(&mut current.state).fold(events.iter());
        current.version = committed.offset;
        if self.snapshot_every > 0
            && before / self.snapshot_every != current.version / self.snapshot_every
        {
            let snapshot = current.to_snapshot()?;
            self.store
                .save_snapshot(id, snapshot.version, snapshot.state)
                .await?;
        }
        Ok(current.version)
    }
}

/// A stored row of a stream as its event.
fn event(row: Row) -> StoredEvent {
    StoredEvent::from_stored(row.offset, row.event_type, row.data, row.timestamp)
}
