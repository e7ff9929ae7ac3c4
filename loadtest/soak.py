#!/usr/bin/env python3
"""Soak: mixed legitimate and hostile traffic for a bounded time, with
reloads, while the gateway's memory is sampled.

    python3 loadtest/soak.py [--duration 600] [--warmup 120] [--no-build]

Starts an upstream (NGINX: 1 KiB from memory, a 1 MiB file), a WebSocket
echo server (Python), and the release `tollgate` with routes that are
plain, cached, rate limited by an API key header, and JWT-authenticated
(HS256), a WebSocket route, and an admin token. Then, at once, for
`--duration` seconds:

- legitimate traffic, every answer checked: paced HTTP/1.1 keep-alive
  clients on the plain, cached (50 URLs), limited (own keys, under the
  limit) and authenticated routes; h2 clients (h2load, prior knowledge) on
  the plain route; WebSocket tunnels exchanging a message every second;
- hostile traffic, whose answers do not count: a rate-limit key flood
  (a new 4 KiB key per request), a cache path flood (a new 2 KiB URL per
  request), and slow readers (1 MiB responses read at 1 KiB/s);
- a config reload every 10 s (admin API, with the token).

RSS (VmRSS of the gateway) is sampled every 10 s. After `--warmup`, it must
stay within 10% of its value at the end of the warm-up, and no legitimate
request may fail. Prints the samples and the counts; exits 1 otherwise.

Standard library only; installs nginx-light and nghttp2-client (h2load)
with apt-get when missing, and builds the release binary (skip with
--no-build). Every process binds 127.0.0.1 and is stopped by its PID.
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from common import BODY, ROOT, UP_PORT, Procs, ensure_tools, log, wait_ready

PORT = 18470
ADMIN = PORT + 1
WS_PORT = PORT + 2
SECRET = "soak-test-secret-of-at-least-32-bytes!!"
ADMIN_TOKEN = "soak-admin-token-0123456789"

UPSTREAM = """
worker_processes 1;
daemon off;
pid {work}/upstream.pid;
error_log {work}/upstream.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /big {{ alias {work}/big; }}
        location /cached {{ add_header Cache-Control "max-age=30"; default_type text/plain; return 200 "{body}"; }}
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""

CONFIG = """
server:
  listen: ["127.0.0.1:{port}"]
  admin: {{ listen: "127.0.0.1:{admin}", token: "{token}" }}
  access_log: {{ enabled: true }}
  limits: {{ send_timeout: 20s }}
cache: {{ max_size: 16MiB, max_object_size: 64KiB }}
upstreams:
  origin: {{ endpoints: ["http://127.0.0.1:{up}"] }}
  ws: {{ endpoints: ["http://127.0.0.1:{ws}"] }}
auth:
  providers:
    main: {{ algorithms: [HS256], secret: "{secret}" }}
rate_limits:
  per_key: {{ key: "header:x-api-key", rate: 50/s, burst: 50, max_keys: 20000 }}
routes:
  - {{ name: cached, match: {{ path_prefix: /cached }}, upstream: origin, cache: {{}} }}
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: origin, rate_limit: [per_key] }}
  - {{ name: authed, match: {{ path_prefix: /authed }}, upstream: origin, auth: {{ provider: main }} }}
  - {{ name: ws, match: {{ path_prefix: /ws }}, upstream: ws }}
  - {{ name: big, match: {{ path_prefix: /big }}, upstream: origin }}
  - {{ name: plain, match: {{ path_prefix: / }}, upstream: origin }}
{extra}"""


def token():
    def b64(d):
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": "soak", "exp": int(time.time()) + 7200}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
    return f"{head}.{claims}.{b64(sig)}"


def write_config(path, n):
    extra = f"  - {{ name: extra{n}, match: {{ path: /extra{n} }}, respond: {{ body: x }} }}\n"
    text = CONFIG.format(port=PORT, admin=ADMIN, token=ADMIN_TOKEN, up=UP_PORT, ws=WS_PORT, secret=SECRET,
                         extra=extra)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.failed = {}

    def add(self, kind, good, why=""):
        with self.lock:
            if good:
                self.ok[kind] = self.ok.get(kind, 0) + 1
            else:
                key = f"{kind}: {why}"
                self.failed[key] = self.failed.get(key, 0) + 1


def ws_echo_server(stop):
    """Answers an upgrade with 101, then echoes bytes."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", WS_PORT))
    srv.listen(128)
    srv.settimeout(0.5)

    def serve(c):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    return
                data += chunk
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    return
                c.sendall(chunk)
        except OSError:
            pass
        finally:
            c.close()

    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    srv.close()


def paced(tally, kind, until, rate, request):
    """Calls `request(conn)` at `rate` per second until `until`."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    n, start = 0, time.monotonic()
    while True:
        due = start + n / rate
        if due >= until:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        n += 1
        try:
            good, why = request(conn)
            tally.add(kind, good, why)
        except (OSError, http.client.HTTPException) as e:
            tally.add(kind, False, type(e).__name__)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    conn.close()


def get(conn, path, headers=None, want=BODY):
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    return (r.status == 200 and body == want), f"status {r.status}"


def websocket(tally, until):
    try:
        s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: soak\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        if not head.startswith(b"HTTP/1.1 101"):
            tally.add("websocket", False, head.split(b"\r\n")[0].decode())
            return
        n = 0
        while time.monotonic() < until:
            msg = f"message {n:08d}".encode()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    raise ConnectionError("closed")
                got += chunk
            tally.add("websocket", got == msg, "echo differs")
            n += 1
            time.sleep(1)
        s.close()
    except OSError as e:
        tally.add("websocket", False, type(e).__name__)


