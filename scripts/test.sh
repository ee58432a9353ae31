#!/usr/bin/env bash
# shellcheck disable=SC2317  # the stage_* functions are called indirectly ("stage_$stage")
# The whole test suite (README: "Test it"). Run as root on Debian 12.
#
# Stages (each runs even if an earlier one failed; the script fails if any did):
#   unit         pytest tests/unit (real namespaces where the real thing can run), in private network, mount
#                and PID namespaces (scripts/unit_private.sh), so it runs beside the lab stages
#   sanity       ansible-test sanity --venv on a copy of the collection
#   lint         ansible-lint --profile production
#   build        ansible-galaxy collection build; galaxy-importer on the tarball (no error, no warning) and
#                flake8 with Galaxy's settings; ansible-builder introspect and create; install into a fresh
#                path + ansible-doc of every plugin
#   docs         the documentation site (scripts/stage_docs.sh): antsibull-docs lint-collection-docs and
#                sphinx-init + Sphinx with the guides of docs/ (no finding, no warning), no page loads anything
#                from another host, a headless-Chromium screenshot of the audit module's page
#   matrix       ansible-core 2.16, 2.17, 2.18 each in its own pinned environment (scripts/stage_matrix.sh):
#                unit, sanity, ansible-doc of every plugin and role, the loopback experiment; 2.19 is the
#                stages above
#   integration  ansible-test integration --local (targets: destructive, needs/root)
#   molecule     molecule test on every scenario, MOLECULE_WORKERS (default 2) at a time (molecule's own
#                --workers), the longest first
#   rootns       the root namespace's keepalive sysctls and iptables rules are as before the run
#
# The stages run in lanes, side by side: LANES (default "unit sanity lint build docs matrix|integration
# molecule") lists them, "|" between lanes; within a lane one stage after the other.
# LANES="unit sanity lint build docs matrix|integration|molecule" (three lanes) starts the molecule stage
# at once: faster, but the unit suite then meets the VMs' load (a unit timing test failed so once). Each lab stage
# and test uses labs of its own (names, bridges, networks), which is what lets them meet on one
# machine. A stage's output is printed in one piece when it ends (and kept in .build/test/<stage>.out).
# LANES="unit sanity lint build docs matrix integration molecule" runs everything one after the other.
#
# STAGES="unit lint" runs only those stages.
set -uo pipefail
# shellcheck source=scripts/bootstrap.sh
. "$(dirname "$0")/bootstrap.sh" || exit 1
# shellcheck source=scripts/stage_docs.sh
. "$(dirname "$0")/stage_docs.sh" || exit 1
# shellcheck source=scripts/stage_matrix.sh
. "$(dirname "$0")/stage_matrix.sh" || exit 1
# shellcheck source=scripts/unit_private.sh
. "$(dirname "$0")/unit_private.sh" || exit 1
# shellcheck source=scripts/cpu_account.sh
. "$(dirname "$0")/cpu_account.sh" || exit 1
# shellcheck source=scripts/collection_copy.sh
. "$(dirname "$0")/collection_copy.sh" || exit 1

ALL_STAGES="unit sanity lint build docs matrix integration molecule"
STAGES=${STAGES:-$ALL_STAGES}
LANES=${LANES:-"unit sanity lint build docs matrix|integration molecule"}
OUT="$TCPLAB_ROOT/.build/test"
rm -rf "$OUT"
mkdir -p "$OUT"
declare -A RESULT SUMMARY
FAILED=0

# Snapshot of what the tests must never change in the root namespace.
rootns_state() {
  local key
  for key in time intvl probes; do
    echo "net.ipv4.tcp_keepalive_$key = $(cat /proc/sys/net/ipv4/tcp_keepalive_$key)"
  done
  echo "# iptables -S"; iptables -w 10 -S
  echo "# ip6tables -S"; ip6tables -w 10 -S
}
# Named network namespaces of this project. One left by an earlier,
# interrupted run is removed by the target that journalled it: that is the
# recovery working, not a leak. A namespace the run leaves behind is a leak.
project_netns() {
  find /run/netns -mindepth 1 -maxdepth 1 \( -name 'tcplab*' -o -name 'tk*' \) -printf '%f\n' 2>/dev/null | sort
}
# Captures kept on this machine (pcaps, state records): a file the suite adds and leaves is
# reported below the summary (not failed on: a capture a killed run leaves is kept by design, for
# a look by hand, and rollback keeps pcaps).
kept_captures() {
  find /var/tmp/tcplab-keepalive/captures /var/lib/tcplab-keepalive/capture -type f 2>/dev/null | sort
}
# The job files of async tasks (poll: 0) on this controller: each task that starts one removes it
# (async_status mode: cleanup) once the job has ended; one the suite adds and leaves is reported
# below the summary, like a capture.
async_job_files() {
  find ~/.ansible_async -mindepth 1 -maxdepth 1 -type f -printf '%f\n' 2>/dev/null | sort
}
rootns_state > "$OUT/rootns.before"
project_netns > "$OUT/netns.before"
kept_captures > "$OUT/captures.before"
async_job_files > "$OUT/async.before"
if [ -s "$OUT/netns.before" ]; then
  echo "namespaces left by an earlier run (the targets that journalled them recover them):"
  sed 's/^/  /' "$OUT/netns.before"
