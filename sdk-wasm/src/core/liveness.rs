//! Is the socket still alive? Server heartbeats, client pings, and a pong timeout that a
//! throttled background tab cannot fool.
//!
//! A WebSocket can die without a close event (a laptop lid closed, a NAT entry dropped). The
//! only way to notice is silence: nothing received for longer than the server's heartbeat
//! interval. Then the client sends a `ping` (a probe) and expects *any* frame back within the
//! pong timeout.
//!
//! Browsers throttle timers in background tabs (to once a minute, or freeze the tab entirely).
//! A timer that fires long after it was due says nothing about the socket: frames queued while
//! the tab was frozen may be delivered just after it. So the verdict compares the time the timer
//! *actually* fired with the time it was due: a late probe deadline is given one fresh probe
//! instead of being counted as a missed pong. Only a probe that was answered by nothing, judged
//! by the time of the last received frame, declares the socket dead.

/// How late (ms) a probe deadline may fire and still be trusted as "no pong arrived".
pub const LATE_TOLERANCE_MS: u64 = 1_000;

/// An outstanding liveness probe: a `ping` we sent while the socket had gone quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    /// When the ping was sent.
    sent_at: u64,
    /// When the socket is declared dead if nothing was received since `sent_at`.
    deadline: u64,
    /// Whether this probe already replaces one whose deadline fired late.
    reprobe: bool,
}

/// What the connection should do after a liveness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Alive,
    /// Send a `ping` now.
    SendPing,
    /// The socket is dead: close it and reconnect.
    Dead,
}

/// Liveness bookkeeping for one socket.
///
/// Exists so the "when is silence fatal" rule lives in one place with its own tests, apart
/// from reconnect logic. Times are monotonic milliseconds supplied by the caller.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// Silence (nothing received) longer than this starts a probe.
    idle_after_ms: u64,
    /// How long a probe waits for any frame.
    pong_timeout_ms: u64,
    /// Send a `ping` when nothing was sent for this long, so the server (and proxies) see
    /// traffic from us.
    keepalive_ms: u64,
    /// When the last frame arrived.
    last_received: u64,
    /// When the last frame was sent.
    last_sent: u64,
    /// The probe in flight, if any.
    probe: Option<Probe>,
}

impl Liveness {
    /// Rules for a socket: probe after `idle_after_ms` of silence, wait `pong_timeout_ms` for
    /// an answer, keep the server's view of us alive every `keepalive_ms`.
    pub fn new(idle_after_ms: u64, pong_timeout_ms: u64, keepalive_ms: u64) -> Self {
        Liveness {
            idle_after_ms: idle_after_ms.max(1),
            pong_timeout_ms: pong_timeout_ms.max(1),
            keepalive_ms: keepalive_ms.max(1),
            last_received: 0,
            last_sent: 0,
            probe: None,
        }
    }

    /// A new socket opened at `now`: forget the old one.
    pub fn reset(&mut self, now: u64) {
        self.last_received = now;
        self.last_sent = now;
        self.probe = None;
    }

    /// The server announced its heartbeat interval: silence is suspicious after one and a
    /// half intervals (at least two seconds more), and our keepalive matches its interval.
    pub fn set_server_heartbeat(&mut self, heartbeat_ms: u64) {
        let heartbeat_ms = heartbeat_ms.max(1);
        self.idle_after_ms = heartbeat_ms + (heartbeat_ms / 2).max(2_000);
        self.keepalive_ms = heartbeat_ms;
    }

    /// A frame arrived: the socket is alive.
    pub fn on_received(&mut self, now: u64) {
        self.last_received = self.last_received.max(now);
        self.probe = None;
    }

    /// A frame was sent.
    pub fn on_sent(&mut self, now: u64) {
        self.last_sent = self.last_sent.max(now);
    }

    /// Check now (the tab became visible, the network came back): returns true if a `ping`
    /// should be sent. Does nothing while a probe is already outstanding.
    pub fn probe_now(&mut self, now: u64) -> bool {
        if self.probe.is_some() {
            return false;
        }
        self.start_probe(now, false);
        true
    }

    /// When [`Liveness::on_timer`] next has something to decide.
    pub fn next_deadline(&self) -> u64 {
        match self.probe {
            Some(p) => p.deadline,
            None => {
                (self.last_received + self.idle_after_ms).min(self.last_sent + self.keepalive_ms)
            }
        }
    }

