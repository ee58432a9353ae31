# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Experiment reports: the verdict, report.json, report.md with an annotated
timeline in the style of the walk-through's tcpdump output, and timeline.png.

The input is checked before anything is written (every missing or malformed
key is named with what to give), the pcaps must be regular files (a FIFO
would block the reader), and the three files are rendered in memory and
written only when all of them could be: a failure leaves no file and no
directory of this call behind.

One concern per file: _report_input.py (data checked, pcaps, the report
directory), _report_judge.py (what the capture saw, the DROP fault's verdict),
_report_idle.py (the idle-timeout fault), _in_flight.py (data in flight),
_kernel_judge.py (evidence.kernel), _report_text.py (report.md and the
timeline), _report_picture.py (timeline.png), _report_packets.py (the
client's segments, read once), _report_marks.py (the middlebox's
forgetting). This file puts them together and writes the files;
the names the report module and the tests use are importable from here.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json
import os

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_judge as kernel_judge
from ansible_collections.tcplab.keepalive.plugins.module_utils import _report_marks as marks
from ansible_collections.tcplab.keepalive.plugins.module_utils import _in_flight as in_flight
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_input import (  # noqa: F401 pylint: disable=unused-import
    FAULT, MSG_BAD_VALUE, MSG_DEST_NOT_DIR, MSG_DEST_PARENT, MSG_MISSING_KEY, MSG_NOT_DICT, MSG_PCAP, MSG_PCAP_MISSING,
    MSG_UNKNOWN_KEYS, OPTIONAL, REQUIRED, TRIPLE, ReportError, _tolerance, check_pcaps, decode_pcap_files, plan_dest,
    validate)
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_idle import (  # noqa: F401 pylint: disable=unused-import
    DEATH, MSG_IDLE_DIED, MSG_IDLE_SURVIVED, idle_sentences, judge_idle, what_met)
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_judge import (  # noqa: F401 pylint: disable=unused-import
    MSG_ENDED, MSG_LOCAL_ANALYSIS, MSG_LOCAL_FAILED, MSG_NO_ANALYSIS, MSG_NO_CONNECTION, ended_text, find_connection,
    judge, observe)
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_text import markdown, timeline
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_picture import (  # noqa: F401 pylint: disable=unused-import
    MSG_NO_MATPLOTLIB, STYLE_OF, STYLES, picture)
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_packets import packets_of

MSG_WRITE = 'cannot write the report in %s: %s'


def write_experiment(dest, data, pcap_files=None):
    """Write report.json, report.md and timeline.png into dest; returns (report dict, markdown).

    pcap_files (name, base64 content: the pcaps experiment_host returned) are written first as <dest>/<name>.pcap,
    where data['pcaps'] names them; they stay when the report fails later, since they are the run's evidence and
    their hosts no longer have them. Everything else is checked and rendered before the first write of the report;
    on a failure the report's files and the directories this call created are removed again."""
    data = validate(data)
    evidence = decode_pcap_files(pcap_files)
    if evidence:
        _write_all(dest, plan_dest(dest), evidence)
    pcaps, pcap_notes = check_pcaps(data['pcaps'])
    to_create = plan_dest(dest)
    client_port = data['client_port']
    analysis, analysis_notes = find_connection(data['analysis'], client_port, pcaps, data['expected'], data['tolerance'])
    observed = observe(analysis, client_port)
    # the client's segments, read from the first pcap once: the in-flight judge and the picture share them
    points = packets_of(pcaps[0] if pcaps else None, client_port)
    report = base_report(data, observed, analysis_notes + pcap_notes)
    extra = judge_fault(report, data, analysis, observed, points)
    add_kernel(report, data, analysis, observed)
    lines = marks.with_forgetting(timeline(observed, data['client'], data['drop_at'], analysis.get('start'),
                                           data['expected']), report)
    lines = in_flight.merge(lines, extra, analysis.get('start'), observed.get('connection_start'))
    report['timeline'] = [{'t': round(t, 3), 'who': who, 'what': what} for t, who, what in lines]
    text = markdown(report, lines)
    if data['fault']['kind'] == 'idle_timeout':
        text += '\n## Idle timeout\n\n' + ' '.join(idle_sentences(report)) + '\n'
    if data['in_flight']:
        text += in_flight.markdown(report)
    png = picture(pcaps[0] if pcaps else None, report, lines, client_port, analysis.get('start'),
                  observed.get('connection_start') or 0.0, points=points)
    files = (('report.md', text), ('timeline.png', png),
             ('report.json', json.dumps(report, indent=2, sort_keys=True) + '\n'))
    _write_all(dest, to_create, files)
    return report, text


def base_report(data, observed, notes):
    """report.json's common part (the verdict is judge_fault's)."""
    client = data['client']
    return {
        'run_id': data['run_id'], 'verdict': None, 'reasons': [], 'settings': data['settings'],
        'expected': data['expected'], 'governs': data['governs'], 'client_kind': data['client_kind'],
        'server_kind': data['server_kind'], 'capture_backend': data['capture_backend'], 'hosts': data['hosts'],
        'observed': {k: observed[k] for k in (
            'connection_found', 'end', 'answered_probes', 'unanswered_probes', 'first_probe_idle_s', 'probe_interval_s',
            'rst', 'probes_total', 'probes')},
        'client': {k: client.get(k) for k in ('state', 'errno', 'exit_code', 'error', 'seconds')},
        'tolerance': data['tolerance'], 'error': data['error'] or None, 'cleanup_errors': data['cleanup_errors'],
        'notes': observed['notes'] + notes + data['notes'], 'pcaps': data['pcaps'],
    }


def judge_fault(report, data, analysis, observed, points):
    """The verdict of the fault (the DROP's probes, the idle timeout's prediction, or the data in flight); returns the
    in-flight timeline's extra lines."""
    client, expect = data['client'], data['expected']
    if data['fault']['kind'] == 'idle_timeout':
        report['verdict'], report['reasons'], prediction = judge_idle(expect, data['fault'], client, data['error'])
        report['fault'], report['prediction'] = data['fault'], prediction
        report['observed']['survived'] = client.get('state') == 'answered'
        for key in ('connected_at', 'requested_at', 'answered_at', 'failed_at'):
            report['client'][key] = client.get(key)
        base = marks.base_of(analysis.get('start'), observed.get('connection_start'), client)
        report['observed'].update(marks.observed(data['conntrack'], base))
        report['notes'] += marks.notes(data['conntrack'], base)
        return []
    report['verdict'], report['reasons'] = judge(expect, observed, client, data['idle_probes'], data['tolerance'],
                                                 data['error'])
    if not data['in_flight']:
        return []
    return in_flight.apply(report, data['in_flight'], points, data['drop_at'], client, data['tolerance']['seconds'])


def add_kernel(report, data, analysis, observed):
    """evidence.kernel (every fault): the counters' deltas compared with the capture; a disagreement fails."""
    loopback = str((data['hosts'] or {}).get('loopback')).lower() in kernel_judge.BOOLS
    context = {'fault': data['fault']['kind'], 'in_flight': report['observed'].get('in_flight') if data['in_flight'] else None}
    kernel, reasons = kernel_judge.evidence(data['kernel'], analysis, observed, data['client'], loopback,
                                            data['client_port'], context)
    if not kernel:
        return
    report['evidence'] = {'kernel': kernel}
    report['notes'] += kernel['notes']
    report['reasons'] += reasons
    report['verdict'] = 'fail' if report['reasons'] else 'pass'


def _write_all(dest, to_create, files):
    """Create the missing directories and write the files; on a failure undo what this call made."""
    created, written = [], []
    try:
        for path in to_create:
            os.mkdir(path, 0o755)
            created.append(path)
        for name, content in files:
            path = os.path.join(dest, name)
            existed = os.path.lexists(path)
            atomic_write(path, content, 0o644)
            if not existed:
                written.append(path)
    except OSError as exc:
        for path in written:
            os.unlink(path)
        for path in reversed(created):
            try:
                os.rmdir(path)
            except OSError:
                pass
        raise ReportError(MSG_WRITE % (dest, exc.strerror or exc))
