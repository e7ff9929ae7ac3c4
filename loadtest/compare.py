#!/usr/bin/env python3
"""Tollgate vs NGINX, side by side in one run.

    python3 loadtest/compare.py [--rounds 5] [--duration 10] [--conns 64] [--size 1024]
                                [--access-log] [--tracing] [--pipeline] [--baseline BINARY]

With --size BYTES, the upstream answers BYTES instead of 1 KiB (served
from a file, as NGINX serves static content); `--size 65536` is the 64 KiB
row.

With --access-log, a third target is Tollgate with its access log on
(one JSON line per request to a file, as an operator runs it), so the
cost of a line is the CPU/req difference between the two Tollgates.

With --tracing, two more targets: Tollgate tracing every request
(`sample_ratio: 1`, two spans per request: the server span and the
upstream attempt) to an OTLP/HTTP receiver (otlp_sink.py, on CPU 1), and
the same with the collector down (a closed port: every export fails and
its spans are counted as dropped). The plain `tollgate` target is tracing
off, the default.

With --pipeline, one more target runs Tollgate's full request pipeline on
one route: RS256 JWT validation (2048-bit key, local JWKS; each connection
resends its token, so the per-connection memo answers), two local rate
limits (per client address and per tenant, never reached), the access log
on (to a file) and the metrics it always keeps. Every target then gets the
same `Authorization` header, so all move the same bytes; NGINX and the
plain Tollgate forward it unread.

With --baseline BINARY, one more target runs that binary (another build,
such as the commit before a change) on the plain config, so a change's
cost is measured against the code without it in the same run.

CPU layout on a 2-core machine (like ../shared/bench):

    CPU 0: the proxy under test (Tollgate with `workers: 1`, NGINX with one worker)
    CPU 1: the upstream (an NGINX answering 1 KiB from memory) + wrk (1 thread)

Both proxies forward to the same upstream over keep-alive pools. Rounds are
interleaved with the order rotated each round; every proxy starts fresh per
round, is checked to return the exact body, warmed up, then measured.
Reported per target: req/s, p50 and p99 latency (wrk), proxy CPU time per
request (utime+stime of the proxy's process tree from /proc, all threads),
and peak RSS; ratios are paired per round against NGINX, median over rounds.

With both cores busy, wrk and the upstream share CPU 1 and cap req/s; CPU
per request is then the figure that shows a proxy's efficiency.

Standard library only. Installs nginx-light and wrk with apt-get when
missing (as root), and builds the release binary with cargo. Every process
binds 127.0.0.1, is started by this script in its own process group and
stopped by PID, also on errors and Ctrl-C.
"""

import http.client
import os
import shutil
import statistics
import sys
import time
import urllib.request

from common import (NGINX_HEAD, arguments, BODY, TOLLGATE_BASE, TOLLGATE_CONF, UP_PORT, UPSTREAM_CONF, UPSTREAM_HEAD,
                    cpu_times, prepare, log, parse_wrk, peak_rss_mib, wait_ready, wrk)

NGINX_PORT, TOLLGATE_PORT, SINK_PORT, DOWN_PORT = 18390, 18400, 18410, 18411

NGINX_PROXY_CONF = NGINX_HEAD + """    upstream backend {{
        server 127.0.0.1:{up};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 16 16k;
        }}
    }}
}}
"""

# The upstream for --size: the body from a file (sendfile), not `return`.
UPSTREAM_FILE_CONF = UPSTREAM_HEAD + """    open_file_cache max=16 inactive=1h;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; root {work}/www; try_files /body =404; }}
    }}
}}
"""

# --pipeline: one route with every per-request stage an API gateway runs.
PIPELINE_CONF = TOLLGATE_BASE.replace("access_log: {{ enabled: false }}", "access_log: {{ enabled: true }}") + """auth:
  providers:
    main: {{ issuer: "https://issuer.test/", audiences: [api], algorithms: [RS256], jwks_file: jwks.json, tenant_claim: tenant }}
rate_limits:
  per_client: {{ key: client_ip, rate: 10000000/s, burst: 10000000 }}
  per_tenant: {{ key: tenant, rate: 10000000/s, burst: 10000000 }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: origin
    auth: {{ provider: main }}
    rate_limit: [per_client, per_tenant]
"""


