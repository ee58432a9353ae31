# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The idle-timeout fault in the report: the moment the middlebox forgot the flow (from its conntrack table, watched
by roles/experiment/files/conntrack_watch.py during the idle wait), its line in the timeline, and the marks of the
idle timeout and of the forgetting in timeline.png."""
from __future__ import annotations

import json

FORGOT = 'forgot the flow: its conntrack entry expired (idle timeout %d s)'
WHO = 'middlebox'
IDLE_COLOR = '#2ca02c'
FORGOT_COLOR = '#d62728'
IDLE_LABEL = 'idle timeout (%d s)'
FORGOT_LABEL = 'middlebox forgot the flow'
NOTE_WATCH = 'the middlebox\'s conntrack table could not be watched: %s'
NOTE_RENEWED = ('the middlebox\'s conntrack table: the flow was seen from +%s s to +%s s, its timeout renewed %d time(s), '
                '%s')


def watch_of(fault):
    """The conntrack watch (a dict) passed in fault['conntrack'] as JSON text or a dict; {} when absent or unreadable."""
    raw = fault.get('conntrack') if isinstance(fault, dict) else None
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    for line in reversed(raw.strip().splitlines()):     # the JSON is the script's last line
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else {}
    return {}


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def base_of(capture_start, connection_start, client):
    """The connection's start in seconds since the epoch: from the capture, else the client's connected_at."""
    if capture_start is not None:
        return capture_start + (connection_start or 0.0)
    return _number(client.get('connected_at'))


def observed(watch, base):
    """observed.* fields of an idle-timeout report: forgotten_at (epoch) and forgotten_s (on the timeline's axis,
    seconds since the connection started), None when the middlebox kept the flow or was not watched."""
    at = _number(watch.get('forgotten_at'))
    rel = round(at - base, 3) if at is not None and base is not None else None
    return {'forgotten_at': at, 'forgotten_s': rel}


def notes(watch, base):
    """One note on what the watch saw (or why it could not watch)."""
    if not watch:
        return []
    if watch.get('error'):
        return [NOTE_WATCH % watch['error']]
    first, last = _number(watch.get('first_seen_at')), _number(watch.get('last_seen_at'))
    if first is None or base is None:
        return [NOTE_WATCH % 'the flow was never in it']
    end = ('then it was gone' if watch.get('forgotten_at') is not None
           else 'still there at the end of the idle wait')
    return [NOTE_RENEWED % ('%.1f' % (first - base), '%.1f' % (last - base), int(watch.get('renewals') or 0), end)]


def with_forgetting(lines, report):
    """The timeline's lines with the middlebox's forgetting, in time order."""
    at = report.get('observed', {}).get('forgotten_s')
    if at is None or report.get('fault', {}).get('kind') != 'idle_timeout':
        return lines
    return sorted(list(lines) + [(at, WHO, FORGOT % report['fault']['seconds'])], key=lambda item: item[0])


def draw_marks(ax, report):
    """On the picture's axes: the idle timeout as a band from the connection's start (the last packet before the
    idle time) to the moment an idle flow is forgotten, and a line at the moment the middlebox forgot this one."""
    fault = report.get('fault') or {}
    if fault.get('kind') != 'idle_timeout':
        return
    seconds = fault['seconds']
    ax.axvspan(0, seconds, color=IDLE_COLOR, alpha=0.12, label=IDLE_LABEL % seconds, zorder=0)
    ax.annotate('idle timeout %d s' % seconds, (seconds, -0.5), color=IDLE_COLOR, ha='right', fontsize=8)
    at = (report.get('observed') or {}).get('forgotten_s')
    if at is not None:
        ax.axvline(at, color=FORGOT_COLOR, linestyle='-', linewidth=1.5, label=FORGOT_LABEL, zorder=2)
        ax.annotate(' forgot the flow at +%.1f s' % at, (at, -0.35), color=FORGOT_COLOR, ha='left', fontsize=8)
