# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The capture module with the tcpdump backend, run for real as a task would run it.

As on a fresh target: the module runs on Pythons without scapy (Debian's /usr/bin/python3, pyenv's 3.8, 3.9 and
3.13), with only ansible-core's module_utils and the collection on its path, and backend auto must choose tcpdump,
capture, stop and analyse. tcpdump missing (an empty PATH) is refused with the packages to install. purged,
absent and a killed tcpdump behave as with scapy. Captures run in network namespaces tkct-<random> made for the
test; files live under the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

import ansible

from ansible_collections.tcplab.keepalive.plugins.modules import capture as capture_module
from ansible_collections.tcplab.keepalive.tests.unit.plugins.modules.module_args import module_result
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.capture_traffic import alive, wait_dead

NETNS_PREFIX = 'tkct-'   # the namespaces of the shared netns fixture (tests/unit/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
TCPDUMP = shutil.which('tcpdump')
real = pytest.mark.skipif(os.geteuid() != 0 or not all((TCPDUMP, shutil.which('ip'), shutil.which('nsenter'))),
                          reason='needs root, iproute2, nsenter and tcpdump')
PYENV = os.path.expanduser('~/.pyenv/versions')


def _no_scapy_pythons():
    """Pythons of target versions that cannot import scapy (as a fresh Debian's)."""
    found = []
    candidates = ['/usr/bin/python3'] + [os.path.join(PYENV, v, 'bin', 'python') for v in ('3.8.18', '3.9.18', '3.13.0')]
    for python in candidates:
        if os.path.exists(python) and subprocess.run([python, '-s', '-E', '-c', 'import scapy'], capture_output=True,
                                                     check=False).returncode != 0:
            found.append(python)
    return found


NO_SCAPY_PYTHONS = _no_scapy_pythons()


def run(args, check_mode=False):
    """The module's result dict for args, in this process (its Python has scapy when the venv has it)."""
    return module_result(capture_module.main, dict({'_ansible_check_mode': check_mode}, **args))


# The module on another Python, with nothing on its path but ansible-core's package and the collection (no
# site-packages: -s -E), as AnsiballZ runs it on a target.
RUNNER = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.tcplab.keepalive.plugins.modules import capture
    from ansible_collections.tcplab.keepalive.tests.unit.plugins.modules.module_args import module_result
    print(json.dumps(module_result(capture.main, json.loads(sys.argv[2]))))
''')


@pytest.fixture(scope='module')
def target_lib(tmp_path_factory):
    lib = tmp_path_factory.mktemp('target-lib')
    os.makedirs(str(lib / 'ansible_collections' / 'tcplab'))
    os.symlink(os.path.dirname(ansible.__file__), str(lib / 'ansible'))
    os.symlink(ROOT, str(lib / 'ansible_collections' / 'tcplab' / 'keepalive'))
    return str(lib)


def run_on(python, lib, args, netns=None, env=None):
    """The module's result on python (inside network namespace netns when given)."""
    argv = [python, '-s', '-E', '-c', RUNNER, lib, json.dumps(args)]
    if netns:
        argv = ['ip', 'netns', 'exec', netns] + argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def netns(netns_factory):
    """make() -> a new namespace of this test (the shared netns_factory of tests/unit/conftest.py)."""
    return netns_factory


def parent_of(pid):
    with open('/proc/%d/stat' % pid) as handle:
        return int(handle.read().rsplit(')', 1)[1].split()[1])


TRAFFIC = textwrap.dedent('''
    import socket, sys
    port = int(sys.argv[1])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    cli = socket.create_connection(("127.0.0.1", port))
    peer, _ = srv.accept()
    for i in range(3):
        cli.sendall(b"ping %d" % i)
        peer.recv(100)
    cli.close()
    peer.close()
