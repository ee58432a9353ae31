# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The three TCP keepalive sysctls (and net.ipv4.tcp_retries2, which the in-flight
experiment sets with them): validation, reading and writing them in a
network namespace, the journal of original values that makes every change
reversible, and the lease that lets one experiment at a time own a
namespace's values.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import calendar
import contextlib
import copy
import fcntl
import json
import os
import re
import stat
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils import _netns
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write, file_kind
from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import (
    BOUNDS as KEEPALIVE_BOUNDS, KEYS as KEEPALIVE_KEYS, PROC as KEEPALIVE_PROC, SYSCTL as KEEPALIVE_SYSCTL, UNITS as KEEPALIVE_UNITS)
from ansible_collections.tcplab.keepalive.plugins.module_utils._retransmit import RETRIES2, RETRIES2_BOUNDS
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import (
    cookie_matches, netns_cookie, netns_identity, netns_inode)
# boot_netns, name_of and the name check live in _netns; these names stay importable from here
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import (  # noqa: F401 pylint: disable=unused-import
    NETNS_DIR, NAME_RE as NETNS_NAME_RE, NetnsError, boot_netns, name_of)

# k=v arguments and -e variables arrive as text: a decimal integer, blanks around it allowed
INT_TEXT_RE = re.compile(r'^\s*[+-]?[0-9]{1,18}\s*$')
LEASE_TTL_BOUNDS = (1, 604800)
LEASE_TEXT_MAX = 200
ISO = '%Y-%m-%dT%H:%M:%SZ'

# The keepalive trio, and net.ipv4.tcp_retries2 (the in-flight experiment): journalled and restored alike. An entry or
# a result carries retries2 only once it was asked for, so the trio's journal and results stay as they were.
KEYS = KEEPALIVE_KEYS + ('retries2',)
BOUNDS = dict(KEEPALIVE_BOUNDS, retries2=RETRIES2_BOUNDS)
UNITS = dict(KEEPALIVE_UNITS, retries2=' (timeout retransmissions before an established connection is given up)')
NAMES = dict([(key, KEEPALIVE_SYSCTL % key) for key in KEEPALIVE_KEYS] + [('retries2', RETRIES2)])
PATHS = dict([(key, KEEPALIVE_PROC % key) for key in KEEPALIVE_KEYS] + [('retries2', '/proc/sys/net/ipv4/tcp_retries2')])

MSG_VALUE = '%s must be an integer %d..%d%s, got %r'
MSG_NOTHING = 'give at least one of time, intvl, probes, retries2 (or state: restored)'
MSG_NETNS_NAME = _netns.MSG_NAME_OR_PID
MSG_NETNS_MISSING = _netns.MSG_MISSING
MSG_NETNS_PID = _netns.MSG_PID
MSG_NETNS_ACCESS = _netns.MSG_ACCESS
MSG_NETNS_NOT_NS = _netns.MSG_NOT_NS
MSG_NETNS_READ = 'reading the keepalive sysctls in the network namespace at %s failed: %s'
MSG_NETNS_CHANGED = ('the network namespace to act on (inode %d) was replaced by another one (inode %d) '
                     'before it was entered: nothing written; run the task again')
MSG_NETNS_RECYCLED = ('the network namespace to act on (inode %d, cookie %d) is gone and another one got its inode '
                      '(cookie %d) before it was entered: nothing written; run the task again')
MSG_SAVED = ('saved must be the tcplab_keepalive_saved fact of an earlier task '
             '(a mapping with netns_inode and originals), got %r')
MSG_SAVED_NETNS = ('saved values are for network namespace inode %s, but this task acts on inode %s '
                   '(%s): restore them where they were saved (same host and netns option)')
MSG_SAVED_COOKIE = ('saved values are for the network namespace with inode %s and cookie %s, which is gone: %s '
                    'got its inode but has cookie %s (the kernel reuses inodes, never cookies); nothing restored')
MSG_NOTHING_TO_RESTORE = 'nothing to restore: no saved values for network namespace inode %s (%s)'
MSG_STALE_RESTORED = ('nothing restored: the journal entry for inode %d was saved for another network namespace '
                      '(cookie %d), which is gone; %s got its inode but has cookie %d; %s that entry')
MSG_STALE_PRESENT = ('%s the journal entry of a gone network namespace that had inode %d (cookie %d; this one has '
                     'cookie %d): its originals were not this namespace\'s')
