#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# The audit and audit_report modules against the real kernel, in network
# namespaces this test creates and removes (a playbook, not a role target:
# the target's name is also the name of the collection's audit role), then
# the role's remediation on a lab host (a namespace reached through the netns
# connection): runtime values set, nothing persisted.
set -eux
ansible-playbook -i "${INVENTORY_PATH}" main.yml "$@"

NS=tkau-it-remediate
WORK=/tmp/tcplab-helper-audit/it-remediate
cleanup() {
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
mkdir -p "$WORK/root/etc/sysctl.d"
ansible-playbook -i "${INVENTORY_PATH}" -i remediate_inventory.yml remediate.yml -e "au_work=$WORK" "$@"
