# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A detached capture: start it, find it again from its handle, stop it.

Two backends write the same pcap. With scapy (where the module's Python has
it) the sniffer is a separate Python process (CHILD_CODE, _capture_scapy.py);
with tcpdump (where it has not) tcpdump runs under a monitor written for the
target's own Python (MONITOR_CODE, _capture_tcpdump.py). Either outlives the
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

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import stat
import struct
import subprocess
import tempfile
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_scapy import CHILD_CODE
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_tcpdump import (
    MONITOR_CODE, marked_args, tcpdump_argv, tcpdump_ownership)
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import LANG_ENV
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import (
    cmdline as proc_cmdline, netns_inode, netns_of, starttime as proc_starttime)

MARKER = 'tcplab-keepalive-capture'
DEFAULT_DIR = '/var/tmp/tcplab-keepalive/captures'
DEFAULT_STATE_DIR = '/var/lib/tcplab-keepalive/capture'
NETNS_DIR = '/run/netns'
RECORD_SUFFIX = '.json'
LOG_SUFFIX = '.log'
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
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
# how long a report waits for the monitor to record how the sniffer ended
DEATH_WAIT = 2.0
ARPHRD_LOOPBACK = 772
PACKET_OUTGOING = 4
IFACE_RE = re.compile(r'^[^\s/]{1,15}$')
NETNS_NAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,64}$')
SCAPY_PIN = 'scapy==2.8.0'
REGULAR = 'a regular file'
KINDS = {
    stat.S_IFREG: REGULAR,
    stat.S_IFDIR: 'a directory',
    stat.S_IFLNK: 'a symbolic link',
    stat.S_IFIFO: 'a FIFO',
    stat.S_IFSOCK: 'a socket',
    stat.S_IFCHR: 'a character device',
    stat.S_IFBLK: 'a block device',
}

MSG_NO_SCAPY = ('scapy is not importable by %s: install it for the Python that runs the modules (a distribution\'s '
                'package such as apt-get install python3-scapy, or in a virtual environment pip install ' + SCAPY_PIN
                + '), or use backend: tcpdump (%s)')
MSG_NO_TCPDUMP = ('tcpdump is not installed on the target (not found in PATH or the sbin directories): install it '
                  '(apt-get install tcpdump) or use backend: scapy')
MSG_NO_BACKEND = ('no capture backend on the target: scapy is not importable by %s and tcpdump is not installed '
                  '(not found in PATH or the sbin directories): install one of them - apt-get install tcpdump, or '
                  'apt-get install python3-scapy (scapy for the Python that runs the modules)')
MSG_BACKEND = 'backend must be one of auto, scapy, tcpdump, got %r'
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
MSG_NEEDS_TARGET = 'state=%s needs the handle of a capture (or its path)'
MSG_HANDLE = 'handle must be the handle returned by state=started (a dict with path) or a pcap path, got %r'
MSG_HANDLE_PATH = 'handle is for %s but path is %s: give one of them'
MSG_NOT_CAPTURE = '%s exists and is not a capture of this module (%s): choose another path or remove the file yourself'
MSG_NO_RECORD = 'no state record for it in %s'
MSG_REPLACED = ('it is not the file the capture wrote: device %d inode %d, the record says device %d inode %d '
                '(replaced since)')
MSG_CHANGED = ('it is not the file as the capture left it: size %d, change time %d ns; the record says size %d, '
               'change time %d ns (replaced or modified since)')
MSG_NO_END = ("the capture ended without recording its pcap's final size and times (its monitor was killed too), "
              'so it cannot be told from a file put in its place')
MSG_NOT_REMOVED = '%s was not removed: it is not a pcap this module wrote (%s); remove it yourself if it should go'
MSG_NOT_REGULAR = ('%s is %s, not a regular file: give the path of a pcap (a capture only ever writes regular files); '
                   'nothing was opened or changed')
MSG_RUNNING_OTHER = ('a capture with other settings is running on %s (%s): stop it first '
                     '(state: stopped) or choose another path')
