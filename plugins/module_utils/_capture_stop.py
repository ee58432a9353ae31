# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Stopping, reporting and removing captures (state=stopped, status, absent, purged; see _capture.py).

Each acts only on what a state record names and /proc still confirms
(_capture_record.ownership); a capture is stopped through _detached.terminate
(SIGTERM, a bounded wait, SIGKILL, a wait) and then its monitor is given the
moment it needs to record how the sniffer ended.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import os
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import (
    MARKER, CaptureError, count_packets, list_records, monitor_alive, netns_path, ownership, read_record, record_backend,
    refuse_special, remove_files)
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_start import stop_process
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import Process
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import netns_inode, netns_of

DEATH_WAIT = 2.0

MSG_NEEDS_TARGET = 'state=%s needs the handle of a capture (or its path)'
MSG_NOT_REMOVED = '%s was not removed: it is not a pcap this module wrote (%s); remove it yourself if it should go'


def analysis_options(expect, tolerance):
    """Refuse a bad expect or tolerance before anything is stopped (the analysis checks them the same way)."""
    try:
        from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import (  # pylint: disable=import-outside-toplevel
            PcapError, normalise_expect, normalise_tolerance)
    except ImportError:
        return
    try:
        normalise_expect(expect)
        normalise_tolerance(tolerance)
    except PcapError as exc:
        raise CaptureError(str(exc))


