# Make this checkout importable as ansible_collections.tcplab.keepalive through
# Ansible's own collection loader, the way ansible-test does for unit tests,
# without installing it.
from __future__ import annotations

import os
import tempfile

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
