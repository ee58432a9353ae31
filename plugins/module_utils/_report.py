# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Experiment reports: the verdict, report.json, report.md with an annotated
timeline in the style of the walk-through's tcpdump output, and timeline.png.

The input is checked before anything is written (every missing or malformed
key is named with what to give), the pcaps must be regular files (a FIFO
would block the reader), and the three files are rendered in memory and
written only when all of them could be: a failure leaves no file and no
directory of this call behind.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import io
import json
import math
import os

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import DEFAULT_TOLERANCE, TOLERANCE_RANGE, allowed
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, analyse, check_file, client_connection
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap_wait import HINT_GAVE_UP, HINTS, connection_end
from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_evidence as kernel_ev
from ansible_collections.tcplab.keepalive.plugins.module_utils import _report_marks as marks
from ansible_collections.tcplab.keepalive.plugins.module_utils import _in_flight as in_flight

MSG_MISSING_KEY = 'data.%s is missing: give %s'
MSG_BAD_VALUE = 'data.%s must be %s, got %r'
MSG_NOT_DICT = 'data must be a dict of what the experiment saw, got %r'
MSG_UNKNOWN_KEYS = 'data takes %s; got unknown key(s): %s'
MSG_DEST_NOT_DIR = 'dest %s exists and is not a directory: give the path of a directory for the report (it is created if missing)'
MSG_DEST_PARENT = 'dest %s cannot be created: %s is not a directory; give a path under a directory'
MSG_PCAP = 'data.pcaps: %s'
MSG_PCAP_MISSING = 'pcap %s not found: the timeline picture shows no packets from it'
MSG_LOCAL_ANALYSIS = ('the analysis from the capture host lists no connection of the client port %d: %s was analysed '
                      'here for it')
MSG_LOCAL_FAILED = 'the local analysis of %s failed: %s'
MSG_NO_ANALYSIS = ('no analysis of the capture is available (the capture did not stop cleanly, or its file was not '
                   'fetched): the probes cannot be judged')
MSG_NO_CONNECTION = 'the capture holds no connection from the client port %d'
MSG_ENDED = ('the connection %s ended with a %s from the %s (%s) at +%.3f s %s, after %d answered and %d unanswered '
             'probes')
MSG_NO_MATPLOTLIB = ('matplotlib is missing on the controller: pip install matplotlib (requirements-dev.txt pins it), or '
                     'set the report picture off')
MSG_WRITE = 'cannot write the report in %s: %s'

TRIPLE = 'a dict with time, intvl and probes (integers >= 1)'
REQUIRED = {
    'run_id': 'the run id of the experiment (a string)',
    'settings': 'the keepalive sysctls the experiment set, ' + TRIPLE,
    'expected': 'the settings the probes are judged against, ' + TRIPLE,
    'client_port': "the keepalive client's local port (an integer 1..65535)",
}
OPTIONAL = ('governs', 'client_kind', 'server_kind', 'hosts', 'idle_probes', 'tolerance', 'analysis', 'client', 'drop_at',
            'pcaps', 'error', 'cleanup_errors', 'notes', 'capture_backend', 'fault', 'kernel', 'in_flight')
FAULT = ('a dict with kind drop, or kind idle_timeout with seconds (an integer >= 1), action (drop or reset), '
         'middlebox (its inventory hostname) and preset (or null)')
# how a client dies when the middlebox has forgotten its flow, by the middlebox's action
DEATH = {'drop': 'ETIMEDOUT', 'reset': 'ECONNRESET'}
MSG_IDLE_SURVIVED = ('keepalive time %d s is below the idle timeout of %d s, so the probes were predicted to keep the '
                     'flow in the middlebox\'s table, but the client %s')
MSG_IDLE_DIED = ('keepalive time %d s is not below the idle timeout of %d s, so the middlebox was predicted to forget '
                 'the flow and the client to fail with %s, but it %s')


