# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The version matrix runs the unit tests marked ansible_core and not once (scripts/stage_matrix.sh): every
test file that runs ansible-core's code must be marked, or a version could break it unseen, and each such
file keeps at least one test that the matrix runs."""

from __future__ import annotations

import ast
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


def _tests_marked_once(path):
    """{test function name: marked once} of a test file."""
    def once(decorator):
        return ast.unparse(decorator) == 'pytest.mark.once'
    return {node.name: any(once(d) for d in node.decorator_list)
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith('test_')}


@pytest.mark.parametrize('path', _test_files(), ids=lambda p: str(p.relative_to(UNIT)))
def test_the_matrix_keeps_a_test_of_each_file_and_once_marks_only_its_files(path):
    marked = _tests_marked_once(path)
    if ansible_core_test(path):
        assert not marked or not all(marked.values()), (
            '%s: every test is marked once, so no ansible-core version but the main one runs the file: '
            'keep the mark off a test of its interface' % path.relative_to(UNIT))
    else:
        assert not any(marked.values()), (
            '%s: once only means something in a file that runs ansible-core code (ANSIBLE_CORE_FILES in '
            'tests/unit/conftest.py): remove the mark' % path.relative_to(UNIT))


def test_once_marks_are_seen(tmp_path):
    path = tmp_path / 'test_x.py'
    path.write_text('import pytest\n\n\n@pytest.mark.once\ndef test_a():\n    pass\n\n\n'
                    '@pytest.mark.parametrize("x", [1])\n@pytest.mark.once\ndef test_b(x):\n    pass\n\n\n'
                    'def test_c():\n    pass\n\n\ndef helper():\n    pass\n')
    assert _tests_marked_once(path) == {'test_a': True, 'test_b': True, 'test_c': False}


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
