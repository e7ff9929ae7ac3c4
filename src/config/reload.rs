//! Hot reload: the one writer of the live snapshot.
//!
//! Triggers: a change in the config file's directory (notify; the directory
//! so that atomic renames and Kubernetes ConfigMap symlink swaps are seen),
//! SIGHUP, and `POST /reload` on the admin listener. Each runs the same
//! `Reloader::reload`: read → parse → compile against the live snapshot →
//! store. A failure changes nothing: the old snapshot keeps serving, the
//! error is logged with its location and counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::plan::Plan;
use super::{LoadError, load};
use crate::observability::metrics::metrics;
use crate::snapshot::{SharedSnapshot, Snapshot, StartOnly};

/// Quiet time after a file event before reloading (editors and ConfigMap
/// updates write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Result of a reload.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new snapshot is live.
    Applied {
        /// Its version.
        version: String,
    },
    /// The file is byte-identical to the live config; nothing to do.
    Unchanged {
        /// The live version.
        version: String,
    },
}

/// Reloads the config file into the live snapshot.
pub struct Reloader {
    path: PathBuf,
    live: SharedSnapshot,
    // The `server:` settings the process started with: the ones read at
    // start only are compared with these, not with the previous file.
    started: StartOnly,
    // Serializes reloads so that "compile against the live snapshot, then
    // store" is never interleaved with another reload.
    lock: Mutex<()>,
    // The last reloads, newest last (`GET /reloads`, the admin page).
    history: Mutex<std::collections::VecDeque<ReloadRecord>>,
}

/// Reloads kept for `GET /reloads`.
const HISTORY: usize = 20;

/// One reload (or the start), as `GET /reloads` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    /// Unix time, seconds.
    pub time: i64,
    /// `start`, `file`, `sighup` or `admin`.
    pub trigger: String,
    /// `applied`, `unchanged` or `refused`.
    pub result: &'static str,
    /// The version now live (the running one when refused).
    pub version: String,
    /// What changed (the plan's lines), for an applied reload.
    pub changes: Vec<String>,
    /// The located errors, for a refused reload (at most 20).
    pub errors: Vec<String>,
}

impl Reloader {
    /// A reloader for `path` writing to `live`.
    pub fn new(path: PathBuf, live: SharedSnapshot) -> Self {
        let snapshot = live.load();
        let started = snapshot.start_only.clone();
        let first = ReloadRecord {
            time: unix_now(),
            trigger: "start".to_owned(),
            result: "applied",
            version: snapshot.version.clone(),
            changes: Vec::new(),
            errors: Vec::new(),
        };
        drop(snapshot);
        Self {
            path,
            live,
            started,
            lock: Mutex::new(()),
            history: Mutex::new(std::collections::VecDeque::from([first])),
        }
    }

    /// The last reloads, newest first.
    pub fn history(&self) -> Vec<ReloadRecord> {
        self.history
            .lock()
            .map(|h| h.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    fn remember(&self, record: ReloadRecord) {
        if let Ok(mut h) = self.history.lock() {
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(record);
        }
    }

    /// Records the initial snapshot in the metrics.
    pub fn record_initial(snapshot: &Snapshot) {
        snapshot.register_metrics();
        let m = metrics();
        m.config_info.with_label_values(&[&snapshot.version]).set(1);
        m.config_last_success.set(unix_now());
    }

    /// Reads, compiles and swaps in the config file. Blocking (file I/O):
    /// call from a blocking thread.
    pub fn reload(&self, trigger: &str) -> Result<ReloadOutcome, LoadError> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.live.load_full();
        let m = metrics();
        match load(&self.path, Some(&old)) {
            Ok(new) if new.version == old.version => {
                self.remember(ReloadRecord {
                    time: unix_now(),
                    trigger: trigger.to_owned(),
                    result: "unchanged",
                    version: new.version.clone(),
                    changes: Vec::new(),
                    errors: Vec::new(),
                });
                Ok(ReloadOutcome::Unchanged {
                    version: new.version,
                })
            }
            Ok(new) => {
                let plan = Plan::of(&old, &new, &self.started);
                log_plan(&plan, trigger);
                for field in &plan.restart_required {
                    tracing::warn!(
                        trigger,
                        field,
                        "differs from the value the gateway started with, which is read at start only: restart to apply it"
                    );
                }
                let version = new.version.clone();
                m.config_info.with_label_values(&[&version]).set(1);
                let _ = m.config_info.remove_label_values(&[&old.version]);
                new.register_metrics();
                let new = Arc::new(new);
                self.live.store(Arc::clone(&new));
                new.start_background();
                m.config_reloads.with_label_values(&["success"]).inc();
                m.config_last_success.set(unix_now());
                self.remember(ReloadRecord {
                    time: unix_now(),
                    trigger: trigger.to_owned(),
                    result: "applied",
                    version: version.clone(),
                    // The first line names the versions, shown apart.
                    changes: plan.lines().into_iter().skip(1).collect(),
                    errors: Vec::new(),
                });
                Ok(ReloadOutcome::Applied { version })
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["failure"]).inc();
                for line in e.lines() {
                    tracing::error!(trigger, error = %line, "config reload refused; the running config keeps serving");
                }
                self.remember(ReloadRecord {
                    time: unix_now(),
                    trigger: trigger.to_owned(),
                    result: "refused",
                    version: old.version.clone(),
                    changes: Vec::new(),
                    errors: e.lines().into_iter().take(20).collect(),
                });
                Err(e)
            }
        }
    }

