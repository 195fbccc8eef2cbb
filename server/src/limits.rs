//! Connection limits: how many sessions in total and per client IP.
//!
//! A [`ConnPermit`] is taken before the WebSocket upgrade and held by the session; dropping
//! it (however the session ends) gives the slot back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// The server holds `max_connections` sessions already.
    #[error("server is at its connection limit ({0})")]
    Total(usize),
    /// This IP holds `max_connections_per_ip` sessions already.
    #[error("too many connections from this address (limit {0})")]
    PerIp(usize),
}

/// Counts of open sessions. The std mutex is never held across an await.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    inner: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One occupied connection slot.
pub struct ConnPermit {
    inner: Arc<Mutex<Counts>>,
    ip: Option<IpAddr>,
}

impl ConnLimits {
    /// Limits of `max_total` sessions, `max_per_ip` per address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnLimits {
            max_total,
            max_per_ip,
            inner: Arc::default(),
        }
    }

    /// Take a slot for a connection from `ip` (unknown when the router is served without
    /// connect info; then only the total applies).
    pub fn acquire(&self, ip: Option<IpAddr>) -> Result<ConnPermit, LimitError> {
        let mut counts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(LimitError::Total(self.max_total));
        }
        if let Some(ip) = ip {
            let n = counts.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(LimitError::PerIp(self.max_per_ip));
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(ConnPermit {
            inner: Arc::clone(&self.inner),
            ip,
        })
    }

    /// Open sessions right now.
    pub fn current(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut counts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = counts.per_ip.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_and_release() {
        let limits = ConnLimits::new(3, 2);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let a = limits.acquire(Some(ip)).expect("a");
        let _b = limits.acquire(Some(ip)).expect("b");
        assert_eq!(limits.acquire(Some(ip)).err(), Some(LimitError::PerIp(2)));
        let _c = limits.acquire(Some(other)).expect("c");
        assert_eq!(limits.acquire(None).err(), Some(LimitError::Total(3)));
        drop(a);
        assert_eq!(limits.current(), 2);
        assert!(limits.acquire(Some(ip)).is_ok());
    }
}
