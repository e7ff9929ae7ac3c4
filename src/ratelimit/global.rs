//! Limits shared by every replica: the same GCRA, computed atomically in
//! Redis by one Lua script (loaded once, called with EVALSHA) in one round
//! trip, over the `redis` crate's connection managers on tokio.
//!
//! Keys are `tollgate:rl:{policy}:{key}`, holding the bucket's theoretical
//! arrival time in microseconds of Redis's own clock (so replicas with
//! skewed clocks agree) and expiring when the bucket would be full again.
//! A call never waits longer than `redis.timeout`; when Redis is slow or
//! down, `on_error` decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

use crate::observability::metrics::metrics;
use crate::observability::redact;

/// GCRA in one step. ARGV: emission interval (µs), bucket capacity (µs).
/// Returns {allowed, remaining, retry_after_us, used_us}.
const SCRIPT: &str = r"
local t = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now_us)
if tat < now_us then tat = now_us end
local used = tat + t - now_us
if used > cap then
  return {0, 0, used - cap, tat - now_us}
end
redis.call('SET', KEYS[1], tat + t, 'PX', math.ceil(used / 1000))
return {1, math.floor((cap - used) / t), 0, used}
";

/// What to do when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Decide with this process's own limiter of the policy.
    Local,
    /// Let the request through.
    Allow,
    /// Refuse it (503).
    Deny,
}

/// Compiled `redis:` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Connections (multiplexed) used round robin.
    pub pool_size: usize,
    /// Longest wait for one call.
    pub timeout: Duration,
    /// When a call fails or times out.
    pub on_error: OnError,
}

/// The Redis side of global limits.
pub struct Redis {
    /// RedisSettings (compared on reload).
    pub settings: RedisSettings,
    client: redis::Client,
    conns: ArcSwapOption<Vec<ConnectionManager>>,
    next: AtomicUsize,
    script: redis::Script,
    started: std::sync::atomic::AtomicBool,
    last_log: AtomicU64,
    epoch: Instant,
}

/// A bucket as Redis reported it.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Let through.
    pub allowed: bool,
    /// Requests left.
    pub remaining: u32,
    /// Until the next request would pass (limited only).
    pub retry_after: Duration,
    /// Bucket time in use (until it is full again).
    pub used: Duration,
}

impl Redis {
    /// A client for `settings` (no connection yet; see `start`).
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("`{}`: {e}", redact::url(&settings.url)))?;
        Ok(Self {
            settings,
            client,
            conns: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            script: redis::Script::new(SCRIPT),
            started: std::sync::atomic::AtomicBool::new(false),
            last_log: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Connects in the background (once), retrying until Redis answers.
    /// The connection managers reconnect by themselves afterwards.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(me) = weak.upgrade() else {
                    return;
                };
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(
                        me.settings.timeout.max(Duration::from_millis(200)),
                    ))
                    .set_response_timeout(Some(me.settings.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                let mut conns = Vec::new();
                for _ in 0..me.settings.pool_size {
                    match me
                        .client
                        .get_connection_manager_with_config(cfg.clone())
                        .await
                    {
                        Ok(c) => conns.push(c),
                        Err(e) => {
                            me.log_error(&e.to_string());
                            break;
                        }
                    }
                }
                if conns.len() == me.settings.pool_size {
                    me.conns.store(Some(Arc::new(conns)));
                    tracing::info!(url = %redact::url(&me.settings.url), "connected to Redis for global rate limits");
                    return;
                }
                drop(me);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// True once the connections to Redis are made.
    pub fn is_connected(&self) -> bool {
        self.conns.load().is_some()
    }

    /// Takes one request from `key`'s bucket of `policy`, or `None` when
    /// Redis did not answer in time (counted and logged).
    pub async fn take(
        &self,
        policy: &str,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Option<Bucket> {
        let m = metrics();
        let Some(conns) = self.conns.load_full() else {
            m.ratelimit_redis_errors.inc();
            self.log_error("not connected");
            return None;
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len().max(1);
        let mut conn = conns.get(i)?.clone();
        let t = interval.as_micros().max(1) as u64;
        let cap = t.saturating_mul(u64::from(burst));
        let start = Instant::now();
        let mut invocation = self.script.key(format!("tollgate:rl:{policy}:{key}"));
        invocation.arg(t).arg(cap);
        let result = tokio::time::timeout(
            self.settings.timeout,
            invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn),
        )
        .await;
        m.ratelimit_redis_duration
            .observe(start.elapsed().as_secs_f64());
        match result {
            Ok(Ok((allowed, remaining, retry_us, used_us))) => Some(Bucket {
                allowed: allowed == 1,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                retry_after: Duration::from_micros(retry_us.max(0) as u64),
                used: Duration::from_micros(used_us.max(0) as u64),
            }),
            Ok(Err(e)) => {
                m.ratelimit_redis_errors.inc();
                self.log_error(&e.to_string());
                None
            }
            Err(_) => {
                m.ratelimit_redis_errors.inc();
                self.log_error("timed out");
                None
            }
        }
    }

    /// Publishes `payload` on `channel` within the call timeout; the number
    /// of subscribers that received it.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<usize, String> {
        let Some(conns) = self.conns.load_full() else {
            return Err("not connected to Redis".to_owned());
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len().max(1);
        let Some(mut conn) = conns.get(i).cloned() else {
            return Err("not connected to Redis".to_owned());
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        match tokio::time::timeout(self.settings.timeout, cmd.query_async::<i64>(&mut conn)).await {
            Ok(Ok(n)) => Ok(usize::try_from(n).unwrap_or(0)),
            Ok(Err(e)) => Err(redact::url(&e.to_string())),
            Err(_) => Err("Redis did not answer in time".to_owned()),
        }
    }

    /// A connection of its own for subscriptions, made within the call
    /// timeout (at least 200 ms).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        let wait = self.settings.timeout.max(Duration::from_millis(200));
        match tokio::time::timeout(wait, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(redact::url(&e.to_string())),
            Err(_) => Err("Redis did not answer in time".to_owned()),
        }
    }

    /// Logs a Redis problem, at most once a second.
    fn log_error(&self, error: &str) {
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.last_log.load(Ordering::Relaxed);
        if now > last
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(url = %redact::url(&self.settings.url), error = %redact::url(error), on_error = ?self.settings.on_error, "Redis for global rate limits failed (logged at most once a second)");
        }
    }
}
