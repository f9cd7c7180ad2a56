#!/usr/bin/env bash
# The DzNS walk-through of README.md, step by step, for a person to watch:
#
#   1. a DzNS: an ordinary 3-member cluster on 127.0.0.1-3;
#   2. four nodes of cluster "example" on 127.0.0.11-14, started at the same
#      moment with only `-c example` and DOOZER_BOOT_URI naming the DzNS: one
#      wins the election and seeds the cluster, the others attach as slaves;
#   3. two member slots opened through DOOZER_URI='doozer:?cn=example' (the
#      client finds the cluster through the DzNS): three members, one slave,
#      and the DzNS lists exactly the members under /ctl/ns/example;
#   4. a write through the DzNS, read back on every node.
#
#   scripts/dzns-walkthrough.sh [start]   run the walk-through, leave it running
#   scripts/dzns-walkthrough.sh status    what runs, the DzNS's view, the members
#   scripts/dzns-walkthrough.sh stop      kill exactly the processes it started
#
# Nodes listen on port 8046 (DOOZER_DZNS_PORT) with their web views on port
# 8000 of the same addresses (the client port minus 46), as scripts/cluster.sh
# does; logs and PIDs go to $DOOZER_DZNS_DIR (default /tmp/doozer-dzns). Extra
# doozerd flags can be given in DOOZERD_FLAGS (e.g. DOOZERD_FLAGS="-timeout 5").
# Builds with `cargo build --release` and runs target/release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DOOZER_DZNS_DIR:-/tmp/doozer-dzns}
port=${DOOZER_DZNS_PORT:-8046}
web_port=$((port - 46))
bin=target/release
name=example
dzns_uri="doozer:?ca=127.0.0.1:$port&ca=127.0.0.2:$port&ca=127.0.0.3:$port"
cluster_hosts=(127.0.0.11 127.0.0.12 127.0.0.13 127.0.0.14)

