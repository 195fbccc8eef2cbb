//! Presence: who is on a topic. A connection that subscribes to a topic matched by a
//! `presence_topics` pattern is a **member** of it until it unsubscribes or disconnects; the
//! same user on two connections is two members and one user.
//!
//! This is the node's own registry: its members, by topic. On one node it answers every
//! question; on Redis it is what the node refreshes (and what it takes back when it leaves),
//! while the answers come from the shared set in Redis (`store/redis`). Plain data behind one
//! lock: no I/O, no frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tidings_protocol::server::Member;

/// The presence patterns and this node's members.
pub struct Presence {
    patterns: Vec<glob::Pattern>,
    topics: Mutex<HashMap<Arc<str>, Members>>,
}

/// One topic's members on this node.
#[derive(Default)]
struct Members {
    by_client: HashMap<String, Member>,
    /// Members per user, for `presence_stats.users`.
    users: HashMap<String, u64>,
}

impl Presence {
    /// Presence for the topics `patterns` match.
    ///
    /// # Errors
    /// A pattern that is not a valid glob.
    pub fn new(patterns: &[String]) -> Result<Presence, glob::PatternError> {
        Ok(Presence {
            patterns: patterns
                .iter()
                .map(|p| glob::Pattern::new(p))
                .collect::<Result<_, _>>()?,
            topics: Mutex::default(),
        })
    }

    /// Whether `topic` keeps presence.
    pub fn enabled(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    /// Whether any topic keeps presence.
    pub fn any(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Add `member` to `topic`; returns whether it is new. `announce` runs for a new member
    /// under the registry's lock, so announcements (and the writes that share them) leave in
    /// the registry's order — a refresh can never overtake the leave that follows it.
    pub fn join(&self, topic: &Arc<str>, member: Member, announce: impl FnOnce(&Member)) -> bool {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let members = topics.entry(Arc::clone(topic)).or_default();
        if members.by_client.contains_key(&member.client_id) {
            return false;
        }
        *members.users.entry(member.user.clone()).or_default() += 1;
        announce(&member);
        members.by_client.insert(member.client_id.clone(), member);
        true
    }

    /// Remove connection `client_id` from `topic`; returns the member if it was one, after
    /// running `announce` for it under the registry's lock (see [`Presence::join`]).
    pub fn leave(
        &self,
        topic: &str,
        client_id: &str,
        announce: impl FnOnce(&Member),
    ) -> Option<Member> {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let members = topics.get_mut(topic)?;
        let member = members.by_client.remove(client_id)?;
        announce(&member);
        if let Some(n) = members.users.get_mut(&member.user) {
            *n -= 1;
            if *n == 0 {
                members.users.remove(&member.user);
            }
        }
        if members.by_client.is_empty() {
            topics.remove(topic);
        }
        Some(member)
    }

    /// At most `max` members of `topic`, and whether there are more.
    pub fn members(&self, topic: &str, max: usize) -> (Vec<Member>, bool) {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(members) = topics.get(topic) else {
            return (Vec::new(), false);
        };
        let list = members.by_client.values().take(max).cloned().collect();
        (list, members.by_client.len() > max)
    }

    /// Members and distinct users of `topic`.
    pub fn stats(&self, topic: &str) -> (u64, u64) {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics
            .get(topic)
            .map_or((0, 0), |m| (m.by_client.len() as u64, m.users.len() as u64))
    }

    /// Every topic with members on this node.
    pub fn topics(&self) -> Vec<Arc<str>> {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics.keys().cloned().collect()
    }

    /// Run `refresh` for every topic with members on this node, with its members, under the
    /// registry's lock (so the refresh is ordered with joins and leaves).
    pub fn refresh(&self, mut refresh: impl FnMut(&Arc<str>, Vec<&Member>)) {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        for (topic, members) in topics.iter() {
            refresh(topic, members.by_client.values().collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(client: &str, user: &str) -> Member {
        Member {
            client_id: client.into(),
            user: user.into(),
            info: tidings_protocol::json_null(),
        }
    }

    #[test]
    fn two_tabs_are_two_members_and_one_user() {
        let p = Presence::new(&["room.*".into()]).expect("patterns");
        assert!(p.enabled("room.1") && !p.enabled("chat"));
        let t: Arc<str> = Arc::from("room.1");
        let mut announced = 0;
        assert!(p.join(&t, member("c1", "alice"), |_| announced += 1));
        assert!(p.join(&t, member("c2", "alice"), |_| announced += 1));
        assert!(
            !p.join(&t, member("c2", "alice"), |_| announced += 1),
            "joined once"
        );
        assert!(p.join(&t, member("c3", "bob"), |_| announced += 1));
        assert_eq!(announced, 3);
        assert_eq!(p.stats("room.1"), (3, 2));
        let (some, more) = p.members("room.1", 2);
        assert_eq!((some.len(), more), (2, true));
        assert_eq!(
            p.leave("room.1", "c1", |_| {}).map(|m| m.user),
            Some("alice".into())
        );
        assert_eq!(
            p.leave("room.1", "c1", |_| panic!("twice")),
            None,
            "left once"
        );
        assert_eq!(p.stats("room.1"), (2, 2));
        p.leave("room.1", "c2", |_| {});
        p.leave("room.1", "c3", |_| {});
        assert_eq!(p.stats("room.1"), (0, 0));
        assert!(p.topics().is_empty(), "an empty topic is forgotten");
    }
}