def h2load(tally, until):
    """h2 clients (prior knowledge): 40 requests over 2 connections every
    second, each answer counted."""
    if not shutil.which("h2load"):
        tally.add("h2", False, "h2load missing")
        return
    while time.monotonic() < until:
        t0 = time.monotonic()
        out = subprocess.run(["h2load", "-n", "40", "-c", "2", "-m", "4", f"http://127.0.0.1:{PORT}/"],
                             capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
        codes = re.search(r"status codes: (\d+) 2xx", out)
        total, succeeded = (int(m.group(1)), int(m.group(3))) if m else (40, 0)
        ok = min(succeeded, int(codes.group(1)) if codes else 0)
        for _ in range(ok):
            tally.add("h2", True)
        if ok < total:
            tally.add("h2", False, f"{total - ok} of {total} not 2xx")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


def flood(until, request):
    """Sends `request()` -> (path, headers) as fast as one connection
    allows (with a 2 ms pause), answers unchecked."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    while time.monotonic() < until:
        try:
            path, headers = request()
            conn.request("GET", path, headers=headers)
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        time.sleep(0.002)


def new_key():
    """A new 4 KiB rate-limit key each time."""
    return "/limited", {"x-api-key": "%032x" % random.getrandbits(128) + "k" * 4096}


def new_path():
    """A new 2 KiB cached URL each time."""
    return "/cached/flood-%032x?pad=%s" % (random.getrandbits(128), "p" * 2048), {}


def slow_reader(until):
    while time.monotonic() < until:
        try:
            s = socket.create_connection(("127.0.0.1", PORT), timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /big HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            end = min(until, time.monotonic() + 30)
            while time.monotonic() < end:
                if not s.recv(1024):
                    break
                time.sleep(1)
            s.close()
        except OSError:
            time.sleep(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=120)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    ensure_tools(not args.no_build)
    if not shutil.which("h2load") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=False)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = tempfile.mkdtemp(prefix="tollgate-soak.")
    os.chmod(work, 0o755)
    with open(f"{work}/big", "wb") as f:
        f.write(b"b" * (1 << 20))
    os.chmod(f"{work}/big", 0o644)
    config = f"{work}/tollgate.yaml"
    procs = Procs()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (procs.stop_all(), os._exit(130)))
    try:
        with open(f"{work}/upstream.conf", "w") as f:
            f.write(UPSTREAM.format(work=work, port=UP_PORT, body=BODY.decode()))
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        wait_ready(UP_PORT)
        threading.Thread(target=ws_echo_server, args=(stop,), daemon=True).start()
        write_config(config, 0)
        gw = subprocess.Popen([os.path.join(ROOT, "target/dist/tollgate"), "run", "-c", config,
                               "--log-level", "warn"], stdout=subprocess.DEVNULL,
                              stderr=open(f"{work}/tollgate.log", "wb"), start_new_session=True)
        procs.procs["tollgate"] = gw
        wait_ready(PORT)
        tally = Tally()
        start = time.monotonic()
        until = start + args.duration
        bearer = {"authorization": f"Bearer {token()}"}
        workers = []

        def run(target, *a):
            t = threading.Thread(target=target, args=a, daemon=True)
            t.start()
            workers.append(t)

        for i in range(2):
            run(paced, tally, "plain", until, 100, lambda c: get(c, "/"))
            run(paced, tally, "cached", until, 100, lambda c: get(c, f"/cached/{random.randrange(50)}"))
            run(paced, tally, "limited", until, 20, lambda c, i=i: get(c, "/limited", {"x-api-key": f"legit-{i}"}))
            run(paced, tally, "authed", until, 50, lambda c: get(c, "/authed", bearer))
        for _ in range(4):
            run(websocket, tally, until)
        run(h2load, tally, until)
        run(flood, until, new_key)
        run(flood, until, new_path)
        for _ in range(4):
            run(slow_reader, until)
        samples, reloads, n = [], {"applied": 0, "refused": 0}, 0
        next_sample = start
        while time.monotonic() < until:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((round(now - start), rss_mib(gw.pid)))
                log(f"t={samples[-1][0]:4d}s rss={samples[-1][1]:6.1f} MiB ok={sum(tally.ok.values())} "
                    f"failed={sum(tally.failed.values())}")
                next_sample += 10
            n += 1
            write_config(config, n)
            c = http.client.HTTPConnection("127.0.0.1", ADMIN, timeout=10)
            c.request("POST", "/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
            r = c.getresponse()
            r.read()
            reloads["applied" if r.status == 200 else "refused"] += 1
            time.sleep(max(0.0, min(10.0, until - time.monotonic())))
        stop.set()
        for t in workers:
            t.join(timeout=60)
        samples.append((round(time.monotonic() - start), rss_mib(gw.pid)))
        base = next((rss for t, rss in samples if t >= args.warmup), samples[-1][1])
        after = [rss for t, rss in samples if t >= args.warmup]
        peak = max(after) if after else base
        print("\nRSS every 10 s (MiB): " + " ".join(f"{t}s={rss:.1f}" for t, rss in samples))
        print(f"after warm-up ({args.warmup}s): start {base:.1f} MiB, peak {peak:.1f} MiB "
              f"({(peak / base - 1) * 100:+.1f}%)")
        print("legitimate requests ok:", json.dumps(tally.ok, sort_keys=True))
        print("legitimate requests failed:", json.dumps(tally.failed, sort_keys=True) if tally.failed else 0)
        print(f"reloads: {reloads['applied']} applied, {reloads['refused']} refused")
        bad = tally.failed or reloads["refused"] or peak > base * 1.10
        print("RESULT:", "FAIL" if bad else "PASS")
        raise SystemExit(1 if bad else 0)
    finally:
        stop.set()
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
