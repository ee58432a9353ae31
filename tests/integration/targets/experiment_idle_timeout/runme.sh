#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# The idle-timeout fault in a lab of three netns hosts - client, middlebox,
# server - at CI timings: the middlebox forgets flows idle for 6 s. Check mode
# and a bad preset change nothing; after a SIGKILL of the controller's process
# group mid-run, rollback.yml puts all three hosts back. The three outcomes
# (survive, die half-open, die with a reset) are the molecule scenario
# idle_timeout's, verified there with testinfra.
set -eux

LAB_DIR=/run/tcplab-keepalive/it-idle-timeout
LAB_VARS="{\"lab_hosts\": [\"client\", \"middlebox\", \"server\"], \"lab_state_dir\": \"$LAB_DIR\", \"lab_bridge\": \"tkitbr0\", \"lab_netns_prefix\": \"tkit-\", \"lab_network\": \"198.19.170.0/24\"}"
INV="$LAB_DIR/inventory.yml"
REPORTS=$(mktemp -d)
PLAY_PID=

cleanup() {
  if [ -n "$PLAY_PID" ]; then kill -9 -- "-$PLAY_PID" 2>/dev/null || true; fi
  ansible-playbook -i "$INV" rollback.yml >/dev/null 2>&1 || true
  # rollback stops the killed run's capture and keeps its pcap for a look by hand: this
  # target's go with their state records and logs, each proven ours by its record
  local pcap
  for pcap in /var/tmp/tcplab-keepalive/captures/exp-tkit*-client.pcap; do
    [ -e "$pcap" ] || continue
    ansible -i "$INV" client -m tcplab.keepalive.capture -a "path=$pcap state=absent" >/dev/null 2>&1 || true
  done
  ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent "$@" >/dev/null
  # the pcaps of this target's runs only (run ids tkit-*: tags exp-tkit*)
  rm -rf "$REPORTS" /var/tmp/tcplab-keepalive/captures/exp-tkit*-client.pcap*
}
trap cleanup EXIT

ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" "$@"

# What "as before" means, on each of the three hosts: forwarding, redirects,
# conntrack and keepalive sysctls, routes, rules, and no experiment process.
one_state() {
  local ns=tkit-$1 pid
  # shellcheck disable=SC2016  # the inner shell expands $f, not this one
  ip netns exec "$ns" sh -c 'for f in /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/forwarding \
    /proc/sys/net/ipv4/conf/*/send_redirects /proc/sys/net/ipv4/conf/*/accept_redirects \
    /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established /proc/sys/net/netfilter/nf_conntrack_tcp_loose \
    /proc/sys/net/ipv4/tcp_keepalive_*; do echo "$f=$(cat "$f")"; done'
  ip netns exec "$ns" ip -o route show
  ip netns exec "$ns" iptables -w 10 -S
  for pid in $(ip netns pids "$ns"); do tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null; echo; done | grep tcplab-keepalive | sort || true
}
host_state() { one_state client; one_state middlebox; one_state server; }
BEFORE=$(host_state)

experiment() {  # experiment RUN_ID KEEPALIVE_TIME IDLE_TIMEOUT_JSON [ansible args]
  local id=$1 time=$2 idle=$3; shift 3
  ansible-playbook -i "$INV" tcplab.keepalive.experiment \
    -e "{\"experiment_keepalive\": {\"time\": $time, \"intvl\": 2, \"probes\": 3}, \"experiment_idle_timeout\": $idle}" \
    -e "experiment_fault=idle_timeout experiment_client=client experiment_server=server experiment_middlebox=middlebox" \
    -e "experiment_report_dir=$REPORTS experiment_run_id=tkit-$id experiment_margin=3" "$@"
}

# check mode says what it would do and changes nothing
experiment checkmode 2 '{"seconds": 6, "action": "drop"}' --check "$@" > "$REPORTS/check.log" 2>&1 || { cat "$REPORTS/check.log"; exit 1; }
grep -q 'would insert 6 FORWARD rules' "$REPORTS/check.log"
[ "$(host_state)" = "$BEFORE" ] || { echo "check mode changed a host"; exit 1; }

# a bad preset is refused before anything changes
if experiment badpreset 2 '{"preset": "haproxy"}' "$@" > "$REPORTS/badpreset.log" 2>&1; then
  echo "an unknown preset must fail"; exit 1
fi
grep -q 'preset must be one of.*aws-nlb, azure-lb, azure-lb-reset, gcp-vpc' "$REPORTS/badpreset.log"
[ "$(host_state)" = "$BEFORE" ] || { echo "a bad preset left a host changed"; exit 1; }

# SIGKILL of the controller's process group while the connection idles through
# the middlebox, then the rollback from a fresh controller
setsid ansible-playbook -i "$INV" tcplab.keepalive.experiment \
  -e '{"experiment_keepalive": {"time": 2, "intvl": 2, "probes": 3}, "experiment_idle_timeout": {"seconds": 6}}' \
  -e "experiment_fault=idle_timeout experiment_client=client experiment_server=server experiment_middlebox=middlebox" \
  -e "experiment_report_dir=$REPORTS experiment_run_id=tkit-killed" "$@" > "$REPORTS/killed.log" 2>&1 &
PLAY_PID=$!
client_running() {
  for pid in $(ip netns pids tkit-client); do
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'tcplab-keepalive-endpoint:exp-.*-client' && return 0
  done
  return 1
}
for _ in $(seq 1 600); do client_running && break; sleep 0.1; done
client_running || { cat "$REPORTS/killed.log"; echo "never saw the client"; exit 1; }
sleep 2
kill -9 -- "-$PLAY_PID"
wait "$PLAY_PID" || true
PLAY_PID=
[ "$(host_state)" != "$BEFORE" ]  # the kill left the middlebox in the path (that is the point)
ip netns exec tkit-middlebox iptables -w 10 -S FORWARD | grep -q tcplab-keepalive
ansible-playbook -i "$INV" rollback.yml "$@"
[ "$(host_state)" = "$BEFORE" ] || { echo "rollback after a kill did not restore all three hosts"; exit 1; }