MSG_PERSIST_NETNS = ('persist: true writes %s, which configures the network namespace of PID 1 at boot (inode %d), '
                     'not network namespace %s (inode %d): lab hosts and containers get their keepalive settings '
                     "from whoever creates their namespace at start (e.g. the container runtime's sysctls option, "
                     'or the lab role); set them without persist')
MSG_PERSIST_UNKNOWN = ('persist: true writes %s, which configures the network namespace of PID 1 at boot, but that '
                       'namespace cannot be identified (%s): run as root (become: true), or set the values without persist')
# paths
MSG_RELATIVE = '%s %s is a relative path: give an absolute path'
MSG_NOT_DIR = '%s %s is %s, not a directory: give a directory path'
MSG_PARENT_NOT_DIR = '%s %s cannot be created: %s is %s, not a directory: give a path under a directory'
MSG_NOT_FILE = 'persist_path %s is %s, not a regular file: give the path of a sysctl.d file'
MSG_SYMLINK = ('persist_path %s is a symbolic link (to %s): give the path of the file itself '
               '(a link to /dev/null masks the file; this module does not replace links)')
MSG_PATH_ERROR = 'cannot use %s %s (%s): run as root (become: true) or give a path you can write'
MSG_JOURNAL_FILE = ('%s is %s, not a regular file, so it is not this module\'s journal: move it away '
                    'or give another %s')
MSG_JOURNAL_JSON = 'journal %s is not valid JSON: inspect it, then remove it'
MSG_JOURNAL_SHAPE = ('journal %s is not a journal of this module (a JSON object keyed by namespace inode): '
                     'inspect it, then remove it or give another journal_dir')
MSG_JOURNAL_ORIGINALS = ('journal %s has bad original values for network namespace inode %s (%r): '
                         'inspect it, then remove that entry')
# the lease
MSG_LEASE_HOLDER = ('lease must be the run id of the experiment that takes the namespace: 1..%d printable '
                    'characters without blanks, got %r')
MSG_LEASE_OWNER = 'lease_owner must be printable text of at most %d characters (e.g. "controller host pid"), got %r'
MSG_LEASE_OWNER_ALONE = 'lease_owner describes a lease: give lease (the run id) too, or drop lease_owner'
MSG_LEASE_TTL = ('lease_ttl must be an integer %d..%d seconds (how long the lease lasts if it is never released), '
                 'got %r')
MSG_LEASE_BUSY = ('the keepalive sysctls of network namespace %s (inode %d) are leased to run %s (owner %s, since %s, '
                  'expires %s): wait for it to finish (experiment_lease_wait), or if that run is dead run the '
                  'tcplab.keepalive.rollback playbook on this host')
MSG_LEASE_OTHER = ('nothing restored: the keepalive sysctls of network namespace %s (inode %d) are leased to run %s '
                   '(owner %s, since %s, expires %s), not to run %s; that run restores them when it ends')
MSG_LEASE_TAKE = '%s the lease for run %s until %s'
MSG_LEASE_TAKE_OVER = '%s the expired lease of run %s (owner %s, since %s, expired %s)'
MSG_LEASE_RELEASE = '%s the lease of run %s'
MSG_LEASE_CLEAR = '%s the lease of run %s (owner %s, since %s, %s %s)'


class SysctlError(Exception):
    """Invalid request or failed change; the message says what to do, extra goes into the result."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.extra = extra


def as_int(value):
    """value as int when it is an integer or the text of one (never a bool or float), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and INT_TEXT_RE.match(value):
        return int(value)
    return None


def validate_value(key, value):
    """The value as int, or SysctlError naming key, value and range."""
    low, high = BOUNDS[key]
    number = as_int(value)
    if number is None or not low <= number <= high:
        raise SysctlError(MSG_VALUE % (NAMES[key].split('.')[-1], low, high, UNITS[key], value))
    return number


def validate_values(params):
    """{key: int} for the keys given; all checked before anything is written."""
    return {key: validate_value(key, params[key]) for key in KEYS if params.get(key) is not None}


def render(values):
    """sysctl.conf text of values (also used for diffs)."""
    return ''.join('%s = %s\n' % (NAMES[key], values[key]) for key in KEYS if key in values)


# -- paths --------------------------------------------------------------------

