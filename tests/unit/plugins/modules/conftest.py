# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the module tests that run ansible itself (see sysctl_cli.py); the network namespaces are
tests/unit/conftest.py's netns and netns_factory."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture(scope='module')
def collections(tmp_path_factory):
    """A collections path holding this checkout (also right in a git worktree without .build)."""
    root = tmp_path_factory.mktemp('collections')
    (root / 'ansible_collections' / 'tcplab').mkdir(parents=True)
    os.symlink(str(REPO_ROOT), str(root / 'ansible_collections' / 'tcplab' / 'keepalive'))
    return root


@pytest.fixture
def journal(request):
    """A journal directory of this test below the test module's RUN_DIR, removed afterwards (RUN_DIR too when empty)."""
    run_dir = Path(request.module.RUN_DIR)
    path = run_dir / uuid.uuid4().hex[:10]
    try:
        yield path
    finally:
        shutil.rmtree(str(path), ignore_errors=True)
        try:
            run_dir.rmdir()
        except OSError:
            pass
