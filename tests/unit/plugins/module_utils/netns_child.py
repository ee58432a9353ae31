# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a function inside a network namespace, in a forked child, as a module does on a lab host.

The child enters the namespace with the audit's own setns, calls the function and sends its
JSON-able result back through a pipe; the test process itself never changes namespace."""
from __future__ import annotations

import json
import os

from ansible_collections.tcplab.keepalive.plugins.module_utils import _audit


def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)


def _child(path, function, wfd):
    code = 1
    try:
        fd = os.open(path, os.O_RDONLY)
        _audit._setns(fd)
        try:
            data = function()
        except _audit.AuditError as exc:
            data = {'error': str(exc)}
        data = json.dumps(data).encode('utf-8')
        while data:
            data = data[os.write(wfd, data):]
        code = 0
    finally:
        os._exit(code)


def in_netns(path, function):
    """function()'s result, computed in a child that entered the network namespace at path
    (an AuditError comes back as {'error': message}). A bare name means /run/netns/<name>."""
    if '/' not in path:
        path = '/run/netns/%s' % path
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(path, function, wfd)
    os.close(wfd)
    try:
        data = _read_all(rfd)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    if not data:
        raise AssertionError('the child in %s sent nothing (it failed before writing its result)' % path)
    return json.loads(data.decode('utf-8'))


def audit_in_netns(path, params):
    """run_audit(params) with the real /proc inside the namespace at path (or /run/netns/<path>)."""
    return in_netns(path, lambda: _audit.run_audit(params))
