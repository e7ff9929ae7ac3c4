#!/usr/bin/env python3
"""The cost of JWT authentication: one Tollgate, the same upstream, three
routes side by side in one run.

    python3 loadtest/auth.py [--rounds 5] [--duration 8] [--conns 64]

Runs (all to the same upstream, an NGINX answering 1 KiB from memory):

    /public          no auth; the token is sent and forwarded unread
    /auth            RS256 (2048-bit key, local JWKS file), cache on; each
                     connection resends its one token (as a client holding an
                     access token does): the per-connection memo answers
    /auth (rotating) the same route, but every request carries another of 200
                     tokens: the shared verified-token cache (moka) answers
    /auth-nocache    the same rules with the cache off: every request verifies
                     the RS256 signature (the cost the cache saves)

Every run sends a token of the same size, so they differ only in what the
gateway does with it. The rotating run builds each request in wrk's Lua,
which costs wrk (on CPU 1) time too: read its CPU per request, not its req/s. Layout as compare.py: Tollgate (`workers: 1`) pinned to
CPU 0, the upstream and wrk (1 thread) on CPU 1. Rounds are interleaved with
the route order rotated each round; reported: req/s, p50, p99, Tollgate's
CPU time per request, and ratios to /public paired per round (medians).

The RSA key and the token are made here with the standard library only
(Miller-Rabin primes, PKCS#1 v1.5 signature), so the script needs nothing
but Python 3, nginx-light and wrk (installed with apt-get when missing).
"""

import base64
import hashlib
import http.client
import json
import secrets
import shutil
import subprocess
import time

from common import (arguments, TOLLGATE_BASE, UP_PORT, UPSTREAM_CONF, BODY, prepare, log, ratio_table, side_by_side,
                    wait_ready)

PORT = 18410

CONF = TOLLGATE_BASE + """auth:
  providers:
    cached: {{ issuer: "https://issuer.test/", audiences: [api], algorithms: [RS256], jwks_file: jwks.json, tenant_claim: tenant }}
    uncached: {{ issuer: "https://issuer.test/", audiences: [api], algorithms: [RS256], jwks_file: jwks.json, tenant_claim: tenant, cache: {{ max_entries: 0 }} }}
routes:
  - {{ name: public, match: {{ path_prefix: /public }}, upstream: origin }}
  - {{ name: auth, match: {{ path_prefix: /auth }}, upstream: origin, auth: {{ provider: cached }} }}
  - {{ name: auth-nocache, match: {{ path_prefix: /auth-nocache }}, upstream: origin, auth: {{ provider: uncached }} }}
"""


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def is_probable_prime(n, rounds=40):
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def prime(bits):
    while True:
        c = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if is_probable_prime(c):
            return c


def rsa_key(bits=2048):
    e = 65537
    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            n = p * q
            return n, e, pow(e, -1, phi)


def key_with_jwks(work):
    """A 2048-bit RSA key (n, e, d); its public half as `work`/jwks.json, kid `k1`."""
    log("making a 2048-bit RSA key")
    n, e, d = rsa_key()
    to_b = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
    with open(f"{work}/jwks.json", "w") as f:
        json.dump({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
                             "n": b64u(to_b(n)), "e": b64u(to_b(e))}]}, f)
    return n, e, d


def rs256_token(n, e, d, kid, claims):
    header = b64u(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64u(json.dumps(claims).encode())
    message = f"{header}.{payload}".encode()
    # EMSA-PKCS1-v1_5 with the SHA-256 DigestInfo prefix (RFC 8017 §9.2).
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(message).digest()
    k = (n.bit_length() + 7) // 8
    em = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
    sig = pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")
    return f"{header}.{payload}.{b64u(sig)}"


def wrk(path, conns, duration, token, script=None):
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    if script:
        argv += ["-s", script]
    elif token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv + [f"http://127.0.0.1:{PORT}{path}"], capture_output=True, text=True,
                         timeout=duration + 30)
    return out.stdout


def check(path, token):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    r = c.getresponse()
    body = r.read()
    if r.status != 200 or body != BODY:
        raise SystemExit(f"{path}: got {r.status} {body[:200]!r}")
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    want = 200 if path == "/public" else 401
    if r.status != want:
        raise SystemExit(f"{path} without a token: got {r.status}, not {want}")
    c.close()


def main():
    args = arguments(__doc__, 8)
    nginx, tollgate, work, procs = prepare("tollgate-authtest.", not args.no_build)
    n, e, d = key_with_jwks(work)
    mint = lambda i: rs256_token(n, e, d, "k1", {"iss": "https://issuer.test/", "aud": "api", "sub": f"user-{i:03}",
                                                 "tenant": "acme", "exp": int(time.time()) + 24 * 3600})
    token = mint(0)
    many = [mint(i) for i in range(200)]
    script = f"{work}/rotate.lua"
    with open(script, "w") as f:
        f.write("local tokens = {\n" + ",\n".join(f'"{t}"' for t in many) + "\n}\nlocal i = 0\n"
                "request = function()\n  i = i % #tokens + 1\n"
                "  return wrk.format(\"GET\", \"/auth\", {[\"Authorization\"] = \"Bearer \" .. tokens[i]})\nend\n")
    with open(f"{work}/upstream.conf", "w") as f:
        f.write(UPSTREAM_CONF.format(work=work, port=UP_PORT, body=BODY.decode()))
    with open(f"{work}/tollgate.yaml", "w") as f:
        f.write(CONF.format(port=PORT, admin=PORT + 1, up=UP_PORT))
    runs = {"/public": ("/public", None), "/auth": ("/auth", None), "/auth (rotating)": ("/auth", script),
            "/auth-nocache": ("/auth-nocache", None)}
    try:
        procs.start("upstream", [nginx, "-c", f"{work}/upstream.conf"], 1, f"{work}/upstream.log")
        wait_ready(UP_PORT)
        p = procs.start("tollgate", [tollgate, "run", "-c", f"{work}/tollgate.yaml", "--log-level", "warn"], 0,
                        f"{work}/tollgate.log")
        wait_ready(PORT, path="/public")
        for path in ("/public", "/auth", "/auth-nocache"):
            check(path, token)
        check("/auth", many[-1])
        results = side_by_side({
            name: (p.pid, lambda secs, path=path, lua=lua: wrk(path, args.conns, secs, token, lua))
            for name, (path, lua) in runs.items()
        }, args)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    ratio_table(results, "/public",
                f"JWT auth cost: 1 KiB responses, {args.conns} connections, {args.rounds} rounds x {args.duration}s "
                f"(wrk, 1 thread), one Tollgate (workers: 1); medians; ratios paired per round against /public")


if __name__ == "__main__":
    main()
