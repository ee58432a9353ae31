# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""evidence.kernel of every experiment report: the kernel's counters of the client's namespace over the run,
compared with the capture.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The samples (tcplab.keepalive.kernel_counters, _kernel_evidence.py) are taken before the client connects and after
it ended; their deltas are compared with what the capture shows, for every fault:

- keepalive probes: TCPKeepAlive against the client's probes in the capture (plus, on loopback, the server's: its
  socket shares the namespace), plus what the other connections of the namespace sent (_kernel_others.py). With the
  idle-timeout fault only a capture on the client counts every probe the client's kernel sent (the middlebox drops or
  rejects them on the way); a capture on the server is not compared, with a note.
- the abort: TCPAbortOnTimeout against the client's end - an RST after its unanswered probes, or ETIMEDOUT from its
  kernel (not its own request timeout).
- data in flight: Tcp RetransSegs against the segments the capture shows sent again (the tail loss probe and the
  timeout retransmissions), and TCPTimeouts + TCPLossProbes against them plus the expiry that ended the connection
  (each resend is a tail loss probe or a retransmission timeout; one more timeout ends it). Checked in lab
  namespaces: tcp_retries2 3 - 6 data segments, RetransSegs 5, TCPLossProbes 1, TCPTimeouts 5.

A disagreement fails the report with both numbers. Where a comparison is not meaningful the notes say why (NOTE_*).
"""

from __future__ import annotations

from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_evidence import (
    COUNTERS, EXTRA_COUNTERS, OTHERS_LISTED, SNMP_COUNTERS, KernelEvidenceError)
from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_others as others_watch
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import client_connection

OPTIONAL_COUNTERS = tuple(EXTRA_COUNTERS.values()) + tuple(SNMP_COUNTERS.values())
MSG_KERNEL = 'data.kernel must be %s, got %r'
KERNEL_WHAT = ('a dict with server_port (an integer 1..65535), start and end (kernel_counters results), samples '
               '(a list of them), and optionally capture_host (client or server) and others_watch')
MSG_DISAGREE_PROBES = ("capture and kernel disagree on the keepalive probes: the capture shows %s sent in the client's "
                       "namespace (%s), TCPKeepAlive rose by %d")
MSG_DISAGREE_ABORT = ("capture and kernel disagree on the abort: %s, so TCPAbortOnTimeout should have risen by %s; "
                      "it rose by %d")
MSG_DISAGREE_RETRANS = ("capture and kernel disagree on the retransmissions: the capture shows the client's data sent "
                        "again %s time(s)%s, Tcp RetransSegs rose by %d")
MSG_DISAGREE_TIMEOUTS = ("capture and kernel disagree on the retransmission timer: %s resend(s) and %d expiry that "
                         "ended the connection%s make %s, TCPTimeouts + TCPLossProbes rose by %d (%d + %d)")
NOTE_OTHERS = ("kernel evidence not judged: %d other connection(s) in the client's namespace could send keepalive "
               "probes or time out (%s), and its counters count them too; %s")
NOTE_NOT_WATCHED = 'they were not watched (none was there at the start)'
NOTE_WATCH_FAILED = 'their watch failed: %s'
NOTE_WATCH_TRUNCATED = 'their watch saw more probes or RSTs than it lists (100000)'
NOTE_WATCHED = ("other connections of the client's namespace, watched by a capture of their own: %d keepalive "
                "probe(s) sent from the namespace's addresses between the samples%s, counted with the client's")
NOTE_NO_END = 'kernel evidence not judged: no sample after the client ended (the run stopped early); deltas up to %s'
NOTE_NETNS = 'kernel evidence not judged: the samples come from different network namespaces (inodes %s)'
NOTE_NO_CAPTURE = "kernel evidence not judged: the capture shows no client connection to compare the counters with"
NOTE_IDLE_SERVER = ("kernel evidence not judged: the capture was on the server, behind the middlebox that drops or "
                    "rejects the client's packets of a forgotten flow, so it cannot count the probes the client's "
                    "kernel sent; capture on the client (experiment_captures client or both) to compare them")
NOTE_NO_RETRANS = ("the retransmission counters were not compared: the kernel's samples lack Tcp RetransSegs or "
                   "TcpExt TCPLossProbes")
NOTE_SOURCE = 'the socket samples come from /proc/net/tcp (inet_diag unavailable: %s), without tcp_info'
# the python client's own request timeout (_program_client.Client.ask): an ETIMEDOUT the kernel did not give
APP_TIMEOUT = 'no answer to the request within'
BOOLS = ('true', '1', 'yes')


# ---------------------------------------------------------------- input

def _int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _number(value):
    try:
        return None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def check_sample(value):
    """A kernel_counters result as a sample, None for a skipped or empty one; KernelEvidenceError when malformed."""
    if value in (None, '', {}) or (isinstance(value, dict) and value.get('skipped')):
        return None
    if not isinstance(value, dict) or not isinstance(value.get('counters'), dict) or _number(value.get('time')) is None:
        raise KernelEvidenceError(MSG_KERNEL % (KERNEL_WHAT, value))
    values = {key: _int(value['counters'].get(key)) for key in COUNTERS.values()}
    if any(v is None for v in values.values()):
        raise KernelEvidenceError(MSG_KERNEL % (KERNEL_WHAT, value))
    values.update({key: _int(value['counters'].get(key)) for key in OPTIONAL_COUNTERS})
    out = dict(value)
    out['counters'], out['time'] = values, _number(value['time'])
    return out


def check_kernel(value):
    """The report's data.kernel checked ({} when none was given)."""
    if value in (None, '', {}):
        return {}
    keys = {'server_port', 'start', 'end', 'samples', 'capture_host', 'others_watch'}
    if not isinstance(value, dict) or set(value) - keys or value.get('capture_host') not in (None, '', 'client', 'server'):
        raise KernelEvidenceError(MSG_KERNEL % (KERNEL_WHAT, value))
    port = _int(value.get('server_port'))
    samples = value.get('samples') or []
    start = check_sample(value.get('start'))
    if port is None or not 1 <= port <= 65535 or start is None or not isinstance(samples, (list, tuple)):
        raise KernelEvidenceError(MSG_KERNEL % (KERNEL_WHAT, value))
    taken = [s for s in (check_sample(item) for item in samples) if s is not None]
    return {'server_port': port, 'start': start, 'end': check_sample(value.get('end')), 'samples': taken,
            'capture_host': value.get('capture_host') or None,
            'others_watch': others_watch.check_watch(value.get('others_watch'), KernelEvidenceError)}


