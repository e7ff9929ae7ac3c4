//! The in-memory response store (moka, weighed by bytes) and a route's
//! cache settings: how the key is built and what the route allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};

use super::coalesce::{Flights, Join};
use super::vary::variant_key;
use crate::observability::metrics::metrics;

/// One stored response.
#[derive(Debug)]
pub struct StoredResponse {
    /// Status.
    pub status: StatusCode,
    /// End-to-end headers as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When it was stored.
    pub stored: Instant,
    /// Age it already had (upstream `Age`).
    pub initial_age: Duration,
    /// Freshness left when stored.
    pub ttl: Duration,
    /// How long past `ttl` it may stand in for a failing upstream.
    pub stale_if_error: Duration,
    /// How long past `ttl` it is served while a refresh runs.
    pub stale_while_revalidate: Duration,
    /// `Age` and `Cache-Status` of a hit, made once per second of age
    /// (hits in between share them, instead of formatting their own).
    pub hit_headers: std::sync::Mutex<Option<HitHeaders>>,
    /// The mark of the entry's URL, shared by every entry of that URL (all
    /// variants and extra key parts), set by `Store::put`. An unsafe
    /// request to the URL sets it, which voids them all at once.
    pub url: Arc<UrlMark>,
}

/// Set when an unsafe request voided every stored response of a URL.
#[derive(Debug, Default)]
pub struct UrlMark {
    voided: std::sync::atomic::AtomicBool,
}