MSG_NOT_OURS = 'pid %d is not the capture of %s (%s): not signalled; the capture is not running'
MSG_DIED = "the capture's sniffer (pid %d) died: %s"
MSG_DIED_SIGNAL = 'killed by %s'
MSG_DIED_EXIT = 'exited with code %d, see %s'
MSG_DIED_UNKNOWN = 'it left no account of how (its monitor, pid %s, is gone too), see %s'
MSG_NETNS_NAME = 'netns %r is not a network namespace name: give a name from %s (ip netns list)'
MSG_NETNS_MISSING = 'network namespace %r not found at %s: create it (ip netns add %s) or fix the name'
MSG_INT = '%s must be an integer %d..%d (%s), got %r'
MSG_IFACE = 'iface %r is not an interface name'
MSG_FILTER = 'filter must be a string, got %r'
MSG_STATE_DIR = 'state_dir must be an absolute path other than /, got %r'
MSG_NOT_A_DIR = '%s %s cannot be used: %s is %s, not a directory: %s'
FIX_PATH = 'give a path whose directory is a directory (or move that file away)'
FIX_STATE_DIR = 'give another state_dir (or move that file away)'
FIX_DEFAULT_DIR = 'give a path elsewhere (or move that file away)'
MSG_DIR_NOT_PRIVATE = '%s %s is %s: it must be a real directory owned by uid %d; remove it or choose another %s'
MSG_MKDIR = 'cannot create %s %s: %s'
MSG_STOP_FAILED = 'pid %d (the capture of %s) did not exit after SIGTERM and SIGKILL'
MSG_PURGED_TARGET = ('state=purged stops every capture of the network namespace and takes no path or handle: '
                     'use state=stopped to stop one capture')


class CaptureError(Exception):
    """A capture cannot be started or stopped; the message names the fix."""


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


def netns_path(name, netns_dir=NETNS_DIR):
    """(name, path) of a named network namespace; raises when it does not exist."""
    text = str(name)
    if isinstance(name, bool) or not NETNS_NAME_RE.match(text) or text in ('.', '..'):
        raise CaptureError(MSG_NETNS_NAME % (name, netns_dir))
    path = os.path.join(netns_dir, text)
    if not os.path.exists(path):
        raise CaptureError(MSG_NETNS_MISSING % (text, path, text))
    return text, path


def scapy_available():
    """True when the interpreter running this code can import scapy."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    try:
        return importlib.util.find_spec('scapy') is not None
    except (ImportError, ValueError):
        return False


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


# -- files: what is at a path, state records ---------------------------------

def file_kind(path):
    """None when nothing is at path, else KINDS' description of it (never follows a symlink, never opens)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    return KINDS.get(stat.S_IFMT(mode), 'a special file')


def refuse_special(path):
    """Raise unless path is a regular file or absent: a FIFO, device, directory, socket or symlink is never opened."""
    kind = file_kind(path)
    if kind not in (None, REGULAR):
        raise CaptureError(MSG_NOT_REGULAR % (path, kind))
    return kind


def identity(path):
    """(device, inode) of what is at path (not following a symlink), or None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def record_identity(record):
    pcap = (record or {}).get('pcap') or {}
    return pcap.get('dev'), pcap.get('ino')


def record_paths(state_dir, path):
    """(state record, log) of the capture writing path: named after the pcap and a hash of its full path."""
    stem = re.sub(r'[^A-Za-z0-9._-]', '_', os.path.basename(path))[:64]
    stem = '%s-%s' % (stem, hashlib.sha256(path.encode('utf-8', 'surrogateescape')).hexdigest()[:16])
    base = os.path.join(state_dir, stem)
    return base + RECORD_SUFFIX, base + LOG_SUFFIX


def _read_regular(path, limit=1 << 20):
    """Bytes of a regular file (not through a symlink, never blocking on a FIFO), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(limit)


def _valid_record(data, path=None):
    """A record this module wrote: the marker, the pcap path and identity, the sniffer's pid, start time, namespace."""
    if not isinstance(data, dict) or data.get('marker') != MARKER or not isinstance(data.get('path'), str):
        return False
    if path is not None and data['path'] != path:
        return False
    numbers = [data.get(k) for k in ('pid', 'starttime', 'netns_inode')] + list(record_identity(data))
    return all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)


