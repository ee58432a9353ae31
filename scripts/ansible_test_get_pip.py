# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Stand-in for the get-pip bootstrap script that ansible-test downloads.

ansible-test creates each sanity virtual environment without pip and then
runs a get-pip script that it fetches from a download site this project's
machines cannot reach. scripts/test.sh puts this file where ansible-test
caches that script. It does the same job with what Python ships and the
package index that pip is configured with: ensurepip, then pip installs the
exact packages ansible-test asks for (e.g. pip==24.2).
"""

from __future__ import annotations

import subprocess
import sys

IGNORED = ('--no-setuptools', '--no-wheel')


def main():
    args = [arg for arg in sys.argv[1:] if arg not in IGNORED]
    subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'])
    return subprocess.call([sys.executable, '-m', 'pip', 'install'] + args)


if __name__ == '__main__':
    sys.exit(main())
