# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""drop_rule's when_idle: wait, on the silenced host itself, for the moment
the experiment plans the DROP - once its connection has carried no data for
the given seconds - and insert the rule then, in the same module run.

The experiment drops the server's traffic between the client's last answered
keepalive probe and the next one. A keepalive probe carries no data, so the
server's socket counts its idle time through the answered probes: tcp_info's
last_data_sent and last_data_recv (inet_diag, read-only) say how long ago the
socket last sent and received data, and the client's probe k is due k times
the keepalive time after that. Waiting here rather than on the controller
saves the wait's own module run and lands the DROP when planned, also where
a module run costs seconds (a lab VM under software emulation).

The connection is the one of the rule's port (the server's) and peer_port
(the client's) in this host's network namespace, ESTABLISHED. The wait
fails, and nothing is inserted, when the connection ends (it was seen and is
gone: a process ended it) or does not become idle in time.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import os
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_evidence import read_sockets

MSG_OPTIONS = ('when_idle needs peer_port (the client\'s port, 1..65535), seconds (0..86400) and timeout (seconds, '
               '> 0), and a single port of the rule (the server\'s): got %s')
MSG_GONE = ('the connection of port %d with peer port %d ended before the DROP (after %.1f s of waiting, idle for '
            '%.1f s when last seen): a process closed or reset it; nothing was inserted')
MSG_GONE_FIRST = ('the connection of port %d with peer port %d ended before the DROP (established before the wait, '
                  'it was gone at its first look): a process closed or reset it; nothing was inserted')
MSG_NEVER = ('no ESTABLISHED connection of port %d with peer port %d in this network namespace within %.1f s: '
             'nothing was inserted (is the client connected to this host?)')
MSG_BUSY = ('the connection of port %d with peer port %d was not idle for %.1f s within %.1f s (data kept flowing: '
            'idle for %.1f s at most); nothing was inserted')
MSG_NO_TIMES = ('the kernel reports no tcp_info data times for the connection of port %d with peer port %d '
                '(inet_diag unavailable: %s): when_idle cannot time the DROP here; leave it out and time the DROP '
                'from the controller')
MSG_ORPHANED = ('the process that ran this module ended while it waited for the moment of the DROP (the controller '
                'was killed?): nothing was inserted')
POLL = 0.2   # at most this long between two looks, so that data in between is seen


class IdleError(Exception):
    """The wait for the idle moment failed: nothing was inserted."""


def check(spec, port):
    """spec normalised: peer_port, seconds, timeout, established; IdleError naming the fix otherwise."""
    try:
        out = {'peer_port': int(spec['peer_port']), 'seconds': float(spec['seconds']),
               'timeout': float(spec.get('timeout') or 60), 'established': bool(spec.get('established'))}
        server = int(port)
    except (KeyError, TypeError, ValueError) as exc:
        raise IdleError(MSG_OPTIONS % (dict(spec, port=port),)) from exc
    ranges = (1 <= out['peer_port'] <= 65535, 0 <= out['seconds'] <= 86400, out['timeout'] > 0, 1 <= server <= 65535)
    if not all(ranges):
        raise IdleError(MSG_OPTIONS % (dict(spec, port=port),))
    out['port'] = server
    return out


def connection(rows, port, peer_port):
    """The ESTABLISHED socket of this end of the connection (local port, remote peer_port), or None."""
    wanted = (port, peer_port, 'ESTABLISHED')
    return next((row for row in rows if (row['lport'], row['rport'], row['state']) == wanted), None)


def idle_seconds(row):
    """Seconds since the socket last sent or received data, or None without tcp_info's data times."""
    sent, recv = row.get('last_data_sent_ms'), row.get('last_data_recv_ms')
    if sent is None or recv is None:
        return None
    return min(sent, recv) / 1000.0


def parent_gone(parent=None):
    """A callable telling whether the process that started this one has ended (this one was re-parented)."""
    parent = os.getppid() if parent is None else parent
    return lambda: os.getppid() != parent


def await_idle(spec, read=read_sockets, clock=time.monotonic, sleep=time.sleep, orphaned=lambda: False):
    """Return {'idle_s', 'waited_s'} once the connection has been idle for spec['seconds']; IdleError when it ends,
    never appears, never goes idle in time, the kernel gives no data times, or orphaned() says that whoever ran
    this module is gone - a rule must not go in after a killed controller's rollback has looked for it.
    With spec['established'] (the caller saw the connection up before this wait) a connection missing at the
    first look has ended: that fails at once rather than after waiting for one to appear."""
    start = clock()
    seen, most = None, 0.0
    while True:
        if orphaned():
            raise IdleError(MSG_ORPHANED)
        rows, source, why = read()
        row = connection(rows, spec['port'], spec['peer_port'])
        waited = clock() - start
        if row is not None:
            idle = idle_seconds(row)
            if idle is None:
                raise IdleError(MSG_NO_TIMES % (spec['port'], spec['peer_port'], why or source))
            seen, most = idle, max(most, idle)
            if idle >= spec['seconds']:
                return {'idle_s': round(idle, 3), 'waited_s': round(waited, 3)}
        elif seen is not None:
            raise IdleError(MSG_GONE % (spec['port'], spec['peer_port'], waited, seen))
        elif spec.get('established'):
            raise IdleError(MSG_GONE_FIRST % (spec['port'], spec['peer_port']))
        if waited >= spec['timeout']:
            if seen is None:
                raise IdleError(MSG_NEVER % (spec['port'], spec['peer_port'], spec['timeout']))
            raise IdleError(MSG_BUSY % (spec['port'], spec['peer_port'], spec['seconds'], spec['timeout'], most))
        due = spec['seconds'] - seen if seen is not None else POLL
        sleep(max(0.0, min(POLL, due, spec['timeout'] - waited)))