    /// The timer fired at `now` (possibly much later than it was armed for).
    pub fn on_timer(&mut self, now: u64) -> Verdict {
        if let Some(p) = self.probe {
            if self.last_received >= p.sent_at {
                // Answered (on_received normally clears it already).
                self.probe = None;
            } else if now < p.deadline {
                return Verdict::Alive;
            } else if now - p.deadline > LATE_TOLERANCE_MS && !p.reprobe {
                // The deadline fired late: the tab was throttled or frozen, and frames queued
                // meanwhile may not have been delivered yet. Not evidence; ask again.
                self.start_probe(now, true);
                return Verdict::SendPing;
            } else {
                return Verdict::Dead;
            }
        }
        if now.saturating_sub(self.last_received) >= self.idle_after_ms {
            self.start_probe(now, false);
            return Verdict::SendPing;
        }
        if now.saturating_sub(self.last_sent) >= self.keepalive_ms {
            return Verdict::SendPing;
        }
        Verdict::Alive
    }

    /// Whether a probe is waiting for an answer.
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    fn start_probe(&mut self, now: u64, reprobe: bool) {
        self.probe = Some(Probe {
            sent_at: now,
            deadline: now + self.pong_timeout_ms,
            reprobe,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Liveness {
        let mut l = Liveness::new(30_000, 10_000, 25_000);
        l.reset(0);
        l
    }

    #[test]
    fn quiet_socket_gets_a_probe_then_dies_without_an_answer() {
        let mut l = live();
        l.on_sent(20_000); // keep the keepalive out of the way
        assert_eq!(l.next_deadline(), 30_000);
        assert_eq!(l.on_timer(30_000), Verdict::SendPing);
        assert!(l.probing());
        assert_eq!(l.next_deadline(), 40_000);
        assert_eq!(l.on_timer(39_999), Verdict::Alive);
        assert_eq!(l.on_timer(40_000), Verdict::Dead);
    }

    #[test]
    fn any_frame_answers_the_probe() {
        let mut l = live();
        l.on_sent(20_000);
        assert_eq!(l.on_timer(30_000), Verdict::SendPing);
        l.on_received(30_050);
        assert!(!l.probing());
        assert_eq!(l.on_timer(40_000), Verdict::Alive);
    }

    #[test]
    fn heartbeats_keep_the_socket_alive_without_probes() {
        let mut l = live();
        for t in (25_000..300_000).step_by(25_000) {
            l.on_received(t);
            l.on_sent(t);
            assert_eq!(l.on_timer(t + 1), Verdict::Alive);
        }
    }

    #[test]
    fn a_late_timer_is_not_a_missed_pong() {
        let mut l = live();
        l.on_sent(20_000);
        assert_eq!(l.on_timer(30_000), Verdict::SendPing);
        // The deadline was 40 s; a throttled tab runs the timer at 95 s.
        assert_eq!(l.on_timer(95_000), Verdict::SendPing, "re-probe, not dead");
        // The pong that was queued behind the frozen timer arrives now.
        l.on_sent(95_000);
        l.on_received(95_010);
        assert_eq!(l.on_timer(105_000), Verdict::Alive);
    }

    #[test]
    fn a_second_late_deadline_without_any_frame_is_dead() {
        let mut l = live();
        l.on_sent(20_000);
        assert_eq!(l.on_timer(30_000), Verdict::SendPing);
        assert_eq!(l.on_timer(95_000), Verdict::SendPing);
        assert_eq!(l.on_timer(170_000), Verdict::Dead);
    }

    #[test]
    fn a_slightly_late_deadline_still_counts() {
        let mut l = live();
        l.on_sent(20_000);
        assert_eq!(l.on_timer(30_000), Verdict::SendPing);
        assert_eq!(l.on_timer(40_000 + LATE_TOLERANCE_MS), Verdict::Dead);
    }

    #[test]
    fn keepalive_pings_when_we_have_been_silent() {
        let mut l = live();
        l.on_received(20_000);
        assert_eq!(l.next_deadline(), 25_000);
        assert_eq!(l.on_timer(25_000), Verdict::SendPing);
        assert!(!l.probing(), "a keepalive is not a probe");
        l.on_sent(25_000);
        assert_eq!(l.next_deadline(), 50_000);
    }

    #[test]
    fn server_heartbeat_sets_the_thresholds() {
        let mut l = live();
        l.set_server_heartbeat(10_000);
        assert_eq!(l.next_deadline(), 10_000);
        l.on_sent(10_000);
        assert_eq!(l.next_deadline(), 15_000);
        l.set_server_heartbeat(1_000);
        assert_eq!(l.next_deadline(), 3_000);
    }

    #[test]
    fn probe_now_is_idempotent_and_reset_forgets_it() {
        let mut l = live();
        assert!(l.probe_now(5_000));
        assert!(!l.probe_now(5_001));
        assert_eq!(l.next_deadline(), 15_000);
        l.reset(6_000);
        assert!(!l.probing());
    }
}
