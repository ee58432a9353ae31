# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Follow a capture that is still being written until the prober's probes
reach a count or its connection ends (pcap_info's wait_for).

The wait returns at once when the watched connection ends, and says how: a
FIN from either side, a RST from the server, or a RST from the client
without unanswered probes before it is an end the keepalive timeline does not
explain (a process stopped or aborted the connection) - ``unexpected_end``;
the client's RST after its unanswered probes is keepalive (or
TCP_USER_TIMEOUT) giving up. Every result carries a ``msg`` that says what
was seen, so that a task retried until a condition holds never ends with
Ansible's "Unknown error".

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import math
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, analyse, client_connection

MSG_WAIT_KEYS = 'wait_for takes port, answered, unanswered, rst, timeout and interval, got unknown key(s): %s'
MSG_WAIT_PORT = 'wait_for.port must be a port number 1..65535 (the local port of the keepalive client), got %r'
MSG_WAIT_COUNT = 'wait_for.%s must be an integer 1..%d (a number of keepalive probes), got %r'
MSG_WAIT_SECONDS = 'wait_for.%s must be a number of seconds %s..%s, got %r'
MSG_WAIT_NOTHING = 'wait_for needs something to wait for: answered, unanswered or rst: true'
MSG_ENDED = ('the connection %s ended with a %s from the %s (%s) at +%s s %s before %s was seen '
             '(%d answered and %d unanswered probes by then)')
MSG_MET = 'met after %s s: %s seen (%d answered and %d unanswered probes)'
MSG_OPEN = ('not met after %s s: waiting for %s; %d answered and %d unanswered probes so far, the connection %s is '
            'still open')
MSG_NO_CONNECTION = 'not met after %s s: waiting for %s; the capture holds no connection of port %d yet'
HINTS = {
    ('FIN', 'server'): '(the server process stopped or closed the connection?)',
    ('FIN', 'client'): '(the client process stopped or closed the connection?)',
    ('RST', 'server'): '(the server process was killed or aborted the connection, or its host lost the socket?)',
    ('RST', 'client'): '(the client process aborted the connection or was killed with unread data?)',
}
MSG_CAPTURE_GONE = 'the capture ended before the wait was over: %s; %s'
HINT_GAVE_UP = '(after %d unanswered probe%s: keepalive or a TCP_USER_TIMEOUT gave up)'
COUNT_MAX = {'answered': 1000000, 'unanswered': 127}
SECONDS_RANGE = {'timeout': (0, 3600), 'interval': (0.01, 60)}
DEFAULTS = {'timeout': 5.0, 'interval': 0.1, 'rst': False, 'answered': None, 'unanswered': None}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def normalise_wait(cond):
    """The wait_for condition checked, with its defaults; raises PcapError naming the option and its range."""
    unknown = sorted(set(cond) - set(DEFAULTS) - {'port'})
    if unknown:
        raise PcapError(MSG_WAIT_KEYS % ', '.join(unknown))
    out = dict(DEFAULTS)
    out.update((k, v) for k, v in cond.items() if v is not None)
    if not _is_int(out.get('port')) or not 1 <= out['port'] <= 65535:
        raise PcapError(MSG_WAIT_PORT % (cond.get('port'),))
    for key, high in COUNT_MAX.items():
        if out[key] is not None and (not _is_int(out[key]) or not 1 <= out[key] <= high):
            raise PcapError(MSG_WAIT_COUNT % (key, high, out[key]))
    for key, (low, high) in SECONDS_RANGE.items():
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise PcapError(MSG_WAIT_SECONDS % (key, low, high, value))
    out['rst'] = bool(out['rst'])
    if out['answered'] is None and out['unanswered'] is None and not out['rst']:
        raise PcapError(MSG_WAIT_NOTHING)
    return out


def _num(value):
    text = '%.3f' % value
    return text.rstrip('0').rstrip('.')


def watch(result, port):
    """What the analysis says of the last connection of the client's port `port`: a dict, or None."""
    conn, prober, client = client_connection(result, port)
    if conn is None:
        return None
    return {'conn': conn, 'client': client, 'answered': (prober or {}).get('answered') or 0,
            'unanswered': (prober or {}).get('final_unanswered') or 0, 'end': connection_end(conn, client)}


def connection_end(conn, client):
    """How the connection ended (its first RST or FIN, whichever came first), or None while it is open."""
    rst, fin = conn.get('rst'), conn.get('fin')
    first = min((e for e in (rst, fin) if e), key=lambda e: e.get('frame') or 0, default=None)
    if first is None:
        return None
    end = {'by': 'RST' if first is rst else 'FIN', 'from': 'client' if first.get('from') == client else 'server',
           'endpoint': first.get('from'), 'time': first.get('time'), 'flags': first.get('flags'),
           'after_start': round((first.get('time') or 0.0) - (conn.get('start') or 0.0), 6)}
    if first is rst:
        end['after_probes'] = rst.get('after_probes') or 0
    return end


def prober_state(result, port):
    """(answered, final unanswered, ended) of the prober on local port `port`; ended by a RST or a FIN."""
    seen = watch(result, port)
    if seen is None:
        return 0, 0, False
    return seen['answered'], seen['unanswered'], seen['end'] is not None


