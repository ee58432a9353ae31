#!/usr/bin/env bash
# Overhead of the experiment: the loopback experiment at 2/1/3 with one idle
# probe, timed against (a) the kernel-bound minimum of that timeline
# (time x (idle probes + 1) + intvl x probes = 7 s) and (b) a plain shell
# script doing the walk-through by hand with the same timings, in the same
# invocation. Goal: at most 10 s over the kernel bound, within 1.5x of the
# shell script. Run as root after scripts/bootstrap.sh (or scripts/test.sh).
#   bash benchmarks/experiment_overhead.sh [ROUNDS]
set -euo pipefail
# shellcheck source=scripts/bootstrap.sh
. "$(dirname "$0")/../scripts/bootstrap.sh"

ROUNDS=${1:-2}
TIME=2 INTVL=1 PROBES=3 IDLE=1
KERNEL_BOUND=$(( TIME * (IDLE + 1) + INTVL * PROBES ))
LAB_DIR=/run/tcplab-keepalive/bench
LAB_VARS="{\"lab_hosts\": [\"bench\"], \"lab_state_dir\": \"$LAB_DIR\", \"lab_bridge\": \"tcplabbench0\", \"lab_netns_prefix\": \"tcplab-bench-\", \"lab_network\": \"198.18.50.0/24\"}"
WORK=$(mktemp -d)
NS=tkbench-shell
cleanup() {
  ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent >/dev/null 2>&1 || true
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" >/dev/null

now() { date +%s.%N; }

# The walk-through by hand, in a fresh namespace: sysctls, nc -l, a client
# with SO_KEEPALIVE, tcpdump, wait for the idle probe, DROP, wait for the
# client to fail, clean up.
shell_walkthrough() {
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip netns exec "$NS" sysctl -q -w net.ipv4.tcp_keepalive_time=$TIME net.ipv4.tcp_keepalive_intvl=$INTVL net.ipv4.tcp_keepalive_probes=$PROBES
  ip netns exec "$NS" tcpdump -i lo -nn -w "$WORK/shell.pcap" tcp port 12345 2>/dev/null &
  local dump=$!
  ip netns exec "$NS" nc -l 127.0.0.1 12345 </dev/null >/dev/null &
  local server=$!
  sleep 0.3
  ip netns exec "$NS" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.bind(("127.0.0.1", 22345)); s.connect(("127.0.0.1", 12345))
try:
    s.recv(1)
except OSError as exc:
    print(exc)' &
  local client=$!
  sleep $(( TIME * IDLE )).5
  ip netns exec "$NS" iptables -w 5 -I INPUT -p tcp -d 127.0.0.1 --dport 12345 -j DROP
  wait "$client"
  kill "$dump" "$server" 2>/dev/null || true
  wait "$dump" "$server" 2>/dev/null || true
  ip netns exec "$NS" iptables -w 5 -D INPUT -p tcp -d 127.0.0.1 --dport 12345 -j DROP
  ip netns del "$NS"
}

collection_experiment() {
  ansible-playbook -i "$LAB_DIR/inventory.yml" tcplab.keepalive.experiment \
    -e '{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 3}}' \
    -e "experiment_client=bench experiment_idle_probes=$IDLE experiment_report_dir=$WORK/reports" > "$WORK/experiment.log"
}

best_shell=999 best_exp=999
for round in $(seq 1 "$ROUNDS"); do
  t0=$(now); shell_walkthrough > /dev/null; t1=$(now)
  collection_experiment; t2=$(now)
  s=$(echo "$t1 - $t0" | bc -l); e=$(echo "$t2 - $t1" | bc -l)
  printf 'round %d: shell walk-through %.2f s, collection experiment %.2f s\n' "$round" "$s" "$e"
  best_shell=$(echo "if ($s < $best_shell) $s else $best_shell" | bc -l)
  best_exp=$(echo "if ($e < $best_exp) $e else $best_exp" | bc -l)
done
printf '\nkernel-bound minimum:        %d s\n' "$KERNEL_BOUND"
printf 'shell walk-through (best):   %.2f s  (%.2f s over the kernel bound)\n' "$best_shell" "$(echo "$best_shell - $KERNEL_BOUND" | bc -l)"
printf 'collection experiment (best): %.2f s  (%.2f s over the kernel bound; goal <= 10 s)\n' "$best_exp" "$(echo "$best_exp - $KERNEL_BOUND" | bc -l)"
printf 'ratio experiment / shell:    %.2fx (goal <= 1.5x)\n' "$(echo "$best_exp / $best_shell" | bc -l)"
grep -h '"verdict"' "$WORK"/reports/*/report.json | sort | uniq -c
