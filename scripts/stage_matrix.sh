#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# The matrix stage: the ansible-core versions that meta/runtime.yml claims (requires_ansible
# ">=2.16.0"), each in its own virtual environment .build/matrix/<version>/venv (Python 3.11, the
# pinned requirements-matrix/ansible-core-<version>.txt; docs/development.md):
#   unit         pytest -m "ansible_core and not once" tests/unit: the unit tests that run ansible-core's
#                code (modules, playbooks, the inventory, the filter and connection plugins, AnsiballZ on
#                every target Python; tests/unit/conftest.py lists them and test_matrix_marker.py keeps the
#                list complete), less those marked once (the collection's own logic through an interface
#                the file's other tests cover; pytest.ini). The other unit tests run module_utils code that imports nothing of
#                ansible-core - the same code on the same Python 3.11 in every version - and run once, in
#                the unit stage. Each version's suite runs in private network, mount (/run) and PID
#                namespaces (scripts/unit_private.sh), beside the lab stages, although its tests use
#                fixed lab names (bridges, namespaces, /run/tcplab-test-* directories)
#   sanity       ansible-test sanity --venv on a copy of the collection, without pylint
#                (MATRIX_SANITY_ARGS, default "--skip-test pylint"); tests/sanity/ignore-<version>.txt
#                exists and is empty. pylint is most of a sanity run's CPU time, and its findings follow
#                the pylint release, not ansible-core's: the sanity stage runs it with 2.19's
#                ansible-test, the newest rules. MATRIX_SANITY_ARGS="" runs it for each version too
#   ansible-doc  of every plugin and role
#   experiment   the loopback experiment at time 2 s, intvl 1 s, probes 3 on a lab host of its own
#                (namespace prefix tkm-, bridge tkmbr0, 198.19.65.0/24), the lab removed afterwards
# 2.19 is the ansible-core of the main stages (requirements-dev.txt): by default its line of the
# summary quotes the unit, sanity and build stages of the same scripts/test.sh run; MATRIX_VERSIONS
# with 2.19 runs it here too, with .venv.
#
#   bash scripts/stage_matrix.sh             the stage on its own (as root)
#   STAGES=matrix bash scripts/test.sh        the same through the test suite
#   MATRIX_VERSIONS="2.16" MATRIX_PARTS="unit sanity" bash scripts/stage_matrix.sh
#   MATRIX_UNIT_ARGS="tests/unit" ...         other pytest arguments than '-m "ansible_core and not once" tests/unit'
#                                             (this one: every unit test, for each version)
#   MATRIX_UNIT_JOBS=1 ...                    that many versions' unit suites at a time (default 2)
#   bash scripts/stage_matrix.sh --lock      re-resolve requirements-matrix/*.txt from their .in files
#
# Sourced (by scripts/test.sh) it only defines stage_matrix.

# shellcheck source=scripts/unit_private.sh
. "$(dirname "${BASH_SOURCE[0]}")/unit_private.sh" || return 1 2>/dev/null || exit 1
# shellcheck source=scripts/collection_copy.sh
. "$(dirname "${BASH_SOURCE[0]}")/collection_copy.sh" || return 1 2>/dev/null || exit 1

MATRIX_ALL_VERSIONS="2.16 2.17 2.18"
MATRIX_MAIN_VERSION=2.19
MATRIX_BRIDGE=tkmbr0
MATRIX_NETWORK=198.19.65.0/24
MATRIX_PREFIX=tkm-

matrix_pip() {  # pip without the machine's notes on index locations it skips
  "$@" 2>&1 | grep -v "^WARNING: Location '"
  return "${PIPESTATUS[0]}"
}

matrix_venv_dir() {  # VERSION
  if [ "$1" = "$MATRIX_MAIN_VERSION" ]; then echo "$TCPLAB_ROOT/.venv"; else echo "$MATRIX_DIR/$1/venv"; fi
}

