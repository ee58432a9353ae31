# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A process's children and a session's members (_proc.children, _proc.session_members) on real processes: a
session leader whose children were started from its main thread and from another thread, a grandchild, a zombie
and a child that left for a session of its own. The kernel's list of children (/proc/PID/task/TID/children) and
the look at every process's parent, used where the kernel keeps no such list, must give the same answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _proc

# The leader: a child from its main thread (which itself has a child), one from a second thread, one that dies
# unreaped (a zombie) and one that starts a session of its own; then it prints the pids and waits.
LEADER = r'''
import subprocess, sys, threading, time
sleep = [sys.executable, '-c', 'import time; time.sleep(60)']
main = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys, time; '
                         'p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]); '
                         'print(p.pid, flush=True); time.sleep(60)'], stdout=subprocess.PIPE, text=True)
grandchild = int(main.stdout.readline())
box = []
thread = threading.Thread(target=lambda: box.append(subprocess.Popen(sleep)))
thread.start()
thread.join()
zombie = subprocess.Popen([sys.executable, '-c', 'pass'])   # never polled nor waited for (that would reap it)
away = subprocess.Popen(sleep, start_new_session=True)
time.sleep(0.5)
print(main.pid, grandchild, box[0].pid, zombie.pid, away.pid, flush=True)
time.sleep(60)
'''


@pytest.fixture
def leader():
    proc = subprocess.Popen([sys.executable, '-c', LEADER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids = dict(zip(('main', 'grandchild', 'threaded', 'zombie', 'away'), map(int, proc.stdout.readline().split())))
        deadline = time.monotonic() + 10
        while _proc.stat_fields(pids['zombie'])[0] != 'Z' and time.monotonic() < deadline:
            time.sleep(0.02)
        yield proc.pid, pids
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if 'pids' in locals():
            os.kill(pids['away'], signal.SIGKILL)


def test_the_kernel_s_list_and_the_look_at_every_process_name_the_same_live_children(leader, monkeypatch):
    pid, pids = leader
    assert _proc._listed_children(pid) is not None, 'this kernel keeps no list of children (CONFIG_PROC_CHILDREN)'
    listed = sorted(_proc.children(pid))
    assert listed == sorted([pids['main'], pids['threaded'], pids['away']])  # the zombie is no live child
    assert _proc.children(pids['main']) == [pids['grandchild']]
    monkeypatch.setattr(_proc, '_listed_children', lambda _pid: None)
    assert sorted(_proc.children(pid)) == listed


def test_a_session_s_members_are_its_leader_and_the_descendants_still_in_it(leader):
    pid, pids = leader
    assert sorted(_proc.session_members(pid)) == sorted([pid, pids['main'], pids['grandchild'], pids['threaded']])


def test_a_process_that_has_gone_has_no_children_and_no_session():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    assert _proc._listed_children(proc.pid) == []
    assert _proc.children(proc.pid) == []
    assert _proc.session_members(proc.pid) == []
