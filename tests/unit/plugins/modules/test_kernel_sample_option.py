# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kernel_sample option of the endpoint and pcap_info modules, run for real (`ansible localhost -m ...` inside a
network namespace of this test, tk5b-ks-*): the sample the experiment's wait, client start and client status take in
their own module run - before the client connects (no socket yet), after the wait and at the status (the
ESTABLISHED socket with its keepalive timer) - is what kernel_counters reads, of the namespace the module runs in;
and a bad port is refused before anything starts."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_evidence as ke

REPO_ROOT = Path(__file__).resolve().parents[4]
ANSIBLE = Path(sys.executable).parent / 'ansible'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'
SERVER, CLIENT = 5071, 22371

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip'), reason='needs root and ip netns')


@pytest.fixture
def netns():
    name = 'tk5b-ks-%s' % secrets.token_hex(3)
    state = '/run/tcplab-test-kernel-sample/%s' % name
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    try:
        subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)
        # keepalive after 1 s idle, a probe a second: the timer is pending whenever the sample looks
        for key, value in (('time', 1), ('intvl', 1), ('probes', 3)):
            subprocess.run(['ip', 'netns', 'exec', name, 'sysctl', '-qw', 'net.ipv4.tcp_keepalive_%s=%d' % (key, value)],
                           check=True)
        yield name, state
    finally:
        pids = subprocess.run(['ip', 'netns', 'pids', name], capture_output=True, text=True, check=False).stdout.split()
        for pid in pids:
            subprocess.run(['kill', '-9', pid], check=False)
        subprocess.run(['ip', 'netns', 'del', name], check=False)
        shutil.rmtree(state, ignore_errors=True)


def run_module(ns, module, args, tmp_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
               ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    proc = subprocess.run(['ip', 'netns', 'exec', ns, str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,',
                           '-m', 'tcplab.keepalive.' + module, '-a', json.dumps(args),
                           '-e', 'ansible_python_interpreter=%s' % sys.executable],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    match = re.search(r'^localhost \| (SUCCESS|CHANGED|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    result = json.JSONDecoder().raw_decode(proc.stdout[match.end():])[0]
    result['_status'] = match.group(1)
    return result


def _sampled(result, ns):
    kernel = result['kernel']
    assert kernel['netns_inode'] == os.stat('/run/netns/' + ns).st_ino and kernel['source'] == 'inet_diag'
    assert set(kernel['counters']) >= {'tcp_keepalive', 'tcp_abort_on_timeout', 'tcp_timeouts'}
    return kernel


@pytest.mark.once
def test_the_endpoint_samples_before_the_client_connects_and_at_its_status(netns, tmp_path):
    ns, state = netns
    sample = {'port': CLIENT, 'peer_port': SERVER}
    server = run_module(ns, 'endpoint', {'role': 'server', 'port': SERVER, 'state_dir': state}, tmp_path)
    assert server['_status'] == 'CHANGED' and 'kernel' not in server, server
    client = run_module(ns, 'endpoint', {'role': 'client', 'port': SERVER, 'local_port': CLIENT, 'state_dir': state,
                                         'kernel_sample': sample}, tmp_path)
    assert client['_status'] == 'CHANGED' and client['running'], client
    # taken before the client connected: no socket of the connection yet, the counters at rest
    before = _sampled(client, ns)
    assert before['socket'] is None and before['ours'] == [] and before['counters']['tcp_keepalive'] == 0
    status = run_module(ns, 'endpoint', {'role': 'client', 'port': SERVER, 'state': 'status', 'state_dir': state,
                                         'kernel_sample': sample}, tmp_path)
    after = _sampled(status, ns)
    assert after['time'] > before['time'] and status['outcome']['state'] == 'connected'
    assert (after['socket']['local'], after['socket']['state'], after['socket']['timer']) == (
        '127.0.0.1:%d' % CLIENT, 'ESTABLISHED', 'keepalive')
    assert len(after['ours']) == 2   # both ends on loopback
    for role in ('client', 'server'):
        assert run_module(ns, 'endpoint', {'role': role, 'port': SERVER, 'state': 'stopped', 'state_dir': state},
                          tmp_path)['_status'] != 'FAILED!'


@pytest.mark.once
def test_the_wait_samples_once_it_is_over(netns, tmp_path):
    ns, state = netns
    pcap = str(tmp_path / 'empty.pcap')
    with open(pcap, 'wb') as handle:   # a pcap header, no packets: the wait runs out at once (timeout 0)
        handle.write(bytes.fromhex('d4c3b2a1020004000000000000000000ffff000001000000'))
    sample = {'port': CLIENT, 'peer_port': SERVER}
    result = run_module(ns, 'pcap_info', {'path': pcap, 'wait_for': {'port': CLIENT, 'unanswered': 1, 'timeout': 0},
                                          'kernel_sample': sample}, tmp_path)
    assert result['_status'] == 'SUCCESS' and result['waited']['met'] is False, result
    kernel = _sampled(result, ns)
    assert kernel['socket'] is None and kernel['sockets_count'] == 0
    # and with the connection up, its socket and keepalive timer
    run_module(ns, 'endpoint', {'role': 'server', 'port': SERVER, 'state_dir': state}, tmp_path)
    run_module(ns, 'endpoint', {'role': 'client', 'port': SERVER, 'local_port': CLIENT, 'state_dir': state}, tmp_path)
    result = run_module(ns, 'pcap_info', {'path': pcap, 'wait_for': {'port': CLIENT, 'unanswered': 1, 'timeout': 0},
                                          'kernel_sample': sample}, tmp_path)
    assert _sampled(result, ns)['socket']['timer'] == 'keepalive'
    assert 'kernel' not in run_module(ns, 'pcap_info', {'path': pcap}, tmp_path)


@pytest.mark.parametrize('module, args', [
    ('endpoint', {'role': 'client', 'port': SERVER, 'local_port': CLIENT}),
    ('pcap_info', {'wait_for': {'port': CLIENT, 'unanswered': 1, 'timeout': 0}}),
], ids=['endpoint', 'pcap_info'])
def test_a_bad_port_is_refused_before_anything_starts(netns, tmp_path, module, args):
    ns, state = netns
    args = dict(args, kernel_sample={'port': CLIENT, 'peer_port': 70000})
    if module == 'endpoint':
        args['state_dir'] = state
    else:
        args['path'] = str(tmp_path / 'none.pcap')
    result = run_module(ns, module, args, tmp_path)
    assert result['_status'] == 'FAILED!' and result['msg'] == 'kernel_sample: ' + ke.MSG_PORT % ('peer_port', 70000)
    assert not os.path.exists(state)   # the endpoint wrote nothing (no state, no client)


def test_no_options_no_sample():
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_sample as ks  # pylint: disable=import-outside-toplevel
    assert ks.take(None) is None and ks.take({}) is None
    with pytest.raises(ks.KernelSampleError, match='kernel_sample: port must be a TCP port'):
        ks.check({'port': 0})
