# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The python client of the in-flight experiment: the endpoint's user_timeout_ms and request_timeout options (their
validation, the client's args), and for real in a namespace tkf-pi-<random>: a request written into a DROP with
TCP_USER_TIMEOUT ends when the retransmission model says, recorded with its time (requested_at)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _detached, _endpoint, _program_client, _retransmit
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import program_argv
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.netns_lab import in_ns

NETNS_PREFIX = 'tkf-pi-'   # the namespaces of the shared netns fixture (tests/unit/conftest.py)

real = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip') or not shutil.which('nsenter')
                          or not shutil.which('iptables'), reason='needs root, iproute2, nsenter and iptables')
BASE = {'role': 'client', 'kind': 'python', 'address': '127.0.0.1', 'port': 1000}


@pytest.mark.parametrize('extra, message', [
    ({'user_timeout_ms': -1}, _endpoint.MSG_USER_TIMEOUT % -1),
    ({'user_timeout_ms': 2 ** 31}, _endpoint.MSG_USER_TIMEOUT % 2 ** 31),
    ({'user_timeout_ms': True}, _endpoint.MSG_USER_TIMEOUT % True),
    ({'kind': 'curl', 'user_timeout_ms': 500}, _endpoint.MSG_USER_TIMEOUT % 500),
    ({'request_timeout': 0}, _endpoint.MSG_REQUEST_TIMEOUT % (86400, 0)),
    ({'request_timeout': 86401}, _endpoint.MSG_REQUEST_TIMEOUT % (86400, 86401)),
    ({'kind': 'curl', 'request_timeout': 5}, _endpoint.MSG_REQUEST_TIMEOUT % (86400, 5)),
])
def test_bad_in_flight_options_are_named(extra, message):
    with pytest.raises(_endpoint.EndpointError) as exc:
        _endpoint.validate(dict(BASE, **extra))
    assert str(exc.value) == message
    assert 'python clients only' in message


def test_the_client_gets_the_options():
    cfg = _endpoint.validate(dict(BASE, user_timeout_ms=1500, request_timeout=40))
    args = _endpoint.program_argv(cfg, 'python3', {}, '/s/c.outcome.json', 'tag', '/s/c.request')[-1]
    assert '"user_timeout_ms": 1500' in args and '"request_timeout": 40.0' in args
    plain = _endpoint.program_argv(_endpoint.validate(BASE), 'python3', {}, '/o', 'tag', '/r')[-1]
    assert 'user_timeout_ms' not in plain and 'request_timeout' not in plain
    assert _endpoint.validate(dict(BASE, user_timeout_ms=0))['user_timeout_ms'] == 0


SERVER = ('import socket, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n'
          's.bind(("127.0.0.1", 41411))\ns.listen(1)\nprint("ready", flush=True)\nc, _ = s.accept()\ntime.sleep(60)\n')


@real
@pytest.mark.parametrize('user_timeout_ms', [600, 0])
def test_data_in_flight_ends_by_the_user_timeout_or_tcp_retries2(netns, tmp_path, user_timeout_ms):
    outcome, request = tmp_path / 'c.outcome.json', tmp_path / 'c.request'
    subprocess.run(in_ns(netns, ['sysctl', '-qw', 'net.ipv4.tcp_retries2=1']), check=True)
    server = subprocess.Popen(in_ns(netns, [sys.executable, '-c', SERVER]), stdout=subprocess.PIPE, text=True)  # pylint: disable=consider-using-with
    client = None
    try:
        assert server.stdout.readline() == 'ready\n'
        args = {'address': '127.0.0.1', 'port': 41411, 'local_port': None, 'outcome': str(outcome),
                'request': str(request), 'request_timeout': 30, 'user_timeout_ms': user_timeout_ms}
        client = subprocess.Popen(in_ns(netns, program_argv(sys.executable, _program_client, 'tkf-pi', args)),  # pylint: disable=consider-using-with
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while (_detached.load_record(str(outcome)) or {}).get('state') != 'connected':
            assert time.monotonic() < deadline
            time.sleep(0.05)
        subprocess.run(in_ns(netns, ['iptables', '-w', '-I', 'INPUT', '-p', 'tcp', '--dport', '41411', '-j', 'DROP']),
                       check=True)
        request.write_text('')
        assert client.wait(20) == 0
        failed = _detached.load_record(str(outcome))
        assert failed['state'] == 'failed' and failed['errno'] == 'ETIMEDOUT', failed
        # loopback: RTO 204 ms at HZ 250 (201 at HZ 1000); the model's window, +- 0.1 s for the 0.5 s poll's start
        prediction = _retransmit.predict(204, 1, user_timeout_ms)
        after = (failed['failed_at'] - failed['requested_at']) * 1000
        assert prediction['end_ms'] - 100 <= after <= prediction['end_latest_ms'] + 100, (after, prediction)
    finally:
        for proc in (server, client):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
        server.stdout.close()
