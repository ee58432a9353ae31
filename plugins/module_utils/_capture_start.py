# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Starting a capture (state=started; see _capture.py): the pcap, the detached program, its ready report.

The program (_program_capture.py, both backends) is started through
_detached.spawn with the capture's MARKER and its JSON arguments on its
command line; it reports on a pipe as JSON lines until it is ready or has
failed. A failure leaves nothing behind: no pcap, state record, log or
directory the start made, and no process.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json
import os
import re
import select
import stat
import subprocess
import tempfile
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils import _program_capture
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import (
    DEFAULT_STATE_DIR, MARKER, MSG_REPLACED, CaptureError, identity, log_tail, make_dirs, ownership, read_record,
    record_identity, record_paths, remove_dirs, remove_files)
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_tcpdump import tcpdump_argv
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import LANG_ENV
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import Process, program_argv, spawn, terminate
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NETNS_DIR, nsenter_argv
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import starttime as proc_starttime

SCAPY_PIN = 'scapy==2.8.0'
STOP_TIMEOUT = 5.0

MSG_NO_SCAPY = ('scapy is not importable by %s: install it for the Python that runs the modules (a distribution\'s '
                'package such as apt-get install python3-scapy, or in a virtual environment pip install ' + SCAPY_PIN + '), '
                'or use backend: tcpdump (%s)')
MSG_TCPDUMP_EXEC = 'tcpdump could not be run: %s'
MSG_TCPDUMP_FAILED = 'tcpdump did not start capturing on %r in %s: %s'
MSG_NO_LIBPCAP = ('libpcap is not available to scapy, so the filter %r cannot be compiled (scapy would capture '
                  'unfiltered): install libpcap (apt-get install libpcap0.8) (%s)')
MSG_BAD_FILTER = 'bad filter %r: %s'
MSG_NO_IFACE = 'interface %r not found in %s: give an interface of that namespace (ip link) (%s)'
MSG_SOCKET = 'cannot open a packet socket on %r in %s (capturing needs root): %s'
MSG_PCAP_OPEN = 'the capture could not open its pcap %s: %s'
MSG_CHILD_DIED = 'the capture process exited before it was ready; its log said: %s'
MSG_TIMEOUT = 'the capture process was not ready within %d seconds (stopped it); its log said: %s'
MSG_NOT_CAPTURE = '%s exists and is not a capture of this module (%s): choose another path or remove the file yourself'
MSG_STOP_FAILED = 'pid %d (the capture of %s) did not exit after SIGTERM and SIGKILL'


def child_args(settings, path, ready_fd, state_dir=DEFAULT_STATE_DIR, pcap_id=None, tcpdump=None):
    """The JSON arguments of the sniffer process (of tcpdump's monitor, with tcpdump's argv, for backend tcpdump)."""
    record, log = record_paths(state_dir, path)
    args = {
        'backend': settings['backend'],
        'path': path,
        'state': record,
        'log': log,
        'pcap_id': list(pcap_id) if pcap_id else None,
        'iface': settings['iface'],
        'filter': settings['filter'],
        'snaplen': settings['snaplen'],
        'max_packets': settings['max_packets'],
        'max_seconds': settings['max_seconds'],
        'max_bytes': settings['max_bytes'],
        'netns': settings['netns'],
        'ready_fd': ready_fd,
    }
    if settings['backend'] == 'tcpdump':
        args['tcpdump_argv'] = tcpdump_argv(tcpdump, settings)
    return args


def capture_argv(python, args, nsenter=None, netns_dir=NETNS_DIR):
    """argv of the capture program (_program_capture.py); inside another namespace it runs under nsenter --net."""
    argv = program_argv(python, _program_capture, MARKER, args)
    if args.get('netns'):
        argv = nsenter_argv(nsenter, os.path.join(netns_dir, args['netns']), argv)
    return argv


def error_message(kind, detail, settings, python, path=None, backend='scapy'):
    """The message for an error the sniffer (or tcpdump's monitor) reported before it was ready."""
    where = 'network namespace %s' % settings['netns'] if settings.get('netns') else 'the target'
    if kind == 'scapy':
        return MSG_NO_SCAPY % (python, detail)
    if kind == 'libpcap':
        return MSG_NO_LIBPCAP % (settings['filter'], detail)
    if kind == 'filter' and backend == 'tcpdump':  # tcpdump says libpcap's words only
        return MSG_BAD_FILTER % (settings['filter'], detail)
    if kind == 'exec':
        return MSG_TCPDUMP_EXEC % detail
    if kind == 'tcpdump':
        return MSG_TCPDUMP_FAILED % (settings['iface'], where, detail)
    if kind == 'filter':
        # scapy says "Failed to compile filter expression 'x' (<pcap error>)"; keep the pcap part
        match = re.search(r'\((.*)\)\s*$', detail)
        return MSG_BAD_FILTER % (settings['filter'], match.group(1) if match else detail)
    if kind == 'iface':
        return MSG_NO_IFACE % (settings['iface'], where, detail)
    if kind == 'pcap':
        return MSG_PCAP_OPEN % (path, detail)
    return MSG_SOCKET % (settings['iface'], where, detail)


