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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::metrics::metrics;

mod line;

pub use line::LogLine;

/// Bytes of lines waiting for the writer before new ones are dropped.
pub const QUEUE_BYTES: usize = 16 << 20;

/// How often the writer takes the batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A batch this large wakes the writer before its interval is up.
const WAKE_BYTES: usize = 256 << 10;

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
        entry.write_json(&mut line);
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
}
