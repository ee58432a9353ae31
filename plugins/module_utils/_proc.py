# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
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


def starttime(pid):
    """Start time (clock ticks after boot) of a live, non-zombie process, or None."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
    except (IOError, OSError, IndexError):
        return None
    if fields[0] in ('Z', 'X'):
        return None
    return int(fields[19])


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


def wait_gone(pid, timeout, step=0.1, clock=time.monotonic, sleep=time.sleep):
    """Wait until pid has exited (or is a zombie) for at most timeout seconds; True when it has."""
    deadline = clock() + timeout
    while starttime(pid) is not None:
        if clock() >= deadline:
            return False
        sleep(step)
    return True
