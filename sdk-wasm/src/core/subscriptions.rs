//! Topics the application listens to: who listens, where each topic got to, and what to do
//! with an incoming `message` — deliver, drop as a duplicate, or hold it while a gap is repaired.
//!
//! Delivery rules (the promise the SDK makes, see docs/sdk.md):
//! * A message without an `offset` (ephemeral topic) is delivered as it comes; nothing can be
//!   deduplicated or recovered.
//! * A message with an `offset` is delivered only if it is the next one (`last + 1`), so each
//!   subscriber sees a durable topic in offset order, each offset once.
//! * An offset at or below the last delivered one is a duplicate (a replay overlapping live
//!   traffic) and is dropped.
//! * An offset further ahead is a gap: the message is held, and the topic is resubscribed with
//!   `since` = the last delivered position, so the server replays what is missing. Nothing is
//!   skipped silently; if the server cannot replay everything it says `recovered: false` and the
//!   application hears about it through a recovery notice.

use tidings_protocol::{TopicMap, VecMap};

use tidings_protocol::Position;
use tidings_protocol::server::Message;

use super::error::SdkError;

/// The most messages held per topic while a recovery is in flight. Beyond it messages are
/// dropped, which is safe: the position does not move past them, so the next message shows a
/// gap and they are recovered again.
pub const HOLD_LIMIT: usize = 10_000;

/// A handle for one `subscribe` call; several may share a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubId(pub u32);

/// Where the server side of a topic's subscription stands on the current socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Not sent on this socket yet (disconnected, or the topic is new).
    Unsent,
    /// `subscribe` sent, no `subscribed` yet. `recovering`: it carried `since`, so messages are
    /// held until the server says whether the replay is complete.
    Pending {
        /// The request carried `since` for this topic.
        recovering: bool,
    },
    /// The server confirmed the subscription.
    Active,
}

/// One subscribed topic.
#[derive(Debug, Clone)]
struct Topic {
    /// Subscribers, in subscription order.
    subs: Vec<SubId>,
    /// The last delivered offset and its epoch (None: nothing durable seen yet).
    position: Option<Position>,
    /// Server-side state on the current socket.
    status: Status,
    /// Messages that arrived while a recovery was pending.
    held: Vec<Message>,
    /// After an incomplete recovery: the next offset becomes the new baseline.
    accept_jump: bool,
}

/// What the core should do as a result of a subscription event.
#[derive(Debug, Clone)]
pub enum SubEvent {
    /// Hand `message` to these subscribers.
    Deliver {
        /// Who gets it.
        subs: Vec<SubId>,
        /// The message.
        message: Message,
    },
    /// Resubscribe `topic` with `since`: a gap was detected.
    Recover {
        /// The topic with a gap.
        topic: String,
        /// The last position delivered.
        since: Position,
    },
    /// A recovery (after a reconnect, a gap or an explicit `since`) finished.
    Recovered {
        /// Who is told.
        subs: Vec<SubId>,
        /// The topic.
        topic: String,
        /// Whether every missed message was replayed.
        recovered: bool,
    },
    /// The server refused the subscription; the topic is forgotten.
    Failed {
        /// Who is told.
        subs: Vec<SubId>,
        /// The topic.
        topic: String,
        /// Why.
        error: SdkError,
    },
}

/// All subscriptions of a client.
///
/// Exists to keep per-topic delivery state (position, dedup, gap repair) separate from the
/// connection: it survives reconnects, and its rules are tested message by message.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    topics: VecMap<String, Topic>,
    owners: VecMap<SubId, String>,
    next_id: u32,
}

