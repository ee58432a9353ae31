# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one network-namespace helper, against the real kernel where it matters: names and their messages,
resolving by name or pid, discovering named and process-only namespaces, running code inside one (forked
setns child, entering with _proc.setns_net) and a program inside one (nsenter argv); and the tests' own namespace
helper (lab_netns), which deletes a namespace only while its inode and cookie are the ones it made. Namespaces made
here are tkns-* and removed again."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _netns, _proc, _sysctl
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NetnsError
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils import lab_netns

NETNS_PREFIX = 'tkns-'   # the namespaces of the shared netns fixture (tests/unit/conftest.py)
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None,
                                reason='needs root and ip(8): the tests make network namespaces')


@pytest.fixture
def holder():
    """A process alone in a namespace that has no name (as a container's)."""
    proc = subprocess.Popen(['unshare', '--net', 'sleep', '60'])
    own = os.stat('/proc/self/ns/net').st_ino
    try:
        for dummy in range(100):
            if _netns.netns_of(proc.pid) not in (None, own):
                break
            time.sleep(0.02)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def read_time():
    with open('/proc/sys/net/ipv4/tcp_keepalive_time') as handle:
        return int(handle.read())


@pytest.mark.parametrize('name', ['tkns-a', 'a.b_c-1', 'x' * 64])
def test_names_accepted(name):
    assert _netns.is_name(name) and _netns.check_name(name) == name


@pytest.mark.parametrize('name', ['', '.', '..', '../x', 'a/b', 'a b', 'a\0b', 'x' * 65, True])
def test_names_refused_with_the_fix(name):
    assert not _netns.is_name(name)
    with pytest.raises(NetnsError) as exc:
        _netns.check_name(name, '/run/x')
    assert str(exc.value) == _netns.MSG_NAME % (name, '/run/x')
    assert 'give a name from /run/x (ip netns list)' in str(exc.value)


def test_named_path_missing(tmp_path):
    with pytest.raises(NetnsError) as exc:
        _netns.named_path('tkns-none', str(tmp_path))
    assert str(exc.value) == _netns.MSG_MISSING % ('tkns-none', tmp_path / 'tkns-none', 'tkns-none')


def test_resolve_refuses_a_plain_file_and_a_gone_pid(tmp_path):
    (tmp_path / 'stale').write_text('')
    with pytest.raises(NetnsError) as exc:
        _netns.resolve('stale', str(tmp_path))
    assert str(exc.value) == _netns.MSG_NOT_NS % (tmp_path / 'stale', 'a file', 'stale')
    with pytest.raises(NetnsError) as exc:
        _netns.resolve('999999999', str(tmp_path))
    assert str(exc.value) == _netns.MSG_PID % '999999999'
    with pytest.raises(NetnsError) as exc:
        _netns.resolve('a b', str(tmp_path))
    assert str(exc.value) == _netns.MSG_NAME_OR_PID % ('a b', tmp_path)


@needs_root
def test_resolve_by_name_and_by_pid(netns, holder):
    by_name = _netns.resolve(netns)
    assert (by_name.path, by_name.label, by_name.inode) == ('/run/netns/' + netns, netns, os.stat('/run/netns/' + netns).st_ino)
    by_pid = _netns.resolve(str(holder))
    assert by_pid.label == 'pid %d' % holder and by_pid.inode == _netns.netns_of(holder) != by_name.inode
    assert _netns.name_of(by_name.inode) == netns and _netns.name_of(by_pid.inode) is None


@needs_root
def test_discover_named_and_process_only(netns, holder):
    found = _netns.discover()
    inodes = [entry['inode'] for entry in found]
    assert len(inodes) == len(set(inodes))
    named = [e for e in found if e['name'] == netns]
    assert len(named) == 1 and named[0]['kind'] == 'named' and named[0]['pid'] is None
    held = [e for e in found if e['inode'] == _netns.netns_of(holder)]
    assert len(held) == 1 and held[0]['kind'] == 'process' and held[0]['name'] is None
    assert [e['kind'] for e in found].count('host') == 1
    assert {named[0]['inode'], held[0]['inode']} <= _netns.live_inodes()
    assert _netns.path_of_inode(named[0]['inode']) == '/run/netns/' + netns
    assert _netns.netns_inode(_netns.path_of_inode(held[0]['inode'])) == held[0]['inode']
    assert _netns.path_of_inode(1) is None


