//! A fleet that purges together: replicas that share a Redis (the `redis:`
//! of global rate limits) and have a `cache:` exchange cache events over
//! Redis pub/sub, so `POST /cache/purge` on one replica empties the same
//! entries on all of them, and (with `cache.broadcast_invalidation`) an
//! unsafe request's invalidation reaches every replica too.
//!
//! Delivery: each replica subscribes to one channel. The replica that
//! purges publishes the event and waits (at most `REPLY_WAIT`) for a reply
//! from every other subscriber Redis counted; while replies are missing it
//! publishes again (the same event: replicas drop repeats, and purging
//! twice removes nothing more), so a lost message is sent again:
//! at-least-once to the replicas subscribed at that moment. A replica cut
//! off from Redis misses what is published while it is away; the purge's
//! answer says how many replicas received and answered it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::observability::metrics::metrics;
use crate::ratelimit::global::Redis;
use crate::snapshot::SharedSnapshot;

/// The channel every replica subscribes to.
const CHANNEL: &str = "tollgate:cache:events";
/// Longest a purge waits for the other replicas' replies.
const REPLY_WAIT: Duration = Duration::from_secs(2);
/// Publications of one purge at most (the first and the repeats).
const SENDS: u32 = 3;
/// Event ids remembered to drop repeats.
const SEEN: usize = 1024;

/// One cache event.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    /// Unique per event (repeats share it).
    id: String,
    /// The replica that published it.
    from: String,
    #[serde(flatten)]
    what: What,
}

/// What to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// `POST /cache/purge`: a route (and a path prefix), or everything.
    Purge {
        /// The route, or `None` with `all`.
        route: Option<String>,
        /// The path prefix within the route.
        prefix: Option<String>,
    },
    /// An unsafe request succeeded on this URL.
    Invalidate {
        /// Route name.
        route: String,
        /// Host as keyed.
        host: String,
        /// Path and query as keyed.
        target: String,
    },
}

/// What one replica removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// The replica.
    pub replica: String,
    /// Entries it removed.
    pub purged: usize,
}

/// What a purge did on the other replicas.
#[derive(Debug, Default, Serialize)]
pub struct Spread {
    /// Replicas subscribed when it was published (this one left out).
    pub receivers: usize,
    /// Their replies, one per replica.
    pub replicas: Vec<Reply>,
    /// Set when the purge could not be published (Redis unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// This process in the fleet.
struct Me {
    /// Host name and process id.
    name: String,
    /// The subscription is up.
    subscribed: AtomicBool,
    /// Recent event ids.
    seen: Mutex<VecDeque<String>>,
}

fn me() -> &'static Me {
    static ME: OnceLock<Me> = OnceLock::new();
    ME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tollgate".to_owned());
        Me {
            name: format!("{host}:{}", std::process::id()),
            subscribed: AtomicBool::new(false),
            seen: Mutex::new(VecDeque::with_capacity(SEEN)),
        }
    })
}

/// This replica's name in replies (`host:pid`).
pub fn replica() -> &'static str {
    &me().name
}

/// True while this replica's subscription is up.
pub fn subscribed() -> bool {
    me().subscribed.load(Ordering::Acquire)
}

fn new_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// True the first time `id` is seen.
fn first_time(id: &str) -> bool {
    let Ok(mut seen) = me().seen.lock() else {
        return true;
    };
    if seen.iter().any(|s| s == id) {
        return false;
    }
    if seen.len() == SEEN {
        seen.pop_front();
    }
    seen.push_back(id.to_owned());
    true
}

fn count(event: &'static str, direction: &'static str) {
    metrics()
        .cache_fleet_events
        .with_label_values(&[event, direction])
        .inc();
}

/// Publishes `what` to the other replicas and gathers their replies
/// (`POST /cache/purge`).
pub async fn purge(redis: &Redis, what: What) -> Spread {
    let event = Event {
        id: new_id(),
        from: replica().to_owned(),
        what,
    };
    let Ok(payload) = serde_json::to_string(&event) else {
        return Spread::default();
    };
    // Listen for replies before publishing, so none is missed.
    let replies_channel = format!("tollgate:cache:replies:{}", event.id);
    let mut sub = match redis.pubsub().await {
        Ok(mut s) => match s.subscribe(&replies_channel).await {
            Ok(()) => s,
            Err(e) => return failed(e.to_string()),
        },
        Err(e) => return failed(e),
    };
    let mut spread = Spread::default();
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    let mut replies = sub.on_message();
    for send in 0..SENDS {
        let receivers = match redis.publish(CHANNEL, &payload).await {
            Ok(n) => n,
            Err(e) => {
                spread.error = Some(e);
                break;
            }
        };
        count("purge", "sent");
        // Our own subscription counts among the receivers.
        spread.receivers = receivers.saturating_sub(usize::from(subscribed()));
        let round = (deadline - tokio::time::Instant::now()) / (SENDS - send);
        let until = tokio::time::Instant::now() + round;
        while spread.replicas.len() < spread.receivers {
            let Ok(Some(msg)) = tokio::time::timeout_at(until, replies.next()).await else {
                break;
            };
            let Ok(text) = msg.get_payload::<String>() else {
                continue;
            };
            if let Ok(r) = serde_json::from_str::<Reply>(&text) {
                match spread.replicas.iter_mut().find(|x| x.replica == r.replica) {
                    Some(x) => x.purged = x.purged.max(r.purged),
                    None => spread.replicas.push(r),
                }
            }
        }
        if spread.replicas.len() >= spread.receivers {
            break;
        }
    }
    spread.replicas.sort_by(|a, b| a.replica.cmp(&b.replica));
    spread
}

