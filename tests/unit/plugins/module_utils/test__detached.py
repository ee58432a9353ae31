# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the one detached-process lifecycle (plugins/module_utils/_detached.py) and of its users' stops.

Real processes throughout: spawned, proven ours or not, terminated; the
regression tests of issue 12 (an endpoint stop that cannot end its process
says so; cancelling a drop_rule timer returns only once the timer has gone)
run the real endpoint and timer code against processes that ignore SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _detached, _endpoint, _iptables, _lab_ssh, _proc
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import (
    Ended, Process, facts, load_record, save_record, spawn, terminate)

MARKER = 'tkpr-detached-test'
# a process that says "ready" once its SIGTERM handling is in place, then sleeps
SLEEPER = r'''
import signal, sys, time
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif sys.argv[2] == "slow":
    signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), sys.exit(0)))
print("ready", flush=True)
time.sleep(120)
'''


@pytest.fixture
def sleeper():
    """Start SLEEPER (its SIGTERM as asked) with MARKER on its command line; killed at the end."""
    started = []

    def start(term='default', new_session=False):
        proc = subprocess.Popen([sys.executable, '-c', SLEEPER, MARKER, term], stdout=subprocess.PIPE, text=True,
                                start_new_session=new_session)
        started.append(proc)
        assert proc.stdout.readline() == 'ready\n'
        return proc
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def running(pid):
    return _proc.starttime(pid) is not None


# -- spawn and facts ------------------------------------------------------------------

def test_spawn_detaches_into_its_own_session_with_a_private_log(tmp_path):
    log = str(tmp_path / 'x.log')
    proc = spawn([sys.executable, '-c', 'import os, sys; print(os.getcwd(), os.getsid(0) == os.getpid(), '
                  'sys.stdin.read() == "", flush=True)', MARKER], log)
    assert proc.wait(10) == 0
    with open(log) as handle:
        assert handle.read() == '/ True True\n'
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_facts_of_a_process(sleeper):
    proc = sleeper()
    assert facts(proc.pid) == {'pid': proc.pid, 'start': _proc.starttime(proc.pid), 'netns': _proc.netns_inode()}


# -- ours: start time and marker --------------------------------------------------------

def test_ours_needs_the_start_time_and_the_proof(sleeper):
    proc = sleeper()
    start = _proc.starttime(proc.pid)
    assert Process(proc.pid, start, MARKER).ours()
    assert Process(proc.pid, start, lambda argv: argv[-1] == 'default').ours()
    assert Process(proc.pid, start).ours()
    assert not Process(proc.pid, start - 1, MARKER).ours()          # a reused pid
    assert not Process(proc.pid, start, 'tkpr-other-marker').ours()  # another program
    assert not Process(proc.pid, None, MARKER).ours()
    for pid in (None, True, 1, 0, -5, 'x'):
        assert not Process(pid, start, MARKER).ours()


def test_what_is_not_ours_is_never_signalled(sleeper):
    proc = sleeper()
    start = _proc.starttime(proc.pid)
    for stranger in (Process(proc.pid, start - 1, MARKER), Process(proc.pid, start, 'tkpr-other-marker')):
        assert stranger.send(signal.SIGKILL) is False
        # nothing of ours runs, nothing was signalled
        assert terminate(stranger, 0.2, 0.2) == Ended(True, None)
    time.sleep(0.2)
    assert proc.poll() is None


# -- terminate: SIGTERM, a bounded wait, SIGKILL, a wait; the truth about the end ---------------

def test_terminate_ends_with_sigterm_when_that_is_enough(sleeper):
    proc = sleeper('slow')
    assert terminate(Process(proc.pid, _proc.starttime(proc.pid), MARKER), 5, 5) == Ended(True, 'SIGTERM')
    assert not running(proc.pid) and proc.wait(5) == 0


def test_terminate_reports_a_survivor_and_then_kills_it(sleeper):
    proc = sleeper('ignore')
    process = Process(proc.pid, _proc.starttime(proc.pid), MARKER)
    began = time.monotonic()
    assert terminate(process, 0.3, 0.3, kill=False) == Ended(False, 'SIGTERM')
    assert 0.3 <= time.monotonic() - began < 3
    assert running(proc.pid)
    assert terminate(process, 0.3, 5) == Ended(True, 'SIGKILL')
    assert not running(proc.pid) and proc.wait(5) == -signal.SIGKILL


def test_terminate_a_process_group(sleeper):
    proc = sleeper('default', new_session=True)
    assert terminate(Process(proc.pid, _proc.starttime(proc.pid), MARKER, group=True), 5, 5) == Ended(True, 'SIGTERM')
    assert proc.wait(5) == -signal.SIGTERM


def test_terminate_awaits_a_process_that_lost_its_proof_while_exiting(sleeper):
    """An exiting process has released its memory, so its command line (the proof) reads empty, before it has
    gone. Under load, the slow SIGTERM below ended that way between the waits: terminate said gone while it was
    still there (test__iptables, the suite in ci8). Once proven ours, a process is awaited by pid and start time."""
    proc = sleeper('slow')
    start = _proc.starttime(proc.pid)
    proofs = iter([True, True])   # proven before the SIGTERM and as it is sent; then the marker is gone

    def proof(argv):
        return next(proofs, False) and MARKER in argv
    assert terminate(Process(proc.pid, start, proof), 0.05, 5) == Ended(True, 'SIGTERM')
    assert not running(proc.pid) and proc.wait(5) == 0


