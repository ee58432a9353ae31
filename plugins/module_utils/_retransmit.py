# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""When Linux gives up on a connection with data in flight: the retransmission model.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

Keepalive only probes an idle connection (tcp_keepalive_timer re-arms itself
while packets are out). With unacknowledged data the retransmission timer
decides, as in net/ipv4/tcp_timer.c and tcp_output.c:

- a tail loss probe (TLP, net.ipv4.tcp_early_retrans 3, the default) resends the
  last segment one RTO after it was sent (with one segment out the probe
  timeout 2*srtt + TCP_RTO_MIN is clamped to the RTO);
- the retransmission timer, re-armed after the probe, fires one RTO later: the
  first timeout retransmission. tcp_retransmit_skb() saves retrans_stamp from
  the segment's time stamp after it was sent again, so the clock of the give-up
  rule starts here, not at the write;
- every expiry doubles the RTO (icsk_rto << 1), capped at TCP_RTO_MAX (120 s);
- at every expiry retransmits_timed_out() compares the time since
  retrans_stamp with tcp_model_timeout(tcp_retries2): the time the
  retransmissions would take from an RTO of TCP_RTO_MIN (200 ms), doubling,
  capped at 120 s - not the count of retransmissions. The first expiry whose
  elapsed time reaches it ends the connection (ETIMEDOUT) instead of
  retransmitting;
- with TCP_USER_TIMEOUT the user timeout replaces the modelled one, and
  tcp_clamp_rto_to_user_timeout() arms the timer for the moment it runs out,
  so the connection ends at retrans_stamp + the user timeout;
- a timer fires late by up to the timer wheel's granularity at its range
  (kernel/time/timer.c: 8**level jiffies, level 0 below 63 jiffies, then each
  level 8 times the range; 4, 32, 256 ms, 2.048 s ... at HZ 250), plus a jiffy;
  each timer is armed from when the previous one fired, so the lateness adds up.

Checked against the kernel in lab namespaces by
tests/unit/plugins/module_utils/test__retransmit.py (docs/in_flight.md has the
figures).
"""

from __future__ import annotations

RTO_MIN_MS = 200         # TCP_RTO_MIN, HZ / 5
RTO_MAX_MS = 120000      # TCP_RTO_MAX, 120 * HZ
RETRIES2 = 'net.ipv4.tcp_retries2'
RETRIES2_BOUNDS = (0, 255)          # the kernel's (a u8 sysctl; 256 and -1 are refused with EINVAL)
RETRIES2_DEFAULT = 15
USER_TIMEOUT_BOUNDS = (0, 2147483647)   # TCP_USER_TIMEOUT, ms; 0 is off, negative is EINVAL
HZ_DEFAULT = 250         # CONFIG_HZ of Debian's and Ubuntu's kernels (and of this lab's)
WHEEL_LEVELS = 9         # LVL_DEPTH with HZ > 100
ENDINGS = ('keepalive', 'retransmissions', 'user_timeout')


def ilog2(value):
    """The kernel's ilog2 of a positive integer."""
    return int(value).bit_length() - 1


