# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit's exact per-connection keepalive settings, read from the sockets themselves.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

A network namespace's child (_audit.read_namespace, run inside it) lists its
established TCP connections from /proc/net/tcp and tcp6 as compact rows
(inode, local, remote, timer type, timer seconds) and its listening
addresses. The audit process then finds which process holds each socket (one
pass over /proc/*/fd) and reads the socket's own settings: pidfd_open(2) on
the holder and pidfd_getfd(2) (Linux >= 5.6) give this process a duplicate of
the descriptor, getsockopt(2) reads SO_KEEPALIVE, TCP_KEEPIDLE,
TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT from it, and the duplicate is
closed. The owner is never stopped or signalled and its socket is not
changed: the duplicate shares the open socket, getsockopt only reads it.
A duplicate is used only when its inode is the one listed (a descriptor the
owner closed and reused in the meantime is skipped). getsockopt on a socket
does not depend on the caller's network namespace, so this runs in the audit
process for every namespace read.

pidfd_getfd has no wrapper in Python's standard library: it is called through
ctypes as syscall(2) number 438; pidfd_open is os.pidfd_open (Python >= 3.9)
or syscall 434 (Python 3.8). Since Linux 5.1 new system calls have one number
on every architecture with the common table - x86_64, aarch64, i386, arm,
ppc64, s390x, riscv64 - (alpha, mips and ia64 differ; there the audit falls
back to the inference from keepalive timers and says so).
"""

from __future__ import annotations

import errno
import heapq
import os
import socket
import stat
import struct

from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import detection_seconds, format_values

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
SYSCALL_MACHINES = frozenset(('x86_64', 'amd64', 'aarch64', 'arm64', 'i386', 'i486', 'i586', 'i686', 'armv6l',
                              'armv7l', 'armv8l', 'ppc64', 'ppc64le', 's390x', 'riscv64'))
KERNEL_MIN = (5, 6)
PIDFD_CACHE = 64
TCP_USER_TIMEOUT = getattr(socket, 'TCP_USER_TIMEOUT', 18)
TCP_LISTEN = '0A'
KEEPALIVE_TIMER = '02'

# unread reasons, in the order the note lists them
UNREAD = ('no_owner', 'per_process_cap', 'total_cap', 'refused', 'gone')
UNREAD_WORDS = {
    'no_owner': 'no holding process found (max_fd_scan, or the owner has gone)',
    'per_process_cap': 'over max_connections_per_process',
    'total_cap': 'over max_connections',
    'refused': 'pidfd_getfd refused (EPERM: run as root, with CAP_SYS_PTRACE)',
    'gone': 'closed while being read',
}

WHY_MACHINE = 'no known pidfd_getfd system call number on %s'
WHY_KERNEL = 'Linux %s is older than 5.6, which added pidfd_getfd'
WHY_CALL = 'pidfd_getfd failed on the audit process itself: %s'

NOTE_UNAVAILABLE = ('exact per-connection keepalive settings not read (%s): per-socket overrides are inferred from '
                    'keepalive timers longer than tcp_keepalive_time (KA005), which misses overrides below the '
                    'sysctl, timers that have counted down, and connections without SO_KEEPALIVE')
NOTE_UNREAD = ('exact per-connection keepalive settings: %d of %d established connection(s) not read (%s); '
               'overrides among them are inferred from keepalive timers (KA005)')

NOTE_SKIPPED = ('%d connection(s) not read because of the caps (max_connections %d, max_connections_per_process %d; '
                'the reads go round the processes, one each per round, lowest pid first, each process\'s connections '
                'in order of local and remote address): %s')
NOTE_SKIPPED_TOP = 10

# finding ids of the connections (the others are in _audit)
F_OVERRIDE = 'KA005'
F_CONNECTION = 'KA009'
F_KEEPALIVE_OFF = 'KA010'

MSG_F_OVERRIDE = ('%d keepalive socket(s) wait longer than tcp_keepalive_time (%d s), up to %d s: a '
                  'per-socket TCP_KEEPIDLE overrides the sysctl (sysctls cannot fix this)')
MSG_F_OVERRIDE_EXACT = ('%d keepalive connection(s) set their own idle/interval/count instead of the sysctls (%s), '
                        'e.g. %s (pid %d) %s -> %s with %s: sysctls cannot change them')
MSG_F_CONNECTION = ('%s (pid %d): %d connection(s) take up to %d s to detect a dead peer (%s), above the policy '
                    'maximum %d s%s, e.g. %s -> %s: the process sets this itself, sysctls cannot fix it')
MSG_F_CONNECTION_SYSCTLS = ' although the sysctls (%s, %d s) satisfy it'
MSG_F_KEEPALIVE_OFF = ('%s (pid %s) accepts connections on port %d without keepalive: %d of %d accepted '
                       'connection(s) have SO_KEEPALIVE off, so a dead client is never noticed (e.g. %s <- %s): '
                       'turn keepalive on in the service')


def decode_address(text):
    """'0100007F:3039' -> '127.0.0.1:12345'; IPv6 -> '[::1]:12345' ("/proc/net/tcp" encoding)."""
    addr, port = text.split(':')
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        host = socket.inet_ntop(socket.AF_INET, struct.pack('<I', struct.unpack('>I', raw)[0]))
        return '%s:%d' % (host, int(port, 16))
    words = struct.unpack('>4I', raw)
    host = socket.inet_ntop(socket.AF_INET6, struct.pack('<4I', *words))
    return '[%s]:%d' % (host, int(port, 16))


def connection_detection(idle, intvl, cnt, user_timeout_ms=0):
    """Seconds from the last segment received until the kernel gives up on the connection (keepalive on).

    Without TCP_USER_TIMEOUT: idle + intvl x cnt (_keepalive.detection_seconds). With it, the kernel's
    keepalive timer (tcp_keepalive_timer) gives up at the first timer run at or after the user timeout
    once a probe has gone out: idle + k x intvl with k >= 1, instead of after cnt probes.
    """
    if not user_timeout_ms:
        return detection_seconds({'time': idle, 'intvl': intvl, 'probes': cnt})
    # the first k >= 1 with idle + k x intvl >= user timeout (integer ceiling, in milliseconds)
    steps = max(1, -(-(user_timeout_ms - idle * 1000) // (intvl * 1000)))
    return idle + intvl * steps


def is_accepted(local_hex, listeners):
    """Whether a connection's local address (hex) is one a listening socket of the namespace accepts on."""
    addr, port = local_hex.split(':')
    for listen in listeners:
        laddr, lport = listen.split(':')
        if lport == port and (laddr == addr or laddr.strip('0') == ''):
            return True
    return False


# -- who holds each socket ----------------------------------------------------------

def socket_holders(inodes, proc='/proc', max_fd_scan=100000):
    """Which process and descriptor hold each of the given socket inodes: ({inode: (pid, fd)}, complete, scanned).

    One pass over /proc/*/fd; stops after max_fd_scan descriptors (complete is
    then False). A socket shared by several processes counts for the first.
    """
    wanted = set('socket:[%s]' % inode for inode in inodes)
    holder = {}
    scanned = 0
    complete = True
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        pids = []
    for pid in pids:
        fd_dir = os.path.join(proc, str(pid), 'fd')
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        if scanned + len(fds) > max_fd_scan:
            complete = False
            break
        scanned += len(fds)
        for fd in fds:
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if link in wanted and link[8:-1] not in holder:
                holder[link[8:-1]] = (pid, int(fd))
        if len(holder) == len(wanted):
            break
    return holder, complete, scanned


# -- pidfd_open + pidfd_getfd ---------------------------------------------------------

def kernel_version(release):
    """(major, minor) of a kernel release string ('6.1.0-18-amd64' -> (6, 1)), or None."""
    parts = release.split('.')
    try:
        return int(parts[0]), int(''.join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return None


def _syscall():
    """syscall(2) through ctypes: call(number, *int_args) -> result, OSError on failure."""
    import ctypes  # pylint: disable=import-outside-toplevel
    import ctypes.util  # pylint: disable=import-outside-toplevel
    try:
        # the C library is already loaded into the interpreter: no find_library (which may run ldconfig)
        func = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        func = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True).syscall
    func.restype = ctypes.c_long

    def call(number, *args):
        result = func(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(result)
    return call


class Pidfd:
    """Duplicates of other processes' descriptors (pidfd_open + pidfd_getfd), one pidfd per process."""

    def __init__(self, release=None, machine=None, syscall=None, pidfd_open=None):
        self.release = release if release is not None else os.uname()[2]
        self.machine = machine if machine is not None else os.uname()[4]
        self._syscall = syscall
        self._pidfd_open = pidfd_open if pidfd_open is not None else getattr(os, 'pidfd_open', None)
        self._pidfds = {}

    def why_not(self):
        """None when pidfd_getfd works here, else why not (in words)."""
        if self.machine not in SYSCALL_MACHINES:
            return WHY_MACHINE % (self.machine or 'this machine')
        version = kernel_version(self.release)
        if version is not None and version < KERNEL_MIN:
            return WHY_KERNEL % self.release
        try:
            # a duplicate of our own pidfd: pidfd_getfd works here when this does
            os.close(self.dup(os.getpid(), self._open(os.getpid())))
        except (OSError, AttributeError) as exc:
            return WHY_CALL % (exc,)
        finally:
            self.close()
        return None

    def _open(self, pid):
        pidfd = self._pidfds.get(pid)
        if pidfd is None:
            if len(self._pidfds) >= PIDFD_CACHE:
                self.close()  # never more than PIDFD_CACHE open descriptors of our own
            if self._pidfd_open is not None:
                pidfd = self._pidfd_open(pid)
            else:
                pidfd = self._call(SYS_PIDFD_OPEN, pid, 0)
            self._pidfds[pid] = pidfd
        return pidfd

    def dup(self, pid, fd):
        """A new descriptor of this process for descriptor fd of process pid (OSError when not possible)."""
        return self._call(SYS_PIDFD_GETFD, self._open(pid), fd, 0)

    def _call(self, number, *args):
        if self._syscall is None:
            self._syscall = _syscall()
        return self._syscall(number, *args)

    def close(self):
        for pidfd in self._pidfds.values():
            try:
                os.close(pidfd)
            except OSError:
                pass
        self._pidfds = {}


def read_socket(fd, inode):
    """The keepalive settings of the socket at our descriptor fd (closed here), or None when it is not inode."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_ino != int(inode):
            return None
        sock = socket.socket(fileno=fd)
        try:
            return {'keepalive': bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
                    'idle': sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    'intvl': sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    'cnt': sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    'user_timeout_ms': sock.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT)}
        finally:
            sock.detach()
    finally:
        os.close(fd)


# -- reading every namespace's connections ----------------------------------------------

class Budget:
    """The caps on exact reads: per process and in total (one audit run), and which connections they leave unread.

    The choice is fair and deterministic, not the first rows in /proc order: every process with connections gets
    one read per round, lowest pid first, until the total is used up or the process has max_connections_per_process
    (so no process's connections crowd out another's, and a process with few connections has all of them read);
    within a process its connections are taken in order of local and then remote address (/proc/net/tcp's hex)."""

    def __init__(self, total, per_process):
        self.total = total
        self.per_process = per_process
        self.skipped = {}   # {pid: connections left unread by the caps}

    def plan(self, tables, holders):
        """For each list of rows in tables, the unread reason of each row: None (read it), 'per_process_cap' or
        'total_cap' ('no_owner' rows are left to the caller: None here, as they have no holder)."""
        queues = {}
        for t, rows in enumerate(tables):
            for i, row in enumerate(rows):
                holder = holders.get(row[0])
                if holder is not None:
                    queues.setdefault(holder[0], []).append((row[1], row[2], t, i))
        reasons = [['per_process_cap' if holders.get(row[0]) is not None else None for row in rows] for rows in tables]
        queues = [sorted(queues[pid]) for pid in sorted(queues)]
        room = self.total
        for depth in range(min(self.per_process, max([len(q) for q in queues] or [0]))):
            if room <= 0:
                break
            queues = [q for q in queues if len(q) > depth]
            for queue in queues[:room]:
                reasons[queue[depth][2]][queue[depth][3]] = None
            room -= min(room, len(queues))
        for queue in queues:
            for dummy_local, dummy_remote, t, i in queue[:self.per_process]:
                if reasons[t][i] is not None:
                    reasons[t][i] = 'total_cap'
        for rows, why in zip(tables, reasons):
            for row, reason in zip(rows, why):
                if reason is not None:
                    pid = holders[row[0]][0]
                    self.skipped[pid] = self.skipped.get(pid, 0) + 1
        return reasons


def _comm(pid, proc, cache):
    if pid not in cache:
        try:
            with open(os.path.join(proc, str(pid), 'comm')) as handle:
                cache[pid] = handle.read().strip()
        except (IOError, OSError):
            cache[pid] = None
    return cache[pid]


def _read_one(row, holder, pidfd):
    """(settings, None) of one connection row, or (None, unread reason)."""
    pid, fd = holder
    try:
        settings = read_socket(pidfd.dup(pid, fd), row[0])
    except OSError as exc:
        return None, 'refused' if exc.errno in (errno.EPERM, errno.EACCES) else 'gone'
    return (settings, None) if settings is not None else (None, 'gone')


def connection_entry(row, holder, comm, settings, values, listeners):
    """One sockets.connections item from its /proc/net/tcp row, holder and read settings."""
    pid, fd = holder
    conn = {'pid': pid, 'comm': comm, 'fd': fd, 'inode': int(row[0]), 'local': decode_address(row[1]),
            'remote': decode_address(row[2]), 'accepted': is_accepted(row[1], listeners)}
    conn.update(settings)
    own = {'time': settings['idle'], 'intvl': settings['intvl'], 'probes': settings['cnt']}
    conn['override'] = settings['keepalive'] and own != values
    conn['detection_seconds'] = (connection_detection(settings['idle'], settings['intvl'], settings['cnt'],
                                                      settings['user_timeout_ms'])
                                 if settings['keepalive'] else None)
    return conn


def read_entry(sockets, values, holders, pidfd, budget, proc='/proc', comms=None, reasons=None):
    """Read one namespace's connections exactly; fills sockets (connections, unread, overrides) in place.

    reasons: the unread reason of each row by the caps (Budget.plan over every namespace), else planned here."""
    comms = {} if comms is None else comms
    rows, listeners = sockets.pop('rows', []), sockets.pop('listening', [])
    reasons = budget.plan([rows], holders)[0] if reasons is None else reasons
    unread = dict((reason, 0) for reason in UNREAD)
    connections, inferred, max_inferred = [], 0, 0.0
    for row, capped in zip(rows, reasons):
        holder = holders.get(row[0])
        reason = 'no_owner' if holder is None else capped
        settings = None
        if reason is None:
            settings, reason = _read_one(row, holder, pidfd)
        if settings is None:
            unread[reason] += 1
            if row[3] == KEEPALIVE_TIMER and row[4] > values['time'] + 1.0:
                inferred += 1
                max_inferred = max(max_inferred, row[4])
            continue
        connections.append(connection_entry(row, holder, _comm(holder[0], proc, comms), settings, values, listeners))
    exact = sum(1 for c in connections if c['override'])
    sockets.update(exact=True, connections=connections, unread=unread, overrides=exact + inferred,
                   overrides_exact=exact, overrides_inferred=inferred, max_inferred_timer=round(max_inferred, 2))
    return sockets


def processes(connections, top=10):
    """[{pid, comm, connections, keepalive_off, overrides}] of the processes holding most connections read."""
    counts = {}
    for conn in connections:
        item = counts.setdefault(conn['pid'], {'pid': conn['pid'], 'comm': conn['comm'], 'connections': 0,
                                               'keepalive_off': 0, 'overrides': 0})
        item['connections'] += 1
        item['keepalive_off'] += 0 if conn['keepalive'] else 1
        item['overrides'] += 1 if conn['override'] else 0
    return heapq.nsmallest(top, counts.values(), key=lambda p: (-p['connections'], p['pid']))


def mark_inferred(sockets):
    """Only the inference from timers: no connection was read exactly."""
    rows = sockets.pop('rows', [])
    sockets.pop('listening', None)
    sockets.update(exact=False, connections=[], processes=[], unread={}, overrides_exact=0,
                   overrides_inferred=sockets.get('overrides', 0), max_inferred_timer=sockets.get('max_timer_seconds'))
    return len(rows)


def read_connections(entries, holders, params, notes, pidfd=None, proc='/proc'):
    """Exact keepalive settings of every namespace entry's established connections (sockets.connections).

    Falls back to the inference from timers, with a note, when pidfd_getfd is not available here.
    """
    tables = [entry for entry in entries if entry.get('sockets') is not None]
    if not any(entry['sockets'].get('rows') for entry in tables):
        for entry in tables:
            mark_inferred(entry['sockets'])
        return
    pidfd = pidfd or Pidfd()
    why = pidfd.why_not() if params['max_connections'] else 'max_connections is 0'
    if why is not None:
        for entry in tables:
            mark_inferred(entry['sockets'])
        notes.append(NOTE_UNAVAILABLE % why)
        return
    budget, comms, unread, total = Budget(params['max_connections'], params['max_connections_per_process']), {}, {}, 0
    plans = budget.plan([entry['sockets'].get('rows') or [] for entry in tables], holders)
    try:
        for entry, reasons in zip(tables, plans):
            total += len(entry['sockets'].get('rows') or [])
            sockets = read_entry(entry['sockets'], entry['values'], holders, pidfd, budget, proc, comms, reasons)
            sockets['processes'] = processes(sockets['connections'], params['top_processes'])
            for reason, count in sockets['unread'].items():
                unread[reason] = unread.get(reason, 0) + count
    finally:
        pidfd.close()
    missed = sum(unread.values())
    if missed:
        words = ', '.join('%d %s' % (unread[r], UNREAD_WORDS[r]) for r in UNREAD if unread.get(r))
        notes.append(NOTE_UNREAD % (missed, total, words))
    if budget.skipped:
        notes.append(skipped_note(budget, proc, comms))


def skipped_note(budget, proc='/proc', comms=None):
    """Which processes' connections the caps left unread, and how many (most first, at most NOTE_SKIPPED_TOP)."""
    comms = {} if comms is None else comms
    most = heapq.nsmallest(NOTE_SKIPPED_TOP, budget.skipped.items(), key=lambda item: (-item[1], item[0]))
    named = ', '.join('%d of %s (pid %d)' % (count, _comm(pid, proc, comms) or '?', pid) for pid, count in most)
    more = len(budget.skipped) - len(most)
    if more:
        named += ' and %d of %d more process(es)' % (sum(budget.skipped.values()) - sum(count for pid, count in most), more)
    return NOTE_SKIPPED % (sum(budget.skipped.values()), budget.total, budget.per_process, named)


# -- findings of the connections read ---------------------------------------------------

def _rule(conn):
    if conn['user_timeout_ms']:
        return 'idle %d, then every %d s until TCP_USER_TIMEOUT %d ms' % (conn['idle'], conn['intvl'],
                                                                          conn['user_timeout_ms'])
    return 'idle %d + intvl %d x cnt %d' % (conn['idle'], conn['intvl'], conn['cnt'])


def override_message(sockets, values):
    """KA005's message: the exact overrides (one named), then those inferred from timers."""
    parts = []
    exact = [c for c in sockets.get('connections') or [] if c['override']]
    if exact:
        first = exact[0]
        parts.append(MSG_F_OVERRIDE_EXACT % (len(exact), format_values(values), first['comm'] or '?', first['pid'],
                                             first['local'], first['remote'], _rule(first)))
    if sockets.get('overrides_inferred'):
        parts.append(MSG_F_OVERRIDE % (sockets['overrides_inferred'], values['time'],
                                       int(sockets.get('max_inferred_timer') or 0)))
    return '; '.join(parts)


def connection_findings(entry, policy, finding):
    """KA009 (a process's own detection time above the policy) and KA010 (a service without keepalive)."""
    sockets, values, label = entry.get('sockets') or {}, entry['values'], entry['label']
    connections = sockets.get('connections') or []
    out = []
    limit = policy['max_detection_seconds']
    if limit is not None:
        slow = {}
        for conn in connections:
            if conn['keepalive'] and conn['detection_seconds'] > limit and (conn['override'] or conn['user_timeout_ms']):
                slow.setdefault(conn['pid'], []).append(conn)
        for pid in sorted(slow):
            worst = max(slow[pid], key=lambda c: c['detection_seconds'])
            own = detection_seconds(values)
            why = MSG_F_CONNECTION_SYSCTLS % (format_values(values), own) if own <= limit else ''
            out.append(finding(F_CONNECTION, label, 'connections', worst['detection_seconds'], '<= %d' % limit,
                               MSG_F_CONNECTION % (worst['comm'] or '?', pid, len(slow[pid]), worst['detection_seconds'],
                                                   _rule(worst), limit, why, worst['local'], worst['remote'])))
    out.extend(keepalive_off_findings(connections, policy, label, finding))
    return out


def keepalive_off_findings(connections, policy, label, finding):
    """KA010 per service (process name and listening port): accepted connections with SO_KEEPALIVE off."""
    services = {}
    for conn in connections:
        if conn['accepted']:
            port = int(conn['local'].rsplit(':', 1)[1])
            services.setdefault((conn['comm'] or '?', port), []).append(conn)
    out = []
    for (comm, port), conns in sorted(services.items()):
        off = [c for c in conns if not c['keepalive']]
        if not off:
            continue
        pids = ','.join(str(p) for p in sorted(set(c['pid'] for c in off)))
        item = finding(F_KEEPALIVE_OFF, label, 'connections', len(off), 0,
                       MSG_F_KEEPALIVE_OFF % (comm, pids, port, len(off), len(conns), off[0]['local'], off[0]['remote']))
        item['severity'] = policy.get('accepted_without_keepalive') or 'info'
        out.append(item)
    return out
