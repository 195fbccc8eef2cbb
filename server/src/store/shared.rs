//! What the writer thread shares with everyone else: the heads of every topic (readers decide
//! recovery and `history.latest` from them) and whether writes work (`/health`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{Head, StoreError};

/// Heads of every topic, shared between the writer (which updates them after each commit,
/// before fan-out) and readers (recovery decisions, `history.latest`).
#[derive(Default)]
pub struct Heads(RwLock<HashMap<Arc<str>, Head>>);

impl Heads {
    /// The head of `topic`, if it has ever been written.
    pub fn get(&self, topic: &str) -> Option<Head> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    pub(super) fn set_all(&self, updates: impl IntoIterator<Item = (Arc<str>, Head)>) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in updates {
            map.insert(k, v);
        }
    }

    pub(super) fn remove(&self, topic: &str) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
    }

    pub(super) fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Whether the store can write, for `/health`.
#[derive(Default)]
pub struct Health {
    /// Set while `error` holds one: the writer checks it after every commit without locking.
    failing: AtomicBool,
    /// The last write (or probe) failed with this error; cleared by the next success.
    error: Mutex<Option<String>>,
    /// The writer thread died: nothing will be written any more.
    pub(super) stopped: AtomicBool,
}

impl Health {
    pub(super) fn failed(&self, error: &StoreError) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        self.failing.store(true, Ordering::Release);
    }

    /// Clear a failure; returns whether there was one.
    pub(super) fn recovered(&self) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return false;
        }
        self.failing.store(false, Ordering::Release);
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
    }

    pub(super) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// `Ok` while writes work; otherwise why not.
    ///
    /// # Errors
    /// The reason writes fail.
    pub fn check(&self) -> Result<(), String> {
        if self.stopped.load(Ordering::Acquire) {
            return Err("the store writer stopped; restart the server".into());
        }
        match &*self.error.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}
