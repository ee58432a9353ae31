# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The journal's proof of a namespace's identity, run for real (`ansible localhost -m tcplab.keepalive.sysctl`)
against network namespaces made here (tkck-*): an entry records the namespace's inode and cookie; an entry whose
inode another namespace got (another cookie) is dropped and never applied to that namespace; entries made before
cookies (inode only) still restore. The recycled inode is made by editing the journal entry's cookie (an input the
module reads, as after `ip netns del` and a new namespace that got the inode). Journals under
/run/tcplab-test-identity; nothing touches the root namespace's values."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _proc, _sysctl, _sysctl_all
from ansible_collections.tcplab.keepalive.tests.unit.plugins.modules.sysctl_cli import (
    kernel_values as values, netns_inode as inode, run_module)

RUN_DIR = Path('/run/tcplab-test-identity')   # the journals (conftest.py's journal fixture)
NETNS_PREFIX = 'tkck-'
ORIGINALS = [7200, 75, 9]

pytestmark = [pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None,
                                 reason='needs root and ip(8): the tests make network namespaces'),
              pytest.mark.skipif(_proc.netns_identity()[1] is None,
                                 reason='the kernel has no SO_NETNS_COOKIE (Linux < 5.14): the inode alone')]


def cookie(name):
    return _proc.netns_identity('/run/netns/' + name)[1]


def journalled(journal):
    path = journal / 'journal.json'
    return json.loads(path.read_text()) if path.exists() else {}


def edit_entry(journal, name, **changes):
    """Change the journal entry of namespace name (a key None: remove it)."""
    data = journalled(journal)
    entry = data[str(inode(name))]
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    (journal / 'journal.json').write_text(json.dumps(data))
    return entry


def set_time(collections, tmp_path, journal, name, value):
    status, result = run_module(collections, tmp_path, {'netns': name, 'time': value, 'journal_dir': str(journal)})
    assert status == 'CHANGED', result
    return result


def test_the_journal_records_the_cookie_with_the_inode(collections, tmp_path, netns, journal):
    result = set_time(collections, tmp_path, journal, netns, 9)
    entry = journalled(journal)[str(inode(netns))]
    assert (entry['netns_inode'], entry['netns_cookie']) == (inode(netns), cookie(netns))
    assert result['netns']['cookie'] == cookie(netns) and result['netns']['inode'] == inode(netns)
    assert result['ansible_facts']['tcplab_keepalive_saved']['netns_cookie'] == cookie(netns)


@pytest.mark.once
def test_restore_all_drops_an_entry_whose_inode_another_namespace_got(collections, tmp_path, netns, journal):
    set_time(collections, tmp_path, journal, netns, 9)
    real = cookie(netns)
    edit_entry(journal, netns, netns_cookie=real + 1)   # the entry of a gone namespace whose inode netns got

    args = {'netns': 'all', 'state': 'restored', 'journal_dir': str(journal)}
    status, check = run_module(collections, tmp_path, args, extra=['--check'])
    assert status == 'CHANGED' and check['namespaces'][0]['status'] == 'gone', check
    assert journalled(journal) and values(netns) == [9, 75, 9]

    status, result = run_module(collections, tmp_path, args)
    assert status == 'CHANGED', result
    (only,) = result['namespaces']
    assert only['status'] == 'gone' and only['changed'] is False
    assert only['netns']['inode'] == inode(netns) and only['netns']['cookie'] == real + 1
    assert only['msg'] == _sysctl_all.MSG_RECYCLED % (inode(netns), real, real + 1)
    assert values(netns) == [9, 75, 9]          # the stranger's values were not touched
    assert journalled(journal) == {}            # and the dead namespace's entry is gone


@pytest.mark.once
def test_restoring_one_namespace_never_applies_another_ones_entry(collections, tmp_path, netns, journal):
    set_time(collections, tmp_path, journal, netns, 9)
    real = cookie(netns)
    edit_entry(journal, netns, netns_cookie=real + 1)
    args = {'netns': netns, 'state': 'restored', 'journal_dir': str(journal)}

    status, check = run_module(collections, tmp_path, args, extra=['--check'])
    assert status == 'CHANGED' and check['stale'] is True and journalled(journal), check
    status, result = run_module(collections, tmp_path, args)
    assert status == 'CHANGED' and result['stale'] is True, result
    assert result['msg'] == _sysctl.MSG_STALE_RESTORED % (inode(netns), real + 1, netns, real, 'dropped')
    assert result['changed_keys'] == [] and values(netns) == [9, 75, 9]
    assert journalled(journal) == {}

    # the saved fact of the gone namespace is refused as well
    saved = {'netns_inode': inode(netns), 'netns_cookie': real + 1, 'originals': {'time': 7200}}
    status, result = run_module(collections, tmp_path, dict(args, saved=saved))
    assert status == 'FAILED!' and result['msg'] == _sysctl.MSG_SAVED_COOKIE % (inode(netns), real + 1, netns, real)
    assert values(netns) == [9, 75, 9]


@pytest.mark.once
def test_present_replaces_the_entry_of_a_gone_namespace(collections, tmp_path, netns, journal):
    set_time(collections, tmp_path, journal, netns, 9)
    real = cookie(netns)
    # a gone namespace had this inode, and other originals
    edit_entry(journal, netns, netns_cookie=real + 1, originals={'time': 1234, 'intvl': 75, 'probes': 9})

    result = set_time(collections, tmp_path, journal, netns, 10)
    assert result['msg'] == 'set net.ipv4.tcp_keepalive_time=10; ' + _sysctl.MSG_STALE_PRESENT % (
        'dropped', inode(netns), real + 1, real)
    entry = journalled(journal)[str(inode(netns))]
    assert entry['netns_cookie'] == real and entry['originals'] == {'time': 9, 'intvl': 75, 'probes': 9}

    status, result = run_module(collections, tmp_path, {'netns': netns, 'state': 'restored', 'journal_dir': str(journal)})
    assert status == 'CHANGED' and values(netns) == [9, 75, 9], result   # never the stranger's 1234


@pytest.mark.once
def test_an_entry_without_a_cookie_still_restores(collections, tmp_path, netns_factory, journal):
    """Journals written before cookies (or on a kernel without them) are judged by the inode, as before."""
    one, two = netns_factory(), netns_factory()
    set_time(collections, tmp_path, journal, one, 9)
    set_time(collections, tmp_path, journal, two, 8)
    edit_entry(journal, one, netns_cookie=None)          # an entry of an older release: no such key
    edit_entry(journal, two, netns_cookie=None)

    status, result = run_module(collections, tmp_path, {'netns': one, 'state': 'restored', 'journal_dir': str(journal)})
    assert status == 'CHANGED' and result['changed_keys'] == ['net.ipv4.tcp_keepalive_time'], result
    assert values(one) == ORIGINALS

    status, result = run_module(collections, tmp_path, {'netns': 'all', 'state': 'restored', 'journal_dir': str(journal)})
    assert status == 'CHANGED' and [e['status'] for e in result['namespaces']] == ['restored'], result
    assert values(two) == ORIGINALS and journalled(journal) == {}
