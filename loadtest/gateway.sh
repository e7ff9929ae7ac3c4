#!/usr/bin/env bash
# Starts tollgate in the foreground for a load test: one worker thread,
# access log off, one route to the given upstream.
#   gateway.sh PORT UPSTREAM_HOST:PORT WORKDIR [BIN]
set -euo pipefail
port=$1 upstream=$2 workdir=$3
bin=${4:-$(dirname "$0")/../target/dist/tollgate}
cat > "$workdir/tollgate.yaml" <<YAML
server:
  listen: ["127.0.0.1:$port"]
  admin_listen: "127.0.0.1:$((port + 1000))"
  workers: 1
  access_log: { enabled: false }
upstreams:
  origin:
    endpoints: ["http://$upstream"]
    pool: { max_idle_per_endpoint: 512 }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
YAML
exec "$bin" run -c "$workdir/tollgate.yaml" --log-level warn
