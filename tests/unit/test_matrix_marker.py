# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The version matrix runs the unit tests marked ansible_core (scripts/stage_matrix.sh): every test file
that runs ansible-core's code must be marked, or a version could break it unseen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.tests.unit.conftest import ANSIBLE_CORE_FILES, ansible_core_test

UNIT = Path(__file__).resolve().parent
# ansible-core imported (not the collection's own ansible_collections), or one of its commands run
USES_ANSIBLE_CORE = re.compile(r"^\s*(from ansible(\.| import)|import ansible\b)"
                               r"|['\"]ansible-(playbook|doc|test|inventory|galaxy)['\"]"
                               r"|[\[(]\s*['\"]ansible['\"]\s*,", re.M)


def _test_files():
    return sorted(p for p in UNIT.rglob('test_*.py') if p.name != Path(__file__).name)


@pytest.mark.parametrize('path', _test_files(), ids=lambda p: str(p.relative_to(UNIT)))
def test_a_file_that_runs_ansible_core_is_in_the_matrix(path):
    if USES_ANSIBLE_CORE.search(path.read_text()):
        assert ansible_core_test(path), (
            '%s runs ansible-core code: add it to ANSIBLE_CORE_FILES in tests/unit/conftest.py so that the '
            'version matrix runs it' % path.relative_to(UNIT))


def test_every_listed_file_exists():
    assert [f for f in ANSIBLE_CORE_FILES if not (UNIT / f).is_file()] == []


def test_the_pattern_sees_what_it_must(tmp_path):
    seen = [USES_ANSIBLE_CORE.search(text) is not None for text in (
        'from ansible.inventory.manager import InventoryManager\n',
        "argv = ['ansible-playbook', path]\n",
        "subprocess.run(['ansible', '-i', inv])\n",
        'from ansible_collections.tcplab.keepalive.plugins.module_utils import _proc\n',
        "assert not imported & {'ansible', 'scapy'}\n",
        '"""What Runner needs of an AnsibleModule."""\n')]
    assert seen == [True, True, True, False, False, False]
