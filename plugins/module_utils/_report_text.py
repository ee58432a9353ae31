# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""report.md and its annotated timeline, in the style of the walk-through's tcpdump output.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import os

from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_judge as kernel_judge


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
    out += kernel_judge.markdown_line((report.get('evidence') or {}).get('kernel')) + ([''] if report.get('evidence') else [])
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