class CaptureStop:
    """status, stopped, absent and purged: a part of _capture.Capture (which inherits it) that uses its attributes
    check_mode, state_dir, netns_dir, stop_timeout, warnings and its methods paths, inspect, foreign and _result."""

    def _settled(self, path, record):
        """The record once the monitor of a gone sniffer has written how it ended (waits DEATH_WAIT at most)."""
        deadline = time.monotonic() + DEATH_WAIT
        while not record.get('finished') and not record.get('died') and monitor_alive(record) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
            record = read_record(self.state_dir, path) or record
        if not record.get('finished') and not record.get('died'):
            # the monitor writes before it exits: the read above may have come just before its write, and the
            # look at it just after its exit; once it is gone, what it wrote is there to read
            record = read_record(self.state_dir, path) or record
        return record

    @staticmethod
    def _wait_monitor(record):
        """After the sniffer ended: until its monitor has exited (it may still write the record), DEATH_WAIT at most."""
        if monitor_alive(record):
            monitor = record['monitor']
            Process(monitor['pid'], monitor['starttime'], MARKER).wait_gone(DEATH_WAIT)

    # status / stopped ---------------------------------------------------------------
    @staticmethod
    def _stop_reason(record, running, signalled, died):
        finished = (record or {}).get('finished') or {}
        if finished.get('reason'):
            return finished['reason']
        if signalled:
            return 'stopped'
        if running:
            return None
        if died:
            return 'died' if died.get('exit_code') is not None else 'killed'
        return 'killed' if record is not None else None

    def status(self, path, handle=None):
        """What the capture is doing now; changes nothing."""
        if path is None:
            raise CaptureError(MSG_NEEDS_TARGET % 'status')
        refuse_special(path)
        info = self.inspect(path, handle)
        record, died = info['record'], info['died']
        counted = count_packets(path)
        if info['running']:
            msg = 'capture running (pid %d, %d packets so far)' % (info['pid'], counted['packets'])
        elif died:
            msg = died['msg']
            self.warnings.append(msg)
        elif record is not None:
            msg = 'capture ended (%s): %d packets' % (self._stop_reason(record, False, None, None), counted['packets'])
        elif info['not_ours']:
            msg = info['not_ours']
        else:
            msg = 'no capture of this module writes %s (no state record in %s)' % (path, self.state_dir)
        return self._result(False, path, record, info['running'], msg, packets=counted['packets'], pcap=counted,
                            stop_reason=self._stop_reason(record, info['running'], None, died),
                            finished=(record or {}).get('finished') or None, died=died)

    def stopped(self, path, handle=None, expect=None, tolerance=None, analyse=True):
        if path is None:
            raise CaptureError(MSG_NEEDS_TARGET % 'stopped')
        refuse_special(path)
        if analyse:
            analysis_options(expect, tolerance)
        info = self.inspect(path, handle)
        state, pid, running, died = info['record'], info['pid'], info['running'], info['died']
        if info['not_ours']:
            self.warnings.append(info['not_ours'])
        signalled = None
        if running and not self.check_mode:
            signalled = stop_process(pid, info['starttime'], path, self.stop_timeout)
            self._wait_monitor(state)
            state = read_record(self.state_dir, path) or state
        counted = count_packets(path)
        if running:
            msg = ('would stop the capture (pid %d)' % pid) if self.check_mode else \
                ('stopped the capture (pid %d, %s)' % (pid, signalled))
        elif died:
            msg = died['msg']
            self.warnings.append(msg)
        elif info['not_ours']:
            msg = info['not_ours']
        else:
            msg = 'capture was not running'
        finished = (state or {}).get('finished') or None
        extra = {
            'was_running': running,
            'packets': counted['packets'],
            'pcap': counted,
            'stop_reason': self._stop_reason(state, running and self.check_mode, signalled, died),
            'finished': finished,
            'died': died,
        }
        if analyse and counted['readable']:
            extra.update(self.analysis(path, expect, tolerance))
        else:
            extra.update({'analysis': None})
        return self._result(bool(running), path, state, bool(running and self.check_mode), msg, **extra)

    def analysis(self, path, expect, tolerance):
        """The keepalive analysis of the pcap (plugins/module_utils/_pcap.py)."""
        try:
            # imported here: only stopping needs it
            from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import (  # pylint: disable=import-outside-toplevel
                PcapError, analyse)
        except ImportError as exc:
            self.warnings.append('no keepalive analysis: %s' % exc)
            return {'analysis': None, 'analysis_error': str(exc)}
        try:
            return {'analysis': analyse(path, expect=expect, tolerance=tolerance)}
        except PcapError as exc:
            self.warnings.append('keepalive analysis of %s failed: %s' % (path, exc))
            return {'analysis': None, 'analysis_error': str(exc)}

    # absent ----------------------------------------------------------------------
    def absent(self, path, handle=None):
        """Stop the capture and remove its pcap, state record and log: only a pcap its record proves ours."""
        if path is None:
            raise CaptureError(MSG_NEEDS_TARGET % 'absent')
        kind = refuse_special(path)
        info = self.inspect(path)
        record = info['record']
        record_file, log = self.paths(path)
        why = self.foreign(path, record, info['running']) if kind is not None else None
        if why:
            raise CaptureError(MSG_NOT_REMOVED % (path, why))
        if record is None:
            return self._result(False, path, None, False, 'nothing to remove: no capture of this module at %s' % path,
                                was_running=False, packets=0, pcap=count_packets(path), stop_reason=None,
                                finished=None, died=None, removed=[])
        result = self.stopped(path, handle, analyse=False)
        files = [p for p in (path, record_file, record_file + '.tmp', log) if os.path.lexists(p)]
        if self.check_mode:
            result['removed'] = files
            result['msg'] = '%s; would remove %s' % (result['msg'], ', '.join(files) or 'nothing')
        else:
            # the pcap once more, as the stopped capture left it, right before it goes
            why = self.foreign(path, read_record(self.state_dir, path) or record, False) if kind is not None else None
            if why:
                raise CaptureError(MSG_NOT_REMOVED % (path, why))
            pcap = [path] if kind is not None else []
            result['removed'] = remove_files(*(pcap + [record_file, record_file + '.tmp', log]))
            result['msg'] = '%s; removed %s' % (result['msg'], ', '.join(result['removed']) or 'nothing')
        result['changed'] = bool(result['changed'] or files)
        result['running'] = False
        result.pop('analysis', None)
        return result

    # purged ----------------------------------------------------------------------
    def purged(self, netns=None):
        """Stop every capture whose record says its sniffer runs in this network namespace (or in netns), and
        that /proc confirms: the same pid, start time, command line and namespace. Pcaps and records stay."""
        if netns:
            target = netns_inode(netns_path(netns, self.netns_dir)[1])
            where = 'network namespace %s' % netns
        else:
            target = netns_inode()
            where = 'this network namespace'
        stopped, others = [], 0
        for record in list_records(self.state_dir):
            path = record['path']
            if record.get('finished') or not ownership(record['pid'], record['starttime'], path)[0]:
                continue
            if record['netns_inode'] != target or netns_of(record['pid']) != target:
                others += 1
                continue
            entry = {'path': path, 'pid': record['pid'], 'iface': record.get('iface'), 'filter': record.get('filter'),
                     'netns': record.get('netns'), 'backend': record_backend(record), 'signal': None}
            if not self.check_mode:
                entry['signal'] = stop_process(record['pid'], record['starttime'], path, self.stop_timeout)
                self._wait_monitor(record)
            stopped.append(entry)
        verb = 'would stop' if self.check_mode else 'stopped'
        if stopped:
            msg = '%s %d capture(s) of %s: %s' % (verb, len(stopped), where, ', '.join(
                '%s (pid %d)' % (e['path'], e['pid']) for e in stopped))
        else:
            msg = 'no capture of this module runs in %s' % where
        if others:
            msg += '; left %d capture(s) of other network namespaces alone' % others
        return {'changed': bool(stopped), 'stopped': stopped, 'netns_inode': target, 'others_running': others,
                'msg': msg}