# The virtual environment of VERSION from its pinned requirements; skipped when the requirements
# did not change. Wheels are kept in .build/matrix/wheels, so a new environment installs offline.
matrix_venv() {
  local version=$1 venv reqs want stamp
  [ "$version" = "$MATRIX_MAIN_VERSION" ] && return 0  # .venv: bootstrap.sh keeps it
  venv=$(matrix_venv_dir "$version")
  reqs="$TCPLAB_ROOT/requirements-matrix/ansible-core-$version.txt"
  [ -f "$reqs" ] || { echo "matrix: $reqs is missing (bash scripts/stage_matrix.sh --lock)"; return 1; }
  want=$(sha256sum "$reqs" | cut -d' ' -f1)
  stamp="$venv/.tcplab-requirements"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "matrix: creating $venv (pinned $(basename "$reqs"))"
  rm -rf "$venv"
  python3.11 -m venv "$venv" || return 1
  matrix_pip "$venv/bin/pip" download -q --no-index --find-links "$MATRIX_DIR/wheels" -d "$MATRIX_DIR/wheels" -r "$reqs" >/dev/null \
    || matrix_pip "$venv/bin/pip" download -q -d "$MATRIX_DIR/wheels" -r "$reqs" || return 1
  matrix_pip "$venv/bin/pip" install -q --no-index --find-links "$MATRIX_DIR/wheels" -r "$reqs" || return 1
  echo "$want" > "$stamp"
}

