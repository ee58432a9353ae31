# Unit tests of the lab apt proxy: its configuration, validation messages, and
# ownership. The real test (root, apt-cacher-ng installed) runs our own apt-cacher-ng
# on an address of a bridge of this test alone (198.19.90.253/32, device
# tkvmp0): no request leaves the machine.
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _apt_proxy
from ansible_collections.tcplab.keepalive.plugins.module_utils._apt_proxy import (
    AptProxy, AptProxyError, not_searchable, render_config)
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, starttime

DUMMY = 'tkvmp0'
ADDRESS = '198.19.90.253'


def never_run(argv, **kwargs):
    raise AssertionError('no command expected, got %r' % (argv,))


def test_config():
    dirs = {'cache': '/s/cache', 'log': '/s/log', 'run': '/s/run', 'conf': '/s/conf'}
    text = render_config(dirs, '198.19.90.1', 3142)
    lines = text.splitlines()
    assert 'BindAddress: 198.19.90.1' in lines and 'Port: 3142' in lines
    assert 'CacheDir: /s/cache' in lines and 'LogDir: /s/log' in lines
    assert 'PidFile: /s/run/apt-cacher-ng.pid' in lines and 'SocketPath: /s/run/socket' in lines
    assert 'PassThroughPattern: ^$' in lines  # no CONNECT tunnels
    assert not [line for line in lines if line.startswith('Remap-') or line.startswith('Proxy:')]
    assert 'Proxy: http://up.example:3128' in render_config(dirs, '198.19.90.1', 3142, 'http://up.example:3128')


@pytest.mark.parametrize('state_dir', ['relative', '/', ''])
def test_bad_state_dir(state_dir):
    with pytest.raises(AptProxyError) as exc:
        AptProxy(never_run, state_dir, '198.19.90.1')
    assert str(exc.value) == _apt_proxy.MSG_STATE_DIR % (state_dir,)


@pytest.mark.parametrize('address', ['', 'lab', '198.19.90', None])
def test_bad_address(tmp_path, address):
    with pytest.raises(AptProxyError) as exc:
        AptProxy(never_run, str(tmp_path), address)
    assert str(exc.value) == _apt_proxy.MSG_ADDRESS % (address,)


def test_url_and_dirs(tmp_path):
    proxy = AptProxy(never_run, str(tmp_path / 'p'), '198.19.90.1')
    assert proxy.url == 'http://198.19.90.1:3142'
    assert proxy.dirs['cache'] == str(tmp_path / 'p' / 'cache')
    assert AptProxy(never_run, str(tmp_path / 'p'), '198.19.90.1', cache_dir='/var/cache/x/').dirs['cache'] == '/var/cache/x'


def test_missing_user(tmp_path):
    proxy = AptProxy(never_run, str(tmp_path / 'p'), '198.19.90.1', user='no-such-user-tcplab')
    with pytest.raises(AptProxyError) as exc:
        proxy.start()
    assert str(exc.value) == _apt_proxy.MSG_USER % 'no-such-user-tcplab'
    assert not (tmp_path / 'p').exists()


@pytest.mark.parametrize('tool, package', [('apt-cacher-ng', 'apt-cacher-ng'), ('setpriv', 'util-linux')])
def test_missing_tool(tmp_path, monkeypatch, tool, package):
    monkeypatch.setattr(_apt_proxy.shutil, 'which', lambda name, path=None: None if name == tool else '/usr/bin/x')
    proxy = AptProxy(never_run, str(tmp_path / 'p'), '198.19.90.1', user='root')
    with pytest.raises(AptProxyError) as exc:
        proxy.start()
    assert str(exc.value) == _apt_proxy.MSG_TOOL % (tool, package)
    assert not (tmp_path / 'p').exists()


@pytest.fixture
def open_tmp(tmp_path):
    """tmp_path with every parent searchable (pytest's own base is 0700), restored afterwards."""
    changed = []
    for parent in [tmp_path] + list(tmp_path.parents):
        mode = os.stat(str(parent)).st_mode & 0o777
        if not mode & 0o001:
            changed.append((parent, mode))
            os.chmod(str(parent), mode | 0o011)
    yield tmp_path
    for parent, mode in changed:
        os.chmod(str(parent), mode)


def test_not_searchable(open_tmp):
    tmp_path = open_tmp
    locked = tmp_path / 'locked'
    locked.mkdir()
    os.chmod(str(locked), 0o700)
    nobody = pwd.getpwnam('nobody').pw_uid
    assert not_searchable(str(locked / 'p'), nobody) == (str(locked), 0o700)
    assert not_searchable(str(locked / 'p'), os.stat(str(locked)).st_uid) is None  # its owner may
    os.chmod(str(locked), 0o711)
    assert not_searchable(str(locked / 'p'), nobody) is None


