# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Experiment reports: the verdict, report.json, report.md with an annotated
timeline in the style of the walk-through's tcpdump output, and timeline.png.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json
import os

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write


class ReportError(Exception):
    """The report cannot be written; the message says why."""


def _prober_of(analysis, client_port):
    """(connection, prober) of the client's end in the analysis, or (None, None)."""
    suffix = ':%d' % client_port
    for conn in (analysis or {}).get('connections') or []:
        for prober in conn.get('probers') or []:
            if str(prober.get('endpoint', '')).endswith(suffix):
                return conn, prober
        if any(str(e).endswith(suffix) for e in conn.get('endpoints') or []):
            return conn, None
    return None, None


def observe(analysis, client_port):
    """The observed part of report.json."""
    conn, prober = _prober_of(analysis, client_port)
    probes = (prober or {}).get('probes') or []
    unanswered_n = (prober or {}).get('final_unanswered') or 0
    final = probes[len(probes) - unanswered_n:] if unanswered_n else []
    rst = (conn or {}).get('rst')
    spacing = [round(b['time'] - a['time'], 3) for a, b in zip(final, final[1:])]
    rst_info = None
    if rst:
        client_end = (prober or {}).get('endpoint') or ''
        rst_info = {
            'from': 'client' if rst.get('from') == client_end or str(rst.get('from', '')).endswith(':%d' % client_port)
            else 'server',
            'at_s': round(rst['time'] - conn['start'], 3) if conn and conn.get('start') is not None else rst.get('time'),
            'time': rst.get('time'),
            'flags': rst.get('flags'),
            'after_last_probe_s': rst.get('after_last_probe'),
        }
    return {
        'connection_found': conn is not None,
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


def judge(settings, expect, observed, client, idle_probes, tolerance, error=None):
    """Verdict and reasons of an experiment."""
    reasons = []
    if error:
        reasons.append('the experiment did not complete: %s' % error)
    if not observed['connection_found']:
        reasons.append('the capture holds no connection from the client port')
    if observed['answered_probes'] < idle_probes:
        reasons.append('saw %d answered probes before the DROP, expected at least %d'
                       % (observed['answered_probes'], idle_probes))
    if observed['unanswered_probes'] != expect['probes']:
        reasons.append('the client sent %d unanswered probes, expected %d'
                       % (observed['unanswered_probes'], expect['probes']))
    allowed = tolerance.get('seconds', 0.25) + expect['intvl'] * tolerance.get('percent', 10) / 100.0
    for index, gap in enumerate(observed['probe_interval_s'], start=2):
        if abs(gap - expect['intvl']) > allowed:
            reasons.append('unanswered probe %d came %.3f s after the previous one, expected %d s +- %.2f s'
                           % (index, gap, expect['intvl'], allowed))
    rst = observed['rst']
    if not rst:
        reasons.append('no RST was seen')
    else:
        if rst['from'] != 'client':
            reasons.append('the RST came from the %s, expected the client' % rst['from'])
        if rst.get('after_last_probe_s') is not None and abs(rst['after_last_probe_s'] - expect['intvl']) > allowed:
            reasons.append('the RST came %.3f s after the last probe, expected %d s +- %.2f s'
                           % (rst['after_last_probe_s'], expect['intvl'], allowed))
    if client.get('errno') != 'ETIMEDOUT':
        reasons.append('the client ended with %s, expected ETIMEDOUT' % (client.get('errno') or client.get('state')))
    for reason in observed.get('analysis_reasons') or []:
        if reason not in reasons and observed.get('analysis_verdict') == 'fail':
            reasons.append('analysis: %s' % reason)
    return ('pass' if not reasons else 'fail'), reasons


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
            lines.append((t, 'client > server', 'keepalive probe (idle %s s), answered' % _fmt(probe.get('after'))))
        else:
            k = index - (len(probes) - n_unanswered) + 1
            lines.append((t, 'client > server', 'keepalive probe %d/%d  unanswered' % (k, expect['probes'])))
    if drop_at and capture_start is not None:
        lines.append((drop_at - capture_start - base, 'server', 'DROP rule inserted (iptables -I INPUT ... -j DROP)'))
    rst = observed.get('rst')
    if rst:
        lines.append((rst['time'] - base, '%s > %s' % (rst['from'], 'server' if rst['from'] == 'client' else 'client'),
                      '%s after %d unanswered probes' % (rst.get('flags') or 'RST', n_unanswered)))
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
        '| client | %s on %s |' % (report['client_kind'], report['hosts']['client']),
        '| server | %s on %s (%s) |' % (
            report['server_kind'], report['hosts']['server'], 'loopback' if report['hosts']['loopback'] else 'two hosts'),
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
        '- answered probes before the DROP: %s' % obs['answered_probes'],
        '- unanswered probes: %s' % obs['unanswered_probes'],
        '- idle time before the first probe: %s s' % _fmt(obs['first_probe_idle_s']),
        '- spacing of the unanswered probes: %s' % (', '.join('%.3f s' % g for g in obs['probe_interval_s']) or '-'),
        '- RST: %s' % ('from the %s at +%s s (%s)' % (obs['rst']['from'], _fmt(obs['rst']['at_s']), obs['rst']['flags'])
                       if obs['rst'] else 'none'),
        '- client: %s' % ', '.join('%s=%s' % (k, report['client'].get(k)) for k in ('errno', 'exit_code', 'seconds')),
        '',
    ]
    if report.get('notes'):
        out += ['## Notes', ''] + ['- %s' % note for note in report['notes']] + ['']
    out += ['Captures: %s' % ', '.join(os.path.basename(p) for p in report.get('pcaps') or []) or '-', '']
    return '\n'.join(out)


