# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Merge of sliced audits: the audit.slice.json files of N runs of the same audit on disjoint
parts of the inventory (AWX / Automation Controller job slicing) into the report one run over
all the hosts would give - the same host entries, the summary computed again.

Refused, with what to do, before anything is written: a missing, unreadable or corrupt slice
file, slices of different policies or collection versions, a host in two slices (named).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json
import os

from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import (
    COLLECTION_VERSION, SLICE_FILE, SLICE_FORMAT, ReportError, policy_hash, slice_document, summarize)

MSG_NO_SOURCES = 'sources is empty: give the report directories (or audit.slice.json files) of the slices to merge'
MSG_MISSING = ('%s: no such file or directory: give the report directory of a slice (audit_report_dir of its run) '
               'or its %s' % ('%s', SLICE_FILE))
MSG_NO_SLICE = ('%s has no %s, nor any subdirectory with one: was the slice run with a collection that writes it '
                '(tcplab.keepalive 0.2.0 or later), and did it finish?' % ('%s', SLICE_FILE))
MSG_UNREADABLE = 'cannot read the slice file %s: %s'
MSG_CORRUPT = 'the slice file %s is not a slice of the keepalive audit (%s): re-run that slice, or leave it out'
MSG_TWICE = 'the slice file %s is given twice (as %s): give each slice once'
MSG_SLICE_ID = 'the slices %s and %s have the same identity %r: they are the same run (or copies of it); give it once'
MSG_POLICY = ('the slices were run with different policies: %s; merge only slices of one audit (re-run the slices '
              'that differ with the same audit_policy)')
MSG_VERSION = ('the slices were written by different versions of tcplab.keepalive: %s; re-run them with one version '
               '(the findings may differ between versions)')
MSG_OVERLAP = ('%d host(s) are in more than one slice: %s; slices must be disjoint parts of the inventory (AWX job '
               'slicing makes them so): fix the limits, or leave the duplicate slice out')
MSG_DEST_SOURCE = 'dest %s is the report directory of the slice %s: give a directory of its own for the merged report'

# keys of a host entry a merge relies on (the rest is carried over as it is)
HOST_KEYS = (('status', str), ('compliant', bool), ('namespaces', list), ('findings', list))


def slice_paths(source):
    """The slice files a source names: a file, a report directory, or a directory of report directories."""
    if os.path.isfile(source):
        return [source]
    if not os.path.isdir(source):
        raise ReportError(MSG_MISSING % source)
    own = os.path.join(source, SLICE_FILE)
    if os.path.isfile(own):
        return [own]
    found = sorted(os.path.join(source, name, SLICE_FILE) for name in os.listdir(source)
                   if os.path.isfile(os.path.join(source, name, SLICE_FILE)))
    if not found:
        raise ReportError(MSG_NO_SLICE % source)
    return found


def _corrupt(path, why):
    raise ReportError(MSG_CORRUPT % (path, why))


def _check_host(path, name, entry):
    if not isinstance(entry, dict):
        _corrupt(path, 'host %r is not a mapping' % name)
    for key, kind in HOST_KEYS:
        if not isinstance(entry.get(key), kind):
            _corrupt(path, 'host %r has no %s of type %s' % (name, key, kind.__name__))
    for ns in entry['namespaces']:
        if not isinstance(ns, dict) or not isinstance(ns.get('label'), str) or not isinstance(ns.get('findings'), list):
            _corrupt(path, 'host %r has a namespace entry without label or findings' % name)


def check_slice(path, doc):
    """ReportError when doc is not a slice file of this format, with the file and what is wrong."""
    if not isinstance(doc, dict):
        _corrupt(path, 'not a JSON object')
    if doc.get('format') != SLICE_FORMAT:
        _corrupt(path, 'format %r, expected %r' % (doc.get('format'), SLICE_FORMAT))
    for key, kind in (('slice', dict), ('hosts', dict), ('policy_hash', str), ('collection_version', str),
                      ('generated_at', str)):
        if not isinstance(doc.get(key), kind):
            _corrupt(path, 'no %s of type %s' % (key, kind.__name__))
    if not isinstance(doc['slice'].get('id'), str):
        _corrupt(path, 'the slice has no id')
    if doc.get('policy') is not None and not isinstance(doc['policy'], dict):
        _corrupt(path, 'policy is neither a mapping nor null')
    if policy_hash(doc.get('requested_policy')) != doc['policy_hash']:
        _corrupt(path, 'policy_hash does not match requested_policy (the file was edited)')
    for name, entry in doc['hosts'].items():
        _check_host(path, name, entry)


