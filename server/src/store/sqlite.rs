//! The embedded default backend: one SQLite file in WAL mode.
//!
//! The writer thread owns one connection; readers share a small pool of their own (WAL lets
//! them read while the writer commits). With `fsync` on, every commit is `synchronous=FULL`:
//! an acknowledged message survives a crash of the process or the machine.
//!
//! The schema is versioned with `PRAGMA user_version`; `open` upgrades older files in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tidings_protocol::{Json, RawValue};

use super::{
    Backend, Head, IdempotencyKey, Page, ReadLimit, Reader, Row, StoreError, offset_of,
    reply_bytes, sql_offset,
};

/// The schema this build writes.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    name   TEXT PRIMARY KEY,
    epoch  TEXT NOT NULL,
    latest INTEGER NOT NULL,
    first  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    topic      TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    data       TEXT NOT NULL,
    sender     TEXT NOT NULL,
    ts         TEXT NOT NULL,
    msg_id     TEXT,
    event_type TEXT,
    id_scope   TEXT,
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_idem
    ON messages (topic, id_scope, msg_id, seq) WHERE msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS snapshots (
    stream  TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state   TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 0 (before idempotency keys were scoped) to 1: ids of old rows keep no scope, so
/// they never match a new publish; a retry across the upgrade may be stored twice.
const MIGRATE_0_TO_1: &str = "
ALTER TABLE messages ADD COLUMN id_scope TEXT;
DROP INDEX IF EXISTS messages_id;
";

/// The idempotency lookup: a search of `messages_idem`, never a scan of the topic.
pub(super) const FIND_ID: &str = "SELECT seq, data FROM messages INDEXED BY messages_idem
     WHERE topic = ?1 AND id_scope = ?2 AND msg_id = ?3 AND msg_id IS NOT NULL AND ts >= ?4
     ORDER BY seq DESC LIMIT 1";

/// The writer's connection.
pub(super) struct SqliteBackend {
    conn: Connection,
}

/// Read connections, opened on demand and reused.
pub(super) struct SqliteReader {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

/// Open (creating or upgrading if needed) `dir/tidings.db`.
pub(super) fn open(dir: &Path, fsync: bool) -> Result<(SqliteBackend, SqliteReader), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
    let path = dir.join("tidings.db");
    let conn = Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&conn)?;
    Ok((
        SqliteBackend { conn },
        SqliteReader {
            path,
            pool: Mutex::new(Vec::new()),
        },
    ))
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the database was written by a newer Tidings (schema {version}, this build knows \
             {SCHEMA_VERSION})"
        )));
    }
    let has_messages: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages')",
        [],
        |r| r.get(0),
    )?;
    if has_messages && version < 1 {
        conn.execute_batch(MIGRATE_0_TO_1)?;
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// What [`backup`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    /// Database pages copied.
    pub pages: u64,
    /// Size of the copy in bytes.
    pub bytes: u64,
}

