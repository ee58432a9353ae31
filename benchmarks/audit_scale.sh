#!/usr/bin/env bash
# Scale of the fleet audit (docs/audit.md). Brings up N lab hosts (network
# namespaces, netns connection) and, in the same invocation, times over the
# same inventory and forks:
#   audit  ansible-playbook tcplab.keepalive.audit (2 plays: audit every host, report once)
#   ping   ansible -m ping (the floor: one module round trip per host)
#   naive  what a user would write: default fact gathering + three `command: sysctl -n`
#   sliced the audit as AWX job slicing runs it: SLICES (4) ansible-runner runs at
#          once, each on a disjoint part of the inventory (host i in slice i mod SLICES)
#   merge  tcplab.keepalive.audit_merge of the slices' reports (ansible-playbook, and the
#          merge logic alone without Ansible's start-up), checked equal to the single run
# Goals: audit within 1.25x of ping, at least 4x faster than naive, the
# time per host of the audit flat (within 20 %) from 50 to 200 hosts, and the
# merge under 5 % of the audit.
# Run as root after scripts/bootstrap.sh (or scripts/test.sh):
#   bash benchmarks/audit_scale.sh            # SIZES="50 200" FORKS=20 ROUNDS=1
#   NAIVE_SIZES="50 200" bash benchmarks/audit_scale.sh   # also the naive playbook at 200
#   SLICES=0 bash benchmarks/audit_scale.sh                # without the sliced run
# The lab's names can be changed (BENCH_BRIDGE, BENCH_PREFIX, BENCH_NETWORK, BENCH_DIR) to run it
# next to another lab.
# Never touches the root namespace; the lab is removed at the end (trap).
set -euo pipefail
# shellcheck source=scripts/bootstrap.sh
. "$(dirname "$0")/../scripts/bootstrap.sh"

SIZES=${SIZES:-"50 200"}
NAIVE_SIZES=${NAIVE_SIZES-50}
FORKS=${FORKS:-20}
ROUNDS=${ROUNDS:-1}
SLICES=${SLICES:-4}
LAB_DIR=${BENCH_DIR:-/run/tcplab-keepalive/bench-audit}
BRIDGE=${BENCH_BRIDGE:-tcplabaud0}
PREFIX=${BENCH_PREFIX:-tcplab-aud-}
NETWORK=${BENCH_NETWORK:-198.18.60.0/22}
INVENTORY="$LAB_DIR/inventory.yml"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLICE_RUNNER="$ROOT/tests/integration/targets/audit_slices/slices.py"
SLICE_CHECK="$ROOT/tests/integration/targets/audit_slices/check.py"
WORK=$(mktemp -d)

lab_vars() {
  local n=$1 hosts
  hosts=$(seq -f 'a%03g' 1 "$n" | sed 's/.*/"&"/' | paste -sd, -)
  printf '{"lab_hosts": [%s], "lab_state_dir": "%s", "lab_inventory": "%s", "lab_bridge": "%s", "lab_netns_prefix": "%s", "lab_network": "%s"}' \
    "$hosts" "$LAB_DIR" "$INVENTORY" "$BRIDGE" "$PREFIX" "$NETWORK"
}

