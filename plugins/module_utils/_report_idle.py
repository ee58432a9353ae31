# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The idle-timeout fault in the experiment report: the prediction (keepalive time against the middlebox's idle
timeout) judged against the client's outcome, and the two sentences of report.md that say why.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

# how a client dies when the middlebox has forgotten its flow, by the middlebox's action
DEATH = {'drop': 'ETIMEDOUT', 'reset': 'ECONNRESET'}
MSG_IDLE_SURVIVED = ('keepalive time %d s is below the idle timeout of %d s, so the probes were predicted to keep the '
                     'flow in the middlebox\'s table, but the client %s')
MSG_IDLE_DIED = ('keepalive time %d s is not below the idle timeout of %d s, so the middlebox was predicted to forget '
                 'the flow and the client to fail with %s, but it %s')


def judge_idle(expect, fault, client, error=None):
    """(verdict, reasons, prediction) of an idle-timeout run: keepalive time below the idle timeout predicts that
    the flow survives (the request after the idle time is answered), else that the client dies as the middlebox's
    action makes it die (ETIMEDOUT half-open after a silent drop, ECONNRESET after a reset)."""
    survives = expect['time'] < fault['seconds']
    death = DEATH[fault['action']]
    state, number = client.get('state'), client.get('errno')
    saw = ('had its request answered' if state == 'answered' else
           'failed with %s' % number if state == 'failed' else 'ended as %s' % (state or 'unknown'))
    reasons = [error] if error else []
    if survives and state != 'answered':
        reasons.append(MSG_IDLE_SURVIVED % (expect['time'], fault['seconds'], saw))
    if not survives and not (state == 'failed' and number == death):
        reasons.append(MSG_IDLE_DIED % (expect['time'], fault['seconds'], death, saw))
    prediction = {'survives': survives, 'client_errno': None if survives else death}
    return ('fail' if reasons else 'pass'), reasons, prediction


def what_met(report):
    """What of the client's met the middlebox after it had forgotten the flow: 'request' when the client sent its
    request after the idle wait and then failed (its first keepalive probe was not due before the request), else
    'probe' (its first probe came first and the client died of it, before the request was due)."""
    client = report['client']
    if not report['observed'].get('survived') and client.get('requested_at') is not None:
        return 'request'
    return 'probe'


def idle_sentences(report):
    """Two plain sentences: why the connection survived or died, naming what met the middlebox (the client's first
    probe or its request)."""
    fault, expect, client = report['fault'], report['expected'], report['client']
    box = 'the middlebox %s (idle timeout %d s%s)' % (fault['middlebox'], fault['seconds'],
                                                      ', preset %s' % fault['preset'] if fault['preset'] else '')
    idle = (client.get('requested_at') or 0) - (client.get('connected_at') or 0)
    met = what_met(report)
    if report['prediction']['survives']:
        first = ('The client sent a keepalive probe every %d s, less than the %d s after which %s forgets an idle '
                 'flow, so every probe and its answer renewed the flow in its table.' % (expect['time'], fault['seconds'], box))
    else:
        first = ('The client waited %d s before its first keepalive probe, not less than the %d s after which %s '
                 'forgets an idle flow, so %s met a middlebox that no longer knew the connection.'
                 % (expect['time'], fault['seconds'], box,
                    'its first probe' if met == 'probe' else
                    'its request after %.0f s of idle time, before any probe was due,' % idle))
    if report['observed']['survived']:
        second = 'After %.0f s of idle time its request crossed the middlebox and was answered.' % idle
    elif fault['action'] == 'drop':
        second = ('The middlebox dropped it silently: %s went unanswered and the client failed with %s after %s s, '
                  'while the server still held the connection (half-open).'
                  % ("the client's probes" if met == 'probe' else 'the request and its retransmissions',
                     client.get('errno'), client.get('seconds')))
    else:
        second = ('The middlebox answered %s with a TCP reset: the client failed with %s after %s s.'
                  % ('the probe' if met == 'probe' else 'the request', client.get('errno'), client.get('seconds')))
    return [first, second]