# ---------------------------------------------------------------- what the capture says

def capture_counts(analysis, client_port, loopback, until=None, client_until=None):
    """(probes the client sent, probes the server sent in the client's namespace) by the capture, or None without the
    connection. The server's count only on loopback (its socket shares the namespace), up to `until` (epoch); the
    client's up to `client_until` when given (a capture on the client's host: the samples' clock)."""
    conn, prober, client_end = client_connection(analysis, client_port)
    if conn is None:
        return None
    start = (analysis or {}).get('start') or 0.0
    server = 0
    for other in conn.get('probers') or []:
        if loopback and other.get('endpoint') != client_end:
            server += len([p for p in other.get('probes') or [] if until is None or start + p['time'] <= until])
    mine = [p for p in (prober or {}).get('probes') or [] if client_until is None or start + p['time'] <= client_until]
    return len(mine), server


def expected_abort(observed, client):
    """(1 or 0, why): whether the kernel gave up on the client's connection, by the capture and the client."""
    end = observed.get('end') or {}
    if end.get('by') == 'RST' and end.get('from') == 'client' and end.get('after_probes'):
        return 1, "the capture shows the client's RST after %d unanswered probes" % end['after_probes']
    if client.get('errno') == 'ETIMEDOUT' and not str(client.get('error') or '').startswith(APP_TIMEOUT):
        return 1, 'the client failed with ETIMEDOUT'
    return 0, ('the capture shows no RST of the client after its probes and the client did not fail with ETIMEDOUT '
               'from its kernel')


# ---------------------------------------------------------------- the samples

def _others(samples):
    seen, listed, most = set(), [], 0
    for one in samples:
        most = max(most, one.get('others_count') or 0)
        for row in one.get('others') or []:
            key = (row.get('local'), row.get('remote'))
            if key not in seen:
                seen.add(key)
                listed.append(row)
    return {'count': max(most, len(listed)), 'listed': listed[:OTHERS_LISTED]}


