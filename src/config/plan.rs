//! What a reload from one snapshot to the next does: routes, upstreams,
//! auth providers, rate-limit policies and certificates added, removed or
//! changed; which state is kept warm and which starts afresh; settings
//! that changed, and those that need a restart. One account serves the
//! reload log line, `tollgate diff OLD NEW` and `POST /reload?dry_run=true`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::Definition;
use crate::snapshot::{Snapshot, StartOnly};

/// Names added, removed and changed in one kind of definition.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Changes {
    /// In the new config only.
    pub added: Vec<String>,
    /// In the old config only.
    pub removed: Vec<String>,
    /// In both, defined differently.
    pub changed: Vec<String>,
}

impl Changes {
    fn of<'a>(
        old: impl IntoIterator<Item = (&'a str, Definition)>,
        new: impl IntoIterator<Item = (&'a str, Definition)>,
    ) -> Self {
        let old: BTreeMap<&str, Definition> = old.into_iter().collect();
        let new: BTreeMap<&str, Definition> = new.into_iter().collect();
        let mut c = Changes::default();
        for (name, d) in &new {
            match old.get(name) {
                None => c.added.push((*name).to_owned()),
                Some(o) if o != d => c.changed.push((*name).to_owned()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|n| !new.contains_key(*n))
            .map(|n| (*n).to_owned())
            .collect();
        c
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What a reload from `from` to `to` does.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
    /// The running config's version.
    pub from: String,
    /// The new config's version.
    pub to: String,
    /// `routes` by name.
    pub routes: Changes,
    /// `upstreams` by name.
    pub upstreams: Changes,
    /// `auth.providers` by name (a changed secret or key file counts).
    pub auth_providers: Changes,
    /// `rate_limits` by name.
    pub rate_limits: Changes,
    /// `server.tls.certificates` by `cert` file (a changed file counts).
    pub certificates: Changes,
    /// State carried over as it is: `upstreams.NAME` (connection pools,
    /// circuit breakers, health), `auth.providers.NAME` (fetched keys and
    /// verified tokens; `.keys` alone when a changed provider keeps its
    /// remote keys),
    /// `rate_limits.NAME` (buckets), `redis` (connections), `cache`
    /// (entries), `observability.tracing` (queue and exporter).
    pub kept_warm: Vec<String>,
    /// State in both configs that starts afresh (same vocabulary).
    pub restarted: Vec<String>,
    /// Other settings that changed (paths in the file).
    pub settings_changed: Vec<String>,
    /// Settings read at start only that differ from what the process
    /// runs with: a restart applies them.
    pub restart_required: Vec<&'static str>,
}

impl Plan {
    /// The plan of a reload from `old` to `new`, for a process started
    /// with `started`.
    pub fn of(old: &Snapshot, new: &Snapshot, started: &StartOnly) -> Self {
        let mut p = Plan {
            from: old.version.clone(),
            to: new.version.clone(),
            routes: Changes::of(
                old.routes.iter().map(|r| (r.name.as_str(), r.definition)),
                new.routes.iter().map(|r| (r.name.as_str(), r.definition)),
            ),
            upstreams: Changes::of(
                old.upstreams
                    .iter()
                    .map(|(n, u)| (n.as_str(), u.definition)),
                new.upstreams
                    .iter()
                    .map(|(n, u)| (n.as_str(), u.definition)),
            ),
            auth_providers: Changes::of(
                old.auth.iter().map(|(n, a)| (n.as_str(), a.definition())),
                new.auth.iter().map(|(n, a)| (n.as_str(), a.definition())),
            ),
            rate_limits: Changes::of(
                old.rate_limits
                    .iter()
                    .map(|(n, r)| (n.as_str(), r.definition)),
                new.rate_limits
                    .iter()
                    .map(|(n, r)| (n.as_str(), r.definition)),
            ),
            certificates: Changes::of(
                old.certificates.iter().map(|(n, d)| (n.as_str(), *d)),
                new.certificates.iter().map(|(n, d)| (n.as_str(), *d)),
            ),
            restart_required: restart_only_changes(started, &new.start_only),
            ..Plan::default()
        };
        let mut state = |name: String, kept: Option<bool>| match kept {
            Some(true) => p.kept_warm.push(name),
            Some(false) => p.restarted.push(name),
            None => {}
        };
        for (n, u) in &new.upstreams {
            let kept = old.upstreams.get(n).map(|o| Arc::ptr_eq(o, u));
            state(format!("upstreams.{n}"), kept);
        }
        // A provider is kept whole (keys and verified tokens) when
        // unchanged; a changed one may still keep its fetched keys.
        for (n, a) in &new.auth {
            match old.auth.get(n) {
                Some(o) if o.same(a) => state(format!("auth.providers.{n}"), Some(true)),
                Some(o)
                    if o.jwt()
                        .zip(a.jwt())
                        .is_some_and(|(o, a)| Arc::ptr_eq(&o.keys, &a.keys)) =>
                {
                    state(format!("auth.providers.{n}.keys"), Some(true));
                    state(format!("auth.providers.{n}.token_cache"), Some(false));
                }
                Some(_) => state(format!("auth.providers.{n}"), Some(false)),
                None => {}
            }
        }
        for (n, r) in &new.rate_limits {
            let kept = old.rate_limits.get(n).map(|o| Arc::ptr_eq(o, r));
            state(format!("rate_limits.{n}"), kept);
        }
        state("redis".to_owned(), same(&old.redis, &new.redis));
        state("cache".to_owned(), same(&old.cache, &new.cache));
        state(
            "observability.tracing".to_owned(),
            same(&old.tracer, &new.tracer),
        );
        p.settings_changed = settings_changed(&old.config, &new.config);
        if old.admin_token != new.admin_token {
            p.settings_changed.push("server.admin.token".to_owned());
        }
        p
    }

    /// True when the reload changes nothing (the file may still differ in
    /// comments or layout).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.upstreams.is_empty()
            && self.auth_providers.is_empty()
            && self.rate_limits.is_empty()
            && self.certificates.is_empty()
            && self.restarted.is_empty()
            && self.settings_changed.is_empty()
            && self.restart_required.is_empty()
    }

    /// The plan as lines of text, as the reload log words it.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("from version {} to {}", self.from, self.to)];
        if self.is_empty() {
            out.push("no change".to_owned());
            return out;
        }
        for (kind, c) in [
            ("routes", &self.routes),
            ("upstreams", &self.upstreams),
            ("auth providers", &self.auth_providers),
            ("rate-limit policies", &self.rate_limits),
            ("certificates", &self.certificates),
        ] {
            for (what, names) in [
                ("added", &c.added),
                ("removed", &c.removed),
                ("changed", &c.changed),
            ] {
                if !names.is_empty() {
                    out.push(format!("{kind} {what}: {}", names.join(", ")));
                }
            }
        }
        if !self.kept_warm.is_empty() {
            out.push(format!("kept warm: {}", self.kept_warm.join(", ")));
        }
        if !self.restarted.is_empty() {
            out.push(format!(
                "starts afresh (state dropped): {}",
                self.restarted.join(", ")
            ));
        }
        if !self.settings_changed.is_empty() {
            out.push(format!(
                "settings changed: {}",
                self.settings_changed.join(", ")
            ));
        }
        if !self.restart_required.is_empty() {
            out.push(format!(
                "read at start only, a restart applies them: {}",
                self.restart_required.join(", ")
            ));
        }
        out
    }
}

/// Whether a stateful part in both snapshots is the same object (kept
/// warm); `None` when one of them has none.
fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> Option<bool> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Arc::ptr_eq(a, b)),
        _ => None,
    }
}

