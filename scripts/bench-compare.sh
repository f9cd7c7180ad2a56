#!/usr/bin/env bash
# Two builds side by side, the way every figure in a performance note is
# taken: OLD and NEW (each a git commit, or a directory holding doozerd and
# doozer binaries) are run alternately OLD, NEW, OLD, NEW, ... ROUNDS times
# for each case, each run a fresh cluster of scripts/bench-cluster.sh, and a
# markdown table gives the median ops/s, p50, p99 and server CPU per
# operation (all nodes' user + system time over the run) of each side and
# the NEW/OLD ratio.
#
# A commit is built once (release, in a temporary git worktree) into
# $BUILD_ROOT/<commit> (default /var/tmp/doozer-bench-build), and the
# binaries there are reused by later runs.
#
#   CASES="set:1 set:64 get:64"  what to run: OP:CONNS, OP one of set, get,
#                                mixed (default as shown)
#   ROUNDS=3     runs of each side per case
#   SECS=10      seconds per run
#   MEMBERS=3|5  cluster size (passed to bench-cluster.sh, like DATA_ROOT,
#                DOOZERD_ARGS, TLS, SLAVE and AT)
#   BENCH_ARGS   more `doozer bench` flags for every run (e.g. "-p 8")
#   CLIENT=new   the load generator for both sides: NEW's doozer (default;
#                the client is then no difference between the sides, and it
#                has -json), or `own` for each side's own (it must have -json)
#   NET_BASE=100, NETS=10  run k uses the loopback net 127.0.(NET_BASE +
#                k % NETS).S (S = 1 for OLD, 2 for NEW; nodes S1, S2, ...)
# Usage: [CASES=..] [ROUNDS=N] [SECS=N] scripts/bench-compare.sh OLD NEW
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
cases=${CASES:-set:1 set:64 get:64}
rounds=${ROUNDS:-3}
secs=${SECS:-10}
build_root=${BUILD_ROOT:-/var/tmp/doozer-bench-build}
net_base=${NET_BASE:-100}
nets=${NETS:-10}

# The directory of SPEC's binaries: SPEC itself, or SPEC's commit built.
binaries() {
  local spec=$1 sha dir src
  if [ -d "$spec" ]; then
    [ -x "$spec/doozerd" ] && [ -x "$spec/doozer" ] || { echo "$spec: no doozerd and doozer" >&2; return 1; }
    (cd "$spec" && pwd)
    return
  fi
  sha=$(git rev-parse --verify "$spec^{commit}") || return 1
  dir=$build_root/$sha
  if [ ! -x "$dir/bin/doozerd" ] || [ ! -x "$dir/bin/doozer" ]; then
    echo "building $spec ($sha) in $dir ..." >&2
    mkdir -p "$dir"
    src=$(mktemp -d "$build_root/src.XXXXXX")
    git worktree add --quiet --detach "$src" "$sha"
    if ! (cd "$src" && cargo build --release --quiet --bins --target-dir "$dir/target" >&2); then
      git worktree remove --force "$src"
      return 1
    fi
    mkdir -p "$dir/bin"
    cp "$dir/target/release/doozerd" "$dir/target/release/doozer" "$dir/bin/"
    git worktree remove --force "$src"
  fi
  echo "$dir/bin"
}

old=$(binaries "$1")
new=$(binaries "$2")
case ${CLIENT:-new} in
  new) client_old=$new/doozer; client_new=$new/doozer ;;
  own) client_old=$old/doozer; client_new=$new/doozer ;;
  *) echo "CLIENT must be new or own" >&2; exit 2 ;;
esac
results=$(mktemp)
trap 'rm -f "$results"' EXIT

# A JSON field's value from a bench summary line.
field() { sed -nE "s/.*\"$1\":([0-9.]+).*/\1/p" <<<"$2"; }
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a + 0 == 0 || a == "nan" || b == "nan") print "–"; else printf "%.2f", b / a}'; }

run=0
for round in $(seq "$rounds"); do
  for c in $cases; do
    op=${c%%:*}; conns=${c##*:}
    for side in old new; do
      if [ "$side" = old ]; then bin=$old; cl=$client_old; s=1; else bin=$new; cl=$client_new; s=2; fi
      net="127.0.$((net_base + run % nets)).$s"
      run=$((run + 1))
      line=$(CLIENT=$cl OP=$op CONNS=$conns BENCH_ARGS="-json ${BENCH_ARGS:-}" \
        bash scripts/bench-cluster.sh "$bin" "$net" "$secs" 2>/dev/null || true)
      if [ "${line:0:1}" != "{" ]; then
        echo "round $round $c $side: no result" >&2
        continue
      fi
      # Server CPU (all nodes) per operation, in microseconds.
      cpu=$(awk -v s="$(field server_cpu_s "$line")" -v o="$(field ops_per_sec "$line")" -v d="$secs" \
        'BEGIN {if (s == "" || o + 0 == 0) print "nan"; else printf "%.1f", s * 1e6 / (o * d)}')
      echo "round $round $c $side: $(field ops_per_sec "$line") ops/s, p50 $(field p50_ms "$line") ms, p99 $(field p99_ms "$line") ms, server CPU $cpu µs/op" >&2
      echo "$c $side $(field ops_per_sec "$line") $(field p50_ms "$line") $(field p99_ms "$line") $cpu" >>"$results"
    done
  done
done

echo
echo "OLD = $1, NEW = $2; medians of $rounds alternating runs of ${secs} s; ${MEMBERS:-3} members"
echo
echo "| case (op:conns) | OLD ops/s | NEW ops/s | NEW/OLD | OLD p50 ms | NEW p50 ms | NEW/OLD | OLD p99 ms | NEW p99 ms | NEW/OLD | OLD CPU µs/op | NEW CPU µs/op | NEW/OLD |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for c in $cases; do
  row="| $c"
  for col in 3 4 5 6; do
    o=$(awk -v c="$c" -v k="$col" '$1 == c && $2 == "old" {print $k}' "$results" | median)
    n=$(awk -v c="$c" -v k="$col" '$1 == c && $2 == "new" {print $k}' "$results" | median)
    row="$row | $o | $n | $(ratio "$o" "$n")"
  done
  echo "$row |"
done
