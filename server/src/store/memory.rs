//! The in-memory backend (`--store memory`): same semantics as SQLite, nothing survives a
//! restart. Each start gets new epochs, so clients resuming with an old position learn that
//! recovery was incomplete.
//!
//! Per topic it keeps the rows in offset order and an index of idempotency keys (scope, then
//! id, to the offset), so the idempotency check is two hash lookups and a slot in the deque,
//! never a scan. A topic whose rows are all gone takes no memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tidings_protocol::Json;

use super::{Backend, Head, IdempotencyKey, Page, ReadLimit, Reader, Row, StoreError};

/// One topic's stored rows and the idempotency keys among them.
#[derive(Default)]
struct Log {
    /// Rows in offset order with no gaps: `rows[i].offset == rows[0].offset + i`.
    rows: VecDeque<Row>,
    /// scope → id → offset of the newest row published with that key.
    ids: HashMap<String, HashMap<String, u64>>,
}

impl Log {
    fn get(&self, offset: u64) -> Option<&Row> {
        let first = self.rows.front()?.offset;
        let index = usize::try_from(offset.checked_sub(first)?).ok()?;
        self.rows.get(index)
    }

    fn pop_front(&mut self) {
        let Some(row) = self.rows.pop_front() else {
            return;
        };
        let Some(key) = row.key else { return };
        if let Some(ids) = self.ids.get_mut(&key.scope) {
            if ids.get(&key.id) == Some(&row.offset) {
                ids.remove(&key.id);
            }
            if ids.is_empty() {
                self.ids.remove(&key.scope);
            }
        }
    }
}

