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
WORK=/tmp/tcplab-test-audit/it-remediate
cleanup() {
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
mkdir -p "$WORK/root/etc/sysctl.d"
ansible-playbook -i "${INVENTORY_PATH}" -i remediate_inventory.yml remediate.yml -e "au_work=$WORK" "$@"

# Exact per-connection keepalive settings (issue 13): a lab host holding a connection with its own settings.
PS_NS=tkps-it-sockets
PS_WORK=/run/tcplab-test-ps/it-sockets
PS_PID=
ps_cleanup() {
  # the holder is ours when its command line is this target's sockets_holder.py
  if [ -n "$PS_PID" ] && tr '\0' ' ' < "/proc/$PS_PID/cmdline" 2>/dev/null | grep -q "$PWD/sockets_holder.py"; then
    kill "$PS_PID"
    wait "$PS_PID" 2>/dev/null || true
  fi
  if [ -f "$PS_WORK/netns.inode" ] && [ "$(stat -c %i "/run/netns/$PS_NS" 2>/dev/null)" = "$(cat "$PS_WORK/netns.inode")" ]; then
    ip netns del "$PS_NS"
  fi
  rm -rf "$PS_WORK"
  rmdir "$(dirname "$PS_WORK")" 2>/dev/null || true  # its parent, once empty
}
trap 'cleanup; ps_cleanup' EXIT
mkdir -p "$PS_WORK/root/etc"
ip netns add "$PS_NS"
stat -c %i "/run/netns/$PS_NS" > "$PS_WORK/netns.inode"
nsenter --net="/run/netns/$PS_NS" -- ip link set lo up
nsenter --net="/run/netns/$PS_NS" -- sysctl -q -w net.ipv4.tcp_keepalive_time=120 net.ipv4.tcp_keepalive_intvl=15 \
  net.ipv4.tcp_keepalive_probes=6
nsenter --net="/run/netns/$PS_NS" -- python3 "$PWD/sockets_holder.py" 3000 > "$PS_WORK/holder.json" &
PS_PID=$!
for _ in $(seq 50); do [ -s "$PS_WORK/holder.json" ] && break; sleep 0.1; done
ansible-playbook -i "${INVENTORY_PATH}" -i sockets_inventory.yml sockets.yml \
  -e "ps_info=$PS_WORK/holder.json ps_root=$PS_WORK/root" "$@"
