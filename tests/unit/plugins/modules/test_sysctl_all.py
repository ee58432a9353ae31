# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`netns: all` with `state: restored`, run for real: `ansible localhost -m tcplab.keepalive.sysctl` against
network namespaces made here (tkns-*), with journals under /run/tcplab-test-ns; the kernel's values are read
back. Nothing touches the root namespace's values (the journal used here never lists it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _sysctl_all
from ansible_collections.tcplab.keepalive.tests.unit.plugins.modules.sysctl_cli import (
    kernel_values as values, netns_inode as inode, run_module)

RUN_DIR = Path('/run/tcplab-test-ns')   # the journals (conftest.py's journal fixture)
NETNS_PREFIX = 'tkns-'
ORIGINALS = [7200, 75, 9]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None,
                                reason='needs root and ip(8): the tests make network namespaces')


@pytest.fixture
def namespaces(netns_factory):
    """make(count) -> the names of count new namespaces (the shared netns_factory of tests/unit/conftest.py)."""
    return lambda count: [netns_factory() for dummy in range(count)]


def by_label(result):
    return {entry['netns']['label']: entry for entry in result['namespaces']}


@pytest.mark.once
def test_restore_all_restores_the_living_and_reports_the_gone(collections, tmp_path, namespaces, journal):
    kept, deleted = namespaces(2)
    gone_inode = inode(deleted)
    for name, lab in ((kept, {'time': 2, 'intvl': 1, 'probes': 3}), (deleted, {'time': 5, 'intvl': 2, 'probes': 4})):
        status, result = run_module(collections, tmp_path, dict(lab, netns=name, journal_dir=str(journal)))
        assert status == 'CHANGED', result
    assert values(kept) == [2, 1, 3]
    subprocess.run(['ip', 'netns', 'del', deleted], check=True)

    args = {'netns': 'all', 'state': 'restored', 'journal_dir': str(journal)}
    status, check = run_module(collections, tmp_path, args, extra=['--check'])
    assert status == 'CHANGED', check
    assert values(kept) == [2, 1, 3] and (journal / 'journal.json').exists()

    status, result = run_module(collections, tmp_path, args)
    assert status == 'CHANGED', result
    assert values(kept) == ORIGINALS
    found = by_label(result)
    assert found[kept]['status'] == 'restored' and found[kept]['netns']['inode'] == inode(kept)
    assert found[kept]['netns']['boot'] is False and found[kept]['netns']['path'] == '/run/netns/' + kept
    assert found[kept]['previous'] == {'time': 2, 'intvl': 1, 'probes': 3} and found[kept]['current'] == dict(
        time=7200, intvl=75, probes=9)
    assert found[deleted]['status'] == 'gone' and found[deleted]['netns']['inode'] == gone_inode
    assert found[deleted]['changed'] is False
    assert result['counts'] == {'restored': 1, 'unchanged': 0, 'busy': 0, 'gone': 1, 'failed': 0, 'other': 0}
    assert not (journal / 'journal.json').exists()

    status, again = run_module(collections, tmp_path, args)
    assert (status, again['namespaces']) == ('SUCCESS', []), again


def test_a_name_pointing_at_another_namespace_is_not_touched(collections, tmp_path, namespaces, journal):
    (name,) = namespaces(1)
    status, result = run_module(collections, tmp_path, {'netns': name, 'time': 9, 'journal_dir': str(journal)})
    assert status == 'CHANGED', result
    # the journal entry now claims another namespace (as after ip netns del + add that got a new inode)
    path = journal / 'journal.json'
    data = json.loads(path.read_text())
    entry = data.pop(str(inode(name)))
    # an entry without a cookie, as older releases wrote: the name proves it (with the cookie kept, the
    # namespace with that inode has another one and the entry is dropped at once: test_sysctl_identity.py)
    entry.pop('netns_cookie')
    holder = subprocess.Popen(['unshare', '--net', 'sleep', '60'])
    try:
        for dummy in range(50):
            other = os.stat('/proc/%d/ns/net' % holder.pid).st_ino
            if other != os.stat('/proc/self/ns/net').st_ino:
                break
            subprocess.run(['sleep', '0.1'], check=True)
        entry['netns_inode'] = other
        data[str(other)] = entry
        path.write_text(json.dumps(data))
        status, result = run_module(collections, tmp_path, {'netns': 'all', 'state': 'restored', 'journal_dir': str(journal)})
    finally:
        holder.kill()
        holder.wait()
    assert status == 'SUCCESS', result
    (only,) = result['namespaces']
    assert only['status'] == 'gone' and only['netns']['inode'] == other
    assert only['msg'] == 'gone: its name %s now points at another namespace (inode %d, journalled %d); not touched' % (
        name, inode(name), other)
    assert values(name) == [9, 75, 9]


@pytest.mark.parametrize('args, message', [
    ({'time': 30}, 'netns: all works only with state: restored'),
    ({'state': 'restored', 'saved': {'netns_inode': 1, 'originals': {'time': 1}}}, 'saved holds the originals of one'),
])
def test_netns_all_refused(collections, tmp_path, journal, args, message):
    status, result = run_module(collections, tmp_path, dict(args, netns='all', journal_dir=str(journal)))
    assert status == 'FAILED!' and result['msg'].startswith(message), result
    assert not journal.exists()


@pytest.mark.once
def test_restore_all_leaves_alone_what_another_namespace_journalled(collections, tmp_path, namespaces, journal):
    """Lab hosts that are namespaces of one machine share its journal: the rollback of one lab host (netns: all
    run inside it) must not restore another's namespace, which a live run of another lab may be using."""
    mine, theirs = namespaces(2)
    for name, lab in ((mine, {'time': 2, 'intvl': 1, 'probes': 3}), (theirs, {'time': 5, 'intvl': 2, 'probes': 4})):
        status, result = run_module(collections, tmp_path, dict(lab, journal_dir=str(journal)), inside=name)
        assert status == 'CHANGED', result

    args = {'netns': 'all', 'state': 'restored', 'journal_dir': str(journal)}
    status, result = run_module(collections, tmp_path, args, inside=mine)
    assert status == 'CHANGED', result
    assert values(mine) == ORIGINALS and values(theirs) == [5, 2, 4]
    found = {entry['netns']['inode']: entry for entry in result['namespaces']}
    assert found[inode(theirs)]['status'] == 'other' and found[inode(theirs)]['changed'] is False
    assert found[inode(theirs)]['msg'] == _sysctl_all.MSG_OTHER % inode(theirs)
    assert result['counts']['other'] == 1 and result['counts']['restored'] == 1
    assert ', 1 journalled from another network namespace left alone;' in result['msg']

    status, result = run_module(collections, tmp_path, args, inside=theirs)
    assert status == 'CHANGED' and values(theirs) == ORIGINALS, result
    assert result['counts']['restored'] == 1 and result['counts']['other'] == 0
