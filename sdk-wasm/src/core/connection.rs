//! The connection state machine: connecting → connected → reconnecting → … → closed.
//!
//! It decides *which* socket is current, where to connect next (failover across several URLs)
//! and when (backoff). It knows nothing about subscriptions or requests; [`super::Core`] reacts
//! to its transitions.

use super::backoff::Backoff;

/// A connection counts as a success (the backoff starts over) only once it has lasted this
/// long: one that the server closes at once, say because of one bad request, keeps backing off.
pub const STABLE_MS: u64 = 5_000;

/// The connection state applications see (`onStateChange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Trying to connect for the first time.
    Connecting,
    /// Connected: the server sent `connected`.
    Connected,
    /// The connection was lost; trying again.
    Reconnecting,
    /// Closed for good: by `close()`, or because the server refused us and retrying is pointless.
    Closed,
}

impl ConnectionState {
    /// The name used in the JS API.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
            ConnectionState::Closed => "closed",
        }
    }
}

/// Identifies one WebSocket the shell opened, so events from an abandoned socket are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketId(pub u64);

/// Where the connection is, in more detail than [`ConnectionState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Idle,
    /// Waiting for `getToken` before opening a socket; gives up at `deadline`.
    FetchingToken {
        /// Connect timeout.
        deadline: u64,
    },
    /// A socket was requested; waiting for it to open and for the server's `connected`.
    Opening {
        /// The socket.
        socket: SocketId,
        /// Whether the socket is open (now waiting for `connected`).
        open: bool,
        /// Connect timeout.
        deadline: u64,
    },
    /// The server sent `connected` on this socket.
    Connected {
        /// The socket.
        socket: SocketId,
        /// When (monotonic ms).
        since: u64,
    },
    /// Waiting before the next attempt; `None` while the browser says it is offline.
    Waiting {
        /// When to try again.
        retry_at: Option<u64>,
    },
    /// Closed for good.
    Closed,
}

/// The connection's phase, URL rotation and backoff.
///
/// Exists to keep the socket lifecycle (which socket is current, what comes next) separate
/// from everything that rides on the socket.
#[derive(Debug, Clone)]
pub struct Connection {
    phase: Phase,
    ever_connected: bool,
    urls: Vec<String>,
    url_index: usize,
    next_socket: u64,
    backoff: Backoff,
    connect_timeout_ms: u64,
}

impl Connection {
    /// A connection to `urls` (tried in turn after failures).
    pub fn new(urls: Vec<String>, backoff: Backoff, connect_timeout_ms: u64) -> Self {
        Connection {
            phase: Phase::Idle,
            ever_connected: false,
            urls,
            url_index: 0,
            next_socket: 0,
            backoff,
            connect_timeout_ms: connect_timeout_ms.max(1),
        }
    }

    /// The detailed phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The state applications see.
    pub fn state(&self) -> ConnectionState {
        match self.phase {
            Phase::Connected { .. } => ConnectionState::Connected,
            Phase::Closed => ConnectionState::Closed,
            _ if self.ever_connected => ConnectionState::Reconnecting,
            _ => ConnectionState::Connecting,
        }
    }

