#!/usr/bin/env bash
# Times a full restart: a 3-member cluster of the doozerd in BIN_DIR, each node
# with -data-dir under DATA_ROOT (default: a new directory in /var/tmp, on the
# machine's disk), loaded with KEYS 64-byte keys; then `kill -9` of every node,
# all three started again with the same command lines, and the time until a
# write through node 1 is acknowledged. Repeats the kill and restart ROUNDS
# times; prints each time, the data dirs' size and the log bytes per write.
# Usage: [DATA_ROOT=DIR] scripts/restart-time.sh BIN_DIR [KEYS] [ROUNDS] [NET]
set -euo pipefail
bin=$1; keys=${2:-100000}; rounds=${3:-3}; net=${4:-127.0.89.}
client=$bin/doozer
root=${DATA_ROOT:-$(mktemp -d /var/tmp/doozer-restart.XXXXXX)}
logs=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "${KEEP_LOGS:-}" ] || grep -h "resumed\|leads" "$logs"/n*.log | cut -c1-230
  rm -rf "$logs" "$root"/n1 "$root"/n2 "$root"/n3
  [ -n "${DATA_ROOT:-}" ] || rmdir "$root" 2>/dev/null || true
}
trap cleanup EXIT
# KEEP_LOGS=1: print each node's resume lines at the end.
uri() { echo "doozer:?ca=${net}$1:8046"; }
start() {
  local i=$1 extra=()
  [ "$i" = 1 ] || extra=(-a "${net}1:8046")
  "$bin/doozerd" -l "${net}$i:8046" -w "${net}$i:8000" -data-dir "$root/n$i" "${extra[@]}" \
    >>"$logs/n$i.log" 2>&1 &
  pids[$i]=$!
}
# shellcheck source=scripts/cluster-lib.sh
. "$(dirname "$0")/cluster-lib.sh"
now_ms() { date +%s%3N; }
rm -rf "$root"/n1 "$root"/n2 "$root"/n3
start 1; wait_rev 1
start 2; start 3; wait_rev 2; wait_rev 3
open_member_slots
rev0=$("$client" -a "$(uri 1)" rev)
# Each key written once before the (short) get run.
"$client" -a "$(uri 1)" bench -op get -c 64 -p 4 -keys "$keys" -size 64 -d 20 >/dev/null 2>&1
rev1=$("$client" -a "$(uri 1)" rev)
sleep 1
bytes=$(du -sb "$root/n1" | cut -f1)
metric() { curl -s "http://${net}1:8000/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
written=$(metric doozer_disk_written_bytes_total)
echo "loaded $keys keys ($((rev1 - rev0)) writes, rev $rev1); data dir of node 1: $bytes bytes;" \
  "log bytes written by node 1: $written, $((written / rev1)) per rev"
for round in $(seq "$rounds"); do
  for i in 1 2 3; do kill -9 "${pids[$i]}"; done
  wait 2>/dev/null || true
  t0=$(now_ms)
  for i in 1 2 3; do start "$i"; done
  until printf 'x' | "$client" -a "$(uri 1)" set /restart-probe-$round 0 >/dev/null 2>&1; do
    if [ $(( $(now_ms) - t0 )) -gt 30000 ]; then echo "no write within 30 s"; tail -5 "$logs"/n*.log; exit 1; fi
    sleep 0.01
  done
  t1=$(now_ms)
  have=$("$client" -a "$(uri 2)" rev)
  echo "round $round: a write was acknowledged $((t1 - t0)) ms after the restart (node 2 at rev $have)"
done
