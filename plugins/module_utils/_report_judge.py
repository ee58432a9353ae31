# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the capture saw of the experiment's connection (report.json's observed) and the verdict of the DROP fault.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import os

from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import allowed
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, analyse, client_connection
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap_wait import HINT_GAVE_UP, HINTS, connection_end


MSG_LOCAL_ANALYSIS = ('the analysis from the capture host lists no connection of the client port %d: %s was analysed '
                      'here for it')
MSG_LOCAL_FAILED = 'the local analysis of %s failed: %s'
MSG_NO_ANALYSIS = ('no analysis of the capture is available (the capture did not stop cleanly, or its file was not '
                   'fetched): the probes cannot be judged')
MSG_NO_CONNECTION = 'the capture holds no connection from the client port %d'
MSG_ENDED = ('the connection %s ended with a %s from the %s (%s) at +%.3f s %s, after %d answered and %d unanswered '
             'probes')


def find_connection(analysis, client_port, pcaps, expect=None, tolerance=None):
    """(analysis, notes): the given one when it lists the client's connection, else the first local pcap's analysis
    focused on the client port that does (the capture host lists only connections with keepalive activity)."""
    notes = []
    if client_connection(analysis, client_port)[0] is not None:
        return analysis, notes
    for pcap in pcaps:
        try:
            local = analyse(pcap, expect=expect, tolerance=tolerance, connection={'port': client_port})
        except PcapError as exc:
            notes.append(MSG_LOCAL_FAILED % (pcap, exc))
            continue
        if client_connection(local, client_port)[0] is not None:
            notes.append(MSG_LOCAL_ANALYSIS % (client_port, os.path.basename(pcap)))
            return local, notes
        if not analysis:
            analysis = local
    return analysis, notes


def observe(analysis, client_port):
    """The observed part of report.json."""
    conn, prober, client_end = client_connection(analysis, client_port)
    probes = (prober or {}).get('probes') or []
    unanswered_n = (prober or {}).get('final_unanswered') or 0
    final = probes[len(probes) - unanswered_n:] if unanswered_n else []
    spacing = [round(b['time'] - a['time'], 3) for a, b in zip(final, final[1:])]
    end = rst_info = None
    if conn is not None:
        end = connection_end(conn, client_end)
        if end is not None:
            end['connection'] = conn.get('name')
        rst = conn.get('rst')
        if rst:
            rst_info = {
                'from': 'client' if rst.get('from') == client_end else 'server',
                'at_s': round(rst['time'] - conn['start'], 3) if conn.get('start') is not None else rst.get('time'),
                'time': rst.get('time'),
                'flags': rst.get('flags'),
                'after_last_probe_s': rst.get('after_last_probe'),
            }
    return {
        'analysis_available': bool(analysis),
        'client_port': client_port,
        'client_endpoint': client_end,
        'connection_found': conn is not None,
        'end': end,
        'fin': (conn or {}).get('fin'),
        'answered_probes': (prober or {}).get('answered', 0),
        'unanswered_probes': unanswered_n,
        'probes_total': len(probes),
        'first_probe_idle_s': (prober or {}).get('idle_before_first_probe'),
        'probe_interval_s': spacing,
        'rst': rst_info,
        'probes': probes,
        'connection_start': (conn or {}).get('start'),
        'analysis_verdict': (prober or {}).get('verdict') or (conn or {}).get('verdict'),
        'analysis_reasons': ((prober or {}).get('reasons') or []) + ((conn or {}).get('reasons') or []),
        'notes': ((conn or {}).get('notes') or []) + ((prober or {}).get('notes') or []),
    }


def judge(expect, observed, client, idle_probes, tolerance, error=None):
    """Verdict and reasons of an experiment."""
    reasons = []
    if error:
        reasons.append('the experiment did not complete: %s' % error)
    end = observed.get('end')
    if end is not None and not (end['by'] == 'RST' and end['from'] == 'client' and end.get('after_probes')):
        reasons.append(ended_text(end, observed))
    if not observed.get('analysis_available', True):
        reasons.append(MSG_NO_ANALYSIS)
    elif not observed['connection_found']:
        reasons.append(MSG_NO_CONNECTION % observed.get('client_port', 0))
    if observed['answered_probes'] < idle_probes:
        reasons.append('saw %d answered probes before the DROP, expected at least %d'
                       % (observed['answered_probes'], idle_probes))
    if observed['unanswered_probes'] != expect['probes']:
        reasons.append('the client sent %d unanswered probes, expected %d'
                       % (observed['unanswered_probes'], expect['probes']))
    margin = allowed(expect['intvl'], tolerance)
    for index, gap in enumerate(observed['probe_interval_s'], start=2):
        if abs(gap - expect['intvl']) > margin:
            reasons.append('unanswered probe %d came %.3f s after the previous one, expected %d s +- %.2f s'
                           % (index, gap, expect['intvl'], margin))
    rst = observed['rst']
    if not rst:
        reasons.append('no RST was seen')
    else:
        if rst['from'] != 'client':
            reasons.append('the RST came from the %s, expected the client' % rst['from'])
        if rst.get('after_last_probe_s') is not None and abs(rst['after_last_probe_s'] - expect['intvl']) > margin:
            reasons.append('the RST came %.3f s after the last probe, expected %d s +- %.2f s'
                           % (rst['after_last_probe_s'], expect['intvl'], margin))
    if client.get('errno') != 'ETIMEDOUT':
        reasons.append('the client ended with %s, expected ETIMEDOUT' % (client.get('errno') or client.get('state')))
    for reason in observed.get('analysis_reasons') or []:
        if reason not in reasons and observed.get('analysis_verdict') == 'fail':
            reasons.append('analysis: %s' % reason)
    return ('pass' if not reasons else 'fail'), reasons


def ended_text(end, observed):
    """How the connection ended, in words, with a guess at which process went away."""
    if end['by'] == 'RST' and end['from'] == 'client' and end.get('after_probes'):
        hint = HINT_GAVE_UP % (end['after_probes'], '' if end['after_probes'] == 1 else 's')
    else:
        hint = HINTS[(end['by'], end['from'])]
    return MSG_ENDED % (end.get('connection'), end['by'], end['from'], end['endpoint'], end['after_start'], hint,
                        observed['answered_probes'], observed['unanswered_probes'])