# --lock: resolve each requirements-matrix/ansible-core-<version>.in into its .txt.
matrix_lock() {
  local in version tmp
  for in in "$TCPLAB_ROOT"/requirements-matrix/ansible-core-*.in; do
    version=$(basename "$in" .in); version=${version#ansible-core-}
    tmp=$(mktemp -d)
    if ! python3.11 -m venv "$tmp/venv" || ! (cd "$TCPLAB_ROOT/requirements-matrix" && "$tmp/venv/bin/pip" install -q -r "$in"); then
      rm -rf "$tmp"; return 1
    fi
    {
      sed -n '1,3p' "$in"
      echo "# Generated by scripts/stage_matrix.sh --lock from ansible-core-$version.in; do not edit."
      "$tmp/venv/bin/pip" freeze --all | grep -vE '^(pip|setuptools|wheel)=='
    } > "${in%.in}.txt"
    rm -rf "$tmp"
    echo "matrix: wrote ${in%.in}.txt"
  done
}

# pytest tests/unit with VERSION's environment in private namespaces (scripts/unit_private.sh), so
# the versions' suites run side by side and beside the other stages.
matrix_unit() {
  local version=$1 venv out args=(-m "ansible_core and not once" tests/unit)
  venv=$(matrix_venv_dir "$version"); out="$MATRIX_DIR/$version"
  # shellcheck disable=SC2206  # MATRIX_UNIT_ARGS: pytest arguments, split into words
  [ -n "${MATRIX_UNIT_ARGS:-}" ] && args=($MATRIX_UNIT_ARGS)
  unit_private "$venv/bin/python" "matrix-$version" "$out/unit.log" "$out/unit.junit.xml" "${args[@]}"
}

# ansible-test bootstraps pip in its sanity environments with a script that it downloads: put our
# stand-in (scripts/ansible_test_get_pip.py) where this ansible-test looks for it.
matrix_seed_get_pip() {
  local python=$1 pip
  pip=$("$python" -c 'from ansible_test._internal.python_requirements import get_venv_packages
class Python:
    version = "3.11"
print(get_venv_packages(Python())["pip"])') || return 1
  mkdir -p ~/.ansible/test/cache
  cp "$TCPLAB_ROOT/scripts/ansible_test_get_pip.py" ~/.ansible/test/cache/"get_pip_${pip//./_}.py"
}

matrix_sanity() {
  local version=$1 venv out dir rc ignore
  venv=$(matrix_venv_dir "$version"); out="$MATRIX_DIR/$version"
  ignore="tests/sanity/ignore-$version.txt"
  matrix_seed_get_pip "$venv/bin/python" || return 1
  dir=$(collection_copy_to "$MATRIX_DIR/copy/ansible_collections/tcplab/keepalive")
  # shellcheck disable=SC2086  # MATRIX_SANITY_ARGS: ansible-test arguments
  (cd "$dir" && PATH="$venv/bin:$PATH" "$venv/bin/ansible-test" sanity --venv --python 3.11 --color no \
    ${MATRIX_SANITY_ARGS---skip-test pylint}) > "$out/sanity.log" 2>&1
  rc=$?
  if [ ! -f "$ignore" ] || [ -s "$ignore" ]; then
    echo "matrix: $ignore must exist and be empty" >> "$out/sanity.log"; rc=1
  fi
  return "$rc"
}

# ansible-doc --json of every module, connection, filter (one file may hold several filters, each
# documented in its own <name>.yml) and role; the count is of the plugins it documented.
matrix_doc() {
  local version=$1 venv out kind names rc=0 docs=0 want=0 got
  venv=$(matrix_venv_dir "$version"); out="$MATRIX_DIR/$version"
  : > "$out/ansible-doc.log"
  for kind in module connection filter role; do
    case $kind in
      module) names=$(find plugins/modules -maxdepth 1 -name '*.py' ! -name '__init__.py' -printf '%f\n' | sed 's/\.py$//') ;;
      connection) names=$(find plugins/connection -maxdepth 1 -name '*.py' ! -name '__init__.py' -printf '%f\n' | sed 's/\.py$//') ;;
      filter) names=$(find plugins/filter -maxdepth 1 -name '*.yml' -printf '%f\n' | sed 's/\.yml$//') ;;
      role) names=$(find roles -mindepth 1 -maxdepth 1 -type d -printf '%f\n') ;;
    esac
    names=$(echo "$names" | sort | sed 's/^/tcplab.keepalive./' | tr '\n' ' ')
    want=$((want + $(wc -w <<< "$names")))
    # shellcheck disable=SC2086  # one word per plugin
    if ! "$venv/bin/ansible-doc" --json -t "$kind" $names > "$out/doc-$kind.json" 2>> "$out/ansible-doc.log"; then
      echo "matrix: ansible-doc -t $kind failed" >> "$out/ansible-doc.log"; rc=1
    fi
    # shellcheck disable=SC2086  # one word per plugin
    got=$("$venv/bin/python" -c 'import json, sys
docs = json.load(open(sys.argv[1]))
print(sum(1 for name in sys.argv[2:] if name in docs))' "$out/doc-$kind.json" $names 2>> "$out/ansible-doc.log") || got=0
    docs=$((docs + got))
  done
  echo "$docs" > "$out/ansible-doc.count"
  [ "$docs" -eq "$want" ] || { echo "matrix: ansible-doc documented $docs of $want" >> "$out/ansible-doc.log"; rc=1; }
  return "$rc"
}

