//! Active health checks: one background task per upstream probes every
//! endpoint each `interval` (never on the request path), and moves an
//! endpoint out of rotation after `unhealthy_threshold` failed checks in a
//! row, back in after `healthy_threshold` passing ones. Endpoints start
//! healthy, so a fresh gateway serves at once. The task ends when its
//! upstream is dropped (removed or replaced by a reload).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::Uri;
use tokio::sync::watch;

use super::Upstream;
use crate::observability::metrics::metrics;

/// Largest health check response body read.
const MAX_BODY: usize = 64 << 10;

/// Compiled `health_check` settings.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Path (and query) requested.
    pub path: String,
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Deadline of one check.
    pub timeout: Duration,
    /// Passing checks in a row to come back.
    pub healthy_threshold: u32,
    /// Failing checks in a row to go out.
    pub unhealthy_threshold: u32,
    /// Accepted status ranges (inclusive).
    pub expected: Vec<(u16, u16)>,
}

impl HealthCheck {
    fn accepts(&self, status: u16) -> bool {
        self.expected
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// Parses `200-399`, `200`, `200,204` or `200-299, 302`.
pub(crate) fn parse_expected(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        match (parse(lo), parse(hi)) {
            (Some(lo), Some(hi)) if lo <= hi => out.push((lo, hi)),
            _ => {
                return Err(format!(
                    "`{part}` is not a status or a range such as 200-399"
                ));
            }
        }
    }
    if out.is_empty() {
        return Err("give a status or a range such as 200-399".to_owned());
    }
    Ok(out)
}

/// Starts the checker of `up` (no-op without `health_check`, or when
/// running already).
pub(crate) fn start(up: &Arc<Upstream>, stop: watch::Receiver<()>) {
    let Some(settings) = up.health.clone() else {
        return;
    };
    let weak = Arc::downgrade(up);
    tokio::spawn(run(weak, settings, stop));
}

async fn run(weak: Weak<Upstream>, s: HealthCheck, mut stop: watch::Receiver<()>) {
    let m = metrics();
    let mut streaks: Vec<(u32, u32)> = Vec::new();
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(up) = weak.upgrade() else {
            return;
        };
        streaks.resize(up.endpoints.len(), (0, 0));
        let mut checks = tokio::task::JoinSet::new();
        for (i, ep) in up.endpoints.iter().enumerate() {
            let tls = ep.pool.tls().cloned();
            let scheme = if tls.is_some() { "https" } else { "http" };
            let uri: Option<Uri> = format!("{scheme}://{}{}", ep.id, s.path).parse().ok();
            let (timeout, h2) = (s.timeout, up.is_h2());
            checks.spawn(async move {
                let Some(uri) = uri else {
                    return (i, None);
                };
                let probe = crate::fetch::get(crate::fetch::Target {
                    uri: &uri,
                    tls: tls.as_ref().map(|(c, _)| c),
                    server_name: tls.as_ref().map(|(_, n)| n),
                    h2,
                    max_body: MAX_BODY,
                    agent: "tollgate-health-check",
                });
                let status = match tokio::time::timeout(timeout, probe).await {
                    Ok(Ok(r)) => Some(r.status().as_u16()),
                    _ => None,
                };
                (i, status)
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((i, status)) = done else {
                continue;
            };
            let (Some(ep), Some(streak)) = (up.endpoints.get(i), streaks.get_mut(i)) else {
                continue;
            };
            let ok = status.is_some_and(|c| s.accepts(c));
            m.health_checks
                .with_label_values(&[
                    up.name.as_str(),
                    ep.id.as_str(),
                    if ok { "success" } else { "failure" },
                ])
                .inc();
            *streak = if ok {
                (streak.0 + 1, 0)
            } else {
                (0, streak.1 + 1)
            };
            let healthy = ep.healthy.load(Ordering::Relaxed);
            if healthy && streak.1 >= s.unhealthy_threshold {
                ep.set_healthy(false);
                tracing::warn!(upstream = %up.name, endpoint = %ep.id, status = ?status, "endpoint failed its health checks: out of rotation");
            } else if !healthy && streak.0 >= s.healthy_threshold {
                ep.set_healthy(true);
                tracing::info!(upstream = %up.name, endpoint = %ep.id, "endpoint passed its health checks: back in rotation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_status_forms() {
        assert_eq!(parse_expected("200-399").unwrap(), vec![(200, 399)]);
        assert_eq!(
            parse_expected("200, 204-206").unwrap(),
            vec![(200, 200), (204, 206)]
        );
        assert!(parse_expected("399-200").is_err());
        assert!(parse_expected("abc").is_err());
        assert!(parse_expected("").is_err());
    }
}
