#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Sourced by scripts/test.sh (the unit stage) and scripts/stage_matrix.sh (each ansible-core's unit
# suite); it only defines unit_private.
#
# unit_private PYTHON NAME LOG JUNIT [PYTEST ARGS...]
#   pytest with PYTHON in private network, mount and PID namespaces: a fresh loopback, /run and
#   /sys of its own, /etc as an overlay (the users, groups and sudoers that the lab tests add) that
#   ends with the suite, /proc of its own PIDs. The tests' fixed lab names (bridges, namespaces,
#   /run/tcplab-test-* directories) meet nothing of the host's, of another suite running at the same
#   time (the matrix's versions, the integration and molecule stages) or of another test run, and
#   nothing they do reaches the root namespace. The inner bash stays PID 1 (pytest is not PID 1,
#   which the tests' pid checks reject) and the namespace's network is the one PID 1 and 2 have: to
#   the tests it is the boot namespace. Whatever a test left running ends with PID 1.
#   NAME keys pytest's base temporary directory (/tmp/tcplab-unit-NAME, removed afterwards);
#   the output goes to LOG, the JUnit XML to JUNIT; the status is pytest's.
unit_private() {
  local python=$1 name=$2 log=$3 junit=$4 rc
  shift 4
  [ "$#" -gt 0 ] || set -- tests/unit
  rm -rf "/tmp/tcplab-unit-$name"
  # shellcheck disable=SC2016  # expanded by the inner bash
  unshare --net --mount --pid --fork --mount-proc --propagation private \
    env PATH="$(dirname "$python"):$PATH" UNIT_PYTHON="$python" UNIT_BASETEMP="/tmp/tcplab-unit-$name" UNIT_JUNIT="$junit" \
    bash -c '
      sleep infinity & # PID 2, as kthreadd on the host: a process of the boot namespace besides PID 1
      ip link set lo up && mount -t tmpfs -o mode=0755 tcplab-unit-run /run && mount -t sysfs tcplab-unit-sys /sys || exit 1
      mkdir -p /run/netns /run/lock /run/sshd /run/postgresql /run/tcplab-unit-etc/upper /run/tcplab-unit-etc/work
      # users, groups and sudoers of the lab tests: written to an overlay of /etc that ends with the suite
      mount -t overlay tcplab-unit-etc -o lowerdir=/etc,upperdir=/run/tcplab-unit-etc/upper,workdir=/run/tcplab-unit-etc/work /etc || exit 1
      "$UNIT_PYTHON" -m pytest "$@" -q -p no:cacheprovider --basetemp="$UNIT_BASETEMP" --junitxml="$UNIT_JUNIT"
      exit $?  # a second command: bash does not exec pytest in its place' unit-private "$@" > "$log" 2>&1
  rc=$?
  rm -rf "/tmp/tcplab-unit-$name"
  return "$rc"
}