def body_of(size):
    """The upstream's answer: BODY itself at 1 KiB, else BODY repeated."""
    return BODY if size == len(BODY) else (BODY * (size // len(BODY) + 1))[:size]


def pipeline_token(work):
    """A 2048-bit RSA key as a JWKS file in `work`, and a token it signs."""
    from auth import key_with_jwks, rs256_token
    n, e, d = key_with_jwks(work)
    return rs256_token(n, e, d, "k1", {"iss": "https://issuer.test/", "aud": "api", "sub": "user-001",
                                       "tenant": "acme", "exp": int(time.time()) + 24 * 3600})


def main():
    def extra(ap):
        ap.add_argument("--access-log", action="store_true", help="also run Tollgate with its access log on")
        ap.add_argument("--tracing", action="store_true",
                        help="also run Tollgate tracing every request, to a collector and to one that is down")
        ap.add_argument("--baseline", metavar="BINARY",
                        help="also run another tollgate build (say, the commit before a change) on the plain config")
        ap.add_argument("--size", type=int, default=len(BODY), help="the upstream's response size in bytes")
        ap.add_argument("--pipeline", action="store_true",
                        help="also run Tollgate with RS256 JWT, two rate limits and the access log on one route")
    args = arguments(__doc__, 10, extra=extra)
    nginx, tollgate, work, procs = prepare("tollgate-loadtest.", not args.no_build)
    expect = body_of(args.size)
    with open(f"{work}/upstream.conf", "w") as f:
        if expect is BODY:
            f.write(UPSTREAM_CONF.format(work=work, port=UP_PORT, body=BODY.decode()))
        else:
            os.mkdir(f"{work}/www")
            with open(f"{work}/www/body", "wb") as b:
                b.write(expect)
            f.write(UPSTREAM_FILE_CONF.format(work=work, port=UP_PORT))
    headers = ()
    if args.pipeline:
        headers = (f"Authorization: Bearer {pipeline_token(work)}",)
        with open(f"{work}/tollgate-pipeline.yaml", "w") as f:
            f.write(PIPELINE_CONF.format(port=TOLLGATE_PORT, admin=TOLLGATE_PORT + 1, up=UP_PORT))
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(NGINX_PROXY_CONF.format(work=work, port=NGINX_PORT, up=UP_PORT))
    with open(f"{work}/tollgate.yaml", "w") as f:
        f.write(TOLLGATE_CONF.format(port=TOLLGATE_PORT, admin=TOLLGATE_PORT + 1, up=UP_PORT))
    targets = {
        "nginx": (NGINX_PORT, [nginx, "-c", f"{work}/nginx.conf"]),
        "tollgate": (TOLLGATE_PORT, [tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"]),
    }
    if args.access_log:
        with open(f"{work}/tollgate-log.yaml", "w") as f:
            f.write(TOLLGATE_CONF.format(port=TOLLGATE_PORT, admin=TOLLGATE_PORT + 1, up=UP_PORT)
                    .replace("access_log: { enabled: false }", "access_log: { enabled: true }"))
        targets["tollgate+log"] = (TOLLGATE_PORT, [tollgate, "run", "-c", f"{work}/tollgate-log.yaml", "--log-level", "warn"])
    if args.baseline:
        targets["baseline"] = (TOLLGATE_PORT, [os.path.realpath(args.baseline), "run", "-c", f"{work}/tollgate.yaml",
                                               "--log-level", "warn"])
    if args.tracing:
        base = TOLLGATE_CONF.format(port=TOLLGATE_PORT, admin=TOLLGATE_PORT + 1, up=UP_PORT)
        for name, endpoint in [("tollgate+trace", f"http://127.0.0.1:{SINK_PORT}"),
                               ("tollgate+trace-down", f"http://127.0.0.1:{DOWN_PORT}")]:
            with open(f"{work}/{name}.yaml", "w") as f:
                f.write(base + f"observability:\n  tracing: {{ endpoint: \"{endpoint}\", protocol: http, sample_ratio: 1 }}\n")
            targets[name] = (TOLLGATE_PORT, [tollgate, "run", "-c", f"{work}/{name}.yaml", "--log-level", "warn"])
    if args.pipeline:
        targets["tollgate+pipeline"] = (TOLLGATE_PORT, [tollgate, "run", "-c", f"{work}/tollgate-pipeline.yaml",
                                                        "--log-level", "warn"])
    results = {t: [] for t in targets}
    spans = {}
    try:
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        wait_ready(UP_PORT, expect=expect)
        if args.tracing:
            sink = os.path.join(os.path.dirname(os.path.realpath(__file__)), "otlp_sink.py")
            procs.start("sink", [sys.executable, sink, str(SINK_PORT)], 1, f"{work}/sink.log")
        order = list(targets)
        for rnd in range(args.rounds):
            for name in order[rnd % len(order):] + order[:rnd % len(order)]:
                port, argv = targets[name]
                p = procs.start(name, argv, 0, f"{work}/{name}.log")
                wait_ready(port, expect=expect, headers=dict(h.split(": ", 1) for h in headers))
                if name == "tollgate+pipeline":
                    refused = unauthorized(port)
                    if refused != 401:
                        raise SystemExit(f"{name}: a request without a token got {refused}, not 401")
                wrk(port, args.conns, args.warmup, 1, headers)
                (u0, s0) = cpu_times(p.pid)
                text = wrk(port, args.conns, args.duration, 1, headers)
                (u1, s1) = cpu_times(p.pid)
                rps, p50, p99, errors = parse_wrk(text)
                reqs = rps * args.duration
                per = lambda secs: secs / reqs * 1e6 if reqs else float("nan")
                cpu_us, user_us = per(u1 - u0 + s1 - s0), per(u1 - u0)
                rss = peak_rss_mib(p.pid)
                if name.startswith("tollgate+trace"):
                    spans.setdefault(name, []).append(span_counts(TOLLGATE_PORT + 1))
                procs.stop(name)
                results[name].append({"rps": rps, "p50": p50, "p99": p99, "cpu_us": cpu_us, "user_us": user_us,
                                      "rss": rss, "errors": errors})
                log(f"round {rnd + 1}/{args.rounds} {name:9} req/s={rps:9.0f} p50={p50:7.0f}us p99={p99:7.0f}us "
                    f"cpu/req={cpu_us:5.2f}us rss={rss:5.1f}MiB errors={errors}")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    med = lambda xs: statistics.median(xs)
    size = f"{args.size // 1024} KiB" if args.size % 1024 == 0 else f"{args.size}-byte"
    print(f"\nTollgate vs NGINX: {size} responses, {args.conns} connections, {args.rounds} rounds x {args.duration}s "
          f"(wrk, 1 thread), medians over rounds; ratios paired per round\n")
    print("| target | req/s | p50 µs | p99 µs | CPU µs/req | of it user | peak RSS MiB | errors | req/s × | p99 × "
          "| CPU/req × |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        base = results["nginx"]
        ratio = lambda k: med([r[k] / b[k] for r, b in zip(rows, base)])
        print(f"| {name} | {med([r['rps'] for r in rows]):,.0f} | {med([r['p50'] for r in rows]):,.0f} | "
              f"{med([r['p99'] for r in rows]):,.0f} | {med([r['cpu_us'] for r in rows]):.2f} | "
              f"{med([r['user_us'] for r in rows]):.2f} | {med([r['rss'] for r in rows]):.1f} | {sum(r['errors'] for r in rows)} | "
              f"{ratio('rps'):.2f} | {ratio('p99'):.2f} | {ratio('cpu_us'):.2f} |")
    if spans:
        print("\nSpans per run (tollgate_trace_spans_*_total at the end of each round: exported, dropped)\n")
        for name, rows in spans.items():
            print(f"- {name}: " + "; ".join(f"{e:,.0f} exported, {d:,.0f} dropped" for e, d in rows))


def unauthorized(port):
    """The status of a request without a token."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/")
    status = c.getresponse().status
    c.close()
    return status


def span_counts(admin_port):
    """(exported, dropped) spans from the gateway's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    exported = dropped = 0.0
    for line in text.splitlines():
        if line.startswith("tollgate_trace_spans_exported_total "):
            exported = float(line.split()[-1])
        elif line.startswith("tollgate_trace_spans_dropped_total{"):
            dropped += float(line.split()[-1])
    return exported, dropped


if __name__ == "__main__":
    main()
