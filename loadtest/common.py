"""Shared pieces of the load scripts: tool install, process control (own
process groups, stopped by PID), readiness checks and /proc accounting.
Standard library only."""

import http.client
import re
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 17)[:1024]
UP_PORT = 18380

# The start of an upstream NGINX config: one worker, no access log, long
# keep-alive; a script adds its `server` block and closes `http`.
UPSTREAM_HEAD = """
worker_processes 1;
daemon off;
pid {work}/upstream.pid;
error_log {work}/upstream.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
"""

UPSTREAM_CONF = UPSTREAM_HEAD + """    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""


# The start of an NGINX proxy config: one worker, no access log, temp paths
# in the work directory, long keep-alive; a script adds its `upstream` and
# `server` blocks and closes `http`.
NGINX_HEAD = """
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {work}/tmp_body;
    proxy_temp_path {work}/tmp_proxy;
    fastcgi_temp_path {work}/tmp_fcgi;
    uwsgi_temp_path {work}/tmp_uwsgi;
    scgi_temp_path {work}/tmp_scgi;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
"""


# One worker, no access log, upstream `origin`: the part every load-test
# config of Tollgate shares.
TOLLGATE_SERVER = """
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  workers: 1
  access_log: {{ enabled: false }}
"""

TOLLGATE_BASE = TOLLGATE_SERVER + """upstreams:
  origin:
    endpoints: ["http://127.0.0.1:{up}"]
    pool: {{ max_idle_per_endpoint: 512 }}
"""

TOLLGATE_CONF = TOLLGATE_BASE + """routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: origin
"""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Procs:
    """Processes started here, each in its own group, stopped by PID."""

    def __init__(self):
        self.procs = {}

    def start(self, name, argv, cpu, logpath):
        out = open(logpath, "ab")
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + argv, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = p
        return p

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


def arguments(doc, duration, extra=None):
    """The options every side-by-side script takes (and `extra`'s)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=duration)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--no-build", action="store_true", help="use the existing target/dist/tollgate")
    if extra:
        extra(ap)
    return ap.parse_args()


def prepare(prefix, build):
    """Tools (and the release build), a work directory, and a process set
    that is stopped on SIGINT / SIGTERM. Returns (nginx, tollgate, work, procs)."""
    ensure_tools(build)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tollgate = os.path.join(ROOT, "target/dist/tollgate")
    work = tempfile.mkdtemp(prefix=prefix)
    os.chmod(work, 0o755)
    procs = Procs()

    def on_signal(*_):
        procs.stop_all()
        raise SystemExit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return nginx, tollgate, work, procs


def tree(root):
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(c for c, pp in parent.items() if pp == pid)
    return out


def cpu_times(root):
    """(user, system) CPU seconds of `root`'s process tree, all threads."""
    user = system = 0
    for pid in tree(root):
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            user += int(f[11])
            system += int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(root):
    return sum(cpu_times(root))


def peak_rss_mib(root):
    kb = 0
    for pid in tree(root):
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    kb += int(line.split()[1])
        except OSError:
            pass
    return kb / 1024


def wait_ready(port, timeout=15, path="/", expect=BODY, headers=None):
    """Waits until `port` answers `path` with 200 and exactly `expect`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200 and body == expect:
                return
            raise SystemExit(f"port {port}: got {r.status} with a {len(body)}-byte body, "
                             f"not the expected {len(expect)} bytes")
        except (ConnectionError, OSError):
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not answer within {timeout}s")


def parse_wrk(text):
    def us(v):
        m = re.match(r"([\d.]+)(us|ms|s)", v)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, us(lat.get("50", "nan")), us(lat.get("99", "nan")), errors + (int(non2xx.group(1)) if non2xx else 0)


def wrk(port, conns, duration, cpu, headers=()):
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=duration + 30)
    return out.stdout


def ensure_tools(build):
    missing = [t for t in ("nginx", "wrk", "taskset") if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"missing {missing}: apt-get install -y nginx-light wrk")
        log(f"installing {missing} with apt-get")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light", "wrk", "util-linux"], check=True)
    if build:
        log("building the release binary")
        subprocess.run(["cargo", "build", "--profile", "dist", "--bin", "tollgate"], cwd=ROOT, check=True)




LOAD_THREADS = 16


class Load:
    """Paced keep-alive clients; counts successes and every kind of failure."""

    def __init__(self, port, rate, seconds, path="/"):
        self.port, self.path = port, path
        self.rate, self.seconds = rate, seconds
        self.ok = 0
        self.failures = {}
        self.lock = threading.Lock()

    def fail(self, why):
        with self.lock:
            self.failures[why] = self.failures.get(why, 0) + 1

    def client(self, start, per_thread):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        interval = 1.0 / per_thread
        n = 0
        while True:
            due = start + n * interval
            if due - start >= self.seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            n += 1
            try:
                conn.request("GET", self.path)
                r = conn.getresponse()
                body = r.read()
                if r.status == 200 and body == BODY:
                    with self.lock:
                        self.ok += 1
                else:
                    self.fail(f"status {r.status}")
            except (OSError, http.client.HTTPException) as e:
                self.fail(type(e).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.close()

    def run(self):
        start = time.monotonic() + 0.2
        threads = [threading.Thread(target=self.client, args=(start + i / self.rate, self.rate / LOAD_THREADS))
                   for i in range(LOAD_THREADS)]
        for t in threads:
            t.start()
        return threads


def side_by_side(runs, args):
    """Interleaved rounds over `runs` (name -> (pid, fn(seconds) -> wrk
    output)), rotating the order each round; CPU is that of `pid`'s process
    tree. Returns name -> per-round results (req/s, latency, CPU/request)."""
    results = {name: [] for name in runs}
    order = list(runs)
    for rnd in range(args.rounds):
        for name in order[rnd % len(order):] + order[:rnd % len(order)]:
            pid, run = runs[name]
            run(args.warmup)
            c0 = cpu_seconds(pid)
            text = run(args.duration)
            c1 = cpu_seconds(pid)
            rps, p50, p99, errors = parse_wrk(text)
            reqs = rps * args.duration
            cpu_us = (c1 - c0) / reqs * 1e6 if reqs else float("nan")
            results[name].append({"rps": rps, "p50": p50, "p99": p99, "cpu_us": cpu_us, "errors": errors})
            log(f"round {rnd + 1}/{args.rounds} {name:18} req/s={rps:9.0f} p50={p50:7.0f}us "
                f"p99={p99:7.0f}us cpu/req={cpu_us:6.2f}us errors={errors}")
    return results


def ratio_table(results, base, title):
    """Prints medians and ratios paired per round against `base`."""
    import statistics
    med = statistics.median
    print(f"\n{title}\n")
    print("| run | req/s | p50 µs | p99 µs | CPU µs/req | errors | req/s × | CPU/req × |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        ratio = lambda k: med([r[k] / b[k] for r, b in zip(rows, results[base])])
        print(f"| {name} | {med([r['rps'] for r in rows]):,.0f} | {med([r['p50'] for r in rows]):,.0f} | "
              f"{med([r['p99'] for r in rows]):,.0f} | {med([r['cpu_us'] for r in rows]):.2f} | "
              f"{sum(r['errors'] for r in rows)} | {ratio('rps'):.2f} | {ratio('cpu_us'):.2f} |")
