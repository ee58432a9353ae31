#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Faults of the experiment: ansible-playbook killed with SIGKILL at several
# points of the flow, then tcplab.keepalive.rollback from a fresh controller;
# and a failing step. Every time the lab host must end exactly as before.
set -eux

LAB_DIR=/run/tcplab-keepalive/it-faults
NS=tcplab-itf-faulty
LAB_VARS="{\"lab_hosts\": [\"faulty\"], \"lab_state_dir\": \"$LAB_DIR\", \"lab_bridge\": \"tcplabitf0\", \"lab_netns_prefix\": \"tcplab-itf-\", \"lab_network\": \"198.18.40.0/24\"}"
INV="$LAB_DIR/inventory.yml"
REPORTS=$(mktemp -d)
PLAY_PID=
HOLDER=

cleanup() {
  if [ -n "$PLAY_PID" ]; then kill -9 -- "-$PLAY_PID" 2>/dev/null || true; fi
  ansible-playbook -i "$INV" rollback.yml >/dev/null 2>&1 || true
  # rollback stops the killed runs' captures and keeps their pcaps for a look by hand: this
  # target's go with their state records and logs, each proven ours by its record
  local pcap
  for pcap in /var/tmp/tcplab-keepalive/captures/exp-*-faulty.pcap; do
    [ -e "$pcap" ] || continue
    ansible -i "$INV" faulty -m tcplab.keepalive.capture -a "path=$pcap state=absent" >/dev/null 2>&1 || true
  done
  ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent "$@" >/dev/null
  if [ -n "$HOLDER" ]; then kill "$HOLDER" 2>/dev/null || true; fi
  # the pcaps of this target's runs: exp-<run id>-<nonce>-faulty.pcap (and a killed capture's log and state)
  rm -rf "$REPORTS" /var/tmp/tcplab-keepalive/captures/exp-*-faulty.pcap*
}
trap cleanup EXIT

ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" "$@"

# What "as before" means: the namespace's sysctls and rules, no experiment process.
ns_cmdlines() { local pid; for pid in $(ip netns pids "$NS"); do tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null; echo; done; }
host_state() {
  ip netns exec "$NS" cat /proc/sys/net/ipv4/tcp_keepalive_time /proc/sys/net/ipv4/tcp_keepalive_intvl /proc/sys/net/ipv4/tcp_keepalive_probes
  ip netns exec "$NS" iptables -w 10 -S
  ip netns exec "$NS" ip6tables -w 10 -S
  # the processes of this lab host only: other runs on this machine are not ours to judge
  ns_cmdlines | sort
}
BEFORE=$(host_state)

experiment() {
  setsid ansible-playbook -i "$INV" tcplab.keepalive.experiment \
    -e '{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 3}}' \
    -e "experiment_client=faulty experiment_report_dir=$REPORTS" "$@" &
  PLAY_PID=$!
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll up to 60 s
  local what=$1; shift
  for _ in $(seq 1 600); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "never saw: $what"; return 1
}

kill_play() {
  kill -9 -- "-$PLAY_PID"
  wait "$PLAY_PID" || true
  PLAY_PID=
}

sysctl_changed() { [ "$(ip netns exec "$NS" cat /proc/sys/net/ipv4/tcp_keepalive_time)" = 2 ]; }
rule_in() { ip netns exec "$NS" iptables -w 10 -S | grep -q tcplab-keepalive; }
in_ns() { ns_cmdlines | grep -q "$1"; }
client_running() { in_ns 'tcplab-keepalive-endpoint:exp-.*-client'; }

