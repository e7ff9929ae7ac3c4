#!/usr/bin/env python3
"""Cache hits: Tollgate's response cache against NGINX proxy_cache, side by
side in one run, on the same 1 KiB object.

    python3 loadtest/cache.py [--rounds 3] [--duration 8] [--conns 64]

Both proxies cache the upstream's answer (Tollgate: `default_ttl: 10m`;
NGINX: `proxy_cache_valid 200 10m`, with open_file_cache so hits are served
from the page cache) and are checked to answer hits before measuring.
Layout as compare.py: the proxy on CPU 0, the upstream and wrk (1 thread)
on CPU 1. Reported: req/s, p50, p99, proxy CPU per request, ratios paired
per round against NGINX. Standard library only; installs nginx-light and
wrk when missing and builds the release binary unless --no-build.
"""

import http.client
import shutil
import time

from common import (NGINX_HEAD, arguments, BODY, TOLLGATE_BASE, UP_PORT, UPSTREAM_CONF, log, prepare, ratio_table,
                    side_by_side, wait_ready, wrk)

NGINX_PORT, TOLLGATE_PORT = 18460, 18461

NGINX_CACHE_CONF = NGINX_HEAD + """    proxy_cache_path {work}/cache levels=1:2 keys_zone=lt:10m max_size=256m inactive=60m use_temp_path=off;
    open_file_cache max=1024 inactive=600s;
    open_file_cache_valid 600s;
    upstream backend {{ server 127.0.0.1:{up}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache lt;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""

TOLLGATE_CACHE_CONF = TOLLGATE_BASE + """cache: {{ max_size: 64MiB, max_object_size: 1MiB }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: origin, cache: {{ default_ttl: 10m }} }}
"""


def warm(port, header, hit_value):
    """Requests until the proxy answers from its cache."""
    for _ in range(50):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        r = c.getresponse()
        body = r.read()
        status = r.getheader(header) or ""
        c.close()
        if body != BODY:
            raise SystemExit(f"port {port}: unexpected body")
        if status.startswith(hit_value):
            return
        time.sleep(0.05)
    raise SystemExit(f"port {port}: never answered from its cache")


def main():
    args = arguments(__doc__, 8)
    nginx, tollgate, work, procs = prepare("tollgate-cache.", not args.no_build)
    with open(f"{work}/upstream.conf", "w") as f:
        f.write(UPSTREAM_CONF.format(work=work, port=UP_PORT, body=BODY.decode()))
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(NGINX_CACHE_CONF.format(work=work, port=NGINX_PORT, up=UP_PORT))
    with open(f"{work}/tollgate.yaml", "w") as f:
        f.write(TOLLGATE_CACHE_CONF.format(port=TOLLGATE_PORT, admin=TOLLGATE_PORT + 10, up=UP_PORT))
    try:
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        wait_ready(UP_PORT)
        n = procs.start("nginx", [nginx, "-c", f"{work}/nginx.conf"], 0, f"{work}/nginx.log")
        t = procs.start("tollgate", [tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"], 0,
                        f"{work}/tollgate.log")
        wait_ready(NGINX_PORT)
        wait_ready(TOLLGATE_PORT)
        warm(NGINX_PORT, "X-Cache-Status", "HIT")
        warm(TOLLGATE_PORT, "Cache-Status", "tollgate; hit")
        results = side_by_side({
            "nginx proxy_cache": (n.pid, lambda secs: wrk(NGINX_PORT, args.conns, secs, 1)),
            "tollgate cache": (t.pid, lambda secs: wrk(TOLLGATE_PORT, args.conns, secs, 1)),
        }, args)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    ratio_table(results, "nginx proxy_cache",
                f"Cache hits, 1 KiB object: {args.conns} connections, {args.rounds} rounds x {args.duration}s "
                f"(wrk, 1 thread); medians; ratios paired per round against NGINX proxy_cache")
    log("done")


if __name__ == "__main__":
    main()
