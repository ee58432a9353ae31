# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The in-flight experiment's part of the report: after the DROP the client writes, so retransmissions (or
TCP_USER_TIMEOUT), not keepalive, end the connection.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The report module (_report.py) hands over data.in_flight (the settings and the RTO measured before the DROP); this
file finds the client's data segments after the DROP among the segments of its connection (read from the capture
once for the whole report by _report_packets.packets_of): the write, the tail loss probe, the timeout
retransmissions; it predicts them and the end with _retransmit.predict, judges the observation against the prediction,
and adds report.json's prediction, observed.ended_by and observed.retransmissions, the timeline's lines and
report.md's section.
"""

from __future__ import annotations

from ansible_collections.tcplab.keepalive.plugins.module_utils import _retransmit
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_packets import data_times

WHAT = ('a dict with rto_ms (the RTO measured before the DROP, > 0), retries2 (0..255), user_timeout_ms '
        '(0..2147483647, 0 for none), and optionally tail_loss_probe (a boolean, default true) and hz (default 250)')
BOOLS = {'true': True, 'false': False, '1': True, '0': False, 'yes': True, 'no': False}
MSG_NO_WRITE = 'the capture shows no data segment from the client after the DROP: the client did not write'
MSG_ENDED_BY = 'the connection ended by %s, predicted %s'


def _number(value, low, high, integer):
    if isinstance(value, bool):
        return None
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        return None
    if integer and isinstance(value, float) and value != number:
        return None
    return number if low <= number <= high else None


def validate(value, error=ValueError):
    """data.in_flight checked: None when absent, else {rto_ms, retries2, user_timeout_ms, tail_loss_probe, hz}."""
    if value in (None, '', {}):
        return None
    if not isinstance(value, dict) or set(value) - {'rto_ms', 'retries2', 'user_timeout_ms', 'tail_loss_probe', 'hz'}:
        raise error('data.in_flight must be %s, got %r' % (WHAT, value))
    out = {'rto_ms': _number(value.get('rto_ms'), 1, _retransmit.RTO_MAX_MS, False),
           'retries2': _number(value.get('retries2'), *_retransmit.RETRIES2_BOUNDS, integer=True),
           'user_timeout_ms': _number(value.get('user_timeout_ms') or 0, *_retransmit.USER_TIMEOUT_BOUNDS, integer=True),
           'hz': _number(value.get('hz') or _retransmit.HZ_DEFAULT, 100, 1000, True),
           'tail_loss_probe': BOOLS.get(str(value.get('tail_loss_probe', True)).lower())}
    if None in out.values():
        raise error('data.in_flight must be %s, got %r' % (WHAT, value))
    return out


def observe(points, drop_at, client, user_timeout_ms, unanswered):
    """What the client's data did after the DROP, from the segments of its connection (_report_packets.packets_of,
    read once for the whole report): {write_at (epoch), sent_ms (the write first, then each retransmission, ms from
    the write), end_ms (the client's failure, ms from the write), ended_by}."""
    sent = data_times(points, drop_at)
    write_at = sent[0] if sent else client.get('requested_at')
    failed_at = client.get('failed_at') if client.get('state') == 'failed' else None
    end_ms = None if failed_at is None or write_at is None else round((failed_at - write_at) * 1000, 1)
    sent_ms = [round((t - sent[0]) * 1000, 1) for t in sent]
    return {'write_at': write_at, 'sent_ms': sent_ms, 'end_ms': end_ms,
            'ended_by': _retransmit.ended_by(client.get('errno'), len(sent_ms) - 1 if sent_ms else 0, user_timeout_ms,
                                             unanswered)}


def apply(report, settings, points, drop_at, client, tolerance_s):
    """Add the prediction and the observation to report (verdict and reasons replaced: the keepalive probes are not
    what is judged; the kernel's evidence is added after, by the report); returns the timeline's lines as (epoch, who,
    what)."""
    prediction = _retransmit.predict(settings['rto_ms'], settings['retries2'], settings['user_timeout_ms'],
                                     settings['tail_loss_probe'], settings['hz'])
    seen = observe(points, drop_at, client, settings['user_timeout_ms'],
                   report['observed'].get('unanswered_probes') or 0)
    reasons = [('the experiment did not complete: %s' % report['error'])] if report.get('error') else []
    if not seen['sent_ms']:
        reasons.append(MSG_NO_WRITE)
    else:
        reasons += _retransmit.judge(prediction, seen['sent_ms'], seen['end_ms'], tolerance_s)
    if seen['ended_by'] != prediction['ended_by']:
        reasons.append(MSG_ENDED_BY % (seen['ended_by'] or 'no timeout (client: %s %s)'
                                       % (client.get('state'), client.get('errno')), prediction['ended_by']))
    report['verdict'], report['reasons'] = ('fail' if reasons else 'pass'), reasons
    report['in_flight'] = settings
    for key in ('connected_at', 'requested_at', 'failed_at'):
        report['client'][key] = client.get(key)
    report['prediction'] = prediction
    names = [e['what'] for e in prediction['events']]
    report['observed']['ended_by'] = seen['ended_by']
    report['observed']['retransmissions'] = [
        {'at_ms': t, 'what': names[i] if i < len(names) else 'retransmission %d' % (i - 1)}
        for i, t in enumerate(seen['sent_ms'][1:], start=1)]
    report['observed']['in_flight'] = {'write_at': seen['write_at'], 'end_ms': seen['end_ms'],
                                       'sent_ms': seen['sent_ms']}
    return lines(seen, names)


def lines(seen, names):
    """(epoch, who, what) of the write and of every retransmission of it."""
    if seen['write_at'] is None:
        return []
    out = [(seen['write_at'], 'client > server', 'request written: data in flight, unacknowledged')]
    for i, t in enumerate(seen['sent_ms'][1:], start=1):
        what = names[i] if i < len(names) else 'retransmission %d' % (i - 1)
        out.append((seen['write_at'] + t / 1000.0, 'client > server', '%s, no answer' % what))
    return out


def merge(lines_, extra, capture_start, connection_start):
    """The report's timeline (seconds from the connection's start) with extra's (epoch, who, what) lines in it."""
    if not extra or capture_start is None:
        return lines_
    base = capture_start + (connection_start or 0.0)
    return sorted(list(lines_) + [(t - base, who, what) for t, who, what in extra], key=lambda line: line[0])


MARKS = ('request written', 'tail loss probe', 'retransmission')


def mark(ax, t, what):
    """The picture's label of the write, the tail loss probe or a retransmission (R1, R2, ...)."""
    label = 'write' if what.startswith('request') else 'TLP' if what.startswith('tail') else 'R' + what.split()[1].rstrip(',')
    ax.annotate(label, (t, 1.15), ha='center', fontsize=8, color='#1f77b4')


def markdown(report):
    """report.md's section: the rule, then predicted against observed."""
    p, obs = report['prediction'], report['observed']
    settings = report['in_flight']
    user = '%d ms' % settings['user_timeout_ms'] if settings['user_timeout_ms'] else 'off'
    out = ['', '## Data in flight', '',
           'Keepalive only probes an idle connection: once the request was written the unacknowledged data made the '
           'retransmission timer decide - %s.' % p['rule'], '',
           '| | predicted | observed |', '|---|---|---|',
           '| ended by | %s | %s |' % (p['ended_by'], obs.get('ended_by') or '-'),
           '| tcp_retries2 / TCP_USER_TIMEOUT | %d / %s | |' % (settings['retries2'], user),
           '| RTO measured before the DROP | %g ms | |' % settings['rto_ms']]
    sent = obs['in_flight']['sent_ms']
    for i, event in enumerate(p['events'][1:], start=1):
        got = '%.0f ms' % sent[i] if i < len(sent) else '-'
        out.append('| %s | %.0f..%.0f ms | %s |' % (event['what'], event['at_ms'], event['latest_ms'], got))
    out.append('| end (ETIMEDOUT) | %.0f..%.0f ms | %s |' % (
        p['end_ms'], p['end_latest_ms'],
        '%.0f ms' % obs['in_flight']['end_ms'] if obs['in_flight']['end_ms'] is not None else '-'))
    return '\n'.join(out) + '\n'
