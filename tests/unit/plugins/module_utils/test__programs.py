# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The programs that run detached on targets (plugins/module_utils/_program_*.py), run for real.

Each is started as its users start it - ``[python, -c, <its source>, marker,
json-args]`` from _detached.program_argv - inside a network namespace
tkpr-<random> made for the test (root, iproute2, nsenter; iptables for the
timer, curl for the curl wrapper). The capture program is run for real by
test__capture.py and test__capture_tcpdump.py.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import (
    _detached, _proc, _program_capture, _program_client, _program_server, _program_supervisor, _program_timer)
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import program_argv, program_source
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.netns_lab import in_ns, start_program, until

NETNS_PREFIX = 'tkpr-'   # the namespaces of the shared netns fixture (tests/unit/conftest.py)

PROGRAMS = (_program_capture, _program_client, _program_server, _program_supervisor, _program_timer)
TOOLS = all(shutil.which(tool) for tool in ('ip', 'nsenter'))
real = pytest.mark.skipif(os.geteuid() != 0 or not TOOLS, reason='needs root, iproute2 and nsenter')
MARKER = 'tkpr-program-test'


# -- what every program is ---------------------------------------------------------------

@pytest.mark.parametrize('module', PROGRAMS, ids=lambda m: m.__name__.rsplit('.', 1)[-1])
def test_a_program_is_its_own_file_with_a_main_and_the_standard_library_only(module):
    source = program_source(module)
    with open(module.__file__) as handle:
        assert source == handle.read()
    tree = ast.parse(source)
    imported = set()
    for node in tree.body:  # module level: what `python -c` needs on a bare target
        if isinstance(node, ast.Import):
            imported.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or '').split('.')[0])
    assert not imported & {'ansible', 'ansible_collections', 'scapy'}
    assert any(isinstance(node, ast.FunctionDef) and node.name == 'main' for node in tree.body)
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and ast.unparse(guard.test) == "__name__ == '__main__'"


def test_a_program_runs_from_its_argv_and_reads_its_arguments(tmp_path):
    """The timer program with nothing to do (already expired; its -C says there is no such rule) removes its state
    file and exits 0: run by exactly the argv its user builds."""
    state = tmp_path / 'timer.json'
    state.write_text('{}')
    check = [sys.executable, '-c', 'import sys; sys.stderr.write("does a matching rule exist"); sys.exit(1)']
    argv = program_argv(sys.executable, _program_timer, MARKER, {'expires_at': 0, 'check': check,
                                                                 'delete': ['/bin/false'], 'state': str(state)})
    assert argv[:2] == [sys.executable, '-c'] and argv[3] == MARKER
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert not state.exists()


# -- in a namespace ------------------------------------------------------------------------

def start(ns, module, args, **kw):
    return start_program(ns, module, MARKER, args, **kw)


def read_json(path):
    return _detached.load_record(str(path))


def accepted(ns, port):
    """True once a process owns the server's side of an established connection on port: the server has
    accept()ed it (killed before that, its kernel answers with a RST, not a FIN)."""
    out = subprocess.run(['ip', 'netns', 'exec', ns, 'ss', '-Htnp', 'state', 'established', 'sport', '=', ':%d' % port],
                         capture_output=True, text=True, check=False).stdout
    return 'pid=' in out


PEER = textwrap.dedent('''
    import socket, sys, time
    for _ in range(200):
        try:
            sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    sock.settimeout(1)
    try:
        print("sent" if sock.recv(10) else "closed", flush=True)
    except socket.timeout:
        print("held", flush=True)
''')


@real
def test_the_server_accepts_holds_and_never_sends(netns):
    server = start(netns, _program_server, {'address': '127.0.0.1', 'port': 41301}, stdout=subprocess.PIPE, text=True)
    try:
        peer = subprocess.run(in_ns(netns, [sys.executable, '-c', PEER, '41301']), capture_output=True, text=True,
                              timeout=30, check=True)
        assert peer.stdout == 'held\n'  # connected, and nothing came for a second
        event = json.loads(server.stdout.readline())
        assert event['event'] == 'accepted' and event['peer'][0] == '127.0.0.1'
        assert server.poll() is None
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


