//! A provider's key store: fixed keys from the config (JWKS file, PEM key,
//! secret), or a remote JWKS fetched in the background.
//!
//! A remote store has one task. It fetches at start, then every
//! `jwks_refresh` (or sooner when the response's `Cache-Control: max-age`
//! says so), retries failures with backoff, and refreshes early when a
//! request meets an unknown `kid` (at most once per
//! `jwks_min_refresh_interval`, so a flood of random kids cannot flood the
//! issuer). A failed refresh keeps the last good keys. The task ends when
//! the store is dropped (its provider left the config).
//!
//! Fetches use hyper's HTTP/1.1 client over tokio-rustls (webpki roots plus
//! an optional `ca_file`): the gateway's own stack, no second HTTP client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{StatusCode, Uri, header};
use prometheus::IntCounter;
use rustls::ClientConfig;
use tokio::sync::{Notify, watch};

use super::keys::KeySet;
use crate::hash::hash64;
use crate::observability::metrics::metrics;

/// Largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// First retry delay after a failed fetch; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay after failed fetches.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where remote keys come from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Remote {
    /// A JWKS URL.
    Jwks(Uri),
    /// The issuer; `jwks_uri` is read from its OpenID configuration.
    Discovery(String),
}

/// Settings of a remote store.
#[derive(Clone)]
pub struct RemoteSettings {
    /// Where the keys come from.
    pub remote: Remote,
    /// TLS for `https://` fetches.
    pub tls: Arc<ClientConfig>,
    /// Hash of the `ca_file` contents (0: none).
    pub ca_hash: u64,
    /// Regular refresh period.
    pub refresh: Duration,
    /// Least time between refreshes forced by unknown kids.
    pub min_refresh: Duration,
    /// Longest time `/readyz` waits for the first key set.
    pub ready_timeout: Duration,
    /// Deadline of one fetch.
    pub fetch_timeout: Duration,
}

impl RemoteSettings {
    /// True when a store with `other` settings would fetch the same keys
    /// the same way (so the running store can be kept).
    pub fn same_source(&self, other: &RemoteSettings) -> bool {
        self.remote == other.remote
            && self.ca_hash == other.ca_hash
            && self.refresh == other.refresh
            && self.min_refresh == other.min_refresh
            && self.ready_timeout == other.ready_timeout
            && self.fetch_timeout == other.fetch_timeout
    }
}

/// Keys of one provider, fixed or refreshed.
pub struct KeyStore {
    provider: String,
    current: ArcSwapOption<KeySet>,
    generation: AtomicU64,
    remote: Option<RemoteState>,
}

struct RemoteState {
    settings: RemoteSettings,
    created: Instant,
    started: AtomicBool,
    wake: Arc<Notify>,
    /// Counts finished fetch attempts (success or failure).
    attempts: watch::Sender<u64>,
    /// Milliseconds since `created` of the last forced refresh, plus one (0: never).
    last_forced: AtomicU64,
    /// Dropped with the store, which ends its task even while it sleeps.
    stop: watch::Sender<()>,
    /// Hash of the last JWKS document installed.
    doc_hash: AtomicU64,
    ok: IntCounter,
    failed: IntCounter,
}

/// Why a lookup could not be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A refresh ran (successfully or not); look again.
    Done,
    /// Refreshed too recently; the kid stays unknown.
    Throttled,
}

impl KeyStore {
    /// A store with fixed keys.
    pub fn fixed(provider: &str, keys: KeySet) -> Self {
        metrics()
            .jwks_keys
            .with_label_values(&[provider])
            .set(keys.len() as i64);
        Self {
            provider: provider.to_owned(),
            current: ArcSwapOption::from_pointee(keys),
            generation: AtomicU64::new(1),
            remote: None,
        }
    }

    /// A remote store; nothing is fetched until `start`.
    pub fn remote(provider: &str, settings: RemoteSettings) -> Self {
        let m = metrics();
        Self {
            provider: provider.to_owned(),
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            remote: Some(RemoteState {
                settings,
                created: Instant::now(),
                started: AtomicBool::new(false),
                wake: Arc::new(Notify::new()),
                attempts: watch::channel(0).0,
                last_forced: AtomicU64::new(0),
                stop: watch::channel(()).0,
                doc_hash: AtomicU64::new(0),
                ok: m.jwks_refresh.with_label_values(&[provider, "success"]),
                failed: m.jwks_refresh.with_label_values(&[provider, "failure"]),
            }),
        }
    }

    /// The remote settings, when this store fetches.
    pub fn remote_settings(&self) -> Option<&RemoteSettings> {
        self.remote.as_ref().map(|r| &r.settings)
    }

    /// The current keys (`None` until a remote store's first fetch).
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Changes every time the keys are replaced; cached verifications made
    /// with another generation are void.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True once keys are there, or when `/readyz` must stop waiting.
    pub fn ready(&self) -> bool {
        match &self.remote {
            None => true,
            Some(r) => {
                self.current.load().is_some() || r.created.elapsed() >= r.settings.ready_timeout
            }
        }
    }

