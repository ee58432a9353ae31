# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The three TCP keepalive sysctls: validation, reading and writing them in a
network namespace, and the journal of original values that makes every
change reversible.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import netns_inode, netns_of, pids

KEYS = ('time', 'intvl', 'probes')
SYSCTL = 'net.ipv4.tcp_keepalive_%s'
PROC = '/proc/sys/net/ipv4/tcp_keepalive_%s'
# the kernel's per-socket bounds (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT)
BOUNDS = {'time': (1, 32767), 'intvl': (1, 32767), 'probes': (1, 127)}
UNITS = {'time': ' seconds', 'intvl': ' seconds', 'probes': ''}
NETNS_NAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,64}$')

MSG_VALUE = 'tcp_keepalive_%s must be an integer %d..%d%s, got %r'
MSG_NOTHING = 'give at least one of time, intvl, probes (or state: restored)'
MSG_NETNS_NAME = ('netns %r is not a network namespace name or process id: give a name from '
                  '/run/netns (ip netns list) or the pid of a process in the namespace')
MSG_NETNS_MISSING = 'network namespace %r not found at %s: create it (ip netns add %s) or fix the name'
MSG_NETNS_PID = 'no process %s (netns given as a pid): the process has gone or the pid is wrong'
MSG_SAVED = ('saved must be the tcplab_keepalive_saved fact of an earlier task '
             '(a mapping with netns_inode and originals), got %r')
MSG_SAVED_NETNS = ('saved values are for network namespace inode %s, but this task acts on inode %s '
                   '(%s): restore them where they were saved (same host and netns option)')
MSG_NOTHING_TO_RESTORE = 'nothing to restore: no saved values for network namespace inode %s (%s)'
MSG_PERSIST_NETNS = ('persist applies to the host itself: sysctl.d files are read at boot for the root '
                     'network namespace only; drop persist or the netns option')


class SysctlError(Exception):
    """Invalid request or failed change; the message says what to do."""


def validate_value(key, value):
    """The value as int, or SysctlError naming key, value and range."""
    low, high = BOUNDS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SysctlError(MSG_VALUE % (key, low, high, UNITS[key], value))
    return value


def validate_values(params):
    """{key: int} for the keys given; all checked before anything is written."""
    return {key: validate_value(key, params[key]) for key in KEYS if params.get(key) is not None}


def render(values):
    """sysctl.conf text of values (also used for diffs)."""
    return ''.join('%s = %s\n' % (SYSCTL % key, values[key]) for key in KEYS if key in values)


# -- namespaces ---------------------------------------------------------------

class Namespace:
    """Where the values live: the module's own network namespace or another one."""

    def __init__(self, path, label, own):
        self.path = path
        self.label = label
        self.own = own
        self.inode = os.stat(path).st_ino

    def as_dict(self):
        return {'inode': self.inode, 'path': self.path, 'label': self.label}


def resolve_netns(netns, netns_dir='/run/netns'):
    """Namespace for the netns option (None: the module's own)."""
    own = '/proc/self/ns/net'
    if netns is None or netns == '':
        return Namespace(own, 'own', True)
    text = str(netns)
    if isinstance(netns, bool) or not NETNS_NAME_RE.match(text) or text in ('.', '..'):
        raise SysctlError(MSG_NETNS_NAME % (netns,))
    if text.isdigit():
        path = '/proc/%s/ns/net' % text
        if not os.path.exists(path):
            raise SysctlError(MSG_NETNS_PID % text)
        label = 'pid %s' % text
    else:
        path = os.path.join(netns_dir, text)
        if not os.path.exists(path):
            raise SysctlError(MSG_NETNS_MISSING % (text, path, text))
        label = text
    ns = Namespace(path, label, False)
    if ns.inode == os.stat(own).st_ino:
        ns.own = True
    return ns


class ProcAccess:
    """Reads and writes /proc/sys of the module's own network namespace."""

    def read(self):
        values = {}
        for key in KEYS:
            with open(PROC % key) as handle:
                values[key] = int(handle.read().strip())
        return values

    def write(self, key, value):
        with open(PROC % key, 'w') as handle:
            handle.write('%d\n' % value)


class NsenterAccess:
    """Reads and writes the sysctls of another namespace with nsenter + sysctl (argv lists)."""

    def __init__(self, run, nsenter, sysctl, path):
        self.run = run
        self.prefix = [nsenter, '--net=%s' % path, '--', sysctl]

    def read(self):
        rc, out, err = self.run(self.prefix + ['-n'] + [SYSCTL % key for key in KEYS],
                                what='reading the keepalive sysctls')
        lines = out.split()
        if len(lines) != len(KEYS):
            raise SysctlError('unexpected sysctl output: %r' % out)
        return dict(zip(KEYS, (int(x) for x in lines)))

    def write(self, key, value):
        self.run(self.prefix + ['-q', '-w', '%s=%d' % (SYSCTL % key, value)],
                 what='setting %s' % (SYSCTL % key))


# -- the journal --------------------------------------------------------------

