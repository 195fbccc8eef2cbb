//! Presence as a subscriber sees it: per topic, the members this client knows, kept up to date
//! by `join`/`leave` and read again after every reconnect, so `onJoin`/`onLeave` report every
//! change, also the ones that happened while the client was away.
//!
//! Rules (docs/sdk.md, "Presence"):
//! * A topic has a roster while one of its subscribers watches it (has an `onJoin`/`onLeave`
//!   handler). Joins and leaves of topics without a roster are ignored.
//! * The first read (sent when the first handler is attached, or when the subscription becomes
//!   active) is the baseline: it is not reported.
//! * A `join`/`leave` updates the roster and is reported, unless it changes nothing (a join of
//!   a member already known, a leave of one not known once the roster is complete).
//! * After a reconnect, once the subscription is active again, the topic is read again. The
//!   reply, with the joins and leaves that arrived while it was in flight laid over it (the
//!   server may have taken its snapshot before or after them), becomes the roster, and the
//!   difference from the old one is reported: leaves first, then joins.
//! * This client's own connections (every `client_id` it had, up to [`OWN_IDS`]) are members
//!   like any other, so they are listed, but never reported: the server never sends a member
//!   its own join either, and a reconnect replaces the old connection by the new one silently.
//! * A reply cut short (`more`) cannot show who left: members missing from it are kept, and only
//!   joins are reported, until a complete reply.

use tidings_protocol::server::{Member, MemberEvent, PresenceReply};

use super::requests::RequestId;
use super::subscriptions::SubId;
use tidings_protocol::VecMap;

/// How many of this client's own connection ids are remembered (an old connection may stay
/// listed on the server until it notices the connection is gone).
pub const OWN_IDS: usize = 64;

/// Whether a member arrived or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It arrived (`onJoin`).
    Join,
    /// It left (`onLeave`).
    Leave,
}

/// A change to report to a topic's watching subscribers.
///
/// Exists so the core can turn roster decisions into one action per subscriber.
#[derive(Debug, Clone)]
pub struct MemberChange {
    /// Who is told.
    pub subs: Vec<SubId>,
    /// Joined or left.
    pub change: Change,
    /// The member and its topic.
    pub event: MemberEvent,
}

/// Where a roster's presence read stands on the current socket.
#[derive(Debug, Clone)]
enum Read {
    /// A read is due (new roster, or the socket changed): sent once the subscription is active.
    Due,
    /// Sent as `request`; `journal` holds the joins (`Some`) and leaves (`None`) that arrived
    /// since, by `client_id`, to lay over the reply.
    InFlight {
        request: RequestId,
        journal: VecMap<String, Option<Member>>,
    },
    /// Answered on this socket: joins and leaves keep the roster current.
    Done,
}

/// One watched topic.
#[derive(Debug, Clone)]
struct Roster {
    /// Subscribers with join/leave handlers, in the order they started watching.
    watchers: Vec<SubId>,
    /// Members by `client_id`.
    members: VecMap<String, Member>,
    /// A read has been answered: `members` is a baseline to report differences from.
    seeded: bool,
    /// The last reply was cut short: `members` may miss some.
    partial: bool,
    read: Read,
}

/// Every watched topic of a client.
///
/// Exists to keep the member sets, and the rule for merging a read with the joins and leaves
/// around it, apart from the connection; tested event by event.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    topics: VecMap<String, Roster>,
    /// This client's connection ids, the current one last.
    own: Vec<String>,
}

impl Presence {
    /// Nothing watched.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection was established with this `client_id`.
    pub fn connected(&mut self, client_id: &str) {
        if self.own.last().map(String::as_str) != Some(client_id) {
            if self.own.len() >= OWN_IDS {
                self.own.remove(0);
            }
            self.own.push(client_id.to_owned());
        }
    }

    fn is_own(&self, client_id: &str) -> bool {
        self.own.iter().any(|c| c == client_id)
    }

    /// `sub` (a subscriber of `topic`) starts watching. A new roster needs a read
    /// ([`Presence::needs_read`]).
    pub fn watch(&mut self, topic: &str, sub: SubId) {
        let r = self.topics.get_or_insert_with(topic.to_owned(), || Roster {
            watchers: Vec::new(),
            members: VecMap::new(),
            seeded: false,
            partial: false,
            read: Read::Due,
        });
        if !r.watchers.contains(&sub) {
            r.watchers.push(sub);
        }
    }

