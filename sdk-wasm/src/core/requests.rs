//! Request/reply matching by `ref`, with timeouts and retries.
//!
//! Every request the SDK sends carries a `ref` (the decimal [`RequestId`]); the server echoes it
//! in the reply. This table maps a `ref` back to what was asked, holds requests made while
//! offline until a socket is up, says which requests have waited too long, and which
//! rate-limited ones are due to be sent again. Every entry has a timer or waits for a socket:
//! none can stay pending unnoticed.

use tidings_protocol::VecMap;

/// A handle for one request: the shell keeps the JS promise under this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl RequestId {
    /// The `ref` this request carries on the wire.
    pub fn wire_ref(self) -> String {
        self.0.to_string()
    }

    /// The request a reply's `ref` refers to, if it is one of ours.
    pub fn from_wire(r: &str) -> Option<RequestId> {
        r.parse().ok().map(RequestId)
    }
}

/// What a request was, so its reply can be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// An application publish (its frame lives in the outbox).
    Publish,
    /// An application `history`.
    History,
    /// An application `append`.
    Append,
    /// An application `read`.
    Read,
    /// An application `presence`.
    Presence,
    /// An application `presence_stats`.
    PresenceStats,
    /// The SDK's own `presence` read of a watched topic (`onJoin`/`onLeave`).
    PresenceSync(String),
    /// The SDK's own `subscribe` for these topics.
    Subscribe(Vec<String>),
    /// The SDK's own `unsubscribe`.
    Unsubscribe,
    /// The SDK's own in-band token refresh.
    Auth,
}

impl RequestKind {
    /// Whether the application waits on this request (it gets a resolve or a reject).
    pub fn is_user(&self) -> bool {
        matches!(
            self,
            RequestKind::Publish
                | RequestKind::History
                | RequestKind::Append
                | RequestKind::Read
                | RequestKind::Presence
                | RequestKind::PresenceStats
        )
    }
}

/// One outstanding request.
#[derive(Debug, Clone)]
struct Pending {
    kind: RequestKind,
    /// The frame to send once connected (requests made while offline; not publishes, whose
    /// frames live in the outbox).
    queued: Option<String>,
    /// The frame as sent, kept to send it again after `RATE_LIMITED` (not publishes and
    /// subscribes, which are rebuilt from the outbox and the subscriptions).
    frame: Option<String>,
    /// When it times out; set when it is sent.
    deadline: Option<u64>,
    /// When to send it again after the server answered `RATE_LIMITED`.
    retry_at: Option<u64>,
    /// `RATE_LIMITED` answers so far.
    attempts: u32,
}

/// The table of outstanding requests.
///
/// Exists so reply routing, offline queueing and timeouts are one tested unit; ids increase,
/// so iteration order is request order.
#[derive(Debug, Clone)]
pub struct Requests {
    timeout_ms: u64,
    next: u64,
    pending: VecMap<RequestId, Pending>,
}

impl Requests {
    /// An empty table whose requests time out `timeout_ms` after they are sent.
    pub fn new(timeout_ms: u64) -> Self {
        Requests {
            timeout_ms: timeout_ms.max(1),
            next: 0,
            pending: VecMap::new(),
        }
    }

    /// The configured timeout.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Register a request. `queued` is its frame if it must wait for a socket.
    pub fn register(&mut self, kind: RequestKind) -> RequestId {
        self.next += 1;
        let id = RequestId(self.next);
        self.pending.insert(
            id,
            Pending {
                kind,
                queued: None,
                frame: None,
                deadline: None,
                retry_at: None,
                attempts: 0,
            },
        );
        id
    }

