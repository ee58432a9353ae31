# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The watch of the other connections in the client's namespace: what they added to its counters.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

TCPKeepAlive, TCPAbortOnTimeout, TCPTimeouts, TCPLossProbes and RetransSegs count every connection of a namespace.
On a VM the controller's SSH connection (sshd sets SO_KEEPALIVE with TCPKeepAlive yes, and follows the shortened
sysctls) probes while the experiment runs. So where the controller reaches the client over a connection of its own,
the role watches the namespace (kernel_counters watch, _kernel_watch.py: tcpdump -i any of every TCP segment but
the experiment's connection) from before the start sample to after the end sample, and the watch reports the times
of the probes, RSTs and unsure segments the namespace sent (_kernel_watch_scan.py). count() takes those between the
two samples' times (the same host's clock):

- probes: the keepalive probes the other connections sent - what they added to TCPKeepAlive; probes_max adds the
  zero-length segments that may have been probes (sent before anything told the connection's sequence numbers);
- aborts_max: what they could have added to TCPAbortOnTimeout - a keepalive abort always sends an RST after the last
  probe (tcp_keepalive_timer), so one per RST the namespace sent; a retransmission timeout sends none, so when the
  watch saw any retransmission, every connection it saw could have been one;
- retransmissions: the segments the namespace sent again (a bound for what they added to RetransSegs, TCPTimeouts
  and TCPLossProbes).

What the watch cannot see: a probe in the instant between a sample's reading of the counters and its time stamp
(microseconds), and connections of another namespace (they do not count here).
"""

from __future__ import annotations

MSG_WATCH = ('data.kernel.others_watch must be a dict with seen (what kernel_counters watch: stopped returned) or '
             'error (why the other connections could not be watched), got %r')
TIMES = ('probes', 'unsure', 'rsts')


def check_watch(value, error=ValueError):
    """The watch checked: None when none ran, {'error': text}, or {'seen': dict}."""
    if value in (None, '', {}):
        return None
    if not isinstance(value, dict):
        raise error(MSG_WATCH % (value,))
    if value.get('error'):
        return {'error': str(value['error'])}
    seen = value.get('seen')
    if not isinstance(seen, dict) or not all(isinstance(seen.get(key, []), list) for key in TIMES):
        raise error(MSG_WATCH % (value,))
    return {'seen': seen}


def _count(times, t0, t1):
    return len([t for t in times if isinstance(t, (int, float)) and t0 < t <= t1])


def count(watch, t0, t1):
    """What the other connections added between t0 and t1 (seconds since the epoch): {probes, probes_max, aborts_max,
    retransmissions, connections}."""
    seen = watch['seen']
    probes = _count(seen.get('probes') or [], t0, t1)
    unsure = _count(seen.get('unsure') or [], t0, t1)
    again = int(seen.get('retransmissions') or 0)
    connections = int(seen.get('connections') or 0)
    return {'probes': probes, 'probes_max': probes + unsure, 'truncated': bool(seen.get('truncated')),
            'aborts_max': _count(seen.get('rsts') or [], t0, t1) + (connections if again else 0),
            'retransmissions': again, 'connections': connections}
