#!/usr/bin/env bash
# A local cluster on 127.0.0.x: N members and M slaves, as the walk-through
# in README.md builds it by hand.
#
#   scripts/cluster.sh start [MEMBERS] [SLAVES]   (default 3 members, 1 slave)
#   scripts/cluster.sh status
#   scripts/cluster.sh stop
#
# Nodes listen on 127.0.0.1:8046, 127.0.0.2:8046, ... with their web views on
# port 8000 of the same addresses (the client port minus 46); logs and PIDs go to
# $DOOZER_CLUSTER_DIR (default /tmp/doozer-cluster). Extra doozerd flags can be
# given in DOOZERD_FLAGS (e.g. DOOZERD_FLAGS="-timeout 5").
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DOOZER_CLUSTER_DIR:-/tmp/doozer-cluster}
port=${DOOZER_CLUSTER_PORT:-8046}
web_port=$((port - 46))
bin=target/release

uri() { echo "doozer:?ca=127.0.0.1:$port"; }

wait_for() { # wait_for <tries> <command...>
  local tries=$1; shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

members_now() {
  local n=0
  for slot in $("$bin/doozer" -a "$(uri)" find /ctl/cal 2>/dev/null | grep '^/ctl/cal/'); do
    [ -n "$("$bin/doozer" -a "$(uri)" get "$slot")" ] && n=$((n + 1))
  done
  echo "$n"
}

start() {
  local members=${1:-3} slaves=${2:-1} total
  total=$((members + slaves))
  cargo build --release --quiet
  mkdir -p "$dir"
  [ -s "$dir/pids" ] && { echo "a cluster is running already ($dir/pids); stop it first" >&2; exit 1; }
  : > "$dir/pids"
  for i in $(seq 1 "$total"); do
    local addr="127.0.0.$i:$port" attach=()
    [ "$i" -gt 1 ] && attach=(-a "127.0.0.1:$port")
    # shellcheck disable=SC2086
    "$bin/doozerd" -l "$addr" -w "127.0.0.$i:$web_port" "${attach[@]}" ${DOOZERD_FLAGS:-} >"$dir/node$i.log" 2>&1 &
    echo "$! $addr http://127.0.0.$i:$web_port/" >> "$dir/pids"
    if [ "$i" -eq 1 ]; then
      wait_for 100 "$bin/doozer" -a "$(uri)" rev || { echo "the seed did not start; see $dir/node1.log" >&2; exit 1; }
    fi
  done
  for i in $(seq 2 "$total"); do
    wait_for 100 "$bin/doozer" -a "doozer:?ca=127.0.0.$i:$port" rev \
      || { echo "node $i did not start; see $dir/node$i.log" >&2; exit 1; }
  done
  for slot in $(seq 1 $((members - 1))); do
    printf '' | "$bin/doozer" -a "$(uri)" set "/ctl/cal/$slot" 0 >/dev/null
  done
  for _ in $(seq 100); do
    [ "$(members_now)" -ge "$members" ] && break
    sleep 0.1
  done
  status
}

status() {
  [ -s "$dir/pids" ] || { echo "no cluster running"; return 0; }
  echo "nodes (pid address web-view):"
  sed 's/^/  /' "$dir/pids"
  echo "member slots:"
  for slot in $("$bin/doozer" -a "$(uri)" find /ctl/cal 2>/dev/null | grep '^/ctl/cal/'); do
    local id addr
    id=$("$bin/doozer" -a "$(uri)" get "$slot")
    addr=$([ -n "$id" ] && "$bin/doozer" -a "$(uri)" get "/ctl/node/$id/addr" || true)
    echo "  $slot = ${id:-(empty)} ${addr}"
  done
  echo "export DOOZER_URI='$(uri)'"
}

stop() {
  [ -s "$dir/pids" ] || { echo "no cluster running"; return 0; }
  while read -r pid _; do
    kill "$pid" 2>/dev/null || true
  done < "$dir/pids"
  while read -r pid _; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done < "$dir/pids"
  : > "$dir/pids"
  echo "stopped"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 start [MEMBERS] [SLAVES] | status | stop" >&2; exit 2 ;;
esac
