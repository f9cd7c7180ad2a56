#!/usr/bin/env bash
# One figure of the write path: a 3-member cluster of the doozerd in BIN_DIR
# on 127.x.y.1-3 (NET, default 127.0.88.), `doozer bench -op set -c 64
# -size 64 -d SECS` against the leader; prints the ops/s and p50 line, then
# stops the cluster. CONNS=N sets the connections (default 64); DATA_ROOT=DIR
# gives each node `-data-dir DIR/nI` (made empty first), e.g. on the disk
# (/var/tmp) or in memory (/dev/shm). OP=get|mixed benches reads instead;
# SLAVE=1 attaches a 4th node, a slave; AT=N benches against node N
# (1, the seed, leads; 4 is the slave); DOOZERD_ARGS adds flags to every
# doozerd (e.g. -local-reads). TLS=1 runs every node with TLS (a CA and a
# certificate per node made with scripts/make-tls-certs.sh; peer links are
# mutual TLS) and the bench client over TLS.
# Usage: [CONNS=N] [OP=..] [AT=N] [SLAVE=1] [DATA_ROOT=DIR] [DOOZERD_ARGS=..]
#        [TLS=1] scripts/bench-cluster.sh BIN_DIR [NET] [SECS]
set -euo pipefail
bin=$1; net=${2:-127.0.88.}; secs=${3:-5}
conns=${CONNS:-64}
op=${OP:-set}
at=${AT:-1}
# shellcheck disable=SC2206
extra=(${DOOZERD_ARGS:-})
client=$bin/doozer
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
  if [ -n "${DATA_ROOT:-}" ]; then rm -rf "$DATA_ROOT"/n1 "$DATA_ROOT"/n2 "$DATA_ROOT"/n3 "$DATA_ROOT"/n4; fi
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
  "$(dirname "$0")/make-tls-certs.sh" "$dir/certs" n1=${net}1 n2=${net}2 n3=${net}3 n4=${net}4 >/dev/null
  export DOOZER_TLS_CA=$dir/certs/ca.pem
fi
# shellcheck source=scripts/cluster-lib.sh
. "$(dirname "$0")/cluster-lib.sh"
# shellcheck disable=SC2046
"$bin/doozerd" -l "${net}1:8046" -w false $(data 1) $(tls 1) "${extra[@]}" >"$dir/n1.log" 2>&1 & pids+=($!)
wait_rev 1
for i in 2 3; do
  # shellcheck disable=SC2046
  "$bin/doozerd" -l "${net}$i:8046" -a "${net}1:8046" -w false $(data "$i") $(tls "$i") "${extra[@]}" >"$dir/n$i.log" 2>&1 & pids+=($!)
done
for i in 2 3; do wait_rev "$i"; done
open_member_slots
if [ "${SLAVE:-}" = 1 ]; then
  # shellcheck disable=SC2046
  "$bin/doozerd" -l "${net}4:8046" -a "${net}1:8046" -w false $(data 4) $(tls 4) "${extra[@]}" >"$dir/n4.log" 2>&1 & pids+=($!)
  wait_rev 4
fi
sleep 1
"$client" -a "$(uri "$at")" bench -op "$op" -c "$conns" -size 64 -d "$secs" 2>/dev/null | grep -E "ops/s|p50" | tr '\n' ' '
echo
