#!/usr/bin/env bash
# Replays one seed of the cluster simulation with its output shown.
#   scripts/sim-replay.sh SEED [TEST-NAME-FILTER]
# The seed is the one a failing run printed ("simulation seed N failed").
# SIM_TRACE=<node id prefix> also prints every message to and from that node.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:?usage: $0 SEED [TEST-NAME-FILTER]}
SIM_SEED="$seed" cargo test --release --test simulation "${2:-}" -- --nocapture
