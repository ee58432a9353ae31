#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Concurrent experiments must not break each other:
#   A. two experiments started at the same moment on two different pairs of
#      lab hosts: distinct run ids and reports, both pass, each cleans up only
#      its own endpoints, captures and rules;
#   B. two experiments on the same host (loopback, other ports): the host's
#      keepalive sysctls are leased to one run at a time, so the second fails
#      at once naming the holder (experiment_lease_wait 0) while the first
#      passes, or waits its turn (experiment_lease_wait > 0) and passes too;
#   C. one run with 4 s between probes: the play samples the client's keepalive
#      timer while it waits (evidence.kernel.timer_samples, the progress line).
# Every passed report carries evidence.kernel: the client namespace's TCPKeepAlive and
# TCPAbortOnTimeout deltas agree with the capture and equal those read here from
# /proc/net/netstat; the same run judged with a forged end sample fails with both numbers.
# Every host ends as before.
set -eux

LAB_DIR=/run/tcplab-keepalive/it-concurrency
LAB_VARS="{\"lab_hosts\": [\"c1\", \"s1\", \"c2\", \"s2\", \"solo\"], \"lab_state_dir\": \"$LAB_DIR\", \"lab_bridge\": \"tcplabitc0\", \"lab_netns_prefix\": \"tcplab-itc-\", \"lab_network\": \"198.18.41.0/24\"}"
INV="$LAB_DIR/inventory.yml"
REPORTS=$(mktemp -d)
LOGS=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 -- "-$pid" 2>/dev/null || true; done
  ansible-playbook -i "$INV" rollback.yml >/dev/null 2>&1 || true
  ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent "$@" >/dev/null
  rm -rf "$REPORTS" "$LOGS"
}
trap cleanup EXIT

ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" "$@"

host_state() {  # host_state NAME: sysctls, rules and experiment processes of one lab host
  local ns=tcplab-itc-$1 pid
  ip netns exec "$ns" cat /proc/sys/net/ipv4/tcp_keepalive_time /proc/sys/net/ipv4/tcp_keepalive_intvl /proc/sys/net/ipv4/tcp_keepalive_probes
  ip netns exec "$ns" iptables -w 10 -S
  for pid in $(ip netns pids "$ns"); do tr '\0' ' ' < "/proc/$pid/cmdline"; echo; done | sort
}
all_state() { for host in c1 s1 c2 s2 solo; do echo "## $host"; host_state "$host"; done; }
BEFORE=$(all_state)

KEEPALIVE='{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 3}, "experiment_idle_probes": 1}'

start() {  # start LOG ARGS...: an experiment in the background, in its own process group
  local log=$1; shift
  setsid ansible-playbook -i "$INV" tcplab.keepalive.experiment -e "$KEEPALIVE" \
    -e "experiment_report_dir=$REPORTS" "$@" > "$LOGS/$log" 2>&1 &
  PIDS+=($!)
  LAST=$!
}

# The client namespaces' own counters, read here around the runs (the reports' evidence.kernel must be these deltas).
netstat_of() { ip netns exec "tcplab-itc-$1" cat /proc/net/netstat > "$LOGS/$1.$2"; }
report_of() {  # report_of HOST: the passed report.json whose client is HOST (the only one per host in A and B1)
  python -c 'import json, sys
for p in sys.argv[2:]:
    r = json.load(open(p))
    if r["hosts"]["client"] == sys.argv[1] and r["verdict"] == "pass": print(p)' "$1" "$REPORTS"/*/report.json
}

