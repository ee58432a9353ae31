#!/usr/bin/env bash
# Scale of the fleet audit (docs/audit.md). Brings up N lab hosts (network
# namespaces, netns connection) and, in the same invocation, times over the
# same inventory and forks:
#   audit  ansible-playbook tcplab.keepalive.audit (2 plays: audit every host, report once)
#   ping   ansible -m ping (the floor: one module round trip per host)
#   naive  what a user would write: default fact gathering + three `command: sysctl -n`
# Goals: audit within 1.25x of ping, at least 4x faster than naive, and the
# time per host of the audit flat (within 20 %) from 50 to 200 hosts.
# Run as root after scripts/bootstrap.sh (or scripts/test.sh):
#   bash benchmarks/audit_scale.sh            # SIZES="50 200" FORKS=20 ROUNDS=1
#   NAIVE_SIZES="50 200" bash benchmarks/audit_scale.sh   # also the naive playbook at 200
# Never touches the root namespace; the lab is removed at the end (trap).
set -euo pipefail
# shellcheck source=scripts/bootstrap.sh
. "$(dirname "$0")/../scripts/bootstrap.sh"

SIZES=${SIZES:-"50 200"}
NAIVE_SIZES=${NAIVE_SIZES-50}
FORKS=${FORKS:-20}
ROUNDS=${ROUNDS:-1}
LAB_DIR=/run/tcplab-keepalive/bench-audit
INVENTORY="$LAB_DIR/inventory.yml"
WORK=$(mktemp -d)

lab_vars() {
  local n=$1 hosts
  hosts=$(seq -f 'a%03g' 1 "$n" | sed 's/.*/"&"/' | paste -sd, -)
  printf '{"lab_hosts": [%s], "lab_state_dir": "%s", "lab_inventory": "%s", "lab_bridge": "tcplabaud0", "lab_netns_prefix": "tcplab-aud-", "lab_network": "198.18.60.0/22"}' \
    "$hosts" "$LAB_DIR" "$INVENTORY"
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

declare -A PER_HOST
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
done

read -r -a sizes <<< "$SIZES"
if [ "${#sizes[@]}" -ge 2 ]; then
  first=${sizes[0]} last=${sizes[${#sizes[@]}-1]}
  echo "audit time per host: ${PER_HOST[$first]} ms at $first hosts, ${PER_HOST[$last]} ms at $last hosts" \
    "(ratio $(ratio "${PER_HOST[$last]}" "${PER_HOST[$first]}"), goal within 1.20)"
fi
echo "goals: audit/ping <= 1.25, naive/audit >= 4 (forks $FORKS, best of $ROUNDS)"
