#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# The run's pcaps leave the capture hosts once the report has them: after a
# two-host experiment the report holds the client's pcap, and the host keeps
# neither the pcap nor its state record or log. A file in the pcap's place
# that the capture module did not write is never removed.
set -eux

LAB_DIR=/run/tcplab-keepalive/it-pcaps
LAB_VARS="{\"lab_hosts\": [\"client\", \"server\"], \"lab_state_dir\": \"$LAB_DIR\", \"lab_bridge\": \"tcplabitp0\","
LAB_VARS+=" \"lab_netns_prefix\": \"tcplab-itp-\", \"lab_network\": \"198.19.82.192/26\"}"
INV="$LAB_DIR/inventory.yml"
REPORTS=$(mktemp -d)
CAPTURES=/var/tmp/tcplab-keepalive/captures
RECORDS=/var/lib/tcplab-keepalive/capture
RUN=itpcaps$$

cleanup() {
  ansible-playbook -i "$INV" rollback.yml >/dev/null 2>&1 || true
  ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" -e lab_state=absent "$@" >/dev/null
  # this target's own run ids only
  rm -rf "$REPORTS" "$CAPTURES"/exp-"$RUN"*-client.pcap* "$CAPTURES"/exp-"$RUN"*-client.pcap "$RECORDS"/*exp-"$RUN"*
}
trap cleanup EXIT

ansible-playbook tcplab.keepalive.lab -e "$LAB_VARS" "$@"

experiment() {  # experiment RUN_ID
  ansible-playbook -i "$INV" tcplab.keepalive.experiment \
    -e '{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 3}, "experiment_idle_probes": 1}' \
    -e "experiment_client=client experiment_server=server experiment_report_dir=$REPORTS experiment_run_id=$1" "${@:2}"
}

experiment "${RUN}a" "$@"
report_dir=$(ls -d "$REPORTS/${RUN}a")
[ -s "$report_dir/client.pcap" ] || { echo "the report has no pcap"; exit 1; }
grep -q '"verdict": "pass"' "$report_dir/report.json"
# the kernel's samples, taken by the client's start, the waits and its status (kernel_sample), are judged and agree
python3 -c 'import json, sys; k = json.load(open(sys.argv[1]))["evidence"]["kernel"]; assert k["agree"] is True and k["tcp_abort_on_timeout"] == 1, k' \
  "$report_dir/report.json"
# nothing of the run's capture is left on the host: pcap, state record, log
if compgen -G "$CAPTURES/exp-${RUN}a-*-client*" > /dev/null; then echo "the run's pcap stayed on the host"; ls -l "$CAPTURES"; exit 1; fi
if compgen -G "$RECORDS/*exp-${RUN}a-*-client*" > /dev/null; then echo "the run's state record stayed"; ls -l "$RECORDS"; exit 1; fi

# A rerun with a run id an earlier run had meets nothing that run left: the
# names on the host carry each run's nonce. A file where run b's pcap would be
# if the run id alone named it (what a killed earlier run b could leave) neither
# stops the run nor is touched by it.
mkdir -p "$CAPTURES" && chmod 0700 "$CAPTURES"
echo "not a capture" > "$CAPTURES/exp-${RUN}b-client.pcap"
experiment "${RUN}b" "$@"
grep -q '"verdict": "pass"' "$REPORTS/${RUN}b/report.json"
[ "$(cat "$CAPTURES/exp-${RUN}b-client.pcap")" = "not a capture" ] || { echo "a file not ours was changed or removed"; exit 1; }

# A capture the module did not write is never removed: a state record proves a
# pcap ours, a name never does. Asked to remove that file, the module refuses
# and says why; the file stays as it was.
if ansible -i "$INV" client -m tcplab.keepalive.capture \
    -a "path=$CAPTURES/exp-${RUN}b-client.pcap state=absent" > "$REPORTS/foreign.log" 2>&1; then
  echo "the capture module removed a file it did not write"; exit 1
fi
grep -q "is not a pcap this module wrote" "$REPORTS/foreign.log"
[ "$(cat "$CAPTURES/exp-${RUN}b-client.pcap")" = "not a capture" ] || { echo "a file not ours was changed or removed"; exit 1; }
