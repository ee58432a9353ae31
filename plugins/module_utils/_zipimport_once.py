# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One compile per module imported from the module's zip.

A module runs on its target from the AnsiballZ zip, which holds sources only. CPython's zipimporter compiles such a
source twice: once when the import system asks it for the module's file name while it makes the module's spec
(``get_filename`` works the name out by getting the code), and again when it runs the module (``get_code``). The
second compile is wasted work (python/cpython#141276, open). On a lab VM under TCG it is about 0.4 s of each start of
the experiment, whose steps import some thirty of these files.

``install()`` makes the zipimporter hand the code its ``get_filename`` compiled to the ``get_code`` that follows, once:
the next call for the same module compiles again. Where zipimport is written in C (Python < 3.8) it changes nothing.
Modules call it first in main(), before the code of their steps is imported (lazily, in _experiment_host.py);
ansible's own module_utils are imported before a module runs, so they stay compiled twice.

This file is private to the collection: its names may change at any time and must not be used from outside
tcplab.keepalive.
"""

from __future__ import annotations

import zipimport

MARK = '_tcplab_keepalive_once'


def install():
    """Wrap zipimport's ``_get_module_code`` once per process; True if this call did it."""
    original = getattr(zipimport, '_get_module_code', None)
    if original is None or getattr(original, MARK, False):
        return False
    zipimport._get_module_code = _handing_once(original)
    return True


def _handing_once(original):
    handed = {}

    def get_module_code(importer, fullname):
        key = (importer.archive, importer.prefix, fullname)
        got = handed.pop(key, None)
        if got is None:
            got = original(importer, fullname)
            handed[key] = got
        return got

    setattr(get_module_code, MARK, True)
    return get_module_code
