# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The experiment report's input: data checked and normalised (every missing or malformed key named with what to
give), the pcaps (regular files only) and the report directory to create.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import base64
import binascii
import math
import os

from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import DEFAULT_TOLERANCE, TOLERANCE_RANGE
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, check_file
from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_judge as kernel_judge
from ansible_collections.tcplab.keepalive.plugins.module_utils import _report_marks as marks
from ansible_collections.tcplab.keepalive.plugins.module_utils import _in_flight as in_flight
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_idle import DEATH


MSG_MISSING_KEY = 'data.%s is missing: give %s'
MSG_BAD_VALUE = 'data.%s must be %s, got %r'
MSG_NOT_DICT = 'data must be a dict of what the experiment saw, got %r'
MSG_UNKNOWN_KEYS = 'data takes %s; got unknown key(s): %s'
MSG_DEST_NOT_DIR = 'dest %s exists and is not a directory: give the path of a directory for the report (it is created if missing)'
MSG_DEST_PARENT = 'dest %s cannot be created: %s is not a directory; give a path under a directory'
MSG_PCAP = 'data.pcaps: %s'
MSG_PCAP_MISSING = 'pcap %s not found: the timeline picture shows no packets from it'
MSG_PCAP_FILE_NAME = ('pcap_files[].name must be a file name without "/" (the capture host\'s name; written as '
                      '<dest>/<name>.pcap), got %r')
MSG_PCAP_FILE_CONTENT = 'pcap_files[].content of %s must be the pcap base64-encoded (experiment_host returns it so): %s'

TRIPLE = 'a dict with time, intvl and probes (integers >= 1)'
REQUIRED = {
    'run_id': 'the run id of the experiment (a string)',
    'settings': 'the keepalive sysctls the experiment set, ' + TRIPLE,
    'expected': 'the settings the probes are judged against, ' + TRIPLE,
    'client_port': "the keepalive client's local port (an integer 1..65535)",
}
OPTIONAL = ('governs', 'client_kind', 'server_kind', 'hosts', 'idle_probes', 'tolerance', 'analysis', 'client', 'drop_at',
            'pcaps', 'error', 'cleanup_errors', 'notes', 'capture_backend', 'fault', 'kernel', 'in_flight')
FAULT = ('a dict with kind drop, or kind idle_timeout with seconds (an integer >= 1), action (drop or reset), '
         'middlebox (its inventory hostname) and preset (or null)')


class ReportError(Exception):
    """The report cannot be written; the message says why."""


# ---------------------------------------------------------------- input

