#!/usr/bin/env python3
"""Response compression: a 64 KiB JSON response through Tollgate sent as it
is, and compressed with zstd, br and gzip, against NGINX sending it as it is
and with gzip, side by side in one run.

    python3 loadtest/compression.py [--rounds 3] [--duration 8] [--conns 16]

The upstream is an NGINX worker serving one 64 KiB JSON document from
memory (open_file_cache). Tollgate has one route per algorithm (default
levels: zstd 3, br 4, gzip 6) and one without compression; NGINX is set to
`gzip_comp_level 6` to match. Every client sends
`Accept-Encoding: gzip, br, zstd`. Each target's answer is checked before
measuring: its Content-Encoding, and for identity and gzip the decoded body
byte for byte. Layout as compare.py: the proxy on CPU 0, the upstream and
wrk (1 thread) on CPU 1. Reported: req/s, p50, p99, proxy CPU per request,
response bytes, ratios paired per round against Tollgate without
compression. Then the memory one compressed response holds: 200 responses
per algorithm kept open at once (an upstream that sends 16 KiB and stalls),
Tollgate's RSS before and after, divided by 200. Standard library only;
installs nginx-light and wrk when missing and builds the release binary
unless --no-build.
"""

import gzip
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time

from common import (NGINX_HEAD, TOLLGATE_SERVER, UP_PORT, UPSTREAM_HEAD, arguments, log, parse_wrk, prepare, ratio_table,
                    side_by_side)

NGINX_PORT, TOLLGATE_PORT = 18470, 18471

UPSTREAM = UPSTREAM_HEAD + """    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {work}/www;
        default_type application/json;
        etag on;
    }}
}}
"""

NGINX = NGINX_HEAD + """    upstream backend {{ server 127.0.0.1:{up}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /identity/ {{
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Accept-Encoding "";
        }}
        location /gzip/ {{
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Accept-Encoding "";
            gzip on;
            gzip_comp_level 6;
            gzip_proxied any;
            gzip_types application/json;
            gzip_min_length 1024;
            gzip_vary on;
        }}
    }}
}}
"""

TOLLGATE = TOLLGATE_SERVER + """upstreams:
  origin:
    endpoints: ["http://127.0.0.1:{up}"]
    pool: {{ max_idle_per_endpoint: 512 }}
  stall: {{ endpoints: ["http://127.0.0.1:{stall}"] }}
routes:
  - {{ name: identity, match: {{ path_prefix: /identity }}, upstream: origin, strip_prefix: /identity }}
  - {{ name: zstd, match: {{ path_prefix: /zstd }}, upstream: origin, strip_prefix: /zstd, compression: {{ algorithms: [zstd] }} }}
  - {{ name: br, match: {{ path_prefix: /br }}, upstream: origin, strip_prefix: /br, compression: {{ algorithms: [br] }} }}
  - {{ name: gzip, match: {{ path_prefix: /gzip }}, upstream: origin, strip_prefix: /gzip, compression: {{ algorithms: [gzip] }} }}
  # Every held response compressed: max_concurrent (default 128) above HELD.
  - {{ name: held, match: {{ path_prefix: /held }}, upstream: stall, compression: {{ max_concurrent: 1000 }} }}
"""

ACCEPT = "gzip, br, zstd"
STALL_PORT = UP_PORT + 1
HELD = 200


def stalling_upstream(release, doc):
    """Answers every request with a chunked head and 16 KiB of the
    document, then holds the response open until `release` is set."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", STALL_PORT))
    srv.listen(1024)

    def serve(conn):
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                more = conn.recv(4096)
                if not more:
                    return
                buf += more
            part = doc[:16384]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + f"{len(part):x}\r\n".encode() + part + b"\r\n")
            release.wait()
            try:
                conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def held_memory(pid, path, coding):
    """KiB of Tollgate's RSS per compressed response held open."""
    time.sleep(0.5)
    before = rss_kib(pid)
    clients = []
    for _ in range(HELD):
        c = socket.create_connection(("127.0.0.1", TOLLGATE_PORT))
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nAccept-Encoding: {coding}\r\n\r\n".encode())
        clients.append(c)
    for c in clients:
        c.settimeout(10)
        head = c.recv(65536).lower()
        encoded = b"content-encoding: " + coding.encode() in head
        if encoded == (coding == "identity") or not head.startswith(b"http/1.1 200"):
            raise SystemExit(f"{path}: not {coding}: {head[:200]!r}")
    time.sleep(0.5)
    after = rss_kib(pid)
    return clients, (after - before) / HELD


def document():
    """64 KiB of API-like JSON (seeded: the same bytes every run)."""
    rnd = random.Random(17)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    items, out = [], b""
    i = 0
    while True:
        items.append({
            "id": i,
            "sku": f"SKU-{rnd.randrange(10**6):06d}",
            "name": " ".join(rnd.choice(words) for _ in range(3)),
            "price": round(rnd.uniform(1, 500), 2),
            "stock": rnd.randrange(1000),
            "tags": rnd.sample(words, 3),
            "active": rnd.random() < 0.8,
            "updated": f"2026-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T{rnd.randrange(24):02d}:00:00Z",
        })
        out = json.dumps({"items": items}, separators=(",", ":")).encode()
        if len(out) >= 64 * 1024 - 200:
            break
        i += 1
    return out + b" " * (64 * 1024 - len(out))


