#!/usr/bin/env bash
# Profiles `logicore gateway` under the S1 (or S2) load of the shared harness with perf's
# cpu-clock sampler (no hardware counters needed) and prints the hottest functions.
#
#   bench/gateway/profile.sh [S1|S2] [seconds]
#
# Same pinning as the harness: the gateway on CPU 0, the upstream nginx and wrk on CPU 1.
# PERF_CALLGRAPH=1 records DWARF call graphs; PERF_KEEP=/path keeps the perf.data file.
set -euo pipefail
scenario="${1:-S1}"
seconds="${2:-10}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
shared="$root/../shared/bench/gateway"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/logicore-target}"
for tool in nginx wrk perf node; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx wrk linux-perf)"; exit 1; }
done
[ -n "${LOGICORE_BIN:-}" ] || (cd "$root" && cargo build --release --locked -p logicore)

run="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$run"' EXIT
mkdir -p "$run/upstream-tmp"
body="$(cat "$shared/fixtures/products.json")"
sed -e "s|@RUN_DIR@|$run|g" -e "s|@UPSTREAM_PORT@|9101|g" "$shared/conf/upstream-nginx.conf.tmpl" \
  | BODY="$body" python3 -c 'import os,sys; sys.stdout.write(sys.stdin.read().replace("@BODY@", os.environ["BODY"]))' \
  > "$run/upstream.conf"
taskset -c 1 nginx -c "$run/upstream.conf" -p "$run" &
sleep 0.5

export BENCH_SCENARIO="$scenario" GW_AUTH=1 UPSTREAM_URL=http://127.0.0.1:9101 BENCH_RUN_DIR="$run"
export JWT_SECRET=profile-secret CANDIDATE_URL=http://127.0.0.1:18080
export LOGICORE_BIN="${LOGICORE_BIN:-$CARGO_TARGET_DIR/release/logicore}"
taskset -c 0 "$here/start-candidate.sh" &
for _ in $(seq 50); do curl -fs "$CANDIDATE_URL/health" >/dev/null && break; sleep 0.2; done
pid="$(pgrep -f -- "--config $run/logicore-$scenario" | head -1)"

wrk_env=()
if [ "$scenario" = "S2" ]; then
  token="$(node "$shared/lib/mkjwt.mjs" user 21600 "$JWT_SECRET")"
  wrk_env=(BENCH_TOKEN="$token" BENCH_ACCEPT_ENCODING=gzip)
fi
env "${wrk_env[@]}" taskset -c 1 wrk -t1 -c32 -d"$((seconds + 2))s" -s "$shared/lib/wrk-bench.lua" \
  "$CANDIDATE_URL/api/v1/products" > "$run/wrk.txt" &
sleep 1
perf record ${PERF_CALLGRAPH:+--call-graph dwarf} -e cpu-clock -F 2000 -p "$pid" -o "$run/perf.data" -- sleep "$seconds" 2>/dev/null
echo "gateway RSS under load: $(grep VmRSS "/proc/$pid/status" | awk '{print $2, $3}')"
wait %3 2>/dev/null || true
grep -E "Requests/sec|Latency" "$run/wrk.txt" || true
[ -n "${PERF_KEEP:-}" ] && cp "$run/perf.data" "$PERF_KEEP"
perf report -i "$run/perf.data" ${PERF_CALLGRAPH:+-G} --no-children --sort "${PERF_SORT:-symbol}" --stdio 2>/dev/null \
  | grep -v "^#" | grep -v "^$" | cut -c1-150 | head -"${PERF_LINES:-45}"
