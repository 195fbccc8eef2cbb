//! The embedded default backend: one SQLite file in WAL mode.
//!
//! The writer thread owns one connection; readers share a small pool of their own (WAL lets
//! them read while the writer commits). With `fsync` on, every commit is `synchronous=FULL`:
//! an acknowledged message survives a crash of the process or the machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use tidings_protocol::{Json, RawValue};

use super::{Backend, Head, Reader, Row, StoreError};

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
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_id ON messages (topic, msg_id) WHERE msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS snapshots (
    stream  TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state   TEXT NOT NULL
) WITHOUT ROWID;
";

/// The writer's connection.
pub(super) struct SqliteBackend {
    conn: Connection,
}

/// Read connections, opened on demand and reused.
pub(super) struct SqliteReader {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

/// Open (creating if needed) `dir/tidings.db`.
pub(super) fn open(dir: &Path, fsync: bool) -> Result<(SqliteBackend, SqliteReader), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
    let path = dir.join("tidings.db");
    let conn = Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    Ok((
        SqliteBackend { conn },
        SqliteReader {
            path,
            pool: Mutex::new(Vec::new()),
        },
    ))
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
                    latest: r.get::<_, i64>(2)? as u64,
                    first: r.get::<_, i64>(3)? as u64,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn find_id(&mut self, topic: &str, id: &str, since: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT MAX(seq) FROM messages WHERE topic = ?1 AND msg_id = ?2 AND ts >= ?3",
            )?
            .query_row(params![topic, id, since], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten()
            .map(|s| s as u64))
    }

    fn commit(&mut self, rows: &[Row], heads: &[(&str, &Head)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (topic, seq, data, sender, ts, msg_id, event_type)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for row in rows {
                insert.execute(params![
                    row.topic.as_ref(),
                    row.offset as i64,
                    row.data.get(),
                    row.from,
                    row.timestamp,
                    row.msg_id,
                    row.event_type,
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
                    head.latest as i64,
                    head.first as i64
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
            params![stream, version as i64, state],
        )?;
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
        let tx = self.conn.transaction()?;
        let deleted = tx.execute(
            "DELETE FROM messages WHERE topic = ?1 AND seq < ?2",
            params![topic, upto as i64],
        )?;
        tx.execute(
            "UPDATE topics SET first = ?2 WHERE name = ?1",
            params![topic, upto as i64],
        )?;
        tx.commit()?;
        Ok(deleted.max((upto - head.first) as usize))
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
            params![topic, (head.first + limit as u64) as i64, cutoff],
            |r| r.get(0),
        )?;
        Ok(last_old.map(|s| s as u64))
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
    RawValue::from_string(text).map_err(|e| StoreError::Backend(format!("stored JSON: {e}")))
}

impl Reader for SqliteReader {
    fn read(&self, topic: &str, after: u64, limit: usize) -> Result<Vec<Row>, StoreError> {
        let topic: Arc<str> = Arc::from(topic);
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, data, sender, ts, msg_id, event_type FROM messages
                 WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows =
                stmt.query_map(params![topic.as_ref(), after as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, data, from, timestamp, msg_id, event_type) = row?;
                out.push(Row {
                    topic: Arc::clone(&topic),
                    offset: seq as u64,
                    data: raw(data)?,
                    from,
                    timestamp,
                    msg_id,
                    event_type,
                });
            }
            Ok(out)
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
            found.map(|(v, s)| Ok((v as u64, raw(s)?))).transpose()
        })
    }
}
