#!/usr/bin/env bash
# A ZooKeeper ensemble on loopback, to compare doozer with (see
# scripts/bench-zk.sh): MEMBERS (3, or 1 for a standalone server) JVMs of
# Debian's zookeeper package (`apt-get install -y zookeeper`), server I on
# NETI (NET default 127.0.77.): client port 2181, quorum port 2888 and
# election port 3888 on that address. Everything a run leaves (configs,
# logs, PIDs, and the data directories: snapshots and the transaction log,
# so its fsyncs cost what a tmpfs's do) is under /dev/shm/zk-cluster-NET,
# made empty at each start.
#
#   start [NET]   starts the servers, waits (up to 60 s) until each answers
#                 `srvr` as leader, follower or standalone, and prints the
#                 leader's client address (`leader: NETI:2181`)
#   leader [NET]  prints the leader's address of a running ensemble
#   stop [NET]    stops the servers the start recorded (only those PIDs,
#                 and only if they still run this ensemble's config), and
#                 removes the data
#
#   MEMBERS=1|3      servers (default 3)
#   ZK_HEAP=512m     each JVM's heap (-Xms and -Xmx)
#   ZK_TICK=2000     tickTime in ms (session time-outs are 2 to 20 ticks)
#   ZK_LOG_LEVEL=..  slf4j-simple's level (default warn: no log line per
#                    session in the figures); the logs are nI/server.log
#   ZK_JAVA_OPTS=..  more JVM flags
#   ZK_CLASSPATH=..  where ZooKeeper's classes are (default Debian's jars)
# Usage: [MEMBERS=1|3] [ZK_HEAP=..] scripts/zk-cluster.sh start|leader|stop [NET]
set -euo pipefail
cmd=${1:-}; net=${2:-127.0.77.}
members=${MEMBERS:-3}
case $members in 1|3) ;; *) echo "MEMBERS must be 1 or 3" >&2; exit 2 ;; esac
state=/dev/shm/zk-cluster-${net%.}
classpath=${ZK_CLASSPATH:-/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar}

# `srvr` (a four-letter word) to NET$1's client port; its answer, or
# nothing. Bash's /dev/tcp: no netcat needed.
srvr() {
  ( exec 3<>"/dev/tcp/${net}$1/2181" && printf srvr >&3 && timeout 2 cat <&3 ) 2>/dev/null || true
}

# Servers of the running ensemble (from its recorded PIDs).
count() { [ -f "$state/pids" ] && wc -l <"$state/pids" || echo 0; }

# Prints `leader: ADDR` once every server answers with a mode (up to $1
# seconds); fails otherwise.
wait_leader() {
  local n i out leader modes
  n=$(count)
  [ "$n" -gt 0 ] || { echo "no ensemble recorded in $state" >&2; return 1; }
  for _ in $(seq $(($1 * 10))); do
    leader=""; modes=0
    for i in $(seq "$n"); do
      out=$(srvr "$i")
      case $out in
        *"Mode: leader"*|*"Mode: standalone"*) leader=${net}$i:2181; modes=$((modes + 1)) ;;
        *"Mode: follower"*) modes=$((modes + 1)) ;;
      esac
    done
    if [ "$modes" = "$n" ] && [ -n "$leader" ]; then
      echo "leader: $leader"
      return 0
    fi
    sleep 0.1
  done
  echo "the ensemble on ${net}1..$n did not come up; logs in $state/n*/server.log" >&2
  return 1
}

# Whether PID $1 is still the JVM of server $2 of this ensemble.
ours() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$state/n$2/zoo.cfg"; }

stop() {
  local i=0 p
  [ -f "$state/pids" ] || return 0
  while read -r p; do
    i=$((i + 1))
    if ours "$p" "$i"; then kill "$p" 2>/dev/null || true; fi
  done <"$state/pids"
  # Up to 5 s for them to go, then SIGKILL.
  for _ in $(seq 50); do
    i=0; local left=0
    while read -r p; do i=$((i + 1)); ours "$p" "$i" && left=1; done <"$state/pids"
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  i=0
  while read -r p; do
    i=$((i + 1))
    if ours "$p" "$i"; then kill -9 "$p" 2>/dev/null || true; fi
  done <"$state/pids"
  rm -f "$state/pids"
  rm -rf "$state"/n*/data
}

start() {
  local i
  command -v java >/dev/null || { echo "java not found" >&2; exit 1; }
  [ -f "${classpath%%:*}" ] || { echo "no ${classpath%%:*}: apt-get install -y zookeeper" >&2; exit 1; }
  if [ "$(count)" -gt 0 ]; then
    echo "an ensemble on $net is recorded in $state; stop it first" >&2
    exit 1
  fi
  rm -rf "$state"
  for i in $(seq "$members"); do
    mkdir -p "$state/n$i/data"
    echo "$i" >"$state/n$i/data/myid"
    {
      echo "tickTime=${ZK_TICK:-2000}"
      echo "initLimit=10"
      echo "syncLimit=5"
      echo "dataDir=$state/n$i/data"
      echo "clientPort=2181"
      echo "clientPortAddress=${net}$i"
      # The bench opens every connection from one address.
      echo "maxClientCnxns=0"
      # No Jetty admin server (they would all want port 8080).
      echo "admin.enableServer=false"
      echo "4lw.commands.whitelist=*"
      if [ "$members" -gt 1 ]; then
        for j in $(seq "$members"); do echo "server.$j=${net}$j:2888:3888"; done
      fi
    } >"$state/n$i/zoo.cfg"
    # shellcheck disable=SC2086
    java -Xms"${ZK_HEAP:-512m}" -Xmx"${ZK_HEAP:-512m}" ${ZK_JAVA_OPTS:-} \
      -Dorg.slf4j.simpleLogger.defaultLogLevel="${ZK_LOG_LEVEL:-warn}" \
      -Dzookeeper.log.dir="$state/n$i" \
      -cp "$classpath" org.apache.zookeeper.server.quorum.QuorumPeerMain "$state/n$i/zoo.cfg" \
      >"$state/n$i/server.log" 2>&1 </dev/null &
    echo $! >>"$state/pids"
  done
  if ! wait_leader 60; then
    stop
    exit 1
  fi
}

case $cmd in
  start) start ;;
  leader) wait_leader 10 ;;
  stop) stop ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