def model_timeout_ms(retries2, rto_base=RTO_MIN_MS, rto_max=RTO_MAX_MS):
    """tcp_model_timeout(): how long retries2 retransmissions take from rto_base, doubling, capped at rto_max."""
    thresh = ilog2(rto_max // rto_base)
    if retries2 <= thresh:
        return ((2 << retries2) - 1) * rto_base
    return ((2 << thresh) - 1) * rto_base + (retries2 - thresh) * rto_max


def backoff_ms(rto_ms, backoff, rto_max=RTO_MAX_MS):
    """The RTO after `backoff` expiries: doubled each time, capped at TCP_RTO_MAX."""
    return min(rto_ms * (2 ** backoff), rto_max)


def lateness_ms(timer_ms, hz=HZ_DEFAULT):
    """How late a timer of timer_ms may fire: the timer wheel's granularity at its range, and one jiffy of rounding.

    Level n (granularity 8**n jiffies) holds the timers below 63 * 8**n jiffies (LVL_START(n + 1))."""
    jiffy = 1000.0 / hz
    ticks = timer_ms / jiffy
    level = 0
    while level < WHEEL_LEVELS - 1 and ticks >= 63 * 8 ** level:
        level += 1
    return (8 ** level + 1) * jiffy


def _event(at, late, what):
    return {'at_ms': round(at, 1), 'latest_ms': round(at + late, 1), 'what': what}


def predict(rto_ms, retries2, user_timeout_ms=0, tlp=True, hz=HZ_DEFAULT):
    """The kernel's timeline from the write (0 ms) for a silent peer: the segments it sends, and how it ends.

    Returns {events: [{at_ms, latest_ms, what}] (the write, the tail loss probe, each timeout retransmission),
    end_ms, end_latest_ms, ended_by (retransmissions or user_timeout), timeout_ms (the modelled or the user timeout),
    clock_start_ms (the first timeout retransmission, retrans_stamp), retransmissions (timeout retransmissions),
    early_end (when the lateness the wheel allows could make the kernel end at the last retransmission's expiry
    instead: {at_ms, latest_ms}, else None), rule (in words)}."""
    user = int(user_timeout_ms or 0)
    timeout = user if user else model_timeout_ms(retries2)
    events = [_event(0, 0, 'write')]
    t = late = 0.0
    if tlp:
        t, late = rto_ms, lateness_ms(rto_ms, hz)
        events.append(_event(t, late, 'tail loss probe'))
    t, late = t + rto_ms, late + lateness_ms(rto_ms, hz)
    start, since, count, early = t, 0.0, 1, None
    events.append(_event(t, late, 'retransmission 1'))
    while True:
        wait = backoff_ms(rto_ms, count)
        if user:
            wait = min(wait, max(start + user - t, 1))
        extra = lateness_ms(wait, hz)
        nxt = t + wait
        if nxt - start >= timeout:
            break
        # nominally short of the timeout; as late as the wheel allows, the kernel would end here instead
        early = _event(nxt, late + extra, 'end') if not user and nxt - start + since + extra >= timeout else None
        count += 1
        t, late, since = nxt, late + extra, since + extra
        events.append(_event(t, late, 'retransmission %d' % count))
    return {'events': events, 'end_ms': round(nxt, 1), 'end_latest_ms': round(nxt + late + extra, 1),
            'ended_by': 'user_timeout' if user else 'retransmissions', 'timeout_ms': timeout,
            'clock_start_ms': round(start, 1), 'retransmissions': count, 'tail_loss_probe': bool(tlp),
            'early_end': early if early is not None and early['at_ms'] == events[-1]['at_ms'] else None,
            'rto_ms': rto_ms, 'hz': hz, 'rule': rule(rto_ms, retries2, user, timeout, tlp)}


def rule(rto_ms, retries2, user_timeout_ms, timeout_ms, tlp):
    """The prediction's rule, in words."""
    first = '%s the first timeout retransmission at %s' % (
        'a tail loss probe after one RTO (%g ms), then' % rto_ms if tlp else 'no tail loss probe;',
        '2 RTO' if tlp else '1 RTO')
    if user_timeout_ms:
        return ('%s starts the clock; TCP_USER_TIMEOUT %d ms replaces the tcp_retries2 model, and the timer is '
                'clamped to fire when it runs out' % (first, user_timeout_ms))
    return ('%s starts the clock; the RTO doubles at each expiry (capped at 120 s), and the first expiry at or past '
            'tcp_model_timeout(tcp_retries2=%d) = %d ms (from 200 ms, doubling, capped at 120 s) ends the connection'
            % (first, retries2, timeout_ms))


def ended_by(client_errno, retransmitted, user_timeout_ms, probes_unanswered=0):
    """What ended a connection whose peer went silent: keepalive (unanswered probes, no data out), retransmissions
    (tcp_retries2) or user_timeout (TCP_USER_TIMEOUT); None when it did not end by a timeout."""
    if client_errno != 'ETIMEDOUT':
        return None
    if retransmitted:
        return 'user_timeout' if user_timeout_ms else 'retransmissions'
    return 'keepalive' if probes_unanswered else None


def judge(prediction, observed_ms, end_ms, tolerance_s=0.25):
    """Reasons (empty: it fits) why the observed timeline - the times (ms from the write) of the data segments the
    client sent, the write itself first, and of the end - is not the predicted one. Each time may lie between its
    nominal time and its latest one (the wheel's lateness, added up), +- tolerance_s. When the prediction has an
    early_end, ending at the last retransmission's expiry (one retransmission fewer) fits too."""
    reasons = []
    tol = tolerance_s * 1000.0
    expected = prediction['events']
    end = {'at_ms': prediction['end_ms'], 'latest_ms': prediction['end_latest_ms']}
    early = prediction.get('early_end')
    if early is not None and len(observed_ms) == len(expected) - 1:
        expected, end = expected[:-1], early
    if len(observed_ms) != len(expected):
        reasons.append('the client sent the data %d times (the write and %d retransmissions), expected %d%s'
                       % (len(observed_ms), max(len(observed_ms) - 1, 0), len(expected),
                          ' or %d' % (len(expected) - 1) if early is not None else ''))
    for event, got in zip(expected[1:], observed_ms[1:]):
        if not event['at_ms'] - tol <= got <= event['latest_ms'] + tol:
            reasons.append('%s came %.0f ms after the write, expected %.0f..%.0f ms'
                           % (event['what'], got, event['at_ms'], event['latest_ms']))
    if end_ms is None:
        reasons.append('the client did not fail: expected ETIMEDOUT %.0f..%.0f ms after the write'
                       % (end['at_ms'], end['latest_ms']))
    elif not end['at_ms'] - tol <= end_ms <= end['latest_ms'] + tol:
        reasons.append('the connection ended %.0f ms after the write, expected %.0f..%.0f ms (%s)'
                       % (end_ms, end['at_ms'], end['latest_ms'], prediction['ended_by']))
    return reasons
