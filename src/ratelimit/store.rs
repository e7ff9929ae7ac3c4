//! The keyed state store behind each governor limiter: per-key GCRA state
//! (governor's lock-free `InMemoryState`) in a bounded moka cache.
//!
//! governor's own keyed stores grow until `retain_recent` runs and have no
//! cap, so a flood of distinct keys between two sweeps could take any
//! amount of memory. Here the cache is capped at `max_keys` (least
//! recently used out first), and a key idle for its bucket's refill time is
//! dropped: its state could no longer be told from a fresh bucket, which is
//! what `retain_recent` decides too.

use std::sync::Arc;
use std::time::Duration;

use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

/// Per-key limiter state, bounded.
pub struct BoundedStore {
    cache: moka::sync::Cache<String, Arc<InMemoryState>>,
}

impl BoundedStore {
    /// At most `max_keys` keys; a key unused for `idle` is dropped.
    pub fn new(max_keys: u64, idle: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(idle.max(Duration::from_secs(1)))
                .build(),
        }
    }

    /// Runs pending evictions now (the cache also does it as it is used).
    pub fn sweep(&self) {
        self.cache.run_pending_tasks();
    }

    /// Keys held.
    pub fn keys(&self) -> u64 {
        self.cache.entry_count()
    }
}

impl StateStore for BoundedStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let state = match self.cache.get(key.as_str()) {
            Some(s) => s,
            None => self
                .cache
                .get_with(key.clone(), || Arc::new(InMemoryState::default())),
        };
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<String> for BoundedStore {
    fn retain_recent(&self, _drop_below: Nanos) {
        // Idle keys leave by `time_to_idle`, which is the bucket's refill
        // time: the same rule as governor's `retain_recent`.
        self.sweep();
    }

    fn len(&self) -> usize {
        self.keys() as usize
    }

    fn is_empty(&self) -> bool {
        self.keys() == 0
    }
}
