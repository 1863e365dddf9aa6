# scripts/lib.sh - shared by scripts/demo, scripts/test and friends. Source it; do not run it.
# Installs what is missing (Debian packages), configures and builds a meson tree, and starts
# and stops the services tests need.

SHARDMAP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Debian packages the project needs to build, test and run its examples.
SHARDMAP_PACKAGES="gcc pkg-config meson ninja-build python3 curl
  libck-dev libxxhash-dev libjemalloc-dev libcriterion-dev libssl-dev
  libcurl4-openssl-dev libjansson-dev libmicrohttpd-dev
  etcd-server etcd-client clang libclang-rt-14-dev"

log() { printf '==> %s\n' "$*" >&2; }

# Install missing packages with apt-get (as root); otherwise print the exact line and fail.
ensure_packages() {
  local missing=() p
  for p in $SHARDMAP_PACKAGES "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    return 1
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || return 1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || return 1
}

# build_tree DIR [meson options...]: configure (or reconfigure with the options) and build.
build_tree() {
  local dir=$1; shift
  mkdir -p "$(dirname "$dir")"
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$SHARDMAP_ROOT" "$@" >"$dir.setup.log" 2>&1 ||
      { cat "$dir.setup.log" >&2; return 1; }
  elif [ $# -gt 0 ]; then
    meson configure "$dir" "$@" >"$dir.setup.log" 2>&1 ||
      { cat "$dir.setup.log" >&2; return 1; }
  fi
  ninja -C "$dir" >"$dir.build.log" 2>&1 || { tail -n 60 "$dir.build.log" >&2; return 1; }
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_etcd NAME: one etcd member on free loopback ports with a temporary data directory.
# Sets SHARDMAP_TEST_ETCD=127.0.0.1:PORT and remembers the pid for stop_etcd.
SHARDMAP_ETCD_PIDS=()
SHARDMAP_ETCD_DIRS=()
start_etcd() {
  local name=${1:-n1} cport pport dir
  cport=$(free_port); pport=$(free_port)
  dir=$(mktemp -d /tmp/shardmap-etcd.XXXXXX)
  etcd --name "$name" --data-dir "$dir" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$name=http://127.0.0.1:$pport" >"$dir.log" 2>&1 &
  SHARDMAP_ETCD_PIDS+=($!)
  SHARDMAP_ETCD_DIRS+=("$dir")
  local i
  for i in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$cport/health" >/dev/null 2>&1; then
      export SHARDMAP_TEST_ETCD="127.0.0.1:$cport"
      return 0
    fi
    sleep 0.2
  done
  echo "etcd did not come up; log:" >&2; cat "$dir.log" >&2
  return 1
}

stop_etcd() {
  local p d
  for p in "${SHARDMAP_ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for d in "${SHARDMAP_ETCD_DIRS[@]}"; do rm -rf "$d" "$d.log"; done
  SHARDMAP_ETCD_PIDS=(); SHARDMAP_ETCD_DIRS=()
}
