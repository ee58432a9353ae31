# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network namespaces and processes of the live tests against the real kernel: namespaces journalled by inode and
removed only while still the ones made, the programs started inside them (test__keepalive_rules_kernel,
test__pcap_copies_kernel), the kernel's own keepalive counters of a namespace, and the collection's detached
programs run in a namespace (test__programs, test__program_request, test__program_in_flight)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import program_argv

LIVE = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ('ip', 'tcpdump', 'iptables')),
                          reason='needs root, iproute2, iptables and tcpdump (network namespaces, real captures)')


# a server that holds one accepted connection until its stdin ends: python -c HOLDING_SERVER ADDRESS PORT
HOLDING_SERVER = r'''
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
held = s.accept()[0]
sys.stdin.read()
'''


def run(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def counters(ns):
    """TcpExt TCPKeepAlive and TCPAbortOnTimeout of a namespace (/proc/net/netstat read inside it)."""
    lines = [line.split() for line in run(['ip', 'netns', 'exec', ns, 'cat', '/proc/net/netstat']).stdout.splitlines()]
    for names, values in zip(lines, lines[1:]):
        if names[0] == 'TcpExt:' and values[0] == 'TcpExt:':
            table = dict(zip(names[1:], (int(v) for v in values[1:])))
            return table['TCPKeepAlive'], table['TCPAbortOnTimeout']
    raise AssertionError('no TcpExt counters in %s' % ns)


class Namespaces:
    """The namespaces one run makes (each journalled by its inode, lo up) and the programs it starts in them; down()
    kills the programs and removes a namespace only while its inode is still the one made."""

    def __init__(self):
        self.journal = {}
        self.procs = []

    def add(self, ns):
        run(['ip', 'netns', 'add', ns])
        self.journal[ns] = os.stat('/run/netns/' + ns).st_ino
        run(['ip', '-n', ns, 'link', 'set', 'lo', 'up'])

    def start(self, argv, ns, first_line, stream='stdout'):
        """argv started inside ns, once it has written first_line (on stdout, or stderr)."""
        proc = subprocess.Popen(['ip', 'netns', 'exec', ns] + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        line = getattr(proc, stream).readline()
        assert first_line in line, (argv, line, proc.stderr.read() if stream == 'stdout' else '')
        return proc

    def down(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for ns, inode in self.journal.items():
            path = '/run/netns/' + ns
            if os.path.exists(path) and os.stat(path).st_ino == inode:   # still the namespace this run made
                subprocess.run(['ip', 'netns', 'del', ns], check=False)


def in_ns(ns, argv):
    """argv run inside the named namespace (nsenter)."""
    return [shutil.which('nsenter'), '--net=/run/netns/%s' % ns, '--'] + list(argv)


def start_program(ns, module, marker, args, **kw):
    """One of the collection's detached programs (_detached.program_argv) started inside ns with its marker."""
    return subprocess.Popen(in_ns(ns, program_argv(sys.executable, module, marker, args)), **kw)  # pylint: disable=consider-using-with


def until(condition, timeout=10.0):
    """Wait for condition() to hold; fail the test when it does not within timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'not within %s s' % timeout
        time.sleep(0.02)
