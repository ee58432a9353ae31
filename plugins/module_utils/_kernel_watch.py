# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The watch of the other connections of the client's namespace (kernel_counters' watch option).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The kernel's counters count every connection of a namespace; on a VM the controller's SSH connection probes during
the run (sshd: TCPKeepAlive yes, and the shortened sysctls). The watch is a tcpdump on every interface of the
namespace (``-i any``, so a connection on lo or on a second interface is seen too), headers only (``-s 128``), of
every TCP segment but the experiment's connection, started before the first kernel sample and stopped after the
last. When it stops, _kernel_watch_scan finds the keepalive probes, RSTs and retransmissions the namespace sent
(the other connections are seen mid-stream: the rule needs no handshake), and the times go to the report
(_kernel_others.count). The pcap holds other connections' headers: it is removed when the watch stops, and by
``absent``.

Lifecycle (as _detached.py's other processes): tcpdump is spawned detached; its state record (``<path>.watch.json``,
0600) keeps its pid, start time and namespace; stop and absent signal only a process whose start time and command
line (tcpdump, ``-i any``, this pcap) prove it ours, and remove only files the record names. ``-G seconds -W 1``
ends it by itself after ``seconds`` (a dead-man for a lost controller). tcpdump exits on SIGTERM without reading
what the kernel still holds for it, so before it is stopped a marker (a connection attempt to a closed port on lo)
must have reached its pcap: then everything before the end sample has (drain()). It runs in immediate mode, so the
marker is there at once, not up to a second later.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils import _detached
from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_evidence import local_addresses, sample
from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_watch_scan import WatchScanError, cooked, records, scan, tcp_of

SNAPLEN = 128
READY_WAIT = 30.0  # returns once tcpdump listens; a lab VM under software emulation on a loaded machine is slow to start it
DRAIN_WAIT = 5.0
SECONDS_BOUNDS = (1, 86400)
MSG_NO_TCPDUMP = ('the watch of the other connections needs tcpdump on the client (apt-get install tcpdump, '
                  'or set experiment_captures to client or both so that the experiment installs it)')
MSG_NOT_READY = 'the watch (tcpdump -i any) did not start within %.0f s: %s'
MSG_RUNNING = 'a watch of %s is already running (pid %d): stop it first (watch: stopped or absent)'
MSG_SECONDS = 'watch_seconds must be 1..86400, got %r'
MSG_PATH = 'watch_path must be an absolute path of a file to create, got %r'
MSG_BEHIND = ('its tcpdump had not caught up within %.0f s when it was to stop (a connection attempt on lo, sent as a '
              'marker, was not in its pcap): what it saw may lack the last segments')
MSG_FOREIGN = 'not removing %s: %s is not the record of a watch of this path'


class WatchError(RuntimeError):
    """The watch cannot be started or stopped; the message says why and what to do."""


RECORD_SUFFIX = '.watch.json'


def record_path(path):
    return path + RECORD_SUFFIX


def watch_filter(port, peer_port):
    """Every TCP segment but the experiment's connection (its two ports)."""
    if port and peer_port:
        return 'tcp and not (port %d and port %d)' % (port, peer_port)
    return 'tcp and not port %d' % port if port else 'tcp'


def argv_of(tcpdump, path, seconds, bpf):
    # --immediate-mode: each segment is handed to tcpdump as it comes, not when the kernel's buffer block fills or
    # its 1 s timeout ends (which the marker of drain() waited for)
    return [tcpdump, '-i', 'any', '-n', '-U', '--immediate-mode', '-s', str(SNAPLEN), '-Z', 'root', '-G', str(seconds), '-W', '1',
            '-w', path, bpf]


def _proof(path):
    def ours(argv):
        return bool(argv) and os.path.basename(argv[0]) == 'tcpdump' and 'any' in argv and path in argv
    return ours


def _process(record, path):
    if not isinstance(record, dict) or record.get('path') != path or not _detached.valid_pid(record.get('pid')):
        return None
    return _detached.Process(record['pid'], record.get('start'), _proof(path))


def _ready(log, proc, deadline):
    while time.time() < deadline:
        text = (_detached.read_regular(log, 4096) or b'').decode('utf-8', 'replace')
        if 'listening on any' in text:
            return True, text
        if proc.poll() is not None:
            return False, text.strip() or 'tcpdump exited with %s' % proc.returncode
        time.sleep(0.02)
    return False, 'no "listening on any" from tcpdump'


def check(path, seconds):
    if not isinstance(path, str) or not os.path.isabs(path) or path.endswith('/'):
        raise WatchError(MSG_PATH % (path,))
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not SECONDS_BOUNDS[0] <= seconds <= SECONDS_BOUNDS[1]:
        raise WatchError(MSG_SECONDS % (seconds,))


def start(path, port=None, peer_port=None, seconds=3600, which=shutil.which):
    """Start the watch into path (a new pcap); {'path', 'pid', 'filter'} once tcpdump listens."""
    check(path, seconds)
    old = _process(_detached.load_record(record_path(path)), path)
    if old is not None and old.ours():
        raise WatchError(MSG_RUNNING % (path, old.pid))
    tcpdump = which('tcpdump') or next((p for p in ('/usr/sbin/tcpdump', '/usr/bin/tcpdump') if os.path.exists(p)), None)
    if not tcpdump:
        raise WatchError(MSG_NO_TCPDUMP)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    bpf = watch_filter(port, peer_port)
    log = path + '.watch.log'
    proc = _detached.spawn(argv_of(tcpdump, path, seconds, bpf), log=log)
    record = dict(_detached.facts(proc.pid), path=path, log=log, filter=bpf, started_at=time.time())
    _detached.save_record(record_path(path), record)
    ok, text = _ready(log, proc, time.time() + READY_WAIT)
    if not ok:
        stop_process(record, path)
        remove_files(path)
        raise WatchError(MSG_NOT_READY % (READY_WAIT, text))
    return {'path': path, 'pid': proc.pid, 'filter': bpf}


