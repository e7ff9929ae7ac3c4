//! The local rate-limit check: one key hit again and again (the common
//! case), and a new key per call (a flood of distinct keys). Then, once,
//! the memory figure: 1,000,000 distinct keys in one policy, and RSS after
//! another 1,000,000 (the `max_keys` cap holds it).

#![expect(clippy::unwrap_used, reason = "bench setup")]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::ratelimit::{Definition, LimitKeyPart, Missing, Policy, PolicyOptions, Shape};

fn policy(max_keys: u64, shape: Shape) -> Policy {
    let options = PolicyOptions {
        max_keys,
        shadow: false,
        headers: true,
        definition: Definition::of("bench"),
    };
    Policy::new(
        "bench",
        options,
        vec![LimitKeyPart::ClientIp],
        shape,
        vec![],
        Missing::Reject,
    )
    .unwrap()
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn memory_report() {
    // 10 per minute, burst 10: a key stays a minute after its last use, so
    // every key is still held when the next million arrives.
    let slow = Shape {
        count: 10,
        window: Duration::from_secs(60),
        burst: 10,
    };
    let p = policy(1_000_000, slow);
    let before = rss_mib();
    let mut key = String::new();
    for round in 0..2u32 {
        for i in 0..1_000_000u32 {
            key.clear();
            key.push_str(&format!("{round}-{i}"));
            black_box(p.check_local(&key));
        }
        p.sweep();
        eprintln!(
            "ratelimit memory: after {} million distinct keys: {} keys held, RSS +{:.0} MiB",
            round + 1,
            p.keys(),
            rss_mib() - before
        );
    }
}

fn bench(c: &mut Criterion) {
    memory_report();
    let fast = Shape {
        count: 1_000_000,
        window: Duration::from_secs(1),
        burst: 1_000_000,
    };
    let p = policy(1_000_000, fast);
    let hot = "10.1.2.3".to_owned();
    c.bench_function("ratelimit/local check, same key", |b| {
        b.iter(|| black_box(p.check_local(black_box(&hot))))
    });
    let mut n = 0u64;
    let mut key = String::new();
    c.bench_function("ratelimit/local check, new key each call", |b| {
        b.iter(|| {
            n += 1;
            key.clear();
            key.push_str(&n.to_string());
            black_box(p.check_local(&key))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
