# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kernel_counters module run for real (`ansible localhost -m tcplab.keepalive.kernel_counters`) against a lab
namespace of this test (tkk-m) holding a keepalive connection on loopback, in check mode; and the error of a port
out of range."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_evidence as ke

REPO_ROOT = Path(__file__).resolve().parents[4]
ANSIBLE = Path(sys.executable).parent / 'ansible'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'
NS = 'tkk-m'
PAIR = textwrap.dedent('''\
    import socket, time
    srv = socket.socket()
    srv.bind(("127.0.0.1", 5062))
    srv.listen(1)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    c.bind(("127.0.0.1", 22363))
    c.connect(("127.0.0.1", 5062))
    a, _ = srv.accept()
    print("ready", flush=True)
    time.sleep(60)
    ''')


def run_module(args, tmp_path, check=False):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
               ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    proc = subprocess.run([str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,', '-m',
                           'tcplab.keepalive.kernel_counters', '-a', json.dumps(args),
                           '-e', 'ansible_python_interpreter=%s' % sys.executable] + (['--check'] if check else []),
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    match = re.search(r'^localhost \| (SUCCESS|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    return match.group(1), json.loads(proc.stdout[match.end():])


@pytest.fixture
def namespace():
    if os.path.exists('/run/netns/' + NS):
        pytest.fail('network namespace %s exists (an interrupted run of this test?): not ours to remove; check and '
                    'ip netns del %s' % (NS, NS))
    subprocess.run(['ip', 'netns', 'add', NS], check=True)
    proc = None
    try:
        subprocess.run(['ip', '-n', NS, 'link', 'set', 'lo', 'up'], check=True)
        proc = subprocess.Popen(['ip', 'netns', 'exec', NS, sys.executable, '-c', PAIR], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == 'ready'
        yield NS
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(['ip', 'netns', 'del', NS], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip'), reason='needs root and ip')
def test_counters_and_the_sockets_timer_of_a_namespace(namespace, tmp_path):
    # in check mode: it only reads, so it runs the same
    status, result = run_module({'netns': namespace, 'port': 22363, 'peer_port': 5062}, tmp_path, check=True)
    assert status == 'SUCCESS' and result['changed'] is False
    here = subprocess.run(['ip', 'netns', 'exec', namespace, 'cat', '/proc/net/netstat'], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    tcpext = dict(zip(here[0].split(), here[1].split()))
    # read here after the module: the counters can only have grown, by the probes sent in between
    assert 0 <= int(tcpext['TCPKeepAlive']) - result['counters']['tcp_keepalive'] <= 2
    assert result['counters']['tcp_abort_on_timeout'] == int(tcpext['TCPAbortOnTimeout']) == 0
    assert result['source'] == 'inet_diag' and result['others_count'] == 0 and len(result['ours']) == 2
    sock = result['socket']
    assert (sock['local'], sock['remote'], sock['state'], sock['timer']) == (
        '127.0.0.1:22363', '127.0.0.1:5062', 'ESTABLISHED', 'keepalive')
    assert result['netns_inode'] == os.stat('/run/netns/' + namespace).st_ino


@pytest.mark.parametrize('args, message', [
    ({'port': 0}, ke.MSG_PORT % ('port', 0)),
    ({'port': 1, 'peer_port': 65536}, ke.MSG_PORT % ('peer_port', 65536)),
])
def test_bad_input_is_named(tmp_path, args, message):
    status, result = run_module(args, tmp_path)
    assert status == 'FAILED!' and message in result['msg']
