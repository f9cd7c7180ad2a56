#!/usr/bin/env bash
# Two builds side by side: runs scripts/bench-cluster.sh alternately against
# the doozerd/doozer binaries in OLD_DIR and NEW_DIR, ROUNDS times each
# (default 3), each round on fresh loopback addresses; compare the medians.
# Usage: scripts/bench-compare.sh OLD_DIR NEW_DIR [ROUNDS]
# (e.g. copy target/release/{doozerd,doozer} aside before a change).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1; new=$2; rounds=${3:-3}
for round in $(seq "$rounds"); do
  for which in old new; do
    dir=$old; [ "$which" = new ] && dir=$new
    host=1; [ "$which" = new ] && host=2
    echo "round $round $which: $(bash scripts/bench-cluster.sh "$dir" "127.0.$((100 + round)).${host}0" 5 2>/dev/null)"
  done
done