def stop_process(record, path):
    """Stop the recorded tcpdump when it is still ours; whether it has gone."""
    proc = _process(record, path)
    if proc is None or not proc.ours():
        return True
    return _detached.terminate([proc]).gone


def remove_files(path):
    """Remove the pcap, the log and the record of a watch (only when the record names this path)."""
    record = _detached.load_record(record_path(path))
    if record is not None and record.get('path') != path:
        raise WatchError(MSG_FOREIGN % (path, record_path(path)))
    for name in (path, path + '.watch.log', record_path(path)):
        try:
            os.unlink(name)
        except FileNotFoundError:
            continue


def _marker_seen(path, port):
    try:
        with open(path, 'rb') as handle:
            data = handle.read()
        for _t, linktype, packet in records(data):
            frame = cooked(linktype, packet)
            seg = tcp_of(frame[1], frame[2]) if frame else None
            if seg is not None and seg[3] == port:
                return True
    except (IOError, OSError, WatchScanError):
        return False
    return False


def drain(path, wait=DRAIN_WAIT):
    """Make the watch catch up before it is stopped (tcpdump exits on SIGTERM without reading what the kernel still
    holds for it): a connection attempt to a closed port on lo - its SYN passes the filter - and wait until the SYN is
    in the pcap. Whether it was."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    finally:
        probe.close()
    knock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    knock.settimeout(1.0)
    try:
        knock.connect(('127.0.0.1', port))
    except OSError:
        pass
    finally:
        knock.close()
    deadline = time.time() + wait
    while time.time() < deadline:
        if _marker_seen(path, port):
            return True
        time.sleep(0.02)
    return False


def stop(path):
    """Stop the watch, find in its pcap what the namespace's other connections sent (_kernel_watch_scan) and remove
    its files; {'seen': ...} or {'error': why}."""
    record = _detached.load_record(record_path(path))
    if record is None:
        return {'error': 'no watch of %s was running' % path}
    drained = drain(path)
    gone = stop_process(record, path)
    try:
        result = {'seen': scan(path, local_addresses())} if gone else {'error': 'its tcpdump did not stop'}
    except (IOError, OSError, WatchScanError) as exc:
        result = {'error': 'its pcap cannot be read: %s' % exc}
    if not drained and 'seen' in result:
        result = {'error': MSG_BEHIND % DRAIN_WAIT}
    remove_files(path)
    return result


def absent(path):
    """Stop a watch that still runs and remove its files; whether there was one. Only a state record that names this
    path proves the files ours: without one, a file at path is left alone (never removed by its name)."""
    record = _detached.load_record(record_path(path))
    if not isinstance(record, dict) or record.get('path') != path:
        return False
    stop_process(record, path)
    remove_files(path)
    return True


def purgeable(directory):
    """The watches in directory that run (or ran) in this namespace: the paths whose state record names them and this
    namespace's inode."""
    here = _detached.netns_of(os.getpid())
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    paths = []
    for name in names:
        if not name.endswith(RECORD_SUFFIX):
            continue
        path = os.path.join(directory, name[:-len(RECORD_SUFFIX)])
        record = _detached.load_record(record_path(path))
        if isinstance(record, dict) and record.get('path') == path and here is not None and record.get('netns') == here:
            paths.append(path)
    return paths


def purge(directory, check_mode=False):
    """rollback.yml after a lost controller: stop every watch of this namespace whose record is in directory (its pid,
    start time and command line prove the process ours) and remove the files its record names; the paths."""
    paths = purgeable(directory)
    if not check_mode:
        for path in paths:
            absent(path)
    return paths


def act(port=None, peer_port=None, watch=None, path=None, seconds=3600, check_mode=False):
    """The kernel_counters module's work in the calling process's namespace: [sample, watch result or None, changed].

    started: the watch starts, then the sample is taken (it lies inside the watched time); stopped: the sample first,
    then the watch stops and its analysis is returned; absent: a watch still running stops, its files go; purged: path
    is a directory, every watch of this namespace recorded in it is stopped and its files go."""
    if watch is None:
        return [sample(port, peer_port), None, False]
    check(path, seconds)
    if watch == 'purged':
        purged = purge(path, check_mode)
        return [sample(port, peer_port), {'path': path, 'purged': purged}, bool(purged)]
    if watch == 'started':
        if check_mode:
            return [sample(port, peer_port), {'path': path}, True]
        started = start(path, port, peer_port, seconds)
        return [sample(port, peer_port), started, True]
    taken = sample(port, peer_port)
    if watch == 'stopped':
        return [taken, {'path': path} if check_mode else dict(stop(path), path=path), True]
    record = _detached.load_record(record_path(path))
    removed = (isinstance(record, dict) and record.get('path') == path) if check_mode else absent(path)
    return [taken, {'path': path, 'removed': removed}, removed]
