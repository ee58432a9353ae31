# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of plugins/module_utils/_zipimport_once.py: one compile per module imported from a zip.

Real imports from a real zip that holds sources only (as AnsiballZ's does), in a fresh interpreter of every target
Python installed here (the patch uses zipimport's private _get_module_code, whose shape is per version). An audit
hook counts the compiles of the zip's files: two per module without install(), one with it, and the modules work.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _zipimport_once

PYENV = os.path.expanduser('~/.pyenv/versions')
PYTHONS = sorted(os.path.join(PYENV, v, 'bin', 'python') for v in (os.listdir(PYENV) if os.path.isdir(PYENV) else [])
                 if v.startswith('3.') and int(v.split('.')[1]) >= 8) + ['/usr/bin/python3']

CHILD = r'''
import importlib.util, json, sys
zip_path, once_path, install = sys.argv[1], sys.argv[2], sys.argv[3] == 'yes'
compiles = []
sys.addaudithook(lambda event, args: event == 'compile' and str(args[1]).startswith(zip_path) and compiles.append(
    str(args[1])[len(zip_path) + 1:]))
spec = importlib.util.spec_from_file_location('once', once_path)
once = importlib.util.module_from_spec(spec)
spec.loader.exec_module(once)
installed = once.install() if install else False
again = once.install() if install else False
sys.path.insert(0, zip_path)
import pkg.b
first = list(compiles)
del sys.modules['pkg.b']
import pkg.b as reloaded
try:
    import pkg.missing
    missing = 'imported'
except ImportError as exc:
    missing = type(exc).__name__
print(json.dumps({'installed': installed, 'again': again, 'first': first, 'after_reimport': compiles[len(first):],
                  'value': reloaded.value(), 'missing': missing}))
'''


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / 'payload.zip'
    with zipfile.ZipFile(str(path), 'w') as zf:
        zf.writestr('pkg/__init__.py', 'NAME = "pkg"\n')
        zf.writestr('pkg/a.py', 'def twice(x):\n    return 2 * x\n')
        zf.writestr('pkg/b.py', 'from pkg.a import twice\n\n\ndef value():\n    return twice(21)\n')
    return str(path)


def imports(python, archive, install):
    out = subprocess.run([python, '-I', '-S', '-B', '-c', CHILD, archive, _zipimport_once.__file__,
                          'yes' if install else 'no'], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize('python', [p for p in PYTHONS if os.path.exists(p)])
def test_each_module_of_the_zip_is_compiled_once(python, archive):
    plain = imports(python, archive, install=False)
    once = imports(python, archive, install=True)
    files = ['pkg/__init__.py', 'pkg/b.py', 'pkg/a.py']
    assert sorted(plain['first']) == sorted(files * 2)   # python/cpython#141276: get_filename, then get_code
    assert once['installed'] is True and once['again'] is False
    assert once['first'] == files                         # in import order, once each
    assert once['after_reimport'] == ['pkg/b.py']         # a fresh import compiles afresh, once
    assert once['value'] == plain['value'] == 42
    assert once['missing'] == plain['missing'] == 'ModuleNotFoundError'


def test_install_is_a_no_op_without_the_private_hook(monkeypatch):
    monkeypatch.delattr('zipimport._get_module_code', raising=False)
    assert _zipimport_once.install() is False
