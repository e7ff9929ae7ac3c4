//! IP allow/deny lookups: 100,000 random CIDRs (IPv4 /8–/32 and IPv6
//! /32–/128) merged into ranges, then one address looked up (binary
//! search), against a linear scan of the same CIDRs.

#![expect(clippy::unwrap_used, reason = "bench setup")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tollgate::access::ip::IpSet;

fn nets(n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            if i % 4 == 0 {
                let a = Ipv6Addr::from(fastrand::u128(..));
                IpNet::V6(Ipv6Net::new(a, fastrand::u8(32..=128)).unwrap().trunc())
            } else {
                let a = Ipv4Addr::from(fastrand::u32(..));
                IpNet::V4(Ipv4Net::new(a, fastrand::u8(16..=32)).unwrap().trunc())
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    fastrand::seed(7);
    let list = nets(100_000);
    let set = IpSet::new(list.iter().copied());
    let probes: Vec<IpAddr> = (0..1024)
        .map(|i| {
            if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(fastrand::u32(..)))
            } else {
                list[fastrand::usize(..list.len())].network()
            }
        })
        .collect();
    let mut i = 0;
    c.bench_function("ipset/100k_cidrs/lookup", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(set.contains(black_box(probes[i])))
        })
    });
    let mut j = 0;
    c.bench_function("ipset/100k_cidrs/linear_scan", |b| {
        b.iter(|| {
            j = (j + 1) % probes.len();
            let ip = black_box(probes[j]);
            black_box(list.iter().any(|n| n.contains(&ip)))
        })
    });
    c.bench_function("ipset/100k_cidrs/build", |b| {
        b.iter(|| black_box(IpSet::new(list.iter().copied())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
