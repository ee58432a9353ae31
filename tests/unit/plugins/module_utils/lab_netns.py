# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network namespaces for a test, made with a prefix and a random suffix and removed afterwards - only while they
are still the ones made here: the same inode and, where the kernel has cookies, the same cookie
(_proc.netns_identity: the kernel soon gives a deleted namespace's inode to a new one, never its cookie). Ours only:
never by the name alone, nor by a recycled inode; every process left in them is killed first."""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess

from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cookie_matches, netns_identity

NETNS_DIR = '/run/netns'


def is_ours(name, inode, cookie):
    """Whether the namespace named name now is the one made with (inode, cookie) (cookie None: the inode alone)."""
    found_inode, found_cookie = netns_identity(os.path.join(NETNS_DIR, name))
    return found_inode is not None and found_inode == inode and cookie_matches(cookie, found_cookie)


def remove_if_ours(name, inode, cookie):
    """Kill the processes in namespace name and delete it, only when it is the one made with (inode, cookie);
    True when it was deleted."""
    if not is_ours(name, inode, cookie):
        return False
    pids = subprocess.run(['ip', 'netns', 'pids', name], capture_output=True, text=True, check=False).stdout
    for pid in pids.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(['ip', 'netns', 'del', name], check=True)
    return True


@contextlib.contextmanager
def namespaces(prefix):
    """make() -> the name of a new namespace (lo up); all of them are gone after the with block."""
    made = []

    def make():
        name = prefix + secrets.token_hex(4)
        subprocess.run(['ip', 'netns', 'add', name], check=True)
        made.append((name,) + netns_identity(os.path.join(NETNS_DIR, name)))
        subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)
        return name
    try:
        yield make
    finally:
        for name, inode, cookie in made:
            remove_if_ours(name, inode, cookie)
