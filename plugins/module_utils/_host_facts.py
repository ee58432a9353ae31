# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the experiment's preflight needs to know about a host, in one module run.

The preflight used to gather facts (setup), look for the tools (find) and ask
the capture module whether it can capture (capture in check mode): three
module runs per host, each a Python start on the target - about a second
apiece on a lab VM under TCG. This reads the same things in one: the facts in
the names setup gives them (effective_user_id, kernel, python, system,
distribution, distribution_version, pkg_mgr), the binaries in the shape of
ansible.builtin.find's files (so the missing_tools filter reads both), the
capture module's own check-mode answer, and the interface toward a peer
(``ip -o route get``). It only reads, and imports the capture code only when
asked to check capture.

look() is the same look judged, for the experiment_host module's start: the
tools a host's part needs (TOOL_BINARIES: the binaries that provide each),
which of them it lacks, and its shortfalls - not root, a kernel or a Python
older than the minimum, a tool missing - so that a start that looks at its
host first changes nothing on a host that cannot run its part. The tool table
is also the missing_tools and tool_binaries filters'.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import os
import re
import stat
import sys

BIN_DIRS = ('/usr/sbin', '/usr/bin', '/sbin', '/bin')
# (binary, pkg_mgr) in the order Ansible's own pkg_mgr fact prefers them on Linux
PKG_MGRS = (('apt-get', 'apt'), ('dnf5', 'dnf5'), ('dnf', 'dnf'), ('yum', 'yum'), ('zypper', 'zypper'),
            ('pacman', 'pacman'), ('apk', 'apk'), ('emerge', 'portage'), ('xbps-install', 'xbps'))
OS_RELEASE = ('/etc/os-release', '/usr/lib/os-release')
BINARY_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]*$')
ROUTE_DEV = re.compile(r'\bdev (\S+)')
MSG_NO_IP = 'ip not found: install iproute2'
MSG_NO_ROUTE = 'ip -o route get %s named no interface (rc=%d): %s'
MSG_BINARY = 'binaries: %r is not a program name (letters, digits, ".", "_", "+", "-"; no slash)'
# The binaries that provide each tool the experiment looks for (iptables: either backend will do). The tool
# capture has no binary of its own: tcpdump, or scapy in the Python that runs the modules (capture_check says).
TOOL_BINARIES = {
    'ip': ('ip',),
    'iptables': ('iptables', 'iptables-nft', 'iptables-legacy'),
    'curl': ('curl',),
    'nc': ('nc',),
}
CAPTURE = 'capture'
MSG_TOOL = 'unknown tool %%r: the experiment knows %s' % ', '.join(sorted(TOOL_BINARIES) + [CAPTURE])
MSG_MINIMUM = '%s %r is not a version (digits and dots, for example 4.5)'
# the oldest kernel (per-namespace keepalive sysctls) and Python (the modules') a host may have, when not given
MIN_KERNEL = '4.5'
MIN_PYTHON = '3.8'
# the shortfalls of a host, in the order the preflight's message names them
SHORTFALLS = ('user', 'kernel', 'python', 'tools')


class HostFactsError(Exception):
    """Bad input: the message names the fix."""


def check_binaries(names):
    """The binary names, checked (no paths, no patterns)."""
    for name in names:
        if not BINARY_NAME.match(name or ''):
            raise HostFactsError(MSG_BINARY % (name,))
    return list(names)


def find_binaries(names, dirs=BIN_DIRS):
    """Each of names found in dirs, as ansible.builtin.find lists a file (path, isreg, islnk, x bits)."""
    files = []
    for directory in dirs:
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            files.append({'path': path, 'isreg': stat.S_ISREG(st.st_mode), 'islnk': stat.S_ISLNK(st.st_mode),
                          'xusr': bool(st.st_mode & stat.S_IXUSR), 'xgrp': bool(st.st_mode & stat.S_IXGRP),
                          'xoth': bool(st.st_mode & stat.S_IXOTH)})
    return files


def os_release(paths=OS_RELEASE):
    """The key/value pairs of the first os-release file there is ({} without one)."""
    for path in paths:
        try:
            with open(path) as handle:
                text = handle.read()
        except (IOError, OSError):
            continue
        values = {}
        for line in text.splitlines():
            key, sep, value = line.partition('=')
            if sep and key.strip() and not key.startswith('#'):
                values[key.strip()] = value.strip().strip('"\'')
        return values
    return {}


def distribution(release, debian_version_path='/etc/debian_version'):
    """(distribution, distribution_version) as setup names them: Debian 12.8, Ubuntu 24.04, ..."""
    name = release.get('NAME', '').split(' ')[0] or release.get('ID', '').capitalize()
    version = release.get('VERSION_ID', '')
    if release.get('ID') == 'debian':
        try:
            with open(debian_version_path) as handle:
                point = handle.read().strip()
            if re.match(r'^\d+(\.\d+)*$', point):
                version = point
        except (IOError, OSError):
            pass
    return name, version


def pkg_mgr(dirs=BIN_DIRS):
    """The package manager's name as Ansible's pkg_mgr fact gives it, or None when none is known."""
    for binary, name in PKG_MGRS:
        if any(os.access(os.path.join(directory, binary), os.X_OK) for directory in dirs):
            return name
    return None


