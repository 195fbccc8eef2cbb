//! Append events to a stream (a durable topic whose version is its latest offset), optionally
//! only at an expected version.

use std::sync::Arc;

use tidings_protocol::NewEvent;

use super::{OpError, Ops, Who};
use crate::store::{Command, Reply};

/// An append, from any transport.
pub struct AppendOp {
    /// The stream.
    pub stream: String,
    /// `None`: at any version; `Some(0)`: the stream must not exist; `Some(n)`: it must be at n.
    pub expected: Option<u64>,
    /// The events, appended atomically and in order.
    pub events: Vec<NewEvent>,
    /// The appender: a client id, `"api"` or `"server"`.
    pub from: String,
}

/// Append `op` as `who`; `reply` gets the outcome after the commit (a version conflict is a
/// [`StoreError::Conflict`](crate::store::StoreError::Conflict)).
///
/// # Errors
/// [`OpError`] when the name is invalid, the token may not append there, the stream is
/// ephemeral, there are no events, or the store is gone.
pub async fn append(
    ops: &Ops,
    who: Who<'_>,
    op: AppendOp,
    reply: Option<Reply>,
) -> Result<(), OpError> {
    ops.check_writable(who, &op.stream, "append to")?;
    if ops.retention.is_ephemeral(&op.stream) {
        return Err(OpError::Ephemeral(op.stream));
    }
    if op.events.is_empty() {
        return Err(OpError::Invalid("append needs at least one event".into()));
    }
    ops.store
        .send(Command::Append {
            stream: Arc::from(op.stream),
            expected: op.expected,
            events: op.events,
            from: op.from,
            reply,
        })
        .await?;
    Ok(())
}