# A. two pairs, started together
netstat_of c1 before; netstat_of c2 before
start a1.log -e experiment_client=c1 -e experiment_server=s1 "$@"; A1=$LAST
start a2.log -e experiment_client=c2 -e experiment_server=s2 "$@"; A2=$LAST
rc1=0; wait "$A1" || rc1=$?
rc2=0; wait "$A2" || rc2=$?
cat "$LOGS/a1.log" "$LOGS/a2.log"
if [ "$rc1" != 0 ] || [ "$rc2" != 0 ]; then echo "A: two experiments on two pairs broke each other (rc $rc1, $rc2)"; exit 1; fi
[ "$(find "$REPORTS" -name report.json | wc -l)" = 2 ] || { echo "A: two runs must write two reports"; exit 1; }
for report in "$REPORTS"/*/report.json; do
  python -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r["verdict"] != "pass")' "$report"
done
[ "$(all_state)" = "$BEFORE" ] || { echo "A: the hosts are not as before"; exit 1; }
# A's evidence.kernel: capture and kernel agree, and the deltas are the kernel's, read here independently
netstat_of c1 after; netstat_of c2 after
for host in c1 c2; do python kernel_evidence.py check "$(report_of $host)" "$LOGS/$host.before" "$LOGS/$host.after"; done
# a disagreement fails: the same run's pcap judged with an end sample that counts one probe more than the kernel did
FORGED=$(python kernel_evidence.py forge "$(dirname "$(report_of c1)")" "$LOGS/forged.json" "$LOGS/forged")
ansible localhost -c local -i localhost, -m tcplab.keepalive.report -a "$(cat "$LOGS/forged.json")" \
  -e 'ansible_python_interpreter={{ ansible_playbook_python }}' > "$LOGS/forged.log"
python kernel_evidence.py forged "$LOGS/forged/report.json" "$FORGED"

# B1. the same host, no waiting: the second run fails at once naming the holder
sysctl_set() { [ "$(ip netns exec tcplab-itc-solo cat /proc/sys/net/ipv4/tcp_keepalive_time)" = 2 ]; }
netstat_of solo before
# the first run holds the lease for 20 s of answered probes and more, whatever the load: the second meets it
start b1.log -e experiment_client=solo -e experiment_idle_probes=10 "$@"; B1=$LAST
for _ in $(seq 1 600); do sysctl_set && break; sleep 0.1; done
sysctl_set
rc=0
ansible-playbook -i "$INV" tcplab.keepalive.experiment -e "$KEEPALIVE" -e "experiment_report_dir=$REPORTS" \
  -e experiment_client=solo -e experiment_port=12346 -e experiment_client_port=22346 "$@" > "$LOGS/b2.log" 2>&1 || rc=$?
cat "$LOGS/b2.log"
[ "$rc" != 0 ] || { echo "B1: the second run on a leased host must fail"; exit 1; }
grep -q 'are leased to run' "$LOGS/b2.log" || { echo "B1: the failure must name the holder"; exit 1; }
rc=0; wait "$B1" || rc=$?
cat "$LOGS/b1.log"
[ "$rc" = 0 ] || { echo "B1: the first run on the host was disturbed by the second"; exit 1; }
# loopback: client and server share the namespace (the python server sends no probes); the failed run started nothing
netstat_of solo after
python kernel_evidence.py check "$(report_of solo)" "$LOGS/solo.before" "$LOGS/solo.after"
[ "$(all_state)" = "$BEFORE" ] || { echo "B1: the hosts are not as before"; exit 1; }

# B2. the same host, waiting: both pass, one after the other
start b3.log -e experiment_client=solo -e experiment_lease_wait=120 "$@"; B3=$LAST
start b4.log -e experiment_client=solo -e experiment_port=12346 -e experiment_client_port=22346 \
  -e experiment_lease_wait=120 "$@"; B4=$LAST
rc3=0; wait "$B3" || rc3=$?
rc4=0; wait "$B4" || rc4=$?
cat "$LOGS/b3.log" "$LOGS/b4.log"
if [ "$rc3" != 0 ] || [ "$rc4" != 0 ]; then echo "B2: two waiting runs on one host (rc $rc3, $rc4)"; exit 1; fi
cat "$LOGS/b3.log" "$LOGS/b4.log" | grep -q "RETRYING: .*Start the client's host: lease" || { echo "B2: no progress line while waiting"; exit 1; }
[ "$(all_state)" = "$BEFORE" ] || { echo "B2: the hosts are not as before"; exit 1; }

# C. the kernel's timer while the client's end awaits its failure: the end on the client's host samples the
#    client's socket at each unanswered probe (4 s apart here), and its task line says what it awaits.
netstat_of c1 before
start c.log -e experiment_client=c1 -e experiment_server=s1 -e '{"experiment_keepalive": {"time": 4, "intvl": 4, "probes": 2}}' \
  -e "experiment_report_dir=$LOGS/c" "$@"
rc=0; wait "$LAST" || rc=$?
cat "$LOGS/c.log"
[ "$rc" = 0 ] || { echo "C: the run with 4 s intervals failed"; exit 1; }
netstat_of c1 after
python kernel_evidence.py timers "$LOGS"/c/*/report.json "$LOGS/c1.before" "$LOGS/c1.after"
grep -q "End on the client's host: await the failure of the client (up to [0-9]* s)" "$LOGS/c.log" \
  || { echo "C: the client's end does not say that it awaits the failure"; exit 1; }
[ "$(all_state)" = "$BEFORE" ] || { echo "C: the hosts are not as before"; exit 1; }