def load_slice(path):
    try:
        with open(path, 'rb') as handle:
            raw = handle.read()
    except (IOError, OSError) as exc:
        raise ReportError(MSG_UNREADABLE % (path, exc.strerror or exc))
    try:
        doc = json.loads(raw.decode('utf-8'))
    except (ValueError, UnicodeDecodeError) as exc:
        _corrupt(path, 'not valid JSON: %s' % exc)
    check_slice(path, doc)
    return doc


def load_sources(sources):
    """[(path, slice document)] of every source, in order; a file given twice is refused."""
    if not sources:
        raise ReportError(MSG_NO_SOURCES)
    seen = {}
    out = []
    for source in sources:
        for path in slice_paths(source):
            real = os.path.realpath(path)
            if real in seen:
                raise ReportError(MSG_TWICE % (seen[real], path))
            seen[real] = path
            out.append((path, load_slice(path)))
    return out


def _one_of(slices, key, message):
    """ReportError(message) when the slices differ in key: each value with the files that have it."""
    groups = {}
    for path, doc in slices:
        groups.setdefault(doc[key], []).append(path)
    if len(groups) > 1:
        raise ReportError(message % '; '.join('%s %s in %s' % (key, value, ', '.join(paths))
                                              for value, paths in sorted(groups.items())))


def check_compatible(slices):
    """Same policy, same collection version, distinct identities, disjoint hosts."""
    _one_of(slices, 'policy_hash', MSG_POLICY)
    _one_of(slices, 'collection_version', MSG_VERSION)
    ids = {}
    for path, doc in slices:
        other = ids.setdefault(doc['slice']['id'], path)
        if other != path:
            raise ReportError(MSG_SLICE_ID % (other, path, doc['slice']['id']))
    owner = {}
    overlap = {}
    for path, doc in slices:
        for name in doc['hosts']:
            if name in owner:
                overlap.setdefault(name, [owner[name]]).append(path)
            else:
                owner[name] = path
    if overlap:
        shown = ['%s (in %s)' % (name, ', '.join(paths)) for name, paths in sorted(overlap.items())[:10]]
        more = ' and %d more' % (len(overlap) - 10) if len(overlap) > 10 else ''
        raise ReportError(MSG_OVERLAP % (len(overlap), '; '.join(shown) + more))


def check_dest(dest, slices):
    real = os.path.realpath(dest)
    for path, dummy in slices:
        if os.path.realpath(os.path.dirname(path)) == real:
            raise ReportError(MSG_DEST_SOURCE % (dest, path))


def merge(slices):
    """(report, slice document) of the merged slices: audit.json as one run over all their hosts
    would write it (the summary computed again, generated_at the newest slice's), and the merged
    slice file (to merge again). Hosts and slice ids are sorted: the order of the sources does not
    change the files."""
    check_compatible(slices)
    found = {}
    policy = None
    for dummy, doc in slices:
        found.update(doc['hosts'])
        if policy is None:
            policy = doc.get('policy')
    hosts = dict((name, found[name]) for name in sorted(found))
    generated_at = max(doc['generated_at'] for dummy, doc in slices)
    report = {'generated_at': generated_at, 'policy': policy, 'summary': summarize(hosts), 'hosts': hosts}
    first = slices[0][1]
    ids = sorted(doc['slice']['id'] for dummy, doc in slices)
    merged = slice_document(report, first.get('requested_policy'), 'merge:' + ','.join(ids), merged_from=ids)
    merged['collection_version'] = first['collection_version'] or COLLECTION_VERSION
    return report, merged


def slice_info(slices):
    """What the module returns about each slice."""
    return [{'path': path, 'id': doc['slice']['id'], 'hosts': len(doc['hosts']), 'generated_at': doc['generated_at']}
            for path, doc in slices]
