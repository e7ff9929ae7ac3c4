//! A shared count with a cap: an upstream's open connections or requests
//! in flight (its bulkheads). Taking a unit gives a guard that gives it
//! back when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A shared count with a cap (connections or requests of one upstream).
#[derive(Clone, Debug)]
pub struct Counter {
    count: Arc<AtomicUsize>,
    max: usize,
}

/// One unit of a `Counter`, given back when dropped.
#[derive(Debug)]
pub struct Held(Arc<AtomicUsize>);

impl Counter {
    /// A count starting at zero, capped at `max`.
    pub fn new(max: usize) -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Takes one unit, or `None` at the cap.
    pub fn take(&self) -> Option<Held> {
        let n = self.count.fetch_add(1, Ordering::AcqRel);
        if n >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Held(Arc::clone(&self.count)))
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Units held now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