class Journal:
    """Original values per network namespace inode, in one JSON file.

    Every read-modify-write holds an exclusive flock on a lock file next to
    it, and the file is replaced atomically (temp file + rename), so two
    plays on one host cannot corrupt it.
    """

    def __init__(self, directory):
        self.directory = directory
        self.path = os.path.join(directory, 'journal.json')
        self.lock_path = os.path.join(directory, 'journal.lock')

    @contextlib.contextmanager
    def locked(self, create=True):
        if not os.path.isdir(self.directory):
            if not create:
                yield self._load()
                return
            os.makedirs(self.directory, 0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._load()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _load(self):
        try:
            with open(self.path) as handle:
                data = json.load(handle)
        except (IOError, OSError):
            return {}
        except ValueError:
            raise SysctlError('journal %s is not valid JSON: inspect it, then remove it' % self.path)
        return data if isinstance(data, dict) else {}

    def save(self, data):
        """Write data (call inside locked())."""
        if data:
            atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True) + '\n', 0o600)
        elif os.path.exists(self.path):
            os.unlink(self.path)


def live_netns_inodes(netns_dir='/run/netns'):
    """Inodes of every network namespace that still exists (named or held by a process)."""
    try:
        named = [os.path.join(netns_dir, name) for name in os.listdir(netns_dir)]
    except OSError:
        named = []
    inodes = {netns_inode(path) for path in named} | {netns_of(pid) for pid in pids()}
    inodes.discard(None)
    return inodes


def prune_dead(data, live):
    """Drop journal entries of namespaces that no longer exist (their inode may be reused)."""
    dead = [key for key, entry in data.items()
            if isinstance(entry, dict) and entry.get('netns_inode') not in live]
    for key in dead:
        del data[key]
    return dead


def journal_key(ns):
    return str(ns.inode)