# The loopback experiment (as scripts/demo.sh) at 2/1/3 on a lab of this version's own: its
# namespace tkm-v<version>, its state directory; the lab is removed afterwards in any case.
matrix_experiment() {
  local version=$1 venv out host lab vars rc=0 report
  venv=$(matrix_venv_dir "$version"); out="$MATRIX_DIR/$version"
  host="v${version//./}"; lab="/run/tcplab-keepalive/matrix-$version"
  vars=$(printf '{"lab_hosts": ["%s"], "lab_state_dir": "%s", "lab_bridge": "%s", "lab_netns_prefix": "%s", "lab_network": "%s"}' \
    "$host" "$lab" "$MATRIX_BRIDGE" "$MATRIX_PREFIX" "$MATRIX_NETWORK")
  rm -rf "$out/reports"
  {
    PATH="$venv/bin:$PATH" ansible-playbook tcplab.keepalive.lab -e "$vars" \
      && PATH="$venv/bin:$PATH" ansible-playbook -i "$lab/inventory.yml" tcplab.keepalive.experiment \
        -e '{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 3}}' \
        -e "experiment_client=$host experiment_server=$host experiment_report_dir=$out/reports"
  } > "$out/experiment.log" 2>&1 || rc=1
  PATH="$venv/bin:$PATH" ansible-playbook tcplab.keepalive.lab -e "$vars" -e lab_state=absent >> "$out/experiment.log" 2>&1 || rc=1
  report=$(find "$out/reports" -name report.json 2>/dev/null | head -1)
  "$venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["verdict"])' "$report" > "$out/verdict" 2>/dev/null \
    || echo "no report" > "$out/verdict"
  [ "$(cat "$out/verdict")" = pass ] || rc=1
  return "$rc"
}

# Runs PART of VERSION, records "ok|FAILED <seconds>" in .build/matrix/<version>/<part>.result.
matrix_timed() {
  local version=$1 part=$2 start rc
  start=$(date +%s)
  "matrix_$part" "$version"; rc=$?
  echo "$([ "$rc" -eq 0 ] && echo ok || echo FAILED) $(( $(date +%s) - start ))" > "$MATRIX_DIR/$version/$part.result"
  return "$rc"
}

matrix_line() {  # VERSION: one line of the summary
  local dir="$MATRIX_DIR/$1" part result figure status line="" failed=0
  for part in $MATRIX_PARTS; do
    result=$(cat "$dir/$part.result" 2>/dev/null || echo "FAILED 0")
    case $part in
      unit) figure=$(grep -E '^[0-9]+ (passed|failed).* in [0-9.]+s' "$dir/unit.log" | tail -1 | sed -E 's/ in [0-9.]+s.*//')
        figure="unit ${figure:-no result}" ;;
      sanity) figure="sanity $(grep -c '^Running sanity test ' "$dir/sanity.log" 2>/dev/null) tests" ;;
      doc) figure="ansible-doc $(cat "$dir/ansible-doc.count" 2>/dev/null || echo 0)" ;;
      experiment) figure="experiment $(cat "$dir/verdict" 2>/dev/null || echo 'no report')" ;;
    esac
    status=""
    [ "${result%% *}" = ok ] || { status=", FAILED"; failed=1; }
    line="$line, $figure (${result#* } s$status)"
  done
  echo "${line#, }"
  return "$failed"
}

# What failed in VERSION, for the stage's output (CI keeps nothing else): the unit suite's short summary and
# the first lines of each failure's traceback; the last lines of a failed sanity, doc or experiment log.
matrix_failures() {
  local version=$1 dir="$MATRIX_DIR/$1" part log
  for part in $MATRIX_PARTS; do
    [ "$(cut -d' ' -f1 "$dir/$part.result" 2>/dev/null)" = ok ] && continue
    case $part in
      unit) log=$dir/unit.log ;;
      sanity) log=$dir/sanity.log ;;
      doc) log=$dir/ansible-doc.log ;;
      experiment) log=$dir/experiment.log ;;
    esac
    echo "---- matrix: ansible-core $version: $part failed ($log) ----"
    if [ "$part" = unit ]; then
      grep -E '^(FAILED|ERROR) ' "$log"
      sed -n '/^=* FAILURES =*$/,/^=* short test summary/p' "$log" | head -150
    else
      tail -40 "$log"
    fi
  done
}

# 2.19's line: the figures of the main stages of this scripts/test.sh run, when they ran.
matrix_main_line() {
  local unit="${SUMMARY[unit]:-}" sanity="${SUMMARY[sanity]:-}" build="${SUMMARY[build]:-}"
  if [ -z "$unit$sanity$build" ]; then
    echo "covered by the main stages (unit, sanity, build, integration, molecule with .venv); not run in this invocation"
    return 0
  fi
  echo "from the main stages of this run: unit ${unit:-not run}; sanity ${sanity:-not run}; build ${build:-not run}" \
    | sed -E 's/ in [0-9.]+s//'
}

