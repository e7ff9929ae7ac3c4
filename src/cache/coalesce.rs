//! Request coalescing: one request per key goes to the origin while the
//! others wait for its answer (`proxy_cache_lock`). The leader holds a
//! [`Flight`]; its drop wakes the waiters, and whether it was settled tells
//! them what to do next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The keys being fetched from the origin right now.
#[derive(Default)]
pub struct Flights {
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Bytes the map may hold (keys and their channels); past it requests
    /// are not coalesced (they go to the origin each) rather than grow it.
    budget: u64,
    /// Bytes it holds.
    used: std::sync::atomic::AtomicU64,
}

/// What one fetch in the map costs besides its key (map slot, channel).
const FLIGHT_OVERHEAD: u64 = 256;

impl Flights {
    /// Coalescing state of at most `budget` bytes.
    pub fn with_budget(budget: u64) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes it may hold.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Joins the fetch of `key`: `Lead` when no request is fetching it
    /// (this one will; others wait for it), or `Wait` with what to await.
    pub fn join(self: &Arc<Self>, key: &str) -> Join {
        use std::sync::atomic::Ordering;
        let Ok(mut map) = self.inflight.lock() else {
            return Join::Lead(None);
        };
        if let Some(rx) = map.get(key) {
            return Join::Wait(rx.clone());
        }
        let cost = key.len() as u64 + FLIGHT_OVERHEAD;
        if self.used.load(Ordering::Relaxed) + cost > self.budget {
            return Join::Lead(None);
        }
        self.used.fetch_add(cost, Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        map.insert(key.to_owned(), rx);
        Join::Lead(Some(Flight {
            flights: Arc::clone(self),
            key: key.to_owned(),
            done: tx,
        }))
    }
}

/// A request's part in fetching a key.
pub enum Join {
    /// This request fetches; waiters wake when the guard drops.
    Lead(Option<Flight>),
    /// Another request is fetching: wait until `changed()` returns (the
    /// leader's guard dropped; no wake-up can be missed), then look again.
    /// The value is `true` when the fetch settled (stored, or found not
    /// storable) and `false` when it was abandoned (its client left, or
    /// the upstream failed): then one waiter takes over.
    Wait(watch::Receiver<bool>),
}

/// The leading request's hold on a key being fetched.
pub struct Flight {
    flights: Arc<Flights>,
    key: String,
    /// Dropped with the guard, which wakes every waiter.
    done: watch::Sender<bool>,
}

impl Flight {
    /// The fetch is over with an answer: stored, or not storable (the
    /// waiters then go to the upstream themselves).
    pub fn settle(self) {
        self.done.send_replace(true);
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        // Out of the map before the sender drops, so a waiter that wakes
        // and joins again starts a new fetch.
        if let Ok(mut map) = self.flights.inflight.lock()
            && map.remove(&self.key).is_some()
        {
            self.flights.used.fetch_sub(
                self.key.len() as u64 + FLIGHT_OVERHEAD,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}