impl UrlMark {
    fn voided(&self) -> bool {
        self.voided.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The URL part (`route␟host␟path?query`) of a cache key: its first three
/// fields, before any extra key part or variant. (None of the three can
/// hold `␟` or `␞`: route names are checked, hosts and targets are URI
/// text.)
fn url_of(key: &str) -> &str {
    let mut fields = 0;
    for (i, c) in key.char_indices() {
        match c {
            '\u{1e}' => return &key[..i],
            '\u{1f}' => {
                fields += 1;
                if fields == 3 {
                    return &key[..i];
                }
            }
            _ => {}
        }
    }
    key
}

/// The headers of a hit at one second of an entry's life.
#[derive(Debug, Clone)]
pub struct HitHeaders {
    /// Whole seconds since the entry was stored.
    pub second: u64,
    /// `Age`.
    pub age: http::HeaderValue,
    /// `Cache-Status: tollgate; hit; ttl=N`.
    pub status: http::HeaderValue,
}

impl StoredResponse {
    /// The `Age` to send now, in seconds.
    pub fn age(&self) -> u64 {
        (self.initial_age + self.stored.elapsed()).as_secs()
    }

    /// True while fresh (and not voided by an unsafe request).
    pub fn fresh(&self) -> bool {
        self.stored.elapsed() < self.ttl && !self.url.voided()
    }

    /// `Age` and `Cache-Status` for a hit `elapsed` after storing.
    pub fn hit_headers(&self, elapsed: Duration) -> HitHeaders {
        let second = elapsed.as_secs();
        let mut memo = self
            .hit_headers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = memo.as_ref().filter(|h| h.second == second) {
            return h.clone();
        }
        let ttl = self.ttl.saturating_sub(elapsed).as_secs();
        let h = HitHeaders {
            second,
            age: http::HeaderValue::from((self.initial_age + elapsed).as_secs()),
            status: http::HeaderValue::try_from(format!("tollgate; hit; ttl={ttl}"))
                .unwrap_or(http::HeaderValue::from_static("tollgate; hit")),
        };
        *memo = Some(h.clone());
        h
    }

    /// True while stale but still usable when the upstream fails.
    pub fn usable_on_error(&self) -> bool {
        self.stored.elapsed() < self.ttl + self.stale_if_error && !self.url.voided()
    }

    /// True when it carries `ETag` or `Last-Modified`, so the upstream can
    /// be asked whether it is still current.
    pub fn has_validators(&self) -> bool {
        has_validators(&self.headers)
    }

    /// False once an unsafe request to its URL voided it.
    pub fn live(&self) -> bool {
        !self.url.voided()
    }
}

/// True when `headers` carry `ETag` or `Last-Modified`.
pub fn has_validators(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ETAG) || headers.contains_key(http::header::LAST_MODIFIED)
}

/// How long past its freshness an entry with validators is kept for
/// revalidation (NGINX's `proxy_cache_path ... inactive=` default).
pub const REVALIDATE_KEEP: Duration = Duration::from_secs(600);

struct UntilStale;

impl moka::Expiry<String, Arc<StoredResponse>> for UntilStale {
    fn expire_after_create(
        &self,
        _: &String,
        e: &Arc<StoredResponse>,
        _: Instant,
    ) -> Option<Duration> {
        let keep = if e.has_validators() {
            REVALIDATE_KEEP
        } else {
            Duration::ZERO
        };
        Some(e.ttl + e.stale_if_error.max(e.stale_while_revalidate).max(keep))
    }
}

/// The store shared by every cached route.
///
/// `max_size` covers all it holds: the entries (with their URL marks)
/// get 7/8 of it, the Vary index 1/16 and the coalescing state 1/16, each
/// weighed in bytes.
pub struct Store {
    cache: moka::sync::Cache<String, Arc<StoredResponse>>,
    /// Primary key → the request headers its responses vary on.
    vary: moka::sync::Cache<String, Arc<Vec<HeaderName>>>,
    /// Keys being fetched from the origin right now (request coalescing).
    flights: Arc<Flights>,
    /// URL → the mark its live entries share (weak: the entries own it).
    urls: std::sync::Mutex<std::collections::HashMap<Box<str>, std::sync::Weak<UrlMark>>>,
    /// Larger responses are not stored.
    pub max_object: usize,
    /// The settings it was built from (compared on reload).
    pub settings: (u64, u64),
}

impl Store {
    /// A store of at most `max_size` bytes.
    pub fn new(max_size: u64, max_object: u64) -> Self {
        let side = max_size / 16;
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_size - 2 * side)
                .weigher(|k: &String, e: &Arc<StoredResponse>| {
                    let headers: usize = e
                        .headers
                        .iter()
                        .map(|(n, v)| n.as_str().len() + v.len() + 32)
                        .sum();
                    // The key, and its URL again in the mark map.
                    let key = k.len() + url_of(k).len() + 64;
                    u32::try_from(key + headers + e.body.len() + 128).unwrap_or(u32::MAX)
                })
                .expire_after(UntilStale)
                .eviction_listener(|_, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        metrics().cache_evictions.inc();
                    }
                })
                .build(),
            vary: moka::sync::Cache::builder()
                .max_capacity(side)
                .weigher(|k: &String, names: &Arc<Vec<HeaderName>>| {
                    let names: usize = names.iter().map(|n| n.as_str().len() + 24).sum();
                    u32::try_from(k.len() + names + 96).unwrap_or(u32::MAX)
                })
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            flights: Arc::new(Flights::with_budget(side)),
            urls: std::sync::Mutex::default(),
            max_object: usize::try_from(max_object).unwrap_or(usize::MAX),
            settings: (max_size, max_object),
        }
    }

    /// A fresh entry for `key`.
    pub fn get(&self, key: &str) -> Option<Arc<StoredResponse>> {
        self.cache.get(key).filter(|e| e.fresh())
    }

    /// An entry that is fresh, or was stored at or after `since` (by the
    /// fetch a coalesced request waited for: usable once even when the
    /// response must be revalidated on every use).
    pub fn get_validated_since(&self, key: &str, since: Instant) -> Option<Arc<StoredResponse>> {
        self.cache
            .get(key)
            .filter(|e| e.live() && (e.fresh() || e.stored >= since))
    }

    /// An entry the upstream can be asked about (`ETag` or
    /// `Last-Modified`), fresh or stale.
    pub fn get_revalidatable(&self, key: &str) -> Option<Arc<StoredResponse>> {
        self.cache
            .get(key)
            .filter(|e| e.live() && e.has_validators())
    }

    /// Drops one entry.
    pub fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// An entry past its freshness but within `stale_while_revalidate`.
    pub fn get_revalidating(&self, key: &str) -> Option<Arc<StoredResponse>> {
        self.cache.get(key).filter(|e| {
            e.live() && !e.fresh() && e.stored.elapsed() < e.ttl + e.stale_while_revalidate
        })
    }

    /// An entry past its freshness that may still stand in for a failing
    /// upstream (`stale-if-error`).
    pub fn get_stale(&self, key: &str) -> Option<Arc<StoredResponse>> {
        self.cache
            .get(key)
            .filter(|e| !e.fresh() && e.usable_on_error())
    }

    /// Joins the fetch of `key` (request coalescing; see `Flights::join`).
    pub fn join(&self, key: &str) -> Join {
        self.flights.join(key)
    }

    /// Removes every entry of `route` whose path starts with `path_prefix`
    /// (any host, query and extra key parts); `None`: everything. Returns
    /// how many entries went.
    pub fn purge(&self, scope: Option<(&str, &str)>) -> usize {
        let Some((route, path_prefix)) = scope else {
            // The count is updated by pending maintenance; run it first.
            self.cache.run_pending_tasks();
            let n = self.cache.entry_count() as usize;
            self.cache.invalidate_all();
            self.vary.invalidate_all();
            if let Ok(mut m) = self.urls.lock() {
                m.clear();
            }
            self.cache.run_pending_tasks();
            return n;
        };
        let matches = |k: &str| {
            let mut parts = k.splitn(3, '\u{1f}');
            parts.next() == Some(route)
                && parts.next().is_some()
                && parts
                    .next()
                    .is_some_and(|rest| rest.starts_with(path_prefix))
        };
        let varied: Vec<Arc<String>> = self
            .vary
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(k, _)| k)
            .collect();
        for k in &varied {
            self.vary.invalidate(k.as_str());
        }
        let keys: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            self.cache.invalidate(k.as_str());
        }
        keys.len()
    }

    /// The key to look up for a request: the primary key, or, when stored
    /// responses for it vary, the variant for this request's values.
    pub fn lookup_key<'k>(
        &self,
        primary: &'k str,
        request: &HeaderMap,
    ) -> std::borrow::Cow<'k, str> {
        match self.vary.get(primary) {
            Some(names) => std::borrow::Cow::Owned(variant_key(primary, &names, request)),
            None => std::borrow::Cow::Borrowed(primary),
        }
    }

    /// Records that `primary`'s responses vary on `names`; returns the
    /// variant key for `request`.
    pub fn vary_on(&self, primary: &str, names: Vec<HeaderName>, request: &HeaderMap) -> String {
        let key = variant_key(primary, &names, request);
        self.vary.insert(primary.to_owned(), Arc::new(names));
        key
    }

    /// Voids the entries for one URL (every variant and extra key part):
    /// after a successful unsafe request to it. Constant time, whatever
    /// the size of the cache: the URL's shared mark is set, and the voided
    /// entries are never served again (they leave as space is needed).
    pub fn invalidate_url(&self, route: &str, host: &str, path_and_query: &str) {
        let url = format!("{route}\u{1f}{host}\u{1f}{path_and_query}");
        let mark = self
            .urls
            .lock()
            .ok()
            .and_then(|mut m| m.remove(url.as_str()))
            .and_then(|w| w.upgrade());
        if let Some(mark) = mark {
            mark.voided
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.cache.invalidate(&url);
        self.vary.invalidate(&url);
    }

    /// The mark shared by the live entries of `url` (a new one when none
    /// is live).
    fn url_mark(&self, url: &str) -> Arc<UrlMark> {
        let Ok(mut map) = self.urls.lock() else {
            return Arc::default();
        };
        if let Some(m) = map.get(url).and_then(std::sync::Weak::upgrade) {
            return m;
        }
        let m = Arc::new(UrlMark::default());
        map.insert(url.into(), Arc::downgrade(&m));
        m
    }

    /// Forgets the URLs none of whose entries is left (every second).
    pub fn sweep(&self) {
        if let Ok(mut map) = self.urls.lock() {
            map.retain(|_, m| m.strong_count() > 0);
        }
    }

    /// Entries and their total weight in bytes (for `/cache/stats`).
    pub fn stats(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Bytes held by the Vary index and by the coalescing state, and
    /// their limits (for `/cache/stats`).
    pub fn side_stats(&self) -> serde_json::Value {
        self.vary.run_pending_tasks();
        serde_json::json!({
            "vary_index_bytes": self.vary.weighted_size(),
            "vary_index_max_bytes": self.vary.policy().max_capacity(),
            "coalescing_bytes": self.flights.used(),
            "coalescing_max_bytes": self.flights.budget(),
        })
    }

    /// Forgets that `primary` varies (its latest response does not).
    pub fn no_vary(&self, primary: &str) {
        self.vary.invalidate(primary);
    }

    /// Stores an entry.
    pub fn put(&self, key: String, mut entry: StoredResponse) {
        entry.url = self.url_mark(url_of(&key));
        self.cache.insert(key, Arc::new(entry));
    }
}
