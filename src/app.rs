//! Wiring: listeners, the admin server, reload triggers, the pool sweeper
//! and graceful drain. `Gateway::start` is what `tollgate run` and the
//! integration tests both use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::admin::{self, AdminState};
use crate::config::reload::Reloader;
use crate::config::{self, LoadError};
use crate::observability::access_log;
use crate::proxy::server;
use crate::snapshot::SharedSnapshot;

/// How often idle upstream connections past their timeout are closed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid or unreadable.
    #[error("{0}")]
    Config(#[from] LoadError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file watcher could not start.
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] notify::Error),
}

/// Start-up switches.
#[derive(Debug, Clone, Copy)]
pub struct StartOptions {
    /// Reload when the config file changes.
    pub watch_file: bool,
    /// Reload on SIGHUP.
    pub sighup: bool,
}

/// A running gateway.
pub struct Gateway {
    /// Bound proxy addresses, in config order.
    pub listen: Vec<SocketAddr>,
    /// Bound TLS addresses, in config order.
    pub tls_listen: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// The live snapshot.
    pub live: SharedSnapshot,
    /// The reloader (the one writer of `live`).
    pub reloader: Arc<Reloader>,
    draining: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    limit: Arc<Semaphore>,
    max_connections: u32,
    grace: Duration,
    /// Requests in progress; cut when the grace runs out.
    requests: Arc<crate::proxy::ctx::Requests>,
    _watcher: Option<notify::RecommendedWatcher>,
}

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// How long connections get to close after the shutdown grace cut them,
/// and the access log to be written out.
const CUT_WAIT: Duration = Duration::from_secs(2);

impl Gateway {
    /// Requests in progress on this gateway now (what load shedding
    /// counts), from the request head to the end of the response.
    pub fn requests_in_progress(&self) -> usize {
        self.requests.current()
    }

    /// Loads `config`, binds every listener and starts serving.
    pub async fn start(config_path: PathBuf, opts: StartOptions) -> Result<Self, StartError> {
        let snapshot = config::load(&config_path, None)?;
        Reloader::record_initial(&snapshot);
        let start = snapshot.start_only.clone();
        let grace = start.shutdown_grace;
        let max_connections = start.max_connections.min(Semaphore::MAX_PERMITS) as u32;
        snapshot.start_background();
        let live: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let reloader = Arc::new(Reloader::new(config_path, Arc::clone(&live)));
        let (shutdown, rx) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(max_connections as usize));
        let draining = Arc::new(AtomicBool::new(false));

