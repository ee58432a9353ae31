#!/usr/bin/env bash
# loopback_then_killed.sh INVENTORY LOOPBACK_HOST EXTRA_VARS KILLED_HOST KILLED_REPORT_DIR: the loopback
# experiment on LOOPBACK_HOST (EXTRA_VARS: its variables, JSON), then kill_and_rollback.sh on KILLED_HOST.
# converge runs this as one job beside the two-host experiment on the two other VMs.
set -euo pipefail
ansible-playbook -i "$1" tcplab.keepalive.experiment -e "$3"
echo "---- the loopback run passed; now a controller killed after the DROP on $4, then rollback.yml ----"
bash "$(dirname "$0")/kill_and_rollback.sh" "$1" "$4" "$5"
