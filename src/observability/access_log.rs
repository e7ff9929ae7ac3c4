//! The access log: one JSON line per request on stdout, written by a
//! dedicated thread so the request path never blocks on stdout. When the
//! writer falls behind by more than `QUEUE_BYTES` (or `QUEUE` lines), new
//! lines are dropped and counted (`tollgate_access_log_dropped_total`)
//! rather than slowing traffic or growing memory: the bound is in bytes, so
//! long lines (long paths) cannot make it large.

use std::io::{BufWriter, Write};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde::Serialize;

use super::metrics::metrics;

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 65_536;

/// Bytes of lines queued for the writer before new ones are dropped.
pub const QUEUE_BYTES: usize = 16 << 20;

/// Bytes of lines queued and not yet written.
static QUEUED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct LogLine<'a> {
    /// RFC 3339 UTC time the request arrived.
    pub time: String,
    /// Request id (sent upstream and returned).
    pub request_id: &'a str,
    /// W3C trace id.
    pub trace_id: &'a str,
    /// Client address.
    pub client: String,
    /// Method.
    pub method: &'a str,
    /// Host (as sent).
    pub host: &'a str,
    /// Path (as sent, without query).
    pub path: &'a str,
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

/// What the writer thread is handed.
enum Msg {
    /// One line, newline included.
    Line(String),
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// The writer thread's queue, made with the first line.
static TX: OnceLock<SyncSender<Msg>> = OnceLock::new();

fn sender() -> &'static SyncSender<Msg> {
    TX.get_or_init(|| {
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let _ = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || drain(rx));
        tx
    })
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
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
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn drain(rx: Receiver<Msg>) {
    // Not `stdout().lock()` for the thread's life: others (a test harness,
    // an embedding program) must still be able to write to stdout.
    let mut out = BufWriter::with_capacity(64 << 10, std::io::stdout());
    let handle = |out: &mut BufWriter<_>, msg: Msg| match msg {
        Msg::Line(line) => {
            let _ = out.write_all(line.as_bytes());
            QUEUED.fetch_sub(line.len(), std::sync::atomic::Ordering::Relaxed);
        }
        Msg::Flush(done) => {
            let _ = out.flush();
            let _ = done.try_send(());
        }
    };
    while let Ok(msg) = rx.recv() {
        handle(&mut out, msg);
        // Flush once the queue is empty, so bursts are written in one go.
        while let Ok(more) = rx.try_recv() {
            handle(&mut out, more);
        }
        let _ = out.flush();
    }
}

/// Writes out every line queued so far, waiting at most `within` (called
/// at shutdown, so the last requests' lines are not lost with the
/// process). Blocking.
pub fn flush(within: std::time::Duration) {
    let Some(writer) = TX.get() else {
        return;
    };
    let (tx, rx) = sync_channel(1);
    if send_within(writer, Msg::Flush(tx), within) {
        let _ = rx.recv_timeout(within);
    }
}

/// `SyncSender::send` bounded in time (the queue may be full).
fn send_within(tx: &SyncSender<Msg>, mut msg: Msg, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        match tx.try_send(msg) {
            Ok(()) => return true,
            Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

/// Queues one line; never blocks.
pub fn log(entry: &LogLine<'_>) {
    let Ok(mut line) = serde_json::to_string(entry) else {
        return;
    };
    line.push('\n');
    let len = line.len();
    let before = QUEUED.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    if before + len > QUEUE_BYTES {
        QUEUED.fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
        metrics().access_log_dropped.inc();
        return;
    }
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        sender().try_send(Msg::Line(line))
    {
        QUEUED.fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
        metrics().access_log_dropped.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_082_986_123);
        assert_eq!(rfc3339(t), "2025-11-25T15:03:06.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
