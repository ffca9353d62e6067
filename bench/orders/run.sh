#!/usr/bin/env bash
# Order creation through the gateway of `logicore up` (bearer-token auth at the gateway,
# validation, stock reservation in the catalog, order + outbox event + e-mail job, the worker
# and the event relay running in the same process), on SQLite and on PostgreSQL, with pgbench
# on the same PostgreSQL in the same run as the reference.
#
#   bench/orders/run.sh                    # both databases
#   BACKENDS=sqlite bench/orders/run.sh    # one
#   DURATION=30 CONNECTIONS=16 ...         # wrk settings (defaults shown)
#   LOGICORE_BIN=/path/to/logicore ...     # run that binary instead of building one
#   PROFILE=1 ...                          # then perf-record the platform under load
#                                          # into $PROFILE_DIR/orders-<backend>.perf (/tmp)
#
# Needs wrk (installed with apt-get when missing), psql and pgbench, and a PostgreSQL at
# PGURL (default postgres://postgres@127.0.0.1:5432/postgres) for the postgres run.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION="${DURATION:-30}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-2}"
PRODUCTS="${PRODUCTS:-100}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PGURL="${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_BASE="${PGURL%/*}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/logicore-target}"

if ! command -v wrk >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
if [ -n "${LOGICORE_BIN:-}" ]; then
  BIN="$LOGICORE_BIN"   # a given build (A/B runs of two binaries)
else
  cargo build --release -p logicore --locked
  BIN="$CARGO_TARGET_DIR/release/logicore"
fi
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi' EXIT
GATEWAY=127.0.0.1:18080
ADMIN_EMAIL=bench-admin@example.com
ADMIN_PASSWORD="bench admin password"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks (user + system) of every PostgreSQL server process now running.
pg_ticks() {
  local total=0 stat rest
  for stat in /proc/[0-9]*/stat; do
    read -r rest <"$stat" 2>/dev/null || continue
    case "$rest" in *"(postgres)"*) ;; *) continue ;; esac
    rest="${rest##*) }"
    set -- $rest
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}
# Busy CPU ticks of the whole machine (all but idle and iowait).
host_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
per_order() {
  python3 -c "import sys; t=(int(sys.argv[2])-int(sys.argv[1]))/int(sys.argv[3]); print(f'{sys.argv[5]}: {t:.1f} s, {1000*t/int(sys.argv[4]):.3f} ms per {sys.argv[6]}')" \
    "$1" "$2" "$(getconf CLK_TCK)" "$3" "$4" "$5"
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

login() {
  curl -sf "http://$GATEWAY/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}" | json_field access_token
}

run_orders() {
  local backend="$1" data="$WORK/$1" pid
  mkdir -p "$data"
  local env=(LOGICORE_GATEWAY__LISTEN="$GATEWAY" LOGICORE_ADMIN__LISTEN=127.0.0.1:19080
             LOGICORE_ADMIN_EMAIL="$ADMIN_EMAIL" LOGICORE_ADMIN_PASSWORD="$ADMIN_PASSWORD"
             LOGICORE_GATEWAY__ACCESS_LOG=false LOGICORE_LOG__LEVEL=warn)
  if [ "$backend" = postgres ]; then
    psql -q "$PGURL" -c "DROP DATABASE IF EXISTS logicore_orders_bench" -c "CREATE DATABASE logicore_orders_bench"
    env+=(LOGICORE_DATABASE__URL="$PG_BASE/logicore_orders_bench")
  fi
  env "${env[@]}" "$BIN" --data-dir "$data/data" up >"$data/stdout.log" 2>"$data/stderr.log" &
  pid=$!
  for _ in $(seq 1 200); do curl -sf "http://$GATEWAY/health" >/dev/null && break; sleep 0.1; done
  local admin; admin="$(login "$ADMIN_EMAIL" "$ADMIN_PASSWORD")"
  local ids=()
  for n in $(seq 1 "$PRODUCTS"); do
    ids+=("$(curl -sf "http://$GATEWAY/api/v1/products" -H "authorization: Bearer $admin" \
      -H 'content-type: application/json' \
      -d "{\"sku\":\"BENCH-$n\",\"name\":\"Pallet $n\",\"price_cents\":1990,\"currency\":\"EUR\",\"stock\":1000000000}" \
      | json_field id)")
  done
  curl -sf "http://$GATEWAY/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"buyer@example.com","password":"buyer password","name":"Buyer"}' >/dev/null
  local token; token="$(login buyer@example.com "buyer password")"
  {
    echo "local products = {"
    printf '  "%s",\n' "${ids[@]}"
    echo "}"
    cat <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer $token"
local statuses = {}
request = function()
  -- two different products (an order may not name one twice)
  local i = math.random(#products)
  local j = (i + math.random(#products - 1) - 1) % #products + 1
  local a, b = products[i], products[j]
  local body = '{"items":[{"product_id":"' .. a .. '","quantity":1},{"product_id":"' .. b .. '","quantity":2}],'
    .. '"shipping_address":{"name":"Buyer","line1":"1 Dock Road","city":"Hamburg","postal_code":"20457","country":"DE"}}'
  return wrk.format(nil, "/api/v1/orders", nil, body)
end
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status > 299 and statuses[status] <= 3 then io.write("answer " .. status .. ": " .. body .. "\n") end
end
done = function(summary, latency, requests)
  io.write(string.format("non-2xx: %d\n", summary.errors.status))
end
LUA
  } >"$data/orders.lua"
  echo "== orders on $backend: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s (two lines per order, $PRODUCTS products)"
  local cpu_before pg_before host_before
  cpu_before="$(cpu_ticks "$pid")"; pg_before="$(pg_ticks)"; host_before="$(host_ticks)"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$data/orders.lua" "http://$GATEWAY" | tee "$data/wrk.txt"
  # CPU the platform process used per order (user + system): steadier than the rate on a
  # shared host, and what an optimisation should lower. The same for the PostgreSQL server
  # processes, and for the whole machine (the platform, the database and wrk).
  local cpu_after pg_after host_after
  cpu_after="$(cpu_ticks "$pid")"; pg_after="$(pg_ticks)"; host_after="$(host_ticks)"
  local orders; orders="$(awk '/requests in/ {print $1}' "$data/wrk.txt")"
  per_order "$cpu_before" "$cpu_after" "$orders" "platform CPU" order
  if [ "$backend" = postgres ]; then per_order "$pg_before" "$pg_after" "$orders" "PostgreSQL CPU" order; fi
  per_order "$host_before" "$host_after" "$orders" "machine CPU" order
  local jobs; jobs="$(curl -sf http://127.0.0.1:19080/admin/jobs?limit=1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"])')"
  echo "jobs after the run: $jobs"
  if [ -n "${PROFILE:-}" ]; then
    echo "profiling the platform for 10 s under the same load"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d14s -s "$data/orders.lua" "http://$GATEWAY" >/dev/null &
    local load=$!
    sleep 2
    perf record -F 999 -g -p "$pid" -o "${PROFILE_DIR:-/tmp}/orders-$backend.perf" -- sleep 10 >/dev/null 2>&1
    wait "$load" || true
  fi
  kill -TERM "$pid"; wait "$pid" || true
  if [ "$backend" = postgres ]; then psql -q "$PGURL" -c "DROP DATABASE IF EXISTS logicore_orders_bench"; fi
}

run_pgbench() {
  psql -q "$PGURL" -c "DROP DATABASE IF EXISTS logicore_pgbench" -c "CREATE DATABASE logicore_pgbench"
  pgbench -q -i -s 10 "$PG_BASE/logicore_pgbench" >/dev/null 2>&1
  echo "== pgbench -c 8 -j 2 -T $DURATION -M prepared (TPC-B-like, scale 10), same PostgreSQL"
  local host_before; host_before="$(host_ticks)"
  pgbench -c 8 -j 2 -T "$DURATION" -M prepared "$PG_BASE/logicore_pgbench" 2>/dev/null | tee "$WORK/pgbench.txt" | grep -E "^(tps|latency average|number of failed)"
  local host_after; host_after="$(host_ticks)"
  per_order "$host_before" "$host_after" "$(awk '/^number of transactions actually processed/ {print $NF}' "$WORK/pgbench.txt")" "machine CPU" transaction
  psql -q "$PGURL" -c "DROP DATABASE IF EXISTS logicore_pgbench"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%FT%TZ)"
for backend in $BACKENDS; do
  run_orders "$backend"
  if [ "$backend" = postgres ]; then run_pgbench; fi
done
