#!/usr/bin/env python3
"""User-space instructions per proxied request, by component (callgrind).

    python3 loadtest/profile.py [--scenario plain|pipeline|h2c|all] [--requests 10000] [--warm 2000]
                                [--binary target/dist/tollgate] [--top 25]

Runs the release binary under valgrind's callgrind (`workers: 1`, CPU 0)
in front of an NGINX upstream answering 1 KiB (CPU 1), sends `--warm`
requests with h2load (16 connections; `--h1` except for h2c), zeroes the
counters, sends `--requests` more, and dumps. Only the measured requests
are in the profile, so start-up, config loading and the first connections
are left out. The same load on every build gives comparable counts: this
is how the instruction figures in loadtest/README.md are made.

Scenarios (the configs of compare.py and h2c.py):

    plain     one route, access log off: the proxy hop
    pipeline  RS256 JWT (connection memo), two local rate limits, access log on
    h2c       plain, but the clients speak HTTP/2 over cleartext (10 streams each)

Reported: instructions per request, split by the component of the
function that executed them (its demangled name's crate and module;
callgrind charges inlined code to the function it was inlined into, so
with fat LTO the split is approximate), and the most expensive functions.

Needs valgrind (apt-get install valgrind), nginx and h2load
(nghttp2-client). Slow: callgrind runs the gateway about 50x slower, so
a scenario of 10,000 requests takes a minute or so. Not part of the
test suite.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from common import BODY, ROOT, TOLLGATE_CONF, UP_PORT, UPSTREAM_CONF, Procs, log, wait_ready  # noqa: E402
from compare import PIPELINE_CONF, pipeline_token  # noqa: E402

PORT = 18420

# (component, pattern on the demangled function name); the first match wins.
COMPONENTS = [
    ("malloc/free", r"^(__libc_)?(malloc|free|calloc|realloc|cfree)\b|_int_(malloc|free|realloc)|malloc_consolidate|"
                    r"tcache|unlink_chunk|alloc::alloc::|__rust_(alloc|dealloc|realloc)|__rdl_"),
    ("memcpy/memmove/memset", r"mem(cpy|move|set|cmp)|__memcpy|__memmove|__memset|bcmp"),
    ("system-call wrappers (libc)", r"^(__libc_|__GI_)?(recv|recvfrom|send|sendto|writev|readv|read|write|"
                                    r"epoll_wait|epoll_ctl|clock_gettime|__clock_gettime|syscall)\b|__vdso|"
                                    r"__GI___clock|__GI___libc|^0x0000"),
    ("access log", r"tollgate::observability::access_log|serde_json::ser|itoa::|ryu::"),
    ("metrics", r"tollgate::observability::metrics|prometheus::"),
    ("tracing (spans/logs)", r"tollgate::observability::trace|^tracing|opentelemetry"),
    ("auth (JWT)", r"tollgate::auth|jsonwebtoken|aws_lc|base64::"),
    ("rate limiting", r"tollgate::ratelimit|governor::"),
    ("routing", r"tollgate::routing"),
    ("upstream client (codec, pool)", r"tollgate::upstream|httparse::"),
    ("request pipeline (proxy stages)", r"tollgate::proxy|tollgate::body|tollgate::access|tollgate::cache|"
                                        r"tollgate::compression"),
    ("HTTP server (hyper, h2)", r"^hyper::|<hyper::|^h2::|<h2::|hyper_util"),
    ("header maps (http)", r"^http::|<http::|^<&http|bytes::"),
    ("tokio (scheduler, I/O driver, timers)", r"^tokio::|<tokio::|^mio::|<mio::"),
    ("other tollgate", r"tollgate::"),
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def h2load(n, h2, token):
    argv = ["taskset", "-c", "1", "h2load", "-n", str(n), "-c", "16"]
    argv += ["-m", "10"] if h2 else ["--h1"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    out = run(argv + [f"http://127.0.0.1:{PORT}/"], timeout=1800).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not m or int(m.group(3)) != n:
        raise SystemExit(f"h2load: not every request succeeded:\n{out}")


def profile(binary, scenario, work, procs, args):
    conf, token = TOLLGATE_CONF, None
    if scenario == "pipeline":
        conf, token = PIPELINE_CONF, pipeline_token(work)
    with open(f"{work}/{scenario}.yaml", "w") as f:
        f.write(conf.format(port=PORT, admin=PORT + 1, up=UP_PORT))
    out = f"{work}/{scenario}.cg"
    p = procs.start(scenario, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "run",
                               "-c", f"{work}/{scenario}.yaml", "--log-level", "warn"], 0, f"{work}/{scenario}.log")
    wait_ready(PORT, timeout=120, headers={"Authorization": f"Bearer {token}"} if token else None)
    log(f"{scenario}: {args.warm} requests to warm up")
    h2load(args.warm, scenario == "h2c", token)
    run(["callgrind_control", "--zero", str(p.pid)])
    log(f"{scenario}: {args.requests} requests measured")
    h2load(args.requests, scenario == "h2c", token)
    run(["callgrind_control", "--dump", str(p.pid)])
    procs.stop(scenario)
    dumps = sorted(f for f in os.listdir(work) if f.startswith(f"{scenario}.cg") and f != f"{scenario}.cg")
    # The dump taken with --dump after --zero is the first numbered part.
    part = f"{work}/{dumps[0]}" if dumps else out
    text = run(["callgrind_annotate", "--threshold=100", "--inclusive=no", "--auto=no", part]).stdout
    if args.keep:
        shutil.copy(part, os.path.join(args.keep, f"{scenario}.callgrind"))
    return parse(text, args.requests)


def parse(text, requests):
    total = None
    funcs = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+PROGRAM TOTALS", line) or \
            re.match(r"\s*([\d,]+)\s+PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.+?):(.+?)(?: \[.*\])?$", line)
        if m and total is not None:
            funcs.append((int(m.group(1).replace(",", "")), m.group(3).strip()))
    if total is None:
        raise SystemExit("callgrind_annotate printed no totals")
    # The frames that were on the stack at --zero (main, the runtime's
    # entry) are charged the whole dump by callgrind_annotate: leave them out.
    funcs = [(ir, name) for ir, name in funcs if ir < 0.95 * total]
    # The same for other threads' entry frames (the access log's writer):
    # each shows that thread's whole cost, which its callees also show.
    entry = next((ir for ir, name in funcs if name == "start_thread"), None)
    frames = ("start_thread", "clone", "thread_start", "vtable.shim", "__rust_begin_short_backtrace")
    funcs = [(ir, name) for ir, name in funcs if not (ir == entry and any(f in name for f in frames))]
    groups = {}
    for ir, name in funcs:
        comp = next((c for c, pat in COMPONENTS if re.search(pat, name)), "other (std, core, libraries)")
        groups[comp] = groups.get(comp, 0) + ir
    groups["other (std, core, libraries)"] = groups.get("other (std, core, libraries)", 0) + total - sum(
        ir for ir, _ in funcs)
    return total / requests, {c: ir / requests for c, ir in groups.items()}, \
        sorted(((ir / requests, name) for name, ir in by_name(funcs).items()), reverse=True)


def by_name(funcs):
    """A function's cost summed over the files callgrind split it across."""
    out = {}
    for ir, name in funcs:
        out[name] = out.get(name, 0) + ir
    return out


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["plain", "pipeline", "h2c", "all"], default="all")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/dist/tollgate"))
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", metavar="DIR", help="copy each scenario's callgrind dump into DIR (for kcachegrind, "
                                                  "callgrind_annotate --tree=caller)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y valgrind nghttp2-client")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = tempfile.mkdtemp(prefix="tollgate-profile.")
    procs = Procs()
    scenarios = ["plain", "pipeline", "h2c"] if args.scenario == "all" else [args.scenario]
    results = {}
    try:
        with open(f"{work}/upstream.conf", "w") as f:
            f.write(UPSTREAM_CONF.format(work=work, port=UP_PORT, body=BODY.decode()))
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        wait_ready(UP_PORT)
        for s in scenarios:
            results[s] = profile(os.path.realpath(args.binary), s, work, procs, args)
            time.sleep(0.2)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    comps = [c for c, _ in COMPONENTS] + ["other (std, core, libraries)"]
    print(f"\nUser-space instructions per request (callgrind, {args.requests:,} requests after {args.warm:,}; "
          f"{os.path.basename(args.binary)})\n")
    print("| component | " + " | ".join(scenarios) + " |")
    print("|---|" + "---:|" * len(scenarios))
    for c in comps:
        if any(results[s][1].get(c, 0) >= 5 for s in scenarios):
            print(f"| {c} | " + " | ".join(f"{results[s][1].get(c, 0):,.0f}" for s in scenarios) + " |")
    print("| **total** | " + " | ".join(f"**{results[s][0]:,.0f}**" for s in scenarios) + " |")
    for s in scenarios:
        print(f"\nTop functions, {s} (instructions per request, self cost):\n")
        for ir, name in results[s][2][:args.top]:
            print(f"- {ir:8,.0f}  {name[:140]}")


if __name__ == "__main__":
    main()
