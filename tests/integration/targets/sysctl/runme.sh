#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# The sysctl module against the real kernel, in network namespaces this test
# creates and removes. Never touches the root namespace's values (checked).
set -eux

root_values() { cat /proc/sys/net/ipv4/tcp_keepalive_{time,intvl,probes} | tr '\n' ' '; }
ROOT_BEFORE=$(root_values)

ansible-playbook -i "${INVENTORY_PATH}" main.yml "$@"

# netns: all restores every journalled namespace, skipping those that are gone (lab namespaces, tkns-it-*)
ansible-playbook -i "${INVENTORY_PATH}" all.yml "$@"

# A play killed (SIGKILL) right after the change, then state: restored from a
# fresh controller (no facts, only the journal on the host) restores everything.
NS=tksy-it-killed
JOURNAL=/run/tcplab-test-sysctl/it-sysctl-killed
HANG=/run/tcplab-test-sysctl/it-sysctl-killed.hang
cleanup() {
  if [ -n "${PLAY_PID:-}" ]; then kill -9 -- "-${PLAY_PID}" 2>/dev/null || true; fi
  rm -f "$HANG"
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$JOURNAL"
  rmdir /run/tcplab-test-sysctl 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
ns_values() { ip netns exec "$NS" cat /proc/sys/net/ipv4/tcp_keepalive_{time,intvl,probes} | tr '\n' ' '; }
NS_BEFORE=$(ns_values)

mkdir -p "$(dirname "$HANG")"
touch "$HANG"
setsid ansible-playbook -i "${INVENTORY_PATH}" kill_me.yml -e "it_ns=$NS it_journal=$JOURNAL it_hang_flag=$HANG" "$@" &
PLAY_PID=$!
for _ in $(seq 1 600); do
  [ "$(ns_values)" = "5 2 4 " ] && break
  sleep 0.1
done
[ "$(ns_values)" = "5 2 4 " ]
kill -9 -- "-${PLAY_PID}"
wait "$PLAY_PID" || true
PLAY_PID=
rm -f "$HANG"
test -s "$JOURNAL/journal.json"

ansible-playbook -i "${INVENTORY_PATH}" restore.yml -e "it_ns=$NS it_journal=$JOURNAL" "$@"
[ "$(ns_values)" = "$NS_BEFORE" ]
[ "$NS_BEFORE" = "7200 75 9 " ]
# the journal entry is gone (an empty journal is removed)
[ ! -e "$JOURNAL/journal.json" ]

[ "$(root_values)" = "$ROOT_BEFORE" ]
