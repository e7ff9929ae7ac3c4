//! Rate limiting (pipeline stages 3 and 4): token buckets per key, one
//! governor GCRA limiter per policy (plus one per override), built when
//! the config is compiled and carried over by reloads that leave the
//! policy unchanged.
//!
//! A route lists policies; every one must allow. Policies whose key needs
//! no identity (`client_ip`, `header:`, `route`) run before
//! authentication, so a flood of bad tokens is cut before any signature is
//! checked; those keyed on `tenant` or `claim:` run right after it.
//!
//! - `key`: what a policy keys on and the bound on a key's size.
//! - `limiter` and `store`: one bucket shape over a bounded key store
//!   (this process's buckets).
//! - `global`: buckets in Redis for `scope: global`.
//! - `policy`: a compiled policy, local or global, with its overrides.
//! - `headers`: the response headers that describe a verdict.
//! - here: a route's policies and how their verdicts merge.

pub mod global;
mod headers;
mod key;
mod limiter;
mod policy;
pub mod store;

use std::sync::Arc;

use prometheus::IntCounter;

pub use crate::config::Definition;
use crate::observability::metrics::metrics;
pub use headers::headers;
pub use key::{KeyError, KeyInput, LimitKeyPart, MAX_KEY_BYTES};
pub use limiter::{Shape, Verdict, parse_rate};
pub use policy::{Checked, Missing, Policy, PolicyOptions};

/// A route's policies with their per-route counters.
pub struct RouteLimits {
    /// (policy, counters for allowed / limited).
    pub policies: Vec<(Arc<Policy>, [IntCounter; 3])>,
}

impl RouteLimits {
    /// The limits of route `route`.
    pub fn new(route: &str, policies: Vec<Arc<Policy>>) -> Self {
        let family = &metrics().ratelimit_decisions;
        Self {
            policies: policies
                .into_iter()
                .map(|p| {
                    let c = ["allowed", "limited", "error"]
                        .map(|r| family.with_label_values(&[route, p.name.as_str(), r]));
                    (p, c)
                })
                .collect(),
        }
    }
}

/// The outcome of a route's policies for one phase.
pub enum LimitOutcome {
    /// Every policy allowed; the verdict closest to its limit (for headers).
    Allowed(Option<(Arc<Policy>, Verdict)>),
    /// A policy refused: 429 with this verdict.
    Limited(Arc<Policy>, Verdict),
    /// A key was missing and the policy rejects keyless requests.
    MissingKey,
    /// A key header was sent more than once.
    RepeatedKey,
    /// Redis failed for a global policy with `on_error: deny`.
    Unavailable,
}

impl RouteLimits {
    /// Runs the policies of this phase (`after_auth` false: before
    /// authentication) and merges the verdicts.
    pub async fn check(&self, after_auth: bool, input: &KeyInput<'_>) -> LimitOutcome {
        let mut closest: Option<(Arc<Policy>, Verdict)> = None;
        for (p, counters) in self
            .policies
            .iter()
            .filter(|(p, _)| p.after_auth == after_auth)
        {
            let key = match p.key(input) {
                Ok(k) => k,
                Err(KeyError::Repeated) => return LimitOutcome::RepeatedKey,
                Err(KeyError::Missing) => match p.missing {
                    Missing::Skip => continue,
                    Missing::Shared => String::new(),
                    // Shadow mode rejects nothing.
                    Missing::Reject if p.shadow => continue,
                    Missing::Reject => return LimitOutcome::MissingKey,
                },
            };
            let [allowed, limited, error] = counters;
            let v = match p.check(&key).await {
                Checked::Verdict(v) => v,
                Checked::Fallback(v) => {
                    error.inc();
                    v
                }
                Checked::Unavailable => {
                    error.inc();
                    if p.shadow {
                        continue;
                    }
                    return LimitOutcome::Unavailable;
                }
            };
            if v.allowed {
                allowed.inc();
            } else {
                limited.inc();
                if !p.shadow {
                    return LimitOutcome::Limited(Arc::clone(p), v);
                }
            }
            if !p.shadow && p.headers {
                let ratio = |v: &Verdict| f64::from(v.remaining) / f64::from(v.burst.max(1));
                if closest.as_ref().is_none_or(|(_, c)| ratio(&v) < ratio(c)) {
                    closest = Some((Arc::clone(p), v));
                }
            }
        }
        LimitOutcome::Allowed(closest)
    }
}