def test_terminate_of_what_has_gone_sends_nothing(sleeper):
    proc = sleeper()
    start = _proc.starttime(proc.pid)
    proc.kill()
    proc.wait()
    assert terminate(Process(proc.pid, start, MARKER)) == Ended(True, None)


# -- state records -----------------------------------------------------------------------

def test_records_are_private_and_never_read_through_a_link_or_fifo(tmp_path):
    path = str(tmp_path / 'r.json')
    save_record(path, {'pid': 5, 'start': 7})
    assert load_record(path) == {'pid': 5, 'start': 7}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    link = str(tmp_path / 'link.json')
    os.symlink(path, link)
    assert load_record(link) is None
    fifo = str(tmp_path / 'fifo.json')
    os.mkfifo(fifo)
    assert load_record(fifo) is None  # and it did not block
    for text in ('not json', '[1, 2]'):
        with open(path, 'w') as handle:
            handle.write(text)
        assert load_record(path) is None
    # a record in the format of earlier releases (one line, no indent) is read the same
    with open(path, 'w') as handle:
        handle.write(json.dumps({'pid': 5, 'start': 7}) + '\n')
    assert load_record(path) == {'pid': 5, 'start': 7}


# -- issue 12: the users of the lifecycle tell the truth ------------------------------------

def test_endpoint_terminate_is_false_while_the_process_survives(tmp_path, sleeper, monkeypatch):
    """An endpoint whose supervisor ignores SIGTERM, and whose SIGKILL is lost (kernel-side, as for a process
    stuck in uninterruptible sleep): _terminate says False after its bounded waits, and stop fails naming it."""
    tag = '%s:client-41090' % _endpoint.MARKER
    proc = subprocess.Popen([sys.executable, '-c', SLEEPER, tag, 'ignore'], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline() == 'ready\n'
        eps = _endpoint.Endpoints(str(tmp_path))
        os.makedirs(eps.dir)
        info = {'pid': proc.pid, 'start': _proc.starttime(proc.pid), 'tag': tag, 'role': 'client', 'kind': 'python',
                'name': 'client-41090', 'netns': _proc.netns_inode(), 'program': None}
        save_record(eps._paths('client-41090')['state'], info)
        real_killpg = os.killpg
        sent = []

        def lose_sigkill(pgid, signum):
            sent.append(signal.Signals(signum).name)
            if signum != signal.SIGKILL:
                real_killpg(pgid, signum)
        monkeypatch.setattr(_endpoint, 'TERM_WAIT', 0.3)
        monkeypatch.setattr(os, 'killpg', lose_sigkill)
        began = time.monotonic()
        assert eps._terminate(info) is False
        assert sent == ['SIGTERM', 'SIGKILL'] and time.monotonic() - began < 3
        assert proc.poll() is None
        with pytest.raises(_endpoint.EndpointError) as exc:
            eps.stopped(_endpoint.validate({'role': 'client', 'port': 41090}))
        who = 'the client (pid %d, python)' % proc.pid
        assert str(exc.value) == _endpoint.MSG_STOP_FAILED % ('client', 'client-41090', who)
        monkeypatch.undo()
        # with its SIGKILL delivered it ends, and _terminate says so
        assert eps._terminate(info) is True
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_timer_cancel_returns_once_the_real_timer_has_gone(tmp_path):
    """The real timer program, armed for an hour: cancel returns True only after it has exited."""
    timers = _iptables.Timers(str(tmp_path))
    info = timers.arm('1-tkpr', 3600, ['/bin/false'], ['/bin/false'])
    assert timers.alive(info) and _iptables.TIMER_MARKER in _proc.cmdline(info['pid'])
    assert timers.load('1-tkpr') == info
    assert timers.cancel('1-tkpr') is True
    assert not running(info['pid'])  # gone (at most a zombie of this test process) when cancel returns
    assert not os.path.exists(timers.path('1-tkpr'))
    assert timers.cancel('1-tkpr') is False


def test_timer_stop_raises_when_the_timer_survives(tmp_path, monkeypatch):
    timers = _iptables.Timers(str(tmp_path), patience=0.3)
    info = timers.arm('1-tkpr', 3600, ['/bin/false'], ['/bin/false'])
    try:
        monkeypatch.setattr(_detached.Process, 'send', lambda self, signum: True)  # every signal lost
        with pytest.raises(_iptables.RuleError) as exc:
            timers.stop(info)
        assert str(exc.value).startswith('the dead-man timer (pid %d) did not stop after SIGTERM and SIGKILL: '
                                         % info['pid'])
        monkeypatch.undo()
        assert timers.cancel('1-tkpr') is True
    finally:
        monkeypatch.undo()
        if running(info['pid']):
            os.kill(info['pid'], signal.SIGKILL)


def test_lab_stop_all_kills_what_ignores_sigterm_and_waits(sleeper):
    stubborn, polite = sleeper('ignore'), sleeper('slow')
    signalled, gone = _lab_ssh.stop_all([stubborn.pid, polite.pid], timeout=2)
    assert sorted(signalled) == sorted([stubborn.pid, polite.pid]) and gone is True
    assert not running(stubborn.pid) and not running(polite.pid)
    assert stubborn.wait(5) == -signal.SIGKILL and polite.wait(5) == 0
    assert _lab_ssh.terminate([stubborn.pid]) == []  # gone: nothing signalled
