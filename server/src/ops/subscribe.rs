//! A connection's subscriptions in the hub, and where delivery of each durable topic starts.
//!
//! The order matters (it is what keeps freeing a topic's state safe): a subscriber registers
//! in the hub first and reads the topic's head after. The store frees a topic's head only while
//! nobody is registered, under the hub's lock, so the head read here can never belong to a
//! history that is freed and restarted under this subscriber. On Redis the node's channel
//! subscription for the topic is confirmed between the two ([`Store::watch`]), so whatever is
//! committed after the head read reaches this node.
//!
//! [`Store::watch`]: crate::store::Store::watch

use std::sync::Arc;

use tidings_protocol::Position;

use super::Ops;
use crate::hub::{ConnId, Mailbox};
use crate::store::{Head, StoreError};

/// What subscribing one topic means for its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// An ephemeral topic: live messages only. `recovered` is `Some(false)` when the client
    /// asked to resume (nothing is stored to replay).
    Live {
        /// The answer to a `since`.
        recovered: Option<bool>,
    },
    /// A durable topic: deliver every offset after `start.offset` (the connection's writer
    /// tracks it from there and syncs from the store after the reply).
    Durable {
        /// The last position the client is taken to have.
        start: Position,
        /// For a `since`: whether everything after it is still stored.
        recovered: Option<bool>,
    },
    /// Already subscribed and no resume asked for: nothing changes.
    Unchanged,
}

/// Subscribe `mailbox` to `topic` (registering it when `new`), resuming after `since` if
/// given.
///
/// # Errors
/// [`StoreError`] when the store cannot be reached (Redis down); a new registration is then
/// undone.
pub async fn subscribe(
    ops: &Ops,
    mailbox: &Mailbox,
    topic: &Arc<str>,
    new: bool,
    since: Option<&Position>,
) -> Result<Subscription, StoreError> {
    if new {
        ops.hub.subscribe(topic, mailbox);
    }
    let ephemeral = ops.retention.is_ephemeral(topic);
    if !new && (ephemeral || since.is_none()) {
        return Ok(if ephemeral {
            Subscription::Live {
                recovered: since.map(|_| false),
            }
        } else {
            Subscription::Unchanged
        });
    }
    let head = match ops.store.watch(topic).await {
        Ok(()) if ephemeral => {
            return Ok(Subscription::Live {
                recovered: since.map(|_| false),
            });
        }
        Ok(()) => ops.store.head(topic).await,
        Err(e) => Err(e),
    };
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            if new {
                ops.hub.unsubscribe(topic, mailbox.id());
            }
            return Err(e);
        }
    };
    let (start, recovered) = start_position(head, since);
    Ok(Subscription::Durable { start, recovered })
}

/// Remove connection `id` from `topic`.
pub fn unsubscribe(ops: &Ops, id: ConnId, topic: &str) {
    ops.hub.unsubscribe(topic, id);
}

/// Where delivery of a durable topic starts (the last position the client is taken to have),
/// and (when the client asked to resume) whether the resume is complete.
fn start_position(head: Option<Head>, position: Option<&Position>) -> (Position, Option<bool>) {
    let at = |offset: u64| Position {
        offset,
        epoch: head.as_ref().map(|h| h.epoch.clone()),
    };
    let Some(position) = position else {
        return (at(head.as_ref().map_or(0, |h| h.latest)), None);
    };
    let Some(h) = &head else {
        // Nothing was ever stored here: complete only if the client has nothing either.
        return (at(0), Some(position.offset == 0));
    };
    let same_history = position.epoch.as_deref().is_none_or(|e| e == h.epoch);
    if !same_history || position.offset > h.latest {
        // The history the client's offset refers to is gone: deliver from now on.
        (at(h.latest), Some(false))
    } else if position.offset + 1 < h.first {
        // Part of what was missed has been trimmed: deliver what is left.
        (at(h.first - 1), Some(false))
    } else {
        (at(position.offset), Some(true))
    }
}
