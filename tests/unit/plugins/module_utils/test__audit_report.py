# Unit tests of the fleet report: aggregation (unreachable and failed hosts
# are kept), the CSV, the JUnit XML (parsed back), the self-contained HTML
# page and its histogram, and the fail_on decision.
from __future__ import annotations

import csv
import io
import json
import os
import re
from xml.etree import ElementTree

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _audit_report
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import (
    ReportError, aggregate, histogram, render_csv, render_html, render_junit, should_fail, summary_lines, write_reports)

POLICY = {'preset': 'azure-lb', 'max_detection_seconds': 239, 'target': None,
          'time': {'min': 30, 'max': None}, 'intvl': {'min': None, 'max': None}, 'probes': {'min': None, 'max': None}}


def ns(label, values, findings=(), kind='host', keepalive=0):
    return {'label': label, 'kind': kind, 'inode': 1, 'pid': None, 'comm': None, 'container_id': None,
            'values': values, 'detection_seconds': values['time'] + values['intvl'] * values['probes'],
            'findings': list(findings), 'compliant': not [f for f in findings if f['severity'] != 'info'],
            'remediation': None,
            'sockets': {'keepalive': keepalive, 'established': keepalive, 'overrides': 0, 'top_processes': [],
                        'override_examples': [], 'owners_complete': True}}


def f(fid, severity, namespace, message):
    return {'id': fid, 'severity': severity, 'namespace': namespace, 'key': 'detection_seconds', 'observed': 7875,
            'expected': '<= 239', 'message': message}


BAD = f('KA003', 'error', 'host', 'too long <&>')
DRIFT = f('KA004', 'warning', 'extra', 'drifted')


def result(namespaces):
    findings = [x for n in namespaces for x in n['findings']]
    return {'changed': False, 'compliant': all(n['compliant'] for n in namespaces), 'policy': POLICY,
            'namespaces': namespaces, 'findings': findings, 'drift': [], 'notes': [], 'persisted': {}}


RESULTS = {
    'good': result([ns('host', {'time': 120, 'intvl': 15, 'probes': 6}, keepalive=2)]),
    'bad': result([ns('host', {'time': 7200, 'intvl': 75, 'probes': 9}, [BAD]),
                   ns('extra', {'time': 60, 'intvl': 5, 'probes': 3}, [DRIFT], kind='named')]),
    'gone': {'unreachable': True, 'msg': 'ssh: connect to host timed out', 'changed': False},
    'broken': {'failed': True, 'msg': 'python not found'},
}
HOSTS = ['good', 'bad', 'gone', 'broken', 'never']


def report():
    return aggregate(HOSTS, ['good', 'bad', 'gone', 'broken'], RESULTS, {'bad': {'host': 'set ...'}},
                     generated_at='2024-01-01T00:00:00Z')


def test_aggregate_keeps_every_host():
    rep = report()
    assert list(rep['hosts']) == HOSTS
    assert rep['summary'] == {
        'hosts': 5, 'compliant': 1, 'noncompliant': 1, 'unreachable': 2, 'failed': 1, 'namespaces': 3,
        'findings': {'error': 1, 'warning': 1, 'info': 0}, 'findings_by_id': {'KA003': 1, 'KA004': 1},
        'detection_seconds': {'min': 75, 'max': 7875, 'median': 210}}
    assert rep['hosts']['gone'] == {'status': 'unreachable', 'compliant': False, 'namespaces': [], 'findings': [],
                                    'drift': [], 'notes': [],
                                    'message': 'host unreachable: ssh: connect to host timed out'}
    assert rep['hosts']['broken']['status'] == 'failed'
    assert rep['hosts']['broken']['message'] == 'audit failed: python not found'
    assert rep['hosts']['never']['status'] == 'unreachable'
    assert rep['hosts']['never']['message'] == _audit_report.MSG_NOT_RUN
    assert rep['hosts']['bad']['remediation'] == {'host': 'set ...'}
    assert rep['policy'] == POLICY


def test_a_host_in_the_play_without_result_is_failed():
    rep = aggregate(['a'], ['a'], {})
    assert rep['hosts']['a']['status'] == 'failed'


def test_a_stale_result_of_a_host_that_left_the_play_is_not_used():
    rep = aggregate(['good'], [], {'good': RESULTS['good']})
    assert rep['hosts']['good']['status'] == 'unreachable'
    assert rep['hosts']['good']['message'] == _audit_report.MSG_NOT_RUN
    assert rep['summary']['compliant'] == 0