def read_record(state_dir, path):
    """The state record of the capture writing path, or None (also for a file that is not a valid record)."""
    blob = _read_regular(record_paths(state_dir, path)[0])
    try:
        data = json.loads(blob.decode('utf-8')) if blob else None
    except ValueError:
        return None
    return data if _valid_record(data, path) else None


def list_records(state_dir):
    """Every valid state record in state_dir (each stored under the name its path gives)."""
    try:
        names = sorted(os.listdir(state_dir))
    except OSError:
        return []
    records = []
    for name in names:
        if not name.endswith(RECORD_SUFFIX):
            continue
        blob = _read_regular(os.path.join(state_dir, name))
        try:
            data = json.loads(blob.decode('utf-8')) if blob else None
        except ValueError:
            continue
        if _valid_record(data) and \
                record_paths(state_dir, data['path'])[0] == os.path.join(state_dir, name):
            records.append(data)
    return records


def resolve_target(handle, path):
    """The pcap path named by a handle (dict or path string) and/or path."""
    from_handle = None
    if handle is not None:
        if isinstance(handle, dict) and isinstance(handle.get('path'), str) and handle['path']:
            from_handle = handle['path']
        elif isinstance(handle, str) and handle:
            from_handle = handle
        else:
            raise CaptureError(MSG_HANDLE % (handle,))
    if from_handle and path and os.path.abspath(from_handle) != os.path.abspath(path):
        raise CaptureError(MSG_HANDLE_PATH % (from_handle, path))
    target = from_handle or path
    return os.path.abspath(target) if target else None


def handle_state_dir(handle):
    """The state_dir a handle names, or None."""
    if isinstance(handle, dict) and isinstance(handle.get('state_dir'), str) and os.path.isabs(handle['state_dir']):
        return handle['state_dir']
    return None