@real
def test_the_server_says_why_it_cannot_listen(netns):
    done = subprocess.run(in_ns(netns, program_argv(sys.executable, _program_server, MARKER,
                                                    {'address': '198.19.120.1', 'port': 41302})),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith('cannot listen on 198.19.120.1 port 41302: [Errno 99] ')


@real
def test_the_client_records_its_connection_and_how_it_ended(netns, tmp_path):
    outcome = tmp_path / 'outcome.json'
    server = start(netns, _program_server, {'address': '127.0.0.1', 'port': 41311}, stdout=subprocess.DEVNULL)
    client = start(netns, _program_client, {'address': '127.0.0.1', 'port': 41311, 'local_port': 41312,
                                            'outcome': str(outcome)}, stderr=subprocess.DEVNULL)
    try:
        # the server may not listen yet: the client then records a refused connect and exits; try once more
        until(lambda: (read_json(outcome) or {}).get('state') in ('connected', 'failed'))
        if read_json(outcome)['state'] == 'failed':
            client.wait(5)
            time.sleep(0.5)
            client = start(netns, _program_client, {'address': '127.0.0.1', 'port': 41311, 'local_port': 41312,
                                                    'outcome': str(outcome)}, stderr=subprocess.DEVNULL)
            until(lambda: (read_json(outcome) or {}).get('state') == 'connected')
        connected = read_json(outcome)
        assert set(connected) == {'state', 'connected_at'}
        until(lambda: accepted(netns, 41311))
        server.kill()  # the kernel closes its connection: the client sees the end
        server.wait()
        assert client.wait(10) == 0
        closed = read_json(outcome)
        assert closed['state'] == 'closed' and closed['errno'] is None
        assert closed['error'] == 'the server closed the connection'
        assert closed['connected_at'] == connected['connected_at'] and 0 <= closed['seconds'] < 10
    finally:
        for proc in (server, client):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@real
def test_the_client_records_a_refused_connect(netns, tmp_path):
    outcome = tmp_path / 'outcome.json'
    client = start(netns, _program_client, {'address': '127.0.0.1', 'port': 41321, 'local_port': None,
                                            'outcome': str(outcome)}, stderr=subprocess.PIPE, text=True)
    assert client.wait(10) == 1
    assert 'connect failed: [Errno 111] Connection refused' in client.stderr.read()
    client.stderr.close()
    failed = read_json(outcome)
    assert failed['state'] == 'failed' and failed['phase'] == 'connect' and failed['errno'] == 'ECONNREFUSED'


@real
def test_the_supervisor_records_an_exit_code_and_a_forwarded_signal(netns, tmp_path):
    exit_file = tmp_path / 'exit.json'
    spec = {'argv': [sys.executable, '-c', 'import sys; sys.exit(3)'], 'outcome': str(tmp_path / 'o.json'),
            'exit': str(exit_file), 'curl': False}
    assert start(netns, _program_supervisor, spec).wait(10) == 0
    record = read_json(exit_file)
    assert record['exit_code'] == 3 and record['signal'] is None and record['received'] is None
    # SIGTERM to the supervisor reaches its program, and the record says both
    spec['argv'] = [shutil.which('sleep'), '60']
    supervisor = start(netns, _program_supervisor, spec)
    # nsenter execs the supervisor (the same pid), which starts sleep as its child
    until(lambda: any(_proc.cmdline(pid) == spec['argv'] for pid in _proc.children(supervisor.pid)))
    assert MARKER in _proc.cmdline(supervisor.pid)
    os.kill(supervisor.pid, signal.SIGTERM)
    assert supervisor.wait(10) == 0
    record = read_json(exit_file)
    assert record['signal'] == 'SIGTERM' and record['received'] == 'SIGTERM' and record['exit_code'] is None


@real
@pytest.mark.skipif(not shutil.which('curl'), reason='needs curl')
def test_the_curl_wrapper_records_curls_outcome(netns, tmp_path):
    outcome, exit_file = tmp_path / 'o.json', tmp_path / 'exit.json'
    spec = {'argv': [shutil.which('curl'), '--silent', '--show-error', '--no-buffer', 'http://127.0.0.1:41331/'],
            'outcome': str(outcome), 'exit': str(exit_file), 'curl': True}
    done = subprocess.run(in_ns(netns, program_argv(sys.executable, _program_supervisor, MARKER, spec)),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stderr.startswith('curl: (7) Failed to connect to 127.0.0.1 port 41331')
    failed = read_json(outcome)
    assert failed['state'] == 'failed' and failed['exit_code'] == 7 and failed['seconds'] >= 0
    assert failed['error'] == done.stderr.strip()
    # the errno when curl names it (curl's wording differs between releases)
    assert failed['errno'] == ('ECONNREFUSED' if 'Connection refused' in done.stderr else None)
    assert read_json(exit_file)['exit_code'] == 7


@real
@pytest.mark.skipif(not shutil.which('iptables'), reason='needs iptables')
def test_the_timer_deletes_its_rule_when_it_expires(netns, tmp_path):
    iptables = [shutil.which('iptables'), '-w', '5']
    spec = ['INPUT', '-p', 'tcp', '-m', 'tcp', '--dport', '41341', '-m', 'comment', '--comment',
            'tcplab-keepalive:tkpr', '-j', 'DROP']
    for _copy in range(2):  # two copies: the timer deletes while -C finds one
        subprocess.run(in_ns(netns, iptables + ['-A'] + spec), check=True)
    state = tmp_path / 'timer.json'
    state.write_text('{}')
    args = {'expires_at': time.time() + 1, 'check': in_ns(netns, iptables + ['-C'] + spec),
            'delete': in_ns(netns, iptables + ['-D'] + spec), 'state': str(state)}
    timer = subprocess.Popen(program_argv(sys.executable, _program_timer, MARKER, args))  # pylint: disable=consider-using-with
    time.sleep(0.5)
    assert timer.poll() is None  # not yet expired: the rule stays
    assert subprocess.run(in_ns(netns, iptables + ['-C'] + spec), capture_output=True, check=False).returncode == 0
    assert timer.wait(30) == 0
    check = subprocess.run(in_ns(netns, iptables + ['-C'] + spec), capture_output=True, text=True, check=False)
    assert check.returncode == 1 and 'does a matching rule exist' in check.stderr
    assert not state.exists()