    /// Starts the refresh task of a remote store (once; later calls, as
    /// after a reload that kept the store, ask for a refresh instead).
    /// Needs a Tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let Some(r) = &self.remote else {
            return;
        };
        if r.started.swap(true, Ordering::AcqRel) {
            r.wake.notify_one();
            return;
        }
        let weak = Arc::downgrade(self);
        let wake = Arc::clone(&r.wake);
        let mut stop = r.stop.subscribe();
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let Some(store) = weak.upgrade() else {
                    return;
                };
                let wait = store.refresh_once(&mut backoff).await;
                drop(store);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake.notified() => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// One fetch; returns how long to wait before the next.
    async fn refresh_once(&self, backoff: &mut Duration) -> Duration {
        let Some(r) = &self.remote else {
            return MAX_BACKOFF;
        };
        let s = &r.settings;
        let result = tokio::time::timeout(s.fetch_timeout, fetch_keys(s)).await;
        let wait = match result {
            Ok(Ok((set, skipped, max_age, doc_hash))) => {
                r.ok.inc();
                if skipped > 0 {
                    tracing::debug!(provider = %self.provider, skipped, "JWKS keys skipped (not signature keys, or unreadable)");
                }
                self.install(set, doc_hash);
                *backoff = FIRST_BACKOFF;
                max_age
                    .map_or(s.refresh, |a| a.min(s.refresh))
                    .max(s.min_refresh)
            }
            Ok(Err(e)) => {
                r.failed.inc();
                tracing::warn!(provider = %self.provider, error = %e, keeping_old_keys = self.current.load().is_some(), "JWKS fetch failed");
                next_backoff(backoff, s.refresh)
            }
            Err(_) => {
                r.failed.inc();
                tracing::warn!(provider = %self.provider, timeout = ?s.fetch_timeout, keeping_old_keys = self.current.load().is_some(), "JWKS fetch timed out");
                next_backoff(backoff, s.refresh)
            }
        };
        r.attempts.send_modify(|n| *n += 1);
        wait
    }

    /// Installs a fetched set. The same document again changes nothing;
    /// any other set voids cached verifications (a new generation).
    fn install(&self, set: KeySet, doc_hash: u64) {
        let Some(r) = &self.remote else {
            return;
        };
        if r.doc_hash.swap(doc_hash, Ordering::AcqRel) == doc_hash && self.current.load().is_some()
        {
            return;
        }
        metrics()
            .jwks_keys
            .with_label_values(&[&self.provider])
            .set(set.len() as i64);
        self.current.store(Some(Arc::new(set)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Called for a token whose `kid` is unknown: refreshes now unless a
    /// forced refresh ran within `min_refresh`, and waits for it (at most
    /// the fetch timeout).
    pub async fn refresh_for_unknown_kid(&self) -> Refresh {
        let Some(r) = &self.remote else {
            return Refresh::Throttled;
        };
        let s = &r.settings;
        let now = r.created.elapsed().as_millis() as u64 + 1;
        let last = r.last_forced.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < s.min_refresh.as_millis() as u64 {
            return Refresh::Throttled;
        }
        if r.last_forced
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Refresh::Throttled;
        }
        let mut done = r.attempts.subscribe();
        done.borrow_and_update();
        r.wake.notify_one();
        let _ =
            tokio::time::timeout(s.fetch_timeout + Duration::from_secs(1), done.changed()).await;
        Refresh::Done
    }
}

fn next_backoff(backoff: &mut Duration, refresh: Duration) -> Duration {
    let wait = *backoff;
    *backoff = (*backoff * 2)
        .min(MAX_BACKOFF)
        .min(refresh.max(FIRST_BACKOFF));
    wait
}

/// Fetches and parses the key set (resolving discovery first).
async fn fetch_keys(s: &RemoteSettings) -> Result<(KeySet, usize, Option<Duration>, u64), String> {
    let uri = match &s.remote {
        Remote::Jwks(uri) => uri.clone(),
        Remote::Discovery(issuer) => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let uri: Uri = url
                .parse()
                .map_err(|_| format!("bad discovery URL {url}"))?;
            let (body, _) = get(&uri, &s.tls).await?;
            #[derive(serde::Deserialize)]
            struct Discovery {
                jwks_uri: String,
            }
            let d: Discovery = serde_json::from_slice(&body)
                .map_err(|e| format!("discovery document from {url}: {e}"))?;
            d.jwks_uri
                .parse()
                .map_err(|_| format!("discovery gave a bad jwks_uri `{}`", d.jwks_uri))?
        }
    };
    let (body, max_age) = get(&uri, &s.tls).await?;
    let (set, skipped) = KeySet::from_jwks(&body).map_err(|e| format!("{uri}: {e}"))?;
    if set.is_empty() {
        return Err(format!("{uri}: no usable signature keys"));
    }
    Ok((set, skipped, max_age, hash64(&body)))
}

/// GET `uri` (http or https); the body and any `Cache-Control: max-age`.
async fn get(uri: &Uri, tls: &Arc<ClientConfig>) -> Result<(Bytes, Option<Duration>), String> {
    let resp = crate::fetch::get(crate::fetch::Target {
        uri,
        tls: Some(tls),
        server_name: None,
        h2: false,
        max_body: MAX_DOCUMENT_BYTES,
        agent: concat!("tollgate/", env!("CARGO_PKG_VERSION")),
    })
    .await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{uri}: status {}", resp.status().as_u16()));
    }
    let max_age = resp
        .headers()
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .map(Duration::from_secs);
    Ok((resp.into_body(), max_age))
}

/// TLS settings for fetches: the webpki roots plus the certificates in
/// `ca_file` (PEM).
pub(crate) fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate file: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("certificate not usable as a CA: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no certificate in the file".to_owned());
        }
    }
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
