#!/usr/bin/env bash
# The harness runs this once per scenario, pinned to one CPU, and stops it with SIGTERM.
# It writes the scenario's config and execs the gateway in the foreground.
#
# Matches the peers' settings: one worker thread, keep-alive upstream pool, gzip level 1;
# S1 with the access log off (like nginx), S2 with JWT verification, the role check, gzip,
# the access log and metrics all on. Request ids and metrics are always on. With
# BENCH_CACHE=1 the route's response cache is on (60 s TTL): the cache-hit run.
set -euo pipefail

scenario="${BENCH_SCENARIO:?set by the harness}"
run_dir="${BENCH_RUN_DIR:-$(mktemp -d)}/logicore-$scenario"
mkdir -p "$run_dir"
port="${CANDIDATE_URL##*:}"

access_log=false
route_cache=false
[ "${BENCH_CACHE:-0}" = "1" ] && route_cache=true
route_auth=none
roles='[]'
if [ "$scenario" = "S2" ]; then
  access_log=true
  if [ "${GW_AUTH:-1}" = "1" ]; then
    route_auth=required
    roles='["user", "admin"]'
  fi
fi

cat > "$run_dir/logicore.toml" <<TOML
[gateway]
listen = "127.0.0.1:$port"
access_log = $access_log

[gateway.compression]
gzip_level = 1

[[gateway.routes]]
prefix = "/api"
service = "bench-upstream"
auth = "$route_auth"
roles = $roles
cache = { enabled = $route_cache, ttl = "60s" }

[[gateway.auth.issuers]]
name = "bench"
hs256_secret = "${JWT_SECRET:?set by the harness}"
algorithms = ["HS256"]

[discovery.static]
bench-upstream = ["${UPSTREAM_URL:?set by the harness}"]

[admin]
listen = "127.0.0.1:0"

[log]
dir = "$run_dir/logs"
TOML

export TOKIO_WORKER_THREADS=1
exec "${LOGICORE_BIN:?set by bench/gateway/run.sh}" --config "$run_dir/logicore.toml" --data-dir "$run_dir" gateway > "$run_dir/stdout.log" 2>&1
