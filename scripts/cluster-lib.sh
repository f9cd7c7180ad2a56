# Shared by scripts/bench-cluster.sh, scripts/bench-zk.sh and
# scripts/restart-time.sh (sourced). wait_rev and open_member_slots need
# $client (the doozer CLI) and uri N (node N's URI) defined first;
# server_cpu and measure_servers need the array pids of the servers' PIDs.

# Waits until node N answers REV (up to 10 s).
wait_rev() { for _ in $(seq 200); do "$client" -a "$(uri "$1")" rev >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }

# Opens /ctl/cal/1 .. /ctl/cal/(N-1) through node 1, as an operator does,
# and waits (up to 10 s) until all N slots hold a member (N defaults to 3).
open_member_slots() {
  local members=${1:-3} slot n
  for slot in $(seq 1 $((members - 1))); do printf '' | "$client" -a "$(uri 1)" set "/ctl/cal/$slot" 0 >/dev/null; done
  for _ in $(seq 100); do
    n=0
    for slot in $(seq 0 $((members - 1))); do [ -n "$("$client" -a "$(uri 1)" get "/ctl/cal/$slot" 2>/dev/null)" ] && n=$((n + 1)); done
    [ "$n" = "$members" ] && return 0
    sleep 0.1
  done
  return 1
}

# CPU seconds (user + system) all the servers in pids have used so far.
server_cpu() {
  local p total=0
  for p in "${pids[@]}"; do
    # Fields 14 and 15 of /proc/PID/stat, after the ")" that ends the name.
    total=$((total + $(sed -E 's/.*\) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# Runs the bench command "$@" (with OP idle: sleeps SECS instead) and prints
# its result line with the CPU seconds the servers used meanwhile: joined
# to the JSON line if the bench printed one (-json), else after the ops/s,
# p50 and p99 it printed.
# Usage: measure_servers OP SECS COMMAND...
measure_servers() {
  local op=$1 secs=$2 before out used
  shift 2
  before=$(server_cpu)
  if [ "$op" = idle ]; then
    sleep "$secs"
    echo "idle for $secs s: server CPU $(awk -v a="$before" -v b="$(server_cpu)" 'BEGIN {printf "%.2f", b - a}') s"
    return 0
  fi
  out=$("$@" 2>/dev/null)
  used=$(awk -v a="$before" -v b="$(server_cpu)" 'BEGIN {printf "%.2f", b - a}')
  if [ "${out:0:1}" = "{" ]; then
    echo "${out%\}},\"server_cpu_s\":$used}"
  else
    echo "$out" | grep -E "ops/s|p50|p99:" | tr '\n' ' '
    echo "server CPU ${used} s"
  fi
}
