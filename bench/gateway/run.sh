#!/usr/bin/env bash
# Benchmarks `logicore gateway` against nginx and HAProxy with the shared harness
# (../shared/bench/gateway/run.sh) and prints that harness's report.
#
#   bench/gateway/run.sh            # from anywhere; extra arguments go to the harness
#
# Installs nginx, haproxy and wrk from Debian when missing, builds the release binary, and
# runs the harness with this directory's start-candidate.sh as the candidate.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
harness="${BENCH_HARNESS:-$root/../shared/bench/gateway/run.sh}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/logicore-target}"

missing=()
for tool in nginx haproxy wrk; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Debian starts the packaged nginx; the harness runs its own instances.
  pkill -x nginx 2>/dev/null || true
fi

echo "== building the release binary"
(cd "$root" && cargo build --release --locked -p logicore)

export LOGICORE_BIN="$CARGO_TARGET_DIR/release/logicore"
export CANDIDATE_NAME="${CANDIDATE_NAME:-logicore}"
export CANDIDATE_URL="${CANDIDATE_URL:-http://127.0.0.1:18080}"
export CANDIDATE_CMD="$here/start-candidate.sh"
cd "$root"
exec bash "$harness" "$@"