def met(cond, answered, unanswered, client_rst):
    if cond.get('answered') is not None and answered < cond['answered']:
        return False
    if cond.get('unanswered') is not None and unanswered < cond['unanswered']:
        return False
    if cond.get('rst') and not client_rst:
        return False
    return True


def awaited(cond):
    """What the condition waits for, in words."""
    parts = []
    if cond.get('answered') is not None:
        parts.append('answered keepalive probe %d' % cond['answered'])
    if cond.get('unanswered') is not None:
        parts.append('unanswered keepalive probe %d' % cond['unanswered'])
    if cond.get('rst'):
        parts.append("the client's RST after its unanswered probes")
    return ' and '.join(parts)


def explained(end, cond):
    """Whether the keepalive timeline explains the end: the client's RST after unanswered probes, awaited."""
    by_client_rst = end['by'] == 'RST' and end['from'] == 'client' and end.get('after_probes', 0) > 0
    return by_client_rst and (cond.get('unanswered') is not None or bool(cond.get('rst')))


def judge_wait(result, cond, seconds):
    """The `waited` dict of a result: met, ended, how, and in words why (not) met."""
    seen = watch(result, cond['port'])
    answered = seen['answered'] if seen else 0
    unanswered = seen['unanswered'] if seen else 0
    end = seen['end'] if seen else None
    client_rst = end is not None and end['by'] == 'RST' and end['from'] == 'client'
    done = met(cond, answered, unanswered, client_rst)
    waited = {'met': done, 'ended': end is not None, 'seconds': round(seconds, 3), 'answered': answered,
              'unanswered': unanswered, 'end': end, 'unexpected_end': False, 'reason': None}
    secs = _num(seconds)
    if done:
        waited['reason'] = MSG_MET % (secs, awaited(cond), answered, unanswered)
    elif seen is None:
        waited['reason'] = MSG_NO_CONNECTION % (secs, awaited(cond), cond['port'])
    elif end is None:
        waited['reason'] = MSG_OPEN % (secs, awaited(cond), answered, unanswered, seen['conn'].get('name'))
    else:
        waited['unexpected_end'] = not explained(end, cond)
        if end['by'] == 'RST' and end['from'] == 'client' and end.get('after_probes'):
            hint = HINT_GAVE_UP % (end['after_probes'], '' if end['after_probes'] == 1 else 's')
        else:
            hint = HINTS[(end['by'], end['from'])]
        waited['reason'] = MSG_ENDED % (seen['conn'].get('name'), end['by'], end['from'], end['endpoint'],
                                        _num(end['after_start']), hint, awaited(cond), answered, unanswered)
    return waited


def gone_state(alive):
    """The liveness of the capture writing the file (alive(): capture liveness or None) when it no longer runs,
    else None."""
    state = alive() if alive is not None else None
    return None if state is None or state.get('running') else state


def capture_gone(waited, state):
    """Mark waited as ended by the capture that has gone (state: its liveness from gone_state)."""
    died = state.get('died') or {}
    why = died.get('msg') or 'the capture writing it stopped (%s)' % ((state.get('finished') or {}).get('reason') or 'stopped')
    waited.update(ended=True, unexpected_end=True, capture=why,
                  reason=MSG_CAPTURE_GONE % (why, waited['reason']))
    return waited


def wait_for(path, cond, clock=time.monotonic, sleep=time.sleep, alive=None, **kwargs):
    """analyse() repeatedly until cond is met, the connection ended, or cond['timeout'] passed.

    alive, when given, tells whether the capture that writes the file still runs (capture's liveness()); a
    capture that has gone ends the wait at once, since nothing more will come - after one more analysis of the
    file, which it may have completed between the analysis and the look at it.

    Without a connection filter the analysis is focused on the client's port (a connection without probes is
    listed then, and its end seen). A file that does not exist yet or has no complete header yet is read again;
    any other error (not a regular file, not a capture, corrupt) is raised at once."""
    cond = normalise_wait(cond)
    if not kwargs.get('connection'):
        kwargs['connection'] = {'port': cond['port']}
    start = clock()
    while True:
        try:
            result = analyse(path, **kwargs)   # refuses a FIFO, a directory, a device before opening it
        except PcapError as exc:
            if not exc.transient or clock() - start >= cond['timeout']:
                raise
            sleep(cond['interval'])
            continue
        waited = judge_wait(result, cond, clock() - start)
        gone = None if waited['met'] or waited['ended'] else gone_state(alive)
        if gone is not None:
            # the capture ended after that analysis, its last segments maybe written meanwhile: the file is
            # final now, so it is judged once more before the wait ends
            result = analyse(path, **kwargs)
            waited = judge_wait(result, cond, clock() - start)
            if not (waited['met'] or waited['ended']):
                waited = capture_gone(waited, gone)
        if waited['met'] or waited['ended'] or clock() - start >= cond['timeout']:
            result['waited'] = waited
            result['msg'] = waited['reason']
            return result
        sleep(cond['interval'])