for point in sysctl client drop waiting; do
  experiment "$@"
  case $point in
    sysctl) wait_for "the sysctl change" sysctl_changed ;;
    client) wait_for "the client" client_running ;;
    drop) wait_for "the DROP rule" rule_in ;;
    waiting) wait_for "the DROP rule" rule_in; sleep 1.5 ;;
  esac
  kill_play
  # the kill left changes behind (that is the point of the test)
  [ "$(host_state)" != "$BEFORE" ]
  ansible-playbook -i "$INV" rollback.yml "$@"
  [ "$(host_state)" = "$BEFORE" ] || { echo "rollback after a kill at '$point' did not restore the host"; exit 1; }
done

# A failing step: the client cannot start (its local port is held by a
# listener that is not the run's). The play fails with the reason, and the
# host is as before, the listener untouched. The listener takes the port with
# SO_REUSEADDR: a connection of the killed runs above may still be closing on
# it (TIME_WAIT), which refuses a plain bind for a minute.
ip netns exec "$NS" python3 -c 'import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 22345)); s.listen(1); time.sleep(600)' &
HOLDER=$!
port_held() { ip netns exec "$NS" ss -Hltn 'sport = :22345' | grep -q .; }
wait_for "the port held" port_held
HELD=$(host_state)
if ansible-playbook -i "$INV" tcplab.keepalive.experiment \
    -e '{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 3}}' \
    -e "experiment_client=faulty experiment_report_dir=$REPORTS experiment_run_id=faultyrun" "$@" > "$REPORTS/failed.log" 2>&1; then
  echo "the experiment should have failed"; exit 1
fi
# the start of the client's host (one module run: lease, capture, server, client) fails at its client step
grep -q 'The experiment failed at "Start the client.s host: .*": .*client' "$REPORTS/failed.log"
grep -q -i 'address already in use' "$REPORTS/failed.log"
[ "$(host_state)" = "$HELD" ] || { echo "a failing step left the host changed"; exit 1; }
port_held || { echo "the listener that is not the run's was touched"; exit 1; }
kill "$HOLDER"; wait "$HOLDER" || true
[ "$(host_state)" = "$BEFORE" ]

# A process dies mid-run: the server is killed while the server's host waits
# for the moment of the DROP (the answered probes). The play stops at once (not
# after the wait's budget) and says which process died and how; the host ends
# as before.
server_running() { in_ns 'tcplab-keepalive-endpoint:exp-.*-server'; }
START=$(date +%s)
setsid ansible-playbook -i "$INV" tcplab.keepalive.experiment \
  -e '{"experiment_keepalive": {"time": 3, "intvl": 1, "probes": 3}, "experiment_idle_probes": 3}' \
  -e "experiment_client=faulty experiment_report_dir=$REPORTS" "$@" > "$REPORTS/died.log" 2>&1 &
PLAY_PID=$!
wait_for "the server" server_running
wait_for "the client" client_running
sleep 1
for pid in $(ip netns pids "$NS"); do
  if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'tcplab-keepalive-endpoint:exp-.*-server'; then kill -KILL "$pid"; fi
done
rc=0; wait "$PLAY_PID" || rc=$?
PLAY_PID=
ELAPSED=$(( $(date +%s) - START ))
cat "$REPORTS/died.log"
[ "$rc" != 0 ] || { echo "the experiment should have failed when its server died"; exit 1; }
# the server's host waits for the moment of the DROP (when_idle): the connection that ended meanwhile fails it
grep -q 'The experiment failed at "Stop when the DROP could not go in, saying why"' "$REPORTS/died.log"
grep -q 'ended before the DROP' "$REPORTS/died.log"
grep -q 'the server (pid [0-9]*, python) .*SIGKILL' "$REPORTS/died.log"
if grep -q 'Unknown error' "$REPORTS/died.log"; then echo "the failure must say why"; exit 1; fi
# the kernel timeline alone is 3 answered probes x 3 s + 3 x 1 s + margin: the play must not wait it out
[ "$ELAPSED" -lt 30 ] || { echo "the play took $ELAPSED s to notice the dead server"; exit 1; }
[ "$(host_state)" = "$BEFORE" ] || { echo "a dead server left the host changed"; exit 1; }