def check(port, path, want_encoding, doc):
    """The target answers with `want_encoding`; identity and gzip bodies
    decode to the document. Returns the response size in bytes."""
    deadline = time.time() + 15
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path, headers={"Accept-Encoding": ACCEPT})
            r = c.getresponse()
            body = r.read()
            c.close()
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"port {port} did not answer")
            time.sleep(0.1)
    got = r.getheader("Content-Encoding")
    if r.status != 200 or got != want_encoding:
        raise SystemExit(f"{port}{path}: status {r.status}, Content-Encoding {got}, wanted {want_encoding}")
    plain = {None: lambda b: b, "gzip": gzip.decompress}.get(got)
    if plain and plain(body) != doc:
        raise SystemExit(f"{port}{path}: the decoded body differs from the document")
    return len(body)


def wrk(port, path, conns, secs):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency",
                          "-H", f"Accept-Encoding: {ACCEPT}", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=secs + 30)
    rps, *_ = parse_wrk(out.stdout)
    if rps == 0:
        raise SystemExit(out.stdout + out.stderr)
    return out.stdout


def main():
    args = arguments(__doc__, 8)
    nginx, tollgate, work, procs = prepare("tollgate-compression.", not args.no_build)
    doc = document()
    os.makedirs(f"{work}/www", exist_ok=True)
    with open(f"{work}/www/doc.json", "wb") as f:
        f.write(doc)
    with open(f"{work}/upstream.conf", "w") as f:
        f.write(UPSTREAM.format(work=work, port=UP_PORT))
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(NGINX.format(work=work, port=NGINX_PORT, up=UP_PORT))
    with open(f"{work}/tollgate.yaml", "w") as f:
        f.write(TOLLGATE.format(port=TOLLGATE_PORT, admin=TOLLGATE_PORT + 10, up=UP_PORT, stall=STALL_PORT))
    release = threading.Event()
    stall = stalling_upstream(release, doc)
    memory = {}
    try:
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        n = procs.start("nginx", [nginx, "-c", f"{work}/nginx.conf"], 0, f"{work}/nginx.log")
        t = procs.start("tollgate", [tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"], 0,
                        f"{work}/tollgate.log")
        targets = {
            "tollgate identity": (t.pid, TOLLGATE_PORT, "/identity/doc.json", None),
            "tollgate zstd": (t.pid, TOLLGATE_PORT, "/zstd/doc.json", "zstd"),
            "tollgate br": (t.pid, TOLLGATE_PORT, "/br/doc.json", "br"),
            "tollgate gzip": (t.pid, TOLLGATE_PORT, "/gzip/doc.json", "gzip"),
            "nginx identity": (n.pid, NGINX_PORT, "/identity/doc.json", None),
            "nginx gzip": (n.pid, NGINX_PORT, "/gzip/doc.json", "gzip"),
        }
        sizes = {name: check(port, path, enc, doc) for name, (_, port, path, enc) in targets.items()}
        results = side_by_side({
            name: (pid, lambda secs, port=port, path=path: wrk(port, path, args.conns, secs))
            for name, (pid, port, path, _) in targets.items()
        }, args)
        procs.stop("tollgate")
        # A fresh process per coding: memory freed by the one before would
        # be reused without raising the RSS.
        for coding in ("identity", "zstd", "br", "gzip"):
            t = procs.start("tollgate", [tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"], 0,
                            f"{work}/tollgate.log")
            check(TOLLGATE_PORT, "/identity/doc.json", None, doc)
            clients, kib = held_memory(t.pid, "/held", coding)
            memory[coding] = kib
            log(f"{HELD} {coding} responses held open: {kib:.0f} KiB each")
            release.set()
            for c in clients:
                c.close()
            procs.stop("tollgate")
            release.clear()
    finally:
        release.set()
        stall.close()
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    ratio_table(results, "tollgate identity",
                f"A 64 KiB JSON response: {args.conns} connections, {args.rounds} rounds x {args.duration}s "
                f"(wrk, 1 thread, Accept-Encoding: {ACCEPT}); medians; ratios paired per round against "
                f"Tollgate without compression")
    print("\n| run | response bytes | of 65,536 |")
    print("|---|---:|---:|")
    for name, size in sizes.items():
        print(f"| {name} | {size:,} | {size / len(doc):.1%} |")
    print(f"\n| coding | Tollgate RSS per response held open (KiB, {HELD} at once) |")
    print("|---|---:|")
    for coding, kib in memory.items():
        print(f"| {coding} | {kib:,.0f} |")
    log("done")


if __name__ == "__main__":
    main()