def _timer_samples(start, samples):
    out = []
    for one in samples:
        sock = one.get('socket') or {}
        out.append({'at_s': round(one['time'] - start['time'], 3), 'state': sock.get('state'), 'timer': sock.get('timer'),
                    'expires_s': sock.get('expires_s'), 'unanswered': sock.get('timer_count'),
                    'tcpi_probes': sock.get('probes'), 'tcpi_backoff': sock.get('backoff')})
    return out


def _deltas(start, last):
    out = {}
    for key in tuple(COUNTERS.values()) + OPTIONAL_COUNTERS:
        a, b = start['counters'].get(key), last['counters'].get(key)
        out[key] = None if a is None or b is None else b - a
    return out


def not_judged(end, sampled, inodes, counts, context):
    """The note saying why capture and kernel cannot be compared, or None when they can."""
    if end is None:
        return NOTE_NO_END % ('the last timer sample' if sampled else 'the start')
    if len(inodes) > 1:
        return NOTE_NETNS % ', '.join(str(i) for i in inodes)
    if counts is None:
        return NOTE_NO_CAPTURE
    if context.get('fault') == 'idle_timeout' and context.get('capture_host') == 'server' and not context.get('loopback'):
        return NOTE_IDLE_SERVER
    return None


def others_of(kernel, others, t0, t1):
    """(what the other connections added - None when none could -, the note why it is unknown or None)."""
    if not others['count'] and not kernel.get('others_watch'):
        return None, None
    watch = kernel.get('others_watch')
    if not watch or watch.get('error'):
        why = NOTE_WATCH_FAILED % watch['error'] if watch else NOTE_NOT_WATCHED
        return None, NOTE_OTHERS % (others['count'], ', '.join(
            '%s > %s %s timer %s' % (r['local'], r['remote'], r['state'], r['timer']) for r in others['listed']), why)
    added = others_watch.count(watch, t0, t1)
    if added['truncated']:
        return None, NOTE_OTHERS % (others['count'], 'watched', NOTE_WATCH_TRUNCATED)
    return added, None


# ---------------------------------------------------------------- the comparisons

def _span(low, high):
    return '%d' % low if low == high else '%d..%d' % (low, high)


def judge_probes(out, counts, added, loopback):
    """The reason the keepalive probes disagree, or None."""
    low = counts[0] + counts[1] + (added or {}).get('probes', 0)
    high = counts[0] + counts[1] + (added or {}).get('probes_max', 0)
    if low <= out['tcp_keepalive'] <= high:
        return None
    detail = '%d from the client' % counts[0] + (' and %d from the server, loopback' % counts[1] if loopback else '')
    if added:
        detail += ' and %s from other connections, by their watch' % _span(added['probes'], added['probes_max'])
    return MSG_DISAGREE_PROBES % (_span(low, high), detail, out['tcp_keepalive'])


def judge_abort(out, observed, client, added):
    abort, why = expected_abort(observed, client)
    high = abort + (added or {}).get('aborts_max', 0)
    if abort <= out['tcp_abort_on_timeout'] <= high:
        return abort, None
    return abort, MSG_DISAGREE_ABORT % (why + (' (and the other connections up to %d)' % (high - abort) if high > abort else ''),
                                        _span(abort, high), out['tcp_abort_on_timeout'])


def judge_in_flight(out, in_flight, client, added):
    """Reasons the retransmission counters disagree with the capture's resends of the client's data (in flight)."""
    if out.get('tcp_retrans_segs') is None or out.get('tcp_loss_probes') is None:
        out['notes'].append(NOTE_NO_RETRANS)
        return []
    sent = in_flight.get('sent_ms') or []
    resends = max(len(sent) - 1, 0)
    ended = 1 if client.get('errno') == 'ETIMEDOUT' and resends else 0
    extra = (added or {}).get('retransmissions', 0)
    others = ' (and up to %d of the other connections)' % extra if extra else ''
    reasons = []
    if not resends <= out['tcp_retrans_segs'] <= resends + extra:
        reasons.append(MSG_DISAGREE_RETRANS % (_span(resends, resends + extra), others, out['tcp_retrans_segs']))
    timers = out['tcp_timeouts'] + out['tcp_loss_probes']
    high = resends + ended + 2 * extra + (added or {}).get('aborts_max', 0)
    if not resends + ended <= timers <= high:
        reasons.append(MSG_DISAGREE_TIMEOUTS % (resends, ended, others, _span(resends + ended, high), timers,
                                                out['tcp_timeouts'], out['tcp_loss_probes']))
    return reasons