# the picture's markers: the analyser's kind of a segment -> style
STYLES = {'probe': ('o', '#d62728', 'keepalive probe'), 'ack': ('s', '#2ca02c', 'ACK (answer)'),
          'rst': ('X', '#000000', 'RST'), 'other': ('.', '#7f7f7f', 'other segment')}
STYLE_OF = {'keepalive': 'probe', 'keepalive_ack': 'ack', 'answer': 'ack', 'rst': 'rst'}


class ReportError(Exception):
    """The report cannot be written; the message says why."""


# ---------------------------------------------------------------- input

def _int(value):
    """An int from an int or an integer string (Jinja may deliver either); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip('+-').isdigit():
        return int(value.strip())
    return None


def _number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _triple(key, value):
    if not isinstance(value, dict) or set(value) != {'time', 'intvl', 'probes'}:
        raise ReportError(MSG_BAD_VALUE % (key, TRIPLE, value))
    out = {k: _int(v) for k, v in value.items()}
    if any(v is None or v < 1 for v in out.values()):
        raise ReportError(MSG_BAD_VALUE % (key, TRIPLE, value))
    return out


def _optional(data, key, kinds, what, default):
    value = data.get(key)
    if value is None or value == '':
        return default
    if not isinstance(value, kinds):
        raise ReportError(MSG_BAD_VALUE % (key, what, value))
    return value


def validate(data):
    """The report input checked and normalised; raises ReportError naming the key and what to give."""
    if not isinstance(data, dict):
        raise ReportError(MSG_NOT_DICT % (data,))
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ReportError(MSG_UNKNOWN_KEYS % (', '.join(list(REQUIRED) + list(OPTIONAL)), ', '.join(unknown)))
    for key, what in REQUIRED.items():
        if data.get(key) is None or data.get(key) == '':
            raise ReportError(MSG_MISSING_KEY % (key, what))
    out = dict(data)
    if isinstance(data['run_id'], bool) or not isinstance(data['run_id'], (str, int)):
        raise ReportError(MSG_BAD_VALUE % ('run_id', 'a string (or a number)', data['run_id']))
    out['run_id'] = str(data['run_id'])
    out['settings'] = _triple('settings', data['settings'])
    out['expected'] = _triple('expected', data['expected'])
    port = _int(data['client_port'])
    if port is None or not 1 <= port <= 65535:
        raise ReportError(MSG_BAD_VALUE % ('client_port', 'an integer 1..65535', data['client_port']))
    out['client_port'] = port
    raw = data.get('idle_probes')
    idle = 0 if raw in (None, '') else _int(raw)
    if idle is None or idle < 0:
        raise ReportError(MSG_BAD_VALUE % ('idle_probes', 'an integer >= 0', data.get('idle_probes')))
    out['idle_probes'] = idle
    out['tolerance'] = _tolerance(data.get('tolerance'))
    out['drop_at'] = None
    if data.get('drop_at') not in (None, '', 'None'):
        out['drop_at'] = _number(data['drop_at'])
        if out['drop_at'] is None:
            raise ReportError(MSG_BAD_VALUE % ('drop_at', 'a time stamp (seconds since the epoch) or null',
                                               data['drop_at']))
    for key in ('analysis', 'client', 'hosts'):
        out[key] = _optional(data, key, dict, 'a dict', {})
    for key in ('pcaps', 'cleanup_errors', 'notes'):
        out[key] = list(_optional(data, key, (list, tuple), 'a list', []))
    for key in ('governs', 'client_kind', 'server_kind', 'error', 'capture_backend'):
        out[key] = _optional(data, key, str, 'a string', None)
    out['fault'] = _fault(data.get('fault'))
    out['in_flight'] = in_flight.validate(data.get('in_flight'), ReportError)
    try:
        out['kernel'] = kernel_ev.check_kernel(data.get('kernel'))
    except kernel_ev.KernelEvidenceError as exc:
        raise ReportError(str(exc))
    out['conntrack'] = marks.watch_of(data.get('fault'))
    if not all(isinstance(p, str) and p for p in out['pcaps']):
        raise ReportError(MSG_BAD_VALUE % ('pcaps', 'a list of paths of local pcap files', data.get('pcaps')))
    return out


def _fault(value):
    """The fault of the experiment: {'kind': 'drop'} (the default), or the idle timeout of a middlebox."""
    if value in (None, '', {}):
        return {'kind': 'drop'}
    if not isinstance(value, dict) or value.get('kind') not in ('drop', 'idle_timeout'):
        raise ReportError(MSG_BAD_VALUE % ('fault', FAULT, value))
    if value['kind'] == 'drop':
        return {'kind': 'drop'}
    seconds = _int(value.get('seconds'))
    if seconds is None or seconds < 1 or value.get('action') not in DEATH or not value.get('middlebox'):
        raise ReportError(MSG_BAD_VALUE % ('fault', FAULT, value))
    return {'kind': 'idle_timeout', 'seconds': seconds, 'action': value['action'],
            'middlebox': str(value['middlebox']), 'preset': value.get('preset') or None}


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


def idle_sentences(report):
    """Two plain sentences: why the connection survived or died."""
    fault, expect = report['fault'], report['expected']
    box = 'the middlebox %s (idle timeout %d s%s)' % (fault['middlebox'], fault['seconds'],
                                                      ', preset %s' % fault['preset'] if fault['preset'] else '')
    if report['prediction']['survives']:
        first = ('The client sent a keepalive probe every %d s, less than the %d s after which %s forgets an idle '
                 'flow, so every probe and its answer renewed the flow in its table.' % (expect['time'], fault['seconds'], box))
    else:
        first = ('The client waited %d s before its first keepalive probe, not less than the %d s after which %s '
                 'forgets an idle flow, so the probe met a middlebox that no longer knew the connection.'
                 % (expect['time'], fault['seconds'], box))
    client = report['client']
    if report['observed']['survived']:
        second = 'After %.0f s of idle time its request crossed the middlebox and was answered.' % (
            (client.get('requested_at') or 0) - (client.get('connected_at') or 0))
    elif fault['action'] == 'drop':
        second = ('The middlebox dropped it silently: the client\'s probes went unanswered and it failed with %s after '
                  '%s s, while the server still held the connection (half-open).' % (client.get('errno'), client.get('seconds')))
    else:
        second = ('The middlebox answered with a TCP reset: the client failed with %s after %s s.'
                  % (client.get('errno'), client.get('seconds')))
    return [first, second]


def _tolerance(value):
    if value in (None, '', {}):
        return dict(DEFAULT_TOLERANCE)
    what = 'a dict with %s' % ' and '.join('%s (0..%d)' % (key, high) for key, (high, _what) in TOLERANCE_RANGE.items())
    if not isinstance(value, dict) or set(value) - set(TOLERANCE_RANGE):
        raise ReportError(MSG_BAD_VALUE % ('tolerance', what, value))
    out = dict(DEFAULT_TOLERANCE)
    for key, (high, _what) in TOLERANCE_RANGE.items():
        if value.get(key) is not None:
            number = _number(value[key])
            if number is None or not 0 <= number <= high:
                raise ReportError(MSG_BAD_VALUE % ('tolerance', what, value))
            out[key] = number
    return out


def check_pcaps(pcaps):
    """The pcaps that exist (regular files), and notes on the missing ones; refuses a FIFO, a directory, a device."""
    present, notes = [], []
    for path in pcaps:
        try:
            check_file(path)
        except PcapError as exc:
            if not exc.transient:
                raise ReportError(MSG_PCAP % exc)
            notes.append(MSG_PCAP_MISSING % path)
            continue
        present.append(path)
    return present, notes


def plan_dest(dest):
    """The directories to create for dest, outermost first; refuses a dest (or a parent) that is not a directory."""
    path = os.path.abspath(dest)
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        if not missing:
            raise ReportError(MSG_DEST_NOT_DIR % dest)
        raise ReportError(MSG_DEST_PARENT % (dest, path))
    return list(reversed(missing))


# ---------------------------------------------------------------- what the capture saw

def find_connection(analysis, client_port, pcaps, expect=None, tolerance=None):
    """(analysis, notes): the given one when it lists the client's connection, else the first local pcap's analysis
    focused on the client port that does (the capture host lists only connections with keepalive activity)."""
    notes = []
    if client_connection(analysis, client_port)[0] is not None:
        return analysis, notes
    for pcap in pcaps:
        try:
            local = analyse(pcap, expect=expect, tolerance=tolerance, connection={'port': client_port})
        except PcapError as exc:
            notes.append(MSG_LOCAL_FAILED % (pcap, exc))
            continue
        if client_connection(local, client_port)[0] is not None:
            notes.append(MSG_LOCAL_ANALYSIS % (client_port, os.path.basename(pcap)))
            return local, notes
        if not analysis:
            analysis = local
    return analysis, notes


def observe(analysis, client_port):
    """The observed part of report.json."""
    conn, prober, client_end = client_connection(analysis, client_port)
    probes = (prober or {}).get('probes') or []
    unanswered_n = (prober or {}).get('final_unanswered') or 0
    final = probes[len(probes) - unanswered_n:] if unanswered_n else []
    spacing = [round(b['time'] - a['time'], 3) for a, b in zip(final, final[1:])]
    end = rst_info = None
    if conn is not None:
        end = connection_end(conn, client_end)
        if end is not None:
            end['connection'] = conn.get('name')
        rst = conn.get('rst')
        if rst:
            rst_info = {
                'from': 'client' if rst.get('from') == client_end else 'server',
                'at_s': round(rst['time'] - conn['start'], 3) if conn.get('start') is not None else rst.get('time'),
                'time': rst.get('time'),
                'flags': rst.get('flags'),
                'after_last_probe_s': rst.get('after_last_probe'),
            }
    return {
        'analysis_available': bool(analysis),
        'client_port': client_port,
        'client_endpoint': client_end,
        'connection_found': conn is not None,
        'end': end,
        'fin': (conn or {}).get('fin'),
        'answered_probes': (prober or {}).get('answered', 0),
        'unanswered_probes': unanswered_n,
        'probes_total': len(probes),
        'first_probe_idle_s': (prober or {}).get('idle_before_first_probe'),
        'probe_interval_s': spacing,
        'rst': rst_info,
        'probes': probes,
        'connection_start': (conn or {}).get('start'),
        'analysis_verdict': (prober or {}).get('verdict') or (conn or {}).get('verdict'),
        'analysis_reasons': ((prober or {}).get('reasons') or []) + ((conn or {}).get('reasons') or []),
        'notes': ((conn or {}).get('notes') or []) + ((prober or {}).get('notes') or []),
    }


def judge(expect, observed, client, idle_probes, tolerance, error=None):
    """Verdict and reasons of an experiment."""
    reasons = []
    if error:
        reasons.append('the experiment did not complete: %s' % error)
    end = observed.get('end')
    if end is not None and not (end['by'] == 'RST' and end['from'] == 'client' and end.get('after_probes')):
        reasons.append(ended_text(end, observed))
    if not observed.get('analysis_available', True):
        reasons.append(MSG_NO_ANALYSIS)
    elif not observed['connection_found']:
        reasons.append(MSG_NO_CONNECTION % observed.get('client_port', 0))
    if observed['answered_probes'] < idle_probes:
        reasons.append('saw %d answered probes before the DROP, expected at least %d'
                       % (observed['answered_probes'], idle_probes))
    if observed['unanswered_probes'] != expect['probes']:
        reasons.append('the client sent %d unanswered probes, expected %d'
                       % (observed['unanswered_probes'], expect['probes']))
    margin = allowed(expect['intvl'], tolerance)
    for index, gap in enumerate(observed['probe_interval_s'], start=2):
        if abs(gap - expect['intvl']) > margin:
            reasons.append('unanswered probe %d came %.3f s after the previous one, expected %d s +- %.2f s'
                           % (index, gap, expect['intvl'], margin))
    rst = observed['rst']
    if not rst:
        reasons.append('no RST was seen')
    else:
        if rst['from'] != 'client':
            reasons.append('the RST came from the %s, expected the client' % rst['from'])
        if rst.get('after_last_probe_s') is not None and abs(rst['after_last_probe_s'] - expect['intvl']) > margin:
            reasons.append('the RST came %.3f s after the last probe, expected %d s +- %.2f s'
                           % (rst['after_last_probe_s'], expect['intvl'], margin))
    if client.get('errno') != 'ETIMEDOUT':
        reasons.append('the client ended with %s, expected ETIMEDOUT' % (client.get('errno') or client.get('state')))
    for reason in observed.get('analysis_reasons') or []:
        if reason not in reasons and observed.get('analysis_verdict') == 'fail':
            reasons.append('analysis: %s' % reason)
    return ('pass' if not reasons else 'fail'), reasons


def ended_text(end, observed):
    """How the connection ended, in words, with a guess at which process went away."""
    if end['by'] == 'RST' and end['from'] == 'client' and end.get('after_probes'):
        hint = HINT_GAVE_UP % (end['after_probes'], '' if end['after_probes'] == 1 else 's')
    else:
        hint = HINTS[(end['by'], end['from'])]
    return MSG_ENDED % (end.get('connection'), end['by'], end['from'], end['endpoint'], end['after_start'], hint,
                        observed['answered_probes'], observed['unanswered_probes'])


def timeline(observed, client, drop_at, capture_start, expect):
    """Annotated lines (t, who, what) relative to the connection's start."""
    base = observed.get('connection_start') or 0.0
    lines = []
    if observed['connection_found']:
        lines.append((0.0, 'client > server', 'connection established'))
    n_unanswered = observed['unanswered_probes']
    probes = observed['probes']
    answered_seen = 0
    for index, probe in enumerate(probes):
        t = probe['time'] - base
        if probe.get('answered'):
            answered_seen += 1
            what = 'keepalive probe (idle %s s), answered' % _fmt(probe.get('after'))
        elif index >= len(probes) - n_unanswered:   # one of the final run of unanswered probes
            k = index - (len(probes) - n_unanswered) + 1
            what = 'keepalive probe %d/%d  unanswered' % (k, expect['probes'])
        else:   # e.g. a probe the kernel sent twice: the second copy went before the answer to the first
            what = 'keepalive probe (idle %s s), no answer before the next probe' % _fmt(probe.get('after'))
        if probe.get('expected') is not None:   # when the kernel's timer rules had it due (_keepalive_rules)
            what += '; due +%.3f s (%s)' % (probe['expected'] - base, probe.get('rule'))
        lines.append((t, 'client > server', what))
    if drop_at and capture_start is not None:
        lines.append((drop_at - capture_start - base, 'server', 'DROP rule inserted (iptables -I INPUT ... -j DROP)'))
    rst = observed.get('rst')
    if rst:
        other = 'server' if rst['from'] == 'client' else 'client'
        if rst['from'] == 'client' and n_unanswered:
            what = '%s after %d unanswered probes' % (rst.get('flags') or 'RST', n_unanswered)
        else:
            what = '%s from the %s, not after unanswered probes' % (rst.get('flags') or 'RST', rst['from'])
        lines.append((rst['time'] - base, '%s > %s' % (rst['from'], other), what))
    fin = observed.get('fin')
    if fin:
        who = 'client' if fin.get('from') == observed.get('client_endpoint') else 'server'
        lines.append((fin['time'] - base, '%s > %s' % (who, 'server' if who == 'client' else 'client'),
                      '%s: the %s closed the connection' % (fin.get('flags') or 'FIN', who)))
    if client.get('failed_at') and client.get('connected_at') and client.get('seconds') is not None:
        lines.append((client['seconds'], 'client', 'application sees %s after %.3f s%s'
                      % (client.get('errno') or client.get('state'), client['seconds'],
                         ' (curl exit %s)' % client['exit_code'] if client.get('exit_code') is not None else '')))
    lines.sort(key=lambda item: item[0])
    return lines


