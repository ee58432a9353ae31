# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""audit_report and audit_merge run for real (`ansible localhost -m ...`): two slices written by
audit_report (with audit.prom, audit.slice.json and each host's metrics) merge into the report of
one run over both, a second merge changes nothing, and an overlapping slice is refused with the
host named and nothing written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[4]
ANSIBLE = Path(sys.executable).parent / 'ansible'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'
POLICY = {'preset': 'azure-lb', 'max_detection_seconds': 239}


@pytest.fixture(scope='module', autouse=True)
def needs_build_tree():
    if not (COLLECTIONS / 'ansible_collections' / 'tcplab' / 'keepalive').exists() or not ANSIBLE.exists():
        pytest.skip('needs %s (scripts/bootstrap) and ansible next to %s' % (COLLECTIONS, sys.executable))


def run(module, args, tmp_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
               ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    proc = subprocess.run([str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,', '-m', 'tcplab.keepalive.' + module,
                           '-a', json.dumps(args), '-e', 'ansible_python_interpreter=%s' % sys.executable],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    match = re.search(r'^localhost \| (SUCCESS|CHANGED|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    result = json.loads(proc.stdout[match.end():])
    result['_status'] = match.group(1)
    return result


def result(time_value):
    values = {'time': time_value, 'intvl': 10, 'probes': 3}
    ok = time_value < 200
    findings = [] if ok else [{'id': 'KA003', 'severity': 'error', 'namespace': 'host', 'message': 'too long'}]
    return {'compliant': ok, 'policy': POLICY, 'findings': findings, 'drift': [], 'notes': [],
            'namespaces': [{'label': 'host', 'kind': 'host', 'values': values, 'detection_seconds': time_value + 30,
                            'compliant': ok, 'findings': findings, 'sockets': {'keepalive': 0}}]}


RESULTS = {'a': result(120), 'b': result(7200), 'c': result(150), 'd': result(900)}


def report(tmp_path, name, hosts, slice_id):
    out = run('audit_report', {'dest': str(tmp_path / name), 'hosts': hosts, 'reachable': hosts,
                               'results': dict((h, RESULTS[h]) for h in hosts), 'policy': {'preset': 'azure-lb'},
                               'slice_id': slice_id, 'host_metrics': True}, tmp_path)
    assert out['_status'] == 'CHANGED', out
    return out


@pytest.mark.once
def test_slices_written_by_audit_report_merge_like_one_run(tmp_path):
    whole = report(tmp_path, 'whole', ['a', 'b', 'c', 'd'], 'whole')
    first = report(tmp_path, 'slices/one', ['a', 'c'], 'one')
    report(tmp_path, 'slices/two', ['b', 'd'], 'two')
    assert first['slice_id'] == 'one' and first['prom'] == str(tmp_path / 'slices/one/audit.prom')
    assert sorted(first['host_metrics']) == ['a', 'c'] and 'host="c"' in first['host_metrics']['c']
    assert sorted(os.listdir(str(tmp_path / 'whole'))) == [
        'audit.csv', 'audit.html', 'audit.json', 'audit.junit.xml', 'audit.prom', 'audit.slice.json']

    merged = run('audit_merge', {'sources': [str(tmp_path / 'slices')], 'dest': str(tmp_path / 'merged'),
                                 'fail_on': 'error'}, tmp_path)
    assert merged['_status'] == 'CHANGED' and merged['fail'] is True, merged
    assert merged['summary'] == whole['summary'] and merged['summary']['compliant'] == 2
    assert [(s['id'], s['hosts']) for s in merged['slices']] == [('one', 2), ('two', 2)]
    with open(str(tmp_path / 'whole/audit.json')) as a, open(str(tmp_path / 'merged/audit.json')) as b:
        assert json.load(a)['hosts'] == json.load(b)['hosts']
    again = run('audit_merge', {'sources': [str(tmp_path / 'slices')], 'dest': str(tmp_path / 'merged')}, tmp_path)
    assert again['_status'] == 'SUCCESS' and again['changed'] is False


def test_an_overlapping_slice_is_refused_and_nothing_written(tmp_path):
    report(tmp_path, 'one', ['a', 'b'], 'one')
    report(tmp_path, 'two', ['b', 'c'], 'two')
    out = run('audit_merge', {'sources': [str(tmp_path / 'one'), str(tmp_path / 'two')],
                              'dest': str(tmp_path / 'merged')}, tmp_path)
    assert out['_status'] == 'FAILED!'
    assert out['msg'].startswith('1 host(s) are in more than one slice: b (in %s, %s);'
                                 % (tmp_path / 'one/audit.slice.json', tmp_path / 'two/audit.slice.json')), out['msg']
    assert not (tmp_path / 'merged').exists()