    /// `sub` stopped (unsubscribed); the roster goes with its last watcher.
    pub fn unwatch(&mut self, topic: &str, sub: SubId) {
        if let Some(r) = self.topics.get_mut(topic) {
            r.watchers.retain(|s| *s != sub);
            if r.watchers.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// The topic is no longer subscribed (unsubscribed or refused): drop its roster.
    pub fn forget(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// Whether `topic` is watched.
    pub fn is_watched(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Whether `topic` is watched and must be read (send it once its subscription is active).
    pub fn needs_read(&self, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|r| matches!(r.read, Read::Due))
    }

    /// The read of `topic` went out as `request`.
    pub fn read_sent(&mut self, topic: &str, request: RequestId) {
        if let Some(r) = self.topics.get_mut(topic) {
            r.read = Read::InFlight {
                request,
                journal: VecMap::new(),
            };
        }
    }

    /// The read `request` of `topic` got no answer: it is due again.
    pub fn read_lost(&mut self, topic: &str, request: RequestId) {
        if let Some(r) = self.topics.get_mut(topic)
            && matches!(r.read, Read::InFlight { request: q, .. } if q == request)
        {
            r.read = Read::Due;
        }
    }

    /// The read `request` of `topic` was refused (`PRESENCE_DISABLED`, `FORBIDDEN`): the roster
    /// is dropped; returns its watchers, to be told.
    pub fn read_failed(&mut self, topic: &str, request: RequestId) -> Vec<SubId> {
        match self.topics.get(topic) {
            Some(r) if matches!(r.read, Read::InFlight { request: q, .. } if q == request) => self
                .topics
                .remove(topic)
                .map(|r| r.watchers)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The socket closed: every roster is read again once its subscription is back; until
    /// then the members known are kept (they are what the next read is compared with).
    pub fn on_disconnect(&mut self) {
        for r in self.topics.values_mut() {
            r.read = Read::Due;
        }
    }

    /// The members known on `topic` (None: not watched, or not read yet).
    pub fn members(&self, topic: &str) -> Option<Vec<Member>> {
        let r = self.topics.get(topic).filter(|r| r.seeded)?;
        Some(r.members.values().cloned().collect())
    }

    /// A `join` (`change` = [`Change::Join`]) or `leave` arrived.
    pub fn on_event(&mut self, change: Change, event: MemberEvent) -> Option<MemberChange> {
        let own = self.is_own(&event.client_id);
        let r = self.topics.get_mut(&event.topic)?;
        let member = event.member();
        if let Read::InFlight { journal, .. } = &mut r.read {
            let entry = (change == Change::Join).then(|| member.clone());
            journal.insert(member.client_id.clone(), entry);
        }
        let changed = match change {
            Change::Join => r.members.insert(member.client_id.clone(), member).is_none(),
            Change::Leave => r.members.remove(&event.client_id).is_some() || !r.seeded || r.partial,
        };
        (changed && !own).then(|| MemberChange {
            subs: r.watchers.clone(),
            change,
            event,
        })
    }

    /// The reply to the read `request` arrived: it becomes the roster (with the joins and
    /// leaves since the request laid over it); after the first one, the difference is reported.
    pub fn on_reply(&mut self, request: RequestId, reply: PresenceReply) -> Vec<MemberChange> {
        let mut out = Vec::new();
        let Some(r) = self.topics.get_mut(&reply.topic) else {
            return out;
        };
        let journal = match std::mem::replace(&mut r.read, Read::Done) {
            Read::InFlight {
                request: q,
                journal,
            } if q == request => journal,
            other => {
                r.read = other; // a stale reply: not the read we wait for
                return out;
            }
        };
        let mut next = VecMap::new();
        for m in reply.members {
            next.insert(m.client_id.clone(), m);
        }
        for (client_id, m) in journal.iter() {
            match m {
                Some(m) => {
                    next.insert(client_id.clone(), m.clone());
                }
                None => {
                    next.remove(client_id);
                }
            }
        }
        if reply.more {
            // Those missing may just not fit in the reply: keep them.
            for (client_id, m) in r.members.iter() {
                if !next.contains_key(client_id) && !journal.contains_key(client_id) {
                    next.insert(client_id.clone(), m.clone());
                }
            }
        }
        let old = std::mem::replace(&mut r.members, next);
        let report = r.seeded;
        r.seeded = true;
        r.partial = reply.more;
        if !report {
            return out;
        }
        let topic = reply.topic;
        let own = &self.own;
        let mut push = |change, m: &Member| {
            if !own.contains(&m.client_id) {
                out.push(MemberChange {
                    subs: r.watchers.clone(),
                    change,
                    event: MemberEvent::new(&topic, m),
                });
            }
        };
        for (client_id, m) in old.iter() {
            if !r.members.contains_key(client_id) {
                push(Change::Leave, m);
            }
        }
        for (client_id, m) in r.members.iter() {
            if !old.contains_key(client_id) {
                push(Change::Join, m);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, user: &str) -> Member {
        Member {
            client_id: id.into(),
            user: user.into(),
            info: tidings_protocol::Json::parse(format!(r#"{{"name":"{user}"}}"#)).expect("json"),
        }
    }

    fn event(topic: &str, id: &str, user: &str) -> MemberEvent {
        MemberEvent::new(topic, &member(id, user))
    }

    fn reply(topic: &str, members: &[(&str, &str)], more: bool) -> PresenceReply {
        PresenceReply {
            r#ref: None,
            topic: topic.into(),
            members: members.iter().map(|(c, u)| member(c, u)).collect(),
            more,
        }
    }

    /// `("+c2", subs)` for a join of c2, `("-c2", subs)` for a leave.
    fn changes(out: &[MemberChange]) -> Vec<(String, Vec<SubId>)> {
        out.iter()
            .map(|c| {
                let sign = if c.change == Change::Join { "+" } else { "-" };
                (format!("{sign}{}", c.event.client_id), c.subs.clone())
            })
            .collect()
    }

    fn ids(p: &Presence, topic: &str) -> Option<Vec<String>> {
        p.members(topic)
            .map(|m| m.into_iter().map(|m| m.client_id).collect())
    }

    /// A roster for "t" watched by sub 1, seeded with `members` (c1 is this client).
    fn seeded(members: &[(&str, &str)]) -> Presence {
        let mut p = Presence::new();
        p.connected("c1");
        p.watch("t", SubId(1));
        assert!(p.needs_read("t"));
        p.read_sent("t", RequestId(1));
        assert!(!p.needs_read("t"));
        assert!(
            p.on_reply(RequestId(1), reply("t", members, false))
                .is_empty()
        );
        p
    }

    #[test]
    fn the_first_read_is_a_silent_baseline() {
        let mut p = Presence::new();
        p.watch("t", SubId(1));
        assert_eq!(ids(&p, "t"), None, "nothing known before the first reply");
        p.read_sent("t", RequestId(7));
        let out = p.on_reply(
            RequestId(7),
            reply("t", &[("c1", "alice"), ("c2", "bob")], false),
        );
        assert!(out.is_empty());
        assert_eq!(ids(&p, "t"), Some(vec!["c1".into(), "c2".into()]));
        assert!(!p.needs_read("t"));
    }

    #[test]
    fn joins_and_leaves_update_the_set_and_are_reported_once() {
        let mut p = seeded(&[("c1", "alice")]);
        p.watch("t", SubId(2));
        let out = p.on_event(Change::Join, event("t", "c2", "bob"));
        assert_eq!(
            changes(out.as_slice()),
            [("+c2".into(), vec![SubId(1), SubId(2)])]
        );
        let member = &out.expect("reported").event;
        assert_eq!(
            (member.user.as_str(), member.info.get()),
            ("bob", r#"{"name":"bob"}"#)
        );
        assert!(
            p.on_event(Change::Join, event("t", "c2", "bob")).is_none(),
            "a repeated join is no change"
        );
        assert_eq!(ids(&p, "t"), Some(vec!["c1".into(), "c2".into()]));
        let out = p.on_event(Change::Leave, event("t", "c2", "bob"));
        assert_eq!(
            changes(out.as_slice()),
            [("-c2".into(), vec![SubId(1), SubId(2)])]
        );
        assert!(
            p.on_event(Change::Leave, event("t", "c2", "bob")).is_none(),
            "a leave of someone not there is no change"
        );
        assert_eq!(ids(&p, "t"), Some(vec!["c1".into()]));
    }

    #[test]
    fn events_for_topics_nobody_watches_are_ignored() {
        let mut p = seeded(&[]);
        assert!(
            p.on_event(Change::Join, event("other", "c2", "bob"))
                .is_none()
        );
        assert!(
            p.on_event(Change::Leave, event("other", "c2", "bob"))
                .is_none()
        );
        assert_eq!(ids(&p, "other"), None);
        assert!(!p.is_watched("other"));
    }

    #[test]
    fn a_reconnect_reports_the_difference_from_what_was_known() {
        // Known: c1 (us), c2 bob, c3 carol. While we were away carol left, dave arrived and
        // bob's tab reconnected (a new connection, c5). We are c4 now.
        let mut p = seeded(&[("c1", "alice"), ("c2", "bob"), ("c3", "carol")]);
        p.on_disconnect();
        assert!(
            p.needs_read("t"),
            "read again once the subscription is back"
        );
        assert_eq!(ids(&p, "t").map(|v| v.len()), Some(3), "kept meanwhile");
        p.connected("c4");
        p.read_sent("t", RequestId(2));
        let now = [("c4", "alice"), ("c5", "bob"), ("c6", "dave")];
        let out = p.on_reply(RequestId(2), reply("t", &now, false));
        let all = vec![SubId(1)];
        assert_eq!(
            changes(&out),
            [
                ("-c2".into(), all.clone()),
                ("-c3".into(), all.clone()),
                ("+c5".into(), all.clone()),
                ("+c6".into(), all),
            ],
            "our own connections (c1 gone, c4 new) are never reported"
        );
        assert_eq!(
            ids(&p, "t"),
            Some(vec!["c4".into(), "c5".into(), "c6".into()])
        );
        // Nothing changed across the next reconnect: nothing to report.
        p.on_disconnect();
        p.read_sent("t", RequestId(3));
        assert!(p.on_reply(RequestId(3), reply("t", &now, false)).is_empty());
    }

    #[test]
    fn joins_and_leaves_while_a_read_is_in_flight_win_over_its_snapshot() {
        let mut p = seeded(&[("c1", "alice"), ("c2", "bob")]);
        p.on_disconnect();
        p.read_sent("t", RequestId(2));
        // Live, after the subscription is back and before the reply: carol arrives, bob
        // leaves. The server took its snapshot before both.
        let a = p.on_event(Change::Join, event("t", "c3", "carol"));
        let b = p.on_event(Change::Leave, event("t", "c2", "bob"));
        assert_eq!(changes(a.as_slice()), [("+c3".into(), vec![SubId(1)])]);
        assert_eq!(changes(b.as_slice()), [("-c2".into(), vec![SubId(1)])]);
        let stale = reply("t", &[("c1", "alice"), ("c2", "bob")], false);
        let out = p.on_reply(RequestId(2), stale);
        assert!(
            out.is_empty(),
            "already reported, and not undone: {:?}",
            changes(&out)
        );
        assert_eq!(ids(&p, "t"), Some(vec!["c1".into(), "c3".into()]));
        // A snapshot taken after them says the same.
        p.on_disconnect();
        p.read_sent("t", RequestId(3));
        p.on_event(Change::Join, event("t", "c4", "dave"));
        let fresh = reply(
            "t",
            &[("c1", "alice"), ("c3", "carol"), ("c4", "dave")],
            false,
        );
        assert!(p.on_reply(RequestId(3), fresh).is_empty());
    }

    #[test]
    fn only_the_awaited_reply_counts() {
        let mut p = seeded(&[("c1", "alice")]);
        p.on_disconnect();
        p.read_sent("t", RequestId(5));
        assert!(
            p.on_reply(RequestId(4), reply("t", &[("c9", "x")], false))
                .is_empty()
        );
        assert_eq!(ids(&p, "t"), Some(vec!["c1".into()]));
        let out = p.on_reply(RequestId(5), reply("t", &[("c1", "a"), ("c2", "b")], false));
        assert_eq!(changes(&out), [("+c2".into(), vec![SubId(1)])]);
        assert!(
            p.on_reply(RequestId(5), reply("t", &[], false)).is_empty(),
            "answered once"
        );
    }

    #[test]
    fn a_reply_cut_short_reports_joins_but_no_leaves() {
        let mut p = seeded(&[("c1", "alice"), ("c2", "bob")]);
        p.on_disconnect();
        p.read_sent("t", RequestId(2));
        let out = p.on_reply(RequestId(2), reply("t", &[("c3", "carol")], true));
        assert_eq!(changes(&out), [("+c3".into(), vec![SubId(1)])]);
        assert_eq!(
            ids(&p, "t"),
            Some(vec!["c1".into(), "c2".into(), "c3".into()])
        );
        // With a partial roster, a leave of someone unknown may be real: it is reported.
        let out = p.on_event(Change::Leave, event("t", "c8", "erin"));
        assert_eq!(changes(out.as_slice()), [("-c8".into(), vec![SubId(1)])]);
        // A complete reply ends that, and shows who left.
        p.on_disconnect();
        p.read_sent("t", RequestId(3));
        let out = p.on_reply(RequestId(3), reply("t", &[("c1", "alice")], false));
        assert_eq!(
            changes(&out),
            [
                ("-c2".into(), vec![SubId(1)]),
                ("-c3".into(), vec![SubId(1)])
            ]
        );
        assert!(
            p.on_event(Change::Leave, event("t", "c8", "erin"))
                .is_none()
        );
    }

    #[test]
    fn before_the_first_reply_events_are_reported_as_they_come() {
        let mut p = Presence::new();
        p.watch("t", SubId(1));
        p.read_sent("t", RequestId(1));
        let a = p.on_event(Change::Leave, event("t", "c2", "bob"));
        assert_eq!(changes(a.as_slice()), [("-c2".into(), vec![SubId(1)])]);
        let b = p.on_event(Change::Join, event("t", "c3", "carol"));
        assert_eq!(changes(b.as_slice()), [("+c3".into(), vec![SubId(1)])]);
        // The snapshot predates both; the baseline is silent and includes what came live.
        let out = p.on_reply(
            RequestId(1),
            reply("t", &[("c1", "a"), ("c2", "bob")], false),
        );
        assert!(out.is_empty());
        assert_eq!(ids(&p, "t"), Some(vec!["c1".into(), "c3".into()]));
    }

    #[test]
    fn our_own_connections_are_listed_but_never_reported() {
        let mut p = seeded(&[("c1", "alice")]);
        assert!(
            p.on_event(Change::Join, event("t", "c1", "alice"))
                .is_none()
        );
        p.connected("c9");
        // Our old connection c1 is still listed on the server until it notices; its leave
        // reaches our new connection.
        assert!(
            p.on_event(Change::Leave, event("t", "c1", "alice"))
                .is_none()
        );
        assert_eq!(ids(&p, "t"), Some(vec![]));
        for n in 0..OWN_IDS {
            p.connected(&format!("x{n}"));
        }
        assert!(!p.is_own("c1"), "bounded");
        assert!(p.is_own("x0"));
    }

    #[test]
    fn refused_and_lost_reads_and_the_last_watcher() {
        let mut p = Presence::new();
        p.watch("t", SubId(1));
        p.watch("t", SubId(2));
        p.read_sent("t", RequestId(1));
        p.read_lost("t", RequestId(0));
        assert!(!p.needs_read("t"), "not the read in flight");
        p.read_lost("t", RequestId(1));
        assert!(p.needs_read("t"));
        p.read_sent("t", RequestId(2));
        assert!(p.read_failed("t", RequestId(1)).is_empty());
        assert_eq!(p.read_failed("t", RequestId(2)), [SubId(1), SubId(2)]);
        assert!(!p.is_watched("t"));
        p.watch("u", SubId(3));
        p.watch("u", SubId(4));
        p.unwatch("u", SubId(3));
        assert!(p.is_watched("u"));
        p.unwatch("u", SubId(4));
        assert!(!p.is_watched("u"));
        p.watch("v", SubId(5));
        p.forget("v");
        assert!(!p.is_watched("v"));
    }
}
