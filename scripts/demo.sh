#!/usr/bin/env bash
# The main job on the built-in local lab (README: "Run it").
# Until the experiment lands this brings up lab hosts (one reached through
# the netns connection, one through ssh) and runs a smoke play over both.
# KEEP_LAB=1 leaves the lab up afterwards.
set -euo pipefail
# shellcheck source=scripts/bootstrap.sh
. "$(dirname "$0")/bootstrap.sh"

LAB_DIR=/run/tcplab-keepalive/demo
LAB_VARS=$(printf '{"lab_hosts": ["demo-netns", {"name": "demo-ssh", "transport": "ssh"}], "lab_state_dir": "%s", "lab_bridge": "tcplabdemo0", "lab_netns_prefix": "tcplab-demo-", "lab_network": "198.18.10.0/24"}' "$LAB_DIR")

teardown() {
  if [ "${KEEP_LAB:-0}" != 1 ]; then
    tcplab_step "removing the demo lab"
    ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent >/dev/null
  fi
}
trap teardown EXIT

tcplab_step "bringing up the demo lab"
ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS"
tcplab_step "ping over both transports"
ansible -i "$LAB_DIR/inventory.yml" all -m ansible.builtin.ping
tcplab_step "smoke play"
ansible-playbook -i "$LAB_DIR/inventory.yml" scripts/smoke.yml
