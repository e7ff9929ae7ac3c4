//! Load balancers: pick an endpoint index for one request, without locks.
//!
//! - `round_robin`: smooth weighted round robin (NGINX's algorithm); the
//!   whole cycle is computed at compile time, so a pick is one atomic add.
//! - `least_request`: power of two random choices, fewer in-flight requests
//!   per unit of weight wins (Envoy's default).
//! - `random`: weighted random.
//! - `consistent_hash`: a ring of virtual nodes (more for heavier
//!   endpoints); a request's key hashes to the next point clockwise, so
//!   adding or removing an endpoint moves only its share of keys. A request
//!   without a key is balanced randomly.

use crate::hash::hash64;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Ring points per unit of (normalized) weight.
const POINTS_PER_WEIGHT: u64 = 160;
/// Cap on ring size, whatever the weights.
const MAX_RING_POINTS: u64 = 100_000;
/// Cap on the precomputed round-robin cycle.
const MAX_CYCLE: u64 = 100_000;

/// A compiled balancer.
#[derive(Debug)]
pub(crate) enum Balancer {
    /// Precomputed smooth weighted cycle.
    RoundRobin {
        /// Endpoint index per slot.
        cycle: Vec<u32>,
        /// Next slot.
        next: AtomicUsize,
    },
    /// Power of two choices over in-flight counts per weight.
    LeastRequest {
        /// Endpoint weights.
        weights: Vec<u32>,
    },
    /// Weighted random.
    Random {
        /// Running sums of weights.
        cumulative: Vec<u64>,
    },
    /// Ring hash.
    ConsistentHash {
        /// (point, endpoint index), sorted by point.
        ring: Vec<(u64, u32)>,
        /// For requests without a key.
        cumulative: Vec<u64>,
    },
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn cumulative(weights: &[u32]) -> Vec<u64> {
    weights
        .iter()
        .scan(0u64, |acc, w| {
            *acc += u64::from(*w);
            Some(*acc)
        })
        .collect()
}

fn weighted_random(cumulative: &[u64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0);
    if total == 0 {
        return 0;
    }
    let r = fastrand::u64(0..total);
    cumulative.partition_point(|&c| c <= r)
}

/// Which balancer an upstream uses (`balancer:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    /// Smooth weighted round robin (as NGINX).
    RoundRobin,
    /// Power of two random choices, fewer in-flight requests per weight wins.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Ring hash over `hash_on`.
    ConsistentHash,
}

impl BalancerKind {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            BalancerKind::RoundRobin => "round_robin",
            BalancerKind::LeastRequest => "least_request",
            BalancerKind::Random => "random",
            BalancerKind::ConsistentHash => "consistent_hash",
        }
    }
}

impl Balancer {
    /// Compiles a balancer for endpoints with `weights` (each ≥ 1) and
    /// `ids` (stable names for the hash ring).
    pub(crate) fn new(kind: BalancerKind, weights: &[u32], ids: &[&str]) -> Self {
        let g = weights
            .iter()
            .fold(0u64, |g, w| gcd(g, u64::from(*w)))
            .max(1);
        let norm: Vec<u64> = weights.iter().map(|w| u64::from(*w) / g).collect();
        match kind {
            BalancerKind::RoundRobin => {
                let total: u64 = norm.iter().sum();
                let scale = total.div_ceil(MAX_CYCLE).max(1);
                let w: Vec<i64> = norm.iter().map(|x| (x / scale).max(1) as i64).collect();
                let total: i64 = w.iter().sum();
                let mut current = vec![0i64; w.len()];
                let mut cycle = Vec::with_capacity(total as usize);
                for _ in 0..total {
                    let mut best = 0;
                    for i in 0..w.len() {
                        current[i] += w[i];
                        if current[i] > current[best] {
                            best = i;
                        }
                    }
                    current[best] -= total;
                    cycle.push(best as u32);
                }
                // Start each upstream at a random slot so replicas do not
                // all hit the first endpoint in step.
                let start = if cycle.is_empty() {
                    0
                } else {
                    fastrand::usize(0..cycle.len())
                };
                Balancer::RoundRobin {
                    cycle,
                    next: AtomicUsize::new(start),
                }
            }
            BalancerKind::LeastRequest => Balancer::LeastRequest {
                weights: weights.to_vec(),
            },
            BalancerKind::Random => Balancer::Random {
                cumulative: cumulative(weights),
            },
            BalancerKind::ConsistentHash => {
                let total: u64 = norm.iter().sum::<u64>() * POINTS_PER_WEIGHT;
                let scale = total.div_ceil(MAX_RING_POINTS).max(1);
                let mut ring = Vec::new();
                for (i, (w, id)) in norm.iter().zip(ids).enumerate() {
                    let points = (w * POINTS_PER_WEIGHT / scale).max(1);
                    for p in 0..points {
                        ring.push((hash64(format!("{id}#{p}").as_bytes()), i as u32));
                    }
                }
                ring.sort_unstable();
                Balancer::ConsistentHash {
                    ring,
                    cumulative: cumulative(weights),
                }
            }
        }
    }

