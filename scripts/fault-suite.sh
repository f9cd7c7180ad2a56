#!/usr/bin/env bash
# The fault suite's long form (issue 11): every nemesis (kill, pause,
# partition, churn, restart) and all of them combined, on a cluster of three
# members and a slave in network namespaces, clients on every node, each
# history judged by the project's linearizability checker. Needs root.
# Prints one summary line per run and a total; a failing run's history,
# watch streams, report and node logs are saved under
# target/faults/<nemesis>-seed<S>/ (the line says where).
#
# Usage: scripts/fault-suite.sh [SEEDS [SECS]]
#   SEEDS  a count (20 = seeds 1..20, the default) or a list (4,9)
#   SECS   seconds per run (default 60)
# Environment: FAULT_NEMESES (comma list, default all six), FAULT_PARALLEL
# (runs at once, default 2), FAULT_DOOZERD_ARGS (extra flags for every node).
# 20 seeds x 6 nemeses x 60 s is 120 runs: about 70 minutes at 2 at once.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
export FAULT_SEEDS=${1:-${FAULT_SEEDS:-20}}
export FAULT_SECS=${2:-${FAULT_SECS:-60}}
export FAULT_PARALLEL=${FAULT_PARALLEL:-2}
command -v ip >/dev/null || { echo "fault-suite: iproute2 (ip) is missing" >&2; exit 1; }
command -v iptables >/dev/null || { echo "fault-suite: iptables is missing" >&2; exit 1; }
cargo build --release --tests --quiet
log=$(mktemp /tmp/fault-suite.XXXXXX)
status=0
cargo test --release --quiet --test faults faults_long -- --ignored --nocapture >"$log" 2>&1 || status=$?
grep -E '^faults ' "$log" | grep -v '^faults total' || true
grep -E '^faults total' "$log" || { echo "fault-suite: no total (the test did not finish); output in $log"; exit 1; }
if [ "$status" -ne 0 ]; then
  echo "fault-suite: FAILED (full output in $log)"
  exit "$status"
fi
rm -f "$log"
