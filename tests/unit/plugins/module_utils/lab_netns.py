# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network namespaces for a test, made with a prefix and a random suffix and removed afterwards - only while their
inode is still the one made here (ours only: never by the name alone), every process left in them killed first."""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess


@contextlib.contextmanager
def namespaces(prefix):
    """make() -> the name of a new namespace (lo up); all of them are gone after the with block."""
    made = []

    def make():
        name = prefix + secrets.token_hex(4)
        subprocess.run(['ip', 'netns', 'add', name], check=True)
        made.append((name, os.stat('/run/netns/' + name).st_ino))
        subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)
        return name
    try:
        yield make
    finally:
        for name, inode in made:
            path = '/run/netns/' + name
            if not os.path.exists(path) or os.stat(path).st_ino != inode:
                continue
            pids = subprocess.run(['ip', 'netns', 'pids', name], capture_output=True, text=True, check=False).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(['ip', 'netns', 'del', name], check=True)
