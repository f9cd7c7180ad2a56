#!/usr/bin/env bash
# Measures how long writes stall when the leader dies: a 3-member cluster
# (plus one slave) from scripts/cluster.sh, one client writing through a
# surviving member with `doozer bench -c 1`, and `kill -9` of the leader two
# seconds in. The longest write latency of the run is the gap.
#   scripts/failover-gap.sh [runs]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
export DOOZER_CLUSTER_DIR=${DOOZER_CLUSTER_DIR:-/tmp/doozer-failover}
export DOOZER_CLUSTER_PORT=${DOOZER_CLUSTER_PORT:-8346}
port=$DOOZER_CLUSTER_PORT
cargo build --release --quiet
for run in $(seq "$runs"); do
  bash scripts/cluster.sh start 3 1 >/dev/null
  # The seed (127.0.0.1) leads a fresh cluster; write through another member.
  seed_id=$(target/release/doozer -a "doozer:?ca=127.0.0.1:$port" self)
  writer=""
  for i in 2 3 4; do
    id=$(target/release/doozer -a "doozer:?ca=127.0.0.$i:$port" self)
    for slot in $(target/release/doozer -a "doozer:?ca=127.0.0.1:$port" find /ctl/cal | grep '^/ctl/cal/'); do
      [ "$(target/release/doozer -a "doozer:?ca=127.0.0.1:$port" get "$slot")" = "$id" ] && writer=127.0.0.$i
    done
  done
  leader_pid=$(head -1 "$DOOZER_CLUSTER_DIR/pids" | cut -d' ' -f1)
  (sleep 2; kill -9 "$leader_pid") &
  result=$(target/release/doozer -a "doozer:?ca=$writer:$port" bench -op set -c 1 -d 5 2>/dev/null)
  wait
  echo "run $run: leader $seed_id killed; writes through member $writer:"
  echo "$result" | grep -E 'errors|p50|max' | sed 's/^/  /'
  bash scripts/cluster.sh stop >/dev/null
done