    /// Picks an endpoint. `inflight(i)` reports endpoint i's in-flight
    /// requests; `key` is the request's hash key for `consistent_hash`.
    pub(crate) fn pick(
        &self,
        n: usize,
        key: Option<u64>,
        inflight: impl Fn(usize) -> usize,
    ) -> usize {
        if n <= 1 {
            return 0;
        }
        match self {
            Balancer::RoundRobin { cycle, next } => {
                let slot = next.fetch_add(1, Ordering::Relaxed) % cycle.len().max(1);
                cycle.get(slot).map_or(0, |&i| i as usize)
            }
            Balancer::LeastRequest { weights } => {
                let a = fastrand::usize(0..n);
                let mut b = fastrand::usize(0..n - 1);
                if b >= a {
                    b += 1;
                }
                // Compare inflight/weight without division.
                let load = |i: usize| {
                    (inflight(i) as u64 + 1) * u64::from(weights.iter().copied().max().unwrap_or(1))
                        / u64::from(weights[i].max(1))
                };
                if load(b) < load(a) { b } else { a }
            }
            Balancer::Random { cumulative } => weighted_random(cumulative),
            Balancer::ConsistentHash { ring, cumulative } => match key {
                Some(k) if !ring.is_empty() => {
                    let at = ring.partition_point(|(p, _)| *p < k);
                    ring[at % ring.len()].1 as usize
                }
                _ => weighted_random(cumulative),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(b: &Balancer, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[b.pick(n, None, |_| 0)] += 1;
        }
        c
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let b = Balancer::new(BalancerKind::RoundRobin, &[5, 1, 1], &["a", "b", "c"]);
        let Balancer::RoundRobin { cycle, .. } = &b else {
            unreachable!()
        };
        // NGINX's documented sequence for 5,1,1: a a b a c a a.
        assert_eq!(cycle, &vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&b, 3, 700), vec![500, 100, 100]);
    }

    #[test]
    fn equal_weights_alternate() {
        let b = Balancer::new(BalancerKind::RoundRobin, &[1, 1], &["a", "b"]);
        assert_eq!(counts(&b, 2, 100), vec![50, 50]);
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let b = Balancer::new(BalancerKind::LeastRequest, &[1, 1], &["a", "b"]);
        for _ in 0..50 {
            assert_eq!(b.pick(2, None, |i| if i == 0 { 10 } else { 0 }), 1);
        }
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_few_keys() {
        let three = Balancer::new(BalancerKind::ConsistentHash, &[1, 1, 1], &["a", "b", "c"]);
        let four = Balancer::new(
            BalancerKind::ConsistentHash,
            &[1, 1, 1, 1],
            &["a", "b", "c", "d"],
        );
        let mut moved = 0;
        for k in 0..1000u32 {
            let key = hash64(&k.to_le_bytes());
            let x = three.pick(3, Some(key), |_| 0);
            assert_eq!(x, three.pick(3, Some(key), |_| 0));
            let y = four.pick(4, Some(key), |_| 0);
            if y != x {
                assert_eq!(y, 3, "a key may only move to the new endpoint");
                moved += 1;
            }
        }
        assert!(
            (150..350).contains(&moved),
            "about a quarter of keys move, got {moved}"
        );
    }

    #[test]
    fn weighted_random_follows_weights() {
        let b = Balancer::new(BalancerKind::Random, &[3, 1], &["a", "b"]);
        let c = counts(&b, 2, 40_000);
        assert!((29_000..31_000).contains(&c[0]), "{c:?}");
    }
}