def test_aggregate_rejects_bad_hosts():
    with pytest.raises(ReportError) as exc:
        aggregate('good', [], {})
    assert str(exc.value) == "hosts must be a list of inventory hostnames, got 'good'"


def test_csv_rows():
    rows = list(csv.DictReader(io.StringIO(render_csv(report()))))
    assert [(r['host'], r['namespace'], r['status'], r['compliant']) for r in rows] == [
        ('good', 'host', 'ok', 'true'), ('bad', 'host', 'ok', 'false'), ('bad', 'extra', 'ok', 'false'),
        ('gone', '', 'unreachable', 'false'), ('broken', '', 'failed', 'false'), ('never', '', 'unreachable', 'false')]
    assert rows[1]['detection_seconds'] == '7875' and rows[1]['finding_ids'] == 'KA003'
    assert rows[0]['keepalive_sockets'] == '2'
    assert tuple(rows[0]) == _audit_report.CSV_COLUMNS


def test_junit_parses():
    root = ElementTree.fromstring(render_junit(report()).encode('utf-8'))
    suite = root.find('testsuite')
    assert suite.get('tests') == '6' and suite.get('failures') == '2' and suite.get('errors') == '3'
    cases = suite.findall('testcase')
    assert [(c.get('classname'), c.get('name')) for c in cases] == [
        ('tcplab.keepalive.audit.good', 'host'), ('tcplab.keepalive.audit.bad', 'host'),
        ('tcplab.keepalive.audit.bad', 'extra'), ('tcplab.keepalive.audit.gone', 'host'),
        ('tcplab.keepalive.audit.broken', 'host'), ('tcplab.keepalive.audit.never', 'host')]
    assert cases[0].find('failure') is None
    assert cases[1].find('failure').get('message') == 'KA003 too long <&>'
    assert cases[2].find('failure').get('type') == 'warning'
    assert cases[3].find('error').get('type') == 'unreachable'


def test_html_is_self_contained():
    page = render_html(report())
    assert page.startswith('<!DOCTYPE html>')
    assert '<svg' in page and 'id="hosts"' in page and '<script>' in page
    assert 'too long &lt;&amp;&gt;' in page
    assert not re.search(r'(src|href)=["\']?(https?:)?//', page)
    assert re.search(r'id="count-hosts">5<', page)
    assert page.count('<tr class=') == 6
    ElementTree.fromstring(page[page.index('<svg'):page.index('</svg>') + 6])  # the SVG is well-formed


def test_histogram_bins():
    bins = histogram([0, 59, 60, 239, 240, 7875, 7876, 100000])
    assert [(b[0], b[3]) for b in bins] == [
        ('0-60 s', 2), ('60-120 s', 1), ('120-240 s', 1), ('240-350 s', 1), ('350-600 s', 0), ('600-1200 s', 0),
        ('1200-1h s', 0), ('1h-2h s', 0), ('2h-7876 s', 1), ('>= 7876 s', 2)]


@pytest.mark.parametrize('fail_on, expected', [('none', False), ('error', True), ('warning', True)])
def test_should_fail(fail_on, expected):
    assert should_fail(report(), fail_on) is expected


def test_should_fail_levels():
    only_warning = aggregate(['bad'], ['bad'], {'bad': result([ns('x', {'time': 1, 'intvl': 1, 'probes': 1}, [DRIFT])])})
    assert not should_fail(only_warning, 'error') and should_fail(only_warning, 'warning')
    clean = aggregate(['good'], ['good'], {'good': RESULTS['good']})
    assert not should_fail(clean, 'warning')


def test_summary_lines():
    assert summary_lines(report()) == [
        '5 hosts: 1 compliant, 1 non-compliant, 2 unreachable, 1 failed; 3 namespaces; findings: 1 error, 1 warning, 0 info',
        'detection time: min 75 s, median 210 s, max 7875 s',
        'non-compliant: bad', 'unreachable: gone, never', 'failed: broken']


def test_write_reports(tmp_path):
    dest = str(tmp_path / 'out')
    rep = report()
    assert sorted(write_reports(dest, rep)) == sorted(_audit_report.FILES)
    assert write_reports(dest, rep) == []
    with open(os.path.join(dest, 'audit.json')) as handle:
        assert json.load(handle)['summary']['hosts'] == 5
    assert (os.stat(os.path.join(dest, 'audit.html')).st_mode & 0o777) == 0o644