def _int(value):
    """An int from an int or an integer string (Jinja may deliver either); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip('+-').isdigit():
        return int(value.strip())
    return None


def _number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _triple(key, value):
    if not isinstance(value, dict) or set(value) != {'time', 'intvl', 'probes'}:
        raise ReportError(MSG_BAD_VALUE % (key, TRIPLE, value))
    out = {k: _int(v) for k, v in value.items()}
    if any(v is None or v < 1 for v in out.values()):
        raise ReportError(MSG_BAD_VALUE % (key, TRIPLE, value))
    return out


def _optional(data, key, kinds, what, default):
    value = data.get(key)
    if value is None or value == '':
        return default
    if not isinstance(value, kinds):
        raise ReportError(MSG_BAD_VALUE % (key, what, value))
    return value


def validate(data):
    """The report input checked and normalised; raises ReportError naming the key and what to give."""
    if not isinstance(data, dict):
        raise ReportError(MSG_NOT_DICT % (data,))
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ReportError(MSG_UNKNOWN_KEYS % (', '.join(list(REQUIRED) + list(OPTIONAL)), ', '.join(unknown)))
    for key, what in REQUIRED.items():
        if data.get(key) is None or data.get(key) == '':
            raise ReportError(MSG_MISSING_KEY % (key, what))
    out = dict(data)
    if isinstance(data['run_id'], bool) or not isinstance(data['run_id'], (str, int)):
        raise ReportError(MSG_BAD_VALUE % ('run_id', 'a string (or a number)', data['run_id']))
    out['run_id'] = str(data['run_id'])
    out['settings'] = _triple('settings', data['settings'])
    out['expected'] = _triple('expected', data['expected'])
    port = _int(data['client_port'])
    if port is None or not 1 <= port <= 65535:
        raise ReportError(MSG_BAD_VALUE % ('client_port', 'an integer 1..65535', data['client_port']))
    out['client_port'] = port
    raw = data.get('idle_probes')
    idle = 0 if raw in (None, '') else _int(raw)
    if idle is None or idle < 0:
        raise ReportError(MSG_BAD_VALUE % ('idle_probes', 'an integer >= 0', data.get('idle_probes')))
    out['idle_probes'] = idle
    out['tolerance'] = _tolerance(data.get('tolerance'))
    out['drop_at'] = None
    if data.get('drop_at') not in (None, '', 'None'):
        out['drop_at'] = _number(data['drop_at'])
        if out['drop_at'] is None:
            raise ReportError(MSG_BAD_VALUE % ('drop_at', 'a time stamp (seconds since the epoch) or null',
                                               data['drop_at']))
    for key in ('analysis', 'client', 'hosts'):
        out[key] = _optional(data, key, dict, 'a dict', {})
    for key in ('pcaps', 'cleanup_errors', 'notes'):
        out[key] = list(_optional(data, key, (list, tuple), 'a list', []))
    for key in ('governs', 'client_kind', 'server_kind', 'error', 'capture_backend'):
        out[key] = _optional(data, key, str, 'a string', None)
    out['fault'] = _fault(data.get('fault'))
    out['in_flight'] = in_flight.validate(data.get('in_flight'), ReportError)
    try:
        out['kernel'] = kernel_judge.check_kernel(data.get('kernel'))
    except kernel_judge.KernelEvidenceError as exc:
        raise ReportError(str(exc))
    out['conntrack'] = marks.watch_of(data.get('fault'))
    if not all(isinstance(p, str) and p for p in out['pcaps']):
        raise ReportError(MSG_BAD_VALUE % ('pcaps', 'a list of paths of local pcap files', data.get('pcaps')))
    return out


def _fault(value):
    """The fault of the experiment: {'kind': 'drop'} (the default), or the idle timeout of a middlebox."""
    if value in (None, '', {}):
        return {'kind': 'drop'}
    if not isinstance(value, dict) or value.get('kind') not in ('drop', 'idle_timeout'):
        raise ReportError(MSG_BAD_VALUE % ('fault', FAULT, value))
    if value['kind'] == 'drop':
        return {'kind': 'drop'}
    seconds = _int(value.get('seconds'))
    if seconds is None or seconds < 1 or value.get('action') not in DEATH or not value.get('middlebox'):
        raise ReportError(MSG_BAD_VALUE % ('fault', FAULT, value))
    return {'kind': 'idle_timeout', 'seconds': seconds, 'action': value['action'],
            'middlebox': str(value['middlebox']), 'preset': value.get('preset') or None}


def _tolerance(value):
    if value in (None, '', {}):
        return dict(DEFAULT_TOLERANCE)
    what = 'a dict with %s' % ' and '.join('%s (0..%d)' % (key, high) for key, (high, _what) in TOLERANCE_RANGE.items())
    if not isinstance(value, dict) or set(value) - set(TOLERANCE_RANGE):
        raise ReportError(MSG_BAD_VALUE % ('tolerance', what, value))
    out = dict(DEFAULT_TOLERANCE)
    for key, (high, _what) in TOLERANCE_RANGE.items():
        if value.get(key) is not None:
            number = _number(value[key])
            if number is None or not 0 <= number <= high:
                raise ReportError(MSG_BAD_VALUE % ('tolerance', what, value))
            out[key] = number
    return out


def decode_pcap_files(items):
    """[(file name, bytes)] of pcap_files (name: the capture host's, content: the pcap base64-encoded), all checked
    before anything is written."""
    out = []
    for item in items or []:
        name = item.get('name')
        if not isinstance(name, str) or name in ('', '.', '..') or '/' in name or '\0' in name or len(name) > 200:
            raise ReportError(MSG_PCAP_FILE_NAME % (name,))
        try:
            content = base64.b64decode(item.get('content') or '', validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise ReportError(MSG_PCAP_FILE_CONTENT % (name, exc)) from exc
        out.append((name + '.pcap', content))
    return out


def check_pcaps(pcaps):
    """The pcaps that exist (regular files), and notes on the missing ones; refuses a FIFO, a directory, a device."""
    present, notes = [], []
    for path in pcaps:
        try:
            check_file(path)
        except PcapError as exc:
            if not exc.transient:
                raise ReportError(MSG_PCAP % exc)
            notes.append(MSG_PCAP_MISSING % path)
            continue
        present.append(path)
    return present, notes


def plan_dest(dest):
    """The directories to create for dest, outermost first; refuses a dest (or a parent) that is not a directory."""
    path = os.path.abspath(dest)
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        if not missing:
            raise ReportError(MSG_DEST_NOT_DIR % dest)
        raise ReportError(MSG_DEST_PARENT % (dest, path))
    return list(reversed(missing))


# ---------------------------------------------------------------- what the capture saw
