# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The tcpdump backend of the capture (see _capture.py): for targets whose Python has no scapy.

tcpdump writes the pcap itself. Its command line cannot carry the module's
marker, so it runs as the child of a small monitor process (the tcpdump
backend of _program_capture.py, run with ``python -c`` on the target's own
Python, standard library only)
whose command line carries the marker and the capture's arguments, the
tcpdump argv included. A process is this module's tcpdump only when its
parent is such a monitor for the same pcap, its command line is exactly the
argv the monitor was given, and its start time is the recorded one
(tcpdump_ownership). tcpdump is tied to the monitor's life (PR_SET_PDEATHSIG,
which survives the exec because ``-Z root`` keeps its credentials), so it
never outlives the monitor that proves it ours.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json

from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline as proc_cmdline
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import parent as parent_of

# the kernel buffer of the capture in KiB (tcpdump -B): tcpdump's default of 2 MiB drops bursts of 64 KiB loopback
# segments (measured: 130 of the 208 frames of a 2 MB send), 16 MiB drops none of them; tcpdump's resident memory is
# then about 38 MB
BUFFER_KIB = 16384
# tcpdump -c takes an int
COUNT_MAX = 2 ** 31 - 1


def tcpdump_argv(tcpdump, settings):
    """tcpdump's argv: the pcap on its stdout (the file the monitor opened and checked), packet-buffered, root kept."""
    argv = [tcpdump, '-i', settings['iface'], '-n', '-U', '--immediate-mode', '-Z', 'root', '-B', str(BUFFER_KIB),
            '-s', str(settings['snaplen']), '-c', str(min(settings['max_packets'], COUNT_MAX)), '-w', '-']
    if settings.get('filter'):
        argv += ['--', settings['filter']]
    return argv


def marked_args(argv, marker):
    """The JSON arguments after marker in a command line, or None."""
    if marker not in argv or argv.index(marker) + 1 >= len(argv):
        return None
    try:
        args = json.loads(argv[argv.index(marker) + 1])
    except ValueError:
        return None
    return args if isinstance(args, dict) else None


def tcpdump_ownership(pid, argv, path, marker):
    """(True, '') when pid is the tcpdump of the capture of path, (False, why) when it is another capture's tcpdump,
    None when its parent is no tcpdump monitor of this module."""
    parent = parent_of(pid)
    args = marked_args(proc_cmdline(parent), marker) if parent and parent > 1 else None
    if args is None or args.get('backend') != 'tcpdump':
        return None
    if args.get('path') != path:
        return False, 'it is the tcpdump of the capture to %s' % args.get('path')
    if argv != args.get('tcpdump_argv'):
        return False, 'its command line is not the tcpdump its monitor (pid %s) started: %s' % (parent, ' '.join(argv)[:200])
    return True, ''
