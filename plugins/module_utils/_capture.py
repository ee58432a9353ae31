# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A detached capture: start it, find it again from its handle, stop it.

Two backends write the same pcap. With scapy (where the module's Python has
it) the sniffer is a separate Python process (_program_capture.py);
with tcpdump (where it has not) tcpdump runs under a monitor written for the
target's own Python (the same program). Either outlives the
module and the Ansible connection, has its BPF filter compiled by libpcap and
attached *before* it reports ready, so a capture that the module reports as
started sees every later packet, and writes a pcap (mode 0600) packet by
packet, so a SIGKILLed capture still leaves a readable file. A monitor process
(the sniffer's parent) records how it ended when it did not say so itself (a
signal, an exit code).

What the module made is proven by a state record in ``state_dir`` (one per
pcap path): the pcap's path and identity (device and inode), the sniffer's
pid, start time and network-namespace inode, and its monitor. Stopping,
removing and purging act only on what such a record names and what /proc
still confirms; a path alone proves nothing.

The parts: this file (options, the Capture class and its started state),
_capture_record.py (state records, files, ownership), _capture_start.py
(launching the program), _capture_stop.py (status, stopped, absent,
purged), _program_capture.py (the detached program of both backends) and
_capture_tcpdump.py (tcpdump's argv and ownership).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import os
import re

from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import (
    DEFAULT_STATE_DIR, MSG_CHANGED, MSG_NO_END, MSG_NO_RECORD, MSG_REPLACED, CaptureError, check_dir, death, make_handle,
    netns_path, ownership, read_record, record_backend, record_identity, record_paths, refuse_special)
# pcap_info follows a capture through liveness(), imported from here
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import liveness  # noqa: F401  pylint: disable=unused-import
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_start import (
    MSG_NO_SCAPY, MSG_NOT_CAPTURE, STOP_TIMEOUT, CaptureStart)
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_stop import CaptureStop
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NETNS_DIR
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import starttime as proc_starttime

DEFAULT_DIR = '/var/tmp/tcplab-keepalive/captures'
BACKENDS = ('auto', 'scapy', 'tcpdump')
DEFAULTS = {
    'backend': 'auto',
    'iface': 'lo',
    'snaplen': 262144,
    'max_packets': 1000000,
    'max_seconds': 3600,
    'max_bytes': 200 * 1000 * 1000,
}
# tcpdump's largest snapshot length (MAXIMUM_SNAPLEN)
MAX_SNAPLEN = 262144
# (low, high, unit) of the numeric options; a pcap of fewer than 1024 bytes holds a handful of small frames at best
LIMITS = {
    'snaplen': (64, MAX_SNAPLEN, 'bytes kept of each packet'),
    'max_packets': (1, 2 ** 40, 'packets'),
    'max_seconds': (1, 10 ** 9, 'seconds'),
    'max_bytes': (1024, 2 ** 50, 'bytes of pcap, its 24-byte header and 16 bytes per packet included'),
}
READY_TIMEOUT = 120.0  # the start returns once the filter is attached; a lab VM under software emulation on a loaded
#                        machine has needed more than 30 s to start a Python process
IFACE_RE = re.compile(r'^[^\s/]{1,15}$')

MSG_NO_TCPDUMP = ('tcpdump is not installed on the target (not found in PATH or the sbin directories): install it '
                  '(apt-get install tcpdump) or use backend: scapy')
MSG_NO_BACKEND = ('no capture backend on the target: scapy is not importable by %s and tcpdump is not installed '
                  '(not found in PATH or the sbin directories): install one of them - apt-get install tcpdump, or '
                  'apt-get install python3-scapy (scapy for the Python that runs the modules)')
MSG_BACKEND = 'backend must be one of auto, scapy, tcpdump, got %r'
MSG_RUNNING_OTHER = ('a capture with other settings is running on %s (%s): stop it first '
                     '(state: stopped) or choose another path')
MSG_NOT_OURS = 'pid %d is not the capture of %s (%s): not signalled; the capture is not running'
MSG_INT = '%s must be an integer %d..%d (%s), got %r'
MSG_IFACE = 'iface %r is not an interface name'
MSG_FILTER = 'filter must be a string, got %r'
MSG_STATE_DIR = 'state_dir must be an absolute path other than /, got %r'
FIX_PATH = 'give a path whose directory is a directory (or move that file away)'
FIX_STATE_DIR = 'give another state_dir (or move that file away)'
FIX_DEFAULT_DIR = 'give a path elsewhere (or move that file away)'
MSG_PURGED_TARGET = ('state=purged stops every capture of the network namespace and takes no path or handle: '
                     'use state=stopped to stop one capture')


# -- validation ---------------------------------------------------------------

def _int_option(name, value):
    low, high, unit = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CaptureError(MSG_INT % (name, low, high, unit, value))
    return value


def validate(params, netns_dir=NETNS_DIR):
    """Checked and defaulted settings of a capture (a new dict)."""
    out = {}
    backend = params.get('backend')
    backend = DEFAULTS['backend'] if backend is None else backend
    if backend not in BACKENDS:
        raise CaptureError(MSG_BACKEND % (backend,))
    out['backend'] = backend
    iface = params.get('iface')
    iface = DEFAULTS['iface'] if iface is None else iface
    if not isinstance(iface, str) or not IFACE_RE.match(iface) or iface in ('.', '..'):
        raise CaptureError(MSG_IFACE % (iface,))
    out['iface'] = iface
    filt = params.get('filter')
    if filt is not None and not isinstance(filt, str):
        raise CaptureError(MSG_FILTER % (filt,))
    out['filter'] = (filt or '').strip() or None
    for name in ('snaplen', 'max_packets', 'max_seconds', 'max_bytes'):
        value = params.get(name)
        out[name] = DEFAULTS[name] if value is None else _int_option(name, value)
    out['netns'] = netns_path(params.get('netns'), netns_dir)[0] if params.get('netns') else None
    return out


def validate_state_dir(state_dir):
    if not isinstance(state_dir, str) or not os.path.isabs(state_dir) or not os.path.normpath(state_dir).strip('/'):
        raise CaptureError(MSG_STATE_DIR % (state_dir,))
    return os.path.normpath(state_dir)


def scapy_available():
    """True when the interpreter running this code can import scapy."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    try:
        return importlib.util.find_spec('scapy') is not None
    except (ImportError, ValueError):
        return False

# -- the states -------------------------------------------------------------------


class Capture(CaptureStart, CaptureStop):
    """started / status / stopped / absent / purged. Returns result dicts for the module."""

    def __init__(self, python, nsenter=None, check_mode=False, default_dir=DEFAULT_DIR, netns_dir=NETNS_DIR,
                 ready_timeout=READY_TIMEOUT, stop_timeout=STOP_TIMEOUT, state_dir=DEFAULT_STATE_DIR, tcpdump=None):
        self.python = python
        self.nsenter = nsenter
        self.tcpdump = tcpdump
        self.check_mode = check_mode
        self.default_dir = default_dir
        self.netns_dir = netns_dir
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.state_dir = validate_state_dir(state_dir)
        self.warnings = []

    def paths(self, path):
        """(state record, log) of the capture writing path."""
        return record_paths(self.state_dir, path)

    def inspect(self, path, handle=None):
        """{record, pid, starttime, running, not_ours, died} of the capture at path.

        The pid comes from the state record, else from the handle; it counts as
        running only when /proc shows our marker, the same pcap path and the
        same process start time. A recorded sniffer that is gone without its
        own account of the end has died: how comes from its monitor.
        """
        record = read_record(self.state_dir, path)
        source = record if record is not None else (handle if isinstance(handle, dict) else {})
        info = {'record': record, 'pid': source.get('pid'), 'starttime': source.get('starttime'),
                'running': False, 'not_ours': '', 'died': None}
        if info['pid'] is None or (record is not None and record.get('finished')):
            return info
        ours, why = ownership(info['pid'], info['starttime'], path)
        info['running'] = ours
        if ours:
            return info
        if record is None:
            if isinstance(info['pid'], int) and proc_starttime(info['pid']) is not None:
                info['not_ours'] = MSG_NOT_OURS % (info['pid'], path, why)
            return info
        record = self._settled(path, record)
        info['record'] = record
        if not record.get('finished'):
            info['died'] = death(record, self.paths(path)[1])
        return info

    # started -------------------------------------------------------------------
    def backend(self, requested):
        """The backend that runs a capture: auto takes scapy where this Python has it, else tcpdump."""
        scapy = requested != 'tcpdump' and scapy_available()
        if requested == 'scapy' and not scapy:
            raise CaptureError(MSG_NO_SCAPY % (self.python, 'ImportError: No module named scapy'))
        if scapy:
            return 'scapy'
        if not (self.tcpdump and os.path.isfile(self.tcpdump) and os.access(self.tcpdump, os.X_OK)):
            raise CaptureError(MSG_NO_TCPDUMP if requested == 'tcpdump' else MSG_NO_BACKEND % self.python)
        return 'tcpdump'

    def started(self, params):
        settings = validate(params, self.netns_dir)
        requested, settings['backend'] = settings['backend'], self.backend(settings['backend'])
        check_dir(self.state_dir, 'state_dir', self.state_dir, FIX_STATE_DIR, private=True)
        path = os.path.abspath(params['path']) if params.get('path') else None
        kind = None
        if path is not None:
            kind = refuse_special(path)
            directory = os.path.dirname(path)
            check_dir(directory, 'path', path, FIX_PATH, private=directory == self.default_dir)
            info = self.inspect(path)
            record = info['record']
            if info['running']:
                same = all(record.get(key) == settings[key] for key in
                           ('iface', 'filter', 'netns', 'snaplen', 'max_packets', 'max_seconds', 'max_bytes'))
                if not same or requested not in ('auto', record_backend(record)):
                    raise CaptureError(MSG_RUNNING_OTHER % (path, 'pid %s' % record.get('pid')))
                return self._result(False, path, record, True, 'capture already running (pid %d)' % record['pid'])
            why = self.foreign(path, record, False) if kind is not None else None
            if why:
                raise CaptureError(MSG_NOT_CAPTURE % (path, why))
        else:
            check_dir(self.default_dir, 'the capture directory', self.default_dir, FIX_DEFAULT_DIR, private=True)
        if self.check_mode:
            shown = path or os.path.join(self.default_dir, 'capture-<timestamp>-%s-<random>.pcap' % settings['iface'])
            return self._result(True, shown, None, False, 'would start a capture on %s to %s (with %s)'
                                % (settings['iface'], shown, settings['backend']), backend=settings['backend'])
        return self._start(settings, path, record_identity(record) if kind is not None else None)

    def foreign(self, path, record, running):
        """None when the file at path is the pcap record says this module wrote (or nothing is there); else why not.

        Device and inode name the file while the sniffer holds it open; once it
        ended, an inode may be reused by a file put in its place, so the size and
        times the capture left it with (recorded by the sniffer or its monitor)
        must match as well.
        """
        if record is None:
            return MSG_NO_RECORD % self.state_dir
        try:
            st = os.lstat(path)
        except OSError:
            return None
        recorded = record_identity(record)
        if (st.st_dev, st.st_ino) != recorded:
            return MSG_REPLACED % ((st.st_dev, st.st_ino) + recorded)
        if running:
            return None
        end = record.get('pcap_end')
        if not isinstance(end, dict):
            return MSG_NO_END
        if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (end.get('size'), end.get('mtime_ns'), end.get('ctime_ns')):
            return MSG_CHANGED % (st.st_size, st.st_ctime_ns, end.get('size') or 0, end.get('ctime_ns') or 0)
        return None

    def _result(self, changed, path, state, running, msg, **extra):
        result = {
            'changed': changed,
            'path': path,
            'handle': make_handle(path, state, self.state_dir),
            'running': running,
            'pid': (state or {}).get('pid'),
            'backend': record_backend(state),
            'msg': msg,
        }
        result.update(extra)
        if self.warnings:
            result['warnings'] = list(self.warnings)
        return result
