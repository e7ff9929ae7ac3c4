#!/usr/bin/env python3
"""Reloads under load lose nothing.

    python3 loadtest/reload.py [--rate 2000] [--reloads 20] [--interval 0.5]

Starts an upstream (NGINX, 1 KiB from memory) and the release `tollgate`,
then offers a steady `--rate` requests/s (paced, keep-alive, several client
threads) while the config is rewritten and reloaded `--reloads` times
through `POST /reload`, alternately adding and removing a route. Every
response must be 200 with the exact body; every reload must be applied.
Prints the counts and exits 1 on any failed request or refused reload.

Standard library only; installs nginx-light with apt-get when missing and
builds the release binary (skip with --no-build).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import tempfile
import time

from common import BODY, ROOT, TOLLGATE_CONF, UP_PORT, UPSTREAM_CONF, Load, Procs, ensure_tools, log, wait_ready

PORT = 18410
EXTRA_ROUTE = """  - name: extra
    match: { path: /extra }
    respond: { body: extra }
"""
def write_config(path, extra):
    text = TOLLGATE_CONF.format(port=PORT, admin=PORT + 1, up=UP_PORT).replace("workers: 1", "workers: auto")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + (EXTRA_ROUTE if extra else ""))
    os.replace(tmp, path)


def reload(admin_port):
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    c.request("POST", "/reload")
    r = c.getresponse()
    body = json.loads(r.read() or b"{}")
    c.close()
    return r.status, body


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    ensure_tools(not args.no_build)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = tempfile.mkdtemp(prefix="tollgate-reload.")
    os.chmod(work, 0o755)
    config = f"{work}/tollgate.yaml"
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: (procs.stop_all(), os._exit(130)))
    try:
        with open(f"{work}/upstream.conf", "w") as f:
            f.write(UPSTREAM_CONF.format(work=work, port=UP_PORT, body=BODY.decode()))
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        wait_ready(UP_PORT)
        write_config(config, extra=False)
        procs.start("tollgate", [os.path.join(ROOT, "target/dist/tollgate"), "run", "-c", config, "--log-level", "warn"],
                    0, f"{work}/tollgate.log")
        wait_ready(PORT)
        seconds = 1.0 + args.reloads * args.interval + 1.0
        load = Load(PORT, args.rate, seconds)
        log(f"offering {args.rate} req/s for {seconds:.1f}s with {args.reloads} reloads every {args.interval}s")
        threads = load.run()
        time.sleep(1.2)
        applied, refused = 0, 0
        for i in range(args.reloads):
            write_config(config, extra=(i % 2 == 0))
            status, body = reload(PORT + 1)
            if status == 200 and body.get("changed"):
                applied += 1
            else:
                refused += 1
                log(f"reload {i + 1}: {status} {body}")
            time.sleep(args.interval)
        for t in threads:
            t.join()
        total = load.ok + sum(load.failures.values())
        achieved = total / seconds
        print(f"\nreload under load: {total} requests at {achieved:.0f} req/s offered over {seconds:.1f}s; "
              f"{args.reloads} reloads: {applied} applied, {refused} refused")
        print(f"ok={load.ok} failed={sum(load.failures.values())} {load.failures or ''}")
        bad = load.failures or refused or achieved < 0.95 * args.rate
        print("RESULT:", "FAIL" if bad else "PASS (0 failed requests)")
        raise SystemExit(1 if bad else 0)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