    /// Whether frames can be sent.
    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. })
    }

    /// The socket events are accepted from.
    pub fn socket(&self) -> Option<SocketId> {
        match self.phase {
            Phase::Opening { socket, .. } | Phase::Connected { socket, .. } => Some(socket),
            _ => None,
        }
    }

    /// Whether `socket` is the current one.
    pub fn is_current(&self, socket: SocketId) -> bool {
        self.socket() == Some(socket)
    }

    /// The URL the next socket connects to.
    pub fn url(&self) -> &str {
        self.urls
            .get(self.url_index % self.urls.len().max(1))
            .map_or("", String::as_str)
    }

    /// Failed attempts since the last success.
    pub fn attempt(&self) -> u32 {
        self.backoff.attempt()
    }

    /// Start waiting for a token.
    pub fn fetch_token(&mut self, now: u64) {
        self.phase = Phase::FetchingToken {
            deadline: now + self.connect_timeout_ms,
        };
    }

    /// Start opening a new socket; returns its id.
    pub fn open(&mut self, now: u64) -> SocketId {
        self.next_socket += 1;
        let socket = SocketId(self.next_socket);
        self.phase = Phase::Opening {
            socket,
            open: false,
            deadline: now + self.connect_timeout_ms,
        };
        socket
    }

    /// The socket opened. Returns false if it is not the current one.
    pub fn opened(&mut self, socket: SocketId) -> bool {
        match &mut self.phase {
            Phase::Opening {
                socket: s, open, ..
            } if *s == socket => {
                *open = true;
                true
            }
            _ => false,
        }
    }

    /// The server sent `connected` on `socket` at `now`. Returns false if that was unexpected.
    pub fn established(&mut self, socket: SocketId, now: u64) -> bool {
        match self.phase {
            Phase::Opening {
                socket: s,
                open: true,
                ..
            } if s == socket => {
                self.phase = Phase::Connected { socket, since: now };
                self.ever_connected = true;
                true
            }
            _ => false,
        }
    }

    /// The attempt or connection failed: wait before the next one (on the next URL if the
    /// attempt never connected). While `online` is false, wait for the shell to resume it
    /// instead of a timer. Returns the delay.
    pub fn failed(&mut self, now: u64, random: f64, online: bool) -> u64 {
        match self.phase {
            // A connection that lasted: start the backoff over.
            Phase::Connected { since, .. } if now.saturating_sub(since) >= STABLE_MS => {
                self.backoff.reset();
            }
            // One that died at once keeps backing off, on the same URL.
            Phase::Connected { .. } => {}
            _ => self.url_index = (self.url_index + 1) % self.urls.len().max(1),
        }
        let delay = self.backoff.next_delay(random);
        self.phase = Phase::Waiting {
            retry_at: online.then_some(now + delay),
        };
        delay
    }

    /// Pause or resume waiting. `Some(at)`: retry at `at`; `None`: wait for a resume.
    pub fn set_retry(&mut self, retry_at: Option<u64>) {
        if let Phase::Waiting { .. } = self.phase {
            self.phase = Phase::Waiting { retry_at };
        }
    }

    /// Closed for good.
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
    }

    /// When the current phase times out (connect timeout, or the backoff retry).
    pub fn deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::FetchingToken { deadline } | Phase::Opening { deadline, .. } => Some(deadline),
            Phase::Waiting { retry_at } => retry_at,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(urls: &[&str]) -> Connection {
        Connection::new(
            urls.iter().map(|u| (*u).to_owned()).collect(),
            Backoff::new(500, 20_000),
            10_000,
        )
    }

    #[test]
    fn first_connect_then_reconnecting() {
        let mut c = conn(&["ws://a"]);
        assert_eq!(c.state(), ConnectionState::Connecting);
        let s = c.open(0);
        assert_eq!(c.deadline(), Some(10_000));
        assert!(!c.established(s, 0), "not open yet");
        assert!(c.opened(s));
        assert!(c.established(s, 0));
        assert_eq!(c.state(), ConnectionState::Connected);
        assert!(c.is_connected());
        assert_eq!(c.deadline(), None);
        c.failed(STABLE_MS, 0.5, true);
        assert_eq!(c.state(), ConnectionState::Reconnecting);
        assert_eq!(c.deadline(), Some(STABLE_MS + 250));
        assert_eq!(
            c.url(),
            "ws://a",
            "a dropped connection retries the same URL"
        );
    }

    #[test]
    fn stale_sockets_are_not_current() {
        let mut c = conn(&["ws://a"]);
        let s1 = c.open(0);
        c.failed(0, 0.0, true);
        let s2 = c.open(1);
        assert!(!c.is_current(s1));
        assert!(c.is_current(s2));
        assert!(!c.opened(s1));
        assert!(!c.established(s1, 1));
    }

    #[test]
    fn failed_attempts_rotate_urls_and_back_off() {
        let mut c = conn(&["ws://a", "ws://b"]);
        assert_eq!(c.url(), "ws://a");
        c.open(0);
        assert_eq!(c.failed(0, 1.0, true), 500);
        assert_eq!(c.url(), "ws://b");
        c.fetch_token(500);
        assert_eq!(c.deadline(), Some(10_500));
        assert_eq!(c.failed(600, 1.0, true), 1000);
        assert_eq!(c.url(), "ws://a");
        assert_eq!(c.attempt(), 2);
        assert_eq!(c.state(), ConnectionState::Connecting);
    }

    #[test]
    fn offline_waits_without_a_timer() {
        let mut c = conn(&["ws://a"]);
        c.open(0);
        c.failed(0, 0.5, false);
        assert_eq!(c.phase(), Phase::Waiting { retry_at: None });
        assert_eq!(c.deadline(), None);
        c.set_retry(Some(5));
        assert_eq!(c.deadline(), Some(5));
        c.close();
        c.set_retry(Some(6));
        assert_eq!(c.state(), ConnectionState::Closed);
        assert_eq!(c.deadline(), None);
        assert_eq!(ConnectionState::Closed.as_str(), "closed");
    }

    #[test]
    fn only_a_connection_that_lasted_resets_the_backoff() {
        let mut c = conn(&["ws://a"]);
        for _ in 0..3 {
            let s = c.open(0);
            c.failed(0, 1.0, true);
            let _ = s;
        }
        assert_eq!(c.attempt(), 3);
        // Connected, then closed at once (one bad request, say): the backoff keeps growing.
        let s = c.open(100);
        c.opened(s);
        c.established(s, 100);
        assert_eq!(c.failed(200, 1.0, true), 4_000);
        assert_eq!(c.url(), "ws://a");
        // Connected for longer than STABLE_MS: the next delay starts over.
        let s = c.open(10_000);
        c.opened(s);
        c.established(s, 10_000);
        assert_eq!(c.failed(10_000 + STABLE_MS, 1.0, true), 500);
    }
}
