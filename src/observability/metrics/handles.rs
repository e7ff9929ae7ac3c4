//! Handles resolved from the metric families when a snapshot is
//! compiled: per route (`RouteMetrics`), per endpoint
//! (`EndpointMetrics`), and per-status counters (`StatusCounters`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use http::Method;
use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::metrics;

/// Small stable index for a method label; everything non-standard is `OTHER`.
pub fn method_label(m: &Method) -> (u8, &'static str) {
    match *m {
        Method::GET => (0, "GET"),
        Method::HEAD => (1, "HEAD"),
        Method::POST => (2, "POST"),
        Method::PUT => (3, "PUT"),
        Method::DELETE => (4, "DELETE"),
        Method::PATCH => (5, "PATCH"),
        Method::OPTIONS => (6, "OPTIONS"),
        Method::TRACE => (7, "TRACE"),
        Method::CONNECT => (8, "CONNECT"),
        _ => (9, "OTHER"),
    }
}

/// Status codes that get a lock-free slot; others go through a map.
const HOT_STATUSES: [u16; 16] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 429, 500, 502, 504,
];
/// Methods with hot slots: the first six `method_label` indexes (GET,
/// HEAD, POST, PUT, DELETE, PATCH), so a route costs ~1.5 KiB of slots.
const METHOD_SLOTS: usize = 6;

/// Counters of one family with fixed leading labels, keyed by
/// (method index, status) and created on first use. Common status codes
/// resolve through an array of `OnceLock`s (one atomic load); the rest
/// through a locked map.
#[derive(Clone)]
pub struct StatusCounters {
    family: IntCounterVec,
    fixed: Arc<[String]>,
    with_method: bool,
    hot: Arc<[OnceLock<IntCounter>]>,
    cache: Arc<RwLock<HashMap<(u8, u16), IntCounter>>>,
}

impl StatusCounters {
    /// Counters of `family` whose first labels are `fixed`; the remaining
    /// labels are (method, status) or just (status).
    pub fn new(family: &IntCounterVec, fixed: &[&str], with_method: bool) -> Self {
        let slots = HOT_STATUSES.len() * if with_method { METHOD_SLOTS } else { 1 };
        Self {
            family: family.clone(),
            fixed: fixed.iter().map(|s| (*s).to_owned()).collect(),
            with_method,
            hot: (0..slots).map(|_| OnceLock::new()).collect(),
            cache: Arc::default(),
        }
    }

    /// Adds one for `status` (families without a method label).
    pub fn inc_status(&self, status: u16) {
        self.inc(&Method::GET, status);
    }

    /// Adds one for (method, status).
    pub fn inc(&self, method: &Method, status: u16) {
        let (mi, mname) = if self.with_method {
            method_label(method)
        } else {
            (0, "")
        };
        if let Some(h) = HOT_STATUSES.iter().position(|s| *s == status)
            && usize::from(mi) < METHOD_SLOTS
        {
            let slot = usize::from(mi) * HOT_STATUSES.len() + h;
            if let Some(cell) = self.hot.get(slot) {
                if let Some(c) = cell.get() {
                    c.inc();
                } else if let Some(c) = self.resolve(mname, status) {
                    c.inc();
                    let _ = cell.set(c);
                }
                return;
            }
        }
        if let Ok(map) = self.cache.read()
            && let Some(c) = map.get(&(mi, status))
        {
            c.inc();
            return;
        }
        if let Some(c) = self.resolve(mname, status) {
            c.inc();
            if let Ok(mut map) = self.cache.write() {
                map.insert((mi, status), c);
            }
        }
    }

    /// The registry's counter for these labels.
    fn resolve(&self, method: &str, status: u16) -> Option<IntCounter> {
        let status_text = status.to_string();
        let mut labels: Vec<&str> = self.fixed.iter().map(String::as_str).collect();
        if self.with_method {
            labels.push(method);
        }
        labels.push(&status_text);
        self.family.get_metric_with_label_values(&labels).ok()
    }
}

/// Per-route handles.
#[derive(Clone)]
pub struct RouteMetrics {
    /// requests by method and status.
    pub requests: StatusCounters,
    /// duration histogram.
    pub duration: Histogram,
    /// gRPC calls by status code (`code` is the status label; codes
    /// above 16 count as 17).
    pub grpc_responses: StatusCounters,
    /// request body size histogram.
    pub request_size: Histogram,
    /// response body size histogram.
    pub response_size: Histogram,
}

impl RouteMetrics {
    /// Handles for route `name` (the empty name is used for requests that matched no route).
    pub fn new(name: &str) -> Self {
        let m = metrics();
        Self {
            requests: StatusCounters::new(&m.requests, &[name], true),
            duration: m.request_duration.with_label_values(&[name]),
            grpc_responses: StatusCounters::new(&m.grpc_responses, &[name], false),
            request_size: m.request_size.with_label_values(&[name]),
            response_size: m.response_size.with_label_values(&[name]),
        }
    }
}

/// Per-endpoint handles.
#[derive(Clone)]
pub struct EndpointMetrics {
    /// upstream requests by status.
    pub requests: StatusCounters,
    /// failed connects.
    pub connect_errors: IntCounter,
}

impl EndpointMetrics {
    /// Handles for `endpoint` of `upstream`.
    pub fn new(upstream: &str, endpoint: &str) -> Self {
        let m = metrics();
        Self {
            requests: StatusCounters::new(&m.upstream_requests, &[upstream, endpoint], false),
            connect_errors: m
                .upstream_connect_errors
                .with_label_values(&[upstream, endpoint]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn status_counters_count_hot_and_other_statuses() {
        let family = IntCounterVec::new(
            Opts::new("t_requests_total", "test"),
            &["route", "method", "status"],
        )
        .unwrap();
        let c = StatusCounters::new(&family, &["r"], true);
        c.inc(&Method::GET, 200);
        c.inc(&Method::GET, 200);
        c.inc(&Method::POST, 418);
        c.inc(&Method::OPTIONS, 200);
        assert_eq!(family.with_label_values(&["r", "GET", "200"]).get(), 2);
        assert_eq!(family.with_label_values(&["r", "POST", "418"]).get(), 1);
        assert_eq!(family.with_label_values(&["r", "OPTIONS", "200"]).get(), 1);
        let plain =
            IntCounterVec::new(Opts::new("t_up_total", "test"), &["upstream", "status"]).unwrap();
        let u = StatusCounters::new(&plain, &["u"], false);
        u.inc_status(502);
        u.inc_status(599);
        assert_eq!(plain.with_label_values(&["u", "502"]).get(), 1);
        assert_eq!(plain.with_label_values(&["u", "599"]).get(), 1);
    }
}