def _first_existing(path):
    """(path, st_mode) of path or its nearest existing ancestor."""
    while True:
        try:
            return path, os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(path)
            if parent == path:
                return path, stat.S_IFDIR
            path = parent


def check_dir(option, path):
    """SysctlError unless path is a directory or can be created as one (nothing is created here)."""
    if not os.path.isabs(path):
        raise SysctlError(MSG_RELATIVE % (option, path))
    path = os.path.normpath(path)
    found, mode = _first_existing(path)
    if stat.S_ISDIR(mode):
        return
    if found == path:
        raise SysctlError(MSG_NOT_DIR % (option, path, file_kind(mode)))
    raise SysctlError(MSG_PARENT_NOT_DIR % (option, path, found, file_kind(mode)))


def check_file(path):
    """SysctlError unless persist_path is a regular file or can be created as one."""
    if not os.path.isabs(path):
        raise SysctlError(MSG_RELATIVE % ('persist_path', path))
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise SysctlError(MSG_SYMLINK % (path, os.readlink(path)))
    if mode is not None and not stat.S_ISREG(mode):
        raise SysctlError(MSG_NOT_FILE % (path, file_kind(mode)))
    found, mode = _first_existing(os.path.dirname(os.path.normpath(path)))
    if not stat.S_ISDIR(mode):
        raise SysctlError(MSG_PARENT_NOT_DIR % ('persist_path', path, found, file_kind(mode)))


def check_paths(params):
    """Every path option that this task will use, before anything changes."""
    check_dir('journal_dir', params['journal_dir'])
    persisting = params['persist'] and params['state'] == 'present'
    if persisting or params['state'] == 'restored':
        check_dir('persist_journal_dir', params['persist_journal_dir'])
    if persisting:
        check_file(params['persist_path'])
    if params.get('netns') not in (None, ''):
        check_dir('netns_dir', params['netns_dir'])


# -- namespaces ---------------------------------------------------------------

OWN_NETNS = _netns.OWN
ALL = 'all'   # netns: all (restored only: every journalled namespace; _sysctl_all.py)


class Namespace:
    """Where the values live: the module's own network namespace or another one."""

    def __init__(self, path, label, own, inode=None, name=None, netns_name=None, cookie=None):
        self.path = path
        self.label = label
        self.own = own
        self.inode = os.stat(path).st_ino if inode is None else inode
        self.name = name or label
        self.netns_name = netns_name  # its name under netns_dir, journalled as proof of identity
        self.cookie = cookie  # _proc.netns_identity: journalled with the inode; None: unknown (the inode alone)
        self.boot = None

    def as_dict(self):
        return {'inode': self.inode, 'cookie': self.cookie, 'path': self.path, 'label': self.label, 'boot': self.boot}


def resolve_netns(netns, netns_dir=NETNS_DIR):
    """Namespace for the netns option (None: the module's own), with its cookie (_proc.netns_identity)."""
    own_inode, own_cookie = netns_identity()
    if netns is None or netns == '':
        name = name_of(own_inode, netns_dir)
        return Namespace(OWN_NETNS, 'own', True, own_inode, name or 'own', name, cookie=own_cookie)
    try:
        found = _netns.resolve(netns, netns_dir)
    except NetnsError as exc:
        raise SysctlError(str(exc))
    inode, cookie = netns_identity(found.path)
    if inode is not None and inode != found.inode:
        raise SysctlError(MSG_NETNS_CHANGED % (found.inode, inode))
    name = found.label if not found.label.startswith('pid ') else name_of(found.inode, netns_dir)
    return Namespace(found.path, found.label, found.inode == own_inode, found.inode, netns_name=name, cookie=cookie)


def mark_boot(ns, boot):
    """Record in ns whether it is the boot namespace (None: unknown)."""
    inode = boot[0]
    ns.boot = None if inode is None else ns.inode == inode
    return ns


def check_persist(ns, persist_path, boot):
    """SysctlError (persist_refused) unless ns is the namespace that sysctl.d configures at boot."""
    inode, why = boot
    if inode is None:
        raise SysctlError(MSG_PERSIST_UNKNOWN % (persist_path, why), persist_refused=True, netns=ns.as_dict())
    if ns.inode != inode:
        raise SysctlError(MSG_PERSIST_NETNS % (persist_path, inode, ns.name, ns.inode),
                          persist_refused=True, netns=ns.as_dict(), boot_netns_inode=inode)


