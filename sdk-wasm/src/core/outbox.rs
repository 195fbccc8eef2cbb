//! Publishes waiting for their acknowledgement, kept so they survive a reconnect.
//!
//! A publish is only done when the server says `published`. Until then it stays here: sent at
//! once when connected, queued while offline, and sent again after every reconnect. Each one
//! carries an `id`, so when the server did receive the first copy (and only the ack was lost),
//! the retry is acknowledged without being published twice.

use std::collections::VecDeque;

use super::error::SdkError;
use super::requests::RequestId;

/// One unacknowledged publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The request the application is waiting on.
    pub request: RequestId,
    /// The encoded `publish` frame (with its `id` and `ref`), resent byte for byte.
    pub frame: String,
    /// Whether it was sent on the current socket.
    pub sent: bool,
}

/// The bounded queue of unacknowledged publishes, in publish order.
///
/// Exists so offline publishing has a limit (an app publishing in a loop while offline fails
/// fast with `OUTBOX_FULL` instead of growing memory without bound) and so resend order is the
/// publish order.
#[derive(Debug, Clone)]
pub struct Outbox {
    capacity: usize,
    entries: VecDeque<OutboxEntry>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` publishes (at least one).
    pub fn new(capacity: usize) -> Self {
        Outbox {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
        }
    }

    /// Whether another publish fits.
    pub fn check_capacity(&self) -> Result<(), SdkError> {
        if self.entries.len() >= self.capacity {
            Err(SdkError::OutboxFull(self.entries.len()))
        } else {
            Ok(())
        }
    }

    /// Queue a publish (unsent).
    pub fn push(&mut self, request: RequestId, frame: String) -> Result<(), SdkError> {
        self.check_capacity()?;
        self.entries.push_back(OutboxEntry {
            request,
            frame,
            sent: false,
        });
        Ok(())
    }

    /// The frames not yet sent on this socket, in order; they are marked sent.
    pub fn take_unsent(&mut self) -> Vec<(RequestId, String)> {
        self.entries
            .iter_mut()
            .filter(|e| !e.sent)
            .map(|e| {
                e.sent = true;
                (e.request, e.frame.clone())
            })
            .collect()
    }

    /// The publish was acknowledged (or failed for good): forget it.
    pub fn remove(&mut self, request: RequestId) -> Option<OutboxEntry> {
        let i = self.entries.iter().position(|e| e.request == request)?;
        self.entries.remove(i)
    }

    /// Send this publish again with the next flush (the server rate-limited it).
    pub fn mark_unsent(&mut self, request: RequestId) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.request == request) {
            e.sent = false;
        }
    }

    /// Publishes whose frame is longer than `limit` bytes, with their lengths.
    pub fn too_large(&self, limit: usize) -> Vec<(RequestId, usize)> {
        self.entries
            .iter()
            .filter(|e| e.frame.len() > limit)
            .map(|e| (e.request, e.frame.len()))
            .collect()
    }

    /// Publishes sent on the current socket and not acknowledged, with their lengths.
    pub fn in_flight(&self) -> Vec<(RequestId, usize)> {
        self.entries
            .iter()
            .filter(|e| e.sent)
            .map(|e| (e.request, e.frame.len()))
            .collect()
    }

    /// The socket closed: everything must be sent again.
    pub fn mark_all_unsent(&mut self) {
        for e in &mut self.entries {
            e.sent = false;
        }
    }

    /// Remove everything (the client is closing); returns the requests to fail.
    pub fn drain(&mut self) -> Vec<RequestId> {
        self.entries.drain(..).map(|e| e.request).collect()
    }

    /// Publishes waiting for an acknowledgement.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let mut o = Outbox::new(2);
        o.push(RequestId(1), "a".into()).expect("fits");
        o.push(RequestId(2), "b".into()).expect("fits");
        assert_eq!(
            o.push(RequestId(3), "c".into()),
            Err(SdkError::OutboxFull(2))
        );
        assert_eq!(
            o.take_unsent(),
            [
                (RequestId(1), "a".to_owned()),
                (RequestId(2), "b".to_owned())
            ]
        );
        assert!(o.take_unsent().is_empty(), "already sent on this socket");
    }

    #[test]
    fn reconnect_resends_what_was_not_acknowledged() {
        let mut o = Outbox::new(10);
        for i in 1..=3 {
            o.push(RequestId(i), format!("f{i}")).expect("fits");
        }
        o.take_unsent();
        assert_eq!(o.remove(RequestId(2)).map(|e| e.frame), Some("f2".into()));
        assert_eq!(o.remove(RequestId(2)), None);
        o.mark_all_unsent();
        let again: Vec<String> = o.take_unsent().into_iter().map(|(_, f)| f).collect();
        assert_eq!(again, ["f1", "f3"]);
        assert_eq!(o.len(), 2);
        assert_eq!(o.drain(), [RequestId(1), RequestId(3)]);
        assert!(o.is_empty());
    }

    #[test]
    fn zero_capacity_still_holds_one() {
        let mut o = Outbox::new(0);
        assert!(o.push(RequestId(1), "a".into()).is_ok());
        assert!(o.check_capacity().is_err());
    }
}
