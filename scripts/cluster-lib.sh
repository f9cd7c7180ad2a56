# Shared by scripts/bench-cluster.sh, scripts/bench-zk.sh and
# scripts/restart-time.sh (sourced). wait_rev and open_member_slots need
# $client (the doozer CLI) and uri N (node N's URI) defined first;
# server_cpu needs the array pids of the servers' PIDs.

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
