# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network namespaces of the host: names, paths, finding them, and running code inside one.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

A namespace is named (a file under NETNS_DIR, as made by ``ip netns add``), or
only held by processes (``/proc/PID/ns/net``); its identity is the inode of
that file and, where the kernel has them, its cookie (_proc.netns_identity).
Code runs inside another namespace in one of two ways, for two kinds of work:

- Python code that returns a value (reading or writing ``/proc/sys/net``, a
  socket listing): ``run_in`` forks a child that setns()es into the namespace,
  runs the function and sends the result back as JSON over a pipe; the
  calling process never leaves its own namespace.
- A program that lives in the namespace (an sshd, a sniffer, a shell of the
  netns connection): ``nsenter_argv`` prefixes its argv with
  ``nsenter --net=PATH --``, for the one Runner (or subprocess) to start;
  a forked Python child cannot become another program and be waited for by
  the caller's own process tooling.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import stat
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import file_kind
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import (
    netns_inode, netns_of, pids, setns_net)

NETNS_DIR = '/run/netns'
OWN = '/proc/self/ns/net'
# what ip netns add accepts, narrowed to characters that need no quoting anywhere
NAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,64}$')
RUN_TIMEOUT = 10.0

MSG_NAME = 'netns %r is not a network namespace name: give a name from %s (ip netns list)'
MSG_NAME_OR_PID = ('netns %r is not a network namespace name or process id: give a name from '
                   '%s (ip netns list) or the pid of a process in the namespace')
MSG_MISSING = 'network namespace %r not found at %s: create it (ip netns add %s) or fix the name'
MSG_PID = 'no process %s (netns given as a pid): the process has gone or the pid is wrong'
MSG_ACCESS = ('cannot open network namespace %s at %s (%s): run as root (become: true), '
              'or name the namespace by another process in it')
MSG_NOT_NS = ('%s is %s, not a network namespace (no namespace is mounted on it): '
              'remove it (ip netns del %s) or fix the name')
MSG_TIMEOUT = 'no answer within %s s'
MSG_DIED = 'the process that entered the network namespace died without an answer'


class NetnsError(Exception):
    """A namespace that cannot be named, found or entered; the message names the fix."""


def is_name(text):
    """Whether text is a namespace name this collection accepts."""
    return isinstance(text, str) and bool(NAME_RE.match(text)) and text not in ('.', '..')


def check_name(name, netns_dir=NETNS_DIR):
    """The name as text, or NetnsError (MSG_NAME)."""
    if isinstance(name, bool) or not is_name(str(name)):
        raise NetnsError(MSG_NAME % (name, netns_dir))
    return str(name)


def path_of(name, netns_dir=NETNS_DIR):
    """Path of a named namespace (checked name; it may not exist)."""
    return os.path.join(netns_dir, check_name(name, netns_dir))


def named_path(name, netns_dir=NETNS_DIR):
    """(name, path) of a named namespace that exists, or NetnsError (MSG_NAME, MSG_MISSING)."""
    path = path_of(name, netns_dir)
    if not os.path.exists(path):
        raise NetnsError(MSG_MISSING % (str(name), path, name))
    return str(name), path


def is_nsfs(st):
    """Whether an os.stat result is a namespace file (nsfs, like /proc/self/ns/net)."""
    try:
        own = os.stat(OWN)
    except OSError:
        return stat.S_ISREG(st.st_mode)
    return st.st_dev == own.st_dev and stat.S_ISREG(st.st_mode)


class Found:
    """A namespace given by name or pid: path, label (the name, or 'pid N') and inode."""

    def __init__(self, path, label, inode):
        self.path = path
        self.label = label
        self.inode = inode


def resolve(netns, netns_dir=NETNS_DIR):
    """Found for a name under netns_dir or a pid; NetnsError naming the fix otherwise."""
    text = str(netns)
    if isinstance(netns, bool) or not is_name(text):
        raise NetnsError(MSG_NAME_OR_PID % (netns, netns_dir))
    if text.isdigit():
        path, label, missing = '/proc/%s/ns/net' % text, 'pid %s' % text, MSG_PID % text
    else:
        path = os.path.join(netns_dir, text)
        label, missing = text, MSG_MISSING % (text, path, text)
    try:
        st = os.stat(path)
    except PermissionError as exc:
        raise NetnsError(MSG_ACCESS % (label, path, exc.strerror))
    except OSError:
        raise NetnsError(missing)
    if not is_nsfs(st):
        raise NetnsError(MSG_NOT_NS % (path, file_kind(st.st_mode), text))
    return Found(path, label, st.st_ino)


def names(netns_dir=NETNS_DIR):
    """Sorted names under netns_dir ([] when it cannot be listed)."""
    try:
        return sorted(os.listdir(netns_dir))
    except OSError:
        return []


def name_of(inode, netns_dir=NETNS_DIR):
    """A name under netns_dir of the namespace with this inode, or None."""
    for name in names(netns_dir):
        if netns_inode(os.path.join(netns_dir, name)) == inode:
            return name
    return None