cleanup() {
  ansible-playbook tcplab.keepalive.lab -e "$(lab_vars 1)" -e lab_state=absent >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/naive.yml" <<'EOF'
---
- name: Naive keepalive check
  hosts: lab
  tasks:
    - name: Read tcp_keepalive_time
      ansible.builtin.command: sysctl -n net.ipv4.tcp_keepalive_time
      changed_when: false
    - name: Read tcp_keepalive_intvl
      ansible.builtin.command: sysctl -n net.ipv4.tcp_keepalive_intvl
      changed_when: false
    - name: Read tcp_keepalive_probes
      ansible.builtin.command: sysctl -n net.ipv4.tcp_keepalive_probes
      changed_when: false
EOF

now() { date +%s.%N; }
# best (smallest) wall time of ROUNDS runs of a command, in seconds
timed() {
  local best="" start end t
  for _ in $(seq 1 "$ROUNDS"); do
    start=$(now)
    "$@" > "$WORK/last.log" 2>&1 || { echo "FAILED: $*" >&2; tail -20 "$WORK/last.log" >&2; return 1; }
    end=$(now)
    t=$(echo "$end - $start" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  printf '%.2f' "$best"
}
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
percent() { printf '%.1f' "$(echo "100 * $1 / $2" | bc -l)"; }

# The merge logic alone (what the module does after Ansible started it), best of 3, in seconds.
merge_logic() {
  PYTHONPATH="$ANSIBLE_COLLECTIONS_PATH" python - "$@" <<'PY'
import sys, time
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_merge import load_sources, merge
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_prom import render_prom
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import render_all, render_slice
best = None
for _ in range(3):
    start = time.monotonic()
    report, doc = merge(load_sources(sys.argv[1:]))
    render_all(report), render_prom(report), render_slice(doc)
    t = time.monotonic() - start
    best = t if best is None or t < best else best
print('%.3f' % best)
PY
}

# sliced SIZE: the SLICES slices at once, then the merge; sets SLICED_S MERGE_S MERGE_LOGIC_S
sliced() {
  local n=$1 hosts
  hosts=$(seq -f 'a%03g' 1 "$n")
  rm -rf "$WORK/runner" "$WORK/slices" "$WORK/merged"
  # shellcheck disable=SC2086
  python "$SLICE_RUNNER" "$SLICES" "$WORK/runner" "$WORK/slices" "$FORKS" "$INVENTORY" -- $hosts > "$WORK/slices.json" ||
    { echo "FAILED: the sliced run" >&2; cat "$WORK/slices.json" >&2; return 1; }
  SLICED_S=$(python -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["seconds"])' "$WORK/slices.json")
  MERGE_S=$(timed ansible-playbook tcplab.keepalive.audit_merge \
    -e "{\"audit_merge_sources\": [\"$WORK/slices\"], \"audit_report_dir\": \"$WORK/merged\"}")
  MERGE_LOGIC_S=$(merge_logic "$WORK/slices")
  python "$SLICE_CHECK" equal "$WORK/reports" "$WORK/merged" "$n" > /dev/null
}

declare -A PER_HOST
SLICE_LINES=()
printf '%-6s %-9s %-9s %-9s %-14s %-14s %-12s\n' hosts audit_s ping_s naive_s audit/ping naive/audit audit_ms/host
for n in $SIZES; do
  ansible-playbook tcplab.keepalive.lab -e "$(lab_vars "$n")" >/dev/null
  ansible -i "$INVENTORY" lab -m ansible.builtin.ping -f "$FORKS" >/dev/null  # warm-up
  audit=$(timed ansible-playbook -i "$INVENTORY" -f "$FORKS" tcplab.keepalive.audit \
    -e "{\"audit_report_dir\": \"$WORK/reports\", \"audit_policy\": {\"preset\": \"azure-lb\"}}")
  grep -q "$n hosts:" "$WORK/last.log" || { echo "audit did not report $n hosts" >&2; exit 1; }
  ping=$(timed ansible -i "$INVENTORY" lab -m ansible.builtin.ping -f "$FORKS")
  naive=-
  if [[ " $NAIVE_SIZES " == *" $n "* ]]; then
    naive=$(timed ansible-playbook -i "$INVENTORY" -f "$FORKS" "$WORK/naive.yml")
  fi
  PER_HOST[$n]=$(printf '%.1f' "$(echo "$audit * 1000 / $n" | bc -l)")
  naive_ratio=-
  if [ "$naive" != - ]; then naive_ratio=$(ratio "$naive" "$audit"); fi
  printf '%-6s %-9s %-9s %-9s %-14s %-14s %-12s\n' "$n" "$audit" "$ping" "$naive" "$(ratio "$audit" "$ping")" \
    "$naive_ratio" "${PER_HOST[$n]}"
  if [ "$SLICES" -gt 0 ]; then
    sliced "$n"
    SLICE_LINES+=("$(printf '%-6s %-9s %-10s %-9s %-14s %-21s %-15s %-10s' "$n" "$audit" "$SLICED_S" "$MERGE_S" \
      "$MERGE_LOGIC_S" "$(ratio "$(echo "$SLICED_S + $MERGE_S" | bc -l)" "$audit")" "$(percent "$MERGE_S" "$audit")" \
      "$(percent "$MERGE_LOGIC_S" "$audit")")")
  fi
done

if [ "${#SLICE_LINES[@]}" -gt 0 ]; then
  echo
  echo "sliced: $SLICES slices at once through ansible-runner, then tcplab.keepalive.audit_merge (merged report equal to the single run's)"
  printf '%-6s %-9s %-10s %-9s %-14s %-21s %-15s %-10s\n' hosts audit_s sliced_s merge_s merge_logic_s \
    '(sliced+merge)/audit' merge/audit_% logic/audit_%
  printf '%s\n' "${SLICE_LINES[@]}"
fi

read -r -a sizes <<< "$SIZES"
if [ "${#sizes[@]}" -ge 2 ]; then
  first=${sizes[0]} last=${sizes[${#sizes[@]}-1]}
  echo "audit time per host: ${PER_HOST[$first]} ms at $first hosts, ${PER_HOST[$last]} ms at $last hosts" \
    "(ratio $(ratio "${PER_HOST[$last]}" "${PER_HOST[$first]}"), goal within 1.20)"
fi
echo "goals: audit/ping <= 1.25, naive/audit >= 4, merge/audit < 5 % (forks $FORKS, best of $ROUNDS)"
