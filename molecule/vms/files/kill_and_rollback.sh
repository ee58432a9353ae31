#!/usr/bin/env bash
# kill_and_rollback.sh INVENTORY HOST REPORT_DIR: start the experiment on HOST
# (loopback), SIGKILL its controller's whole process group once the DROP rule
# is in, then run tcplab.keepalive.rollback for HOST from a fresh controller.
set -euo pipefail
INV=$1 HOST=$2 REPORTS=$3
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
setsid ansible-playbook -i "$INV" tcplab.keepalive.experiment \
  -e '{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 3}, "experiment_idle_probes": 2}' \
  -e "experiment_client=$HOST experiment_report_dir=$REPORTS experiment_install_deps=true" > "$LOG" 2>&1 &
PLAY=$!
# the task after the DROP hands the unanswered probes to the client's end: the rule is in by then.
# Up to 600 s: alone the run gets there in about a minute, but under software emulation beside
# other scenarios its preflight and starts on the VM take several times that (the loop ends
# at once when the play does).
AFTER_DROP="Let the end on the client's host await the client's failure"
for _ in $(seq 1 3000); do
  if grep -q "$AFTER_DROP" "$LOG"; then break; fi
  if ! kill -0 "$PLAY" 2>/dev/null; then cat "$LOG"; echo "the experiment ended before it could be killed"; exit 1; fi
  sleep 0.2
done
grep -q "$AFTER_DROP" "$LOG" || { cat "$LOG"; echo "never reached the DROP"; exit 1; }
# ansible-core runs each task's worker in a session of its own: kill the whole
# tree of the controller (frozen first so that nothing forks meanwhile), as a
# crash of the controller machine would
descendants() { local child; for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done; }
TREE="$PLAY $(descendants "$PLAY")"
for pid in $TREE; do kill -STOP "$pid" 2>/dev/null || true; done
for pid in $TREE; do kill -KILL "$pid" 2>/dev/null || true; done
wait "$PLAY" || true
echo "killed the controller of the experiment on $HOST after the DROP"
ansible-playbook -i "$INV" tcplab.keepalive.rollback --limit "$HOST"
