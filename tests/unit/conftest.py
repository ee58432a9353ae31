# Make this checkout importable as ansible_collections.tcplab.keepalive through
# Ansible's own collection loader, the way ansible-test does for unit tests,
# without installing it.
from __future__ import annotations

import os
import tempfile

import pytest

from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _collections_root():
    candidate = os.path.join(ROOT, '.build', 'collections')
    link = os.path.join(candidate, 'ansible_collections', 'tcplab', 'keepalive')
    if os.path.exists(os.path.join(link, 'galaxy.yml')) and os.path.samefile(link, ROOT):
        return candidate
    candidate = tempfile.mkdtemp(prefix='tcplab-unit-')
    os.makedirs(os.path.join(candidate, 'ansible_collections', 'tcplab'))
    os.symlink(ROOT, os.path.join(candidate, 'ansible_collections', 'tcplab', 'keepalive'))
    return candidate


if AnsibleCollectionConfig.collection_finder is None:
    _AnsibleCollectionFinder(paths=[_collections_root()], scan_sys_paths=False)._install()


# The tests that run ansible-core's own code besides the collection loader: modules in-process or through
# AnsiballZ, playbooks, the inventory, the filter and connection plugins. The version matrix
# (scripts/stage_matrix.sh) runs these for each ansible-core it claims (pytest -m ansible_core); the
# other tests run module_utils code that imports nothing of ansible-core (the same code on the same
# Python in every version), so the main unit stage runs them once. test_matrix_marker.py keeps the
# list complete.
ANSIBLE_CORE_DIRS = ('plugins/modules', 'plugins/filter', 'plugins/connection')
ANSIBLE_CORE_FILES = frozenset((
    'plugins/module_utils/test__endpoint.py',  # the endpoint's children import module_utils through the loader
    'plugins/module_utils/test__endpoint_lifecycle.py',
    'plugins/module_utils/test__experiment_in_flight_input.py',  # ansible-playbook of the role
    'plugins/module_utils/test__experiment_kernel_watch.py',
    'plugins/module_utils/test__lab_inventory.py',  # ansible's InventoryManager and Templar
    'plugins/module_utils/test__lab_vm.py',  # ansible-playbook and ansible against lab VMs
    'scripts/test_pycompat.py',  # modules through AnsiballZ on every target Python
))


def ansible_core_test(path):
    """True for a test file (a path below tests/unit) that runs ansible-core's code."""
    relative = os.path.relpath(os.path.realpath(str(path)), os.path.dirname(os.path.realpath(__file__))).replace(os.sep, '/')
    return relative in ANSIBLE_CORE_FILES or relative.startswith(tuple(d + '/' for d in ANSIBLE_CORE_DIRS))


def pytest_collection_modifyitems(items):
    for item in items:
        if ansible_core_test(item.fspath):
            item.add_marker(pytest.mark.ansible_core)


@pytest.fixture
def netns_factory(request):
    """make() -> the name of a new network namespace with lo up, NETNS_PREFIX of the test module (default 'tkut-')
    and a random suffix. Afterwards every process left in it is killed and it is deleted - only while its identity
    (inode and cookie) is still the one made here (ours only: never by the name alone). See plugins/module_utils/lab_netns.py."""
    from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.lab_netns import (  # pylint: disable=import-outside-toplevel
        namespaces)
    with namespaces(getattr(request.module, 'NETNS_PREFIX', 'tkut-')) as make:
        yield make


@pytest.fixture
def netns(netns_factory):
    """One network namespace of this test (netns_factory)."""
    return netns_factory()


@pytest.fixture(autouse=True)
def _module_side(request):
    """Module tests run modules in-process as a target would: once any test has
    imported controller code, ansible-core marks the process as the controller
    and module warnings go to the display instead of the result; undo that for
    tests of modules."""
    try:
        from ansible.module_utils import _internal  # pylint: disable=import-outside-toplevel
    except ImportError:  # ansible-core before 2.19 has no controller mark
        _internal = None
    if '/plugins/modules/' not in str(request.node.fspath) or not hasattr(_internal, 'is_controller'):
        yield
        return
    saved = _internal.is_controller
    _internal.is_controller = False
    try:
        yield
    finally:
        _internal.is_controller = saved