def picture(path, pcap, report, lines, client_port, capture_start=None, connection_start=0.0):
    """timeline.png: the packets over time by direction, with the DROP and the RST marked."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError('matplotlib is missing on the controller: pip install matplotlib '
                          '(requirements-dev.txt pins it), or set the report picture off')
    points = _packets(pcap, client_port) if pcap else []
    base = connection_start + (capture_start or (points[0][0] if points else 0.0))
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=110)
    styles = {'probe': ('o', '#d62728', 'keepalive probe'), 'ack': ('s', '#2ca02c', 'ACK (answer)'),
              'rst': ('X', '#000000', 'RST'), 'other': ('.', '#7f7f7f', 'other segment')}
    start = capture_start or (points[0][0] if points else 0.0)
    probe_times = [p['time'] for p in report['observed'].get('probes') or []]
    seen = set()
    for t, direction, kind in points:
        if kind == 'probe' and not any(abs((t - start) - pt) < 0.0005 for pt in probe_times):
            kind = 'ack' if direction == 0 else 'other'
        marker, color, label = styles[kind]
        ax.scatter([t - base], [direction], marker=marker, color=color, s=60 if kind != 'other' else 25,
                   label=None if kind in seen else label, zorder=3)
        seen.add(kind)
    for t, who, what in lines:
        if what.startswith('DROP'):
            ax.axvline(t, color='#ff7f0e', linestyle='--', label='DROP')
            ax.annotate('DROP', (t, 1.35), color='#ff7f0e', ha='center', fontsize=8)
        elif 'RST' in what and 'unanswered probes' in what:
            ax.axvline(t, color='#000000', linestyle=':', label='RST')
        elif 'unanswered' in what:
            ax.annotate(what.split()[2], (t, 1.15), ha='center', fontsize=8, color='#d62728')
    ax.set_yticks([0, 1])
    ax.set_yticklabels(['server > client', 'client > server'])
    ax.set_ylim(-0.6, 1.6)
    ax.set_xlabel('seconds since the connection started')
    ax.set_title('keepalive %s: time %s s, intvl %s s, probes %s - verdict %s' % (
        report['run_id'], report['expected']['time'], report['expected']['intvl'], report['expected']['probes'],
        report['verdict']))
    ax.grid(True, axis='x', alpha=0.3)
    ax.legend(loc='upper left', fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _packets(pcap, client_port):
    """(time, direction, kind) of every TCP segment of the client's port in a pcap (scapy: tiny files)."""
    try:
        from scapy.layers.inet import TCP  # pylint: disable=import-error
        from scapy.utils import PcapReader  # pylint: disable=import-error
    except ImportError:
        return []
    points = []
    try:
        reader = PcapReader(pcap)
    except Exception:  # pylint: disable=broad-except
        return []
    with reader:
        for pkt in reader:
            if TCP not in pkt:
                continue
            tcp = pkt[TCP]
            if client_port not in (tcp.sport, tcp.dport):
                continue
            direction = 1 if tcp.sport == client_port else 0
            flags = int(tcp.flags)
            payload = len(bytes(tcp.payload))
            if flags & 0x04:
                kind = 'rst'
            elif direction == 1 and payload <= 1 and not flags & 0x03:
                kind = 'probe'
            elif payload == 0:
                kind = 'ack'
            else:
                kind = 'other'
            points.append((float(pkt.time), direction, kind))
    return points


def write_experiment(dest, data):
    """Write report.json, report.md and timeline.png into dest; returns the report dict."""
    if not os.path.isdir(dest):
        os.makedirs(dest, 0o755)
    client_port = int(data['client_port'])
    analysis = data.get('analysis') or {}
    observed = observe(analysis, client_port)
    client = data.get('client') or {}
    expect = {k: int(v) for k, v in data['expected'].items()}
    verdict, reasons = judge(data['settings'], expect, observed, client, int(data.get('idle_probes', 0)),
                             data.get('tolerance') or {}, data.get('error'))
    report = {
        'run_id': data['run_id'],
        'verdict': verdict,
        'reasons': reasons,
        'settings': {k: int(v) for k, v in data['settings'].items()},
        'expected': expect,
        'governs': data.get('governs'),
        'client_kind': data.get('client_kind'),
        'server_kind': data.get('server_kind'),
        'hosts': data.get('hosts') or {},
        'observed': {k: observed[k] for k in (
            'answered_probes', 'unanswered_probes', 'first_probe_idle_s', 'probe_interval_s', 'rst', 'probes_total', 'probes')},
        'client': {k: client.get(k) for k in ('state', 'errno', 'exit_code', 'error', 'seconds')},
        'tolerance': data.get('tolerance'),
        'error': data.get('error') or None,
        'cleanup_errors': data.get('cleanup_errors') or [],
        'notes': observed['notes'] + list(data.get('notes') or []),
        'pcaps': data.get('pcaps') or [],
    }
    lines = timeline(observed, client, data.get('drop_at'), analysis.get('start'), expect)
    report['timeline'] = [{'t': round(t, 3), 'who': who, 'what': what} for t, who, what in lines]
    text = markdown(report, lines)
    atomic_write(os.path.join(dest, 'report.md'), text, 0o644)
    pcaps = report['pcaps']
    picture(os.path.join(dest, 'timeline.png'), pcaps[0] if pcaps else None, report, lines, client_port,
            analysis.get('start'), observed.get('connection_start') or 0.0)
    atomic_write(os.path.join(dest, 'report.json'), json.dumps(report, indent=2, sort_keys=True) + '\n', 0o644)
    return report, text
