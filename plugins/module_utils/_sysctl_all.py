# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""``netns: all`` with ``state: restored``: put back every network namespace the journal knows.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The journal (_sysctl.Journal) is keyed by namespace inode; each entry also
records the namespace's label, its name under netns_dir (``netns_name``;
older entries: the label when it is a name) and its cookie (``netns_cookie``,
_proc.netns_identity; null on a kernel without cookies, and absent from
entries older than cookies: those are judged by their inode alone, as
before). A journalled namespace is restored only where it provably still is:

- its inode no longer exists: it is gone (the entry is dropped, as every
  change drops it anyway);
- the namespace that now has its inode has another cookie: it is gone and a
  new namespace got its inode (the kernel reuses inodes, never cookies); the
  entry is dropped, nothing is written to the stranger;
- it had a name, and that name is gone or now points at another inode: it is
  gone (a deleted namespace's inode is soon reused by the kernel), not touched;
- else it is entered by its name, or by a process that holds it, and the
  child that enters it checks the inode, and the cookie when known, before it
  reads or writes.
"""

from __future__ import annotations

import os

from ansible_collections.tcplab.keepalive.plugins.module_utils import _netns
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import (
    cookie_matches, netns_identities, netns_inode)
from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl import (
    OWN_NETNS, KeepaliveSysctl, Namespace, NetnsAccess, ProcAccess, SysctlError, entry_cookie, mark_boot, prune_dead)

MSG_ALL_STATE = ('netns: all works only with state: restored (it restores every journalled namespace of the host); '
                 'to set values, name one namespace in netns (a name under netns_dir or a pid)')
MSG_ALL_SAVED = ('saved holds the originals of one namespace: drop it with netns: all (the journal on the host is '
                 'used), or name that namespace in netns')
MSG_GONE_INODE = 'gone: no network namespace with inode %d exists any more; its journal entry is dropped'
MSG_GONE_NAME = 'gone: its name %s no longer exists (a deleted namespace\'s inode may be reused); not touched'
MSG_REPLACED = 'gone: its name %s now points at another namespace (inode %d, journalled %d); not touched'
MSG_RECYCLED = ('gone: the network namespace with inode %d now has cookie %d, not the journalled %d (a new namespace '
                'got the inode of the deleted one); its journal entry is dropped, nothing written to the new one')
MSG_FAILED = 'restoring %d of %d journalled network namespaces failed: %s'
MSG_SUMMARY = '%s %d journalled network namespace(s), %d gone, %d left alone (leased to another run)'
MSG_NONE = 'nothing to restore: the journal lists no network namespace'
MSG_OTHER = ('left alone: journalled by a run from another network namespace (inode %d: another lab host of this '
             'machine, whose own rollback restores it)')
MSG_OTHERS = '%d journalled from another network namespace left alone'


def check_all(params):
    """SysctlError unless netns: all comes with what it can do."""
    if params['state'] != 'restored':
        raise SysctlError(MSG_ALL_STATE)
    if params.get('saved') is not None:
        raise SysctlError(MSG_ALL_SAVED)


def entry_name(entry):
    """The name under netns_dir a journal entry was made for, or None."""
    name = entry.get('netns_name')
    if name is None and 'netns_name' not in entry:
        label = entry.get('netns')
        name = label if label != 'own' and _netns.is_name(label) and not label.isdigit() else None
    return name if _netns.is_name(name) else None


def live_cookies(inodes, netns_dir):
    """{inode: cookie} of the live namespaces with these inodes (cookie None: unknown); one pass over /proc
    (_netns.discover) and one short thread for all of them (_proc.netns_identities), only when inodes is not empty."""
    if not inodes:
        return {}
    paths = [entry['path'] for entry in _netns.discover(netns_dir) if entry['inode'] in inodes]
    return {inode: cookie for inode, cookie in netns_identities(paths).values() if inode in inodes}


def recycled(inode, entry, cookies):
    """Whether the namespace that has inode now is another one than the entry's (both cookies known, unequal)."""
    return inode in cookies and not cookie_matches(entry_cookie(entry), cookies[inode])


def locate(inode, entry, netns_dir, live, cookies=None):
    """(path, None) where the journalled namespace is now, or (None, why it counts as gone).

    cookies: {inode: cookie} of the live namespaces (live_cookies) for the entries that record a cookie."""
    if inode not in live:
        return None, MSG_GONE_INODE % inode
    if recycled(inode, entry, cookies or {}):
        return None, MSG_RECYCLED % (inode, cookies[inode], entry_cookie(entry))
    name = entry_name(entry)
    if name is not None:
        path = os.path.join(netns_dir, name)
        now = netns_inode(path)
        if now is None:
            return None, MSG_GONE_NAME % name
        if now != inode:
            return None, MSG_REPLACED % (name, now, inode)
        return path, None
    if inode == netns_inode(OWN_NETNS):
        return OWN_NETNS, None
    path = _netns.path_of_inode(inode, netns_dir)
    return (path, None) if path else (None, MSG_GONE_INODE % inode)


def journalled(journal, persist_journal, persist_path):
    """[(inode, entry)] of every namespace to visit: the journal's, and the one the drop-in was written for."""
    with journal.locked(create=False) as data:
        found = {entry['netns_inode']: entry for entry in data.values()
                 if isinstance(entry, dict) and isinstance(entry.get('netns_inode'), int)}
    if persist_path:
        with persist_journal.locked(create=False) as pdata:
            record = pdata.get(persist_path)
        inode = record.get('netns_inode') if isinstance(record, dict) else None
        if isinstance(inode, int) and inode not in found:
            found[inode] = {'netns_inode': inode, 'netns': 'boot', 'netns_name': None}
    return sorted(found.items())


def from_elsewhere(entry, own):
    """The inode of the namespace another run journalled entry from, or None when it is this caller's to restore:
    made from the caller's namespace, for the caller's namespace itself, or by a release that did not record it."""
    origin = entry.get('from_netns_inode')
    if not isinstance(origin, int) or own is None or origin == own or entry.get('netns_inode') == own:
        return None
    return origin


def _other(inode, entry, origin):
    return {'netns': {'inode': inode, 'cookie': entry_cookie(entry), 'path': None, 'label': entry.get('netns'),
                      'boot': None},
            'status': 'other', 'changed': False, 'msg': MSG_OTHER % origin}


def _status(result):
    if result.get('lease_busy'):
        return 'busy'
    if result.get('stale'):
        return 'gone'
    return 'restored' if result['changed'] else 'unchanged'


def _restore_one(inode, entry, path, journals, check_mode, persist_path, lease, cookie=None):
    """The result of restoring one located namespace (status restored, unchanged, busy, gone or failed); cookie:
    the namespace's now (None: unknown, the inode alone proves it)."""
    own = path == OWN_NETNS
    ns = mark_boot(Namespace(path, entry.get('netns') or 'inode %d' % inode, own, inode, entry_name(entry) or None,
                             entry_name(entry), cookie=cookie), _netns.boot_netns())
    access = ProcAccess() if own else NetnsAccess(path, inode, cookie=cookie)
    engine = KeepaliveSysctl(ns, access, journals[0], journals[1], check_mode=check_mode, live_inodes=journals[2])
    try:
        result = engine.restored(None, persist_path, lease)
    except SysctlError as exc:
        return {'netns': ns.as_dict(), 'status': 'failed', 'changed': False, 'msg': str(exc)}
    result.pop('ansible_facts', None)
    result['status'] = _status(result)
    return result


def _gone(inode, entry, why):
    return {'netns': {'inode': inode, 'cookie': entry_cookie(entry), 'path': None, 'label': entry.get('netns'),
                      'boot': None},
            'status': 'gone', 'changed': False, 'msg': why}


def restore_all(journal, persist_journal, netns_dir, check_mode=False, persist_path=None, lease=None):
    """Restore every journalled namespace that still provably exists; returns the module's result."""
    live = _netns.live_inodes(netns_dir)
    journals = (journal, persist_journal, lambda: _netns.live_inodes(netns_dir))
    results = []
    own = netns_inode(OWN_NETNS)
    entries = journalled(journal, persist_journal, persist_path)
    # the cookies only of live namespaces that an entry with a cookie names: entries without one cost nothing
    cookies = live_cookies({inode for inode, entry in entries if inode in live and entry_cookie(entry) is not None},
                           netns_dir)
    stale = {inode: entry_cookie(entry) for inode, entry in entries if recycled(inode, entry, cookies)}
    for inode, entry in entries:
        origin = from_elsewhere(entry, own)
        path, why = (None, None) if origin is not None else locate(inode, entry, netns_dir, live, cookies)
        if origin is not None:
            results.append(_other(inode, entry, origin))
        elif path is None:
            results.append(_gone(inode, entry, why))
        else:
            results.append(_restore_one(inode, entry, path, journals, check_mode, persist_path, lease,
                                        cookies.get(inode)))
    dropped = _drop_dead(journal, live, check_mode, stale)
    counts = {status: sum(1 for r in results if r['status'] == status) for status in
              ('restored', 'unchanged', 'busy', 'gone', 'failed', 'other')}
    result = {'changed': bool(dropped) or any(r['changed'] for r in results), 'namespaces': results, 'counts': counts,
              'msg': _summary(results, counts, check_mode), 'diff': _diff(results)}
    if counts['failed']:
        raise SysctlError(MSG_FAILED % (counts['failed'], len(results), '; '.join(
            '%s: %s' % (r['netns']['label'], r['msg']) for r in results if r['status'] == 'failed')),
            namespaces=results, counts=counts)
    return result


def _drop_dead(journal, live, check_mode, stale=None):
    """Entries of namespaces whose inode no longer exists, or whose inode another namespace got (stale:
    {inode: the entry's cookie}; an entry made since for the new namespace has its cookie and stays), leave the
    journal; returns whether there were any."""
    with journal.locked(create=False) as data:
        if check_mode:
            return bool(prune_dead(dict(data), live, stale))
        dead = prune_dead(data, live, stale)
        if dead:
            journal.save(data)
    return bool(dead)


def _summary(results, counts, check_mode):
    if not results:
        return MSG_NONE
    verb = 'would restore' if check_mode else 'restored'
    head = MSG_SUMMARY % (verb, counts['restored'] + counts['unchanged'], counts['gone'], counts['busy'])
    if counts['other']:
        head += ', ' + MSG_OTHERS % counts['other']
    return '; '.join([head] + ['%s (inode %d): %s' % (r['netns']['label'], r['netns']['inode'], r['msg'])
                               for r in results if r['status'] != 'other'])


def _diff(results):
    before, after = [], []
    for r in results:
        if 'diff' in r:
            before.append('# %s\n%s' % (r['netns']['label'], r['diff']['before']))
            after.append('# %s\n%s' % (r['netns']['label'], r['diff']['after']))
            r.pop('diff')
    return {'before': ''.join(before), 'after': ''.join(after), 'before_header': 'keepalive sysctls (all journalled)',
            'after_header': 'keepalive sysctls (all journalled)'}
