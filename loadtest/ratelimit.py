#!/usr/bin/env python3
"""The cost of rate limiting: one Tollgate, the same upstream, three
routes side by side in one run, none of them ever limited.

    python3 loadtest/ratelimit.py [--rounds 5] [--duration 8] [--conns 64]

    /open     no rate limit
    /local    a `client_ip` policy, scope local (governor, in process)
    /quiet    the same with `headers: false` (what the RateLimit headers cost)
    /global   a `client_ip` policy, scope global (one Redis round trip per request)

Layout as compare.py: Tollgate (`workers: 1`) on CPU 0; the upstream NGINX,
redis-server and wrk (1 thread) on CPU 1. The policies allow far more than
the load, so every request is answered 200 and the runs differ only in the
limiter's work. Reported: req/s, p50, p99, Tollgate's CPU per request, and
ratios to /open paired per round.

Standard library only; installs nginx-light, wrk and redis-server with
apt-get when missing and builds the release binary (skip with --no-build).
"""

import os
import shutil
import subprocess
import time

from common import (arguments, BODY, TOLLGATE_BASE, UP_PORT, UPSTREAM_CONF, log, prepare, ratio_table, side_by_side,
                    wait_ready)

PORT = 18430
REDIS_PORT = 18439

CONF = TOLLGATE_BASE + """redis: {{ url: "redis://127.0.0.1:{redis}/0", timeout: 50ms, on_error: allow }}
rate_limits:
  local: {{ key: client_ip, rate: 10000000/s, burst: 10000000 }}
  quiet: {{ key: client_ip, rate: 10000000/s, burst: 10000000, headers: false }}
  global: {{ key: client_ip, rate: 10000000/s, burst: 10000000, scope: global }}
routes:
  - {{ name: open, match: {{ path_prefix: /open }}, upstream: origin }}
  - {{ name: local, match: {{ path_prefix: /local }}, upstream: origin, rate_limit: [local] }}
  - {{ name: quiet, match: {{ path_prefix: /quiet }}, upstream: origin, rate_limit: [quiet] }}
  - {{ name: global, match: {{ path_prefix: /global }}, upstream: origin, rate_limit: [global] }}
"""


def wrk(path, conns, seconds):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{PORT}{path}"], capture_output=True, text=True, timeout=seconds + 30)
    return out.stdout


def main():
    args = arguments(__doc__, 8)
    nginx, tollgate, work, procs = prepare("tollgate-ratelimit.", not args.no_build)
    if not shutil.which("redis-server"):
        log("installing redis-server with apt-get")
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True)
    try:
        with open(f"{work}/upstream.conf", "w") as f:
            f.write(UPSTREAM_CONF.format(work=work, port=UP_PORT, body=BODY.decode()))
        with open(f"{work}/tollgate.yaml", "w") as f:
            f.write(CONF.format(port=PORT, admin=PORT + 1, up=UP_PORT, redis=REDIS_PORT))
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        procs.start("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], 1, f"{work}/redis.log")
        wait_ready(UP_PORT)
        time.sleep(0.3)
        p = procs.start("tollgate", [tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"], 0,
                        f"{work}/tollgate.log")
        paths = ("/open", "/local", "/quiet", "/global")
        for path in paths:
            wait_ready(PORT, path=path)
        time.sleep(0.5)
        results = side_by_side({
            path: (p.pid, lambda secs, path=path: wrk(path, args.conns, secs)) for path in paths
        }, args)
        errors = subprocess.run(["curl", "-s", f"http://127.0.0.1:{PORT + 1}/metrics"], capture_output=True,
                                text=True).stdout
        redis_errors = [l for l in errors.splitlines() if l.startswith("tollgate_ratelimit_redis_errors_total")]
        log(f"redis errors during the run: {redis_errors}")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    ratio_table(results, "/open",
                f"Rate-limit cost: 1 KiB responses, {args.conns} connections, {args.rounds} rounds x {args.duration}s "
                f"(wrk, 1 thread), one Tollgate (workers: 1); medians; ratios paired per round against /open")


if __name__ == "__main__":
    main()
