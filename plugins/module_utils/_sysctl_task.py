# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The sysctl module's task from its options: one namespace's present (take the
lease, journal the originals, set the values) or restored (the lease's
originals back), or netns=all restored. Shared by the sysctl module and the
experiment_host module's sysctl step, so that both run the same checks in
the same order.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl import (
    ALL, MSG_NOTHING, Journal, KeepaliveSysctl, NetnsAccess, ProcAccess, SysctlError, boot_netns, check_paths,
    check_persist, lease_request, live_netns_inodes, mark_boot, resolve_netns, validate_values)


def run(p, check_mode):
    """The task's result for the options p (the sysctl module's, every key present); SysctlError when refused or
    failed, OSError when a file could not be read or written."""
    wanted = validate_values(p)
    if p['netns'] == ALL:
        return _all_restored(p, check_mode)
    if p['state'] == 'present' and not wanted:
        raise SysctlError(MSG_NOTHING)
    lease = lease_request(p)
    check_paths(p)
    journal, persist_journal = _journals(p)
    ns = mark_boot(resolve_netns(p['netns'], p['netns_dir']), boot_netns())
    if p['persist'] and p['state'] == 'present':
        check_persist(ns, p['persist_path'], boot_netns())
    access = ProcAccess() if ns.own else NetnsAccess(ns.path, ns.inode)
    engine = KeepaliveSysctl(ns, access, journal, persist_journal, check_mode=check_mode,
                             live_inodes=lambda: live_netns_inodes(p['netns_dir']))
    if p['state'] == 'present':
        return engine.present(wanted, p['persist_path'] if p['persist'] else None, lease)
    return engine.restored(p['saved'], p['persist_path'], lease)


def _journals(p):
    return Journal(p['journal_dir']), Journal(p['persist_journal_dir'], 'persist_journal_dir')


def _all_restored(p, check_mode):
    """netns=all: every journalled namespace restored (_sysctl_all.py, imported only then: one file less to compile
    for every other task on a slow target)."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _sysctl_all  # pylint: disable=import-outside-toplevel
    _sysctl_all.check_all(p)
    lease = lease_request(p)
    check_paths(p)
    journal, persist_journal = _journals(p)
    return _sysctl_all.restore_all(journal, persist_journal, p['netns_dir'], check_mode, p['persist_path'], lease)
