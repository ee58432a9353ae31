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

A network namespace is identified by the inode of its nsfs file, which the
kernel reuses once the namespace is gone, paired with its cookie, which the
kernel never reuses while it runs (netns_identity).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time

OWN_NETNS = '/proc/self/ns/net'
CLONE_NEWNET = 0x40000000
# Linux >= 5.14 (older kernels answer ENOPROTOOPT); 71 in asm-generic (x86, arm), the socket module's when it has one
SO_NETNS_COOKIE = getattr(socket, 'SO_NETNS_COOKIE', 71)
_LIBC = []


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


def cpu_seconds(pid):
    """The CPU time (user and system, in seconds) a process has used, or None when there is no such process."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf('SC_CLK_TCK')) if fields else None


def load_average():
    """The machine's load average over the last minute (/proc/loadavg), or None when it cannot be read."""
    try:
        with open('/proc/loadavg') as handle:
            return float(handle.read().split()[0])
    except (IOError, OSError, IndexError, ValueError):
        return None


def parent(pid):
    """The parent pid of a process, or None."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def session(pid):
    """The session id of a process, or None."""
    fields = stat_fields(pid)
    return int(fields[3]) if fields else None


def _listed_children(pid):
    """The children the kernel lists for pid's threads (/proc/PID/task/TID/children), [] when pid has gone, None
    when the kernel keeps no such list (built without CONFIG_PROC_CHILDREN)."""
    try:
        tasks = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return []
    found = []
    for tid in tasks:
        try:
            with open('/proc/%d/task/%s/children' % (pid, tid)) as handle:
                found.extend(int(entry) for entry in handle.read().split())
        except FileNotFoundError:
            if not os.path.isdir('/proc/%d/task/%s' % (pid, tid)):
                continue  # the thread ended meanwhile
            return None
        except (IOError, OSError, ValueError):
            continue
    return found


def children(pid):
    """Pids of the live (non-zombie) children of pid: the kernel's list of them where it keeps one (one read, not
    one per process: under software emulation a look at every process costs 50 ms), else every process's parent."""
    listed = _listed_children(pid)
    found = []
    for entry in pids() if listed is None else listed:
        fields = stat_fields(entry)
        if fields and fields[1] == str(pid) and fields[0] not in ('Z', 'X'):
            found.append(entry)
    return found


def session_members(leader):
    """The leader of a session and its descendants that are still in its session."""
    members, todo = [], [leader]
    while todo:
        pid = todo.pop()
        if pid in members or session(pid) != leader:
            continue
        members.append(pid)
        todo.extend(children(pid))
    return members


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


def netns_cookie():
    """The cookie of the calling thread's network namespace, or None when the kernel has none (Linux < 5.14).

    The cookie is a 64-bit number the kernel gives a network namespace when it makes it and never gives another
    one until it reboots; it is read with getsockopt(SO_NETNS_COOKIE) on a socket made in the namespace (a unix
    datagram socket: no address, nothing sent). A kernel without the option answers ENOPROTOOPT: None. Any other
    error is raised."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            return None
        raise
    finally:
        sock.close()
    return struct.unpack('=Q', raw)[0]


def setns_net(fd):
    """setns(2) of the calling thread into the network namespace open at fd (os.setns on Python >= 3.12)."""
    native = getattr(os, 'setns', None)
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    if not _LIBC:
        import ctypes  # pylint: disable=import-outside-toplevel
        _LIBC.append(ctypes.CDLL(None, use_errno=True))  # the process's own libc: no ldconfig run
    if _LIBC[0].setns(fd, CLONE_NEWNET) != 0:
        import ctypes  # pylint: disable=import-outside-toplevel
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _cookies_in(fds):
    """The cookie of the namespace open at each fd (None where it cannot be entered), read by one short thread.

    Only that thread enters the namespaces (setns acts on the calling thread alone) and it ends right after,
    so the caller never leaves its own namespace and nothing is forked."""
    found = [None] * len(fds)

    def work():
        for index, fd in enumerate(fds):
            try:
                setns_net(fd)
                found[index] = netns_cookie()
            except (OSError, AttributeError):
                found[index] = None
    worker = threading.Thread(target=work, name='tcplab-netns-cookie', daemon=True)
    worker.start()
    worker.join()
    return found


def netns_identities(paths):
    """{path: (inode, cookie)} of the network namespaces at paths (files under /run/netns or /proc/PID/ns/net).

    One short thread reads the cookies of all of them: about 9 microseconds per namespace for 20 to 50 of them,
    the thread's start included (benchmarks/netns_identity.py); see netns_identity. A path that cannot be
    opened gives (None, None). On a kernel without cookies no namespace is entered."""
    own_inode, own_cookie = netns_inode(OWN_NETNS), _own_cookie()
    result, pending = {}, []
    try:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
            except OSError:
                result[path] = (None, None)
                continue
            inode = os.fstat(fd).st_ino
            if inode == own_inode or own_cookie is None:
                os.close(fd)
                result[path] = (inode, own_cookie if inode == own_inode else None)
            else:
                pending.append((path, fd, inode))
        cookies = _cookies_in([fd for dummy, fd, dummy in pending]) if pending else []
        for (path, dummy, inode), cookie in zip(pending, cookies):
            result[path] = (inode, cookie)
    finally:
        for dummy, fd, dummy in pending:
            os.close(fd)
    return result


def _own_cookie():
    try:
        return netns_cookie()
    except OSError:
        return None


def netns_identity(path=None):
    """(inode, cookie) of the network namespace at path (None: the caller's own), the proof that it is the one
    recorded.

    The inode alone is not enough: the kernel gives a new namespace the inode of a deleted one. The cookie
    (SO_NETNS_COOKIE) is never reused while the kernel runs, so a record with both matches only the namespace
    it was made for. cookie is None when the kernel has none (Linux < 5.14, e.g. bullseye's 5.10: then the
    identity is the inode alone, as before) or the namespace cannot be entered (setns needs CAP_SYS_ADMIN);
    inode is None when there is nothing at path. Both come from one open file, so they are of the same namespace.

    The caller's own namespace costs one socket (~6 microseconds). Another one is entered by a short thread of
    this process, never by the calling thread (~0.05-0.1 ms, against ~1.5 ms for a forked child and ~17 ms for
    ip netns exec: benchmarks/netns_identity.py); many at once: netns_identities."""
    if path is None:
        return netns_inode(OWN_NETNS), _own_cookie()
    return netns_identities([path])[path]


def cookie_matches(recorded, found):
    """Whether a namespace found with cookie found is the one recorded with cookie recorded: the cookies must be
    equal when both are known (an int); a record without one (made before cookies, or on a kernel without
    them) or a namespace whose cookie cannot be read is judged by its inode alone."""
    if not _is_cookie(recorded) or not _is_cookie(found):
        return True
    return recorded == found


def _is_cookie(value):
    return isinstance(value, int) and not isinstance(value, bool)


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