def new_entry(ns, originals):
    return {
        'netns_inode': ns.inode,
        'netns': ns.label,
        'originals': dict(originals),
        'saved_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }


def check_saved(saved, ns):
    """Validate the saved option; returns {key: int} of originals."""
    if not isinstance(saved, dict) or not isinstance(saved.get('originals'), dict) or 'netns_inode' not in saved:
        raise SysctlError(MSG_SAVED % (saved,))
    try:
        inode = int(saved['netns_inode'])
    except (TypeError, ValueError):
        raise SysctlError(MSG_SAVED % (saved,))
    if inode != ns.inode:
        raise SysctlError(MSG_SAVED_NETNS % (inode, ns.inode, ns.label))
    originals = {}
    for key, value in saved['originals'].items():
        if key not in KEYS:
            raise SysctlError(MSG_SAVED % (saved,))
        originals[key] = validate_value(key, value)
    return originals


# -- applying values ----------------------------------------------------------

def apply_values(access, current, wanted):
    """Write the keys of wanted that differ from current, in KEYS order.

    If a write fails, the keys already written are put back before the error
    is raised, and the error says so. Returns the keys written.
    """
    written = []
    for key in KEYS:
        if key not in wanted or current.get(key) == wanted[key]:
            continue
        try:
            access.write(key, wanted[key])
        except Exception as exc:  # pylint: disable=broad-except
            undone, failed = [], []
            for done in reversed(written):
                try:
                    access.write(done, current[done])
                    undone.append('%s=%d' % (SYSCTL % done, current[done]))
                except Exception:  # pylint: disable=broad-except
                    failed.append(SYSCTL % done)
            msg = 'setting %s to %d failed: %s' % (SYSCTL % key, wanted[key], exc)
            if undone:
                msg += '; put back %s' % ', '.join(undone)
            if failed:
                msg += '; COULD NOT put back %s: restore them with state: restored' % ', '.join(failed)
            if not written:
                msg += '; nothing was changed'
            raise SysctlError(msg)
        written.append(key)
    return written


def persist_text(values):
    return ('# Managed by tcplab.keepalive.sysctl; state: restored puts back what was here.\n'
            + render(values))


def read_file(path):
    """Content of path, or None when it does not exist."""
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


class KeepaliveSysctl:
    """present / restored for one namespace. Returns result dicts for the module."""

    def __init__(self, ns, access, journal, persist_journal=None, check_mode=False, live_inodes=live_netns_inodes):
        self.live_inodes = live_inodes
        self.ns = ns
        self.access = access
        self.journal = journal
        self.persist_journal = persist_journal
        self.check_mode = check_mode

    def _result(self, changed, previous, current, changed_keys, entry, msg, diff_before, diff_after):
        saved = entry or new_entry(self.ns, previous)
        return {
            'changed': changed,
            'previous': previous,
            'current': current,
            'changed_keys': [SYSCTL % key for key in changed_keys],
            'netns': self.ns.as_dict(),
            'msg': msg,
            'ansible_facts': {'tcplab_keepalive_saved': saved},
            'diff': {'before': diff_before, 'after': diff_after,
                     'before_header': 'keepalive sysctls (%s)' % self.ns.label,
                     'after_header': 'keepalive sysctls (%s)' % self.ns.label},
        }

    def present(self, wanted, persist_path=None):
        previous = self.access.read()
        changes = [key for key in KEYS if key in wanted and previous[key] != wanted[key]]
        target = dict(previous, **wanted)
        file_before = read_file(persist_path) if persist_path else None
        file_after = persist_text(target) if persist_path else None
        file_changes = bool(persist_path) and file_before != file_after
        with self.journal.locked(create=not self.check_mode) as data:
            entry = data.get(journal_key(self.ns))
            if self.check_mode:
                msg = ('would set %s' % ', '.join('%s=%d' % (SYSCTL % k, wanted[k]) for k in changes)
                       if changes else 'already set')
                if file_changes:
                    msg += '; would write %s' % persist_path
                return self._result(bool(changes or file_changes), previous, target, changes, entry, msg,
                                    render(previous) + (file_before or ''), render(target) + (file_after or ''))
            created = False
            if prune_dead(data, self.live_inodes() | {self.ns.inode}):
                self.journal.save(data)
            if entry is None and (changes or file_changes):
                entry = new_entry(self.ns, previous)
                data[journal_key(self.ns)] = entry
                self.journal.save(data)
                created = True
            try:
                apply_values(self.access, previous, wanted)
            except SysctlError:
                if created and self.access.read() == previous:
                    del data[journal_key(self.ns)]
                    self.journal.save(data)
                raise
        current = self.access.read()
        wrong = [key for key in wanted if current[key] != wanted[key]]
        if wrong:
            raise SysctlError('read back %s after writing it; the kernel did not keep the value'
                              % ', '.join('%s=%d (wanted %d)' % (SYSCTL % k, current[k], wanted[k]) for k in wrong))
        if file_changes:
            self._persist(persist_path, file_before, file_after)
        msg = ('set %s' % ', '.join('%s=%d' % (SYSCTL % k, wanted[k]) for k in changes)) if changes else 'already set'
        if file_changes:
            msg += '; wrote %s' % persist_path
        return self._result(bool(changes or file_changes), previous, current, changes, entry, msg,
                            render(previous) + (file_before or ''), render(current) + (file_after or ''))

    def _persist(self, path, before, after):
        """Journal the drop-in's previous content (first time only), then write it atomically."""
        with self.persist_journal.locked() as data:
            if path not in data:
                data[path] = {'previous': before, 'netns_inode': self.ns.inode,
                              'saved_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
                self.persist_journal.save(data)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        atomic_write(path, after, 0o644)

    def restored(self, saved=None, persist_path=None):
        key = journal_key(self.ns)
        current = self.access.read()
        with self.journal.locked(create=False) as data:
            entry = data.get(key)
            originals = check_saved(saved, self.ns) if saved is not None else (entry or {}).get('originals')
            file_entry = None
            if self.persist_journal is not None and persist_path:
                with self.persist_journal.locked(create=False) as pdata:
                    file_entry = pdata.get(persist_path)
                if file_entry is not None and file_entry.get('netns_inode') != self.ns.inode:
                    file_entry = None
            if not originals and file_entry is None:
                return self._result(False, current, current, [], None,
                                    MSG_NOTHING_TO_RESTORE % (self.ns.inode, self.ns.label),
                                    render(current), render(current))
            originals = {k: int(v) for k, v in (originals or {}).items()}
            changes = [k for k in KEYS if k in originals and current[k] != originals[k]]
            target = dict(current, **originals)
            file_now = read_file(persist_path) if file_entry is not None else None
            file_changes = file_entry is not None and file_now != file_entry.get('previous')
            if self.check_mode:
                msg = 'would restore %s' % ', '.join('%s=%d' % (SYSCTL % k, originals[k]) for k in changes)
                if file_changes:
                    msg += '; would put back %s' % persist_path
                return self._result(bool(changes or file_changes or entry), current, target, changes, entry, msg,
                                    render(current), render(target))
            apply_values(self.access, current, originals)
            after = self.access.read()
            wrong = [k for k in originals if after[k] != originals[k]]
            if wrong:
                raise SysctlError('restore did not take: %s; the journal is kept, try again'
                                  % ', '.join('%s=%d (wanted %d)' % (SYSCTL % k, after[k], originals[k]) for k in wrong))
            if file_entry is not None:
                previous_text = file_entry.get('previous')
                if previous_text is None:
                    if os.path.exists(persist_path):
                        os.unlink(persist_path)
                else:
                    atomic_write(persist_path, previous_text, 0o644)
                with self.persist_journal.locked() as pdata:
                    pdata.pop(persist_path, None)
                    self.persist_journal.save(pdata)
            if key in data:
                del data[key]
                self.journal.save(data)
        msg = ('restored %s' % ', '.join('%s=%d' % (SYSCTL % k, originals[k]) for k in changes)) if changes \
            else 'values were already the originals'
        if file_changes:
            msg += '; put back %s' % persist_path
        return self._result(bool(changes or file_changes or entry), current, after, changes, entry or None, msg,
                            render(current), render(after))
