#!/usr/bin/env bash
# One figure of the write path: a cluster of MEMBERS (3 or 5, default 3)
# doozerd of BIN_DIR on 127.x.y.1.. (NET, default 127.0.88.), then
# `doozer bench -op set -c 64 -size 64 -d SECS` against the leader; prints
# the ops/s, p50 and p99 line and the CPU seconds the servers used meanwhile
# (all nodes together), then stops the cluster.
#   CONNS=N        connections (default 64)
#   OP=get|mixed   benches reads instead of sets; OP=idle runs no load and
#                  prints the CPU the idle cluster used over SECS
#   BENCH_ARGS=..  more `doozer bench` flags (e.g. "-p 8", "-rate 20000");
#                  with -json the JSON line is printed as it is instead
#   CLIENT=FILE    the doozer CLI that runs the bench (default BIN_DIR/doozer)
#   MEMBERS=5      five voting members instead of three
#   SLAVE=1        attaches one more node, a slave (node MEMBERS+1)
#   AT=N           benches against node N (1, the seed, leads; default 1)
#   DATA_ROOT=DIR  gives each node `-data-dir DIR/nI` (made empty first),
#                  e.g. on the disk (/var/tmp) or in memory (/dev/shm)
#   DOOZERD_ARGS   adds flags to every doozerd (e.g. -local-reads)
#   TLS=1          every node with TLS (a CA and a certificate per node made
#                  with scripts/make-tls-certs.sh; peer links are mutual
#                  TLS) and the bench client over TLS
# Usage: [CONNS=N] [OP=..] [BENCH_ARGS=..] [CLIENT=..] [MEMBERS=3|5] [SLAVE=1]
#        [AT=N] [DATA_ROOT=DIR] [DOOZERD_ARGS=..] [TLS=1]
#        scripts/bench-cluster.sh BIN_DIR [NET] [SECS]
set -euo pipefail
bin=$1; net=${2:-127.0.88.}; secs=${3:-5}
conns=${CONNS:-64}
op=${OP:-set}
at=${AT:-1}
members=${MEMBERS:-3}
case $members in 3|5) ;; *) echo "MEMBERS must be 3 or 5" >&2; exit 2 ;; esac
nodes=$members
[ "${SLAVE:-}" = 1 ] && nodes=$((members + 1))
# shellcheck disable=SC2206
extra=(${DOOZERD_ARGS:-})
# shellcheck disable=SC2206
bench_args=(${BENCH_ARGS:-})
client=${CLIENT:-$bin/doozer}
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
  if [ -n "${DATA_ROOT:-}" ]; then
    for i in $(seq "$nodes"); do rm -rf "${DATA_ROOT:?}/n$i"; done
  fi
}
trap cleanup EXIT
data() {
  [ -n "${DATA_ROOT:-}" ] || return 0
  rm -rf "$DATA_ROOT/n$1"; mkdir -p "$DATA_ROOT/n$1"
  echo "-data-dir $DATA_ROOT/n$1"
}
uri() { echo "doozer:?ca=${net}$1:8046"; }
# Node N's TLS flags (none without TLS=1).
tls() {
  [ "${TLS:-}" = 1 ] || return 0
  echo "-tlscert $dir/certs/n$1.pem -tlskey $dir/certs/n$1.key --tls-ca $dir/certs/ca.pem"
}
if [ "${TLS:-}" = 1 ]; then
  names=()
  for i in $(seq "$nodes"); do names+=("n$i=${net}$i"); done
  "$(dirname "$0")/make-tls-certs.sh" "$dir/certs" "${names[@]}" >/dev/null
  export DOOZER_TLS_CA=$dir/certs/ca.pem
fi
# shellcheck source=scripts/cluster-lib.sh
. "$(dirname "$0")/cluster-lib.sh"
# shellcheck disable=SC2046
"$bin/doozerd" -l "${net}1:8046" -w false $(data 1) $(tls 1) "${extra[@]}" >"$dir/n1.log" 2>&1 & pids+=($!)
wait_rev 1
# Node N, attached through node 1.
attach() {
  # shellcheck disable=SC2046
  "$bin/doozerd" -l "${net}$1:8046" -a "${net}1:8046" -w false $(data "$1") $(tls "$1") "${extra[@]}" >"$dir/n$1.log" 2>&1 & pids+=($!)
}
for i in $(seq 2 "$members"); do attach "$i"; done
for i in $(seq 2 "$members"); do wait_rev "$i"; done
open_member_slots "$members"
# The slave comes after every slot is taken, so it gets none.
if [ "$nodes" -gt "$members" ]; then
  attach "$nodes"
  wait_rev "$nodes"
fi
sleep 1
# With OP=idle, no load: what the cluster burns on its own (ticks,
# heartbeats, pulses).
measure_servers "$op" "$secs" "$client" -a "$(uri "$at")" bench -op "$op" -c "$conns" -size 64 -d "$secs" "${bench_args[@]}"
