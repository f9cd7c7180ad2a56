#!/usr/bin/env bash
# Repeats the end-to-end full-cluster restart: 3 members and a slave with
# -data-dir, writers on every node, `kill -9` of every node, restart with the
# same command lines, every acknowledged write checked at its rev on every
# node. Prints each round's figures; stops at the first failure (its logs are
# kept and their path printed).
# Usage: scripts/durability-rounds.sh [ROUNDS]   (default 20)
set -euo pipefail
rounds=${1:-20}
cd "$(dirname "$0")/.."
cargo build --release --tests --quiet
for round in $(seq "$rounds"); do
  line=$(cargo test --release --quiet --test durability a_full_cluster_restart -- --nocapture 2>&1 \
    | grep -E "acknowledged writes|panicked|FAILED|logs kept" || true)
  echo "round $round/$rounds: $line"
  case $line in *acknowledged*) ;; *) echo "round $round failed"; exit 1 ;; esac
done
echo "all $rounds rounds kept every acknowledged write"