def discover(netns_dir=NETNS_DIR, proc='/proc', own_inode=None):
    """Every distinct network namespace: named ones first, then those only processes hold.

    A list of dicts with inode, path, kind ('named', 'process', or 'host' for
    the caller's own), name (or None) and pid (of the first process found, or None).
    """
    seen = {}
    for name in names(netns_dir):
        path = os.path.join(netns_dir, name)
        inode = netns_inode(path)
        if inode is not None and inode not in seen:
            seen[inode] = {'inode': inode, 'path': path, 'kind': 'named', 'name': name, 'pid': None}
    try:
        numbers = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        numbers = []
    for pid in numbers:
        path = os.path.join(proc, str(pid), 'ns/net')
        inode = netns_inode(path)
        if inode is not None and inode not in seen:
            seen[inode] = {'inode': inode, 'path': path, 'kind': 'process', 'name': None, 'pid': pid}
    if own_inode is None:
        own_inode = netns_inode(os.path.join(proc, 'self/ns/net'))
    found = list(seen.values())
    for entry in found:
        if entry['inode'] == own_inode:
            entry['kind'] = 'host'
    return found


def live_inodes(netns_dir=NETNS_DIR):
    """Inodes of every network namespace that still exists (named or held by a process)."""
    inodes = {netns_inode(os.path.join(netns_dir, name)) for name in names(netns_dir)} | {netns_of(pid) for pid in pids()}
    inodes.discard(None)
    return inodes


def path_of_inode(inode, netns_dir=NETNS_DIR, proc='/proc'):
    """A path to enter the namespace with this inode (its name first, else a process's), or None."""
    for entry in discover(netns_dir, proc):
        if entry['inode'] == inode:
            return entry['path']
    return None


def _is_kthreadd(pid, proc='/proc'):
    """True when pid is the kernel's thread daemon (a kernel thread: no command line, parent 0)."""
    try:
        with open('%s/%d/status' % (proc, pid)) as handle:
            status = dict(line.split(':', 1) for line in handle.read().splitlines() if ':' in line)
        with open('%s/%d/cmdline' % (proc, pid), 'rb') as handle:
            cmdline = handle.read()
    except (IOError, OSError):
        return False
    named_kthreadd = status.get('Name', '').strip() == 'kthreadd' and status.get('PPid', '').strip() == '0'
    return named_kthreadd and cmdline == b''


def boot_netns(proc='/proc'):
    """(inode, None) of the network namespace that sysctl.d configures at boot (PID 1's), or (None, why).

    A PID 1 that is not dumpable (a VM's init agent, for one) hides its namespaces even from root;
    then the kernel's thread daemon (PID 2) stands in: kernel threads stay in the initial network
    namespace, the one init starts in.
    """
    path = '%s/1/ns/net' % proc
    try:
        return os.stat(path).st_ino, None
    except OSError as exc:
        why = 'cannot read %s: %s' % (path, exc.strerror)
    if _is_kthreadd(2, proc):
        inode = netns_inode('%s/2/ns/net' % proc)
        if inode is not None:
            return inode, None
    return None, why


# -- running code inside --------------------------------------------------------

# setns(2) of the calling thread (in run_in's forked child: the whole child) into the network namespace open at
# fd: the collection's one implementation (_proc.setns_net: os.setns, or the process's own libc through
# ctypes.CDLL(None); ctypes.util.find_library, which this used, ran ldconfig in every child: 2 to 20 ms each,
# benchmarks/netns_identity.py).
setns = setns_net


def _child(path, func, args, wfd, enter):
    """In the forked child: enter, run, write {'value'} or {'error'} as JSON, never return."""
    code = 0
    try:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                enter(fd)
            finally:
                os.close(fd)
            data = {'value': func(*args)}
        except Exception as exc:  # pylint: disable=broad-except
            data = {'error': str(exc)}
            code = 1
        payload = json.dumps(data).encode('utf-8')
        while payload:
            payload = payload[os.write(wfd, payload):]
    finally:
        os._exit(code)  # pylint: disable=protected-access


def _collect(rfd, pid, timeout):
    """The child's bytes, or None when it gave no answer within timeout (then it is killed)."""
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                return None
            ready = select.select([rfd], [], [], left)[0]
            if ready:
                chunk = os.read(rfd, 65536)
                if not chunk:
                    return b''.join(chunks)
                chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)


def run_in(path, func, args=(), timeout=RUN_TIMEOUT, enter=setns):
    """func(*args) run in a forked child inside the namespace at path; its (JSON-able) return value.

    NetnsError when the namespace cannot be entered, func raises (the message is
    the exception's text), or there is no answer within timeout seconds.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(path, func, args, wfd, enter)
    os.close(wfd)
    raw = _collect(rfd, pid, timeout)
    if raw is None:
        raise NetnsError(MSG_TIMEOUT % timeout)
    try:
        data = json.loads(raw.decode('utf-8'))
    except ValueError:
        raise NetnsError(MSG_DIED)
    if 'error' in data:
        raise NetnsError(data['error'])
    return data['value']


def nsenter_argv(nsenter, path, argv):
    """argv of a program that runs inside the namespace at path (through util-linux nsenter)."""
    return [nsenter, '--net=%s' % path, '--'] + list(argv)