# The DzNS, the booted cluster (found through the DzNS), one node.
dz() { "$bin/doozer" -a "$dzns_uri" "$@"; }
cn() { "$bin/doozer" -a "doozer:?cn=$name" -b "$dzns_uri" "$@"; }
at() { local host=$1; shift; "$bin/doozer" -a "doozer:?ca=$host:$port" "$@"; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
show() { printf '   $ %s\n' "$*"; }

wait_for() { # wait_for <tries of 0.1 s> <command...>
  local tries=$1; shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# start_node <label> <host> <doozerd flags...>: start in the background, log
# and record the PID.
start_node() {
  local label=$1 host=$2; shift 2
  # shellcheck disable=SC2086
  "$bin/doozerd" -l "$host:$port" -w "$host:$web_port" "$@" ${DOOZERD_FLAGS:-} \
    >"$dir/$label.log" 2>&1 &
  echo "$! $label $host:$port http://$host:$web_port/" >> "$dir/pids"
}

# How many /ctl/cal slots hold a node, as `doozer URI…` sees them.
members_via() {
  local n=0 slot
  for slot in $("$@" find /ctl/cal 2>/dev/null | grep '^/ctl/cal/'); do
    [ -n "$("$@" get "$slot" 2>/dev/null)" ] && n=$((n + 1))
  done
  echo "$n"
}

reads() { # reads <host> <path> <body>: the node has that body at path
  [ "$(at "$1" get "$2" 2>/dev/null)" = "$3" ]
}

has_members() { # has_members <n> <doozer command...>
  local want=$1; shift
  [ "$(members_via "$@")" -ge "$want" ]
}

# The DzNS's /ctl/ns/example, one "id = addr" line each.
ns_listing() {
  local path found=0
  for path in $(dz find "/ctl/ns/$name" 2>/dev/null | grep "^/ctl/ns/$name/"); do
    say "${path#/ctl/ns/}  =  $(dz get "$path")"
    found=1
  done
  [ "$found" = 1 ] || say "(nothing under /ctl/ns/$name)"
}

ns_count() {
  dz find "/ctl/ns/$name" 2>/dev/null | grep -c "^/ctl/ns/$name/" || true
}

# `doozer members` through the DzNS; /ctl/cal by hand when this doozer has no
# `members` command.
members() {
  local out
  if out=$(cn members 2>/dev/null); then
    show "doozer members"
    sed 's/^/   /' <<<"$out"
  else
    show "doozer find /ctl/cal  (slot = id addr)"
    local slot id
    for slot in $(cn find /ctl/cal 2>/dev/null | grep '^/ctl/cal/'); do
      id=$(cn get "$slot")
      say "$slot = ${id:-(empty)} $([ -n "$id" ] && cn get "/ctl/node/$id/addr" || true)"
    done
  fi
}

start() {
  cargo build --release --quiet
  mkdir -p "$dir"
  if [ -s "$dir/pids" ]; then
    echo "the walk-through is running already ($dir/pids); run '$0 stop' first" >&2
    exit 1
  fi
  local host
  for host in 127.0.0.1 127.0.0.2 127.0.0.3 "${cluster_hosts[@]}"; do
    if at "$host" rev >/dev/null 2>&1; then
      echo "something answers on $host:$port already (scripts/cluster.sh?); stop it first" >&2
      exit 1
    fi
  done
  : > "$dir/pids"
  unset DOOZER_BOOT_URI DOOZER_URI DOOZER_RWSECRET DOOZER_ROSECRET

  step "1. The DzNS: an ordinary 3-member cluster on 127.0.0.1-3"
  show "doozerd -l 127.0.0.1:$port &"
  start_node dzns1 127.0.0.1
  wait_for 100 at 127.0.0.1 rev || { echo "the DzNS seed did not start; see $dir/dzns1.log" >&2; exit 1; }
  for i in 2 3; do
    show "doozerd -l 127.0.0.$i:$port -a 127.0.0.1:$port &"
    start_node "dzns$i" "127.0.0.$i" -a "127.0.0.1:$port"
  done
  for i in 2 3; do
    wait_for 100 at "127.0.0.$i" rev || { echo "DzNS node $i did not start; see $dir/dzns$i.log" >&2; exit 1; }
  done
  for slot in 1 2; do
    show "printf '' | doozer -a 'doozer:?ca=127.0.0.1:$port' set /ctl/cal/$slot 0"
    printf '' | at 127.0.0.1 set "/ctl/cal/$slot" 0 >/dev/null
  done
  wait_for 150 has_members 3 at 127.0.0.1 \
    || { echo "the DzNS did not get 3 members; see $dir/dzns*.log" >&2; exit 1; }
  say "the DzNS has $(members_via at 127.0.0.1) members."

  step "2. Four nodes of cluster '$name' boot through it, all started at the same moment"
  export DOOZER_BOOT_URI="$dzns_uri"
  show "export DOOZER_BOOT_URI='$DOOZER_BOOT_URI'"
  for host in "${cluster_hosts[@]}"; do
    show "doozerd -c $name -l $host:$port &"
  done
  for host in "${cluster_hosts[@]}"; do
    start_node "$name-${host##*.}" "$host" -c "$name"
  done
  for host in "${cluster_hosts[@]}"; do
    # A node answers as soon as it listens, before it has joined: wait until
    # it has the cluster's name.
    if ! wait_for 300 reads "$host" /ctl/name "$name"; then
      echo "$host:$port did not boot; see $dir/$name-${host##*.}.log" >&2
      tail -5 "$dir/$name-${host##*.}.log" >&2 || true
      exit 1
    fi
  done
  say "every node now answers; what each says:"
  local seed
  seed=$(at "${cluster_hosts[0]}" get /ctl/cal/0)
  for host in "${cluster_hosts[@]}"; do
    local id
    id=$(at "$host" self)
    say "$host:$port  id $id  /ctl/name=$(at "$host" get /ctl/name)  /ctl/cal/0=$(at "$host" get /ctl/cal/0)$([ "$id" = "$seed" ] && echo '  <- the seed')"
  done
  say ""
  say "in the DzNS:"
  show "doozer -a DZNS get /ctl/boot/$name      (the election's winner, the seed)"
  say "$(dz get "/ctl/boot/$name")"
  show "doozer -a DZNS find /ctl/ns/$name       (the members of '$name'; slaves are not listed)"
  ns_listing

  step "3. Open two member slots, reaching '$name' through the DzNS"
  export DOOZER_URI="doozer:?cn=$name"
  show "export DOOZER_URI='$DOOZER_URI'"
  for slot in 1 2; do
    show "printf '' | doozer set /ctl/cal/$slot 0"
    printf '' | "$bin/doozer" set "/ctl/cal/$slot" 0 >/dev/null
  done
  wait_for 200 has_members 3 cn \
    || { echo "'$name' did not get 3 members; see $dir/$name-*.log" >&2; exit 1; }
  # The DzNS follows within a couple of seconds.
  for _ in $(seq 100); do [ "$(ns_count)" -eq 3 ] && break; sleep 0.1; done
  say "waiting slaves claimed the slots: three members, one slave."
  members
  show "doozer -a DZNS find /ctl/ns/$name"
  ns_listing

  step "4. A write through the DzNS, read on every node"
  show "printf 'hello' | doozer set /greeting 0"
  local rev
  rev=$(printf 'hello' | "$bin/doozer" set /greeting 0)
  say "rev $rev"
  for host in "${cluster_hosts[@]}"; do
    wait_for 50 reads "$host" /greeting hello || true
    say "$host:$port  /greeting = $(at "$host" get /greeting)"
  done
  if dz stat /greeting >/dev/null 2>&1; then
    say "(the DzNS has a /greeting too: it should not)"
  else
    say "(the DzNS itself has no /greeting: the write went to '$name' only)"
  fi

  step "Left running"
  sed 's/^/   /' "$dir/pids"
  say "logs in $dir; web views at the addresses above."
  say "Try:  export DOOZER_BOOT_URI='$dzns_uri' DOOZER_URI='doozer:?cn=$name'"
  say "      $bin/doozer members;  $bin/doozer watch '/**'"
  say "Stop: $0 stop"
}

status() {
  [ -s "$dir/pids" ] || { echo "the walk-through is not running"; return 0; }
  echo "processes (pid name address web-view):"
  sed 's/^/  /' "$dir/pids"
  echo "the DzNS's /ctl/boot/$name: $(dz get "/ctl/boot/$name" 2>/dev/null || echo '(none)')"
  echo "the DzNS's /ctl/ns/$name:"
  ns_listing
  members
}

stop() {
  [ -s "$dir/pids" ] || { echo "the walk-through is not running"; return 0; }
  local pid _
  # Only PIDs this script recorded, and only while they are still doozerd.
  is_ours() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q "doozerd"; }
  while read -r pid _; do
    is_ours "$pid" && kill "$pid" 2>/dev/null || true
  done < "$dir/pids"
  while read -r pid _; do
    for _ in $(seq 50); do is_ours "$pid" || break; sleep 0.1; done
    is_ours "$pid" && kill -9 "$pid" 2>/dev/null || true
  done < "$dir/pids"
  : > "$dir/pids"
  echo "stopped"
}

case "${1:-start}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 [start] | status | stop" >&2; exit 2 ;;
esac