    /// Keep `frame` to send it again if the server rate-limits it.
    pub fn keep_frame(&mut self, id: RequestId, frame: &str) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.frame = Some(frame.to_owned());
        }
    }

    /// The request's kind and frame size, if it is outstanding.
    pub fn frame_len(&self, id: RequestId) -> Option<usize> {
        let p = self.pending.get(&id)?;
        p.frame.as_ref().or(p.queued.as_ref()).map(String::len)
    }

    /// What the request with this `ref` is and how often it was rate-limited, without
    /// completing it.
    pub fn peek(&self, wire_ref: Option<&str>) -> Option<(RequestId, RequestKind, u32)> {
        let id = RequestId::from_wire(wire_ref?)?;
        let p = self.pending.get(&id)?;
        Some((id, p.kind.clone(), p.attempts))
    }

    /// The server answered `RATE_LIMITED`: send the request again at `at` (its timeout stops
    /// meanwhile).
    pub fn retry_at(&mut self, id: RequestId, at: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.attempts = p.attempts.saturating_add(1);
            p.deadline = None;
            p.retry_at = Some(at);
        }
    }

    /// Requests due to be sent again at `now`, with their frames (none for publishes); the
    /// caller sends them and calls [`Requests::sent`], or [`Requests::queue`]s them.
    pub fn due_retries(&mut self, now: u64) -> Vec<(RequestId, RequestKind, Option<String>)> {
        self.pending
            .iter_mut()
            .filter(|(_, p)| p.retry_at.is_some_and(|at| at <= now))
            .map(|(id, p)| {
                p.retry_at = None;
                (*id, p.kind.clone(), p.frame.clone())
            })
            .collect()
    }

    /// Requests the server reported as too large, or that are (`frame_len` over `limit`):
    /// the user requests among the outstanding ones whose frame is longer than `limit`.
    pub fn too_large(&self, limit: usize) -> Vec<(RequestId, usize)> {
        self.pending
            .iter()
            .filter(|(_, p)| p.kind.is_user())
            .filter_map(|(id, p)| {
                let len = p.frame.as_ref().or(p.queued.as_ref())?.len();
                (len > limit).then_some((*id, len))
            })
            .collect()
    }

    /// Sent and not answered: the user requests whose frame was sent on the current socket
    /// (with its length), for finding the one a 1009 close was about.
    pub fn in_flight(&self) -> Vec<(RequestId, usize)> {
        self.pending
            .iter()
            .filter(|(_, p)| p.kind.is_user() && p.deadline.is_some())
            .filter_map(|(id, p)| p.frame.as_ref().map(|f| (*id, f.len())))
            .collect()
    }

    /// Keep `frame` until a socket is up.
    pub fn queue(&mut self, id: RequestId, frame: String) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.queued = Some(frame);
        }
    }

    /// The request was sent at `now`: start its timeout.
    pub fn sent(&mut self, id: RequestId, now: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            if let Some(frame) = p.queued.take()
                && p.frame.is_none()
            {
                p.frame = Some(frame);
            }
            p.retry_at = None;
            p.deadline = Some(now + self.timeout_ms);
        }
    }

    /// Frames queued while offline, in request order; the caller sends them and calls
    /// [`Requests::sent`].
    pub fn take_queued(&mut self) -> Vec<(RequestId, String)> {
        self.pending
            .iter_mut()
            .filter_map(|(id, p)| p.queued.take().map(|f| (*id, f)))
            .collect()
    }

    /// A reply with this `ref` arrived: the request is done.
    pub fn complete(&mut self, wire_ref: Option<&str>) -> Option<(RequestId, RequestKind)> {
        let id = RequestId::from_wire(wire_ref?)?;
        self.pending.remove(&id).map(|p| (id, p.kind))
    }

    /// Forget a request without a reply.
    pub fn forget(&mut self, id: RequestId) -> Option<RequestKind> {
        self.pending.remove(&id).map(|p| p.kind)
    }

    /// Requests whose timeout passed at `now`; they are removed.
    pub fn expired(&mut self, now: u64) -> Vec<(RequestId, RequestKind)> {
        let ids: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.pending.remove(&id).map(|p| (id, p.kind)))
            .collect()
    }

    /// The earliest timeout or retry.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending
            .values()
            .filter_map(|p| match (p.deadline, p.retry_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
            .min()
    }

    /// The socket closed. Publishes wait for a resend (their timeout stops until then); the
    /// SDK's own requests are dropped (they are redone on reconnect); other requests that were
    /// in flight are removed and returned, because retrying them blindly is not safe (an
    /// `append` may have been applied). Queued ones stay queued.
    pub fn on_disconnect(&mut self) -> Vec<RequestId> {
        let mut failed = Vec::new();
        self.pending.retain(|id, p| {
            if p.retry_at.take().is_some() {
                // Rate-limited, so not applied: an application request goes again with the
                // next connection (a publish from the outbox); the SDK's own are redone.
                if !p.kind.is_user() {
                    return false;
                }
                if p.kind != RequestKind::Publish {
                    p.queued = p.frame.take();
                }
                return true;
            }
            if p.queued.is_some() || p.deadline.is_none() {
                return true;
            }
            match p.kind {
                RequestKind::Publish => {
                    p.deadline = None;
                    true
                }
                RequestKind::History
                | RequestKind::Append
                | RequestKind::Read
                | RequestKind::Presence
                | RequestKind::PresenceStats => {
                    failed.push(*id);
                    false
                }
                _ => false,
            }
        });
        failed
    }

    /// Remove everything (the client is closing); returns the application's requests.
    pub fn drain_user(&mut self) -> Vec<RequestId> {
        let all = std::mem::take(&mut self.pending);
        all.into_iter()
            .filter(|(_, p)| p.kind.is_user())
            .map(|(id, _)| id)
            .collect()
    }

    /// Outstanding requests.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip_and_foreign_refs_are_ignored() {
        let mut r = Requests::new(1000);
        let id = r.register(RequestKind::History);
        assert_eq!(RequestId::from_wire(&id.wire_ref()), Some(id));
        assert_eq!(r.complete(Some("nope")), None);
        assert_eq!(r.complete(None), None);
        assert_eq!(r.complete(Some("999")), None);
        assert_eq!(
            r.complete(Some(&id.wire_ref())),
            Some((id, RequestKind::History))
        );
        assert_eq!(
            r.complete(Some(&id.wire_ref())),
            None,
            "a reply completes once"
        );
    }

    #[test]
    fn timeouts_start_when_sent() {
        let mut r = Requests::new(1000);
        let a = r.register(RequestKind::Read);
        r.queue(a, "frame".into());
        assert_eq!(r.next_deadline(), None);
        assert!(
            r.expired(1_000_000).is_empty(),
            "queued requests do not time out"
        );
        assert_eq!(r.take_queued(), [(a, "frame".to_owned())]);
        assert!(r.take_queued().is_empty());
        r.sent(a, 500);
        assert_eq!(r.next_deadline(), Some(1500));
        assert!(r.expired(1499).is_empty());
        assert_eq!(r.expired(1500), [(a, RequestKind::Read)]);
        assert!(r.is_empty());
    }

    #[test]
    fn disconnect_keeps_publishes_fails_in_flight_reads_drops_internal() {
        let mut r = Requests::new(1000);
        let p = r.register(RequestKind::Publish);
        let h = r.register(RequestKind::History);
        let s = r.register(RequestKind::Subscribe(vec!["t".into()]));
        let q = r.register(RequestKind::Append);
        r.queue(q, "later".into());
        for id in [p, h, s] {
            r.sent(id, 0);
        }
        assert_eq!(r.on_disconnect(), [h]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.next_deadline(),
            None,
            "publish timeout paused until resent"
        );
        assert_eq!(r.take_queued(), [(q, "later".to_owned())]);
        assert_eq!(r.drain_user(), [p, q]);
    }

    #[test]
    fn forget_removes() {
        let mut r = Requests::new(10);
        let a = r.register(RequestKind::Auth);
        assert_eq!(r.forget(a), Some(RequestKind::Auth));
        assert_eq!(r.forget(a), None);
        assert_eq!(r.timeout_ms(), 10);
        assert!(!RequestKind::Auth.is_user());
    }
}