def evidence(kernel, analysis, observed, client, loopback, client_port, context=None):
    """(evidence.kernel, reasons): counter deltas over the run, timer samples, and whether capture and kernel agree.

    context: {fault (drop, idle_timeout), in_flight (report.json's observed.in_flight, for data in flight)}."""
    if not kernel:
        return None, []
    context = dict(context or {}, capture_host=kernel.get('capture_host'), loopback=loopback)
    start, end, samples = kernel['start'], kernel['end'], kernel['samples']
    last = end or (samples[-1] if samples else start)
    every = [start] + samples + ([end] if end else [])
    out = _deltas(start, last)
    out.update({'namespace': 'client', 'seconds': round(last['time'] - start['time'], 3),
                'window': [start['time'], last['time']],
                'counters_start': start['counters'], 'counters_end': last['counters'],
                'source': (end or start).get('source'), 'timer_samples': _timer_samples(start, samples),
                'others': _others(every), 'others_watch': None, 'capture': None, 'agree': None, 'notes': []})
    if out['source'] == 'proc':
        out['notes'].append(NOTE_SOURCE % (end or start).get('source_error'))
    inodes = sorted({s.get('netns_inode') for s in every} - {None})
    on_client = loopback or kernel.get('capture_host') == 'client'
    counts = capture_counts(analysis, client_port, loopback, until=last['time'],
                            client_until=last['time'] if on_client else None)
    why_not = not_judged(end, bool(samples), inodes, counts, context)
    added, why_others = (None, None) if why_not else others_of(kernel, out['others'], start['time'], last['time'])
    if why_not or why_others:
        out['notes'].append(why_not or why_others)
        return out, []
    return out, _compare(out, counts, added, observed, client, loopback, context)


def _compare(out, counts, added, observed, client, loopback, context):
    """Fill out's capture, others_watch and agree; the reasons of a disagreement."""
    if added is not None:
        out['others_watch'] = added
        out['notes'].append(NOTE_WATCHED % (added['probes'], '' if added['probes'] == added['probes_max'] else
                                            ' (up to %d with segments that may have been probes)' % added['probes_max']))
    abort, abort_reason = judge_abort(out, observed, client, added)
    out['capture'] = {'client_probes': counts[0], 'server_probes': counts[1], 'abort': abort}
    reasons = [r for r in (judge_probes(out, counts, added, loopback), abort_reason) if r]
    if context.get('in_flight') is not None:
        sent = context['in_flight'].get('sent_ms') or []
        out['capture']['resends'] = max(len(sent) - 1, 0)
        reasons += judge_in_flight(out, context['in_flight'], client, added)
    out['agree'] = not reasons
    return reasons


def markdown_line(kernel):
    """The report.md line of the kernel evidence ([] without it)."""
    if not kernel:
        return []
    head = ("- kernel evidence (client's namespace, %s): TCPKeepAlive +%d, TCPAbortOnTimeout +%d, TCPTimeouts +%d"
            % (kernel.get('source'), kernel['tcp_keepalive'], kernel['tcp_abort_on_timeout'], kernel['tcp_timeouts']))
    if kernel.get('tcp_retrans_segs') is not None and (kernel.get('capture') or {}).get('resends') is not None:
        head += ', TCPLossProbes +%d, RetransSegs +%d' % (kernel['tcp_loss_probes'] or 0, kernel['tcp_retrans_segs'])
    head += ' over %.1f s' % kernel['seconds']
    cap = kernel.get('capture')
    if kernel['agree'] is None:
        tail = '; not judged (see the notes)'
    else:
        watched = kernel.get('others_watch')
        tail = '; capture: %d probe(s)%s%s, abort %d%s - %s' % (
            cap['client_probes'] + cap['server_probes'],
            ' (%d from the server)' % cap['server_probes'] if cap['server_probes'] else '',
            ' + %d from other connections (watched)' % watched['probes'] if watched else '', cap['abort'],
            ', %d resend(s)' % cap['resends'] if cap.get('resends') is not None else '',
            'agree' if kernel['agree'] else 'DISAGREE')
    timers = ', '.join('%s/%s' % (t['unanswered'], t['timer']) for t in kernel['timer_samples'] if t['timer'])
    return [head + tail + ('; timer samples (unanswered/timer): %s' % timers if timers else '')]
