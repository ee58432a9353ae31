# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The idle-timeout experiment's plan: the preset table the audit uses, the prediction, the budgets, clear errors."""
from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.tcplab.keepalive.plugins.filter.keepalive import FilterModule, idle_timeout_plan
from ansible_collections.tcplab.keepalive.plugins.module_utils import _middlebox

KA = {'time': 2, 'intvl': 1, 'probes': 3}


def test_the_plan_of_the_ci_timings():
    assert idle_timeout_plan({'seconds': 6}, KA, 5) == {
        'seconds': 6, 'action': 'drop', 'preset': None, 'survives': True, 'idle_wait': 19, 'end_wait': 15,
        'capture_seconds': 634, 'lease_ttl': 649}
    assert idle_timeout_plan({'seconds': '6', 'action': 'reset'}, dict(KA, time=10), 0)['survives'] is False
    assert idle_timeout_plan({'seconds': 6}, dict(KA, time=6))['survives'] is False  # at the timeout: forgotten


def test_a_preset_comes_from_the_audits_table():
    plan = idle_timeout_plan({'preset': 'aws-nlb'}, {'time': 300, 'intvl': 75, 'probes': 9})
    assert (plan['seconds'], plan['action'], plan['preset'], plan['survives']) == (350, 'reset', 'aws-nlb', True)
    assert idle_timeout_plan({'preset': 'aws-nlb', 'seconds': None, 'action': None}, KA)['seconds'] == 350
    assert not idle_timeout_plan({'preset': 'gcp-vpc'}, {'time': 7200, 'intvl': 75, 'probes': 9})['survives']


@pytest.mark.parametrize('idle, message', [
    ({'preset': 'haproxy'}, _middlebox.MSG_PRESET % ('aws-nlb, azure-lb, azure-lb-reset, gcp-vpc', 'haproxy')),
    ({'preset': 'aws-nlb', 'seconds': 10}, _middlebox.MSG_PRESET_WITH % ('aws-nlb', 350, 'reset')),
    ({'seconds': 0}, _middlebox.MSG_SECONDS % (1, 432000, 0)),
    ({'seconds': 6, 'action': 'reject'}, _middlebox.MSG_ACTION % 'reject'),
    ({}, _middlebox.MSG_SECONDS_REQUIRED % 'aws-nlb, azure-lb, azure-lb-reset, gcp-vpc'),
])
def test_a_bad_idle_timeout_names_the_fix(idle, message):
    with pytest.raises(AnsibleFilterError) as info:
        idle_timeout_plan(idle, KA)
    assert str(info.value) == 'experiment_idle_timeout: ' + message


def test_it_is_a_filter_of_the_collection():
    assert FilterModule().filters()['idle_timeout_plan'] is idle_timeout_plan
