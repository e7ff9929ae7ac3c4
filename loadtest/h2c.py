#!/usr/bin/env python3
"""h2c clients through Tollgate and through NGINX to an HTTP/1.1 upstream,
side by side in one run.

    python3 loadtest/h2c.py [--rounds 5] [--duration 8] [--conns 32] [--streams 10]

h2load (nghttp2-client) opens `--conns` cleartext HTTP/2 connections with
prior knowledge and keeps `--streams` requests in flight on each. NGINX
listens with `http2` on a cleartext port (1.22 speaks h2c with prior
knowledge there); Tollgate serves h2c and HTTP/1.1 on the same port. Both
forward to the same NGINX upstream answering 1 KiB over keep-alive
HTTP/1.1 pools. Layout as compare.py: the proxy on CPU 0, the upstream and
h2load (one thread) on CPU 1. Rounds are interleaved with the order
rotated; each proxy is checked to answer the exact body over h2c first.
Reported: req/s, mean request time (h2load prints no percentiles), proxy
CPU per request (utime+stime of its process tree), failed requests, and
ratios paired per round against NGINX. Standard library only; installs
nginx-light, wrk and nghttp2-client when missing and builds the release
binary unless --no-build.
"""

import re
import shutil
import statistics
import subprocess
import time

from common import (BODY, NGINX_HEAD, TOLLGATE_CONF, UP_PORT, UPSTREAM_CONF, arguments, cpu_seconds, log,
                    prepare)

NGINX_PORT, TOLLGATE_PORT = 18490, 18491

NGINX_H2C = NGINX_HEAD + """    http2_max_concurrent_streams 128;
    upstream backend {{ server 127.0.0.1:{up}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def h2load(port, conns, streams, secs, check=False):
    argv = ["taskset", "-c", "1", "h2load", "-t", "1", "-c", str(conns), "-m", str(streams)]
    argv += ["-n", "1"] if check else ["-D", str(secs)]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=secs + 60).stdout
    return out


def parse(out):
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
    m = re.match(r"([\d.]+)(us|ms|s)", mean)
    mean_us = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
    return rps, mean_us, int(done.group(3)) + int(done.group(4)), int(done.group(2))


def check_body(port):
    """One h2c request: status 200 and the exact 1 KiB body."""
    out = subprocess.run(["nghttp", "-d", "/dev/null", "-v", f"http://127.0.0.1:{port}/"],
                         capture_output=True, timeout=15)
    body = subprocess.run(["nghttp", f"http://127.0.0.1:{port}/"], capture_output=True, timeout=15).stdout
    if b":status: 200" not in out.stdout or body != BODY:
        raise SystemExit(f"port {port}: not a 200 with the expected body over h2c")


def main():
    args = arguments(__doc__, 8, lambda ap: (ap.add_argument("--streams", type=int, default=10)))
    if not shutil.which("h2load"):
        log("installing nghttp2-client with apt-get")
        subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=True)
    conns = args.conns if args.conns != 64 else 32
    nginx, tollgate, work, procs = prepare("tollgate-h2c.", not args.no_build)
    with open(f"{work}/upstream.conf", "w") as f:
        f.write(UPSTREAM_CONF.format(work=work, port=UP_PORT, body=BODY.decode()))
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(NGINX_H2C.format(work=work, port=NGINX_PORT, up=UP_PORT))
    with open(f"{work}/tollgate.yaml", "w") as f:
        f.write(TOLLGATE_CONF.format(port=TOLLGATE_PORT, admin=TOLLGATE_PORT + 10, up=UP_PORT))
    targets = {
        "nginx": ([nginx, "-c", f"{work}/nginx.conf"], NGINX_PORT),
        "tollgate": ([tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"], TOLLGATE_PORT),
    }
    results = {name: [] for name in targets}
    try:
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        order = list(targets)
        for rnd in range(args.rounds):
            for name in order[rnd % 2:] + order[:rnd % 2]:
                argv, port = targets[name]
                p = procs.start(name, argv, 0, f"{work}/{name}.log")
                deadline = time.time() + 15
                while True:
                    try:
                        check_body(port)
                        break
                    except (SystemExit, subprocess.SubprocessError):
                        if time.time() > deadline:
                            raise
                        time.sleep(0.2)
                h2load(port, conns, args.streams, args.warmup)
                c0 = cpu_seconds(p.pid)
                out = h2load(port, conns, args.streams, args.duration)
                c1 = cpu_seconds(p.pid)
                rps, mean_us, failed, ok = parse(out)
                cpu_us = (c1 - c0) / ok * 1e6 if ok else float("nan")
                results[name].append({"rps": rps, "mean": mean_us, "cpu_us": cpu_us, "failed": failed})
                log(f"round {rnd + 1}/{args.rounds} {name:9} req/s={rps:9.0f} mean={mean_us:7.0f}us "
                    f"cpu/req={cpu_us:6.2f}us failed={failed}")
                procs.stop(name)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(f"\nh2c clients (h2load, {conns} connections x {args.streams} streams) to an HTTP/1.1 upstream, "
          f"1 KiB: {args.rounds} rounds x {args.duration}s; medians; ratios paired per round against NGINX\n")
    print("| target | req/s | mean µs | CPU µs/req | failed | req/s × | CPU/req × |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        ratio = lambda k: med([r[k] / b[k] for r, b in zip(rows, results["nginx"])])
        print(f"| {name} | {med([r['rps'] for r in rows]):,.0f} | {med([r['mean'] for r in rows]):,.0f} | "
              f"{med([r['cpu_us'] for r in rows]):.2f} | {sum(r['failed'] for r in rows)} | "
              f"{ratio('rps'):.2f} | {ratio('cpu_us'):.2f} |")
    log("done")


if __name__ == "__main__":
    main()
