"""The audit scenario: every finding is the expected one, the reports parse and render,
check mode changed nothing, and remediation made the fleet compliant."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from xml.etree import ElementTree

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'resources', 'tests'))
from scenario_files import INVENTORY, REPORTS, report  # noqa: E402 pylint: disable=wrong-import-position

ROOTS = '/run/tcplab-keepalive/molecule-audit/roots'
LAB = ['ok-netns', 'ok-ssh', 'default-netns', 'range-netns', 'drift-netns', 'extra-netns', 'sockets-netns']
HOLDER = 'mola-holder (pid '
SOCKETS_FINDINGS = [('KA005', 'host', 'sockets', 1, 0), ('KA010', 'host', 'connections', 1, 0)]

# (id, namespace, key, observed, expected) of every finding, per host, before remediation
BEFORE = {
    'ok-netns': [],
    'ok-ssh': [],
    'default-netns': [('KA003', 'host', 'detection_seconds', 7875, '<= 239')],
    'range-netns': [('KA001', 'host', 'net.ipv4.tcp_keepalive_time', 20, '>= 30')],
    # its files would drift, but a lab host is not the boot namespace: sysctl.d does not configure it
    'drift-netns': [],
    'extra-netns': [('KA003', 'tcplab-mola-extra-2', 'detection_seconds', 7875, '<= 239'),
                    ('KA003', HOLDER, 'detection_seconds', 7875, '<= 239')],
    # one connection with its own TCP_KEEPIDLE of 140 s (read exactly with pidfd_getfd): an override (KA005)
    # within the policy (140 + 15 x 6 = 230 s, no KA009); the server's side of it was accepted without
    # keepalive (KA010, info by default)
    'sockets-netns': SOCKETS_FINDINGS,
}
# runtime values per host and namespace after remediation (azure-lb, time >= 30)
AFTER_VALUES = {
    'ok-netns': {'host': (120, 15, 6)},
    'ok-ssh': {'host': (100, 10, 5)},
    'default-netns': {'host': (122, 13, 9)},
    'range-netns': {'host': (30, 5, 3)},
    'drift-netns': {'host': (120, 15, 6)},
    'extra-netns': {'host': (120, 15, 6), 'tcplab-mola-extra-1': (60, 5, 3), 'tcplab-mola-extra-2': (122, 13, 9),
                    HOLDER: (122, 13, 9)},
    'sockets-netns': {'host': (120, 15, 6)},
}


def load(stage):
    return report(stage, 'audit.json')


def label(name):
    return HOLDER if name.startswith(HOLDER) else name


def findings(host):
    return [(f['id'], label(f['namespace']), f['key'], f['observed'], f['expected']) for f in host['findings']]


def values(host):
    return dict((label(ns['label']), (ns['values']['time'], ns['values']['intvl'], ns['values']['probes']))
                for ns in host['namespaces'])


@pytest.mark.parametrize('name', LAB)
def test_every_finding_before_remediation_is_expected(name):
    host = load('before')['hosts'][name]
    assert host['status'] == 'ok'
    assert findings(host) == BEFORE[name]
    assert host['compliant'] is (not BEFORE[name])


def test_summary_before_and_the_unreachable_host():
    report = load('before')
    assert sorted(report['hosts']) == sorted(LAB + ['ghost-netns'])
    ghost = report['hosts']['ghost-netns']
    assert ghost['status'] == 'unreachable' and ghost['compliant'] is False
    assert 'tcplab-mola-ghost' in ghost['message']
    summary = report['summary']
    assert (summary['hosts'], summary['compliant'], summary['noncompliant'], summary['unreachable'], summary['failed']) \
        == (8, 3, 4, 1, 0)
    assert summary['findings'] == {'error': 4, 'warning': 1, 'info': 1}
    assert summary['namespaces'] == 10
    assert report['policy']['max_detection_seconds'] == 239


def test_messages_name_the_file_and_the_preset():
    hosts = load('before')['hosts']
    # the persisted files are read (/etc/sysctl.d/50-x.conf masks /usr/lib/sysctl.d/50-x.conf) ...
    persisted = hosts['drift-netns']['persisted']
    assert persisted['values']['time'] == {'value': 120, 'file': '/etc/sysctl.d/50-x.conf'}
    assert persisted['values']['intvl'] == {'value': 30, 'file': '/run/sysctl.d/70-y.conf'}
    assert persisted['files'] == ['/etc/sysctl.d/50-x.conf', '/run/sysctl.d/70-y.conf']
    # ... but not compared: a lab host is a namespace of the controller, not its boot namespace
    assert persisted['compared'] is False and hosts['drift-netns']['drift'] == []
    assert [n for n in hosts['drift-netns']['notes'] if 'not in the boot namespace of the machine' in n]
    assert hosts['default-netns']['findings'][0]['message'].endswith('(preset azure-lb: below the 240 s idle timeout)')


def test_no_lab_namespace_is_the_boot_namespace():
    hosts = load('before')['hosts']
    for name in LAB:
        namespaces = hosts[name]['namespaces']
        assert [ns['boot_netns'] for ns in namespaces] == [False] * len(namespaces), name
        assert hosts[name]['boot_netns_inode'] not in [ns['inode'] for ns in namespaces], name


def test_namespaces_and_sockets():
    hosts = load('before')['hosts']
    extra = hosts['extra-netns']['namespaces']
    assert [label(ns['label']) for ns in extra] == ['host', 'tcplab-mola-extra-1', 'tcplab-mola-extra-2', HOLDER]
    assert [ns['kind'] for ns in extra] == ['host', 'named', 'named', 'process']
    assert extra[3]['comm'] == 'mola-holder' and extra[3]['container_id'] is None
    assert len(set(ns['inode'] for ns in extra)) == 4
    sockets = hosts['sockets-netns']['namespaces'][0]['sockets']
    assert sockets['keepalive'] == 1 and sockets['overrides'] == 1 and sockets['exact'] is True
    assert [p['comm'] for p in sockets['top_processes']] == ['python']
    examples = sockets['connection_examples']
    override = [c for c in examples if c['override']]
    assert len(override) == 1 and override[0]['local'].startswith('127.0.0.1:')
    assert (override[0]['idle'], override[0]['intvl'], override[0]['cnt']) == (140, 15, 6)
    assert override[0]['detection_seconds'] == 140 + 15 * 6
    # the server's side of that connection: accepted, keepalive off
    assert [(c['accepted'], c['comm']) for c in examples if not c['keepalive']] == [(True, 'python')]
    ssh = hosts['ok-ssh']['namespaces'][0]['sockets']
    assert ssh['keepalive'] >= 1 and ssh['overrides'] == 0
    assert 'sshd' in [p['comm'] for p in ssh['top_processes']]


def test_check_mode_changed_nothing():
    before, check, remediate = load('before')['hosts'], load('check')['hosts'], load('remediate')['hosts']
    for name in LAB:
        assert values(check[name]) == values(before[name]), name
        # the audit at the start of the real remediation still saw the seeded state: no drop-in written
        assert values(remediate[name]) == values(before[name]), name
        assert not any(path.endswith('90-tcplab-keepalive.conf') for path in remediate[name]['persisted']['files'])
    # runtime values only: a lab host is not the boot namespace, nothing is to be persisted
    assert check['default-netns']['remediation']['host'] == \
        'would set net.ipv4.tcp_keepalive_time=122, net.ipv4.tcp_keepalive_intvl=13'
    assert check['default-netns']['remediation']['persisted'] is False
    assert check['extra-netns']['remediation']['namespaces']['tcplab-mola-extra-2'] == \
        'would set net.ipv4.tcp_keepalive_time=122, net.ipv4.tcp_keepalive_intvl=13'


def test_remediation_makes_the_next_audit_compliant():
    report = load('after')
    for name in LAB:
        host = report['hosts'][name]
        assert values(host) == AFTER_VALUES[name], name
        if name == 'sockets-netns':
            # a per-socket TCP_KEEPIDLE cannot be fixed with sysctls: its findings stay
            assert findings(host) == SOCKETS_FINDINGS
        else:
            assert findings(host) == [] and host['compliant'], name
    assert report['summary']['findings'] == {'error': 0, 'warning': 1, 'info': 1}
    remediated = load('remediate')['hosts']
    for name in ('default-netns', 'range-netns'):
        # set at runtime, never persisted: no drop-in in the host's root, and the report says why
        assert not os.path.lexists(os.path.join(ROOTS, name, 'etc/sysctl.d/90-tcplab-keepalive.conf')), name
        assert not any(path.endswith('90-tcplab-keepalive.conf') for path in report['hosts'][name]['persisted']['files'])
        done = remediated[name]['remediation']
        assert done['host'].startswith('set net.ipv4.tcp_keepalive_') and 'wrote' not in done['host'], name
        assert done['persisted'] is False
        assert 'not the boot namespace of its machine' in done['not_persisted']
        assert 'container gets its sysctls from its container runtime' in done['not_persisted']
    # compliant before: nothing to remediate
    assert remediated['drift-netns'].get('remediation', {}).get('host', 'nothing to change') == 'nothing to change'


def test_ssh_host_values_seen_over_ssh_match_the_report():
    host = testinfra.get_host('ansible://ok-ssh?ansible_inventory=%s' % INVENTORY)
    seen = tuple(int(host.file('/proc/sys/net/ipv4/tcp_keepalive_%s' % key).content_string.strip())
                 for key in ('time', 'intvl', 'probes'))
    assert seen == values(load('after')['hosts']['ok-ssh'])['host']


@pytest.mark.parametrize('stage', ['before', 'after'])
def test_junit_parses(stage):
    report = load(stage)
    tree = ElementTree.parse(os.path.join(REPORTS, stage, 'audit.junit.xml'))
    cases = tree.getroot().findall('./testsuite/testcase')
    expected = sum(max(1, len(h['namespaces'])) for h in report['hosts'].values())
    assert len(cases) == expected
    failed = [(c.get('classname').rsplit('.', 1)[1], c.get('name')) for c in cases
              if c.find('failure') is not None or c.find('error') is not None]
    if stage == 'before':
        assert len(failed) == 6 and ('ghost-netns', 'host') in failed
    else:
        assert failed == [('sockets-netns', 'host')]


def test_csv_has_a_row_per_namespace():
    with open(os.path.join(REPORTS, 'before', 'audit.csv')) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 11
    assert [r['detection_seconds'] for r in rows if r['host'] == 'default-netns'] == ['7875']


def test_html_renders_in_headless_chromium():
    browser = shutil.which('chromium') or shutil.which('chromium-browser')
    assert browser, 'chromium is needed to check the HTML report (apt-get install chromium)'
    page = os.path.join(REPORTS, 'before', 'audit.html')
    with open(page) as handle:
        html = handle.read()
    assert '<svg' in html and 'id="hosts"' in html
    assert not re.search(r'(src|href)=["\']?(https?:)?//', html), 'the page must be self-contained'
    profile = tempfile.mkdtemp(prefix='tcplab-chromium-')
    shot = os.path.join(REPORTS, 'before', 'audit.png')
    try:
        subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                        '--disable-component-update', '--disable-sync', '--no-first-run', '--user-data-dir=%s' % profile,
                        '--window-size=1280,1600', '--screenshot=%s' % shot, 'file://%s' % page],
                       check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(shot, 'rb') as handle:
            data = handle.read()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10000
    finally:
        shutil.rmtree(profile, ignore_errors=True)
