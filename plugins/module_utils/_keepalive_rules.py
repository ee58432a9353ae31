# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""When the Linux kernel sends each keepalive probe and the RST: the rules of tcp_keepalive_timer
(net/ipv4/tcp_timer.c) and the lateness of the timer wheel (kernel/time/timer.c) it runs on.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The rules (one timer per socket, never re-armed by received segments):
- idle: the timer fires, the connection has been idle (since the last segment from the peer) for less than
  ``time``: it is re-armed for the remainder, so the first probe leaves at last segment + ``time``.
- retry: after every probe it sends, answered or not, the timer is re-armed with ``intvl``; an unanswered probe's
  successor leaves at previous probe + ``intvl``.
- after an answered probe: the answer resets the count of unanswered probes, not the timer. It fires at previous
  probe + ``intvl``; idle for less than ``time`` then, it is re-armed for the remainder: the next probe leaves at
  max(last segment from the peer + ``time``, previous probe + ``intvl``).
- RST: when the timer fires with ``probes`` probes unanswered: last probe + ``intvl``.

The timer wheel never fires early and fires late by up to its granularity at the range of the delay: level n of
the wheel (64 slots, LVL_CLK_SHIFT 3) has a granularity of 8**n jiffies. At HZ 250 a 1-2 s delay comes up to 32 ms
late, 3-16 s up to 256 ms, 17-131 s (a 30 s keepalive) up to 2.048 s, and 7200 s up to 131 s.
"""

from __future__ import annotations

import gzip
import os
import re

# the kernel's timer wheel (kernel/time/timer.c)
LVL_CLK_SHIFT = 3
LVL_BITS = 6
LVL_SIZE = 1 << LVL_BITS
DEFAULT_HZ = 250
# jiffies the wheel's clock may differ from jiffies when the timer is armed (one ahead while timers run, behind by
# the ticks a busy or idle CPU has not yet processed): the level is taken over this range of deltas
CLOCK_SKEW = 2
# seconds of softirq and capture latency on top of the wheel's granularity
SOFTIRQ = 0.002

IDLE = 'idle: last segment from the peer + time'
RETRY = 'retry: previous probe + intvl'
ANSWERED_INTVL = 'after an answered probe: max(last segment from the peer + time, previous probe + intvl) = previous probe + intvl'
ANSWERED_IDLE = ('after an answered probe: max(last segment from the peer + time, previous probe + intvl) = last segment '
                 'from the peer + time')
RST = 'RST: last probe + intvl, with probes unanswered'
RULES = (IDLE, RETRY, ANSWERED_INTVL, ANSWERED_IDLE, RST)

_HZ_LINE = re.compile(r'^CONFIG_HZ=(\d+)$', re.M)
_hz_cache = []


def _config_hz(text):
    match = _HZ_LINE.search(text)
    return int(match.group(1)) if match else None


def kernel_hz(boot_dir='/boot', proc_config='/proc/config.gz'):
    """The running kernel's CONFIG_HZ (from /boot/config-<release> or /proc/config.gz), else DEFAULT_HZ.

    `getconf CLK_TCK` is the USER_HZ of times(2) (100), not the tick rate of the timer wheel."""
    candidates = [(os.path.join(boot_dir, 'config-' + os.uname().release), open), (proc_config, gzip.open)]
    for path, opener in candidates:
        try:
            with opener(path, 'rt') as handle:
                hz = _config_hz(handle.read())
        except (OSError, EOFError, ValueError):
            continue
        if hz:
            return hz
    return DEFAULT_HZ


def local_hz():
    """kernel_hz() of this machine, read once."""
    if not _hz_cache:
        _hz_cache.append(kernel_hz())
    return _hz_cache[0]


def _level(delta, hz):
    """The wheel level of a timer delta jiffies ahead (calc_wheel_index)."""
    depth = 9 if hz > 100 else 8
    for level in range(1, depth):
        if delta < (LVL_SIZE - 1) << ((level - 1) * LVL_CLK_SHIFT):
            return level - 1
    return depth - 1


def lateness(seconds, hz=None):
    """The most seconds after its due time the wheel fires a timer armed `seconds` ahead (its level's granularity,
    over the range of the wheel clock's skew), plus the softirq's latency."""
    hz = hz or local_hz()
    delta = max(0, int(round(seconds * hz)))
    level = max(_level(max(0, delta - 1), hz), _level(delta + CLOCK_SKEW, hz))
    return (1 << (level * LVL_CLK_SHIFT)) / float(hz) + SOFTIRQ


class Prediction:
    """When the kernel sends an event: due (the earliest, in the caller's clock), late (seconds the timer wheel may
    add), the rule it came from, the nominal interval the user's tolerance applies to, and what it counts from."""

    __slots__ = ('due', 'late', 'rule', 'interval', 'since')

    def __init__(self, due, late, rule, interval, since):
        self.due = due
        self.late = late
        self.rule = rule
        self.interval = interval
        self.since = since

    def window(self, allowed, seconds):
        """(earliest, latest) observed time that counts as this prediction: allowed (the user's tolerance of the
        interval, seconds) early - the kernel is never early, so only that - and late the wheel's lateness plus the
        tolerance's seconds, or allowed where that is wider."""
        return self.due - allowed, self.due + max(self.late + seconds, allowed)

    def as_dict(self):
        return {'due': self.due, 'late': self.late, 'rule': self.rule, 'interval': self.interval, 'since': self.since}


def next_probe(values, last_rx, previous=None, previous_answered=False, hz=None):
    """The prediction of a probe, or None when values lack what its rule needs: values (time, intvl), last_rx the
    time of the last segment from the peer before it (None: not seen), previous the time of the prober's previous
    probe (None: none known) and whether it was answered."""
    time, intvl = values.get('time'), values.get('intvl')
    if previous is None:
        if last_rx is None or time is None:
            return None
        return Prediction(last_rx + time, lateness(time, hz), IDLE, time, 'the last segment from the peer')
    if intvl is None:
        return None
    if not previous_answered or last_rx is None:
        return Prediction(previous + intvl, lateness(intvl, hz), RETRY, intvl, 'the previous probe')
    if time is None:
        return None
    fire = previous + intvl
    idle_due = last_rx + time
    if fire >= idle_due:
        return Prediction(fire, lateness(intvl, hz), ANSWERED_INTVL, intvl, 'the previous probe')
    if last_rx <= fire:   # re-armed once, at fire, for the remainder; or it fired late, past idle_due, and sent it
        late = max(lateness(idle_due - fire, hz), fire + lateness(intvl, hz) - idle_due)
    else:                 # later segments: re-armed from a later firing, for up to time
        late = lateness(time, hz)
    return Prediction(idle_due, late, ANSWERED_IDLE, time, 'the last segment from the peer')


def rst(values, last_probe, hz=None):
    """The prediction of the RST after the last of `probes` unanswered probes, sent at last_probe."""
    return Prediction(last_probe + values['intvl'], lateness(values['intvl'], hz), RST, values['intvl'],
                      'the last probe')


def schedule(values, answered=0, last_rx=0.0, rtt=0.0, hz=None):
    """The whole expected timeline from the last segment from the peer at last_rx: `answered` probes the peer
    answers (each answer rtt after its probe), then `probes` unanswered ones and the RST, each probe due when the
    previous one is (lateness not added): [(phase, number, Prediction)], phase answered, unanswered or rst."""
    out = []
    previous = None
    answered_previous = False
    for number in range(1, answered + 1):
        pred = next_probe(values, last_rx, previous, answered_previous, hz)
        out.append(('answered', number, pred))
        previous, last_rx, answered_previous = pred.due, pred.due + rtt, True
    for number in range(1, values['probes'] + 1):
        pred = next_probe(values, last_rx, previous, answered_previous, hz)
        out.append(('unanswered', number, pred))
        previous, answered_previous = pred.due, False
    out.append(('rst', values['probes'] + 1, rst(values, previous, hz)))
    return out
