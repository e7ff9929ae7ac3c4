//! The access log: one JSON line per request on stdout.
//!
//! Cheap enough to be on by default. A request formats its line into a
//! reused per-thread buffer, then appends it to the shared batch under a
//! lock held only for the copy; it wakes no thread. A writer thread takes
//! the whole batch every `FLUSH_EVERY` (sooner once it passes
//! `WAKE_BYTES`) and writes it with one `write` call, outside the lock, so
//! a stalled stdout never holds up a request. When the batch waiting
//! reaches `QUEUE_BYTES`, new lines are dropped and counted
//! (`tollgate_access_log_dropped_total`) rather than slowing traffic or
//! growing memory: the bound is in bytes, so long lines cannot make it
//! large. `flush` writes out what is queued at shutdown.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use super::metrics::metrics;

/// Bytes of lines waiting for the writer before new ones are dropped.
pub const QUEUE_BYTES: usize = 16 << 20;

/// How often the writer takes the batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A batch this large wakes the writer before its interval is up.
const WAKE_BYTES: usize = 256 << 10;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct LogLine<'a> {
    /// RFC 3339 UTC time the request arrived.
    #[serde(serialize_with = "rfc3339_field")]
    pub time: SystemTime,
    /// Request id (sent upstream and returned).
    pub request_id: &'a str,
    /// W3C trace id.
    pub trace_id: &'a str,
    /// Client address.
    #[serde(serialize_with = "display_field")]
    pub client: IpAddr,
    /// Method.
    pub method: &'a str,
    /// Host (as sent).
    pub host: &'a str,
    /// Path (as sent, without query).
    pub path: &'a str,
    /// Query string, only with `access_log.query: true` (token parameters
    /// redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// TLS version (`1.2`, `1.3`) on TLS connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<&'static str>,
    /// The SNI name the client sent, on TLS connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    /// `User-Agent`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
    /// The status the upstream answered with, when it answered.
    pub upstream_status: Option<u16>,
    /// Tries made upstream (0: not forwarded).
    pub attempts: u32,
    /// A gRPC call's status, the upstream's or the gateway's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    /// Response status.
    pub status: u16,
    /// Request body bytes read (as streamed, also for chunked bodies).
    pub bytes_in: u64,
    /// Response body bytes written.
    pub bytes_out: u64,
    /// Total duration in seconds.
    pub duration: f64,
    /// Time to the upstream response head, when proxied.
    pub upstream_duration: Option<f64>,
    /// Route name.
    pub route: &'a str,
    /// Upstream name.
    pub upstream: &'a str,
    /// Endpoint `host:port`.
    pub endpoint: &'a str,
    /// Why the gateway answered itself (`no_route`, `upstream_timeout`, …).
    pub reason: &'a str,
    /// Tenant of the verified token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    /// `sub` of the verified token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<&'a str>,
}

/// The batch of lines waiting for the writer, and the writer's wake-up.
struct Batch {
    lines: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Set by `flush`: the writer writes out and counts a round.
    flush_asked: AtomicBool,
    /// Rounds the writer finished (each writes all that was queued before).
    rounds: AtomicU64,
    done: Condvar,
    done_lock: Mutex<()>,
}

/// The batch, and its writer thread, made with the first line.
static BATCH: OnceLock<&'static Batch> = OnceLock::new();

fn batch() -> &'static Batch {
    BATCH.get_or_init(|| {
        let b: &'static Batch = Box::leak(Box::new(Batch {
            lines: Mutex::new(Vec::with_capacity(WAKE_BYTES)),
            wake: Condvar::new(),
            flush_asked: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
            done: Condvar::new(),
            done_lock: Mutex::new(()),
        }));
        let _ = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(b));
        b
    })
}

thread_local! {
    /// Where this thread formats a line before appending it to the batch.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// `time` as RFC 3339, written straight into the line.
fn rfc3339_field<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Rfc3339(*t))
}

/// A value written with its `Display`, without an intermediate `String`.
fn display_field<S: Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A time shown as an RFC 3339 UTC timestamp with milliseconds.
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (year, month, day, secs, millis) = civil(self.0);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60,
        )
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    Rfc3339(t).to_string()
}

/// (year, month, day, seconds into the day, milliseconds) of `t`, UTC.
fn civil(t: SystemTime) -> (i64, i64, i64, i64, u32) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem, d.subsec_millis())
}