def read_proc(keys=KEEPALIVE_KEYS):
    """The values (the keepalive trio, or keys) of the calling process's network namespace, from /proc/sys."""
    values = {}
    for key in keys:
        with open(PATHS[key]) as handle:
            values[key] = int(handle.read().strip())
    return values


def write_proc(key, value):
    with open(PATHS[key], 'w') as handle:
        handle.write('%d\n' % value)


class ProcAccess:
    """Reads and writes /proc/sys of the module's own network namespace."""

    def read(self, keys=KEEPALIVE_KEYS):
        return read_proc(keys)

    def write(self, key, value):
        write_proc(key, value)


def _in_namespace(identity, func, *args):
    """func(*args), run after entering a namespace, once the namespace is proven to be the one of identity: an
    inode, or (inode, cookie) where a cookie of None means the inode alone (_proc.cookie_matches)."""
    inode, cookie = identity if isinstance(identity, (tuple, list)) else (identity, None)
    found = os.stat(OWN_NETNS).st_ino
    if found != inode:
        raise SysctlError(MSG_NETNS_CHANGED % (inode, found))
    if cookie is not None:
        found_cookie = netns_cookie()
        if not cookie_matches(cookie, found_cookie):
            raise SysctlError(MSG_NETNS_RECYCLED % (inode, cookie, found_cookie))
    return func(*args)


class NetnsAccess:
    """Reads and writes /proc/sys of another namespace, from a child process that entered it (_netns.run_in).

    The child checks that it entered the namespace with the expected inode, and cookie when it is known (the
    engine hands it the namespace's), before it reads or writes.
    """

    def __init__(self, path, inode, run_in=_netns.run_in, cookie=None):
        self.path = path
        self.inode = inode
        self.cookie = cookie
        self.run_in = run_in

    def read(self, keys=KEEPALIVE_KEYS):
        try:
            return self.run_in(self.path, _in_namespace, ((self.inode, self.cookie), read_proc, keys))
        except NetnsError as exc:
            raise SysctlError(MSG_NETNS_READ % (self.path, exc))

    def write(self, key, value):
        self.run_in(self.path, _in_namespace, ((self.inode, self.cookie), write_proc, key, value))


# -- the journal --------------------------------------------------------------

class Journal:
    """Original values (and the lease) per network namespace inode, in one JSON file.

    Every read-modify-write holds an exclusive flock on a lock file next to
    it, and the file is replaced atomically (temp file + rename), so two
    plays on one host cannot corrupt it.
    """

    def __init__(self, directory, option='journal_dir'):
        self.directory = directory
        self.option = option
        self.path = os.path.join(directory, 'journal.json')
        self.lock_path = os.path.join(directory, 'journal.lock')

    def check(self):
        """SysctlError unless the directory and its two files can be this module's."""
        check_dir(self.option, self.directory)
        for path in (self.path, self.lock_path):
            try:
                mode = os.lstat(path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISREG(mode):
                raise SysctlError(MSG_JOURNAL_FILE % (path, file_kind(mode), self.option))

    @contextlib.contextmanager
    def locked(self, create=True):
        self.check()
        if not os.path.isdir(self.directory):
            if not create:
                yield {}
                return
            try:
                os.makedirs(self.directory, 0o700, exist_ok=True)
            except OSError as exc:
                raise SysctlError(MSG_PATH_ERROR % (self.option, self.directory, exc.strerror))
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise SysctlError(MSG_PATH_ERROR % (self.option, self.directory, exc.strerror))
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
        except FileNotFoundError:
            return {}
        except (IOError, OSError) as exc:
            raise SysctlError(MSG_PATH_ERROR % (self.option, self.directory, exc.strerror))
        except ValueError:
            raise SysctlError(MSG_JOURNAL_JSON % self.path)
        if not isinstance(data, dict):
            raise SysctlError(MSG_JOURNAL_SHAPE % self.path)
        return data

    def save(self, data):
        """Write data (call inside locked())."""
        if data:
            atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True) + '\n', 0o600)
        elif os.path.exists(self.path):
            os.unlink(self.path)


def live_netns_inodes(netns_dir=NETNS_DIR):
    """Inodes of every network namespace that still exists (named or held by a process)."""
    return _netns.live_inodes(netns_dir)


