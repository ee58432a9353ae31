# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""net.ipv4.tcp_retries2 through the sysctl module (the in-flight experiment), run for real:
`ansible localhost -m tcplab.keepalive.sysctl` against network namespaces made here (tkf-*), journals under
/run/tcplab-test-tkf; the kernel's values are read back. It is journalled with the keepalive trio and restored with
it - by state: restored, and by netns: all (the rollback playbook) - and a bad value changes nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl import MSG_VALUE, SysctlError, validate_values
from ansible_collections.tcplab.keepalive.tests.unit.plugins.modules.sysctl_cli import kernel_values, run_module

RUN_DIR = Path('/run/tcplab-test-tkf')   # the journals (conftest.py's journal fixture)
NETNS_PREFIX = 'tkf-'
KEYS = ('tcp_keepalive_time', 'tcp_keepalive_intvl', 'tcp_keepalive_probes', 'tcp_retries2')
UNIT = ' (timeout retransmissions before an established connection is given up)'
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None,
                                reason='needs root and ip(8): the tests make network namespaces')


@pytest.mark.parametrize('value, message', [
    (256, MSG_VALUE % ('tcp_retries2', 0, 255, UNIT, 256)),
    (-1, 'tcp_retries2 must be an integer 0..255 (timeout retransmissions before an established connection is given '
         'up), got -1'),
    ('3.5', "tcp_retries2 must be an integer 0..255 (timeout retransmissions before an established connection is given "
            "up), got '3.5'"),
    (True, 'tcp_retries2 must be an integer 0..255 (timeout retransmissions before an established connection is given '
           'up), got True'),
])
def test_bad_retries2_is_named(value, message):
    with pytest.raises(SysctlError) as exc:
        validate_values({'time': 30, 'retries2': value})
    assert str(exc.value) == message


def test_retries2_text_and_bounds():
    assert validate_values({'retries2': ' 3 '}) == {'retries2': 3}
    assert validate_values({'retries2': 0, 'probes': 3}) == {'probes': 3, 'retries2': 0}
    assert validate_values({'retries2': '255'}) == {'retries2': 255}


def kernel(ns):
    return kernel_values(ns, KEYS)


def originals(journal, ns):
    data = json.loads((journal / 'journal.json').read_text())
    return data[str(os.stat('/run/netns/%s' % ns).st_ino)]['originals']


@needs_root
def test_retries2_is_journalled_with_the_trio_and_restored(collections, tmp_path, netns, journal):
    assert kernel(netns) == [7200, 75, 9, 15]
    status, result = run_module(collections, tmp_path, {'netns': netns, 'journal_dir': str(journal), 'time': 2,
                                                        'intvl': 1, 'probes': 3, 'retries2': 3})
    assert status == 'CHANGED', result
    assert kernel(netns) == [2, 1, 3, 3]
    assert result['previous'] == {'time': 7200, 'intvl': 75, 'probes': 9, 'retries2': 15}
    assert 'net.ipv4.tcp_retries2' in result['changed_keys']
    assert originals(journal, netns) == {'time': 7200, 'intvl': 75, 'probes': 9, 'retries2': 15}
    status, result = run_module(collections, tmp_path, {'netns': netns, 'journal_dir': str(journal),
                                                        'state': 'restored'})
    assert status == 'CHANGED', result
    assert 'net.ipv4.tcp_retries2=15' in result['msg']
    assert kernel(netns) == [7200, 75, 9, 15] and not (journal / 'journal.json').exists()


@needs_root
@pytest.mark.once
def test_retries2_after_the_trio_joins_the_entry_and_netns_all_restores_it(collections, tmp_path, netns, journal):
    lease = {'lease': 'run-1', 'journal_dir': str(journal), 'netns': netns}
    status, result = run_module(collections, tmp_path, dict(lease, time=2, intvl=1, probes=3))
    assert status == 'CHANGED' and 'retries2' not in result['previous'], result   # the trio's results as before
    assert originals(journal, netns) == {'time': 7200, 'intvl': 75, 'probes': 9}
    # the experiment's second task, same lease: the first originals of the trio win, retries2's join them
    status, result = run_module(collections, tmp_path, dict(lease, retries2=4))
    assert status == 'CHANGED', result
    assert originals(journal, netns) == {'time': 7200, 'intvl': 75, 'probes': 9, 'retries2': 15}
    assert kernel(netns) == [2, 1, 3, 4]
    status, result = run_module(collections, tmp_path, {'netns': 'all', 'state': 'restored',
                                                        'journal_dir': str(journal)})
    assert status == 'CHANGED', result
    assert kernel(netns) == [7200, 75, 9, 15]
    assert result['namespaces'][0]['current'] == {'time': 7200, 'intvl': 75, 'probes': 9, 'retries2': 15}


@needs_root
def test_a_bad_retries2_changes_nothing(collections, tmp_path, netns, journal):
    status, result = run_module(collections, tmp_path, {'netns': netns, 'journal_dir': str(journal), 'time': 2,
                                                        'retries2': 256})
    assert status == 'FAILED!'
    assert result['msg'].startswith('tcp_retries2 must be an integer 0..255')
    assert kernel(netns) == [7200, 75, 9, 15] and not journal.exists()
