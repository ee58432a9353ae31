# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Facts about processes and network namespaces, read from /proc.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The modules that start detached processes (endpoint, capture, the drop_rule
timer, the lab's sshd) only ever signal a process whose command line and
start time match what they recorded; these are the readers they share.
"""

from __future__ import annotations

import os
import time

OWN_NETNS = '/proc/self/ns/net'


def pids():
    """Pids of every process."""
    return [int(entry) for entry in os.listdir('/proc') if entry.isdigit()]


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (fields[0] is the state, [1] the parent, [3] the
    session, [19] the start time), or None when there is no such process."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
    except (IOError, OSError, IndexError, TypeError):
        return None
    return fields if len(fields) > 19 else None


def starttime(pid):
    """Start time (clock ticks after boot) of a live, non-zombie process, or None."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in ('Z', 'X'):
        return None
    return int(fields[19])


def parent(pid):
    """The parent pid of a process, or None."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def session(pid):
    """The session id of a process, or None."""
    fields = stat_fields(pid)
    return int(fields[3]) if fields else None


def children(pid):
    """Pids of the live (non-zombie) children of pid."""
    found = []
    for entry in pids():
        fields = stat_fields(entry)
        if fields and fields[1] == str(pid) and fields[0] not in ('Z', 'X'):
            found.append(entry)
    return found


def cmdline(pid):
    """The command line of a process as a list ([] when it has gone)."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            parts = handle.read().split(b'\0')
    except (IOError, OSError):
        return []
    if parts and parts[-1] == b'':
        parts.pop()
    return [part.decode('utf-8', 'replace') for part in parts]


def netns_inode(path=OWN_NETNS):
    """Inode of the network namespace at path (a /run/netns file or /proc/PID/ns/net), or None."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def netns_of(pid):
    """Inode of a process's network namespace, or None."""
    return netns_inode('/proc/%d/ns/net' % pid)


def wait_gone(pid, timeout, step=0.1, clock=time.monotonic, sleep=time.sleep, start=None):
    """Wait until pid has exited (or is a zombie) for at most timeout seconds; True when it has.

    With start (its recorded start time), a process that now holds the pid with another start time
    counts as gone: the one recorded has exited."""
    deadline = clock() + timeout
    while starttime(pid) is not None and (start is None or starttime(pid) == start):
        if clock() >= deadline:
            return False
        sleep(step)
    return True
