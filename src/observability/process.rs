//! The standard `process_*` metrics, read from `/proc/self` at each scrape
//! (Linux). Ours rather than the prometheus crate's collector, whose
//! `process_cpu_seconds_total` counts whole seconds: here it has the
//! kernel's clock-tick resolution (10 ms), so `rate()` over short windows
//! is meaningful.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

/// `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// Page size for the resident set (`/proc/self/stat` counts pages).
const PAGE_BYTES: f64 = 4096.0;

/// Collects `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_threads` and `process_start_time_seconds`.
pub(crate) struct ProcessCollector {
    cpu: Counter,
    rss: Gauge,
    vsize: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    /// The collector, or `None` if a metric cannot be defined.
    pub(crate) fn new() -> Option<Self> {
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .ok()?;
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help)).ok();
        let rss = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let vsize = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        )?;
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.")?;
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        )?;
        let threads = gauge("process_threads", "Number of OS threads in the process.")?;
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
        )?;
        let descs = [
            &cpu as &dyn Collector,
            &rss,
            &vsize,
            &open_fds,
            &max_fds,
            &threads,
            &start_time,
        ]
        .iter()
        .flat_map(|c| c.desc().into_iter().cloned())
        .collect();
        let c = Self {
            cpu,
            rss,
            vsize,
            open_fds,
            max_fds,
            threads,
            start_time,
            descs,
        };
        if let Some(stat) = read_stat()
            && let Some(boot) = boot_time()
        {
            c.start_time.set(boot + stat.start_ticks / TICKS_PER_SECOND);
        }
        Some(c)
    }
}

/// What `/proc/self/stat` says.
struct Stat {
    cpu_ticks: f64,
    threads: f64,
    start_ticks: f64,
    vsize: f64,
    rss_pages: f64,
}

/// Parses `/proc/self/stat`: fields after the `(comm)` are space separated.
fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field numbers (proc(5)) minus 3: the state is field 3.
    let num = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
    Some(Stat {
        cpu_ticks: num(14)? + num(15)?,
        threads: num(20)?,
        start_ticks: num(22)?,
        vsize: num(23)?,
        rss_pages: num(24)?,
    })
}

/// Boot time from `/proc/stat` (`btime`), seconds since the epoch.
fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_fds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(s) = read_stat() {
            let cpu = s.cpu_ticks / TICKS_PER_SECOND;
            let before = self.cpu.get();
            if cpu > before {
                self.cpu.inc_by(cpu - before);
            }
            self.threads.set(s.threads);
            self.vsize.set(s.vsize);
            self.rss.set(s.rss_pages * PAGE_BYTES);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as f64);
        }
        if let Some(m) = max_fds() {
            self.max_fds.set(m);
        }
        [
            &self.cpu as &dyn Collector,
            &self.rss,
            &self.vsize,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ]
        .iter()
        .flat_map(|c| c.collect())
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(c: &ProcessCollector, name: &str) -> f64 {
        let families = c.collect();
        let f = families.iter().find(|f| f.name() == name).unwrap();
        let m = &f.get_metric()[0];
        if name.ends_with("_total") {
            m.get_counter().get_value()
        } else {
            m.get_gauge().get_value()
        }
    }

    #[test]
    fn cpu_time_moves_in_fractions_of_a_second() {
        let c = ProcessCollector::new().unwrap();
        let first = value(&c, "process_cpu_seconds_total");
        // Burn CPU until the counter moves: its first step is one tick
        // (or a few), not a whole second.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut now = first;
        while now == first && start.elapsed() < std::time::Duration::from_secs(5) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            now = value(&c, "process_cpu_seconds_total");
        }
        let step = now - first;
        assert!(step > 0.0 && step < 1.0, "moved by {step}");
        assert!(value(&c, "process_resident_memory_bytes") > 1e6);
        assert!(value(&c, "process_open_fds") >= 3.0);
        assert!(value(&c, "process_start_time_seconds") > 1.6e9);
    }
}
