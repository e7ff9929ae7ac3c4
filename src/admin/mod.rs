//! The admin listener (default `127.0.0.1:9901`): liveness, readiness,
//! metrics, the effective config, reload, and route explanations.
//!
//! With `server.admin.token` set, every endpoint but `/healthz`, `/readyz`
//! and `/metrics` needs `Authorization: Bearer <token>` (401 otherwise).
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 serving; 503 while draining, or until every remote JWKS is fetched (at most `jwks_ready_timeout`) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /config` | effective config as JSON with its version |
//! | `POST /reload` | 200 `{version}` or 422 `{errors}` |
//! | `GET /routes/explain?method=&host=&path=` | which route and why |
//! | `POST /cache/purge` | `{"route": R, "prefix": P}` or `{"all": true}`: drops cached entries; `{"purged": N}` |
//! | `GET /cache/stats` | entries and bytes in the response cache |
//! | `GET /upstreams` | every upstream and endpoint: health, breaker, in-flight, EWMA latency and error rate |

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::reload::{ReloadOutcome, Reloader};
use crate::observability::metrics::metrics;
use crate::routing::matchers::decode;
use crate::snapshot::SharedSnapshot;

/// What the admin endpoints read and drive.
pub(crate) struct AdminState {
    /// The live snapshot.
    pub live: SharedSnapshot,
    /// The config reloader.
    pub reloader: Arc<Reloader>,
    /// Set when shutdown began.
    pub draining: Arc<AtomicBool>,
}

/// The admin listener's own limits (read at start).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most concurrent admin connections.
    pub max_connections: usize,
    /// Time for each request head, and between requests.
    pub header_read_timeout: Duration,
}

/// Serves the admin API until `shutdown` turns true. At most
/// `limits.max_connections` connections are served at once; more wait in
/// the accept queue, so a flood of admin connections holds nothing the
/// proxy needs.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => match s { Ok(s) => s, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue } },
            _ = shutdown.changed() => return,
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(64 << 10)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Endpoints anyone who reaches the listener may use: probes and scrapes.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// `?dry_run=true` (or `1`) on `POST /reload`.
fn dry_run(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "dry_run=true" | "dry_run=1" | "dry_run"))
    })
}

/// True when the request carries the admin token (compared in constant
/// time), or no token is configured. The token comes as a bearer token,
/// or as the password of HTTP Basic credentials (any user name): what a
/// browser sends for the `/ui` page and the page's own requests.
fn authorized(req: &Request<Incoming>, token: Option<&[u8]>) -> bool {
    use base64::Engine;
    let Some(token) = token else {
        return true;
    };
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    let v = v.as_bytes();
    let decoded;
    let sent = match v.get(..6) {
        Some(s) if s.eq_ignore_ascii_case(b"bearer") && v.get(6) == Some(&b' ') => &v[7..],
        Some(s) if s.eq_ignore_ascii_case(b"basic ") => {
            let Ok(d) = base64::engine::general_purpose::STANDARD.decode(v[6..].trim_ascii())
            else {
                return false;
            };
            decoded = d;
            match decoded.iter().position(|b| *b == b':') {
                Some(i) => &decoded[i + 1..],
                None => return false,
            }
        }
        _ => return false,
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(sent, token).is_ok()
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// The admin dashboard: one self-contained page (no CDN, no build step)
/// that reads the admin API's JSON endpoints and `/metrics` every few
/// seconds.
fn ui() -> Response<Full<Bytes>> {
    static PAGE: &str = include_str!("ui.html");
    let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    let h = r.headers_mut();
    // Its own inline script and style, requests to this origin only.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_reply(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

async fn handle(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !is_open(path) && !authorized(&req, state.live.load().admin_token.as_deref()) {
        let mut r = json_reply(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "unauthorized", "message": "this admin endpoint needs `Authorization: Bearer <server.admin.token>`" }),
        );
        // The page asks a browser for the token as a Basic password; the
        // API names the bearer scheme.
        let challenge = if path == "/ui" {
            "Basic realm=\"tollgate-admin\", charset=\"UTF-8\""
        } else {
            "Bearer realm=\"tollgate-admin\""
        };
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(challenge),
        );
        return r;
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.draining.load(Ordering::Relaxed) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else if !state.live.load().auth_ready() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for JWKS keys\n",
                )
            } else {
                reply(StatusCode::OK, "text/plain", "ready\n")
            }
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics().render(),
        ),
        (&Method::GET, "/config") => {
            let snap = state.live.load_full();
            json_reply(
                StatusCode::OK,
                &json!({ "version": snap.version, "config": snap.config }),
            )
        }
        (&Method::GET, "/ui") => ui(),
        (&Method::GET, "/reloads") => json_reply(
            StatusCode::OK,
            &serde_json::to_value(state.reloader.history()).unwrap_or_default(),
        ),
        (&Method::POST, "/reload") if dry_run(req.uri().query()) => {
            match state.reloader.dry_run_async().await {
                Ok(plan) => json_reply(
                    StatusCode::OK,
                    &json!({ "dry_run": true, "changed": !plan.is_empty(), "plan": plan }),
                ),
                Err(e) => json_reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({ "dry_run": true, "errors": e.lines() }),
                ),
            }
        }
        (&Method::POST, "/reload") => match state.reloader.reload_async("admin").await {
            Ok(ReloadOutcome::Applied { version }) => json_reply(
                StatusCode::OK,
                &json!({ "version": version, "changed": true }),
            ),
            Ok(ReloadOutcome::Unchanged { version }) => json_reply(
                StatusCode::OK,
                &json!({ "version": version, "changed": false }),
            ),
            Err(e) => json_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "errors": e.lines() }),
            ),
        },
        (&Method::POST, "/cache/purge") => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Purge {
                route: Option<String>,
                prefix: Option<String>,
                #[serde(default)]
                all: bool,
            }
            let snap = state.live.load_full();
            let Some(store) = snap.cache.clone() else {
                return json_reply(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": "no cache is configured" }),
                );
            };
            let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
                req.into_body(),
                64 << 10,
            ))
            .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return json_reply(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": "body too large or unreadable" }),
                    );
                }
            };
            let purge: Purge = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return json_reply(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": format!("expected {{\"route\": ..., \"prefix\": ...}} or {{\"all\": true}}: {e}") }),
                    );
                }
            };
            let purged = match (purge.all, &purge.route) {
                (true, None) => store.purge(None),
                (false, Some(route)) => {
                    store.purge(Some((route, purge.prefix.as_deref().unwrap_or(""))))
                }
                _ => {
                    return json_reply(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": "give either route (with an optional prefix) or all: true" }),
                    );
                }
            };
            // Replicas sharing the Redis purge too, and say what they removed.
            let Some(redis) = snap.redis.clone() else {
                return json_reply(StatusCode::OK, &json!({ "purged": purged }));
            };
            let what = crate::cache::fleet::What::Purge {
                route: purge.route,
                prefix: purge.prefix,
            };
            let spread = crate::cache::fleet::purge(&redis, what).await;
            json_reply(
                StatusCode::OK,
                &json!({
                    "purged": purged,
                    "replica": crate::cache::fleet::replica(),
                    "fleet": spread,
                }),
            )
        }
        (&Method::GET, "/cache/stats") => {
            let snap = state.live.load_full();
            match &snap.cache {
                None => json_reply(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": "no cache is configured" }),
                ),
                Some(store) => {
                    let (entries, bytes) = store.stats();
                    let mut body = json!({ "entries": entries, "bytes": bytes, "max_bytes": store.settings.0, "max_object_bytes": store.settings.1 });
                    if let (Some(b), serde_json::Value::Object(side)) =
                        (body.as_object_mut(), store.side_stats())
                    {
                        b.extend(side);
                    }
                    json_reply(StatusCode::OK, &body)
                }
            }
        }
        (&Method::GET, "/upstreams") => {
            let snap = state.live.load_full();
            json_reply(
                StatusCode::OK,
                &json!({ "upstreams": snap.upstreams.values().map(|u| u.status()).collect::<Vec<_>>() }),
            )
        }
        (&Method::GET, "/routes/explain") => {
            let q = req.uri().query().unwrap_or("");
            let get = |name: &str| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| decode(v).into_owned())
            };
            let (Some(path), method, host) = (
                get("path"),
                get("method").unwrap_or_else(|| "GET".into()),
                get("host").unwrap_or_default(),
            ) else {
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "give path= (and optionally method=, host=)" }),
                );
            };
            let snap = state.live.load_full();
            json_reply(StatusCode::OK, &snap.explain(&method, &host, &path))
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload" | "/routes/explain"
            | "/upstreams" | "/cache/purge" | "/cache/stats" | "/ui" | "/reloads",
        ) => json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": "method not allowed" }),
        ),
        _ => json_reply(StatusCode::NOT_FOUND, &json!({ "error": "not found" })),
    }
}