def _fmt(value):
    return '?' if value is None else '%.3f' % value


def markdown(report, lines):
    s = report['settings']
    hosts = report['hosts']
    out = [
        '# TCP keepalive experiment %s' % report['run_id'],
        '',
        '**Verdict: %s**' % report['verdict'].upper(),
        '',
    ]
    out += ['- %s' % reason for reason in report['reasons']] + ([''] if report['reasons'] else [])
    out += [
        '| setting | value |',
        '|---|---|',
        '| net.ipv4.tcp_keepalive_time | %s s |' % s['time'],
        '| net.ipv4.tcp_keepalive_intvl | %s s |' % s['intvl'],
        '| net.ipv4.tcp_keepalive_probes | %s |' % s['probes'],
        '| what governs the client | %s |' % report['governs'],
        '| judged against | time %s s, intvl %s s, probes %s |' % (
            report['expected']['time'], report['expected']['intvl'], report['expected']['probes']),
        '| client | %s on %s |' % (report['client_kind'], hosts.get('client', '?')),
        '| server | %s on %s (%s) |' % (
            report['server_kind'], hosts.get('server', '?'), 'loopback' if hosts.get('loopback') else 'two hosts'),
        '| capture | %s |' % (report.get('capture_backend') or 'not recorded'),
        '',
        '## Timeline',
        '',
        '```',
    ]
    out += ['%+9.3f s  %-16s %s' % (t, who, what) for t, who, what in lines]
    out += ['```', '']
    obs = report['observed']
    out += [
        '## Observed',
        '',
        '- connection: %s' % _connection_line(obs),
        '- answered probes %s: %s' % ('before the DROP' if report.get('fault', {}).get('kind', 'drop') == 'drop'
                                      else 'while the middlebox kept the flow', obs['answered_probes']),
        '- unanswered probes: %s' % obs['unanswered_probes'],
        '- idle time before the first probe: %s s' % _fmt(obs['first_probe_idle_s']),
        '- spacing of the unanswered probes: %s' % (', '.join('%.3f s' % g for g in obs['probe_interval_s']) or '-'),
        '- RST: %s' % ('from the %s at +%s s (%s)' % (obs['rst']['from'], _fmt(obs['rst']['at_s']), obs['rst']['flags'])
                       if obs['rst'] else 'none'),
        '- client: %s' % ', '.join('%s=%s' % (k, report['client'].get(k)) for k in ('errno', 'exit_code', 'seconds')),
        '',
    ]
    out += kernel_ev.markdown_line((report.get('evidence') or {}).get('kernel')) + ([''] if report.get('evidence') else [])
    if report.get('notes'):
        out += ['## Notes', ''] + ['- %s' % note for note in report['notes']] + ['']
    out += ['Captures: %s' % ', '.join(os.path.basename(p) for p in report.get('pcaps') or []) or '-', '']
    return '\n'.join(out)


