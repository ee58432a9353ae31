# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The capture's state records and files: what proves a pcap and a sniffer ours (see _capture.py).

A state record (one per pcap path, in state_dir, written by the detached
program, _program_capture.py) names the pcap's path and identity (device and
inode), the sniffer's pid, start time and network-namespace inode, and its
monitor. ownership() proves a live process is the capture of a path;
liveness() and death() say how a capture that is gone ended. Also here: the
kinds of files that are refused, the directories a start makes, and the
pcap record counter.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat

from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_tcpdump import marked_args, tcpdump_ownership
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import load_record, read_regular, valid_pid
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NETNS_DIR, NetnsError, named_path
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap_reader import count_packets  # noqa: F401 pylint: disable=unused-import
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline as proc_cmdline
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import starttime as proc_starttime

MARKER = 'tcplab-keepalive-capture'
DEFAULT_STATE_DIR = '/var/lib/tcplab-keepalive/capture'
RECORD_SUFFIX = '.json'
LOG_SUFFIX = '.log'
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

MSG_HANDLE = 'handle must be the handle returned by state=started (a dict with path) or a pcap path, got %r'
MSG_HANDLE_PATH = 'handle is for %s but path is %s: give one of them'
MSG_NO_RECORD = 'no state record for it in %s'
MSG_REPLACED = ('it is not the file the capture wrote: device %d inode %d, the record says device %d inode %d '
                '(replaced since)')
MSG_CHANGED = ('it is not the file as the capture left it: size %d, change time %d ns; the record says size %d, '
               'change time %d ns (replaced or modified since)')
MSG_NO_END = ("the capture ended without recording its pcap's final size and times (its monitor was killed too), "
              'so it cannot be told from a file put in its place')
MSG_NOT_REGULAR = ('%s is %s, not a regular file: give the path of a pcap (a capture only ever writes regular files); '
                   'nothing was opened or changed')
MSG_DIED = "the capture's sniffer (pid %d) died: %s"
MSG_DIED_SIGNAL = 'killed by %s'
MSG_DIED_EXIT = 'exited with code %d, see %s'
MSG_DIED_UNKNOWN = 'it left no account of how (its monitor, pid %s, is gone too), see %s'
MSG_NOT_A_DIR = '%s %s cannot be used: %s is %s, not a directory: %s'
MSG_DIR_NOT_PRIVATE = '%s %s is %s: it must be a real directory owned by uid %d; remove it or choose another %s'
MSG_MKDIR = 'cannot create %s %s: %s'


class CaptureError(Exception):
    """A capture cannot be started or stopped; the message names the fix."""


def netns_path(name, netns_dir=NETNS_DIR):
    """(name, path) of a named network namespace (_netns.named_path); raises CaptureError when it does not exist."""
    try:
        return named_path(name, netns_dir)
    except NetnsError as exc:
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
    data = load_record(record_paths(state_dir, path)[0])
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
        data = load_record(os.path.join(state_dir, name))
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
    if not valid_pid(pid):
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


def log_tail(path, limit=2000):
    blob = read_regular(path, limit=1 << 24)
    return (blob or b'')[-limit:].decode('utf-8', 'replace').strip()


def remove_files(*paths):
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed

# -- how a capture ended ---------------------------------------------------------


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
    if not running and not record.get('finished') and not record.get('died') and monitor_alive(record):
        # the sniffer has just ended and its monitor is still writing how: not an end to report yet (the
        # follower looks again; a capture that finished must not read as died for want of its account)
        running = True
    died = None
    if not running and not record.get('finished'):
        died = death(record, record_paths(state_dir, path)[1])
    return {'running': running, 'pid': record['pid'], 'finished': record.get('finished'), 'died': died}