stage_matrix() {
  MATRIX_DIR=${MATRIX_DIR:-$TCPLAB_ROOT/.build/matrix}
  MATRIX_VERSIONS=${MATRIX_VERSIONS:-$MATRIX_ALL_VERSIONS}
  MATRIX_PARTS=${MATRIX_PARTS:-unit sanity doc experiment}
  local version part rc=0 pids=() start lines=() line
  start=$(date +%s)
  mkdir -p "$MATRIX_DIR"
  rm -rf "$MATRIX_DIR/copy"
  for version in $MATRIX_VERSIONS; do
    rm -rf "${MATRIX_DIR:?}/$version"/*.result "$MATRIX_DIR/$version"/*.log
    mkdir -p "$MATRIX_DIR/$version"
    matrix_venv "$version" || { echo "matrix: no environment for ansible-core $version"; rc=1; }
  done
  [ "$rc" -eq 0 ] || return 1
  # the unit suites in the background, MATRIX_UNIT_JOBS (default 2) at a time, beside the rest of this stage and the
  # lab stages of scripts/test.sh (they mostly wait; three at once beside the vms scenario's VMs took the load to 9,
  # where timing tests of the capture fail) ...
  if [[ " $MATRIX_PARTS " == *" unit "* ]]; then
    ( rc=0 unit_pids=()
      for version in $MATRIX_VERSIONS; do
        while [ "$(jobs -rp | wc -l)" -ge "${MATRIX_UNIT_JOBS:-2}" ]; do wait -n; done
        matrix_timed "$version" unit & unit_pids+=($!)
      done
      for pid in "${unit_pids[@]}"; do wait "$pid" || rc=1; done  # bash keeps each status for its pid
      exit "$rc" ) & pids+=($!)
  fi
  # ... while the rest runs one version after the other (one lab bridge, CPU-bound sanity)
  for version in $MATRIX_VERSIONS; do
    for part in $MATRIX_PARTS; do
      [ "$part" = unit ] && continue
      echo "matrix: ansible-core $version: $part"
      matrix_timed "$version" "$part" || rc=1
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  for version in $MATRIX_VERSIONS; do
    lines+=("$(printf '%-6s %s %s' "$version" "$("$(matrix_venv_dir "$version")/bin/python" -c \
      'from ansible.release import __version__; print(__version__)')" "$(matrix_line "$version")")")
  done
  if [[ " $MATRIX_VERSIONS " != *" $MATRIX_MAIN_VERSION "* ]]; then
    lines+=("$(printf '%-6s %s' "$MATRIX_MAIN_VERSION" "$(matrix_main_line)")")
  fi
  printf '%s\n' "${lines[@]}" | tee "$MATRIX_DIR/summary.txt"
  for version in $MATRIX_VERSIONS; do matrix_failures "$version"; done
  # one line per version, under the summary column of scripts/test.sh
  SUMMARY[matrix]="$(echo "$MATRIX_VERSIONS" | wc -w) versions in $(( $(date +%s) - start )) s:"
  for line in "${lines[@]}"; do SUMMARY[matrix]+=$(printf '\n%30s%s' '' "$line"); done
  return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  # shellcheck source=scripts/bootstrap.sh
  . "$(dirname "$0")/bootstrap.sh" || exit 1
  if [ "${1:-}" = --lock ]; then
    matrix_lock; exit $?
  fi
  declare -A SUMMARY
  stage_matrix; status=$?
  printf '\n%-12s %-16s %s\n' matrix "$([ "$status" -eq 0 ] && echo ok || echo FAILED)" "${SUMMARY[matrix]}"
  exit "$status"
fi