def ownership(pid, starttime, path):
    """(True, '') when pid is the running capture writing path, else (False, why)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return False, 'no valid pid'
    now = proc_starttime(pid)
    if now is None:
        return False, 'no such process'
    argv = proc_cmdline(pid) or []
    if MARKER in argv:  # the scapy sniffer (or a monitor)
        args = marked_args(argv, MARKER)
        if args is None:
            return False, 'its command line has no capture arguments'
        if args.get('path') != path:
            return False, 'it captures to %s' % args.get('path')
        if args.get('backend') == 'tcpdump':
            return False, 'it is the monitor of the tcpdump capture of %s, not the capture' % path
    else:  # tcpdump: proven by its parent, the monitor, which carries the marker and tcpdump's argv
        ours = tcpdump_ownership(pid, argv, path, MARKER)
        if ours is None:
            return False, 'its command line is not a tcplab.keepalive capture: %s' % ' '.join(argv)[:200]
        if not ours[0]:
            return ours
    if starttime is not None and now != starttime:
        return False, 'it started at tick %d, the capture at tick %s (the pid was reused)' % (now, starttime)
    return True, ''


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
    """argv of the sniffer (of tcpdump's monitor); inside another namespace it runs under nsenter --net."""
    code = MONITOR_CODE if args.get('backend') == 'tcpdump' else CHILD_CODE
    argv = [python, '-c', code, MARKER, json.dumps(args, sort_keys=True)]
    if args.get('netns'):
        argv = [nsenter, '--net=%s' % os.path.join(netns_dir, args['netns']), '--'] + argv
    return argv


def make_handle(path, state, state_dir=DEFAULT_STATE_DIR):
    state = state or {}
    record, log = record_paths(state_dir, path) if path else (None, None)
    return {
        'path': path,
        'state_dir': state_dir,
        'state_path': record,
        'log_path': log,
        'pid': state.get('pid'),
        'starttime': state.get('starttime'),
        'marker': MARKER,
        'iface': state.get('iface'),
        'filter': state.get('filter'),
        'netns': state.get('netns'),
        'backend': record_backend(state),
    }


def record_backend(state):
    """The backend that runs (ran) a capture; records of releases before backends were scapy's."""
    if not state:
        return None
    return state.get('backend') or 'scapy'


def count_packets(path):
    """Packets of a pcap, reading record headers only; a torn last record is not counted.

    Returns {'packets', 'bytes', 'complete', 'readable', 'linktype'}. Only a regular file is read.
    """
    result = {'packets': 0, 'bytes': 0, 'complete': True, 'readable': False, 'linktype': None}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (IOError, OSError):
        return result
    with os.fdopen(fd, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return result
        head = handle.read(24)
        if len(head) < 24:
            result['complete'] = False
            return result
        magic = head[:4]
        if magic in (b'\xd4\xc3\xb2\xa1', b'\x4d\x3c\xb2\xa1'):
            endian = '<'
        elif magic in (b'\xa1\xb2\xc3\xd4', b'\xa1\xb2\x3c\x4d'):
            endian = '>'
        else:
            return result
        result['readable'] = True
        result['linktype'] = struct.unpack(endian + 'I', head[20:24])[0]
        record = struct.Struct(endian + 'IIII')
        size = 24
        while True:
            header = handle.read(16)
            if not header:
                break
            if len(header) < 16:
                result['complete'] = False
                break
            caplen = record.unpack(header)[2]
            data = handle.read(caplen)
            if len(data) < caplen:
                result['complete'] = False
                break
            result['packets'] += 1
            size += 16 + caplen
        result['bytes'] = size
    return result


# -- directories ---------------------------------------------------------------

def _blocker(directory):
    """None when directory is (or can be made as) a directory; else (the path in the way, what it is)."""
    current = directory
    while True:
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(current)
            if parent == current:
                return None
            current = parent
            continue
        except OSError as exc:
            return current, 'unreadable (%s)' % exc.strerror
        if stat.S_ISLNK(mode):
            try:
                mode = os.stat(current).st_mode
            except OSError:
                return current, 'a dangling symbolic link'
        if stat.S_ISDIR(mode):
            return None
        return current, KINDS.get(stat.S_IFMT(mode), 'a special file')


def check_dir(directory, what, value, fix, private=False):
    """Raise unless directory exists as one or can be created; a private directory must be ours (no symlink)."""
    blocker = _blocker(directory)
    if blocker:
        raise CaptureError(MSG_NOT_A_DIR % (what, value, blocker[0], blocker[1], fix))
    if private:
        try:
            st = os.lstat(directory)
        except OSError:
            return
        euid = os.geteuid()
        if stat.S_ISLNK(st.st_mode):
            raise CaptureError(MSG_DIR_NOT_PRIVATE % (what, directory, 'a symbolic link', euid, what))
        if st.st_uid != euid:
            raise CaptureError(MSG_DIR_NOT_PRIVATE % (what, directory, 'owned by uid %d' % st.st_uid, euid, what))


def make_dirs(directory, what, mode=0o700):
    """Create directory (its missing parents 0755, itself mode); returns what was created, top first."""
    missing = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    created = []
    try:
        for index, one in enumerate(reversed(missing)):
            try:
                os.mkdir(one, mode if index == len(missing) - 1 else 0o755)
            except FileExistsError:
                if not os.path.isdir(one):  # made by a concurrent run: fine when it is a directory
                    raise
                continue
            created.append(one)
    except OSError as exc:
        remove_dirs(created)
        raise CaptureError(MSG_MKDIR % (what, directory, exc))
    return created


def remove_dirs(created):
    """Remove the directories a failed start created (deepest first), when empty."""
    for one in reversed(created):
        try:
            os.rmdir(one)
        except OSError:
            pass


def _tail(path, limit=2000):
    blob = _read_regular(path, limit=1 << 24)
    return (blob or b'')[-limit:].decode('utf-8', 'replace').strip()


def _remove(*paths):
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


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


# -- processes -------------------------------------------------------------------

def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(pid, starttime, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_starttime(pid) != starttime:
            return True
        time.sleep(0.05)
    return proc_starttime(pid) != starttime


def _terminate(pid, starttime, path, timeout=STOP_TIMEOUT):
    """SIGTERM, wait, SIGKILL (the caller has checked that pid is ours). Returns the signal that ended it."""
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, starttime, timeout):
        return 'SIGTERM'
    _signal(pid, signal.SIGKILL)
    if _wait_gone(pid, starttime, timeout):
        return 'SIGKILL'
    raise CaptureError(MSG_STOP_FAILED % (pid, path))


def monitor_alive(record):
    """Whether the sniffer's monitor (its parent, which records how it ended) still runs."""
    monitor = (record or {}).get('monitor') or {}
    pid, start = monitor.get('pid'), monitor.get('starttime')
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or start is None:
        return False
    return proc_starttime(pid) == start and MARKER in proc_cmdline(pid)


def death(record, log):
    """{pid, signal, exit_code, log, msg} of a sniffer that ended without its own account, from its record."""
    died = record.get('died') if isinstance(record.get('died'), dict) else {}
    pid = record.get('pid')
    if died.get('signal'):
        how = MSG_DIED_SIGNAL % died['signal']
    elif isinstance(died.get('exit_code'), int):
        how = MSG_DIED_EXIT % (died['exit_code'], log)
    else:
        how = MSG_DIED_UNKNOWN % (((record.get('monitor') or {}).get('pid')), log)
    return {'pid': pid, 'signal': died.get('signal'), 'exit_code': died.get('exit_code'), 'log': log,
            'msg': MSG_DIED % (pid, how)}


def liveness(path, state_dir=DEFAULT_STATE_DIR):
    """For a follower of the pcap (pcap_info's wait_for): None when no capture of this module writes path, else
    {'running': bool, 'pid', 'finished', 'died'}; 'died' holds death()'s dict, its 'msg' says which signal or exit code
    ended the sniffer. Reads /proc and the state record only, waits for nothing."""
    path = os.path.abspath(path)
    record = read_record(state_dir, path)
    if record is None:
        return None
    running = not record.get('finished') and ownership(record['pid'], record['starttime'], path)[0]
    died = None
    if not running and not record.get('finished'):
        died = death(record, record_paths(state_dir, path)[1])
    return {'running': running, 'pid': record['pid'], 'finished': record.get('finished'), 'died': died}


# -- the states -------------------------------------------------------------------

class Capture:
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

    def _settled(self, path, record):
        """The record once the monitor of a gone sniffer has written how it ended (waits DEATH_WAIT at most)."""
        deadline = time.monotonic() + DEATH_WAIT
        while not record.get('finished') and not record.get('died') and monitor_alive(record) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
            record = read_record(self.state_dir, path) or record
        return record

    def _wait_monitor(self, record):
        """After the sniffer ended: until its monitor has exited (it may still write the record)."""
        deadline = time.monotonic() + DEATH_WAIT
        while monitor_alive(record) and time.monotonic() < deadline:
            time.sleep(0.02)

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
            _remove(record_file, record_file + '.tmp', log)  # the previous run's, at this path (ours, checked)
            state = self._launch(settings, path, made)
        except BaseException:
            if made is not None and identity(path) == made:
                _remove(path)
            if record_file:
                _remove(record_file, record_file + '.tmp', log)
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
            # Not through Runner: this process must outlive the module, so it is
            # started detached (own session, stdio to the log) and not waited for.
            first = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                     pass_fds=(write_fd,), close_fds=True, cwd='/', env=env,
                                     start_new_session=True)
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
            raise CaptureError(MSG_TIMEOUT % (self.ready_timeout, _tail(log) or '(nothing)'))
        raise CaptureError(MSG_CHILD_DIED % (_tail(log) or '(nothing)'))

    def _end_failed(self, reply, path):
        """Stop the sniffer of a failed start (when it is ours) and wait for its monitor, before files go."""
        if reply.get('pid') and reply.get('starttime'):
            ours, _why = ownership(reply['pid'], reply['starttime'], path)
            if ours:
                _terminate(reply['pid'], reply['starttime'], path, self.stop_timeout)
        self._wait_monitor({'monitor': {'pid': reply.get('monitor'), 'starttime': reply.get('monitor_starttime')}})

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
            signalled = _terminate(pid, info['starttime'], path, self.stop_timeout)
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
            result['removed'] = _remove(*(pcap + [record_file, record_file + '.tmp', log]))
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
                entry['signal'] = _terminate(record['pid'], record['starttime'], path, self.stop_timeout)
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