        // Requests in progress on this gateway (load shedding).
        let inflight = Arc::new(crate::proxy::ctx::Requests::default());
        let mut listen = Vec::new();
        let mut listeners = Vec::new();
        for addr in &start.listen {
            let l = bind(addr).await?;
            listen.push(l.local_addr().map_err(|source| StartError::Bind {
                addr: addr.to_string(),
                source,
            })?);
            listeners.push(l);
        }
        let mut tls_listen = Vec::new();
        let mut tls_listeners = Vec::new();
        for addr in &start.tls_listen {
            let l = bind(addr).await?;
            tls_listen.push(l.local_addr().map_err(|source| StartError::Bind {
                addr: addr.to_string(),
                source,
            })?);
            tls_listeners.push(l);
        }
        let admin_listener = bind(&start.admin_listen).await?;
        let admin = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: start.admin_listen.clone(),
                source,
            })?;
        if !admin.ip().is_loopback() && live.load().admin_token.is_none() {
            tracing::warn!(admin = %admin, "the admin API listens on a non-loopback address without a token (allow_public_without_token): anyone who reaches it can reload the config and purge the cache");
        }
        let admin_limits = admin::Limits {
            max_connections: start.admin_max_connections,
            header_read_timeout: start.admin_header_read_timeout,
        };

        let https_port = tls_listen.first().map_or(443, SocketAddr::port);
        for l in listeners {
            tokio::spawn(server::serve(
                l,
                Arc::clone(&live),
                Arc::clone(&limit),
                Arc::clone(&inflight),
                https_port,
                rx.clone(),
            ));
        }
        for l in tls_listeners {
            tokio::spawn(server::serve_tls(
                l,
                Arc::clone(&live),
                Arc::clone(&limit),
                Arc::clone(&inflight),
                rx.clone(),
            ));
        }
        let admin_state = Arc::new(AdminState {
            live: Arc::clone(&live),
            reloader: Arc::clone(&reloader),
            draining: Arc::clone(&draining),
        });
        // The admin listener outlives the drain (so /readyz can answer 503).
        let (admin_stop, admin_rx) = watch::channel(false);
        tokio::spawn(admin::serve(
            admin_listener,
            admin_state,
            admin_limits,
            admin_rx,
        ));
        tokio::spawn(sweep(Arc::clone(&live), rx));
        // Cache purges and invalidations shared with the other replicas
        // (while the config has `redis:` and `cache:`).
        tokio::spawn(crate::cache::fleet::run(
            Arc::clone(&live),
            shutdown.subscribe(),
        ));
        let watcher = if opts.watch_file {
            Some(reloader.watch(&start.certificate_dirs)?)
        } else {
            None
        };
        #[cfg(unix)]
        if opts.sighup
            && let Err(e) = reloader.on_sighup()
        {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler");
        }
        tracing::info!(listen = ?listen, tls_listen = ?tls_listen, admin = %admin, version = %live.load().version, "tollgate started");
        Ok(Gateway {
            listen,
            tls_listen,
            admin,
            live,
            reloader,
            draining,
            shutdown,
            admin_stop,
            limit,
            max_connections,
            grace,
            requests: inflight,
            _watcher: watcher,
        })
    }

    /// Drains: `/readyz` turns 503, listeners stop accepting, keep-alive
    /// connections close after their current response, and in-flight
    /// requests get up to `shutdown_grace` to finish. Returns true when all
    /// connections closed in time.
    pub async fn shutdown(self) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let all = Arc::clone(&self.limit).acquire_many_owned(self.max_connections);
        let done = tokio::time::timeout(self.grace, all).await.is_ok();
        if done {
            tracing::info!("drained; all connections closed");
        } else {
            tracing::warn!(grace = ?self.grace, "shutdown grace passed with connections still open: cutting them");
            // Connections are dropped with their requests, which are
            // logged and counted as `shutdown_grace_expired`.
            self.requests.cut();
            let all = Arc::clone(&self.limit).acquire_many_owned(self.max_connections);
            let _ = tokio::time::timeout(CUT_WAIT, all).await;
        }
        let _ = self.admin_stop.send(true);
        // The spans still queued go to the collector (within the export
        // timeout, at most `CUT_WAIT`).
        if let Some(tracer) = &self.live.load().tracer {
            tracer.shutdown(CUT_WAIT).await;
        }
        let _ = tokio::task::spawn_blocking(|| access_log::flush(CUT_WAIT)).await;
        done
    }
}

/// Every second: closes expired idle upstream connections, evicts idle
/// rate-limit keys and exports the key counts.
async fn sweep(live: SharedSnapshot, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {
                let snap = live.load();
                for u in snap.upstreams.values() {
                    u.evict_expired(SWEEP_INTERVAL);
                }
                if let Some(store) = &snap.cache {
                    store.sweep();
                    let (entries, bytes) = store.stats();
                    let m = crate::observability::metrics::metrics();
                    m.cache_entries.set(entries as i64);
                    m.cache_bytes.set(bytes as i64);
                }
                for p in snap.rate_limits.values() {
                    p.sweep();
                    crate::observability::metrics::metrics()
                        .ratelimit_keys
                        .with_label_values(&[p.name.as_str()])
                        .set(p.keys() as i64);
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
