#!/usr/bin/env python3
"""A minimal OTLP/HTTP trace receiver for load tests: accepts
`POST /v1/traces` (protobuf), answers 200 with an empty
ExportTraceServiceResponse, and counts exports and bytes
(`GET /stats` answers them as JSON). It does not decode the spans: the
integration tests check their content; this only has to be a collector
that keeps up.

    python3 loadtest/otlp_sink.py PORT
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"exports": 0, "bytes": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        STATS["exports"] += 1
        STATS["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        body = json.dumps(STATS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