def stop_process(pid, starttime, path, timeout=STOP_TIMEOUT):
    """SIGTERM, wait, SIGKILL the capture of path while it is ours (_detached.terminate); the signal that ended it
    ('already exited' when it ended by itself first). Raises when it survived both."""
    start = proc_starttime(pid) if starttime is None else starttime  # a handle without one: ownership was proven
    ended = terminate(Process(pid, start, proof=lambda argv: ownership(pid, start, path)[0]), timeout, timeout)
    if not ended.gone:
        raise CaptureError(MSG_STOP_FAILED % (pid, path))
    return ended.signal or 'already exited'


class CaptureStart:
    """The start of a capture: a part of _capture.Capture (which inherits it) that uses its attributes python,
    nsenter, tcpdump, netns_dir, state_dir, default_dir, ready_timeout, stop_timeout and its methods paths,
    _wait_monitor and _result."""

    def _start(self, settings, path, ours):
        """Create the pcap (and directories), launch the sniffer; a failure leaves nothing behind.

        ours is the (device, inode) of the previous capture's pcap at path, which is truncated and reused; without
        it only a new file is created, never an existing one opened.
        """
        created, made = [], None
        record_file, log = (None, None)
        try:
            created += make_dirs(self.state_dir, 'state_dir')
            if path is None:
                created += make_dirs(self.default_dir, 'the capture directory')
                os.chmod(self.default_dir, 0o700)
                fd, path = tempfile.mkstemp(
                    prefix='capture-%s-%s-' % (time.strftime('%Y%m%dT%H%M%S'), settings['iface']),
                    suffix='.pcap', dir=self.default_dir)
            else:
                directory = os.path.dirname(path)
                created += make_dirs(directory, 'the directory of path')
                if directory == self.default_dir:
                    os.chmod(directory, 0o700)
                flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(path, flags if ours else flags | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                st = os.fstat(fd)
                if ours and (not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ours):
                    raise CaptureError(MSG_NOT_CAPTURE % (path, MSG_REPLACED % ((st.st_dev, st.st_ino) + ours)))
                os.ftruncate(fd, 0)
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            made = (st.st_dev, st.st_ino)
            record_file, log = self.paths(path)
            remove_files(record_file, record_file + '.tmp', log)  # the previous run's, at this path (ours, checked)
            state = self._launch(settings, path, made)
        except BaseException:
            if made is not None and identity(path) == made:
                remove_files(path)
            if record_file:
                remove_files(record_file, record_file + '.tmp', log)
            remove_dirs(created)
            raise
        return self._result(True, path, state, True, 'started a capture on %s (pid %d) to %s (with %s)'
                            % (settings['iface'], state['pid'], path, settings['backend']))

    def _launch(self, settings, path, made):
        record_file, log = self.paths(path)
        read_fd, write_fd = os.pipe()
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        argv = capture_argv(self.python, child_args(settings, path, write_fd, self.state_dir, made, self.tcpdump),
                            self.nsenter, self.netns_dir)
        env = dict(os.environ, **LANG_ENV)
        env['PYTHONUNBUFFERED'] = '1'
        try:
            first = spawn(argv, log_fd, pass_fds=(write_fd,), env=env)
        finally:
            os.close(write_fd)
            os.close(log_fd)
        try:
            reply = self._await_ready(read_fd, first)
        finally:
            os.close(read_fd)
        if reply.get('ready'):
            state = read_record(self.state_dir, path)
            if state is None or record_identity(state) != made:
                self._end_failed(reply, path)
                raise CaptureError(MSG_CHILD_DIED % ('no valid state record %s' % record_file))
            return state
        self._end_failed(reply, path)
        if 'error' in reply:
            raise CaptureError(error_message(reply['error'], reply.get('detail', ''), settings, self.python, path,
                                             settings['backend']))
        if reply.get('timeout'):
            raise CaptureError(MSG_TIMEOUT % (self.ready_timeout, log_tail(log) or '(nothing)'))
        raise CaptureError(MSG_CHILD_DIED % (log_tail(log) or '(nothing)'))

    def _end_failed(self, reply, path):
        """Stop the sniffer of a failed start (when it is ours) and wait for its monitor, before files go. A failed
        start leaves no process: a monitor still there after the wait (a starved machine) is ended too, while it is
        ours (its pid, start time and MARKER)."""
        if reply.get('pid') and reply.get('starttime'):
            ours, _why = ownership(reply['pid'], reply['starttime'], path)
            if ours:
                stop_process(reply['pid'], reply['starttime'], path, self.stop_timeout)
        self._wait_monitor({'monitor': {'pid': reply.get('monitor'), 'starttime': reply.get('monitor_starttime')}})
        terminate(Process(reply.get('monitor'), reply.get('monitor_starttime'), MARKER), term_wait=self.stop_timeout)

    def _await_ready(self, read_fd, first):
        """Merged JSON lines from the sniffer until ready, error, EOF or timeout."""
        deadline = time.monotonic() + self.ready_timeout
        buf, reply = b'', {}
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                reply['timeout'] = True
                break
            if not select.select([read_fd], [], [], left)[0]:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                try:
                    reply.update(json.loads(line.decode('utf-8', 'replace')))
                except ValueError:
                    continue
            if reply.get('ready') or 'error' in reply:
                break
        try:
            first.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
        return reply
