# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""audit.prom: parsed back with prometheus_client's own parser (the values, labels, HELP and
TYPE), hostile label values escaped, and the rules node_exporter's textfile collector adds (one
HELP/TYPE per family, families contiguous, no duplicate series, no timestamps, final newline)."""

from __future__ import annotations

import re

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_prom import host_metrics, render_prom
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import aggregate

parser = pytest.importorskip('prometheus_client.parser')

POLICY = {'preset': 'azure-lb', 'max_detection_seconds': 239}
STAMP = '2026-12-02T01:00:00Z'
STAMP_UNIX = 1796173200


def ns(label, values, findings=(), compliant=None):
    return {'label': label, 'kind': 'host' if label == 'host' else 'named', 'inode': 1, 'values': values,
            'detection_seconds': None if values is None else values['time'] + values['intvl'] * values['probes'],
            'findings': list(findings), 'compliant': (not findings) if compliant is None else compliant,
            'remediation': None, 'sockets': {'keepalive': 0, 'established': 0, 'overrides': 0}}


def finding(fid, severity):
    return {'id': fid, 'severity': severity, 'namespace': 'host', 'message': fid}


HOSTILE = 'we"ird\\ns\nlabel'


@pytest.fixture
def report():
    results = {
        'web1': {'compliant': False, 'policy': POLICY, 'findings': [finding('KA003', 'error')],
                 'namespaces': [ns('host', {'time': 7200, 'intvl': 75, 'probes': 9},
                                   [finding('KA003', 'error'), finding('KA004', 'warning'), finding('KA004', 'warning')]),
                                ns(HOSTILE, {'time': 120, 'intvl': 10, 'probes': 3}, [finding('KA006', 'info')])]},
        'web2': {'compliant': True, 'policy': POLICY, 'findings': [],
                 'namespaces': [ns('host', {'time': 120, 'intvl': 10, 'probes': 3}),
                                ns('unread', None, compliant=False)]},
        'gone': {'unreachable': True, 'msg': 'no route'},
    }
    return aggregate(['web1', 'web2', 'gone'], ['web1', 'web2'], results, generated_at=STAMP)


def samples(text):
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, 'duplicate series %r' % (key,)
            assert sample.timestamp is None
            out[key] = sample.value
    return out


def test_prometheus_client_parses_the_values_back(report):
    text = render_prom(report)
    families = dict((f.name, f) for f in parser.text_string_to_metric_families(text))
    assert sorted(families) == sorted('tcplab_keepalive_' + name for name in (
        'time_seconds', 'intvl_seconds', 'probes', 'detection_seconds', 'compliant', 'findings', 'audit_up',
        'audit_timestamp_seconds'))
    assert all(f.type == 'gauge' and f.documentation for f in families.values())
    got = samples(text)
    web1 = (('host', 'web1'), ('namespace', 'host'))
    assert got[('tcplab_keepalive_time_seconds', web1)] == 7200
    assert got[('tcplab_keepalive_intvl_seconds', web1)] == 75
    assert got[('tcplab_keepalive_probes', web1)] == 9
    assert got[('tcplab_keepalive_detection_seconds', web1)] == 7875
    assert got[('tcplab_keepalive_compliant', web1)] == 0
    assert got[('tcplab_keepalive_compliant', (('host', 'web2'), ('namespace', 'host')))] == 1
    for sev, count in (('error', 1), ('warning', 2), ('info', 0)):
        assert got[('tcplab_keepalive_findings', web1 + (('severity', sev),))] == count
    assert got[('tcplab_keepalive_audit_up', (('host', 'gone'),))] == 0
    assert got[('tcplab_keepalive_audit_up', (('host', 'web1'),))] == 1
    assert got[('tcplab_keepalive_audit_timestamp_seconds', (('host', 'web2'),))] == STAMP_UNIX
    # a namespace whose values could not be read has no value samples, but its compliance and findings
    unread = (('host', 'web2'), ('namespace', 'unread'))
    assert ('tcplab_keepalive_time_seconds', unread) not in got and got[('tcplab_keepalive_compliant', unread)] == 0
    # the unreachable host has no namespace series
    assert not [k for k in got if ('host', 'gone') in k[1] and k[0] != 'tcplab_keepalive_audit_up'
                and k[0] != 'tcplab_keepalive_audit_timestamp_seconds']


def test_hostile_label_values_are_escaped(report):
    text = render_prom(report)
    assert 'namespace="we\\"ird\\\\ns\\nlabel"' in text
    got = samples(text)
    assert got[('tcplab_keepalive_time_seconds', (('host', 'web1'), ('namespace', HOSTILE)))] == 120
    assert got[('tcplab_keepalive_findings', (('host', 'web1'), ('namespace', HOSTILE), ('severity', 'info')))] == 1


def check_textfile_rules(text):
    """What node_exporter's textfile collector (Go's expfmt parser) refuses besides bad syntax."""
    assert text.endswith('\n')
    seen_help, seen_type, order = set(), set(), []
    for line in text.splitlines():
        match = re.match(r'# (HELP|TYPE) (\S+) ', line)
        if match:
            seen = seen_help if match.group(1) == 'HELP' else seen_type
            assert match.group(2) not in seen, 'second %s of %s' % match.groups()
            seen.add(match.group(2))
            continue
        name = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]', line).group(1)
        if not order or order[-1] != name:
            assert name not in order, 'family %s not contiguous' % name
            order.append(name)
        assert name in seen_help and name in seen_type, 'sample of %s before its HELP and TYPE' % name
        assert re.match(r'.*[}] -?[0-9.e+]+$', line), 'a timestamp or a bad value: %r' % line


def test_the_file_keeps_the_textfile_collector_rules(report):
    check_textfile_rules(render_prom(report))


def test_each_host_gets_its_own_file(report):
    per_host = host_metrics(report)
    assert sorted(per_host) == ['gone', 'web1', 'web2']
    for host, text in per_host.items():
        check_textfile_rules(text)
        assert set(label for key in samples(text) for name, label in key[1] if name == 'host') == {host}
    assert set(samples(per_host['web1'])) | set(samples(per_host['web2'])) | set(samples(per_host['gone'])) == \
        set(samples(render_prom(report)))


def test_an_empty_report_is_an_empty_file():
    assert render_prom(aggregate([], [], {}, generated_at=STAMP)) == ''
