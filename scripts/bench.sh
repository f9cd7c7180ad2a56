#!/usr/bin/env bash
# Baseline figures with the project's own load generator: a single doozerd on
# loopback, set and get at 1 and 64 connections, 64-byte values.
# Usage: scripts/bench.sh [seconds-per-run]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
addr=127.0.0.77:8046
cargo build --release --quiet
./target/release/doozerd -l "$addr" -w false >/tmp/doozer-bench-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  ./target/release/doozer -a "doozer:?ca=$addr" rev >/dev/null 2>&1 && break
  sleep 0.1
done
for op in set get; do
  for conns in 1 64; do
    echo "== $op, $conns connection(s), 64-byte values, ${secs}s"
    ./target/release/doozer -a "doozer:?ca=$addr" bench -op "$op" -c "$conns" -size 64 -d "$secs" 2>/dev/null \
      | grep -E 'ops/s|p50|p99'
  done
done
