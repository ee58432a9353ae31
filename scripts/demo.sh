#!/usr/bin/env bash
# The main job on the built-in local lab (README: "Run it"): the keepalive
# experiment on a lab host (a network namespace) with fast timings
# (time 2 s, intvl 1 s, probes 3), then the lab is removed.
#
#   bash scripts/demo.sh                 loopback on one lab host, 2/1/3
#   bash scripts/demo.sh --walkthrough   the walk-through's own timings, 30/3/3 (about 1.5 minutes)
#   bash scripts/demo.sh --two-hosts     client and server on two lab hosts, reached over ssh
#   bash scripts/demo.sh --vms           client and server on two lab VMs (Debian bookworm and
#                                        bullseye, their own kernels, tools installed with apt)
#   KEEP_LAB=1 bash scripts/demo.sh      leave the lab up afterwards
set -euo pipefail
# shellcheck source=scripts/bootstrap.sh
. "$(dirname "$0")/bootstrap.sh"

TIMINGS='{"time": 2, "intvl": 1, "probes": 3}'
TWO_HOSTS=0
VMS=0
for arg in "$@"; do
  case "$arg" in
    --walkthrough) TIMINGS='{"time": 30, "intvl": 3, "probes": 3}' ;;
    --two-hosts) TWO_HOSTS=1 ;;
    --vms) VMS=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) tcplab_die "unknown option $arg (see --help)" ;;
  esac
done

LAB_DIR=/run/tcplab-keepalive/demo
EXTRA='{}'
if [ "$VMS" = 1 ]; then
  HOSTS='[{"name": "client", "kind": "vm", "release": "bookworm"}, {"name": "server", "kind": "vm", "release": "bullseye"}]'
  CLIENT=client SERVER=server
  EXTRA='{"experiment_install_deps": true, "experiment_captures": "both"}'
elif [ "$TWO_HOSTS" = 1 ]; then
  HOSTS='[{"name": "client", "transport": "ssh"}, {"name": "server", "transport": "ssh"}]'
  CLIENT=client SERVER=server
else
  HOSTS='["demo"]'
  CLIENT=demo SERVER=demo
fi
LAB_VARS=$(printf '{"lab_hosts": %s, "lab_state_dir": "%s", "lab_bridge": "tcplabdemo0", "lab_netns_prefix": "tcplab-demo-", "lab_network": "198.18.10.0/24"}' "$HOSTS" "$LAB_DIR")
REPORTS="$TCPLAB_ROOT/tcplab-keepalive-reports"

teardown() {
  if [ "${KEEP_LAB:-0}" != 1 ]; then
    tcplab_step "removing the demo lab"
    ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent >/dev/null
  fi
}
trap teardown EXIT

tcplab_step "bringing up the demo lab"
ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS"

tcplab_step "the keepalive experiment ($TIMINGS, client $CLIENT, server $SERVER)"
ansible-playbook -i "$LAB_DIR/inventory.yml" tcplab.keepalive.experiment \
  -e "{\"experiment_keepalive\": $TIMINGS}" -e "$EXTRA" \
  -e "experiment_client=$CLIENT experiment_server=$SERVER experiment_report_dir=$REPORTS"

tcplab_step "reports in $REPORTS (newest last)"
find "$REPORTS" -mindepth 1 -maxdepth 1 -type d | sort | tail -3