fn failed(e: String) -> Spread {
    Spread {
        error: Some(e),
        ..Spread::default()
    }
}

/// Publishes an unsafe request's invalidation to the other replicas, in
/// the background (no reply is awaited).
pub fn invalidate(redis: &Arc<Redis>, route: &str, host: &str, target: &str) {
    let event = Event {
        id: new_id(),
        from: replica().to_owned(),
        what: What::Invalidate {
            route: route.to_owned(),
            host: host.to_owned(),
            target: target.to_owned(),
        },
    };
    let Ok(payload) = serde_json::to_string(&event) else {
        return;
    };
    let redis = Arc::clone(redis);
    tokio::spawn(async move {
        if redis.publish(CHANNEL, &payload).await.is_ok() {
            count("invalidate", "sent");
        }
    });
}

/// The subscription: applies the other replicas' events to this
/// replica's cache, replying to purges. Follows reloads: it subscribes
/// while the live config has both `redis:` and `cache:`, and again when
/// `redis:` changes; reconnects with a backoff. Ends at shutdown.
pub async fn run(live: SharedSnapshot, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Only the Redis handle is kept: holding the snapshot across a wait
        // would keep a replaced config (its upstreams' health checks, its
        // pools) alive.
        let redis = {
            let snap = live.load();
            match (&snap.redis, &snap.cache) {
                (Some(r), Some(_)) => Some(Arc::clone(r)),
                _ => None,
            }
        };
        let Some(redis) = redis else {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.changed() => return,
            }
        };
        let connected = match redis.pubsub().await {
            Ok(mut s) => s
                .subscribe(CHANNEL)
                .await
                .map(|()| s)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let sub = match connected {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cache fleet: cannot subscribe to Redis; purges on other replicas do not reach this one until it can");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        me().subscribed.store(true, Ordering::Release);
        metrics().cache_fleet_subscribed.set(1);
        tracing::info!(
            replica = replica(),
            "cache fleet: subscribed to cache events"
        );
        let mut events = sub.into_on_message();
        loop {
            tokio::select! {
                msg = events.next() => match msg {
                    Some(m) => {
                        if let Ok(text) = m.get_payload::<String>() {
                            apply(&live, &redis, &text).await;
                        }
                    }
                    None => {
                        tracing::warn!("cache fleet: the Redis subscription closed; subscribing again");
                        break;
                    }
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    let now = live.load();
                    let same = now.redis.as_ref().is_some_and(|r| Arc::ptr_eq(r, &redis));
                    if !same || now.cache.is_none() {
                        break;
                    }
                }
                _ = stop.changed() => {
                    me().subscribed.store(false, Ordering::Release);
                    metrics().cache_fleet_subscribed.set(0);
                    return;
                }
            }
        }
        me().subscribed.store(false, Ordering::Release);
        metrics().cache_fleet_subscribed.set(0);
    }
}

/// Applies one event from another replica; a purge is answered with what
/// it removed here.
async fn apply(live: &SharedSnapshot, redis: &Redis, text: &str) {
    let Ok(event) = serde_json::from_str::<Event>(text) else {
        return;
    };
    if event.from == replica() {
        return;
    }
    let first = first_time(&event.id);
    let Some(store) = live.load().cache.clone() else {
        return;
    };
    match event.what {
        What::Purge { route, prefix } => {
            // A repeat removes nothing more; it is answered again in
            // case the first answer was lost.
            let purged = if first {
                count("purge", "received");
                match &route {
                    Some(r) => store.purge(Some((r, prefix.as_deref().unwrap_or("")))),
                    None => store.purge(None),
                }
            } else {
                0
            };
            let reply = Reply {
                replica: replica().to_owned(),
                purged,
            };
            if let Ok(body) = serde_json::to_string(&reply) {
                let _ = redis
                    .publish(&format!("tollgate:cache:replies:{}", event.id), &body)
                    .await;
            }
        }
        What::Invalidate {
            route,
            host,
            target,
        } => {
            if first {
                count("invalidate", "received");
                store.invalidate_url(&route, &host, &target);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_and_repeats_are_recognized() {
        let e = Event {
            id: "1".into(),
            from: "a:1".into(),
            what: What::Purge {
                route: Some("catalog".into()),
                prefix: None,
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"id":"1","from":"a:1","kind":"purge","route":"catalog","prefix":null}"#
        );
        let back: Event = serde_json::from_str(&text).unwrap();
        assert!(matches!(back.what, What::Purge { route: Some(r), .. } if r == "catalog"));
        let id = new_id();
        assert!(first_time(&id));
        assert!(!first_time(&id));
    }
}