    /// What reloading the file now would do, without doing it (`POST
    /// /reload?dry_run=true`). Blocking (file I/O).
    pub fn dry_run(&self) -> Result<Plan, LoadError> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.live.load_full();
        let new = load(&self.path, Some(&old))?;
        Ok(Plan::of(&old, &new, &self.started))
    }

    /// Runs `dry_run` on a blocking thread.
    pub async fn dry_run_async(self: &Arc<Self>) -> Result<Plan, LoadError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.dry_run())
            .await
            .unwrap_or_else(|e| {
                Err(LoadError::Read {
                    file: String::new(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// Runs `reload` on a blocking thread.
    pub async fn reload_async(
        self: &Arc<Self>,
        trigger: &'static str,
    ) -> Result<ReloadOutcome, LoadError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.reload(trigger))
            .await
            .unwrap_or_else(|e| {
                Err(LoadError::Read {
                    file: String::new(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// Watches the file's directory and reloads after changes. The returned
    /// watcher must be kept alive.
    pub fn watch(
        self: &Arc<Self>,
        extra_dirs: &[std::path::PathBuf],
    ) -> notify::Result<notify::RecommendedWatcher> {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !matches!(ev.kind, EventKind::Access(_))
            {
                let _ = tx.try_send(());
            }
        })?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        // Directories of files the config names (certificates, keys): a
        // replaced certificate reloads like an edited config.
        for d in extra_dirs {
            if d.as_path() != dir
                && let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive)
            {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch a certificate directory; reload with SIGHUP or POST /reload");
            }
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                let _ = me.reload_async("file").await;
            }
        });
        Ok(watcher)
    }

    /// Reloads on every SIGHUP.
    #[cfg(unix)]
    pub fn on_sighup(self: &Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = me.reload_async("sighup").await;
            }
        });
        Ok(())
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The reload's log line: what it changed, kept warm and restarted.
fn log_plan(plan: &Plan, trigger: &str) {
    tracing::info!(
        trigger,
        from = %plan.from,
        to = %plan.to,
        routes_added = ?plan.routes.added,
        routes_removed = ?plan.routes.removed,
        routes_changed = ?plan.routes.changed,
        upstreams_added = ?plan.upstreams.added,
        upstreams_removed = ?plan.upstreams.removed,
        upstreams_changed = ?plan.upstreams.changed,
        auth_providers_changed = ?plan.auth_providers.changed,
        rate_limits_changed = ?plan.rate_limits.changed,
        certificates_changed = ?plan.certificates.changed,
        kept_warm = ?plan.kept_warm,
        restarted = ?plan.restarted,
        settings_changed = ?plan.settings_changed,
        "config reloaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::plan::restart_only_changes;

    fn server(yaml: &str) -> StartOnly {
        let text = format!(
            "server: {yaml}\nroutes:\n  - {{ name: a, match: {{ path: /a }}, respond: {{ body: a }} }}\n"
        );
        StartOnly::of(
            &super::super::parse("t.yaml", &text).unwrap().0,
            Path::new("."),
        )
    }

    #[test]
    fn start_only_settings_are_compared_with_what_the_process_runs() {
        let started = server("{ listen: [\"127.0.0.1:8080\"], shutdown_grace: 5s }");
        // A first reload moves the port: a restart is needed.
        let moved = server("{ listen: [\"127.0.0.1:9090\"], shutdown_grace: 5s }");
        assert_eq!(restart_only_changes(&started, &moved), ["server.listen"]);
        // A second reload keeps 9090 and changes something else: still
        // not what the process runs, so still a restart (the previous
        // file's value would say nothing changed).
        assert_eq!(restart_only_changes(&started, &moved), ["server.listen"]);
        // Back to the port it runs on: nothing to restart for (the
        // previous file's value would say it changed).
        let back = server("{ listen: [\"127.0.0.1:8080\"], shutdown_grace: 5s }");
        assert!(restart_only_changes(&started, &back).is_empty());
        let grace = server("{ listen: [\"127.0.0.1:8080\"], shutdown_grace: 9s }");
        assert_eq!(
            restart_only_changes(&started, &grace),
            ["server.shutdown_grace"]
        );
    }
}
