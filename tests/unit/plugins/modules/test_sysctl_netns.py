# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The sysctl module run for real: `ansible localhost -m tcplab.keepalive.sysctl -a 'k=v ...'` against
network namespaces made here (tksy-*), reading the kernel's values back: k=v strings (issue 10 item 14),
persist refused outside the boot namespace (item 4), the lease (item 7) and path options naming a file
(item 17). Journals live under /run/tcplab-test-sysctl; nothing touches the root namespace's values."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.tests.unit.plugins.modules.sysctl_cli import (
    kernel_values as values, netns_inode, run_module)

RUN_DIR = Path('/run/tcplab-test-sysctl')   # the journals (conftest.py's journal fixture)
NETNS_PREFIX = 'tksy-'
ORIGINALS = [7200, 75, 9]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None,
                                reason='needs root and ip(8): the tests make network namespaces')


# -- item 14: k=v strings ---------------------------------------------------------------------------

@pytest.mark.once
def test_kv_strings_are_accepted_and_the_bad_one_is_blamed(collections, tmp_path, netns, journal):
    where = 'netns=%s journal_dir=%s' % (netns, journal)
    status, result = run_module(collections, tmp_path, 'time=30 intvl=3 probes=3 ' + where)
    assert (status, result['changed']) == ('CHANGED', True), result
    assert values(netns) == [30, 3, 3]

    status, result = run_module(collections, tmp_path, 'time={{ t }} intvl={{ i }} probes=4 ' + where,
                                extra=['-e', 't=31 i=4'])
    assert status == 'CHANGED', result
    assert values(netns) == [31, 4, 4]

    status, result = run_module(collections, tmp_path, 'time=30 intvl=abc ' + where)
    assert status == 'FAILED!'
    assert result['msg'] == "tcp_keepalive_intvl must be an integer 1..32767 seconds, got 'abc'"
    status, result = run_module(collections, tmp_path, 'time=2.5 ' + where)
    assert result['msg'] == "tcp_keepalive_time must be an integer 1..32767 seconds, got '2.5'"
    assert values(netns) == [31, 4, 4]

    status, result = run_module(collections, tmp_path, 'state=restored ' + where)
    assert status == 'CHANGED' and values(netns) == ORIGINALS


# -- item 4: persist only for the namespace that sysctl.d configures at boot -----------------------

def assert_persist_refused(status, result, ns, dropin):
    assert status == 'FAILED!', result
    assert result['persist_refused'] is True
    assert result['msg'].startswith('persist: true writes %s, which configures the network namespace of PID 1 at boot '
                                    '(inode ' % dropin), result['msg']
    assert ('not network namespace %s (inode %d): lab hosts and containers get their keepalive settings from whoever '
            'creates their namespace at start' % (ns, netns_inode(ns))) in result['msg']
    assert result['msg'].endswith('set them without persist')
    assert values(ns) == ORIGINALS


def test_persist_refused_inside_a_namespace(collections, tmp_path, netns, journal):
    # a lab host reached over the netns connection: the module itself runs in the namespace
    dropin = tmp_path / 'etc' / 'sysctl.d' / '90-tcplab-keepalive.conf'
    status, result = run_module(collections, tmp_path, {'time': 9, 'persist': True, 'persist_path': str(dropin),
                                                        'persist_journal_dir': str(journal / 'lib'),
                                                        'journal_dir': str(journal / 'run')}, inside=netns)
    assert_persist_refused(status, result, netns, dropin)
    assert result['netns']['label'] == 'own' and result['netns']['boot'] is False
    assert not (tmp_path / 'etc').exists() and not journal.exists()


def test_persist_refused_for_the_netns_option(collections, tmp_path, netns, journal):
    dropin = tmp_path / 'etc' / 'sysctl.d' / '90-tcplab-keepalive.conf'
    status, result = run_module(collections, tmp_path, {'netns': netns, 'time': 9, 'persist': True, 'persist_path': str(dropin),
                                                        'persist_journal_dir': str(journal / 'lib'),
                                                        'journal_dir': str(journal / 'run')})
    assert_persist_refused(status, result, netns, dropin)
    assert not (tmp_path / 'etc').exists() and not journal.exists()


