#!/usr/bin/env bash
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

cleanup() {
  if [ -n "$PLAY_PID" ]; then kill -9 -- "-$PLAY_PID" 2>/dev/null || true; fi
  ansible-playbook -i "$INV" rollback.yml >/dev/null 2>&1 || true
  ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent "$@" >/dev/null
  rm -rf "$REPORTS" /var/tmp/tcplab-keepalive/captures/exp-faulty*
}
trap cleanup EXIT

ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" "$@"

# What "as before" means: the namespace's sysctls and rules, no experiment process.
host_state() {
  ip netns exec "$NS" cat /proc/sys/net/ipv4/tcp_keepalive_time /proc/sys/net/ipv4/tcp_keepalive_intvl /proc/sys/net/ipv4/tcp_keepalive_probes
  ip netns exec "$NS" iptables -w 10 -S
  ip netns exec "$NS" ip6tables -w 10 -S
  pgrep -af 'tcplab-keepalive-(endpoint|capture|drop-rule-timer)' | cut -d' ' -f2- || true
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
client_running() { pgrep -f 'tcplab-keepalive-endpoint:exp-.*-client' >/dev/null; }

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

# A failing step: the capture cannot start (its path holds a file that is not
# a capture). The play fails with the reason, and the host is as before.
mkdir -p /var/tmp/tcplab-keepalive/captures
chmod 0700 /var/tmp/tcplab-keepalive/captures
echo "not a capture" > /var/tmp/tcplab-keepalive/captures/exp-faultyrun-faulty.pcap
if ansible-playbook -i "$INV" tcplab.keepalive.experiment \
    -e '{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 3}}' \
    -e "experiment_client=faulty experiment_report_dir=$REPORTS experiment_run_id=faultyrun" "$@" > "$REPORTS/failed.log" 2>&1; then
  echo "the experiment should have failed"; exit 1
fi
grep -q 'The experiment failed at "Start the capture"' "$REPORTS/failed.log"
[ "$(host_state)" = "$BEFORE" ] || { echo "a failing step left the host changed"; exit 1; }
rm -f /var/tmp/tcplab-keepalive/captures/exp-faultyrun-faulty.pcap
