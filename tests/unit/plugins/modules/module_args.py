# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A module's main() run in-process with given arguments, as on a target, on every ansible-core the collection
supports (ansible-core 2.19 has ansible.module_utils.testing.patch_module_args; before it, basic._ANSIBLE_ARGS is
patched). The standard library and ansible-core only: the tests also import it on a Python without site-packages
(python -s -E with only ansible-core and the collection on its path), as AnsiballZ runs a module on a target."""

from __future__ import annotations

import contextlib
import io
import json

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core before 2.19
    from unittest import mock

    from ansible.module_utils import basic

    @contextlib.contextmanager
    def patch_module_args(args):
        with mock.patch.object(basic, '_ANSIBLE_ARGS', json.dumps({'ANSIBLE_MODULE_ARGS': args}).encode()):
            yield


def module_result(main, args):
    """The result dict main() writes for args; main must end by exit_json or fail_json (SystemExit)."""
    out = io.StringIO()
    exited = False
    with patch_module_args(args), contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit:
            exited = True
    if not exited:
        raise AssertionError('main() returned without exit_json or fail_json: %r' % out.getvalue())
    return json.loads(out.getvalue())
