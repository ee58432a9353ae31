# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The segments of the client's connection in a pcap, as the analyser classifies them: read once per report and
shared by the picture (_report_picture.py) and the in-flight judge (_in_flight.py).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, analyse, client_connection

# the analyser's kinds of a segment that carry no data of the client's
NOT_DATA = ('keepalive', 'keepalive_ack', 'rst', 'fin', 'zero_window_probe')
FROM_CLIENT = 1


def packets_of(pcap, client_port):
    """(time since the epoch, direction (1: from the client), kind) of every segment of the client's connection in a
    pcap, as the analyser classifies them (keepalive, keepalive_ack, answer, rst, ...); [] when it cannot be read."""
    if not pcap:
        return []
    try:
        local = analyse(pcap, connection={'port': client_port}, packets=True)
    except PcapError:
        return []
    conn, _prober, client = client_connection(local, client_port)
    if conn is None:
        return []
    from_client = [FROM_CLIENT if endpoint == client else 0 for endpoint in conn['endpoints']]
    return [(local['start'] + t, from_client[who], kind) for t, who, kind in conn.get('packets') or []]


def data_times(points, after=None):
    """Times (seconds since the epoch) of the client's segments at or after `after` that are not keepalive probes,
    their answers, RST or FIN: its data, first sent and sent again."""
    return [t for t, direction, kind in points
            if direction == FROM_CLIENT and kind not in NOT_DATA and t >= (after or 0)]
