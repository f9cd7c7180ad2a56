#!/usr/bin/env bash
# ZooKeeper's counterpart of scripts/bench-cluster.sh, for comparing the two
# with the same load generator: a fresh ensemble of MEMBERS (3, or 1) on
# NET1.. (NET default 127.0.77.; scripts/zk-cluster.sh, data on /dev/shm),
# then `doozer bench -zk -op set -c 64 -size 64 -d SECS` against the leader;
# prints the ops/s, p50 and p99 line and the CPU seconds the servers (all the
# JVMs together) used meanwhile, then stops the ensemble. Side by side:
#   OP=set CONNS=64 scripts/bench-zk.sh target/release 127.0.77. 10
#   OP=set CONNS=64 scripts/bench-cluster.sh target/release 127.0.88. 10
# A set is setData at any version (doozer: SET at rev -1), a get getData
# without a watch (doozer: GET). Reads differ: ZooKeeper serves a read
# from the server the client is connected to, from its local copy, which
# may lag the leader (not linearizable; a client needs sync() first for
# that), where doozer's GET is linearizable by default. The like-for-like
# read figure of doozer is with DOOZERD_ARGS=-local-reads.
# ZooKeeper runs in a JVM: its first seconds run interpreted code, so
# WARMUP=SECS runs the same bench that long first, unmeasured. The CPU
# figure includes the bench's setup (sessions, the creates of the keys'
# znodes, the fill before reads), as bench-cluster.sh's includes its fill.
#   CONNS=N        connections (default 64)
#   OP=get|mixed   benches reads instead of sets; OP=idle runs no load and
#                  prints the CPU the idle ensemble used over SECS
#   BENCH_ARGS=..  more `doozer bench` flags (e.g. "-p 8", "-rate 20000");
#                  with -json the JSON line is printed as it is instead
#   CLIENT=FILE    the doozer CLI that runs the bench (default BIN_DIR/doozer)
#   MEMBERS=1      one standalone server instead of three
#   AT=N           benches against server N (default: the leader, which
#                  the election picks; a follower forwards writes to it)
#   WARMUP=SECS    an unmeasured run first (default 0)
#   ZK_HEAP, ZK_TICK, ZK_LOG_LEVEL, ZK_JAVA_OPTS: see scripts/zk-cluster.sh
# Usage: [CONNS=N] [OP=..] [BENCH_ARGS=..] [CLIENT=..] [MEMBERS=3|1] [AT=N]
#        [WARMUP=SECS] scripts/bench-zk.sh BIN_DIR [NET] [SECS]
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
bin=$1; net=${2:-127.0.77.}; secs=${3:-5}
conns=${CONNS:-64}
op=${OP:-set}
# shellcheck disable=SC2206
bench_args=(${BENCH_ARGS:-})
client=${CLIENT:-$bin/doozer}
here=$(dirname "$0")
export MEMBERS=${MEMBERS:-3}
state=/dev/shm/zk-cluster-${net%.}
cleanup() { "$here/zk-cluster.sh" stop "$net" || true; }
trap cleanup EXIT
leader=$("$here/zk-cluster.sh" start "$net" | sed -n 's/^leader: //p')
[ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
if [ -n "${AT:-}" ]; then addr=${net}${AT}:2181; else addr=$leader; fi
mapfile -t pids <"$state/pids"
# shellcheck source=scripts/cluster-lib.sh
. "$here/cluster-lib.sh"
if [ "${WARMUP:-0}" != 0 ] && [ "$op" != idle ]; then
  "$client" -a "$addr" bench -zk -op "$op" -c "$conns" -size 64 -d "$WARMUP" "${bench_args[@]}" >/dev/null 2>&1
fi
sleep 1
# With OP=idle, no load: what the ensemble burns on its own (ticks, pings
# between the servers, the JVMs' own threads).
measure_servers "$op" "$secs" "$client" -a "$addr" bench -zk -op "$op" -c "$conns" -size 64 -d "$secs" "${bench_args[@]}"