def facts():
    """The facts the preflight checks, under setup's names."""
    uname = os.uname()
    name, version = distribution(os_release())
    info = sys.version_info
    out = {
        'effective_user_id': os.geteuid(),
        'system': uname.sysname,
        'kernel': uname.release,
        'distribution': name,
        'distribution_version': version,
        'python': {'executable': sys.executable,
                   'version': {'major': info[0], 'minor': info[1], 'micro': info[2],
                               'releaselevel': info[3], 'serial': info[4]}},
    }
    manager = pkg_mgr()
    if manager:
        out['pkg_mgr'] = manager
    return out


def capture_check(tcpdump):
    """What tcplab.keepalive.capture says in check mode with iface lo: {backend, msg} or {failed, msg}."""
    # imported here: the capture code is only needed on the hosts that capture
    from ansible_collections.tcplab.keepalive.plugins.module_utils._capture import DEFAULTS, Capture
    from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import DEFAULT_STATE_DIR, CaptureError
    capture = Capture(sys.executable, check_mode=True, state_dir=DEFAULT_STATE_DIR, tcpdump=tcpdump)
    params = dict(DEFAULTS, filter=None, path=None, handle=None, state_dir=None, netns=None, state='started')
    try:
        result = capture.started(params)
    except (CaptureError, OSError) as exc:
        return {'failed': True, 'msg': str(exc)}
    return {'backend': result['backend'], 'msg': result['msg']}


def route_dev(run, ip, address):
    """The interface the host would send to address on (ip -o route get), with ip's line.

    dev is None, and msg says why, when ip is missing or has no route: the preflight only
    reads; the experiment then asks ip again when it starts the capture.
    """
    if ip is None:
        return {'address': address, 'dev': None, 'stdout': '', 'msg': MSG_NO_IP}
    rc, out, err = run([ip, '-o', 'route', 'get', address], check=False)
    found = ROUTE_DEV.search(out) if rc == 0 else None
    result = {'address': address, 'dev': found.group(1) if found else None, 'stdout': out.strip()}
    if not found:
        result['msg'] = MSG_NO_ROUTE % (address, rc, (err or out).strip())
    return result


def tool_binaries(tools):
    """The binary names that provide tools, in a stable order (capture has none of its own)."""
    out = []
    for tool in tools:
        if tool == CAPTURE:
            continue
        if tool not in TOOL_BINARIES:
            raise HostFactsError(MSG_TOOL % (tool,))
        out.extend(name for name in TOOL_BINARIES[tool] if name not in out)
    return out


def found_tools(files):
    """The tools whose binaries are among files (as find_binaries or ansible.builtin.find list them): an
    executable file or a link to one."""
    names = set()
    for entry in files:
        if not isinstance(entry, dict) or not entry.get('path'):
            continue
        runnable = entry.get('islnk') or (entry.get('isreg') and any(entry.get(bit) for bit in ('xusr', 'xgrp', 'xoth')))
        if runnable:
            names.add(str(entry['path']).rstrip('/').rsplit('/', 1)[-1])
    return {tool for tool, binaries in TOOL_BINARIES.items() if names.intersection(binaries)}


def missing_tools(needs, files, capture=None):
    """The tools of needs the host lacks; capture is capture_check's answer (None where it does not capture)."""
    for tool in needs:
        if tool != CAPTURE and tool not in TOOL_BINARIES:
            raise HostFactsError(MSG_TOOL % (tool,))
    have = found_tools(files)
    if isinstance(capture, dict) and capture.get('backend'):
        have.add(CAPTURE)
    return [tool for tool in needs if tool not in have]


def version_of(text, what='version'):
    """The leading whole numbers of a version string: '6.1.0-28-amd64' -> (6, 1, 0); ValueError without one."""
    found = re.match(r'^(\d+(?:\.\d+)*)', str(text))
    if not found:
        raise ValueError(MSG_MINIMUM % (what, text))
    return tuple(int(part) for part in found.group(1).split('.'))


def shortfalls(host, missing, min_kernel, min_python):
    """What keeps a host from running its part, in SHORTFALLS order: user (not root), kernel and python (older
    than the minimum), tools (missing). host is facts()."""
    try:
        kernel_min, python_min = version_of(min_kernel, 'min_kernel'), version_of(min_python, 'min_python')
        kernel = version_of(host['kernel'], 'kernel')
    except ValueError as exc:
        raise HostFactsError(str(exc)) from exc
    python = host['python']['version']
    found = {
        'user': host['effective_user_id'] != 0,
        'kernel': kernel < kernel_min,
        'python': (python['major'], python['minor']) < python_min,
        'tools': bool(missing),
    }
    return [name for name in SHORTFALLS if found[name]]


def look(tools, min_kernel, min_python, tcpdump):
    """The look of a host for a start: {facts, capture (when tools has capture), missing, shortfalls}."""
    out = {'facts': facts()}
    if CAPTURE in tools:
        out['capture'] = capture_check(tcpdump)
    out['missing'] = missing_tools(tools, find_binaries(tool_binaries(tools)), out.get('capture'))
    out['shortfalls'] = shortfalls(out['facts'], out['missing'], min_kernel, min_python)
    return out
