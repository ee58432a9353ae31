# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one request of the idle-timeout experiment, run for real in a namespace tkit-pr-<random>: the python
client sends it when its request file appears and records "answered" when the python server sends it back; the
server answers nothing else (curl's GET stays unanswered); a request nobody answers fails with ETIMEDOUT. And the
endpoint passes the request file to the python client only, and reports it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _detached, _endpoint, _program_client, _program_server
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.netns_lab import in_ns, start_program, until

NETNS_PREFIX = 'tkit-pr-'   # the namespaces of the shared netns fixture (tests/unit/conftest.py)

real = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip') or not shutil.which('nsenter'),
                          reason='needs root, iproute2 and nsenter')
MARKER = 'tkit-program-request-test'


def listening(ns, port):
    """Whether a TCP socket listens on port in namespace ns (ss, as the kernel lists it)."""
    out = subprocess.run(['ip', 'netns', 'exec', ns, 'ss', '-Hltn', 'sport = :%d' % port], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


def start(ns, module, args, **kw):
    return start_program(ns, module, MARKER, args, **kw)


def state_of(path):
    return (_detached.load_record(str(path)) or {}).get('state')


def stop(*procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_the_request_is_one_line_both_programs_share():
    assert _program_client.REQUEST == _program_server.REQUEST == b'tcplab-keepalive request\n'


def test_only_the_python_client_gets_the_request_file():
    client = _endpoint.validate({'role': 'client', 'kind': 'python', 'address': '127.0.0.1', 'port': 1000})
    argv = _endpoint.program_argv(client, 'python3', {}, '/s/c.outcome.json', 'tag', '/s/c.request')
    assert '"request": "/s/c.request"' in argv[-1]
    assert '"request"' not in _endpoint.program_argv(client, 'python3', {}, '/s/c.outcome.json', 'tag')[-1]
    curl = dict(client, kind='curl')
    assert _endpoint.program_argv(curl, 'python3', {'curl': '/usr/bin/curl'}, '/o', 'tag', '/s/c.request')[0] == '/usr/bin/curl'


def test_an_answered_request_is_a_final_outcome():
    info = {'role': 'client', 'kind': 'python', 'pid': 10, 'program': {'pid': 11}}
    out = _endpoint.derive('client', info, {'state': 'answered', 'connected_at': 1.0, 'requested_at': 20.0,
                                            'answered_at': 20.01, 'seconds': 19.01}, None, True, True)
    assert out['state'] == 'answered' and out['requested_at'] == 20.0 and out['answered_at'] == 20.01
    assert out['reason'] == 'the client (pid 11, python) had its request answered 19.0 s after connect'


@real
def test_the_client_asks_once_its_request_file_appears_and_the_server_answers(netns, tmp_path):
    outcome, request = tmp_path / 'c.outcome.json', tmp_path / 'c.request'
    server = start(netns, _program_server, {'address': '127.0.0.1', 'port': 41401}, stdout=subprocess.PIPE, text=True)
    client = None
    try:
        until(lambda: listening(netns, 41401))
        client = start(netns, _program_client, {'address': '127.0.0.1', 'port': 41401, 'local_port': None,
                                                'outcome': str(outcome), 'request': str(request)},
                       stderr=subprocess.DEVNULL)
        until(lambda: state_of(outcome) == 'connected')
        time.sleep(1.2)
        assert state_of(outcome) == 'connected'  # no file, no request
        request.write_text('')
        assert client.wait(10) == 0
        assert '"answered"' in server.stdout.readline() + server.stdout.readline()
        answered = _detached.load_record(str(outcome))
        assert answered['state'] == 'answered' and answered['errno'] is None
        assert answered['connected_at'] + 1.2 <= answered['requested_at'] <= answered['answered_at']
    finally:
        stop(*[proc for proc in (server, client) if proc])
        server.stdout.close()


SILENT_READER = textwrap.dedent('''
    import socket, sys, time
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(1)
    print("ready", flush=True)
    conn, peer = srv.accept()
    time.sleep(60)
''')

GET = textwrap.dedent('''
    import socket, sys
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    sock.settimeout(1)
    try:
        print("sent" if sock.recv(10) else "closed", flush=True)
    except socket.timeout:
        print("held", flush=True)
''')


@real
def test_the_server_answers_nothing_but_the_request(netns):
    server = start(netns, _program_server, {'address': '127.0.0.1', 'port': 41402}, stdout=subprocess.DEVNULL)
    try:
        until(lambda: listening(netns, 41402))
        peer = subprocess.run(in_ns(netns, [sys.executable, '-c', GET, '41402']), capture_output=True, text=True,
                              timeout=30, check=True)
        assert peer.stdout == 'held\n'
    finally:
        stop(server)


@real
def test_an_unanswered_request_fails_with_etimedout(netns, tmp_path):
    outcome, request = tmp_path / 'c.outcome.json', tmp_path / 'c.request'
    silent = subprocess.Popen(in_ns(netns, [sys.executable, '-c', SILENT_READER, '41403']),  # pylint: disable=consider-using-with
                              stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert silent.stdout.readline() == 'ready\n'
        request.write_text('')
        client = start(netns, _program_client, {'address': '127.0.0.1', 'port': 41403, 'local_port': None,
                                                'outcome': str(outcome), 'request': str(request),
                                                'request_timeout': 1}, stderr=subprocess.DEVNULL)
        assert client.wait(10) == 0
        failed = _detached.load_record(str(outcome))
        assert failed['state'] == 'failed' and failed['errno'] == 'ETIMEDOUT'
        assert failed['error'].startswith('no answer to the request within 1 s')
    finally:
        stop(*[proc for proc in (silent, client) if proc])
        silent.stdout.close()
