# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""timeline.png: the packets of the client's connection over time by direction, as the analyser classified them, with
the DROP, the RST, a FIN, the in-flight retransmissions and the idle timeout's marks.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import io

from ansible_collections.tcplab.keepalive.plugins.module_utils._report_packets import packets_of
from ansible_collections.tcplab.keepalive.plugins.module_utils._report_input import ReportError
from ansible_collections.tcplab.keepalive.plugins.module_utils import _report_marks as marks
from ansible_collections.tcplab.keepalive.plugins.module_utils import _in_flight as in_flight


MSG_NO_MATPLOTLIB = ('matplotlib is missing on the controller: pip install matplotlib (requirements-dev.txt pins it), or '
                     'set the report picture off')

# the picture's markers: the analyser's kind of a segment -> style
STYLES = {'probe': ('o', '#d62728', 'keepalive probe'), 'ack': ('s', '#2ca02c', 'ACK (answer)'),
          'rst': ('X', '#000000', 'RST'), 'other': ('.', '#7f7f7f', 'other segment')}
STYLE_OF = {'keepalive': 'probe', 'keepalive_ack': 'ack', 'answer': 'ack', 'rst': 'rst'}


def picture(pcap, report, lines, client_port, capture_start=None, connection_start=0.0, points=None):
    """timeline.png (its bytes): the packets over time by direction, with the DROP, the RST and a FIN marked.

    points are packets_of(pcap, client_port) when the caller has read them already (the pcap is read once)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError(MSG_NO_MATPLOTLIB)
    if points is None:
        points = packets_of(pcap, client_port)
    base = connection_start + (capture_start or (points[0][0] if points else 0.0))
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=110)
    seen = set()
    for t, direction, kind in points:
        style = STYLE_OF.get(kind, 'other')
        marker, color, label = STYLES[style]
        ax.scatter([t - base], [direction], marker=marker, color=color, s=60 if style != 'other' else 25,
                   label=None if style in seen else label, zorder=3)
        seen.add(style)
    due = [p['expected'] - connection_start for p in (report.get('observed') or {}).get('probes') or []
           if p.get('expected') is not None and capture_start is not None]
    if due:   # when the kernel's timer rules had each probe due (_keepalive_rules)
        ax.scatter(due, [1] * len(due), marker='|', color='#7f7f7f', s=300, label='due (kernel timer rules)', zorder=2)
    for t, who, what in lines:
        if what.startswith('DROP'):
            ax.axvline(t, color='#ff7f0e', linestyle='--', label='DROP')
            ax.annotate('DROP', (t, 1.35), color='#ff7f0e', ha='center', fontsize=8)
        elif 'RST' in what:
            ax.axvline(t, color='#000000', linestyle=':', label='RST')
        elif 'FIN' in what:
            ax.axvline(t, color='#9467bd', linestyle='-.', label='FIN')
        elif 'unanswered' in what:
            ax.annotate(what.split()[2], (t, 1.15), ha='center', fontsize=8, color='#d62728')
        elif what.startswith(in_flight.MARKS):
            in_flight.mark(ax, t, what)
    marks.draw_marks(ax, report)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(['server > client', 'client > server'])
    ax.set_ylim(-0.6, 1.6)
    ax.set_xlabel('seconds since the connection started')
    ax.set_title('keepalive %s: time %s s, intvl %s s, probes %s - verdict %s' % (
        report['run_id'], report['expected']['time'], report['expected']['intvl'], report['expected']['probes'],
        report['verdict']))
    ax.grid(True, axis='x', alpha=0.3)
    if ax.get_legend_handles_labels()[0]:   # a picture without packets (no connection found) has no legend
        ax.legend(loc='upper left', fontsize=8, ncol=3)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format='png')
    plt.close(fig)
    return out.getvalue()