/// The settings read at start only whose value in `new` differs from the
/// one the process runs with (`started`).
pub(crate) fn restart_only_changes(started: &StartOnly, new: &StartOnly) -> Vec<&'static str> {
    let (a, b) = (started, new);
    [
        ("server.listen", a.listen != b.listen),
        ("server.tls_listen", a.tls_listen != b.tls_listen),
        ("server.admin.listen", a.admin_listen != b.admin_listen),
        (
            "server.admin.max_connections",
            a.admin_max_connections != b.admin_max_connections,
        ),
        (
            "server.admin.header_read_timeout",
            a.admin_header_read_timeout != b.admin_header_read_timeout,
        ),
        ("server.workers", a.workers != b.workers),
        (
            "server.limits.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "server.shutdown_grace",
            a.shutdown_grace != b.shutdown_grace,
        ),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect()
}

/// Paths (two levels deep: `server.access_log`, `cache.max_size`) whose
/// values differ between the two files, outside the named definitions
/// (routes, upstreams, providers, policies) that `Changes` covers and
/// the start-only settings.
fn settings_changed(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    const NAMED: [&str; 3] = ["routes", "upstreams", "rate_limits"];
    const START_ONLY: [&str; 5] = [
        "server.listen",
        "server.tls_listen",
        "server.admin",
        "server.workers",
        "server.shutdown_grace",
    ];
    let empty = serde_json::Map::new();
    let (a, b) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut out = Vec::new();
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if NAMED.contains(&k.as_str()) {
            continue;
        }
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        match (x.and_then(Value::as_object), y.and_then(Value::as_object)) {
            (Some(xo), Some(yo)) => {
                let mut inner: Vec<&String> = xo.keys().chain(yo.keys()).collect();
                inner.sort();
                inner.dedup();
                for i in inner {
                    let path = format!("{k}.{i}");
                    // `auth.providers` is covered by `Changes`, the
                    // server's start-only settings by `restart_required`.
                    if path == "auth.providers"
                        || START_ONLY.iter().any(|s| path == *s)
                        || path == "server.limits" && limits_only_start(xo.get(i), yo.get(i))
                    {
                        continue;
                    }
                    if xo.get(i) != yo.get(i) {
                        out.push(path);
                    }
                }
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

/// True when two `server.limits` differ only in `max_connections` (read
/// at start only).
fn limits_only_start(a: Option<&serde_json::Value>, b: Option<&serde_json::Value>) -> bool {
    let strip = |v: Option<&serde_json::Value>| {
        let mut v = v.cloned().unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("max_connections");
        }
        v
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(yaml: &str, previous: Option<&Snapshot>) -> Snapshot {
        let text = format!(
            "{yaml}routes:\n  - {{ name: a, match: {{ path: /a }}, respond: {{ body: a }} }}\n"
        );
        let (spec, version) = crate::config::parse("t.yaml", &text).unwrap();
        crate::config::compile::compile(spec, version, previous, std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn a_new_provider_secret_is_a_change_although_both_show_redacted() {
        let p = |secret: &str| {
            format!(
                "auth:\n  providers:\n    main: {{ algorithms: [HS256], secret: \"{secret}\" }}\n"
            )
        };
        let one = compile(&p("a-secret-of-at-least-thirty-two-bytes!!"), None);
        let same = compile(&p("a-secret-of-at-least-thirty-two-bytes!!"), Some(&one));
        let plan = Plan::of(&one, &same, &one.start_only);
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.kept_warm, ["auth.providers.main"]);
        let two = compile(&p("another-secret-of-at-least-32-bytes!!!"), Some(&one));
        let plan = Plan::of(&one, &two, &one.start_only);
        assert_eq!(plan.auth_providers.changed, ["main"]);
        assert_eq!(plan.restarted, ["auth.providers.main"]);
    }

    #[test]
    fn changes_name_what_was_added_removed_and_changed() {
        let d = |s: &str| Definition::of(s);
        let c = Changes::of(
            [("a", d("1")), ("b", d("2")), ("c", d("3"))],
            [("b", d("2")), ("c", d("4")), ("e", d("5"))],
        );
        assert_eq!(c.added, ["e"]);
        assert_eq!(c.removed, ["a"]);
        assert_eq!(c.changed, ["c"]);
    }

    #[test]
    fn settings_are_compared_two_levels_deep_without_named_or_start_only_parts() {
        let old = json!({
            "server": { "listen": ["a"], "access_log": { "query": false }, "limits": { "max_connections": 1, "max_header_bytes": 2 } },
            "routes": [1], "cache": { "max_size": 1 }
        });
        let new = json!({
            "server": { "listen": ["b"], "access_log": { "query": true }, "limits": { "max_connections": 9, "max_header_bytes": 2 } },
            "routes": [2], "cache": { "max_size": 2 }, "redis": { "url": "x" }
        });
        assert_eq!(
            settings_changed(&old, &new),
            ["cache.max_size", "redis", "server.access_log"]
        );
    }
}
