#!/usr/bin/env python3
"""TLS termination: Tollgate against NGINX, side by side, same certificate.

    python3 loadtest/tls.py [--rounds 3] [--duration 8] [--conns 64]

Both proxies terminate TLS (TLS 1.3, ECDSA P-256 certificate made here with
the openssl CLI; session resumption off on both, so every new connection
is a full handshake) and forward over plain HTTP/1.1 keep-alive to the same
upstream. Layout as compare.py: the proxy on CPU 0; the upstream and wrk
(1 thread) on CPU 1. Two measurements per proxy and round:

- keep-alive: `--conns` connections reused (one handshake each);
- handshakes: `Connection: close` on every request, so each request is a
  new TCP connection and a full TLS handshake (new-handshake rate).

Reported: req/s, p50, p99, proxy CPU per request, ratios paired per round
against NGINX. Installs nginx-light, wrk and openssl with apt-get when
missing; builds the release binary unless --no-build.
"""

import shutil
import subprocess
import time

from common import (NGINX_HEAD, arguments, BODY, TOLLGATE_SERVER, UP_PORT, UPSTREAM_CONF, log, prepare, ratio_table,
                    side_by_side, wait_ready)

NGINX_PORT, TOLLGATE_PORT = 18443, 18444

NGINX_TLS_CONF = NGINX_HEAD + """    upstream backend {{ server 127.0.0.1:{up}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {work}/cert.pem;
        ssl_certificate_key {work}/key.pem;
        ssl_protocols TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

TOLLGATE_TLS_CONF = TOLLGATE_SERVER.replace('listen: ["127.0.0.1:{port}"]', 'listen: ["127.0.0.1:{plain}"]\n  tls_listen: ["127.0.0.1:{port}"]') + """  tls:
    certificates: [{{ cert: cert.pem, key: key.pem }}]
    min_version: "1.3"
    alpn: ["http/1.1"]
    session_resumption: false
upstreams:
  origin:
    endpoints: ["http://127.0.0.1:{up}"]
    pool: {{ max_idle_per_endpoint: 512 }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: origin }}
"""


def wrk(port, conns, seconds, close):
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(argv + [f"https://localhost:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30)
    return out.stdout


def check(port):
    out = subprocess.run(["curl", "-sk", f"https://localhost:{port}/"], capture_output=True, timeout=10).stdout
    if out != BODY:
        raise SystemExit(f"port {port}: unexpected body {out[:80]!r}")


def ready(port):
    for _ in range(100):
        try:
            check(port)
            return
        except (SystemExit, subprocess.SubprocessError):
            time.sleep(0.1)
    check(port)


def main():
    args = arguments(__doc__, 8)
    nginx, tollgate, work, procs = prepare("tollgate-tls.", not args.no_build)
    if not shutil.which("openssl"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "openssl"], check=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-days", "2", "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem"],
                   check=True, capture_output=True)
    with open(f"{work}/upstream.conf", "w") as f:
        f.write(UPSTREAM_CONF.format(work=work, port=UP_PORT, body=BODY.decode()))
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(NGINX_TLS_CONF.format(work=work, port=NGINX_PORT, up=UP_PORT))
    with open(f"{work}/tollgate.yaml", "w") as f:
        f.write(TOLLGATE_TLS_CONF.format(plain=TOLLGATE_PORT + 10, port=TOLLGATE_PORT, admin=TOLLGATE_PORT + 1,
                                         up=UP_PORT))
    targets = {
        "nginx": (NGINX_PORT, [nginx, "-c", f"{work}/nginx.conf"]),
        "tollgate": (TOLLGATE_PORT, [tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"]),
    }
    try:
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        wait_ready(UP_PORT)
        runs = {}
        for name, (port, argv) in targets.items():
            p = procs.start(name, argv, 0, f"{work}/{name}.log")
            ready(port)
            runs[f"{name} keep-alive"] = (p.pid, lambda secs, port=port: wrk(port, args.conns, secs, False))
            runs[f"{name} handshakes"] = (p.pid, lambda secs, port=port: wrk(port, args.conns, secs, True))
        merged = side_by_side(runs, args)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    for kind in ("keep-alive", "handshakes"):
        ratio_table({n: r for n, r in merged.items() if n.endswith(kind)}, f"nginx {kind}",
                    f"TLS 1.3 termination, {kind}: {args.conns} connections, {args.rounds} rounds x "
                    f"{args.duration}s, 1 KiB responses; ratios per round against NGINX")
    log("done")


if __name__ == "__main__":
    main()
