#!/usr/bin/env bash
# Candidate command for the shared harness running the bare hyper proxy (S1 only). Build it
# first: (cd bench/gateway/bare-proxy && CARGO_TARGET_DIR=$HOME/.cache/bare-proxy-target cargo build --release)
#   CANDIDATE_NAME=bare-hyper CANDIDATE_URL=http://127.0.0.1:18080 \
#   CANDIDATE_CMD=bench/gateway/start-bare-proxy.sh SCENARIOS=S1 ../shared/bench/gateway/run.sh
set -euo pipefail
exec "${BARE_PROXY_BIN:-$HOME/.cache/bare-proxy-target/release/bare-proxy}" 127.0.0.1:18080 "$UPSTREAM_URL"