def _connection_line(obs):
    if not obs.get('analysis_available', True):
        return 'no analysis of the capture'
    if not obs.get('connection_found'):
        return 'not in the capture'
    end = obs.get('end')
    if end is None:
        return 'found, still open at the end of the capture'
    return 'found, ended by a %s from the %s (%s) at +%.3f s' % (end['by'], end['from'], end['endpoint'],
                                                                 end['after_start'])


def picture(pcap, report, lines, client_port, capture_start=None, connection_start=0.0):
    """timeline.png (its bytes): the packets over time by direction, with the DROP, the RST and a FIN marked."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError(MSG_NO_MATPLOTLIB)
    points = packets_of(pcap, client_port) if pcap else []
    base = connection_start + (capture_start or (points[0][0] if points else 0.0))
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=110)
    seen = set()
    for t, direction, kind in points:
        style = STYLE_OF.get(kind, 'other')
        marker, color, label = STYLES[style]
        ax.scatter([t - base], [direction], marker=marker, color=color, s=60 if style != 'other' else 25,
                   label=None if style in seen else label, zorder=3)
        seen.add(style)
    due = [p['expected'] - connection_start for p in (report.get('observed') or {}).get('probes') or []
           if p.get('expected') is not None and capture_start is not None]
    if due:   # when the kernel's timer rules had each probe due (_keepalive_rules)
        ax.scatter(due, [1] * len(due), marker='|', color='#7f7f7f', s=300, label='due (kernel timer rules)', zorder=2)
    for t, who, what in lines:
        if what.startswith('DROP'):
            ax.axvline(t, color='#ff7f0e', linestyle='--', label='DROP')
            ax.annotate('DROP', (t, 1.35), color='#ff7f0e', ha='center', fontsize=8)
        elif 'RST' in what:
            ax.axvline(t, color='#000000', linestyle=':', label='RST')
        elif 'FIN' in what:
            ax.axvline(t, color='#9467bd', linestyle='-.', label='FIN')
        elif 'unanswered' in what:
            ax.annotate(what.split()[2], (t, 1.15), ha='center', fontsize=8, color='#d62728')
        elif what.startswith(in_flight.MARKS):
            in_flight.mark(ax, t, what)
    marks.draw_marks(ax, report)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(['server > client', 'client > server'])
    ax.set_ylim(-0.6, 1.6)
    ax.set_xlabel('seconds since the connection started')
    ax.set_title('keepalive %s: time %s s, intvl %s s, probes %s - verdict %s' % (
        report['run_id'], report['expected']['time'], report['expected']['intvl'], report['expected']['probes'],
        report['verdict']))
    ax.grid(True, axis='x', alpha=0.3)
    if ax.get_legend_handles_labels()[0]:   # a picture without packets (no connection found) has no legend
        ax.legend(loc='upper left', fontsize=8, ncol=3)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format='png')
    plt.close(fig)
    return out.getvalue()


def packets_of(pcap, client_port):
    """(time since the epoch, direction (1: from the client), kind) of every segment of the client's connection in a
    pcap, as the analyser classifies them (keepalive, keepalive_ack, answer, rst, ...); [] when it cannot be read."""
    try:
        local = analyse(pcap, connection={'port': client_port}, packets=True)
    except PcapError:
        return []
    conn, _prober, client = client_connection(local, client_port)
    if conn is None:
        return []
    from_client = [1 if endpoint == client else 0 for endpoint in conn['endpoints']]
    return [(local['start'] + t, from_client[who], kind) for t, who, kind in conn.get('packets') or []]


def write_experiment(dest, data):
    """Write report.json, report.md and timeline.png into dest; returns (report dict, markdown).

    Everything is checked and rendered before the first write; on a failure the files and directories this call
    created are removed again."""
    data = validate(data)
    pcaps, pcap_notes = check_pcaps(data['pcaps'])
    to_create = plan_dest(dest)
    client_port = data['client_port']
    expect = data['expected']
    analysis, analysis_notes = find_connection(data['analysis'], client_port, pcaps, expect, data['tolerance'])
    observed = observe(analysis, client_port)
    client = data['client']
    if data['fault']['kind'] == 'idle_timeout':
        verdict, reasons, prediction = judge_idle(expect, data['fault'], client, data['error'])
    else:
        verdict, reasons = judge(expect, observed, client, data['idle_probes'], data['tolerance'], data['error'])
        kernel, kernel_reasons = kernel_ev.evidence(data['kernel'], analysis, observed, client,
                                                    str((data['hosts'] or {}).get('loopback')).lower() in ('true', '1', 'yes'), client_port)
        reasons += kernel_reasons
        verdict = 'fail' if reasons else verdict
    report = {
        'run_id': data['run_id'],
        'verdict': verdict,
        'reasons': reasons,
        'settings': data['settings'],
        'expected': expect,
        'governs': data['governs'],
        'client_kind': data['client_kind'],
        'server_kind': data['server_kind'],
        'capture_backend': data['capture_backend'],
        'hosts': data['hosts'],
        'observed': {k: observed[k] for k in (
            'connection_found', 'end', 'answered_probes', 'unanswered_probes', 'first_probe_idle_s', 'probe_interval_s',
            'rst', 'probes_total', 'probes')},
        'client': {k: client.get(k) for k in ('state', 'errno', 'exit_code', 'error', 'seconds')},
        'tolerance': data['tolerance'],
        'error': data['error'] or None,
        'cleanup_errors': data['cleanup_errors'],
        'notes': observed['notes'] + analysis_notes + pcap_notes + data['notes'],
        'pcaps': data['pcaps'],
    }
    if data['fault']['kind'] != 'idle_timeout' and kernel:
        report['evidence'] = {'kernel': kernel}
        report['notes'] += kernel['notes']
    if data['fault']['kind'] == 'idle_timeout':
        report['fault'] = data['fault']
        report['prediction'] = prediction
        report['observed']['survived'] = client.get('state') == 'answered'
        for key in ('connected_at', 'requested_at', 'answered_at', 'failed_at'):
            report['client'][key] = client.get(key)
        base = marks.base_of(analysis.get('start'), observed.get('connection_start'), client)
        report['observed'].update(marks.observed(data['conntrack'], base))
        report['notes'] += marks.notes(data['conntrack'], base)
    extra = in_flight.apply(report, data['in_flight'], pcaps[0] if pcaps else None, client_port, data['drop_at'], client,
                            data['tolerance']['seconds']) if data['in_flight'] else []
    lines = marks.with_forgetting(timeline(observed, client, data['drop_at'], analysis.get('start'), expect), report)
    lines = in_flight.merge(lines, extra, analysis.get('start'), observed.get('connection_start'))
    report['timeline'] = [{'t': round(t, 3), 'who': who, 'what': what} for t, who, what in lines]
    text = markdown(report, lines)
    if data['fault']['kind'] == 'idle_timeout':
        text += '\n## Idle timeout\n\n' + ' '.join(idle_sentences(report)) + '\n'
    if data['in_flight']:
        text += in_flight.markdown(report)
    png = picture(pcaps[0] if pcaps else None, report, lines, client_port, analysis.get('start'),
                  observed.get('connection_start') or 0.0)
    files = (('report.md', text), ('timeline.png', png),
             ('report.json', json.dumps(report, indent=2, sort_keys=True) + '\n'))
    _write_all(dest, to_create, files)
    return report, text


def _write_all(dest, to_create, files):
    """Create the missing directories and write the files; on a failure undo what this call made."""
    created, written = [], []
    try:
        for path in to_create:
            os.mkdir(path, 0o755)
            created.append(path)
        for name, content in files:
            path = os.path.join(dest, name)
            existed = os.path.lexists(path)
            atomic_write(path, content, 0o644)
            if not existed:
                written.append(path)
    except OSError as exc:
        for path in written:
            os.unlink(path)
        for path in reversed(created):
            try:
                os.rmdir(path)
            except OSError:
                pass
        raise ReportError(MSG_WRITE % (dest, exc.strerror or exc))
