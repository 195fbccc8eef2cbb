//! Publish one message: validated, authorized, then routed once — an ephemeral topic's message
//! goes straight to the hub, a durable one to the store (and to subscribers after its commit).

use std::sync::Arc;
use std::time::Instant;

use tidings_protocol::server::Message;
use tidings_protocol::{Json, MAX_ID_LEN, ServerMessage};

use super::{OpError, Ops, Who};
use crate::clock;
use crate::hub::ConnId;
use crate::store::{Command, IdempotencyKey, Reply};
use crate::wire::Frame;

/// A publish, from any transport.
pub struct PublishOp {
    /// The topic.
    pub topic: String,
    /// The payload, carried byte for byte.
    pub data: Json,
    /// What subscribers see in `message.from`: a client id, `"api"` or `"server"`.
    pub from: String,
    /// The publishing connection, which gets no echo.
    pub origin: Option<ConnId>,
    /// Idempotency key (durable topics).
    pub id: Option<String>,
    /// When the publish was decoded (fan-out latency metric).
    pub started: Instant,
}

/// Where a publish went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Ephemeral: queued for this many subscribers now; nothing stored, no reply comes.
    Ephemeral {
        /// Subscribers it was queued for.
        queued: usize,
    },
    /// Durable: handed to the store; the reply gets the outcome after the commit.
    Durable,
}

/// Publish `op` as `who`. On a durable topic `reply` gets the outcome after the commit; this
/// returns once the store took the command (it waits only when the store is saturated).
///
/// # Errors
/// [`OpError`] when the name is invalid, the token may not publish there, the id is too long,
/// or the store is gone.
pub async fn publish(
    ops: &Ops,
    who: Who<'_>,
    op: PublishOp,
    reply: Option<Reply>,
) -> Result<Routed, OpError> {
    ops.check_writable(who, &op.topic, "publish to")?;
    if op.id.as_ref().is_some_and(|id| id.len() > MAX_ID_LEN) {
        return Err(OpError::Invalid(format!(
            "id is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if ops.retention.is_ephemeral(&op.topic) {
        let PublishOp {
            topic,
            data,
            from,
            origin,
            started,
            ..
        } = op;
        let frame = || {
            let message = Message::live(topic.clone(), data, from, clock::now_rfc3339());
            Frame::encode(&ServerMessage::Message(message))
        };
        if !ops.store.is_shared() {
            let delivery = ops.hub.publish(&topic, origin, frame, started);
            return Ok(Routed::Ephemeral {
                queued: delivery.queued,
            });
        }
        // Other nodes get it through Redis (in publish order: the writer's queue keeps it).
        let frame = frame();
        let delivery = ops.hub.publish(&topic, origin, || frame.clone(), started);
        ops.store
            .send(Command::Broadcast {
                topic: Arc::from(topic.as_str()),
                frame: frame.json().to_owned(),
            })
            .await?;
        return Ok(Routed::Ephemeral {
            queued: delivery.queued,
        });
    }
    // Idempotency keys are scoped to the publisher: a user's keys never meet another's.
    let id = op.id.map(|id| IdempotencyKey {
        scope: match who {
            Who::User(identity) => format!("user:{}", identity.user),
            Who::Trusted => op.from.clone(),
        },
        id,
    });
    ops.store
        .send(Command::Publish {
            topic: Arc::from(op.topic),
            data: op.data,
            from: op.from,
            origin: op.origin,
            id,
            reply,
            started: op.started,
        })
        .await?;
    Ok(Routed::Durable)
}