def test_persist_allowed_in_the_boot_namespace_check_mode(collections, tmp_path, journal):
    # the control: the host's own namespace may persist (check mode, so nothing on the host changes)
    dropin = tmp_path / 'etc' / 'sysctl.d' / '90-tcplab-keepalive.conf'
    status, result = run_module(collections, tmp_path, {'time': 30, 'persist': True, 'persist_path': str(dropin),
                                                        'persist_journal_dir': str(journal / 'lib'),
                                                        'journal_dir': str(journal / 'run')}, extra=['--check'])
    assert status in ('SUCCESS', 'CHANGED'), result
    assert result['netns']['boot'] is True and 'would write %s' % dropin in result['msg']
    assert not (tmp_path / 'etc').exists() and not journal.exists()


# -- item 7: the lease ------------------------------------------------------------------------------

@pytest.mark.once
def test_lease(collections, tmp_path, netns, journal):
    def run(**args):
        return run_module(collections, tmp_path, dict(args, netns=netns, journal_dir=str(journal)))
    lab = {'time': 2, 'intvl': 1, 'probes': 3}

    status, a = run(lease='run-A', lease_owner='ctl-a 4242', **lab)
    assert status == 'CHANGED' and a['lease']['holder'] == 'run-A' and a['lease']['owner'] == 'ctl-a 4242', a
    assert values(netns) == [2, 1, 3]

    status, b = run(time=5, lease='run-B')
    assert status == 'FAILED!' and b['lease_busy'] is True and b['lease']['holder'] == 'run-A', b
    assert b['msg'].startswith('the keepalive sysctls of network namespace %s (inode %d) are leased to run run-A '
                               '(owner ctl-a 4242, since ' % (netns, netns_inode(netns)))
    assert b['msg'].endswith('or if that run is dead run the tcplab.keepalive.rollback playbook on this host')
    assert values(netns) == [2, 1, 3]

    status, operator = run(time=6)
    assert status == 'FAILED!' and operator['lease_busy'] is True
    assert values(netns) == [2, 1, 3]

    status, b_cleanup = run(state='restored', lease='run-B')
    assert status == 'SUCCESS' and b_cleanup['changed'] is False and b_cleanup['lease_busy'] is True, b_cleanup
    assert b_cleanup['msg'].startswith('nothing restored: the keepalive sysctls of network namespace %s' % netns)
    assert values(netns) == [2, 1, 3]

    status, a_cleanup = run(state='restored', lease='run-A')
    assert status == 'CHANGED' and a_cleanup['msg'].endswith('; released the lease of run run-A'), a_cleanup
    assert a_cleanup['lease'] is None and a_cleanup['lease_cleared']['holder'] == 'run-A'
    assert values(netns) == ORIGINALS

    status, b = run(lease='run-B', lease_ttl=1, **lab)
    assert status == 'CHANGED' and b['lease']['holder'] == 'run-B', b
    time.sleep(2)
    status, a = run(time=4, lease='run-A')
    assert status == 'CHANGED' and a['lease']['holder'] == 'run-A', a
    assert 'took over the expired lease of run run-B' in a['msg']
    assert values(netns) == [4, 1, 3]

    status, rollback = run(state='restored')
    assert status == 'CHANGED', rollback
    assert '; cleared the lease of run run-A (owner unknown, since ' in rollback['msg']
    assert values(netns) == ORIGINALS
    assert not (journal / 'journal.json').exists()


# -- item 17: a path option naming a file -------------------------------------------------------------

@pytest.mark.parametrize('option, state', [('journal_dir', {'time': 30}), ('persist_journal_dir', {'state': 'restored'})])
def test_dir_option_naming_a_file(collections, tmp_path, netns, journal, option, state):
    journal.mkdir(parents=True)
    (journal / 'notes').write_text('mine\n')
    paths = {'journal_dir': journal / 'run', 'persist_journal_dir': journal / 'lib', option: journal / 'notes'}
    args = dict(state, netns=netns, journal_dir=str(paths['journal_dir']), persist_journal_dir=str(paths['persist_journal_dir']))
    status, result = run_module(collections, tmp_path, args)
    assert status == 'FAILED!'
    assert result['msg'] == '%s %s is a file, not a directory: give a directory path' % (option, journal / 'notes')
    assert os.listdir(str(journal)) == ['notes'] and (journal / 'notes').read_text() == 'mine\n'
    assert values(netns) == ORIGINALS