def test_run_in_returns_the_value_and_reports_errors():
    assert _netns.run_in(_netns.OWN, read_time) == read_time()
    with pytest.raises(NetnsError) as exc:
        _netns.run_in('/nonexistent/ns', read_time)
    assert str(exc.value).startswith('[Errno 2] No such file or directory')

    def refused(fd):
        raise OSError(1, 'Operation not permitted')
    with pytest.raises(NetnsError) as exc:
        _netns.run_in(_netns.OWN, read_time, enter=refused)
    assert str(exc.value) == '[Errno 1] Operation not permitted'

    def failing():
        raise ValueError('no such key')
    with pytest.raises(NetnsError) as exc:
        _netns.run_in(_netns.OWN, failing)
    assert str(exc.value) == 'no such key'

    start = time.monotonic()
    with pytest.raises(NetnsError) as exc:
        _netns.run_in(_netns.OWN, time.sleep, (30,), timeout=0.5)
    assert str(exc.value) == _netns.MSG_TIMEOUT % 0.5 and time.monotonic() - start < 5


@needs_root
def test_run_in_reads_and_writes_inside_only(netns):
    path = '/run/netns/' + netns
    before = read_time()
    _netns.run_in(path, _sysctl.write_proc, ('time', 123))
    assert _netns.run_in(path, read_time) == 123
    assert _netns.run_in(path, lambda: os.stat('/proc/self/ns/net').st_ino) == os.stat(path).st_ino
    assert read_time() == before


def test_run_in_enters_with_the_one_setns_of_the_collection():
    # _proc.setns_net: os.setns, or the process's own libc (no ctypes.util.find_library, which runs ldconfig)
    assert _netns.setns is _proc.setns_net
    assert _netns.run_in.__defaults__[-1] is _proc.setns_net


@needs_root
def test_sysctl_access_checks_the_inode_inside(netns, holder):
    # the path now leads to another namespace than the one resolved: nothing is read or written there
    access = _sysctl.NetnsAccess('/run/netns/' + netns, _netns.netns_of(holder))
    with pytest.raises(_sysctl.SysctlError) as exc:
        access.read()
    assert 'was replaced by another one' in str(exc.value)
    with pytest.raises(NetnsError):
        access.write('time', 77)
    assert _netns.run_in('/run/netns/' + netns, read_time) == 7200


@needs_root
def test_nsenter_argv_runs_the_program_inside(netns):
    argv = _netns.nsenter_argv(shutil.which('nsenter'), '/run/netns/' + netns, ['readlink', '/proc/self/ns/net'])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    assert out == 'net:[%d]' % os.stat('/run/netns/' + netns).st_ino


def test_boot_netns_of_this_machine():
    assert _netns.boot_netns()[0] == os.stat('/proc/self/ns/net').st_ino


@needs_root
@pytest.mark.skipif(_proc.netns_identity()[1] is None, reason='the kernel has no SO_NETNS_COOKIE (Linux < 5.14): '
                    'a namespace re-created with the same inode is told apart by nothing')
def test_the_test_helper_deletes_only_the_namespace_it_made():
    """lab_netns (the netns / netns_factory fixtures): a namespace re-created under the name, or one with the
    recorded inode but another cookie (a recycled inode), is never deleted."""
    renewed = None
    try:
        with lab_netns.namespaces(NETNS_PREFIX) as make:
            name = make()
            path = os.path.join(_netns.NETNS_DIR, name)
            inode, cookie = _proc.netns_identity(path)
            assert lab_netns.is_ours(name, inode, cookie)
            assert not lab_netns.is_ours(name, inode + 1, cookie)
            # the recorded cookie edited: the namespace has the inode of a gone one that was recorded
            assert not lab_netns.is_ours(name, inode, cookie + 1)
            assert not lab_netns.remove_if_ours(name, inode, cookie + 1) and os.path.exists(path)
            subprocess.run(['ip', 'netns', 'del', name], check=True)
            subprocess.run(['ip', 'netns', 'add', name], check=True)
            renewed = _proc.netns_identity(path)
            assert renewed != (inode, cookie)
        assert os.path.exists(path), 'the helper deleted a namespace it did not make'
    finally:
        if renewed is not None:
            assert lab_netns.remove_if_ours(name, *renewed)
    assert not os.path.exists(path)
