# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The merge of sliced audits: slices written by the report writer merge into the report of one
run over all their hosts (files compared), idempotently; and every refusal (missing, corrupt,
edited, twice, other policy, other version, overlapping hosts named, dest a slice directory)
with nothing written."""

from __future__ import annotations

import json
import os
import re

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _audit_merge, _audit_report
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_merge import check_dest, load_sources, merge
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_prom import render_prom
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import (
    SLICE_FILE, ReportError, aggregate, render_all, render_slice, slice_document, write_reports)

REQUESTED = {'preset': 'azure-lb'}
POLICY = {'preset': 'azure-lb', 'max_detection_seconds': 239, 'target': None,
          'time': {'min': None, 'max': None}, 'intvl': {'min': None, 'max': None}, 'probes': {'min': None, 'max': None}}
STAMP = '2026-12-02T01:00:00Z'


def result(i):
    """A registered audit result; every third host compliant, every fifth with a drift warning."""
    values = {'time': 120, 'intvl': 10, 'probes': 3} if i % 3 == 0 else {'time': 7200, 'intvl': 75, 'probes': 9}
    detection = values['time'] + values['intvl'] * values['probes']
    findings = [] if i % 3 == 0 else [{'id': 'KA003', 'severity': 'error', 'namespace': 'host', 'key': 'detection_seconds',
                                       'observed': detection, 'expected': '<= 239', 'message': 'too long'}]
    if i % 5 == 0:
        findings.append({'id': 'KA004', 'severity': 'warning', 'namespace': 'host', 'key': 'time', 'observed': 1,
                         'expected': 2, 'message': 'drifted'})
    ns = {'label': 'host', 'kind': 'host', 'inode': 4026531840 + i, 'values': values, 'detection_seconds': detection,
          'compliant': not findings, 'findings': findings, 'remediation': None,
          'sockets': {'keepalive': i % 2, 'established': 1, 'overrides': 0}}
    return {'changed': False, 'compliant': not findings, 'namespaces': [ns], 'findings': findings, 'policy': POLICY,
            'drift': [], 'notes': []}


HOSTS = ['h%02d' % i for i in range(12)]
RESULTS = dict((h, result(i)) for i, h in enumerate(HOSTS))
RESULTS['h07'] = {'unreachable': True, 'msg': 'no route'}


def run(hosts, generated_at=STAMP):
    reachable = [h for h in hosts if h != 'h07']
    return aggregate(hosts, reachable, dict((h, RESULTS.get(h)) for h in hosts), generated_at=generated_at)


def write_slice(dest, hosts, slice_id, requested=None, generated_at=STAMP, **changes):
    report = run(hosts, generated_at)
    doc = slice_document(report, REQUESTED if requested is None else requested, slice_id)
    doc.update(changes)
    write_reports(str(dest), report, {SLICE_FILE: render_slice(doc)})
    return str(dest)


@pytest.fixture
def slices(tmp_path):
    """Four slices as AWX cuts an inventory: host i in slice i % 4."""
    return [write_slice(tmp_path / ('slice-%d' % n), HOSTS[n::4], 'job-%d' % n, generated_at='2026-12-02T01:00:0%dZ' % n)
            for n in range(4)]


def test_four_slices_merge_into_the_report_of_one_run(slices, tmp_path):
    report, doc = merge(load_sources(slices))
    whole = run(HOSTS, generated_at='2026-12-02T01:00:03Z')
    assert report['hosts'] == whole['hosts'] and report['summary'] == whole['summary']
    assert report['policy'] == POLICY and report['generated_at'] == '2026-12-02T01:00:03Z'   # the newest slice
    assert report['summary']['unreachable'] == 1 and report['summary']['hosts'] == 12
    # the files too: the same CSV rows, JUnit cases and metrics (only the order of hosts differs)
    merged, single = render_all(report), render_all(whole)
    assert sorted(merged['audit.csv'].splitlines()) == sorted(single['audit.csv'].splitlines())
    assert sorted(re.findall(r'<testcase .*?</testcase>', merged['audit.junit.xml'])) == \
        sorted(re.findall(r'<testcase .*?</testcase>', single['audit.junit.xml']))
    assert sorted(render_prom(report).splitlines()) == sorted(render_prom(whole).splitlines())
    assert doc['slice']['merged_from'] == ['job-0', 'job-1', 'job-2', 'job-3'] and doc['requested_policy'] == REQUESTED


def test_a_directory_of_report_directories_and_a_slice_file_are_sources(slices, tmp_path):
    by_parent = merge(load_sources([str(tmp_path)]))[0]
    by_file = merge(load_sources([os.path.join(s, SLICE_FILE) for s in reversed(slices)]))[0]
    # the order of the sources changes nothing
    assert render_all(by_parent) == render_all(by_file) and list(by_file['hosts']) == HOSTS


def test_the_merge_is_idempotent_and_merges_again(slices, tmp_path):
    dest = str(tmp_path / 'merged')
    report, doc = merge(load_sources(slices))
    extra = {SLICE_FILE: render_slice(doc)}
    assert sorted(write_reports(dest, report, extra)) == sorted(_audit_report.FILES + (SLICE_FILE,))
    again, doc2 = merge(load_sources(slices))
    assert write_reports(dest, again, {SLICE_FILE: render_slice(doc2)}) == []     # nothing rewritten
    # the merged slice file merges with another, disjoint one
    late = write_slice(tmp_path / 'late', ['late1'], 'job-late')
    twice = merge(load_sources([dest, late]))[0]
    assert list(twice['hosts']) == sorted(HOSTS + ['late1']) and twice['summary']['failed'] == 1


def refused(sources, message_start):
    with pytest.raises(ReportError) as info:
        merge(load_sources(sources))
    assert str(info.value).startswith(message_start), str(info.value)
    return str(info.value)


def test_overlapping_hosts_are_refused_and_named(slices, tmp_path):
    other = write_slice(tmp_path / 'overlap', ['h01', 'h05', 'h02'], 'job-x')
    msg = refused(slices + [other], '3 host(s) are in more than one slice: h01 (in ')
    assert 'h02 (in %s' % os.path.join(slices[2], SLICE_FILE) in msg and 'h05' in msg and 'overlap' in msg
    assert 'fix the limits' in msg


def test_a_slice_of_another_policy_is_refused(slices, tmp_path):
    other = write_slice(tmp_path / 'other', ['x1'], 'job-x', requested={'preset': 'aws-nlb'})
    msg = refused(slices + [other], 'the slices were run with different policies: policy_hash ')
    assert os.path.join(str(tmp_path), 'other', SLICE_FILE) in msg


def test_a_slice_of_another_collection_version_is_refused(slices, tmp_path):
    other = write_slice(tmp_path / 'old', ['x1'], 'job-x', collection_version='0.0.9')
    refused(slices + [other], 'the slices were written by different versions of tcplab.keepalive: collection_version 0.0.9')


def test_the_same_slice_twice_is_refused(slices, tmp_path):
    first = os.path.join(slices[0], SLICE_FILE)
    refused(slices + [slices[0]], 'the slice file %s is given twice (as %s): give each slice once' % (first, first))
    copy = tmp_path / 'copy'
    copy.mkdir()
    with open(os.path.join(slices[0], SLICE_FILE)) as src:
        (copy / SLICE_FILE).write_text(src.read())
    refused(slices + [str(copy)], "the slices %s and %s have the same identity 'job-0'"
            % (os.path.join(slices[0], SLICE_FILE), str(copy / SLICE_FILE)))


@pytest.mark.parametrize('content, why', [
    ('{"format": "tcplab.keepalive.audit-slice/1", "hosts": {', 'not valid JSON'),
    ('[]', 'not a JSON object'),
    ('{"hosts": {}}', "format None, expected 'tcplab.keepalive.audit-slice/1'"),
    ('\xff\xfe', 'not valid JSON'),
])
def test_a_corrupt_slice_file_is_refused(slices, tmp_path, content, why):
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / SLICE_FILE).write_bytes(content.encode('latin-1'))
    msg = refused(slices + [str(bad)], 'the slice file %s is not a slice of the keepalive audit (%s'
                  % (bad / SLICE_FILE, why))
    assert msg.endswith('re-run that slice, or leave it out')


def edited(slice_dir, change):
    path = os.path.join(slice_dir, SLICE_FILE)
    with open(path) as handle:
        doc = json.load(handle)
    change(doc)
    with open(path, 'w') as handle:
        json.dump(doc, handle)


@pytest.mark.parametrize('change, why', [
    (lambda d: d['requested_policy'].update(preset='gcp-vpc'), 'policy_hash does not match requested_policy'),
    (lambda d: d['hosts']['h00'].pop('findings'), "host 'h00' has no findings of type list"),
    (lambda d: d['hosts'].update(h00=[]), "host 'h00' is not a mapping"),
    (lambda d: d['slice'].pop('id'), 'the slice has no id'),
    (lambda d: d['hosts']['h00']['namespaces'].append({'label': 1}), "host 'h00' has a namespace entry without label"),
])
def test_an_edited_slice_file_is_refused(slices, change, why):
    edited(slices[0], change)
    refused(slices, 'the slice file %s is not a slice of the keepalive audit (%s' % (os.path.join(slices[0], SLICE_FILE), why))


def test_missing_sources_are_refused(slices, tmp_path):
    refused(slices + [str(tmp_path / 'nope')], '%s: no such file or directory' % (tmp_path / 'nope'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    refused([str(empty)], '%s has no %s, nor any subdirectory with one' % (empty, SLICE_FILE))
    refused([], _audit_merge.MSG_NO_SOURCES)


def test_a_slice_file_that_cannot_be_read_is_refused(slices, monkeypatch):
    """(root reads any file: the error of open() is simulated)"""
    target = os.path.join(slices[1], SLICE_FILE)
    real_open = open

    def failing_open(path, *args, **kwargs):
        if path == target:
            raise PermissionError(13, 'Permission denied', path)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(_audit_merge, 'open', failing_open, raising=False)
    refused(slices, 'cannot read the slice file %s: Permission denied' % target)


def test_dest_must_not_be_a_slice_directory(slices):
    with pytest.raises(ReportError, match='is the report directory of the slice'):
        check_dest(slices[2], load_sources(slices))
    check_dest(slices[2] + '-merged', load_sources(slices))


def test_the_collection_version_is_galaxy_yml_s():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    with open(os.path.join(root, 'galaxy.yml')) as handle:
        version = re.search(r'^version:\s*(\S+)', handle.read(), re.MULTILINE).group(1)
    assert _audit_report.COLLECTION_VERSION == version.strip('"\'')


def test_the_policy_hash_ignores_key_order():
    assert _audit_report.policy_hash({'a': 1, 'b': {'c': 2, 'd': 3}}) == _audit_report.policy_hash({'b': {'d': 3, 'c': 2}, 'a': 1})
    assert _audit_report.policy_hash({}) == _audit_report.policy_hash(None) != _audit_report.policy_hash({'preset': 'x'})


def test_connection_examples_keep_what_matters_slowest_first():
    from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import connection_examples
    conns = [
        {'pid': 1, 'comm': 'a', 'keepalive': True, 'override': False, 'detection_seconds': 210},
        {'pid': 2, 'comm': 'b', 'keepalive': True, 'override': True, 'detection_seconds': 600},
        {'pid': 3, 'comm': 'c', 'keepalive': False, 'override': False, 'detection_seconds': None, 'accepted': True},
        {'pid': 4, 'comm': 'd', 'keepalive': True, 'override': True, 'detection_seconds': 60},
    ]
    assert [c['pid'] for c in connection_examples(conns)] == [3, 2, 4]
    assert [c['pid'] for c in connection_examples(conns, limit=1)] == [3]
    assert connection_examples([]) == []
