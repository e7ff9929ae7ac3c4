//! Route lookup cost: the compiled router against a naive linear scan, at
//! 10 and 1,000 routes. The router should cost about the same at both
//! sizes; the scan grows with the table.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use tollgate::routing::{Constraints, PathMatch, RequestView, RouteLookup, RouteMatcher, Router};

fn table(n: usize) -> Vec<RouteMatcher> {
    (0..n)
        .map(|i| {
            let path = match i % 3 {
                0 => PathMatch::Prefix(format!("/svc{i}/api")),
                1 => PathMatch::Exact(format!("/svc{i}/health")),
                _ => PathMatch::Template(format!("/svc{i}/users/{{id}}/orders")),
            };
            let hosts = if i % 5 == 0 {
                vec![format!("h{i}.example.com")]
            } else {
                vec![]
            };
            RouteMatcher {
                hosts,
                path,
                constraints: Constraints {
                    methods: vec![Method::GET],
                    ..Default::default()
                },
            }
        })
        .collect()
}

/// The baseline: test every route in order, as a naive gateway would.
fn linear(routes: &[RouteMatcher], req: &RequestView<'_>) -> Option<usize> {
    routes.iter().position(|r| {
        (r.hosts.is_empty() || r.hosts.iter().any(|h| h == req.host))
            && match &r.path {
                PathMatch::Exact(p) => p == req.path,
                PathMatch::Prefix(p) => req
                    .path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
                PathMatch::Template(t) => {
                    let (a, b): (Vec<&str>, Vec<&str>) =
                        (t.split('/').collect(), req.path.split('/').collect());
                    a.len() == b.len()
                        && a.iter().zip(&b).all(|(x, y)| x.starts_with('{') || x == y)
                }
                PathMatch::Regex(r) => r.is_match(req.path),
            }
            && r.constraints
                .check(req.method, req.headers, req.query)
                .is_ok()
    })
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 1000] {
        let routes = table(n);
        let router = Router::new(routes.clone());
        // The last routes of each kind: worst case for the scan.
        let paths = [
            format!("/svc{}/api/items/9", (n - 1) / 3 * 3),
            format!(
                "/svc{}/users/42/orders",
                n - 1 - (n - 1) % 3 + 2 - 3 * ((n - 1) % 3 < 2) as usize
            ),
        ];
        for path in &paths {
            let req = RequestView {
                method: &Method::GET,
                host: "api.test",
                path,
                query: None,
                headers: &headers,
            };
            assert!(
                matches!(router.lookup(&req), RouteLookup::Found(_)),
                "{path} routes"
            );
            g.bench_with_input(
                BenchmarkId::new(
                    format!(
                        "router/{}",
                        if path.contains("users") {
                            "template"
                        } else {
                            "prefix"
                        }
                    ),
                    n,
                ),
                &req,
                |b, req| b.iter(|| black_box(router.lookup(black_box(req)))),
            );
            g.bench_with_input(
                BenchmarkId::new(
                    format!(
                        "linear/{}",
                        if path.contains("users") {
                            "template"
                        } else {
                            "prefix"
                        }
                    ),
                    n,
                ),
                &req,
                |b, req| b.iter(|| black_box(linear(&routes, black_box(req)))),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