def _dead(entry, live, stale):
    """Whether a journal entry's namespace is gone: its inode is not live, or a namespace with another cookie has it."""
    inode = entry.get('netns_inode')
    if inode not in live:
        return True
    return inode in stale and entry_cookie(entry) == stale[inode]


def prune_dead(data, live, stale=None):
    """Drop journal entries of namespaces that no longer exist (their inode may be reused): the inode is not in
    live, or stale ({inode: cookie}) says the namespace with that inode now is another one than the entry's."""
    stale = stale or {}
    dead = [key for key, entry in data.items() if isinstance(entry, dict) and _dead(entry, live, stale)]
    for key in dead:
        del data[key]
    return dead


def entry_cookie(entry):
    """The namespace cookie a journal entry (or saved fact) records, or None (made without one: the inode alone)."""
    cookie = entry.get('netns_cookie') if isinstance(entry, dict) else None
    return cookie if isinstance(cookie, int) and not isinstance(cookie, bool) else None


def stranger(entry, ns):
    """Whether entry was saved for another namespace than ns, which got its inode: both cookies known, unequal."""
    return entry is not None and not cookie_matches(entry_cookie(entry), getattr(ns, 'cookie', None))


def journal_key(ns):
    return str(ns.inode)


def now_iso(epoch=None):
    return time.strftime(ISO, time.gmtime(time.time() if epoch is None else epoch))


def new_entry(ns, originals):
    # from_netns_inode: the namespace this module ran in. Lab hosts that are namespaces of one machine share its
    # journal; netns: all restores only what was journalled from the caller's own namespace.
    return {
        'netns_inode': ns.inode,
        # None: the kernel has no cookies (Linux < 5.14) or it could not be read; the identity is the inode alone
        'netns_cookie': getattr(ns, 'cookie', None),
        'from_netns_inode': netns_inode(OWN_NETNS),
        'netns': ns.label,
        'netns_name': getattr(ns, 'netns_name', None),
        'originals': dict(originals),
        'saved_at': now_iso(),
    }


def saved_fact(entry):
    """The tcplab_keepalive_saved fact of a journal entry (the lease is not part of it)."""
    return {key: value for key, value in entry.items() if key != 'lease'}


def journal_originals(journal, entry, ns):
    """{key: int} of a journal entry's originals, or SysctlError naming the bad entry."""
    originals = entry.get('originals') if isinstance(entry, dict) else None
    if originals is None:
        return None
    message = MSG_JOURNAL_ORIGINALS % (journal.path, ns.inode, originals)
    if not isinstance(originals, dict) or set(originals) - set(KEYS):
        raise SysctlError(message)
    try:
        return {key: validate_value(key, value) for key, value in originals.items()}
    except SysctlError:
        raise SysctlError(message)


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
    if stranger(saved, ns):
        raise SysctlError(MSG_SAVED_COOKIE % (inode, entry_cookie(saved), ns.label, ns.cookie))
    originals = {}
    for key, value in saved['originals'].items():
        if key not in KEYS:
            raise SysctlError(MSG_SAVED % (saved,))
        originals[key] = validate_value(key, value)
    return originals


# -- the lease ----------------------------------------------------------------

class LeaseRequest:
    """The lease, lease_owner and lease_ttl options, validated."""

    def __init__(self, holder, owner=None, ttl=3600):
        self.holder = holder
        self.owner = owner
        self.ttl = ttl


def lease_request(params):
    """LeaseRequest of the options, None without lease, or SysctlError naming the option."""
    holder, owner, ttl = params.get('lease'), params.get('lease_owner'), params.get('lease_ttl')
    if holder is None:
        if owner is not None:
            raise SysctlError(MSG_LEASE_OWNER_ALONE)
        return None
    printable = isinstance(holder, str) and 1 <= len(holder) <= LEASE_TEXT_MAX and holder.isprintable()
    if not printable or any(char.isspace() for char in holder):
        raise SysctlError(MSG_LEASE_HOLDER % (LEASE_TEXT_MAX, holder))
    if owner is not None:
        text = ' '.join(str(owner).split()) if isinstance(owner, str) else None
        if text is None or len(text) > LEASE_TEXT_MAX or not text.isprintable():
            raise SysctlError(MSG_LEASE_OWNER % (LEASE_TEXT_MAX, owner))
        owner = text or None
    ttl = 3600 if ttl is None else ttl
    low, high = LEASE_TTL_BOUNDS
    number = as_int(ttl)
    if number is None or not low <= number <= high:
        raise SysctlError(MSG_LEASE_TTL % (low, high, ttl))
    return LeaseRequest(holder, owner, number)


