# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The facts about Linux TCP keepalive that every part of the collection shares.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

One place for: the three settings and their sysctl names, the kernel's bounds
and defaults, the time the kernel takes to give up on a silent peer, the idle
timeouts of the load balancers and firewalls the audit and the lab know, and
the tolerance by which an observed interval still counts as the expected one.
"""

from __future__ import annotations

KEYS = ('time', 'intvl', 'probes')
SYSCTL = 'net.ipv4.tcp_keepalive_%s'
PROC_SYS = 'sys/net/ipv4/tcp_keepalive_%s'
PROC = '/proc/' + PROC_SYS
# the kernel's bounds for the sysctls and the per-socket options (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT)
BOUNDS = {'time': (1, 32767), 'intvl': (1, 32767), 'probes': (1, 127)}
KERNEL_DEFAULTS = {'time': 7200, 'intvl': 75, 'probes': 9}
UNITS = {'time': ' seconds', 'intvl': ' seconds', 'probes': ''}

# Load balancer / firewall idle timeouts in seconds, and what the box does with a packet of a flow it
# has forgotten: drop it silently, or answer with a TCP reset.
IDLE_TIMEOUTS = {
    'azure-lb': {'seconds': 240, 'action': 'drop'},        # Azure Load Balancer, default idle timeout 4 minutes
    'azure-lb-reset': {'seconds': 240, 'action': 'reset'},  # the same with "TCP reset on idle" enabled
    'aws-nlb': {'seconds': 350, 'action': 'reset'},        # AWS Network Load Balancer, fixed 350 s
    'gcp-vpc': {'seconds': 600, 'action': 'drop'},         # Google Cloud VPC connection tracking, 10 minutes
}

# An observed interval fits the expected one within seconds + percent of the expected value.
DEFAULT_TOLERANCE = {'seconds': 0.25, 'percent': 10.0}
TOLERANCE_RANGE = {'seconds': (32767, 'seconds'), 'percent': (100, 'percent of the expected value')}


def detection_seconds(values):
    """Seconds from the last segment received until the kernel gives up on a silent peer."""
    return values['time'] + values['intvl'] * values['probes']


def format_values(values):
    """'time/intvl/probes', e.g. '2/1/3'."""
    return '%d/%d/%d' % (values['time'], values['intvl'], values['probes'])


def allowed(expected, tolerance=None):
    """How far (seconds) an observed interval may lie from expected and still be it."""
    tol = tolerance or DEFAULT_TOLERANCE
    return tol['seconds'] + expected * tol['percent'] / 100.0


def fits(value, expected, tolerance=None):
    """Whether an observed interval counts as the expected one."""
    return abs(value - expected) <= allowed(expected, tolerance)
