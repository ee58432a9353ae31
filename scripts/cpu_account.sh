#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Sourced by scripts/test.sh; it only defines the cpu_account_* functions.
#
# The CPU time each stage and each molecule scenario used, whatever it started: every process a
# stage starts (QEMU daemonizing included) stays in the stage's control group, which counts their
# CPU time. On this 2-core machine the lanes share the CPUs, so a stage's wall time says little
# about its cost; its CPU time does (docs/development.md). The groups are the run's own
# (tcplab-test-<pid of the suite> under the suite's own group, cgroup v1 cpuacct or cgroup v2) and
# are removed at the end. Where neither hierarchy can be written (no root, a read-only /sys) the
# functions do nothing and the summary shows no CPU figures.

CPU_ACCOUNT_DIR=""   # the run's group, empty when there is none
CPU_ACCOUNT_KIND=""  # v1 (cpuacct.usage, ns) or v2 (cpu.stat usage_usec)

cpu_account_init() {
  local path
  if [ -w /sys/fs/cgroup/cpuacct/cgroup.procs ]; then
    path=$(sed -n 's/^[0-9]*:\([a-z,]*,\)\{0,1\}cpuacct\(,[a-z,]*\)\{0,1\}:\(.*\)$/\3/p' /proc/self/cgroup | head -1)
    CPU_ACCOUNT_KIND=v1; CPU_ACCOUNT_DIR="/sys/fs/cgroup/cpuacct${path%/}/tcplab-test-$$"
  elif [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup/cgroup.procs ]; then
    path=$(sed -n 's/^0::\(.*\)$/\1/p' /proc/self/cgroup | head -1)
    CPU_ACCOUNT_KIND=v2; CPU_ACCOUNT_DIR="/sys/fs/cgroup${path%/}/tcplab-test-$$"
  fi
  if [ -z "$CPU_ACCOUNT_DIR" ] || ! mkdir "$CPU_ACCOUNT_DIR" 2>/dev/null; then
    CPU_ACCOUNT_DIR=""; CPU_ACCOUNT_KIND=""
  fi
}

# cpu_account_enter NAME: this shell (and whatever it starts from now on) counts in group NAME
# ("molecule/vms": a scenario's group inside its stage's, so the stage's figure includes it).
cpu_account_enter() {
  [ -n "$CPU_ACCOUNT_DIR" ] || return 0
  mkdir -p "$CPU_ACCOUNT_DIR/$1" 2>/dev/null && echo "$BASHPID" > "$CPU_ACCOUNT_DIR/$1/cgroup.procs" 2>/dev/null
  return 0
}

# cpu_account_seconds NAME: the CPU seconds group NAME has used (nothing without accounting)
cpu_account_seconds() {
  local dir=$CPU_ACCOUNT_DIR/$1
  [ -n "$CPU_ACCOUNT_DIR" ] && [ -d "$dir" ] || return 0
  if [ "$CPU_ACCOUNT_KIND" = v1 ]; then
    echo $(( $(cat "$dir/cpuacct.usage") / 1000000000 ))
  else
    echo $(( $(sed -n 's/^usage_usec //p' "$dir/cpu.stat") / 1000000 ))
  fi
}

# cpu_account_end: this shell leaves the run's groups, which are removed (innermost first); the
# groups that still hold a process are named (a stage left something running) and kept.
cpu_account_end() {
  local dir left=""
  [ -n "$CPU_ACCOUNT_DIR" ] || return 0
  echo "$BASHPID" > "${CPU_ACCOUNT_DIR%/*}/cgroup.procs" 2>/dev/null
  while IFS= read -r dir; do
    rmdir "$dir" 2>/dev/null || [ "$dir" = "$CPU_ACCOUNT_DIR" ] || left="$left ${dir#"$CPU_ACCOUNT_DIR"/}"
  done < <(find "$CPU_ACCOUNT_DIR" -depth -type d)
  [ -z "$left" ] || echo "processes the suite left running, in the CPU accounting groups:$left"
}