/// The writer thread: every `FLUSH_EVERY` (or when woken), takes the
/// whole batch, leaving an empty buffer of the same capacity in its place,
/// and writes it with one call.
fn write_batches(b: &'static Batch) {
    // Not `stdout().lock()` for the thread's life: others (a test harness,
    // an embedding program) must still be able to write to stdout.
    let mut spare: Vec<u8> = Vec::with_capacity(WAKE_BYTES);
    loop {
        {
            let Ok(lines) = b.lines.lock() else {
                return;
            };
            let (mut lines, _) = match b.wake.wait_timeout_while(lines, FLUSH_EVERY, |l| {
                l.len() < WAKE_BYTES && !b.flush_asked.load(Ordering::Acquire)
            }) {
                Ok(x) => x,
                Err(_) => return,
            };
            std::mem::swap(&mut *lines, &mut spare);
        }
        let flushing = b.flush_asked.swap(false, Ordering::AcqRel);
        if !spare.is_empty() {
            let mut out = std::io::stdout();
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
            // A burst's large buffer is not kept for ever.
            spare.shrink_to(WAKE_BYTES * 2);
        }
        if flushing {
            b.rounds.fetch_add(1, Ordering::AcqRel);
            let _guard = b.done_lock.lock();
            b.done.notify_all();
        }
    }
}

/// Writes out every line queued so far, waiting at most `within` (called
/// at shutdown, so the last requests' lines are not lost with the
/// process). Blocking.
pub fn flush(within: Duration) {
    let Some(b) = BATCH.get() else {
        return;
    };
    let deadline = std::time::Instant::now() + within;
    let before = b.rounds.load(Ordering::Acquire);
    b.flush_asked.store(true, Ordering::Release);
    b.wake.notify_one();
    let Ok(mut guard) = b.done_lock.lock() else {
        return;
    };
    // Two rounds: the one under way may have taken its batch before the
    // lines this flush is for were added.
    while b.rounds.load(Ordering::Acquire) < before + 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        if b.rounds.load(Ordering::Acquire) == before + 1 {
            b.flush_asked.store(true, Ordering::Release);
            b.wake.notify_one();
        }
        guard = match b.done.wait_timeout(guard, left.min(FLUSH_EVERY)) {
            Ok((g, _)) => g,
            Err(_) => return,
        };
    }
}

/// `query` with the values of the parameters named in `redact` replaced
/// by `<redacted>` (names compared after percent-decoding).
pub(crate) fn redacted_query(query: &str, redact: &[String]) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        if redact
            .iter()
            .any(|r| *r == crate::routing::matchers::decode(name))
        {
            out.push_str(name);
            out.push_str("=<redacted>");
        } else {
            out.push_str(pair);
        }
    }
    out
}

/// Queues one line; never blocks on the writer, allocates nothing once
/// the buffers have grown to their working size.
pub fn log(entry: &LogLine<'_>) {
    SCRATCH.with(|scratch| {
        let Ok(mut line) = scratch.try_borrow_mut() else {
            return;
        };
        line.clear();
        if serde_json::to_writer(&mut *line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        let b = batch();
        let Ok(mut lines) = b.lines.lock() else {
            return;
        };
        if lines.len() + line.len() > QUEUE_BYTES {
            drop(lines);
            metrics().access_log_dropped.inc();
            return;
        }
        lines.extend_from_slice(&line);
        let wake = lines.len() >= WAKE_BYTES && lines.len() - line.len() < WAKE_BYTES;
        drop(lines);
        if wake {
            b.wake.notify_one();
        }
        // A line that made the scratch grow far past its usual size (a
        // very long path) does not keep that memory.
        if line.capacity() > 64 << 10 {
            *line = Vec::with_capacity(512);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn token_parameters_are_redacted_in_logged_queries() {
        let redact = ["access_token".to_owned()];
        assert_eq!(
            redacted_query("a=1&access_token=secret&b=2", &redact),
            "a=1&access_token=<redacted>&b=2"
        );
        assert_eq!(
            redacted_query("access%5Ftoken=secret", &redact),
            "access%5Ftoken=<redacted>",
            "names are compared decoded"
        );
        assert_eq!(redacted_query("flag&x=", &redact), "flag&x=");
    }

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_082_986_123);
        assert_eq!(rfc3339(t), "2025-11-25T15:03:06.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
