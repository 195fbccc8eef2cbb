//! Presence operations: a subscriber of a presence topic joins it, leaves it, and anyone who
//! may subscribe to the topic can ask who is there.
//!
//! A join or leave is announced at once to this node's other subscribers of the topic (one
//! encoded frame, like an ephemeral message; a member never gets its own join) and, on Redis,
//! written to the shared set whose script announces it to the other nodes. On Redis each node
//! refreshes its own members every third of the presence TTL and reaps (each second, for the
//! topics it has members of) members whose node stopped refreshing them — the reap announces
//! their `leave` to every node.

use std::sync::Arc;
use std::time::Duration;

use tidings_protocol::ServerMessage;
use tidings_protocol::client::PresenceQuery;
use tidings_protocol::server::{Member, MemberEvent, PresenceReply, PresenceStats};

use super::{OpError, Ops, Who};
use crate::clock::unix_millis;
use crate::hub::ConnId;
use crate::presence::Presence;
use crate::store::{Command, PresenceChange, PresenceEntry, Store};
use crate::wire::Frame;

/// How often a node reaps the members other nodes left behind (their `leave` is seen within
/// the TTL plus this).
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Make the connection `conn` a member of `topic` (when it keeps presence): announce its join.
pub fn join(ops: &Ops, topic: &Arc<str>, conn: ConnId, member: Member) {
    if !ops.presence.enabled(topic) {
        return;
    }
    let joined = ops.presence.join(topic, member, |member| {
        let frame = ServerMessage::Join(MemberEvent::new(topic, member)).encode();
        announce(ops, topic, Some(conn), &frame);
        if ops.store.is_shared() {
            ops.store.send_soon(Command::Presence {
                topic: Arc::clone(topic),
                change: PresenceChange::Join(vec![entry(member, frame)]),
            });
        }
    });
    if joined {
        ops.metrics.presence_joins.inc();
        ops.metrics.presence_members.inc();
    }
}

/// Connection `client_id` is no longer on `topic`: announce its leave (if it was a member).
pub fn leave(ops: &Ops, topic: &str, client_id: &str) {
    let left = ops.presence.leave(topic, client_id, |member| {
        let frame = ServerMessage::Leave(MemberEvent::new(topic, member)).encode();
        announce(ops, topic, None, &frame);
        if ops.store.is_shared() {
            ops.store.send_soon(Command::Presence {
                topic: Arc::from(topic),
                change: PresenceChange::Leave(vec![entry(member, frame)]),
            });
        }
    });
    if left.is_some() {
        ops.metrics.presence_leaves.inc();
        ops.metrics.presence_members.dec();
    }
}

/// `presence` (with `stats` false) or `presence_stats` for `who`.
///
/// # Errors
/// [`OpError`] for an invalid name, a token that may not subscribe to the topic, a topic
/// without presence, or a store that cannot be read.
pub async fn query(
    ops: &Ops,
    who: Who<'_>,
    q: PresenceQuery,
    stats: bool,
) -> Result<ServerMessage, OpError> {
    ops.check_name(&q.topic)?;
    if let Who::User(identity) = who
        && !identity.subscribe.allows(&q.topic)
    {
        return Err(OpError::Forbidden {
            name: q.topic,
            action: "read the presence of",
        });
    }
    if !ops.presence.enabled(&q.topic) {
        return Err(OpError::PresenceDisabled(q.topic));
    }
    let max = if stats {
        0
    } else {
        ops.config.presence_max_members
    };
    let now = unix_millis(std::time::SystemTime::now());
    let (clients, users, members, more) =
        match ops.store.shared_presence(&q.topic, max, now).await? {
            Some((clients, users, json, more)) => {
                let members = json
                    .iter()
                    .filter_map(|m| serde_json::from_str::<Member>(m).ok())
                    .collect();
                (clients, users, members, more)
            }
            None => {
                let (clients, users) = ops.presence.stats(&q.topic);
                let (members, more) = ops.presence.members(&q.topic, max);
                (clients, users, members, more)
            }
        };
    Ok(if stats {
        ServerMessage::PresenceStats(PresenceStats {
            r#ref: q.r#ref,
            topic: q.topic,
            clients,
            users,
        })
    } else {
        ServerMessage::Presence(PresenceReply {
            r#ref: q.r#ref,
            topic: q.topic,
            members,
            more,
        })
    })
}

/// On Redis: keep this node's members listed (a refresh every third of the TTL) and reap the
/// members of nodes that went away, for as long as the instance lives.
pub async fn upkeep(presence: Arc<Presence>, store: Store, ttl: Duration) {
    let refresh_every = (ttl / 3).max(Duration::from_millis(100));
    let mut reap = tokio::time::interval(REAP_EVERY);
    let mut refresh = tokio::time::interval(refresh_every);
    loop {
        tokio::select! {
            _ = reap.tick() => {
                if Arc::strong_count(&presence) == 1 {
                    return;
                }
                let now = unix_millis(std::time::SystemTime::now());
                for topic in presence.topics() {
                    // The read reaps; what it returns is not needed here.
                    if let Err(e) = store.shared_presence(&topic, 0, now).await {
                        tracing::debug!(%topic, "presence reap: {e}");
                    }
                }
            }
            _ = refresh.tick() => {
                presence.refresh(|topic, members| {
                    let entries = members
                        .into_iter()
                        .map(|m| {
                            let frame = ServerMessage::Join(MemberEvent::new(topic, m)).encode();
                            entry(m, frame)
                        })
                        .collect();
                    store.send_soon(Command::Presence {
                        topic: Arc::clone(topic),
                        change: PresenceChange::Join(entries),
                    });
                });
            }
        }
    }
}

/// Queue `frame` for this node's subscribers of `topic` except `origin`.
fn announce(ops: &Ops, topic: &str, origin: Option<ConnId>, frame: &str) {
    let bytes = Frame::text(frame.to_owned());
    ops.hub
        .publish(topic, origin, || bytes, std::time::Instant::now());
}

fn entry(member: &Member, frame: String) -> PresenceEntry {
    PresenceEntry {
        member: serde_json::to_string(member).unwrap_or_default(),
        client_id: member.client_id.clone(),
        user: member.user.clone(),
        frame,
    }
}