#[derive(Default)]
struct Data {
    topics: HashMap<Arc<str>, Log>,
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

fn lock(data: &Mutex<Data>) -> MutexGuard<'_, Data> {
    data.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Backend for MemoryBackend {
    fn heads(&mut self) -> Result<HashMap<String, Head>, StoreError> {
        Ok(HashMap::new())
    }

    fn find_id(
        &mut self,
        topic: &str,
        key: &IdempotencyKey,
        since: &str,
    ) -> Result<Option<(u64, Json)>, StoreError> {
        let data = lock(&self.0);
        let Some(log) = data.topics.get(topic) else {
            return Ok(None);
        };
        let found = log
            .ids
            .get(&key.scope)
            .and_then(|ids| ids.get(&key.id))
            .and_then(|&offset| log.get(offset))
            .filter(|row| row.timestamp.as_str() >= since)
            .map(|row| (row.offset, row.data.clone()));
        Ok(found)
    }

    fn commit(&mut self, rows: &[Row], _heads: &[(&str, &Head)]) -> Result<(), StoreError> {
        let mut data = lock(&self.0);
        for row in rows {
            let log = data.topics.entry(Arc::clone(&row.topic)).or_default();
            if let Some(key) = &row.key {
                log.ids
                    .entry(key.scope.clone())
                    .or_default()
                    .insert(key.id.clone(), row.offset);
            }
            log.rows.push_back(row.clone());
        }
        Ok(())
    }

    fn save_snapshot(&mut self, stream: &str, version: u64, state: &str) -> Result<(), StoreError> {
        let state: Json = serde_json::value::RawValue::from_string(state.to_owned())
            .map_err(|e| StoreError::Backend(e.to_string()))?
            .into();
        let mut data = lock(&self.0);
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
    ) -> Result<u64, StoreError> {
        let upto = keep_from
            .min(head.first.saturating_add(limit as u64))
            .min(head.latest.saturating_add(1));
        if upto <= head.first {
            return Ok(head.first);
        }
        let mut data = lock(&self.0);
        if let Some(log) = data.topics.get_mut(topic) {
            while log.rows.front().is_some_and(|r| r.offset < upto) {
                log.pop_front();
            }
            if log.rows.is_empty() {
                data.topics.remove(topic);
            }
        }
        Ok(upto)
    }

    fn last_older_than(
        &mut self,
        topic: &str,
        cutoff: &str,
        _head: &Head,
        limit: usize,
    ) -> Result<Option<u64>, StoreError> {
        let data = lock(&self.0);
        Ok(data.topics.get(topic).and_then(|log| {
            log.rows
                .iter()
                .take(limit)
                .take_while(|r| r.timestamp.as_str() < cutoff)
                .last()
                .map(|r| r.offset)
        }))
    }

    fn oldest_timestamp(
        &mut self,
        topic: &str,
        _head: &Head,
    ) -> Result<Option<String>, StoreError> {
        let data = lock(&self.0);
        Ok(data
            .topics
            .get(topic)
            .and_then(|log| log.rows.front())
            .map(|r| r.timestamp.clone()))
    }

    fn forget(&mut self, topics: &[Arc<str>]) -> Result<(), StoreError> {
        let mut data = lock(&self.0);
        for topic in topics {
            data.topics.remove(topic.as_ref());
            data.snapshots.remove(topic.as_ref());
        }
        Ok(())
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Reader for MemoryReader {
    fn read(&self, topic: &str, after: u64, limit: ReadLimit) -> Result<Page, StoreError> {
        let data = lock(&self.0);
        let Some(log) = data.topics.get(topic) else {
            return Ok(Page::default());
        };
        let start = match log.rows.front() {
            Some(first) if after >= first.offset => {
                usize::try_from(after - first.offset + 1).unwrap_or(usize::MAX)
            }
            _ => 0,
        };
        let mut page = Page::default();
        let mut bytes = 0usize;
        for row in log.rows.iter().skip(start) {
            let size = row.reply_bytes();
            if !limit.fits(page.rows.len(), bytes, size) {
                page.more = true;
                break;
            }
            bytes = bytes.saturating_add(size);
            page.rows.push(row.clone());
        }
        Ok(page)
    }

    fn snapshot(&self, stream: &str) -> Result<Option<(u64, Json)>, StoreError> {
        Ok(lock(&self.0).snapshots.get(stream).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offset: u64, id: Option<&str>) -> Row {
        Row {
            topic: Arc::from("t"),
            offset,
            data: tidings_protocol::Json::to_json(&offset).expect("json"),
            from: "c".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            key: id.map(|id| IdempotencyKey {
                scope: "user:a".into(),
                id: id.into(),
            }),
            event_type: None,
        }
    }

    #[test]
    fn ids_are_indexed_and_forgotten_with_their_rows() {
        let (mut backend, _reader) = open();
        let rows: Vec<Row> = (1..=100).map(|i| row(i, Some(&format!("m{i}")))).collect();
        backend.commit(&rows, &[]).expect("commit");
        let key = |id: &str| IdempotencyKey {
            scope: "user:a".into(),
            id: id.into(),
        };
        let found = backend.find_id("t", &key("m42"), "2000").expect("find");
        assert_eq!(found.map(|(o, _)| o), Some(42));
        let other = IdempotencyKey {
            scope: "user:b".into(),
            id: "m42".into(),
        };
        assert!(
            backend
                .find_id("t", &other, "2000")
                .expect("find")
                .is_none()
        );
        let head = Head {
            epoch: "e".into(),
            latest: 100,
            first: 1,
        };
        assert_eq!(backend.trim("t", 51, &head, 1000).expect("trim"), 51);
        assert!(
            backend
                .find_id("t", &key("m42"), "2000")
                .expect("find")
                .is_none()
        );
        let data = lock(&backend.0);
        let log = data.topics.get("t").expect("topic");
        assert_eq!(log.ids.get("user:a").map(HashMap::len), Some(50));
        drop(data);
        let head = Head { first: 51, ..head };
        assert_eq!(backend.trim("t", 101, &head, 1000).expect("trim"), 101);
        assert!(
            lock(&backend.0).topics.is_empty(),
            "an emptied topic takes no memory"
        );
    }
}
