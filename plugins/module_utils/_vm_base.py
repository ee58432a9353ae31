# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the parts of a lab VM share: its error, the names it is known by, reading its console.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

A lab VM (_vm.Vm) is known by its marker (QEMU's ``-name``, which stays in
the process's argv and proves ownership), a MAC and a tap name, all derived
from the lab id and the VM's name.
"""

from __future__ import annotations

import hashlib
import re

MARKER_PREFIX = 'tcplab-vm'


class VmError(Exception):
    """A lab VM cannot be started or stopped; the message names the fix."""


def marker(lab_id, name):
    """The QEMU -name of a lab VM: it stays in the process's argv, which proves ownership."""
    return '%s:%s:%s' % (MARKER_PREFIX, lab_id, name)


def _digest(lab_id, name):
    return hashlib.sha256(marker(lab_id, name).encode('utf-8')).hexdigest()


def mac_address(lab_id, name):
    """A stable, locally administered MAC in QEMU's 52:54:00 range."""
    tail = _digest(lab_id, name)[:6]
    return '52:54:00:%s:%s:%s' % (tail[0:2], tail[2:4], tail[4:6])


def tap_name(prefix, lab_id, name):
    """The tap of a lab VM (at most 15 characters)."""
    return prefix + _digest(lab_id, name)[:15 - len(prefix)]


def read_text(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('utf-8', 'replace')
    except (IOError, OSError):
        return ''


def console_tail(path, lines=25):
    text = read_text(path).replace('\r', '')
    text = re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '', text)  # colour codes of systemd's status lines
    return '\n'.join(text.rstrip('\n').split('\n')[-lines:])
