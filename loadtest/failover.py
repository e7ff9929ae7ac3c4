#!/usr/bin/env python3
"""An endpoint dies under load, then comes back.

    python3 loadtest/failover.py [--rate 1000] [--kill-at 3] [--down 4] [--after 5]

Three upstream endpoints (NGINX, 1 KiB from memory) behind one Tollgate
upstream with a circuit breaker, active health checks and a retry policy
on the route. A steady `--rate` of GETs (paced keep-alive clients) runs
throughout. At `--kill-at` seconds the second endpoint is killed with
SIGKILL (its open connections are reset); `--down` seconds later it is
started again on the same port. Reported:

- failed requests (anything but 200 with the exact body); target 0, since
  connect errors and resets on GETs are retried on another endpoint;
- how long after the restart the endpoint served traffic again (its
  `tollgate_upstream_requests_total` series grows).

Standard library only; installs nginx-light with apt-get when missing and
builds the release binary (skip with --no-build).
"""

import argparse
import http.client
import os
import re
import signal
import time

from common import BODY, TOLLGATE_SERVER, UPSTREAM_CONF, Load, log, prepare, wait_ready

PORT = 18420
UP_PORTS = (18381, 18382, 18383)

CONF = TOLLGATE_SERVER + """upstreams:
  origin:
    endpoints: [{endpoints}]
    connect_timeout: 250ms
    circuit_breaker: {{ consecutive_failures: 3, open_for: 1s, max_open_for: 4s, half_open_requests: 2 }}
    health_check: {{ path: /, interval: 500ms, timeout: 300ms, healthy_threshold: 2, unhealthy_threshold: 2 }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: origin
    timeout: 3s
    retry: {{ attempts: 2, on: [connect_error, reset, 502, 503, 504], per_try_timeout: 1s }}
"""


def served(admin_port, up_port):
    """Requests the endpoint answered with 200 so far (from /metrics)."""
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    m = re.search(r'tollgate_upstream_requests_total\{endpoint="127\.0\.0\.1:%d",status="200",upstream="origin"\} (\d+)'
                  % up_port, text)
    return int(m.group(1)) if m else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--kill-at", type=float, default=3.0)
    ap.add_argument("--down", type=float, default=4.0)
    ap.add_argument("--after", type=float, default=5.0, help="seconds of load after the restart")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    nginx, tollgate, work, procs = prepare("tollgate-failover.", not args.no_build)
    try:
        for port in UP_PORTS:
            os.makedirs(f"{work}/{port}", exist_ok=True)
            with open(f"{work}/{port}/upstream.conf", "w") as f:
                f.write(UPSTREAM_CONF.format(work=f"{work}/{port}", port=port, body=BODY.decode()))
            procs.start(f"up{port}", [nginx, "-c", f"{work}/{port}/upstream.conf"], 1, f"{work}/{port}.log")
            wait_ready(port)
        endpoints = ", ".join(f'"http://127.0.0.1:{p}"' for p in UP_PORTS)
        with open(f"{work}/tollgate.yaml", "w") as f:
            f.write(CONF.format(port=PORT, admin=PORT + 1, endpoints=endpoints))
        procs.start("tollgate", [tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"], 0,
                    f"{work}/tollgate.log")
        wait_ready(PORT)
        seconds = args.kill_at + args.down + args.after
        load = Load(PORT, args.rate, seconds)
        log(f"offering {args.rate} req/s for {seconds:.1f}s; killing :{UP_PORTS[1]} at {args.kill_at}s "
            f"for {args.down}s")
        t0 = time.monotonic()
        threads = load.run()
        victim = UP_PORTS[1]
        time.sleep(max(0.0, args.kill_at - (time.monotonic() - t0)))
        p = procs.procs.pop(f"up{victim}")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log(f"killed :{victim} (SIGKILL)")
        time.sleep(max(0.0, args.kill_at + args.down - (time.monotonic() - t0)))
        before = served(PORT + 1, victim)
        procs.start(f"up{victim}", [nginx, "-c", f"{work}/{victim}/upstream.conf"], 1, f"{work}/{victim}.log")
        restarted = time.monotonic()
        log(f"restarted :{victim}")
        back = None
        while time.monotonic() - restarted < args.after:
            if back is None and served(PORT + 1, victim) > before:
                back = time.monotonic() - restarted
            time.sleep(0.05)
        for t in threads:
            t.join()
        total = load.ok + sum(load.failures.values())
        print(f"\nfailover: {total} GETs at {total / seconds:.0f} req/s over {seconds:.1f}s; one of 3 endpoints "
              f"killed for {args.down:.1f}s")
        print(f"ok={load.ok} failed={sum(load.failures.values())} {load.failures or ''}")
        print("back in rotation after restart: " + (f"{back:.2f}s" if back is not None else "not within the run"))
        bad = load.failures or back is None
        print("RESULT:", "FAIL" if bad else "PASS (0 failed requests)")
        raise SystemExit(1 if bad else 0)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
