#!/usr/bin/env bash
# bench/fleet_cap.sh - bench_fleet under a thread cap: the outage, reproduced on purpose.
#
# The design shardmap replaces needs a thread per peer, so a cap on threads makes it fail to
# build its view (and serve a half-built one); shardmap needs its pool (2 threads) whatever
# the fleet, so it keeps working under the same cap. This script runs bench_fleet --capped
# (both designs, fleets of 100 and 1,000 nodes) with the cap enforced by one of:
#   1. a pids cgroup (cgroup v1, /sys/fs/cgroup/pids): pids.max counts every thread of the
#      process; needs root. Used when available.
#   2. RLIMIT_NPROC for a dedicated unprivileged user (root ignores RLIMIT_NPROC):
#      useradd -M shardmap-bench, then prlimit --nproc=CAP runuser -u shardmap-bench.
#   3. not root: prlimit --nproc=CAP on the current user (which also counts the user's other
#      processes, so the effective cap is lower).
# The method used is printed first and recorded in the JSON line (params.cap_method via the
# SHARDMAP_CAP_METHOD environment variable).
#
# Usage: bench/fleet_cap.sh [BUILD_DIR [CAP [bench_fleet options...]]]
#   BUILD_DIR  a configured build tree with bench/bench_fleet (default: build/plain)
#   CAP        the thread cap (default 1000: far below the baseline's 10,000 threads at 100
#              nodes, far above shardmap's 3)
# Exit status: bench_fleet's (0 when every target of shardmap passed under the cap).
set -u
cd "$(dirname "$0")/.."

build=${1:-build/plain}
cap=${2:-1000}
shift $(($# > 2 ? 2 : $#))
bin="$(pwd)/$build/bench/bench_fleet"
if [ ! -x "$bin" ]; then
  echo "fleet_cap.sh: $bin not found: build it first (ninja -C $build bench/bench_fleet)" >&2
  exit 2
fi
case "$cap" in
  '' | *[!0-9]*) echo "fleet_cap.sh: CAP must be a number, not '$cap'" >&2; exit 2 ;;
esac
args=(--capped --sizes 100,1000 --deltas 20 --runs 1 "$@")

if [ "$(id -u)" -eq 0 ] && [ -w /sys/fs/cgroup/pids ]; then
  cg=/sys/fs/cgroup/pids/shardmap-fleet-cap.$$
  mkdir "$cg" || exit 2
  trap 'rmdir "$cg" 2>/dev/null' EXIT
  echo "$cap" >"$cg/pids.max"
  echo "# cap: pids cgroup v1 $cg, pids.max=$cap" >&2
  export SHARDMAP_CAP_METHOD="pids cgroup v1, pids.max=$cap"
  # the child moves itself into the cgroup, then becomes bench_fleet
  bash -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' _ "$cg" "$bin" "${args[@]}"
  exit $?
fi

if [ "$(id -u)" -eq 0 ]; then
  user=shardmap-bench
  id "$user" >/dev/null 2>&1 || useradd -M -r -s /usr/sbin/nologin "$user" || exit 2
  echo "# cap: prlimit --nproc=$cap for unprivileged user $user" >&2
  export SHARDMAP_CAP_METHOD="RLIMIT_NPROC=$cap, user $user"
  exec prlimit --nproc="$cap" runuser -u "$user" -- env SHARDMAP_CAP_METHOD="$SHARDMAP_CAP_METHOD" \
    "$bin" "${args[@]}"
fi

echo "# cap: prlimit --nproc=$cap for $(id -un) (counts this user's other processes too)" >&2
export SHARDMAP_CAP_METHOD="RLIMIT_NPROC=$cap, user $(id -un)"
exec prlimit --nproc="$cap" "$bin" "${args[@]}"
