//! `rate_limits` and each route's `rate_limit` list. A policy whose
//! definition did not change is carried over with its buckets, so a reload
//! never hands everyone a fresh burst.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Errors;
use crate::config::Definition;
use crate::config::spec::{
    MissingKeySpec, OnErrorSpec, RateLimitSpec, RateModeSpec, ScopeSpec, Spec,
};
use crate::ratelimit::global::{self, Redis};
use crate::ratelimit::{
    LimitKeyPart, Missing, Policy, PolicyOptions, RouteLimits, Shape, parse_rate,
};
use crate::snapshot::Snapshot;

/// `redis:`, carried over when unchanged (its connections stay up).
pub(super) fn redis(
    spec: &Spec,
    previous: Option<&Snapshot>,
    errs: &mut Errors,
) -> Option<Arc<Redis>> {
    let r = spec.redis.as_ref()?;
    let before = errs.0.len();
    if !(1..=256).contains(&r.pool_size) {
        errs.push("redis.pool_size", "must be from 1 to 256");
    }
    if r.timeout.0.is_zero() {
        errs.push("redis.timeout", "must be more than zero");
    }
    let settings = global::RedisSettings {
        url: r.url.as_str().to_owned(),
        pool_size: r.pool_size,
        timeout: r.timeout.0,
        on_error: match r.on_error {
            OnErrorSpec::Local => global::OnError::Local,
            OnErrorSpec::Allow => global::OnError::Allow,
            OnErrorSpec::Deny => global::OnError::Deny,
        },
    };
    if let Some(prev) = previous.and_then(|s| s.redis.as_ref())
        && prev.settings == settings
    {
        return Some(Arc::clone(prev));
    }
    if errs.0.len() > before {
        return None;
    }
    match Redis::new(settings) {
        Ok(r) => Some(Arc::new(r)),
        Err(m) => {
            errs.push("redis.url", m);
            None
        }
    }
}

pub(super) fn policies(
    spec: &Spec,
    previous: Option<&Snapshot>,
    redis: Option<&Arc<Redis>>,
    errs: &mut Errors,
) -> BTreeMap<String, Arc<Policy>> {
    let mut out = BTreeMap::new();
    for (name, r) in &spec.rate_limits {
        let p = format!("rate_limits.{name}");
        let global = (r.scope == ScopeSpec::Global).then_some(redis).flatten();
        if r.scope == ScopeSpec::Global && redis.is_none() && spec.redis.is_none() {
            errs.push(
                format!("{p}.scope"),
                "scope: global needs a `redis:` section",
            );
            continue;
        }
        if let Some(prev) = previous.and_then(|s| s.rate_limits.get(name))
            && prev.definition == Definition::of(r)
            && match (&prev.global, global) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        {
            out.insert(name.clone(), Arc::clone(prev));
            continue;
        }
        if let Some(mut policy) = policy(name, r, &p, errs) {
            policy.global = global.cloned();
            out.insert(name.clone(), Arc::new(policy));
        }
    }
    out
}

fn shape(rate: &str, burst: Option<u32>, field: &str, errs: &mut Errors) -> Option<Shape> {
    match parse_rate(rate) {
        Ok((count, window)) => {
            let burst = burst.unwrap_or(count);
            if burst == 0 {
                errs.push(field, "burst must be at least 1");
                return None;
            }
            if count > 1_000_000_000 {
                errs.push(field, "rate is too high");
                return None;
            }
            Some(Shape {
                count,
                window,
                burst,
            })
        }
        Err(m) => {
            errs.push(field, m);
            None
        }
    }
}

fn policy(name: &str, r: &RateLimitSpec, p: &str, errs: &mut Errors) -> Option<Policy> {
    let before = errs.0.len();
    if !super::is_name(name) {
        errs.push(p, "policy names use letters, digits, `-`, `_` and `.`");
    }
    let mut key = Vec::new();
    if r.key.0.is_empty() {
        errs.push(format!("{p}.key"), "give at least one key part");
    }
    for (i, k) in r.key.0.iter().enumerate() {
        match LimitKeyPart::parse(k) {
            Ok(part) => key.push(part),
            Err(m) => errs.push(format!("{p}.key[{i}]"), m),
        }
    }
    if !(1..=100_000_000).contains(&r.max_keys) {
        errs.push(format!("{p}.max_keys"), "must be from 1 to 100000000");
    }
    let default = shape(r.rate.as_str(), r.burst, &format!("{p}.rate"), errs);
    let mut overrides = Vec::new();
    for (value, o) in &r.overrides {
        if let Some(s) = shape(
            o.rate.as_str(),
            o.burst,
            &format!("{p}.overrides.{value}"),
            errs,
        ) {
            overrides.push((value.clone(), s));
        }
    }
    let missing = match r.missing_key {
        MissingKeySpec::Reject => Missing::Reject,
        MissingKeySpec::Shared => Missing::Shared,
        MissingKeySpec::Skip => Missing::Skip,
    };
    if errs.0.len() > before {
        return None;
    }
    let options = PolicyOptions {
        max_keys: r.max_keys,
        shadow: r.mode == RateModeSpec::Shadow,
        headers: r.headers,
        definition: Definition::of(r),
    };
    let policy = Policy::new(name, options, key, default?, overrides, missing);
    if policy.is_none() {
        errs.push(p, "the rate cannot be expressed (period too small)");
    }
    policy
}

/// A route's `rate_limit` list.
pub(super) fn route_limits(
    route: &str,
    names: &[String],
    p: &str,
    policies: &BTreeMap<String, Arc<Policy>>,
    spec: &Spec,
    errs: &mut Errors,
) -> Option<RouteLimits> {
    if names.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match policies.get(n) {
            Some(policy) => {
                if list.iter().any(|x: &Arc<Policy>| x.name == *n) {
                    errs.push(
                        format!("{p}[{i}]"),
                        format!("policy \"{n}\" is listed twice"),
                    );
                }
                list.push(Arc::clone(policy));
            }
            // A policy with its own errors is reported there.
            None if spec.rate_limits.contains_key(n) => {}
            None => errs.push(format!("{p}[{i}]"), format!("unknown rate limit \"{n}\"")),
        }
    }
    Some(RouteLimits::new(route, list))
}