def _epoch(text):
    try:
        return calendar.timegm(time.strptime(str(text), ISO))
    except (TypeError, ValueError):
        return None


def lease_view(record, now):
    """The lease as returned in results ({holder, owner, since, expires, expired}), or None.

    A record whose expiry cannot be read counts as expired.
    """
    if not isinstance(record, dict) or not record.get('holder'):
        return None
    expires = _epoch(record.get('expires'))
    return {'holder': str(record['holder']), 'owner': record.get('owner'), 'since': record.get('since'),
            'expires': record.get('expires'), 'expired': expires is None or now >= expires}


def live_lease_of_other(held, request):
    """held when it is an unexpired lease of another holder than request (None: no lease given)."""
    if held is None or held['expired']:
        return None
    if request is not None and held['holder'] == request.holder:
        return None
    return held


def new_lease(held, request, now):
    """The journal record of request's lease: renewed (same since) when request already holds it."""
    since = held['since'] if held is not None and held['holder'] == request.holder else now_iso(now)
    return {'holder': request.holder, 'owner': request.owner, 'since': since,
            'expires': now_iso(now + request.ttl), 'ttl': request.ttl}


def lease_fields(lease):
    return (lease['holder'], lease['owner'] or 'unknown', lease['since'], lease['expires'])


class LeaseBusy(SysctlError):
    """Another run holds the namespace's live lease."""

    def __init__(self, ns, held):
        super().__init__(MSG_LEASE_BUSY % ((ns.name, ns.inode) + lease_fields(held)),
                         lease_busy=True, lease=held, netns=ns.as_dict())


def _cleared_note(held, request, check_mode):
    """The msg part for the lease that a restore removes."""
    if request is not None and held['holder'] == request.holder:
        return MSG_LEASE_RELEASE % ('would release' if check_mode else 'released', held['holder'])
    holder, owner, since, expires = lease_fields(held)
    return MSG_LEASE_CLEAR % ('would clear' if check_mode else 'cleared', holder, owner, since,
                              'expired' if held['expired'] else 'expires', expires)


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
                    undone.append('%s=%d' % (NAMES[done], current[done]))
                except Exception:  # pylint: disable=broad-except
                    failed.append(NAMES[done])
            msg = 'setting %s to %d failed: %s' % (NAMES[key], wanted[key], exc)
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
    header = '# Managed by tcplab.keepalive.sysctl; state: restored puts back what was here.\n'
    return header + render(values)


def read_file(path):
    """Content of path, or None when it does not exist."""
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