''')


@real
@pytest.mark.skipif(not NO_SCAPY_PYTHONS, reason='no Python without scapy here')
@pytest.mark.parametrize('python', NO_SCAPY_PYTHONS)
def test_auto_takes_tcpdump_on_a_python_without_scapy(tmp_path, netns, target_lib, python):
    ns = netns()
    state_dir = str(tmp_path / 'state')
    args = {'netns': ns, 'path': str(tmp_path / 'caps' / 'sys.pcap'), 'filter': 'tcp port 4800', 'state_dir': state_dir}
    started = run_on(python, target_lib, args)
    assert started.get('failed') is not True, started
    assert started['backend'] == 'tcpdump' and started['handle']['backend'] == 'tcpdump' and started['running'] is True
    monitor = parent_of(started['pid'])
    with open('/proc/%d/cmdline' % monitor, 'rb') as handle:
        assert handle.read().split(b'\0')[0] == python.encode()  # the monitor runs on that Python
    subprocess.run(['ip', 'netns', 'exec', ns, python, '-c', TRAFFIC, '4800'], check=True)
    stopped = run_on(python, target_lib, {'state': 'stopped', 'handle': started['handle'],
                                          'expect': {'time': 7200, 'intvl': 75, 'probes': 9}})
    assert stopped['changed'] is True and stopped['stop_reason'] == 'stopped' and stopped['backend'] == 'tcpdump'
    assert stopped['packets'] == stopped['analysis']['summary']['packets'] >= 10
    assert stopped['analysis']['summary']['loopback_duplicates'] == 0
    assert stopped['analysis']['summary']['connections'] == 1
    wait_dead(started['pid'])
    assert not alive(monitor)


@real
@pytest.mark.skipif(not NO_SCAPY_PYTHONS, reason='no Python without scapy here')
def test_neither_scapy_nor_tcpdump_names_both_packages(tmp_path, target_lib):
    empty = tmp_path / 'bin'
    empty.mkdir()
    python = NO_SCAPY_PYTHONS[0]
    env = dict(os.environ, PATH=str(empty))
    for check_mode in (True, False):
        result = run_on(python, target_lib, {'path': str(tmp_path / 'caps' / 'x.pcap'), 'state_dir': str(tmp_path / 's'),
                                             '_ansible_check_mode': check_mode}, env=env)
        assert result.get('failed') is True
        assert result['msg'] == (
            'no capture backend on the target: scapy is not importable by %s and tcpdump is not installed (not found in '
            'PATH or the sbin directories): install one of them - apt-get install tcpdump, or apt-get install '
            'python3-scapy (scapy for the Python that runs the modules)' % python)
    assert sorted(os.listdir(tmp_path)) == ['bin']


def test_backend_tcpdump_without_tcpdump_is_refused(tmp_path, monkeypatch):
    empty = tmp_path / 'bin'
    empty.mkdir()
    monkeypatch.setenv('PATH', str(empty))
    result = run({'backend': 'tcpdump', 'path': str(tmp_path / 'caps' / 'x.pcap'), 'state_dir': str(tmp_path / 's')})
    assert result.get('failed') is True
    assert result['msg'] == ('tcpdump is not installed on the target (not found in PATH or the sbin directories): '
                             'install it (apt-get install tcpdump) or use backend: scapy')
    assert sorted(os.listdir(tmp_path)) == ['bin']


def test_a_bad_backend_is_refused(tmp_path):
    result = run({'backend': 'wireshark', 'path': str(tmp_path / 'x.pcap')})
    assert result.get('failed') is True and 'backend' in result['msg'] and 'wireshark' in result['msg']


RUN_IN = textwrap.dedent('''
    import json, os, sys
    sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "plugins", "modules")]
    import conftest  # installs the collection loader
    import test_capture_tcpdump
    print(json.dumps(test_capture_tcpdump.run(json.loads(sys.argv[2]))))
''')
UNIT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_in(ns, args):
    """The module run inside network namespace ns (as over the netns connection)."""
    proc = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, '-c', RUN_IN, UNIT_DIR, json.dumps(args)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


@real
def test_purged_stops_the_tcpdump_captures_of_its_own_namespace_only(tmp_path, netns):
    state_dir = str(tmp_path / 'state')
    ns_a, ns_b = netns(), netns()
    a = run({'netns': ns_a, 'path': str(tmp_path / 'a' / 'h1.pcap'), 'state_dir': state_dir, 'backend': 'tcpdump'})
    b = run({'netns': ns_b, 'path': str(tmp_path / 'b' / 'h1.pcap'), 'state_dir': state_dir, 'backend': 'tcpdump'})
    assert a['running'] and b['running'] and a['backend'] == b['backend'] == 'tcpdump'
    monitor_a = parent_of(a['pid'])
    purged = run_in(ns_a, {'state': 'purged', 'state_dir': state_dir})
    assert purged['stopped'] == [{'path': a['path'], 'pid': a['pid'], 'iface': 'lo', 'filter': None, 'netns': ns_a,
                                  'backend': 'tcpdump', 'signal': 'SIGTERM'}]
    assert purged['others_running'] == 1
    wait_dead(a['pid'])
    wait_dead(monitor_a)  # it has recorded the end
    assert alive(b['pid']) and os.path.exists(a['path'])
    ended = run({'state': 'status', 'path': a['path'], 'state_dir': state_dir})
    assert ended['stop_reason'] == 'stopped' and ended['died'] is None and ended['backend'] == 'tcpdump'
    gone = run({'state': 'absent', 'handle': b['handle']})
    assert gone['changed'] is True and gone['was_running'] is True and gone['backend'] == 'tcpdump'
    assert sorted(gone['removed']) == sorted([b['path'], b['handle']['state_path'], b['handle']['log_path']])
    wait_dead(b['pid'])


@real
def test_a_killed_tcpdump_is_reported_by_the_module(tmp_path, netns):
    state_dir = str(tmp_path / 'state')
    started = run({'netns': netns(), 'path': str(tmp_path / 'k.pcap'), 'state_dir': state_dir, 'backend': 'tcpdump'})
    monitor = parent_of(started['pid'])
    os.kill(started['pid'], signal.SIGKILL)
    wait_dead(started['pid'])
    wait_dead(monitor)  # it has recorded how tcpdump ended
    status = run({'state': 'status', 'handle': started['handle']})
    expected = "the capture's sniffer (pid %d) died: killed by SIGKILL" % started['pid']
    assert status['msg'] == expected and status['stop_reason'] == 'killed' and status['backend'] == 'tcpdump'
    assert expected in json.dumps(status['warnings'])
