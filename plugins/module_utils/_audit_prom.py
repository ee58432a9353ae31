# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""audit.prom: the keepalive audit in Prometheus' text exposition format (version 0.0.4),
for the whole report (a file to serve or push) or for one host (a file for node_exporter's
textfile collector on that host).

What node_exporter's textfile collector and prometheus_client's parser both accept: one
`# HELP` and one `# TYPE` line per family, the samples of a family together, no duplicate
series, no timestamps, label values escaped (backslash, double quote, newline), a final
newline.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import calendar
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import SEVERITIES

PREFIX = 'tcplab_keepalive_'
# (name, help, value of a namespace entry or None to skip the sample); all gauges
NAMESPACE_FAMILIES = (
    ('time_seconds', 'net.ipv4.tcp_keepalive_time of the namespace: idle seconds before the first probe.',
     lambda ns: (ns.get('values') or {}).get('time')),
    ('intvl_seconds', 'net.ipv4.tcp_keepalive_intvl of the namespace: seconds between probes.',
     lambda ns: (ns.get('values') or {}).get('intvl')),
    ('probes', 'net.ipv4.tcp_keepalive_probes of the namespace: unanswered probes before the connection is dropped.',
     lambda ns: (ns.get('values') or {}).get('probes')),
    ('detection_seconds', 'Dead-peer detection time of the namespace: time + intvl x probes.',
     lambda ns: ns.get('detection_seconds')),
    ('compliant', 'Whether the namespace meets the audit policy (1) or not (0).',
     lambda ns: 1 if ns.get('compliant') else 0),
)
FINDINGS_HELP = 'Findings of the audit in the namespace, by severity.'
UP_HELP = 'Whether the audit ran on the host (1) or the host was unreachable or the audit failed (0).'
TIMESTAMP_HELP = 'When the audit report was generated (Unix time): alert when it gets old.'


def escape_label(value):
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return str(value).replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def _labels(pairs):
    return '{%s}' % ','.join('%s="%s"' % (key, escape_label(value)) for key, value in pairs)


def _number(value):
    if isinstance(value, bool):
        return '1' if value else '0'
    if isinstance(value, float) and value != int(value):
        return repr(value)
    return str(int(value))


def unix_time(generated_at):
    """audit.json's generated_at (UTC, ISO 8601 with Z) as Unix seconds; None when unreadable."""
    try:
        return calendar.timegm(time.strptime(generated_at, '%Y-%m-%dT%H:%M:%SZ'))
    except (TypeError, ValueError):
        return None


def _family(lines, name, help_text, samples):
    """samples: [(label pairs, value)] - a family is written only when it has samples."""
    if not samples:
        return
    lines.append('# HELP %s%s %s' % (PREFIX, name, help_text))
    lines.append('# TYPE %s%s gauge' % (PREFIX, name))
    for pairs, value in samples:
        lines.append('%s%s%s %s' % (PREFIX, name, _labels(pairs), _number(value)))


def _namespaces(hosts):
    """(host, namespace entry) in report order; a label seen twice on a host (it should not be) once."""
    for name, host in hosts:
        seen = set()
        for ns in host.get('namespaces') or []:
            if ns.get('label') in seen:
                continue
            seen.add(ns.get('label'))
            yield name, ns


def render_prom(report, only=None):
    """The text of audit.prom; only: a host name, for that host's own file."""
    hosts = [(name, host) for name, host in report['hosts'].items() if only is None or name == only]
    pairs = list(_namespaces(hosts))
    lines = []
    for name, help_text, value_of in NAMESPACE_FAMILIES:
        samples = []
        for host, ns in pairs:
            value = value_of(ns)
            if value is not None:
                samples.append(((('host', host), ('namespace', ns['label'])), value))
        _family(lines, name, help_text, samples)
    findings = []
    for host, ns in pairs:
        for sev in SEVERITIES:
            count = sum(1 for f in ns.get('findings') or [] if f.get('severity') == sev)
            findings.append(((('host', host), ('namespace', ns['label']), ('severity', sev)), count))
    _family(lines, 'findings', FINDINGS_HELP, findings)
    _family(lines, 'audit_up', UP_HELP, [((('host', name),), 1 if host['status'] == 'ok' else 0) for name, host in hosts])
    stamp = unix_time(report.get('generated_at'))
    if stamp is not None and hosts:
        _family(lines, 'audit_timestamp_seconds', TIMESTAMP_HELP, [((('host', name),), stamp) for name, dummy in hosts])
    return '\n'.join(lines) + '\n' if lines else ''


def host_metrics(report):
    """host -> the text of that host's own .prom file."""
    return dict((name, render_prom(report, only=name)) for name in report['hosts'])
