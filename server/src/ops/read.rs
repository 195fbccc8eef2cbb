//! Reading what is stored: one page of a topic's `history`, one page of a stream's events
//! (`read`), as the protocol's replies. Pages are bounded in rows and bytes and say whether
//! more is stored.

use tidings_protocol::ServerMessage;
use tidings_protocol::client::{History, Read};
use tidings_protocol::server::{Events, HistoryPage, Message, Snapshot, StoredEvent};

use super::{OpError, Ops, Who};
use crate::store::Row;

/// Stored messages of a topic after `since`, one page.
///
/// # Errors
/// [`OpError`] when the name is invalid, the token may not read it, it is ephemeral, or the
/// store fails.
pub async fn history(ops: &Ops, who: Who<'_>, h: History) -> Result<ServerMessage, OpError> {
    ops.check_readable(who, &h.topic)?;
    let cap = ops.config.history_limit;
    let limit = h.limit.unwrap_or(cap).min(cap) as usize;
    let page = ops
        .store
        .read(&h.topic, h.since.unwrap_or(0), limit)
        .await?;
    // The head after the read: `latest` is then never below an offset on the page.
    let head = ops.store.head(&h.topic).await?;
    let epoch = head.as_ref().map(|h| h.epoch.clone()).unwrap_or_default();
    let last = page.rows.last().map_or(0, |r| r.offset);
    let latest = head.map_or(0, |h| h.latest).max(last);
    Ok(ServerMessage::History(HistoryPage {
        r#ref: h.r#ref,
        topic: h.topic,
        messages: page.rows.iter().map(|r| message(r, &epoch)).collect(),
        epoch,
        latest,
        more: page.more,
    }))
}

/// A stream's latest snapshot (when it helps) and the events after it, one page.
///
/// # Errors
/// As [`history`].
pub async fn read(ops: &Ops, who: Who<'_>, r: Read) -> Result<ServerMessage, OpError> {
    ops.check_readable(who, &r.stream)?;
    let limit = ops.config.history_limit as usize;
    let from = r.from_version.unwrap_or(0);
    let version = ops.store.head(&r.stream).await?.map_or(0, |h| h.latest);
    let snapshot = match ops.store.snapshot(&r.stream).await? {
        Some((v, state)) if v > from && v <= version => Some(Snapshot { version: v, state }),
        _ => None,
    };
    let after = snapshot.as_ref().map_or(from, |s| s.version);
    let page = ops.store.read(&r.stream, after, limit).await?;
    let version = version.max(page.rows.last().map_or(0, |r| r.offset));
    Ok(ServerMessage::Events(Events {
        r#ref: r.r#ref,
        stream: r.stream,
        version,
        snapshot,
        events: page.rows.into_iter().map(event).collect(),
        more: page.more,
    }))
}

/// A stored row as the `message` history and replays send.
pub fn message(row: &Row, epoch: &str) -> Message {
    Message::stored(
        &row.topic,
        row.data.clone(),
        &row.from,
        &row.timestamp,
        row.offset,
        epoch,
    )
}

/// A stored row as an event of its stream.
fn event(row: Row) -> StoredEvent {
    StoredEvent::from_stored(row.offset, row.event_type, row.data, row.timestamp)
}
