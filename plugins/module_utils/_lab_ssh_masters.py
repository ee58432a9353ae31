# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ssh's master connections to a lab's hosts: where they keep their sockets, and their end with the lab.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

Ansible keeps one ssh master connection per host (ControlMaster, ControlPersist: 60 s by default, 300 s for a lab
VM) with its socket in ~/.ansible/cp. Such a master outlives the lab it talked to by up to that long. The lab's
inventory therefore puts the sockets of its ssh hosts and VMs in the lab's own directory
(``ansible_control_path_dir``: ``<state_dir>/cp``), and ``absent`` ends each master there before it removes the
hosts. A master is this lab's only when ``ssh -O check`` through a socket in that directory names its pid and that
process's title is ssh's title of a master of that very socket (``ssh: <socket> [mux]``), with its start time
pinned (_detached.Process); it is then asked to exit (``ssh -O exit``), never signalled. A socket no master
listens on any more is removed; a process that does not prove itself is left alone and named in the lab's notes.
"""

from __future__ import annotations

import os
import re
import stat

from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import Process
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import remove_path
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, starttime

CONTROL_DIR = 'cp'
# ssh binds the socket as "<path>.<16 random letters>" before it renames it, and a unix socket's path holds at most
# 107 bytes; Ansible names a socket with 10 letters of a hash: the state directory may be 107 - 17 - 11 - 3 long
STATE_DIR_MAX = 76
EXIT_WAIT = 5.0
MASTER_RE = re.compile(r'Master running \(pid=(\d+)\)')

NOTE_TOO_LONG = ('lab_state_dir is longer than %d characters: the ssh master connections of its hosts keep their '
                 'sockets in Ansible\'s own directory and may outlive the lab by ControlPersist')
NOTE_FOREIGN = 'left alone: %s, whose master (pid %s) does not call itself the master of that socket (%s)'
NOTE_STILL = 'the ssh master of %s (pid %s) was asked to exit and still runs after %.0f s'


def control_dir(state_dir):
    """The directory of the lab's ssh control sockets, or None when the state directory is too long for them."""
    return os.path.join(state_dir, CONTROL_DIR) if len(state_dir) <= STATE_DIR_MAX else None


def sockets_in(directory):
    """The unix sockets in directory (none when it does not exist)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                found.append(path)
        except OSError:
            continue
    return found


def master_pid(run, ssh, socket_path):
    """The pid the master listening on socket_path names (ssh -O check), or None when none listens there."""
    rc, out, err = run(_control(ssh, socket_path, 'check'), check=False)
    found = MASTER_RE.search((out or '') + (err or ''))
    return int(found.group(1)) if rc == 0 and found else None


def is_master_title(argv, socket_path):
    """Whether a command line is ssh's title of the master of socket_path: "ssh: <socket> [mux]" (its first
    argument, the rest of the old command line's room blanked)."""
    return [part for part in argv if part] == ['ssh: %s [mux]' % socket_path]


def master_process(pid, socket_path):
    """The master that ssh -O check named, as a _detached.Process: ours while it keeps its start time and its title."""
    return Process(pid, starttime(pid), proof=lambda argv: is_master_title(argv, socket_path))


def close_masters(run, ssh, directory):
    """End every master of this lab in directory (and remove sockets nobody listens on); (closed, notes)."""
    closed, notes = [], []
    for path in sockets_in(directory):
        pid = master_pid(run, ssh, path)
        if pid is None:
            remove_path(path)
            continue
        master = master_process(pid, path)
        if not master.ours():
            notes.append(NOTE_FOREIGN % (path, pid, ' '.join(cmdline(pid)) or 'gone'))
            continue
        run(_control(ssh, path, 'exit'), check=False)
        if not master.wait_gone(EXIT_WAIT):
            notes.append(NOTE_STILL % (path, pid, EXIT_WAIT))
            continue
        remove_path(path)
        closed.append(path)
    return closed, notes


def _control(ssh, socket_path, command):
    # the host name is required by ssh's command line and unused: the request goes through the socket
    return [ssh, '-o', 'BatchMode=yes', '-S', socket_path, '-O', command, 'tcplab-lab-master']
