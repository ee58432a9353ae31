# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks of the audit_slices target.

  check.py equal WHOLE_DIR MERGED_DIR HOSTS [varied]
                                              the merged report equals the whole run's (varied: and
                                              the lab has compliant, non-compliant and unreachable hosts)
  check.py textfile DIR HOST...               each host's own .prom file, for node_exporter
"""

from __future__ import annotations

import csv
import json
import os
import sys

from prometheus_client.parser import text_string_to_metric_families


def load(directory):
    with open(os.path.join(directory, 'audit.json')) as handle:
        return json.load(handle)


def series(text):
    """(name, labels) -> value, without the report time; a duplicate series is an error."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, 'duplicate series %r' % (key,)
            if sample.name != 'tcplab_keepalive_audit_timestamp_seconds':
                out[key] = sample.value
    return out


def csv_rows(directory):
    with open(os.path.join(directory, 'audit.csv')) as handle:
        return sorted(tuple(row) for row in csv.reader(handle))


def equal(whole_dir, merged_dir, count, varied=None):
    whole, merged = load(whole_dir), load(merged_dir)
    assert len(whole['hosts']) == int(count), 'the whole run has %d hosts, not %s' % (len(whole['hosts']), count)
    assert sorted(merged['hosts']) == sorted(whole['hosts']), 'hosts differ: %s' % sorted(
        set(merged['hosts']) ^ set(whole['hosts']))
    for name, entry in whole['hosts'].items():
        assert merged['hosts'][name] == entry, 'host %s differs:\n%s\n%s' % (name, entry, merged['hosts'][name])
    assert merged['summary'] == whole['summary'], (merged['summary'], whole['summary'])
    assert merged['policy'] == whole['policy']
    assert csv_rows(merged_dir) == csv_rows(whole_dir), 'audit.csv differs'
    for name in ('audit.prom',):
        with open(os.path.join(whole_dir, name)) as a, open(os.path.join(merged_dir, name)) as b:
            assert series(a.read()) == series(b.read()), '%s differs' % name
    s = whole['summary']
    print('equal: %d hosts (%d compliant, %d non-compliant, %d unreachable, %d failed), %d namespaces, findings %s'
          % (s['hosts'], s['compliant'], s['noncompliant'], s['unreachable'], s['failed'], s['namespaces'],
             s['findings']))
    if varied:
        # the findings vary across the lab (the target sets some hosts compliant): not a trivial equality
        assert s['compliant'] and s['noncompliant'] and s['unreachable'] == 1, s


def textfile(directory, hosts):
    for host in hosts:
        path = os.path.join(directory, host, 'tcplab_keepalive_audit.prom')
        with open(path) as handle:
            got = series(handle.read())
        assert {dict(key[1]).get('host') for key in got} == {host}, path
        assert got[('tcplab_keepalive_audit_up', (('host', host),))] == 1
        assert ('tcplab_keepalive_detection_seconds', (('host', host), ('namespace', 'host'))) in got
        assert oct(os.stat(path).st_mode & 0o777) == '0o644'
    print('textfile: %d host files parsed' % len(hosts))


if __name__ == '__main__':
    if sys.argv[1] == 'equal':
        equal(*sys.argv[2:6])
    else:
        textfile(sys.argv[2], sys.argv[3:])