/// Copy the store in `data_dir` to the file `dest` with SQLite's online backup API, while a
/// server may be writing to it: the copy is one consistent snapshot. The copy is checked
/// (`PRAGMA quick_check`) before this returns. `replace`: overwrite an existing `dest`.
///
/// # Errors
/// [`StoreError::Backend`] when there is no store in `data_dir`, `dest` exists (without
/// `replace`), or SQLite fails (the partial copy is removed).
pub fn backup(data_dir: &Path, dest: &Path, replace: bool) -> Result<BackupReport, StoreError> {
    use rusqlite::OpenFlags;
    let source_path = data_dir.join("tidings.db");
    if !source_path.is_file() {
        return Err(StoreError::Backend(format!(
            "no store at {}",
            source_path.display()
        )));
    }
    if dest.exists() {
        if !replace {
            return Err(StoreError::Backend(format!("{} exists", dest.display())));
        }
        std::fs::remove_file(dest)
            .map_err(|e| StoreError::Backend(format!("remove {}: {e}", dest.display())))?;
    }
    let source = Connection::open_with_flags(
        &source_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(std::time::Duration::from_secs(5))?;
    let result = (|| {
        let mut copy = Connection::open(dest)?;
        {
            let backup = rusqlite::backup::Backup::new(&source, &mut copy)?;
            // All pages in one step: one read transaction, so one consistent snapshot. A WAL
            // reader does not block the server's writer meanwhile.
            backup.step(-1)?;
        }
        let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Backend(format!(
                "the copy failed its check: {check}"
            )));
        }
        let pages: i64 = copy.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = copy.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(BackupReport {
            pages: offset_of(pages),
            bytes: offset_of(pages).saturating_mul(offset_of(size)),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

impl Backend for SqliteBackend {
    fn heads(&mut self) -> Result<HashMap<String, Head>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, epoch, latest, first FROM topics")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Head {
                    epoch: r.get(1)?,
                    latest: offset_of(r.get(2)?),
                    first: offset_of(r.get(3)?),
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn find_id(
        &mut self,
        topic: &str,
        key: &IdempotencyKey,
        since: &str,
    ) -> Result<Option<(u64, Json)>, StoreError> {
        let found: Option<(i64, String)> = self
            .conn
            .prepare_cached(FIND_ID)?
            .query_row(params![topic, key.scope, key.id, since], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        found
            .map(|(seq, data)| Ok((offset_of(seq), raw(data)?)))
            .transpose()
    }

    fn commit(&mut self, rows: &[Row], heads: &[(&str, &Head)]) -> Result<(), StoreError> {
        // IMMEDIATE: the write lock is taken at BEGIN, so a commit never fails half-way on a
        // read-to-write upgrade.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (topic, seq, data, sender, ts, msg_id, event_type, id_scope)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for row in rows {
                insert.execute(params![
                    row.topic.as_ref(),
                    sql_offset(row.offset),
                    row.data.get(),
                    row.from,
                    row.timestamp,
                    row.key.as_ref().map(|k| k.id.as_str()),
                    row.event_type,
                    row.key.as_ref().map(|k| k.scope.as_str()),
                ])?;
            }
            let mut upsert = tx.prepare_cached(
                "INSERT INTO topics (name, epoch, latest, first) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET latest = excluded.latest",
            )?;
            for (name, head) in heads {
                upsert.execute(params![
                    name,
                    head.epoch,
                    sql_offset(head.latest),
                    sql_offset(head.first)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn save_snapshot(&mut self, stream: &str, version: u64, state: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO snapshots (stream, version, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (stream) DO UPDATE SET version = excluded.version, state = excluded.state
             WHERE excluded.version >= snapshots.version",
            params![stream, sql_offset(version), state],
        )?;
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM messages WHERE topic = ?1 AND seq < ?2",
            params![topic, sql_offset(upto)],
        )?;
        tx.execute(
            "UPDATE topics SET first = ?2 WHERE name = ?1",
            params![topic, sql_offset(upto)],
        )?;
        tx.commit()?;
        Ok(upto)
    }

    fn last_older_than(
        &mut self,
        topic: &str,
        cutoff: &str,
        head: &Head,
        limit: usize,
    ) -> Result<Option<u64>, StoreError> {
        let last_old: Option<i64> = self.conn.query_row(
            "SELECT MAX(seq) FROM messages WHERE topic = ?1 AND seq < ?2 AND ts < ?3",
            params![
                topic,
                sql_offset(head.first.saturating_add(limit as u64)),
                cutoff
            ],
            |r| r.get(0),
        )?;
        Ok(last_old.map(offset_of))
    }

    fn oldest_timestamp(&mut self, topic: &str, head: &Head) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT ts FROM messages WHERE topic = ?1 AND seq >= ?2 ORDER BY seq LIMIT 1",
            )?
            .query_row(params![topic, sql_offset(head.first)], |r| r.get(0))
            .optional()?)
    }

    fn forget(&mut self, topics: &[Arc<str>]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut messages = tx.prepare_cached("DELETE FROM messages WHERE topic = ?1")?;
            let mut heads = tx.prepare_cached("DELETE FROM topics WHERE name = ?1")?;
            let mut snapshots = tx.prepare_cached("DELETE FROM snapshots WHERE stream = ?1")?;
            for topic in topics {
                messages.execute(params![topic.as_ref()])?;
                heads.execute(params![topic.as_ref()])?;
                snapshots.execute(params![topic.as_ref()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('probe', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![crate::clock::now_rfc3339()],
        )?;
        Ok(())
    }
}

impl SqliteReader {
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path)?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let result = f(&conn);
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < 8 {
            pool.push(conn);
        }
        result
    }
}

fn raw(text: String) -> Result<Json, StoreError> {
    RawValue::from_string(text)
        .map(Json::from)
        .map_err(|e| StoreError::Backend(format!("stored JSON: {e}")))
}

impl Reader for SqliteReader {
    fn read(&self, topic: &str, after: u64, limit: ReadLimit) -> Result<Page, StoreError> {
        let topic: Arc<str> = Arc::from(topic);
        let Ok(after) = i64::try_from(after) else {
            return Ok(Page::default());
        };
        self.with_conn(|conn| {
            // One row more than the count bound, to tell whether more is stored. The payload
            // of a row is only loaded once its size (octet_length, read without loading it)
            // is known to fit.
            let mut stmt = conn.prepare_cached(
                "SELECT seq, octet_length(data), data, sender, ts, event_type FROM messages
                 WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let fetch = i64::try_from(limit.rows.saturating_add(1)).unwrap_or(i64::MAX);
            let mut rows = stmt.query(params![topic.as_ref(), after, fetch])?;
            let mut page = Page::default();
            let mut bytes = 0usize;
            while let Some(row) = rows.next()? {
                let size: i64 = row.get(1)?;
                let from: String = row.get(3)?;
                let timestamp: String = row.get(4)?;
                let size = reply_bytes(
                    usize::try_from(size).unwrap_or(usize::MAX),
                    &from,
                    &timestamp,
                    &topic,
                );
                if !limit.fits(page.rows.len(), bytes, size) {
                    page.more = true;
                    break;
                }
                bytes = bytes.saturating_add(size);
                page.rows.push(Row {
                    topic: Arc::clone(&topic),
                    offset: offset_of(row.get(0)?),
                    data: raw(row.get(2)?)?,
                    from,
                    timestamp,
                    key: None,
                    event_type: row.get(5)?,
                });
            }
            Ok(page)
        })
    }

    fn snapshot(&self, stream: &str) -> Result<Option<(u64, Json)>, StoreError> {
        self.with_conn(|conn| {
            let found: Option<(i64, String)> = conn
                .query_row(
                    "SELECT version, state FROM snapshots WHERE stream = ?1",
                    params![stream],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            found.map(|(v, s)| Ok((offset_of(v), raw(s)?))).transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidings-sqlite-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_idempotency_lookup_is_an_index_search() {
        let dir = temp_dir("plan");
        let (backend, _) = open(&dir, false).expect("open");
        let mut plan = backend
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {FIND_ID}"))
            .expect("explain");
        let details: Vec<String> = plan
            .query_map(params!["t", "user:a", "id", "2026"], |r| {
                r.get::<_, String>(3)
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let text = details.join(" | ");
        assert!(text.contains("USING INDEX messages_idem"), "{text}");
        assert!(!text.contains("SCAN"), "{text}");
        assert!(!text.contains("TEMP B-TREE"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_version_0_database_is_upgraded_in_place() {
        let dir = temp_dir("migrate");
        std::fs::create_dir_all(&dir).expect("dir");
        {
            let conn = Connection::open(dir.join("tidings.db")).expect("open");
            conn.execute_batch(
                "CREATE TABLE topics (name TEXT PRIMARY KEY, epoch TEXT NOT NULL,
                     latest INTEGER NOT NULL, first INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE messages (topic TEXT NOT NULL, seq INTEGER NOT NULL,
                     data TEXT NOT NULL, sender TEXT NOT NULL, ts TEXT NOT NULL, msg_id TEXT,
                     event_type TEXT, PRIMARY KEY (topic, seq)) WITHOUT ROWID;
                 CREATE INDEX messages_id ON messages (topic, msg_id) WHERE msg_id IS NOT NULL;
                 INSERT INTO topics VALUES ('t', 'e1', 1, 1);
                 INSERT INTO messages VALUES ('t', 1, '{}', 'c', '2026-01-01T00:00:00.000Z',
                     'm1', NULL);",
            )
            .expect("old schema");
        }
        let (mut backend, reader) = open(&dir, false).expect("upgrade");
        let heads = backend.heads().expect("heads");
        assert_eq!(heads.get("t").map(|h| h.latest), Some(1));
        let key = IdempotencyKey {
            scope: "user:a".into(),
            id: "m1".into(),
        };
        assert!(backend.find_id("t", &key, "2000").expect("find").is_none());
        let page = reader
            .read(
                "t",
                0,
                ReadLimit {
                    rows: 10,
                    bytes: 1 << 20,
                },
            )
            .expect("read");
        assert_eq!(page.rows.len(), 1);
        drop((backend, reader));
        assert!(open(&dir, false).is_ok(), "opening again is a no-op");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