class KeepaliveSysctl:
    """present / restored for one namespace. Returns result dicts for the module."""

    def __init__(self, ns, access, journal, persist_journal=None, check_mode=False, live_inodes=live_netns_inodes,
                 clock=time.time):
        self.live_inodes = live_inodes
        self.ns = ns
        self.access = access
        if isinstance(access, NetnsAccess) and access.cookie is None and access.inode == ns.inode:
            access.cookie = getattr(ns, 'cookie', None)  # its child then checks the cookie too
        self.journal = journal
        self.persist_journal = persist_journal
        self.check_mode = check_mode
        self.clock = clock

    def _result(self, changed, previous, current, changed_keys, entry, msg, diff_before, diff_after,
                lease=None, lease_busy=False, lease_cleared=None):
        saved = saved_fact(entry) if entry else new_entry(self.ns, previous)
        return {
            'changed': changed,
            'previous': previous,
            'current': current,
            'changed_keys': [NAMES[key] for key in changed_keys],
            'netns': self.ns.as_dict(),
            'msg': msg,
            'lease': lease,
            'lease_busy': lease_busy,
            'lease_cleared': lease_cleared,
            'ansible_facts': {'tcplab_keepalive_saved': saved},
            'diff': {'before': diff_before, 'after': diff_after,
                     'before_header': 'keepalive sysctls (%s)' % self.ns.label,
                     'after_header': 'keepalive sysctls (%s)' % self.ns.label},
        }

    def _verb(self, done, would):
        return would if self.check_mode else done

    def _take_notes(self, held, record, taken):
        """The msg parts for a lease taken, taken over or renewed by present."""
        notes = []
        if taken and held is not None:
            notes.append(MSG_LEASE_TAKE_OVER % ((self._verb('took over', 'would take over'),) + lease_fields(held)))
        if record is not None:
            verb = self._verb('took', 'would take') if taken else self._verb('renewed', 'would renew')
            notes.append(MSG_LEASE_TAKE % (verb, record['holder'], record['expires']))
        return notes

    def _read(self, keys):
        """The current values of keys (the trio through the plain read(), which every access has)."""
        return self.access.read() if tuple(keys) == KEEPALIVE_KEYS else self.access.read(tuple(keys))

    def present(self, wanted, persist_path=None, lease=None):
        keys = KEYS if 'retries2' in wanted else KEEPALIVE_KEYS
        previous = self._read(keys)
        changes = [key for key in KEYS if key in wanted and previous[key] != wanted[key]]
        target = dict(previous, **wanted)
        file_before = read_file(persist_path) if persist_path else None
        file_after = persist_text(target) if persist_path else None
        file_changes = bool(persist_path) and file_before != file_after
        key = journal_key(self.ns)
        with self.journal.locked(create=not self.check_mode) as data:
            now = self.clock()
            entry = data.get(key)
            stale = entry if stranger(entry, self.ns) else None
            if stale is not None:  # a gone namespace's: neither its originals nor its lease are this one's
                entry = None
                if not self.check_mode:
                    del data[key]
            held = lease_view((entry or {}).get('lease'), now)
            busy = live_lease_of_other(held, lease)
            if busy is not None:
                raise LeaseBusy(self.ns, busy)
            record = new_lease(held, lease, now) if lease is not None else None
            taken = record is not None and (held is None or held['holder'] != record['holder'])
            notes = self._take_notes(held, record, taken)
            if stale is not None:
                notes.insert(0, MSG_STALE_PRESENT % (self._verb('dropped', 'would drop'), self.ns.inode,
                                                     entry_cookie(stale), self.ns.cookie))
            shown = lease_view(record, now) if record is not None else held
            cleared = held if taken else None
            changed = bool(changes or file_changes or taken or stale)
            if self.check_mode:
                msg = ('would set %s' % ', '.join('%s=%d' % (NAMES[k], wanted[k]) for k in changes)
                       if changes else 'already set')
                if file_changes:
                    msg += '; would write %s' % persist_path
                return self._result(changed, previous, target, changes, entry, '; '.join([msg] + notes),
                                    render(previous) + (file_before or ''), render(target) + (file_after or ''),
                                    lease=shown, lease_cleared=cleared)
            before = copy.deepcopy(entry)
            dirty = bool(prune_dead(data, self.live_inodes() | {self.ns.inode})) or stale is not None
            if entry is None and (changes or file_changes or record is not None):
                entry = new_entry(self.ns, previous)
                data[key] = entry
            elif entry is not None and isinstance(entry.get('originals'), dict):
                # a key journalled for the first time now (retries2 after the trio): the first originals win
                for name, value in previous.items():
                    entry['originals'].setdefault(name, value)
            if record is not None:
                entry['lease'] = record
            if dirty or entry != before:
                self.journal.save(data)
            try:
                apply_values(self.access, previous, wanted)
            except SysctlError:
                if self._read(keys) == previous and data.get(key) != before:
                    if before is None:
                        del data[key]
                    else:
                        data[key] = before
                    self.journal.save(data)
                raise
        current = self._read(keys)
        wrong = [key for key in wanted if current[key] != wanted[key]]
        if wrong:
            raise SysctlError('read back %s after writing it; the kernel did not keep the value'
                              % ', '.join('%s=%d (wanted %d)' % (NAMES[k], current[k], wanted[k]) for k in wrong))
        if file_changes:
            self._persist(persist_path, file_before, file_after)
        msg = ('set %s' % ', '.join('%s=%d' % (NAMES[k], wanted[k]) for k in changes)) if changes else 'already set'
        if file_changes:
            msg += '; wrote %s' % persist_path
        return self._result(changed, previous, current, changes, entry, '; '.join([msg] + notes),
                            render(previous) + (file_before or ''), render(current) + (file_after or ''),
                            lease=shown, lease_cleared=cleared)

    def _persist(self, path, before, after):
        """Journal the drop-in's previous content (first time only), then write it atomically."""
        with self.persist_journal.locked() as data:
            if path not in data:
                data[path] = {'previous': before, 'netns_inode': self.ns.inode, 'saved_at': now_iso()}
                self.persist_journal.save(data)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755, exist_ok=True)
        atomic_write(path, after, 0o644)

    def _file_entry(self, persist_path):
        """The persist journal's record of persist_path when it was written for this namespace."""
        if self.persist_journal is None or not persist_path:
            return None
        with self.persist_journal.locked(create=False) as pdata:
            file_entry = pdata.get(persist_path)
        if not isinstance(file_entry, dict) or file_entry.get('netns_inode') != self.ns.inode:
            return None
        check_file(persist_path)
        return file_entry

    def restored(self, saved=None, persist_path=None, lease=None):
        key = journal_key(self.ns)
        current = self.access.read()
        with self.journal.locked(create=False) as data:
            entry = data.get(key)
            if stranger(entry, self.ns):
                return self._drop_stale(data, key, entry, current)
            held = lease_view((entry or {}).get('lease'), self.clock())
            other = live_lease_of_other(held, lease) if lease is not None else None
            if other is not None:
                msg = MSG_LEASE_OTHER % ((self.ns.name, self.ns.inode) + lease_fields(other) + (lease.holder,))
                return self._result(False, current, current, [], entry, msg, render(current), render(current),
                                    lease=other, lease_busy=True)
            originals = (check_saved(saved, self.ns) if saved is not None
                         else journal_originals(self.journal, entry, self.ns))
            file_entry = self._file_entry(persist_path)
            if not originals and file_entry is None:
                return self._result(False, current, current, [], None,
                                    MSG_NOTHING_TO_RESTORE % (self.ns.inode, self.ns.name),
                                    render(current), render(current))
            originals = originals or {}
            if set(originals) - set(current):
                current = self._read(KEYS)   # retries2 was journalled too
            changes = [k for k in KEYS if k in originals and current[k] != originals[k]]
            target = dict(current, **originals)
            file_now = read_file(persist_path) if file_entry is not None else None
            file_changes = file_entry is not None and file_now != file_entry.get('previous')
            notes = [_cleared_note(held, lease, self.check_mode)] if held is not None else []
            if self.check_mode:
                msg = 'would restore %s' % ', '.join('%s=%d' % (NAMES[k], originals[k]) for k in changes)
                if file_changes:
                    msg += '; would put back %s' % persist_path
                return self._result(bool(changes or file_changes or entry), current, target, changes, entry,
                                    '; '.join([msg] + notes), render(current), render(target), lease_cleared=held)
            apply_values(self.access, current, originals)
            after = self._read(tuple(current))
            wrong = [k for k in originals if after[k] != originals[k]]
            if wrong:
                raise SysctlError('restore did not take: %s; the journal is kept, try again'
                                  % ', '.join('%s=%d (wanted %d)' % (NAMES[k], after[k], originals[k]) for k in wrong))
            if file_entry is not None:
                self._put_back(persist_path, file_entry)
            if key in data:
                del data[key]
                self.journal.save(data)
        msg = ('restored %s' % ', '.join('%s=%d' % (NAMES[k], originals[k]) for k in changes)) if changes \
            else 'values were already the originals'
        if file_changes:
            msg += '; put back %s' % persist_path
        return self._result(bool(changes or file_changes or entry), current, after, changes, entry or None,
                            '; '.join([msg] + notes), render(current), render(after), lease_cleared=held)

    def _drop_stale(self, data, key, entry, current):
        """The result of restored for a journal entry of a gone namespace whose inode this one got: the entry is
        dropped (not in check mode), nothing is written to this namespace (stale: true)."""
        if not self.check_mode:
            del data[key]
            self.journal.save(data)
        msg = MSG_STALE_RESTORED % (self.ns.inode, entry_cookie(entry), self.ns.name, self.ns.cookie,
                                    self._verb('dropped', 'would drop'))
        result = self._result(True, current, current, [], None, msg, render(current), render(current))
        result['stale'] = True
        return result

    def _put_back(self, persist_path, file_entry):
        """The drop-in as it was before the first persist (removed when it was absent)."""
        previous_text = file_entry.get('previous')
        if previous_text is None:
            if os.path.exists(persist_path):
                os.unlink(persist_path)
        else:
            atomic_write(persist_path, previous_text, 0o644)
        with self.persist_journal.locked() as pdata:
            pdata.pop(persist_path, None)
            self.persist_journal.save(pdata)
