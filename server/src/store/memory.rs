//! The in-memory backend (`--store memory`): same semantics as SQLite, nothing survives a
//! restart. Each start gets new epochs, so clients resuming with an old position learn that
//! recovery was incomplete.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tidings_protocol::Json;

use super::{Backend, Head, Reader, Row, StoreError};

#[derive(Default)]
struct Data {
    topics: HashMap<Arc<str>, VecDeque<Row>>,
    snapshots: HashMap<String, (u64, Json)>,
}

/// Writer half.
pub(super) struct MemoryBackend(Arc<Mutex<Data>>);
/// Reader half.
pub(super) struct MemoryReader(Arc<Mutex<Data>>);

/// A fresh, empty store.
pub(super) fn open() -> (MemoryBackend, MemoryReader) {
    let data = Arc::new(Mutex::new(Data::default()));
    (MemoryBackend(Arc::clone(&data)), MemoryReader(data))
}

impl MemoryBackend {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn heads(&mut self) -> Result<HashMap<String, Head>, StoreError> {
        Ok(HashMap::new())
    }

    fn find_id(&mut self, topic: &str, id: &str, since: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.data().topics.get(topic).and_then(|rows| {
            rows.iter()
                .rev()
                .take_while(|r| r.timestamp.as_str() >= since)
                .find(|r| r.msg_id.as_deref() == Some(id))
                .map(|r| r.offset)
        }))
    }

    fn commit(&mut self, rows: &[Row], _heads: &[(&str, &Head)]) -> Result<(), StoreError> {
        let mut data = self.data();
        for row in rows {
            data.topics
                .entry(Arc::clone(&row.topic))
                .or_default()
                .push_back(row.clone());
        }
        Ok(())
    }

    fn save_snapshot(&mut self, stream: &str, version: u64, state: &str) -> Result<(), StoreError> {
        let state = serde_json::value::RawValue::from_string(state.to_owned())
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut data = self.data();
        let entry = data
            .snapshots
            .entry(stream.to_owned())
            .or_insert((0, state.clone()));
        if version >= entry.0 {
            *entry = (version, state);
        }
        Ok(())
    }

    fn trim(
        &mut self,
        topic: &str,
        keep_from: u64,
        head: &Head,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let upto = keep_from.min(head.first + limit as u64);
        let mut data = self.data();
        let mut deleted = 0;
        if let Some(rows) = data.topics.get_mut(topic) {
            while rows.front().is_some_and(|r| r.offset < upto) {
                rows.pop_front();
                deleted += 1;
            }
        }
        Ok(deleted.max((upto - head.first) as usize))
    }

    fn last_older_than(
        &mut self,
        topic: &str,
        cutoff: &str,
        _head: &Head,
        limit: usize,
    ) -> Result<Option<u64>, StoreError> {
        let data = self.data();
        Ok(data.topics.get(topic).and_then(|rows| {
            rows.iter()
                .take(limit)
                .take_while(|r| r.timestamp.as_str() < cutoff)
                .last()
                .map(|r| r.offset)
        }))
    }
}

impl Reader for MemoryReader {
    fn read(&self, topic: &str, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        let data = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(rows) = data.topics.get(topic) else {
            return Ok(Vec::new());
        };
        let start = match rows.front() {
            Some(first) if after >= first.offset => (after + 1 - first.offset) as usize,
            _ => 0,
        };
        Ok(rows.iter().skip(start).take(limit).cloned().collect())
    }

    fn snapshot(&self, stream: &str) -> Result<Option<(u64, Json)>, StoreError> {
        let data = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(data.snapshots.get(stream).cloned())
    }
}