impl Subscriptions {
    /// No subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a subscriber to `topic`. `since` is where to resume from, honoured only when the
    /// topic is new to this client (later subscribers join the live stream). Returns the id
    /// and whether the topic must be subscribed on the server.
    pub fn add(&mut self, topic: &str, since: Option<Position>) -> (SubId, bool) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = SubId(self.next_id);
        self.owners.insert(id, topic.to_owned());
        let is_new = !self.topics.contains_key(topic);
        let t = self.topics.get_or_insert_with(topic.to_owned(), || Topic {
            subs: Vec::new(),
            position: since,
            status: Status::Unsent,
            held: Vec::new(),
            accept_jump: false,
        });
        t.subs.push(id);
        (id, is_new)
    }

    /// Remove a subscriber. Returns the topic if it has no subscribers left (unsubscribe it on
    /// the server).
    pub fn remove(&mut self, id: SubId) -> Option<String> {
        let topic = self.owners.remove(&id)?;
        let t = self.topics.get_mut(&topic)?;
        t.subs.retain(|s| *s != id);
        if t.subs.is_empty() {
            self.topics.remove(&topic);
            Some(topic)
        } else {
            None
        }
    }

    /// The topic a subscriber listens to.
    pub fn topic_of(&self, id: SubId) -> Option<&str> {
        self.owners.get(&id).map(String::as_str)
    }

    /// Whether anyone listens to `topic`.
    pub fn contains(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Whether the server confirmed `topic`'s subscription on the current socket.
    pub fn is_active(&self, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| t.status == Status::Active)
    }

    /// The last delivered position of `topic`.
    pub fn position(&self, topic: &str) -> Option<&Position> {
        self.topics.get(topic)?.position.as_ref()
    }

    /// Every topic's last delivered position (for persistence).
    pub fn positions(&self) -> TopicMap<Position> {
        let mut out = TopicMap::new();
        for (k, t) in self.topics.iter() {
            if let Some(p) = &t.position {
                out.insert(k.clone(), p.clone());
            }
        }
        out
    }

    /// Where the server started `topic`'s subscription (`subscribed.positions`): the latest
    /// offset when the client gave no `since`. Nothing after it has been delivered yet, so it
    /// is a safe position to resume from (a reconnect replays everything after it, including
    /// what was published while both were offline). Ignored once the topic has a position.
    pub fn set_baseline(&mut self, topic: &str, start: &Position) {
        if let Some(t) = self.topics.get_mut(topic)
            && t.position.is_none()
        {
            t.position = Some(start.clone());
        }
    }

    /// The `subscribe` for `topic` must be sent again (its reply was lost or rate-limited).
    pub fn mark_unsent(&mut self, topic: &str) {
        if let Some(t) = self.topics.get_mut(topic)
            && matches!(t.status, Status::Pending { .. })
        {
            t.status = Status::Unsent;
        }
    }

    /// A `subscribe` for `topic` is being sent now; returns the `since` it must carry.
    pub fn mark_sent(&mut self, topic: &str) -> Option<Position> {
        let t = self.topics.get_mut(topic)?;
        t.status = Status::Pending {
            recovering: t.position.is_some(),
        };
        t.position.clone()
    }

    /// The socket closed: every topic must be subscribed again; held messages will be
    /// replayed, because the position did not move past them.
    pub fn on_disconnect(&mut self) {
        for t in self.topics.values_mut() {
            t.status = Status::Unsent;
            t.held.clear();
        }
    }

    /// Topics not yet subscribed on the current socket.
    pub fn unsent(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|(_, t)| t.status == Status::Unsent)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Topics with a `subscribe` in flight.
    pub fn pending(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|(_, t)| matches!(t.status, Status::Pending { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A `message` arrived.
    pub fn on_message(&mut self, message: Message) -> Vec<SubEvent> {
        let mut out = Vec::new();
        if let Some(t) = self.topics.get_mut(&message.topic) {
            accept(t, message, &mut out);
        }
        out
    }

    /// This client's own publish to `topic` was stored at `offset`.
    ///
    /// The server does not echo a publisher's messages back to it, but it sends the ack after
    /// every earlier message of the topic on the same connection. So when the ack is the next
    /// offset, the client has seen everything up to it: advance the position, and the next
    /// message from someone else is not mistaken for a gap (which would replay our own).
    pub fn on_own_publish(&mut self, topic: &str, offset: u64, epoch: Option<&str>) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if t.status != Status::Active {
            return;
        }
        if let Some(p) = &mut t.position {
            let same_epoch = match (p.epoch.as_deref(), epoch) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if same_epoch && offset == p.offset + 1 {
                p.offset = offset;
                if p.epoch.is_none() {
                    p.epoch = epoch.map(str::to_owned);
                }
            }
        }
    }

    /// The server confirmed `topic`'s subscription; `recovered` is its report for a `since`.
    pub fn on_subscribed(&mut self, topic: &str, recovered: Option<bool>) -> Vec<SubEvent> {
        let mut out = Vec::new();
        let Some(t) = self.topics.get_mut(topic) else {
            return out;
        };
        let Status::Pending { recovering } = t.status else {
            return out;
        };
        t.status = Status::Active;
        if !recovering {
            return out;
        }
        // A server that does not know `since` reports nothing: recovery was not complete
        // unless there was nothing to recover.
        let complete =
            recovered.unwrap_or_else(|| t.position.as_ref().is_none_or(|p| p.offset == 0));
        if !complete {
            t.accept_jump = true;
        }
        // `held` is kept in offset order (see `hold`).
        let held = std::mem::take(&mut t.held);
        for m in held {
            accept(t, m, &mut out);
        }
        out.push(SubEvent::Recovered {
            subs: t.subs.clone(),
            topic: topic.to_owned(),
            recovered: complete,
        });
        out
    }

    /// The server refused to subscribe `topic`.
    pub fn on_subscribe_error(&mut self, topic: &str, error: &SdkError) -> Vec<SubEvent> {
        let Some(t) = self.topics.remove(topic) else {
            return Vec::new();
        };
        for s in &t.subs {
            self.owners.remove(s);
        }
        vec![SubEvent::Failed {
            subs: t.subs,
            topic: topic.to_owned(),
            error: error.clone(),
        }]
    }
}

/// Keep `message` until the recovery finishes, in offset order (an insertion rather than a
/// sort later: no sort routine in the wasm).
fn hold(t: &mut Topic, message: Message) {
    if t.held.len() < HOLD_LIMIT {
        let key = message.offset.unwrap_or(0);
        let at = t.held.partition_point(|m| m.offset.unwrap_or(0) <= key);
        t.held.insert(at, message);
    }
}

/// Apply the delivery rules to one message of topic `t`.
fn accept(t: &mut Topic, message: Message, out: &mut Vec<SubEvent>) {
    if t.status == (Status::Pending { recovering: true }) {
        hold(t, message);
        return;
    }
    let Some(offset) = message.offset else {
        // Ephemeral: nothing to order or deduplicate.
        out.push(SubEvent::Deliver {
            subs: t.subs.clone(),
            message,
        });
        return;
    };
    let take = match &t.position {
        None => true,
        Some(p) => {
            let epoch_changed = matches!((&p.epoch, &message.epoch), (Some(a), Some(b)) if a != b);
            if epoch_changed {
                // The topic's history was reset: old offsets mean nothing, and whatever came
                // after our position in the old history is gone.
                out.push(SubEvent::Recovered {
                    subs: t.subs.clone(),
                    topic: message.topic.clone(),
                    recovered: false,
                });
                true
            } else if offset <= p.offset {
                false // duplicate
            } else if offset == p.offset + 1 || t.accept_jump {
                true
            } else {
                let since = p.clone();
                t.status = Status::Pending { recovering: true };
                hold(t, message.clone());
                out.push(SubEvent::Recover {
                    topic: message.topic.clone(),
                    since,
                });
                return;
            }
        }
    };
    if take {
        t.accept_jump = false;
        let epoch = message
            .epoch
            .clone()
            .or_else(|| t.position.as_ref().and_then(|p| p.epoch.clone()));
        t.position = Some(Position { offset, epoch });
        out.push(SubEvent::Deliver {
            subs: t.subs.clone(),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_protocol::json_null;

    fn msg(topic: &str, offset: Option<u64>, epoch: Option<&str>) -> Message {
        Message {
            topic: topic.into(),
            data: json_null(),
            from: "x".into(),
            timestamp: "t".into(),
            offset,
            epoch: epoch.map(Into::into),
        }
    }

    fn delivered(events: &[SubEvent]) -> Vec<Option<u64>> {
        events
            .iter()
            .filter_map(|e| match e {
                SubEvent::Deliver { message, .. } => Some(message.offset),
                _ => None,
            })
            .collect()
    }

    fn active(s: &mut Subscriptions, topic: &str) -> SubId {
        let (id, _) = s.add(topic, None);
        s.mark_sent(topic);
        s.on_subscribed(topic, None);
        id
    }

    #[test]
    fn ephemeral_messages_pass_through_even_repeated() {
        let mut s = Subscriptions::new();
        let id = active(&mut s, "chat");
        for _ in 0..3 {
            let ev = s.on_message(msg("chat", None, None));
            assert!(
                matches!(ev.as_slice(), [SubEvent::Deliver { subs, message }] if subs == &vec![id] && message.offset.is_none())
            );
        }
        assert!(s.position("chat").is_none());
    }

    #[test]
    fn own_acked_publishes_advance_the_position_so_no_false_gap() {
        let mut s = Subscriptions::new();
        active(&mut s, "chat");
        assert_eq!(
            delivered(&s.on_message(msg("chat", Some(1), Some("e")))),
            [Some(1)]
        );
        // Our own publish got offset 2 (not echoed to us); then someone else's 3 arrives.
        s.on_own_publish("chat", 2, Some("e"));
        let ev = s.on_message(msg("chat", Some(3), Some("e")));
        assert_eq!(delivered(&ev), [Some(3)], "no recovery for our own offset");
        // An ack that is not the next offset (we missed something) does not skip the gap.
        s.on_own_publish("chat", 9, Some("e"));
        assert_eq!(s.position("chat").map(|p| p.offset), Some(3));
        // Nor does an ack from another epoch.
        s.on_own_publish("chat", 4, Some("other"));
        assert_eq!(s.position("chat").map(|p| p.offset), Some(3));
    }

    #[test]
    fn messages_for_unknown_topics_are_ignored() {
        let mut s = Subscriptions::new();
        assert!(s.on_message(msg("other", Some(1), None)).is_empty());
    }

    #[test]
    fn in_order_offsets_are_delivered_and_duplicates_dropped() {
        let mut s = Subscriptions::new();
        active(&mut s, "t");
        let mut got = Vec::new();
        for o in [1, 2, 2, 1, 3, 4, 4] {
            got.extend(delivered(&s.on_message(msg("t", Some(o), Some("e")))));
        }
        assert_eq!(got, [Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(
            s.position("t"),
            Some(&Position {
                offset: 4,
                epoch: Some("e".into())
            })
        );
    }

    #[test]
    fn first_durable_message_sets_the_baseline() {
        let mut s = Subscriptions::new();
        active(&mut s, "t");
        assert_eq!(
            delivered(&s.on_message(msg("t", Some(41), None))),
            [Some(41)]
        );
    }

    #[test]
    fn a_gap_holds_messages_and_asks_for_recovery() {
        let mut s = Subscriptions::new();
        let id = active(&mut s, "t");
        s.on_message(msg("t", Some(1), Some("e")));
        let ev = s.on_message(msg("t", Some(4), Some("e")));
        let want = Position {
            offset: 1,
            epoch: Some("e".into()),
        };
        assert!(
            matches!(ev.as_slice(), [SubEvent::Recover { topic, since }] if topic == "t" && since == &want)
        );
        // Live traffic keeps coming while the recovery is in flight: held, not delivered.
        assert!(s.on_message(msg("t", Some(5), Some("e"))).is_empty());
        // The core resubscribes with since; the replay arrives before `subscribed`.
        assert_eq!(s.mark_sent("t").map(|p| p.offset), Some(1));
        for o in [2, 3, 4, 5] {
            assert!(s.on_message(msg("t", Some(o), Some("e"))).is_empty());
        }
        let ev = s.on_subscribed("t", Some(true));
        assert_eq!(delivered(&ev), [Some(2), Some(3), Some(4), Some(5)]);
        assert!(matches!(
            ev.last(),
            Some(SubEvent::Recovered { subs, topic, recovered: true }) if subs == &vec![id] && topic == "t"
        ));
        assert_eq!(
            delivered(&s.on_message(msg("t", Some(6), Some("e")))),
            [Some(6)]
        );
    }

    #[test]
    fn replay_after_subscribed_is_delivered_directly() {
        let mut s = Subscriptions::new();
        s.add(
            "t",
            Some(Position {
                offset: 10,
                epoch: Some("e".into()),
            }),
        );
        assert_eq!(s.mark_sent("t").map(|p| p.offset), Some(10));
        let ev = s.on_subscribed("t", Some(true));
        assert!(matches!(
            ev.as_slice(),
            [SubEvent::Recovered {
                recovered: true,
                ..
            }]
        ));
        let mut got = Vec::new();
        for o in [10, 11, 12] {
            got.extend(delivered(&s.on_message(msg("t", Some(o), Some("e")))));
        }
        assert_eq!(got, [Some(11), Some(12)]);
    }

    #[test]
    fn incomplete_recovery_is_reported_and_the_next_offset_becomes_the_baseline() {
        let mut s = Subscriptions::new();
        s.add(
            "t",
            Some(Position {
                offset: 10,
                epoch: Some("e".into()),
            }),
        );
        s.mark_sent("t");
        // The server trimmed 11..=99: replay starts at 100.
        s.on_message(msg("t", Some(100), Some("e")));
        s.on_message(msg("t", Some(101), Some("e")));
        let ev = s.on_subscribed("t", Some(false));
        assert_eq!(delivered(&ev), [Some(100), Some(101)]);
        assert!(matches!(
            ev.last(),
            Some(SubEvent::Recovered {
                recovered: false,
                ..
            })
        ));
        // After the new baseline, gaps are detected again.
        let ev = s.on_message(msg("t", Some(105), Some("e")));
        assert!(matches!(ev.as_slice(), [SubEvent::Recover { .. }]));
    }

    #[test]
    fn server_without_since_support_reports_incomplete_recovery() {
        let mut s = Subscriptions::new();
        s.add(
            "t",
            Some(Position {
                offset: 3,
                epoch: None,
            }),
        );
        s.mark_sent("t");
        let ev = s.on_subscribed("t", None);
        assert!(matches!(
            ev.as_slice(),
            [SubEvent::Recovered {
                recovered: false,
                ..
            }]
        ));
        // Since offset 0 means "from the beginning", nothing can have been missed before it.
        let mut s = Subscriptions::new();
        s.add(
            "t",
            Some(Position {
                offset: 0,
                epoch: None,
            }),
        );
        s.mark_sent("t");
        let ev = s.on_subscribed("t", None);
        assert!(matches!(
            ev.as_slice(),
            [SubEvent::Recovered {
                recovered: true,
                ..
            }]
        ));
    }

    #[test]
    fn epoch_change_is_reported_and_rebases() {
        let mut s = Subscriptions::new();
        active(&mut s, "t");
        s.on_message(msg("t", Some(7), Some("old")));
        let ev = s.on_message(msg("t", Some(1), Some("new")));
        assert!(matches!(
            ev[0],
            SubEvent::Recovered {
                recovered: false,
                ..
            }
        ));
        assert_eq!(delivered(&ev), [Some(1)]);
        assert_eq!(
            s.position("t").and_then(|p| p.epoch.as_deref()),
            Some("new")
        );
    }

    #[test]
    fn held_messages_are_bounded() {
        let mut s = Subscriptions::new();
        s.add(
            "t",
            Some(Position {
                offset: 0,
                epoch: None,
            }),
        );
        s.mark_sent("t");
        for o in 1..=(HOLD_LIMIT as u64 + 10) {
            s.on_message(msg("t", Some(o), None));
        }
        let ev = s.on_subscribed("t", Some(true));
        assert_eq!(delivered(&ev).len(), HOLD_LIMIT);
        // The dropped ones show up as a gap on the next message, not as silent loss.
        let ev = s.on_message(msg("t", Some(HOLD_LIMIT as u64 + 11), None));
        assert!(matches!(ev.as_slice(), [SubEvent::Recover { .. }]));
    }

    #[test]
    fn disconnect_resets_status_and_drops_held_messages() {
        let mut s = Subscriptions::new();
        active(&mut s, "a");
        s.add("b", None);
        s.on_message(msg("a", Some(1), None));
        s.on_message(msg("a", Some(3), None)); // gap: held
        s.on_disconnect();
        assert_eq!(s.unsent(), ["a", "b"]);
        assert_eq!(s.mark_sent("a").map(|p| p.offset), Some(1));
        assert_eq!(s.mark_sent("b"), None);
        assert_eq!(s.pending(), ["a", "b"]);
        let ev = s.on_subscribed("a", Some(true));
        assert_eq!(delivered(&ev), Vec::<Option<u64>>::new());
    }

    #[test]
    fn several_subscribers_share_a_topic() {
        let mut s = Subscriptions::new();
        let (a, new_a) = s.add("t", None);
        let (b, new_b) = s.add(
            "t",
            Some(Position {
                offset: 99,
                epoch: None,
            }),
        );
        assert!(new_a && !new_b);
        assert_eq!(s.topic_of(b), Some("t"));
        s.mark_sent("t");
        s.on_subscribed("t", None);
        let ev = s.on_message(msg("t", None, None));
        assert!(matches!(&ev[0], SubEvent::Deliver { subs, .. } if subs == &vec![a, b]));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.remove(a), None, "removing twice is harmless");
        assert_eq!(s.remove(b), Some("t".into()));
        assert!(!s.contains("t"));
    }

    #[test]
    fn refused_subscriptions_are_forgotten() {
        let mut s = Subscriptions::new();
        let (a, _) = s.add("t", None);
        s.mark_sent("t");
        let err = SdkError::Closed;
        let ev = s.on_subscribe_error("t", &err);
        assert!(matches!(&ev[0], SubEvent::Failed { subs, .. } if subs == &vec![a]));
        assert!(!s.contains("t"));
        assert_eq!(s.topic_of(a), None);
        assert!(s.on_subscribe_error("t", &err).is_empty());
    }

    #[test]
    fn positions_lists_only_topics_with_offsets() {
        let mut s = Subscriptions::new();
        active(&mut s, "a");
        active(&mut s, "b");
        s.on_message(msg("a", Some(5), Some("e")));
        let p = s.positions();
        assert_eq!(p.len(), 1);
        assert_eq!(p["a"].offset, 5);
    }
}