def test_state_dir_not_searchable_is_refused(open_tmp):
    tmp_path = open_tmp
    locked = tmp_path / 'locked'
    locked.mkdir()
    os.chmod(str(locked), 0o700)
    proxy = AptProxy(never_run, str(locked / 'p'), '198.19.90.1', user='nobody',
                     tools={'apt-cacher-ng': '/bin/true', 'setpriv': '/bin/true'})
    with pytest.raises(AptProxyError) as exc:
        proxy.start()
    assert str(exc.value) == _apt_proxy.MSG_NOT_TRAVERSABLE % (locked, 'nobody', 0o700, locked)


def test_port_in_use(tmp_path):
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        proxy = AptProxy(never_run, str(tmp_path / 'p'), '127.0.0.1', port=port, user='root',
                         tools={'apt-cacher-ng': '/bin/true', 'setpriv': '/bin/true'})
        with pytest.raises(AptProxyError) as exc:
            proxy.start()
        assert str(exc.value) == _apt_proxy.MSG_PORT_BUSY % ('127.0.0.1', port)
        assert 'systemctl disable --now apt-cacher-ng' in str(exc.value)
        assert not (tmp_path / 'p').exists()
    finally:
        listener.close()


def test_stop_signals_only_a_proven_process(tmp_path):
    proxy = AptProxy(never_run, str(tmp_path / 'p'), '198.19.90.1')
    os.makedirs(proxy.state_dir)
    theirs = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '-c', '/etc/apt-cacher-ng'])
    ours = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '-c', proxy.dirs['conf']])
    try:
        for proc in (theirs, ours):
            while '-c' not in cmdline(proc.pid):
                time.sleep(0.02)
        # a record pointing at another apt-cacher-ng (the system's): left alone
        with open(proxy.record_path, 'w') as handle:
            json.dump({'pid': theirs.pid, 'starttime': starttime(theirs.pid)}, handle)
        assert proxy.stop() == {'changed': True, 'stopped': False}
        assert theirs.poll() is None
        # our start time must match too
        with open(proxy.record_path, 'w') as handle:
            json.dump({'pid': ours.pid, 'starttime': 1}, handle)
        assert proxy.stop()['stopped'] is False and ours.poll() is None
        with open(proxy.record_path, 'w') as handle:
            json.dump({'pid': ours.pid, 'starttime': starttime(ours.pid)}, handle)
        assert proxy.status()['running'] is True
        assert proxy.stop(purge=True) == {'changed': True, 'stopped': True}
        assert ours.wait(timeout=10) == -15
        assert theirs.poll() is None
        assert not os.path.exists(proxy.state_dir)
    finally:
        for proc in (theirs, ours):
            proc.kill()
            proc.wait()


# -- real -----------------------------------------------------------------

@pytest.fixture
def dummy():
    subprocess.run(['ip', 'link', 'add', DUMMY, 'type', 'bridge'], check=True)
    try:
        subprocess.run(['ip', 'addr', 'add', ADDRESS + '/32', 'dev', DUMMY], check=True)
        subprocess.run(['ip', 'link', 'set', DUMMY, 'up'], check=True)
        yield ADDRESS
    finally:
        subprocess.run(['ip', 'link', 'del', DUMMY], check=False)


class Module:
    def run_command(self, args, check_rc=False, data=None, binary_data=False, environ_update=None,
                    use_unsafe_shell=False):
        proc = subprocess.run(args, capture_output=True, env=dict(os.environ, **(environ_update or {})), check=False)
        return proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace')


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('apt-cacher-ng', path='/usr/sbin:/usr/bin'),
                    reason='needs root and apt-cacher-ng')
def test_real_proxy_lifecycle(open_tmp, dummy):
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import Runner
    tmp_path = open_tmp
    proxy = AptProxy(Runner(Module()), str(tmp_path / 'proxy'), dummy)
    try:
        started = proxy.start()
        assert started['changed'] is True and started['running'] is True
        pid = started['pid']
        assert os.stat('/proc/%d' % pid).st_uid == pwd.getpwnam('apt-cacher-ng').pw_uid  # not root
        assert proxy.start() == dict(proxy.status(), changed=False)  # idempotent
        # it answers on the given address only, as an http proxy (its own page; nothing fetched from outside)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen('http://%s:3142/' % dummy, timeout=10)
        assert exc.value.code in (403, 404, 406)
        listening = subprocess.run(['ss', '-Hltnp'], capture_output=True, text=True, check=True).stdout
        assert sorted(line.split()[3] for line in listening.splitlines() if 'pid=%d,' % pid in line) == [dummy + ':3142']
        stopped = proxy.stop(purge=True)
        assert stopped == {'changed': True, 'stopped': True}
        assert starttime(pid) is None and not os.path.exists(str(tmp_path / 'proxy'))
    finally:
        proxy.stop(purge=True)
