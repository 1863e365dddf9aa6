#!/usr/bin/env bash
# bench/bench_frontend.sh - the example front-end's GET /route under wrk, against the same
# server's GET /fixed (a constant answer of the same size, no map lookup: the HTTP server's own
# limit) in the same run. Target: /route requests/s >= 0.8x /fixed.
#
# Creates a temporary file store (one cell, one stream of 16 shards), starts
# BUILD_DIR/examples/frontend on a free loopback port, waits for /healthz ready, then runs
# ROUNDS interleaved rounds of `wrk -t2 -c32 -d5s --latency` on /fixed and /route (keys drawn
# from 1,000 by bench/frontend_keys.lua) and prints the medians of requests/s and p99, the
# ratio with PASS/MISS and one JSON line. Builds nothing; stops everything it started.
#
# Usage: bench/bench_frontend.sh [BUILD_DIR]   (default build/plain; needs -Dexamples=true)
# Environment: ROUNDS (5), DURATION (5s), THREADS (2), CONNECTIONS (32), HTTP_THREADS (2,
# the front-end's --http-threads).
# Exit status: 0 PASS, 1 MISS or failure.
set -u
cd "$(dirname "$0")/.." || exit 1
. scripts/lib.sh

BUILD=${1:-build/plain}
ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-5s} THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32} HTTP_THREADS=${HTTP_THREADS:-2}
TARGET=0.8
LUA=bench/frontend_keys.lua

for bin in "$BUILD/examples/frontend" "$BUILD/tools/shardmapctl"; do
  [ -x "$bin" ] || { echo "bench_frontend: $bin not found: build with -Dexamples=true" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "bench_frontend: wrk not found: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d /tmp/shardmap-febench.XXXXXX)
STORE="file:$work/store"
fe_pid=
cleanup() {
  [ -n "$fe_pid" ] && { kill "$fe_pid" 2>/dev/null; wait "$fe_pid" 2>/dev/null; }
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "bench_frontend: FAILED: $*" >&2; tail -n 20 "$work"/*.log >&2; exit 1; }
ctl() { local cmd=$1; shift; "$BUILD/tools/shardmapctl" "$cmd" --store "$STORE" "$@"; }

{ ctl init && ctl put-cell cell-a "127.0.0.1:$(free_port)" &&
    ctl create-stream bench --shards 16 --owner cell-a --hash md5; } >"$work/ctl.log" 2>&1 ||
  fail "creating the store"
PORT=$(free_port)
URL="http://127.0.0.1:$PORT"
"$BUILD/examples/frontend" --store "$STORE" --data-dir "$work/fe" --listen "127.0.0.1:$PORT" \
  --http-threads "$HTTP_THREADS" 2>"$work/frontend.log" &
fe_pid=$!
ready=0
for _ in $(seq 1 200); do
  curl -sf "$URL/healthz" 2>/dev/null | grep -q '"ready"' && { ready=1; break; }
  kill -0 "$fe_pid" 2>/dev/null || break
  sleep 0.1
done
[ $ready -eq 1 ] || fail "the front-end did not become ready"
route_body=$(curl -sf "$URL/route?stream=bench&key=user-1") || fail "GET /route"
fixed_body=$(curl -sf "$URL/fixed") || fail "GET /fixed (is the front-end built from this tree?)"
echo "front-end $URL ($HTTP_THREADS http threads); bodies: /route ${#route_body} B, /fixed ${#fixed_body} B"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS interleaved rounds of /fixed and /route"

# run NAME ARGS...: one wrk run; appends "rps p99_us" to $work/NAME.
run() {
  local name=$1 out line kv; local -A v=(); shift
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$LUA" "$URL" -- "$@" 2>&1)
  printf '%s\n' "$out" >>"$work/wrk-$name.log"
  line=$(printf '%s\n' "$out" | grep '^RESULT ') || fail "wrk $name: no result: $out"
  for kv in ${line#RESULT }; do v[${kv%%=*}]=${kv#*=}; done
  [ "${v[non2xx]}" -eq 0 ] || fail "wrk $name: ${v[non2xx]} non-2xx answers"
  printf '  %-6s %10.0f req/s  p99 %8.3f ms  (socket errors %s)\n' "$name" "${v[rps]}" \
    "$(awk -v u="${v[p99_us]}" 'BEGIN { print u / 1000 }')" "${v[errors]}"
  echo "${v[rps]} ${v[p99_us]}" >>"$work/$name"
}

# A short discarded warm-up of each, then the rounds in ABBA order (odd rounds /fixed first,
# even rounds /route first) so neither side always runs first.
wrk -t"$THREADS" -c"$CONNECTIONS" -d1s -s "$LUA" "$URL" -- fixed >/dev/null 2>&1
wrk -t"$THREADS" -c"$CONNECTIONS" -d1s -s "$LUA" "$URL" -- route bench >/dev/null 2>&1
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS"
  if [ $((r % 2)) -eq 1 ]; then
    run fixed fixed && run route route bench
  else
    run route route bench && run fixed fixed
  fi
done

# median FILE COLUMN
median() { cut -d' ' -f"$2" "$1" | sort -g | awk '{ v[NR] = $1 } END {
  print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fixed_rps=$(median "$work/fixed" 1) fixed_p99=$(median "$work/fixed" 2)
route_rps=$(median "$work/route" 1) route_p99=$(median "$work/route" 2)
ratio=$(awk -v a="$route_rps" -v b="$fixed_rps" 'BEGIN { printf "%.3f", a / b }')
# The median of the per-round ratios: each round's pair ran back to back, so slow drift in the
# machine's load cancels out of it (shown next to the verdict, which uses the ratio of medians).
paired=$(paste -d' ' "$work/route" "$work/fixed" | awk '{ print $1 / $3 }' >"$work/ratios" &&
  median "$work/ratios" 1 | awk '{ printf "%.3f", $1 }')
verdict=$(awk -v r="$ratio" -v t="$TARGET" 'BEGIN { print (r >= t) ? "PASS" : "MISS" }')
echo
printf 'median /fixed  %10.0f req/s  p99 %8.3f ms   (the HTTP server'"'"'s own limit)\n' \
  "$fixed_rps" "$(awk -v u="$fixed_p99" 'BEGIN { print u / 1000 }')"
printf 'median /route  %10.0f req/s  p99 %8.3f ms\n' \
  "$route_rps" "$(awk -v u="$route_p99" 'BEGIN { print u / 1000 }')"
echo "route/fixed    $ratio (target >= $TARGET): $verdict   (median of per-round ratios $paired)"
printf '{"bench":"frontend","params":{"rounds":%d,"duration":"%s","wrk_threads":%d,"connections":%d,"http_threads":%d,"keys":1000,"shards":16},"fixed":{"rps":%.1f,"p99_us":%d},"route":{"rps":%.1f,"p99_us":%d},"ratio":%s,"paired_ratio":%s,"target":%s,"result":"%s"}\n' \
  "$ROUNDS" "$DURATION" "$THREADS" "$CONNECTIONS" "$HTTP_THREADS" "$fixed_rps" "$fixed_p99" \
  "$route_rps" "$route_p99" "$ratio" "$paired" "$TARGET" "$verdict"
[ "$verdict" = PASS ]
