#!/usr/bin/env bash
# The cache-hit run: the harness's S1 load (same pinning, nginx measured in the same rounds)
# against `logicore gateway` with the route's response cache on, so every request after the
# first is answered from the cache. Compare logicore's requests per CPU-second with nginx's
# S1 figure of the same report (issue 4's target: at least twice nginx's).
#
#   bench/gateway/cache-hit.sh          # extra arguments go to the harness
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export BENCH_CACHE=1
export CANDIDATE_NAME="${CANDIDATE_NAME:-logicore-cached}"
export SCENARIOS="${SCENARIOS:-S1}"
export PEERS="${PEERS:-nginx}"
exec "$here/run.sh" "$@"