fi

# A copy of this collection in ~/.ansible/collections (molecule's prerun
# makes one when it is on) would shadow the checkout in ansible-lint.
STALE=~/.ansible/collections/ansible_collections/tcplab/keepalive
if [ -e "$STALE" ] && [ ! "$STALE" -ef "$TCPLAB_ROOT" ]; then
  echo "removing $STALE, a stale copy of this collection that would shadow the checkout"
  rm -rf "$STALE"
fi

collection_copy() {  # STAGE: a copy of its own (sanity and integration run ansible-test at the same time)
  collection_copy_to "$OUT/copy-$1/ansible_collections/tcplab/keepalive"
}

stage_unit() {
  unit_private "$(command -v python)" main "$OUT/unit.log" "$OUT/unit.junit.xml" tests/unit
  local rc=$?
  cat "$OUT/unit.log"
  SUMMARY[unit]=$(grep -E '^[0-9]+ (passed|failed).* in [0-9.]+s' "$OUT/unit.log" | tail -1)
  return "$rc"
}

# ansible-test bootstraps pip in its virtual environments with a script it
# downloads from a site we cannot reach: put our stand-in in its cache.
seed_get_pip() {
  local version
  version=$(python -c 'from ansible_test._internal.python_requirements import get_venv_packages
class Python:
    version = "3.11"
print(get_venv_packages(Python())["pip"])') || return 1
  mkdir -p ~/.ansible/test/cache
  cp scripts/ansible_test_get_pip.py ~/.ansible/test/cache/"get_pip_${version//./_}.py"
}

stage_sanity() {
  local dir rc
  dir=$(collection_copy sanity)
  seed_get_pip
  (cd "$dir" && ansible-test sanity --venv --python 3.11 --color no 2>&1) | tee "$OUT/sanity.log"
  rc=${PIPESTATUS[0]}
  # the ignore files stay empty
  if ls tests/sanity/ignore-*.txt >/dev/null 2>&1 && [ -n "$(cat tests/sanity/ignore-*.txt)" ]; then
    echo "sanity: tests/sanity/ignore-*.txt must stay empty"; rc=1
  fi
  SUMMARY[sanity]="$(grep -c "^Running sanity test " "$OUT/sanity.log") sanity tests run"
  return "$rc"
}

stage_lint() {
  ansible-lint --profile production --offline --nocolor 2>&1 | tee "$OUT/lint.log"
  local rc=${PIPESTATUS[0]}
  SUMMARY[lint]=$(grep -E '^(Passed|Failed):' "$OUT/lint.log" | tail -1)
  return "$rc"
}

# The release checks of the build stage, with the tools of .venv-galaxy
# (requirements-dev-galaxy.txt; docs/development.md):
# - galaxy-importer imports the tarball as Galaxy does, ansible-test off and
#   ansible-lint on: no ERROR and no WARNING line;
# - flake8 with the importer's own settings on every Python file of the
#   tarball (run apart: the importer's flake8 pass also feeds it the filters'
#   YAML documentation, which is not Python);
# - ansible-builder introspect of the installed tarball lists every line of
#   the collection's requirements.txt and bindep.txt, and ansible-builder
#   create makes a build context of the example docs/execution-environment.yml.
GALAXY_SUMMARY=""
galaxy_checks() {
  local tarball=$1 inst=$2 gx="$TCPLAB_ROOT/.venv-galaxy/bin" log="$OUT/galaxy-importer.log" rc=0
  local coll="$inst/ansible_collections/tcplab/keepalive" errors warnings flake line
  (cd "$(dirname "$tarball")" && env -u ANSIBLE_CONFIG -u ANSIBLE_COLLECTIONS_PATH PATH="$gx:$PATH" \
    GALAXY_IMPORTER_CONFIG=/dev/null GALAXY_IMPORTER_RUN_ANSIBLE_TEST=false GALAXY_IMPORTER_RUN_ANSIBLE_LINT=true \
    GALAXY_IMPORTER_OFFLINE_ANSIBLE_LINT=true GALAXY_IMPORTER_RUN_FLAKE8=false GALAXY_IMPORTER_CHECK_REQUIRED_TAGS=true \
    "$gx/python" -m galaxy_importer.main "$(basename "$tarball")") > "$log" 2>&1 || rc=1
  errors=$(grep -c '^ERROR' "$log"); warnings=$(grep -c '^WARNING' "$log")
  echo "galaxy-importer $("$gx/python" -c 'from importlib.metadata import version; print(version("galaxy-importer"))'):"
  grep -E '^(ERROR|WARNING)' "$log"
  grep -vE '^(Loading|Linting|Finding|Getting|Running|\.\.\.)' "$log" | grep -vE '^(ERROR|WARNING)' | tail -3
  echo "galaxy-importer: $errors errors, $warnings warnings (log: $log)"
  if [ "$errors" -ne 0 ] || [ "$warnings" -ne 0 ] || ! grep -q '^Importer processing completed successfully' "$log"; then
    echo "build: galaxy-importer did not import $(basename "$tarball") cleanly"; rc=1
  fi
  (cd "$coll" && find . -name '*.py' -print0 | sort -z | xargs -0 "$gx/flake8" --isolated --extend-ignore E402 \
    --select E,F,W --max-line-length 160) > "$OUT/flake8.log" 2>&1
  flake=$(grep -c . "$OUT/flake8.log")
  if [ "$flake" -ne 0 ]; then
    cat "$OUT/flake8.log"; echo "build: flake8 (Galaxy's settings) found $flake problems"; rc=1
  fi
  "$gx/ansible-builder" introspect --sanitize "$inst" > "$OUT/ee-introspect.txt" 2>&1 || rc=1
  cat "$OUT/ee-introspect.txt"
  while IFS= read -r line; do
    line=${line%%#*}; line=$(echo "$line" | xargs)
    [ -n "$line" ] || continue
    if ! grep -qF "'$line  # from collection tcplab.keepalive'" "$OUT/ee-introspect.txt"; then
      echo "build: ansible-builder introspect does not list '$line'"; rc=1
    fi
  done < <(cat "$coll/requirements.txt" "$coll/bindep.txt")
  rm -rf "$OUT/ee-context"
  if "$gx/ansible-builder" create -f "$coll/docs/execution-environment.yml" -c "$OUT/ee-context" \
      --output-filename Containerfile > "$OUT/ee-create.log" 2>&1 \
      && [ -s "$OUT/ee-context/Containerfile" ] && grep -q 'name: tcplab.keepalive' "$OUT/ee-context/_build/requirements.yml"; then
    echo "ansible-builder create: build context in $OUT/ee-context"
  else
    cat "$OUT/ee-create.log"; echo "build: ansible-builder create of docs/execution-environment.yml failed"; rc=1
  fi
  GALAXY_SUMMARY="galaxy-importer $errors errors $warnings warnings, flake8 $flake, ansible-builder introspect+create"
  [ "$rc" -eq 0 ] || GALAXY_SUMMARY="$GALAXY_SUMMARY (FAILED)"
  return "$rc"
}

stage_build() {
  local dist="$OUT/dist" inst="$OUT/installed" tarball docs=0 kind file name rc=0
  ansible-galaxy collection build --force --output-path "$dist" . || return 1
  tarball=$(ls "$dist"/tcplab-keepalive-*.tar.gz)
  if tar tzf "$tarball" | grep -qE '^((tests/unit|benchmarks|\.ci|scripts|molecule)/|\.venv|requirements-d(ev|ocs)|requirements-matrix/|docs/development\.md)'; then
    echo "build: tests, benchmarks, scripts, CI or developer files leaked into $tarball"; return 1
  fi
  ansible-galaxy collection install --force -p "$inst" "$tarball" || return 1
  local coll="$inst/ansible_collections/tcplab/keepalive"
  galaxy_checks "$tarball" "$inst" || rc=1
  for kind in modules connection; do
    for file in "$coll/plugins/$kind"/*.py; do
      [ -e "$file" ] || continue
      name=$(basename "$file" .py)
      [ "$name" = __init__ ] && continue
      if ANSIBLE_COLLECTIONS_PATH="$inst" ansible-doc -t "${kind%s}" "tcplab.keepalive.$name" > "$OUT/doc-$name.txt"; then
        docs=$((docs + 1))
      else
        echo "build: ansible-doc tcplab.keepalive.$name failed"; rc=1
      fi
    done
  done
  # filter plugins: one file may hold several filters, each documented in its own <name>.yml
  for file in "$coll/plugins/filter"/*.yml; do
    [ -e "$file" ] || continue
    name=$(basename "$file" .yml)
    if ANSIBLE_COLLECTIONS_PATH="$inst" ansible-doc -t filter "tcplab.keepalive.$name" > "$OUT/doc-filter-$name.txt"; then
      docs=$((docs + 1))
    else
      echo "build: ansible-doc -t filter tcplab.keepalive.$name failed"; rc=1
    fi
  done
  for file in "$coll/roles"/*; do
    name=$(basename "$file")
    if ANSIBLE_COLLECTIONS_PATH="$inst" ansible-doc -t role "tcplab.keepalive.$name" > "$OUT/doc-role-$name.txt"; then
      docs=$((docs + 1))
    else
      echo "build: ansible-doc -t role tcplab.keepalive.$name failed"; rc=1
    fi
  done
  SUMMARY[build]="$(basename "$tarball"), ansible-doc of $docs plugins and roles from the installed tarball; $GALAXY_SUMMARY"
  return "$rc"
}

stage_integration() {
  local dir rc targets start
  targets=$(find tests/integration/targets -mindepth 1 -maxdepth 1 -type d | wc -l)
  if [ "$targets" -eq 0 ]; then
    SUMMARY[integration]="no targets yet"; return 0
  fi
  dir=$(collection_copy integration)
  start=$SECONDS
  (cd "$dir" && ansible-test integration --local --python 3.11 --color no --allow-destructive --allow-root 2>&1) \
    | stamp_headers "$INTEGRATION_HEADERS" | tee "$OUT/integration.log"
  rc=${PIPESTATUS[0]}
  SUMMARY[integration]="$(grep -cE "${INTEGRATION_HEADERS%$} \\+" "$OUT/integration.log") of $targets targets run; $(integration_longest "$OUT/integration.log" $((SECONDS - start)))"
  return "$rc"
}

# "longest: <target> <seconds> s, ..." (three) from the stamped target lines of LOG; the last target
# ended END seconds after the stream began.
integration_longest() {  # LOG END
  sed -nE 's/^Running ([^ ]+) integration test (role|script) \+([0-9.]+) s$/\3 \1/p' "$1" \
    | awk -v end="$2" 'NR > 1 { print name, $1 - start } { start = $1; name = $2 } END { if (NR) print name, end - start }' \
    | sort -k2,2nr | head -3 | awk '{ printf "%s%s %d s", (NR > 1 ? ", " : "longest: "), $1, $2 }'
}

# The scenarios, the long ones first (so the pool ends together); the rest in name order.
MOLECULE_WORKERS=${MOLECULE_WORKERS:-2}
MOLECULE_FIRST="vms idle_timeout in_flight audit"
molecule_order() {
  local all name
  all=$(find molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' | sed 's|^molecule/||' | sort)
  for name in $MOLECULE_FIRST; do grep -qx "$name" <<< "$all" && echo "$name"; done
  grep -vxF -f <(tr ' ' '\n' <<< "$MOLECULE_FIRST") <<< "$all"
}

# Header lines (those matching the extended regular expression RE) get the seconds since the stream
# began ("TASK [...] *** +123.4 s"): the difference to the next header is what it took. The other lines
# pass unchanged; bash's own clock, no process per line.
MOLECULE_HEADERS='^(TASK \[|PLAY \[|RUNNING HANDLER \[|INFO )'
INTEGRATION_HEADERS='^Running [^ ]+ integration test (role|script)$'
stamp_headers() {  # RE
  local re=$1 t0=${EPOCHREALTIME/./} line now
  while IFS= read -r line; do
    if [[ $line =~ $re ]]; then
      now=$(( ${EPOCHREALTIME/./} - t0 ))
      printf '%s +%d.%d s\n' "$line" $(( now / 1000000 )) $(( now / 100000 % 10 ))
    else
      printf '%s\n' "$line"
    fi
  done
}

molecule_one() {  # NAME: `molecule test` of one scenario; its log and "ok|FAILED <seconds>" in .build/test
  local name=$1 start rc
  start=$(date +%s)
  cpu_account_enter "molecule/$name"
  MOLECULE_GLOB='molecule/*/molecule.yml' NO_COLOR=1 molecule test -s "$name" 2>&1 | stamp_headers "$MOLECULE_HEADERS" > "$OUT/molecule-$name.log"
  rc=${PIPESTATUS[0]}
  echo "$([ "$rc" -eq 0 ] && echo ok || echo FAILED) $(( $(date +%s) - start ))" > "$OUT/molecule-$name.result"
  cpu_account_seconds "molecule/$name" > "$OUT/molecule-$name.cpu"
  return "$rc"
}

# Every scenario through molecule's own CLI, MOLECULE_WORKERS at a time: each brings up and removes
# a lab of its own (molecule/<scenario>/vars/lab.yml: prefix, bridge, network), so they run side
# by side. (molecule's --workers runs the scenarios without their create and destroy steps, for
# scenarios that share one infrastructure: ours each create their own.)
stage_molecule() {
  local names name rc=0 result cpu figures=""
  names=$(molecule_order)
  for name in $names; do
    while [ "$(jobs -rp | wc -l)" -ge "$MOLECULE_WORKERS" ]; do wait -n; done
    echo "molecule: scenario $name started at $(date +%T)"
    molecule_one "$name" &
  done
  wait
  for name in $names; do
    result=$(cat "$OUT/molecule-$name.result" 2>/dev/null || echo "FAILED 0")
    printf '\n==== molecule scenario %s: %s s ====\n' "$name" "$result"
    if [ "${result%% *}" = ok ]; then
      sed -n '/^SCENARIO RECAP/,$p' "$OUT/molecule-$name.log"
    else
      rc=1; cat "$OUT/molecule-$name.log"
    fi
    cpu=$(cat "$OUT/molecule-$name.cpu" 2>/dev/null)
    figures="$figures${figures:+,} $name ${result#* } s${cpu:+ (cpu $cpu s)}"
    [ "${result%% *}" = ok ] || figures="$figures FAILED"
  done
  SUMMARY[molecule]="$(wc -w <<< "$names") scenarios, $MOLECULE_WORKERS at a time:$figures"
  return "$rc"
}

# One lane: its stages one after the other, each stage's output kept in .build/test/<stage>.out and
# printed in one piece when the stage ends (lanes print one at a time); its summary line and result
# in .build/test/<stage>.summary and .result for the summary below.
run_lane() {
  local stage start rc cpu
  for stage in "$@"; do
    start=$(date +%s)
    echo "[$(date +%T)] stage $stage started" | flock "$OUT/.print" cat
    cpu_account_enter "$stage"
    "stage_$stage" > "$OUT/$stage.out" 2>&1
    rc=$?
    cpu=$(cpu_account_seconds "$stage")
    printf '%s' "${SUMMARY[$stage]:-}" > "$OUT/$stage.summary"
    echo "$([ "$rc" -eq 0 ] && echo ok || echo FAILED) ($(( $(date +%s) - start )) s${cpu:+, cpu $cpu s})" > "$OUT/$stage.result"
    { printf '\n######## stage %s: %s, ended %s ########\n' "$stage" "$(cat "$OUT/$stage.result")" "$(date +%T)"
      cat "$OUT/$stage.out"; } | flock "$OUT/.print" cat
  done
}

# The lanes of LANES, each limited to the stages of STAGES, side by side.
SUITE_START=$(date +%s)
cpu_account_init
lane_pids=()
IFS='|' read -ra lanes <<< "$LANES"
for lane in "${lanes[@]}"; do
  mine=()
  for stage in $lane; do
    [[ " $STAGES " == *" $stage "* ]] && mine+=("$stage")
  done
  [ "${#mine[@]}" -gt 0 ] || continue
  echo "lane: ${mine[*]}"
  run_lane "${mine[@]}" & lane_pids+=($!)
done
for stage in $STAGES; do
  [[ " ${LANES//|/ } " == *" $stage "* ]] || { echo "stage $stage is in no lane of LANES ($LANES)"; FAILED=1; }
done
for pid in "${lane_pids[@]}"; do wait "$pid"; done
CPU_TOTAL=0
for stage in $STAGES; do CPU_TOTAL=$(( CPU_TOTAL + $(cpu_account_seconds "$stage" || true) + 0 )); done
CPU_LEFT=$(cpu_account_end)
for stage in $STAGES; do
  RESULT[$stage]=$(cat "$OUT/$stage.result" 2>/dev/null || echo "FAILED (did not run)")
  SUMMARY[$stage]=$(cat "$OUT/$stage.summary" 2>/dev/null)
  [ "${RESULT[$stage]%% *}" = ok ] || FAILED=1
done

printf '\n######## stage rootns ########\n'
rootns_state > "$OUT/rootns.after"
project_netns > "$OUT/netns.after"
LEAKED=$(comm -13 "$OUT/netns.before" "$OUT/netns.after")
RECOVERED=$(comm -23 "$OUT/netns.before" "$OUT/netns.after")
if [ -n "$RECOVERED" ]; then
  echo "namespaces of an earlier run, recovered: $(tr "\n" " " <<< "$RECOVERED")"
fi
if ! diff -u "$OUT/rootns.before" "$OUT/rootns.after"; then
  RESULT[rootns]=FAILED; FAILED=1
  SUMMARY[rootns]="the root namespace changed (diff above)"
elif [ -n "$LEAKED" ]; then
  RESULT[rootns]=FAILED; FAILED=1
  SUMMARY[rootns]="namespaces left behind: $(tr "\n" " " <<< "$LEAKED")"
else
  RESULT[rootns]=ok
  SUMMARY[rootns]="keepalive sysctls, iptables -S, ip6tables -S of the root namespace unchanged; no namespace left behind"
fi

# The first lines that say why, of each failed stage and molecule scenario: printed last, right
# below the summary, where a reader of a long log's tail sees them (the whole logs are above).
why_failed() {  # LABEL FILE
  [ -s "$2" ] || return 0
  printf '%s:\n' "$1"
  grep -n -m 12 -E '^(fatal|failed): |FAILED!|\[ERROR\]|^E  |^FAILED |^Failed: |^[a-z-]+\[[a-z-]+\]: |Traceback|AssertionError|^ERROR|never saw|should have' "$2" \
    | cut -c1-400 | sed 's/^/  /' || true
}

printf '\n######## summary (%s s%s) ########\n' "$(( $(date +%s) - SUITE_START ))" \
  "$([ -n "$CPU_ACCOUNT_DIR" ] && echo ", cpu $CPU_TOTAL s of the stages")"
for stage in $STAGES rootns; do
  printf '%-12s %-16s %s\n' "$stage" "${RESULT[$stage]}" "${SUMMARY[$stage]:-}"
done
[ -z "$CPU_LEFT" ] || printf '\n%s\n' "$CPU_LEFT"
kept_captures > "$OUT/captures.after"
KEPT=$(comm -13 "$OUT/captures.before" "$OUT/captures.after")
if [ -n "$KEPT" ]; then
  printf '\ncapture files the suite left on this machine (%d):\n' "$(wc -l <<< "$KEPT")"
  head -20 <<< "$KEPT" | sed 's/^/  /'
fi
async_job_files > "$OUT/async.after"
JOBS_LEFT=$(comm -13 "$OUT/async.before" "$OUT/async.after")
if [ -n "$JOBS_LEFT" ]; then
  printf '\nasync job files the suite left in %s (%d; the task that started each should remove it):\n' \
    ~/.ansible_async "$(wc -l <<< "$JOBS_LEFT")"
  for job in $(head -20 <<< "$JOBS_LEFT"); do
    printf '  %s: %s\n' "$job" "$(head -c 160 ~/.ansible_async/"$job" | tr '\n' ' ')"
  done
fi
if [ "$FAILED" != 0 ]; then
  printf '\n######## why (first lines of each failure; whole logs above) ########\n'
  for stage in $STAGES; do
    [ "${RESULT[$stage]%% *}" = ok ] && continue
    if [ "$stage" = molecule ]; then
      for result in "$OUT"/molecule-*.result; do
        [ -e "$result" ] || continue
        name=${result##*/molecule-}
        [ "$(cut -d' ' -f1 "$result")" = ok ] || why_failed "molecule ${name%.result}" "${result%.result}.log"
      done
    else
      why_failed "$stage" "$OUT/$stage.out"
    fi
  done
fi
exit "$FAILED"
