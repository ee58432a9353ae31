# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one lifecycle of the collection's detached processes.

A capture's sniffer, an endpoint's supervisor and program, a drop_rule
dead-man timer and a lab host's sshd outlive the module that starts them.
Each is handled the same way:

- spawn(): started detached - its own session (no SIGHUP when the Ansible
  connection ends), cwd /, stdin from /dev/null, output to a log - and not
  waited for. Not through Runner: Runner waits for what it runs.
- facts(): what its state record keeps of it - pid, start time (clock ticks
  after boot, from /proc/PID/stat) and network-namespace inode; the caller
  adds the marker it put on the command line.
- Process.ours(): the proof that a pid is still that process - the same
  start time (a reused pid has another) and the marker in its command line.
  Nothing is ever signalled without it.
- terminate(): SIGTERM, wait (bounded), SIGKILL what is still ours, wait
  again, and report truthfully whether it has gone.

State records are JSON files written atomically (0600) and read without
following a symbolic link or blocking on a FIFO (save_record, load_record).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import signal
import stat
import subprocess
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, netns_of, starttime, wait_gone

TERM_WAIT = 5.0
KILL_WAIT = 5.0
RECORD_LIMIT = 1 << 20

# gone: nothing of it runs any more; signal: the name of the last signal sent ('SIGTERM', 'SIGKILL'), None when
# nothing of it was running (nothing was signalled)
Ended = collections.namedtuple('Ended', 'gone signal')


def spawn(argv, log=None, pass_fds=(), env=None):
    """Start argv detached (a new session, cwd /, stdin from /dev/null) and return its Popen, not waited for.

    log is where its stdout and stderr go: a path (created 0600, truncated), an open file descriptor, or None
    for /dev/null. pass_fds stay open in it (a pipe it reports on).
    """
    opened = None
    if isinstance(log, str):
        opened = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.fchmod(opened, 0o600)
        out = opened
    else:
        out = subprocess.DEVNULL if log is None else log
    try:
        return subprocess.Popen(  # pylint: disable=consider-using-with
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=tuple(pass_fds), close_fds=True,
            cwd='/', env=env, start_new_session=True)
    finally:
        if opened is not None:
            os.close(opened)


def facts(pid):
    """{'pid', 'start', 'netns'} of a process, for its state record ('start' is None when it has gone)."""
    return {'pid': pid, 'start': starttime(pid), 'netns': netns_of(pid)}


def valid_pid(pid):
    """A pid that can name a detached process of ours (an int above 1, not a bool)."""
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 1


class Process:
    """A recorded detached process: its pid, its start time and the proof expected in its command line.

    proof is a marker (a string that must be one of the command line's arguments), a function of the
    command line (a list) that returns True for ours, or None (pid and start time only, for a process
    whose command line was read when it was found). group: signal its whole process group (it leads
    its own session, as spawn() makes it).
    """

    def __init__(self, pid, start, proof=None, group=False):
        self.pid = pid
        self.start = start
        self.proof = proof
        self.group = group

    def __repr__(self):
        return 'Process(pid=%r, start=%r)' % (self.pid, self.start)

    def ours(self):
        """True while pid is still the recorded process: the same start time and the proof in its command line."""
        if not valid_pid(self.pid) or self.start is None or starttime(self.pid) != self.start:
            return False
        if self.proof is None:
            return True
        argv = cmdline(self.pid)
        return self.proof(argv) if callable(self.proof) else self.proof in argv

    def send(self, signum):
        """Send signum when it is still ours; False when it is not (gone, or the pid was reused).

        A pidfd, where the kernel and Python have them, pins the process between the check and the
        signal, so a pid reused in between is never hit.
        """
        pidfd = None
        if valid_pid(self.pid) and hasattr(os, 'pidfd_open') and not self.group:
            try:
                pidfd = os.pidfd_open(self.pid)  # novm: Python >= 3.9 only, hasattr-guarded
            except OSError:
                return False
        try:
            if not self.ours():
                return False
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signum)  # novm: a pidfd exists only where os.pidfd_open (3.9) did
            elif self.group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
            return False
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return True

    def wait_gone(self, timeout):
        """Wait at most timeout seconds until it has exited (a zombie counts as exited); True when it has."""
        if not valid_pid(self.pid) or self.start is None:
            return True
        return wait_gone(self.pid, timeout, step=0.02, start=self.start)


def _wait_all(processes, timeout):
    """Wait until every process has gone, timeout seconds at most in all; True when they have."""
    deadline = time.monotonic() + timeout
    return all(one.wait_gone(max(0.0, deadline - time.monotonic())) for one in processes)


def terminate(processes, term_wait=TERM_WAIT, kill_wait=KILL_WAIT, kill=True):
    """SIGTERM every process that is still ours and wait (term_wait at most) until all have gone; then SIGKILL
    those still ours and wait again (kill_wait). kill=False stops after the SIGTERM wait.

    processes is a Process or a list of them. Returns Ended(gone, signal): gone is True only when none of them
    runs any more, signal names the last signal sent (None when none was running).
    """
    if isinstance(processes, Process):
        processes = [processes]
    sent = None
    # proven ours once, before any signal; after that, awaited by pid and start time alone: a process that is
    # exiting has already lost its command line (the proof) but has not gone yet
    running = [one for one in processes if one.ours()]
    for signum, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        running = [one for one in running if not one.wait_gone(0)]
        if not running:
            return Ended(True, sent)
        if signum == signal.SIGKILL and not kill:
            return Ended(False, sent)
        for one in running:
            if one.send(signum):
                sent = signal.Signals(signum).name
        if _wait_all(running, wait):
            return Ended(True, sent)
    return Ended(all(one.wait_gone(0) for one in running), sent)


# -- the programs ------------------------------------------------------------------

def program_source(module):
    """The source text of a program module (a plugins/module_utils/_program_*.py file), however it was imported:
    from the files of a checkout, or from the zip AnsiballZ ships to a target (the module that starts a program
    imports its module, so AnsiballZ packs it)."""
    loader = getattr(module, '__loader__', None)
    text = None
    if loader is not None and hasattr(loader, 'get_source'):
        try:
            text = loader.get_source(module.__name__)
        except ImportError:
            text = None
    if text is None:
        with open(module.__file__, 'rb') as handle:
            text = handle.read()
    return text.decode('utf-8') if isinstance(text, bytes) else text


def program_argv(python, module, marker, args):
    """argv that runs a program module detached: [python, -c, its source, marker, its JSON arguments].

    With -c, the program sees marker as sys.argv[1] and its arguments as sys.argv[2], and runs its main()
    (``__name__`` is ``'__main__'``); the marker in the command line is what proves the process ours."""
    return [python, '-c', program_source(module), marker, json.dumps(args, sort_keys=True)]


# -- state records ----------------------------------------------------------------

def save_record(path, record):
    """Write a state record (JSON, 0600) atomically: a reader sees the old record or the new one."""
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + '\n', 0o600)


def read_regular(path, limit=RECORD_LIMIT):
    """Bytes of a regular file (not through a symlink, never blocking on a FIFO), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, TypeError):
        return None
    with os.fdopen(fd, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(limit)


def load_record(path):
    """The state record at path as a dict, or None (no file, not a regular file, not a JSON object)."""
    blob = read_regular(path)
    if blob is None:
        return None
    try:
        record = json.loads(blob.decode('utf-8', 'replace'))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
