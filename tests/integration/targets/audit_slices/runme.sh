#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Sliced audits that merge (docs/audit_fleet.md). On AUDIT_SLICES_HOSTS (default 44) lab hosts
# (network namespaces; every third one set compliant with the azure-lb preset, the others left at
# the kernel's 7200/75/9) plus one host whose namespace does not exist (unreachable):
#   1. one whole run of the tcplab.keepalive.audit playbook, with each host's metrics written for
#      node_exporter's textfile collector;
#   2. four slices (host i in slice i mod 4, as AWX cuts an inventory) run at the same time through
#      ansible-runner, each writing its own report directory;
#   3. tcplab.keepalive.audit_merge over the slices, twice (the second run changes nothing);
#   4. the merged report equals the whole run's in hosts, findings, summary, CSV rows and metrics;
#   5. merges that must be refused (a slice twice, overlapping hosts) are, naming the cause, and
#      write nothing.
# Only namespaces, the bridge and files of this target are created, and removed at the end.
set -eux -o pipefail
cd "$(dirname "$0")"
PY=${ANSIBLE_TEST_PYTHON_INTERPRETER:-python3}

N=${AUDIT_SLICES_HOSTS:-44}
FORKS=${AUDIT_SLICES_FORKS:-10}
STATE=/run/tcplab-keepalive/it-slices
LAB_DIR=$STATE/it-slices-lab
INV=$LAB_DIR/inventory.yml
HOSTS=$(seq -f 's%02g' 1 "$N")
LAB_VARS=$(printf '{"lab_hosts": [%s], "lab_state_dir": "%s", "lab_bridge": "tkfsbr0", "lab_netns_prefix": "tkfs-", "lab_network": "198.19.180.0/24"}' \
  "$(echo "$HOSTS" | sed 's/.*/"&"/' | paste -sd, -)" "$LAB_DIR")

mkdir -p "$STATE"
# this run's own directory (made here, so removing it removes nothing of anyone else)
WORK=$(mktemp -d -p "$STATE" it-slices.XXXXXX)
cleanup() {
  ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent >/dev/null || true
  rm -rf "$WORK"
  rmdir "$STATE" 2>/dev/null || true  # only when empty: another run's directory keeps it
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { printf '%.1f' "$(echo "$(now) - $1" | bc -l)"; }

mkdir -p "$WORK/reports/slices"
t=$(now)
ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" > "$WORK/lab.log" || { cat "$WORK/lab.log"; exit 1; }
echo "lab of $N hosts: $(since "$t") s"

# every third host compliant with azure-lb (detection 120 + 10 x 3 = 150 s < 240 s)
for i in $(seq 3 3 "$N"); do
  ip netns exec "tkfs-$(printf 's%02d' "$i")" sysctl -q -w net.ipv4.tcp_keepalive_time=120 \
    net.ipv4.tcp_keepalive_intvl=10 net.ipv4.tcp_keepalive_probes=3
done
cat > "$WORK/ghost.yml" <<GHOST
all:
  hosts:
    ghost:
      ansible_connection: tcplab.keepalive.netns
      ansible_netns_name: tkfs-ghost-never-created
GHOST
for h in $HOSTS; do mkdir -p "$WORK/textfile/$h"; done

# 1. the whole run (unreachable hosts make ansible-playbook exit 4)
t=$(now)
rc=0
ansible-playbook -i "$INV" -i "$WORK/ghost.yml" -f "$FORKS" tcplab.keepalive.audit -e "{\"audit_policy\": {\"preset\": \"azure-lb\"},
  \"audit_report_dir\": \"$WORK/reports/whole\", \"audit_textfile\": true,
  \"audit_textfile_dir\": \"$WORK/textfile/{{ inventory_hostname }}\"}" > "$WORK/whole.log" || rc=$?
cat "$WORK/whole.log"
[ "$rc" = 0 ] || [ "$rc" = 4 ]
WHOLE_S=$(since "$t")

# 2. four slices at once through ansible-runner
# shellcheck disable=SC2086
"$PY" slices.py 4 "$WORK/runner" "$WORK/reports/slices" "$FORKS" "$INV" "$WORK/ghost.yml" -- $HOSTS ghost \
  | tee "$WORK/slices.json"
SLICES_S=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$WORK/slices.json")
ls "$WORK"/reports/slices/slice-*/audit.slice.json

# 3. the merge, twice: the second changes nothing
merge() {
  ansible-playbook tcplab.keepalive.audit_merge -e "{\"audit_merge_sources\": $1, \"audit_report_dir\": \"$2\"}"
}
t=$(now)
merge "[\"$WORK/reports/slices\"]" "$WORK/reports/merged" | tee "$WORK/merge.log"
MERGE_S=$(since "$t")
grep -q 'localhost *: ok=[0-9]* *changed=1 ' "$WORK/merge.log"
merge "[\"$WORK/reports/slices\"]" "$WORK/reports/merged" | tee "$WORK/merge2.log"
grep -q 'localhost *: ok=[0-9]* *changed=0 ' "$WORK/merge2.log"

# 4. equal to the whole run; each host's own metrics file parses
"$PY" check.py equal "$WORK/reports/whole" "$WORK/reports/merged" "$((N + 1))" varied
# shellcheck disable=SC2086
"$PY" check.py textfile "$WORK/textfile" $HOSTS

# 5. refusals name the cause and write nothing
refused() {  # refused SOURCES MESSAGE
  if merge "$1" "$WORK/reports/refused" > "$WORK/refused.log" 2>&1; then
    echo "merge of $1 was not refused"; exit 1
  fi
  grep -F -- "$2" "$WORK/refused.log"
  [ ! -e "$WORK/reports/refused" ]
}
refused "[\"$WORK/reports/slices\", \"$WORK/reports/slices/slice-0\"]" "is given twice"
# ghost is the last host of the inventory: slice N mod 4 has it
GS=$WORK/reports/slices/slice-$((N % 4))
refused "[\"$GS\", \"$WORK/reports/whole\"]" \
  "host(s) are in more than one slice: ghost (in $GS/audit.slice.json, $WORK/reports/whole/audit.slice.json)"

echo "timings: whole run ${WHOLE_S} s, 4 slices at once ${SLICES_S} s, merge ${MERGE_S} s ($((N + 1)) hosts, forks $FORKS)"
