# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The identity of a network namespace (_proc.netns_identity: inode and cookie) on the real kernel, in namespaces
made here (tkid-*, removed again). Only the kernel without SO_NETNS_COOKIE (Linux < 5.14, ENOPROTOOPT) is
simulated: that error path cannot be had on this kernel."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _proc

NETNS_PREFIX = 'tkid-'   # the namespaces of the shared netns fixtures (tests/unit/conftest.py)
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None,
                                reason='needs root and ip(8): the tests make network namespaces')
needs_cookies = pytest.mark.skipif(_proc.netns_identity()[1] is None,
                                   reason='the kernel has no SO_NETNS_COOKIE (Linux < 5.14)')


def path(name):
    return '/run/netns/' + name


def test_own_identity_is_the_inode_and_the_cookie_of_a_socket_made_here():
    inode, cookie = _proc.netns_identity()
    assert inode == os.stat('/proc/self/ns/net').st_ino
    assert cookie == _proc.netns_cookie()
    assert cookie is None or (isinstance(cookie, int) and cookie > 0)
    assert _proc.netns_identity('/proc/self/ns/net') == (inode, cookie)


def test_nothing_at_the_path_is_no_identity(tmp_path):
    assert _proc.netns_identity(str(tmp_path / 'none')) == (None, None)


@needs_root
@needs_cookies
def test_the_cookie_differs_between_namespaces_and_is_stable_across_reads(netns_factory):
    first, second = netns_factory(), netns_factory()
    one, two = _proc.netns_identity(path(first)), _proc.netns_identity(path(second))
    assert one[0] == os.stat(path(first)).st_ino and two[0] == os.stat(path(second)).st_ino
    assert one[1] != two[1] and _proc.netns_identity()[1] not in (one[1], two[1])
    assert [_proc.netns_identity(path(first)) for dummy in range(5)] == [one] * 5
    # the same namespace through a process in it, and many at once from one thread
    holder = subprocess.Popen(['ip', 'netns', 'exec', first, 'sleep', '30'])
    try:
        for dummy in range(100):
            if _proc.netns_of(holder.pid) == one[0]:
                break
            subprocess.run(['sleep', '0.02'], check=True)
        assert _proc.netns_identity('/proc/%d/ns/net' % holder.pid) == one
    finally:
        holder.kill()
        holder.wait()
    many = _proc.netns_identities([path(first), path(second), '/proc/self/ns/net'])
    assert many == {path(first): one, path(second): two, '/proc/self/ns/net': _proc.netns_identity()}


@needs_root
def test_the_caller_never_leaves_its_namespace(netns):
    own = os.stat('/proc/self/ns/net').st_ino
    threads = threading.active_count()
    _proc.netns_identity(path(netns))
    assert os.stat('/proc/self/ns/net').st_ino == own
    assert os.stat('/proc/thread-self/ns/net').st_ino == own
    assert threading.active_count() == threads  # the reading thread has ended


@needs_root
@needs_cookies
def test_a_new_namespace_that_gets_a_deleted_ones_inode_has_another_cookie():
    """The reason for the cookie: the kernel soon gives a new namespace the inode of a deleted one."""
    seen, made = {}, None
    try:
        for number in range(40):
            name = '%sr%d-%d' % (NETNS_PREFIX, os.getpid(), number)
            subprocess.run(['ip', 'netns', 'add', name], check=True)
            inode, cookie = _proc.netns_identity(path(name))
            made = (name, inode)
            seen.setdefault(inode, []).append(cookie)
            subprocess.run(['ip', 'netns', 'del', name], check=True)
            made = None
    finally:
        if made is not None and _proc.netns_inode(path(made[0])) == made[1]:  # ours only: never by the name alone
            subprocess.run(['ip', 'netns', 'del', made[0]], check=False)
    cookies = [cookie for found in seen.values() for cookie in found]
    assert len(set(cookies)) == len(cookies) == 40
    reused = {inode: found for inode, found in seen.items() if len(found) > 1}
    for found in reused.values():   # usually several: each with a cookie of its own
        assert len(set(found)) == len(found)


def test_cookie_matches():
    assert _proc.cookie_matches(5, 5) and not _proc.cookie_matches(5, 6)
    # a record without a cookie, or a namespace whose cookie is unknown: the inode alone decides
    assert _proc.cookie_matches(None, 6) and _proc.cookie_matches(5, None) and _proc.cookie_matches(None, None)
    assert _proc.cookie_matches(True, 6)  # not a cookie


class _NoCookieSocket:
    """A socket of a kernel without SO_NETNS_COOKIE (the only simulated part: this kernel has it)."""

    def __init__(self, *args):
        self.closed = False

    def getsockopt(self, level, option, size):
        assert (level, option, size) == (_proc.socket.SOL_SOCKET, _proc.SO_NETNS_COOKIE, 8)
        raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))

    def close(self):
        self.closed = True


class _FakeSocketModule:
    SOL_SOCKET = _proc.socket.SOL_SOCKET
    AF_UNIX = _proc.socket.AF_UNIX
    SOCK_DGRAM = _proc.socket.SOCK_DGRAM

    def __init__(self, error=errno.ENOPROTOOPT):
        self.error = error
        self.made = []

    def socket(self, *args):
        made = _NoCookieSocket()
        if self.error != errno.ENOPROTOOPT:
            def fail(*dummy):
                raise OSError(self.error, os.strerror(self.error))
            made.getsockopt = fail
        self.made.append(made)
        return made


def test_a_kernel_without_cookies_gives_the_inode_alone(monkeypatch, tmp_path):
    fake = _FakeSocketModule()
    monkeypatch.setattr(_proc, 'socket', fake)
    assert _proc.netns_cookie() is None
    assert _proc.netns_identity() == (os.stat('/proc/self/ns/net').st_ino, None)
    assert all(made.closed for made in fake.made)
    # another namespace is not even entered: no cookie can be had there either
    monkeypatch.setattr(_proc, '_cookies_in', lambda fds: pytest.fail('entered a namespace for nothing'))
    assert _proc.netns_identities(['/proc/self/ns/net', str(tmp_path / 'none')]) == {
        '/proc/self/ns/net': (os.stat('/proc/self/ns/net').st_ino, None), str(tmp_path / 'none'): (None, None)}


def test_another_socket_error_is_raised(monkeypatch):
    monkeypatch.setattr(_proc, 'socket', _FakeSocketModule(errno.EBADF))
    with pytest.raises(OSError) as exc:
        _proc.netns_cookie()
    assert exc.value.errno == errno.EBADF
    assert _proc.netns_identity()[1] is None  # the identity then falls back to the inode
