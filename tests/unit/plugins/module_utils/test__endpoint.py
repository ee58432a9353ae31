# Tests of the experiment's endpoints: validation and argv (pure), and the
# real thing - a server and a keepalive client in a network namespace this
# test creates, silenced by an iptables rule inside it, ending in ETIMEDOUT.
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _endpoint, _proc
from ansible_collections.tcplab.keepalive.plugins.module_utils._endpoint import (
    EndpointError, Endpoints, curl_argv, derive, parse_proc_net_tcp, validate)


def cfg(**kw):
    params = {'role': 'client', 'kind': 'python', 'address': '127.0.0.1', 'port': 12345,
              'local_port': 22345, 'keepalive_time': None, 'name': None}
    params.update(kw)
    return validate(params)


def test_defaults():
    assert cfg()['name'] == 'client-12345'
    assert validate({'role': 'server'})['name'] == 'server-12345'


@pytest.mark.parametrize('kw, message', [
    ({'port': 0}, _endpoint.MSG_PORT % ('port', 0)),
    ({'local_port': 70000}, _endpoint.MSG_PORT % ('local_port', 70000)),
    ({'address': 'localhost'}, _endpoint.MSG_ADDRESS % 'localhost'),
    ({'kind': 'nc'}, _endpoint.MSG_KIND % ('nc', 'client', 'python or curl')),
    ({'role': 'server', 'kind': 'curl'}, _endpoint.MSG_KIND % ('curl', 'server', 'python or nc')),
    ({'keepalive_time': 5}, _endpoint.MSG_KEEPALIVE_TIME % 5),
    ({'kind': 'curl', 'keepalive_time': 0}, _endpoint.MSG_KEEPALIVE_TIME % 0),
    ({'name': 'a b'}, _endpoint.MSG_NAME % 'a b'),
    ({'port': 65536}, _endpoint.MSG_PORT % ('port', 65536)),
    ({'local_port': 0}, _endpoint.MSG_PORT % ('local_port', 0)),
    ({'port': True}, _endpoint.MSG_PORT % ('port', True)),
    ({'kind': 'curl', 'keepalive_time': 32768}, _endpoint.MSG_KEEPALIVE_TIME % 32768),
    ({'timeout': -1}, _endpoint.MSG_TIMEOUT % (3600, -1)),
])
def test_bad_input(kw, message):
    with pytest.raises(EndpointError) as exc:
        cfg(**kw)
    assert str(exc.value) == message


def test_curl_argv_stock_and_explicit():
    stock = curl_argv('/usr/bin/curl', cfg(kind='curl'))
    assert stock == ['/usr/bin/curl', '--silent', '--show-error', '--no-buffer', '--local-port', '22345',
                     'http://127.0.0.1:12345/']
    explicit = curl_argv('curl', cfg(kind='curl', keepalive_time=2, address='::1'))
    assert explicit[-3:] == ['--keepalive-time', '2', 'http://[::1]:12345/']


def test_parse_proc_net_tcp():
    text = ('  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n'
            '   0: 0100007F:3039 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1\n'
            '   1: 0100007F:573D 0100007F:3039 01 00000000:00000000 02:00000A9E 00000000     0        0 2222 2\n')
    assert parse_proc_net_tcp(text) == [(12345, 0, 'LISTEN', 1111), (22333, 12345, 'ESTABLISHED', 2222)]


INFO = {'role': 'server', 'kind': 'python', 'pid': 100, 'program': {'pid': 101}, 'name': 's'}
CLIENT_INFO = dict(INFO, role='client', kind='curl')


@pytest.mark.parametrize('role, info, outcome, exit_rec, alive, last, want', [
    ('server', None, None, None, (False, None), '',
     {'state': 'unknown', 'reason': 'no server of this name was started in this network namespace'}),
    ('server', INFO, None, None, (True, True), '', {'state': 'running', 'reason': 'the server (pid 101, python) is running'}),
    ('server', dict(INFO, program=None), None, None, (True, None), '', {'state': 'running'}),
    ('server', INFO, None, {'signal': 'SIGKILL', 'at': 5}, (False, False), '',
     {'state': 'died', 'signal': 'SIGKILL', 'reason': 'the server (pid 101, python) was killed by SIGKILL'}),
    ('server', INFO, None, {'signal': 'SIGTERM', 'received': 'SIGTERM', 'at': 5}, (False, False), '',
     {'state': 'died', 'reason': 'the server (pid 101, python) was killed by SIGTERM (sent to its supervisor, pid 100)'}),
    ('server', dict(INFO, stop_requested=4), None, {'signal': 'SIGTERM', 'received': 'SIGTERM', 'at': 5}, (False, False), '',
     {'state': 'stopped', 'signal': 'SIGTERM', 'reason': 'the server (pid 101, python) was stopped (state=stopped or purged)'}),
    # killed before our stop came: still a death
    ('server', dict(INFO, stop_requested=6), None, {'signal': 'SIGKILL', 'at': 5}, (False, False), '', {'state': 'died'}),
    ('server', INFO, None, {'exit_code': 1, 'at': 5}, (False, False), 'OSError: [Errno 24] Too many open files',
     {'state': 'died', 'exit_code': 1, 'error': 'OSError: [Errno 24] Too many open files',
      'reason': 'the server (pid 101, python) exited with code 1: OSError: [Errno 24] Too many open files'}),
    ('server', dict(INFO, kind='nc'), None, {'exit_code': 0, 'at': 5}, (False, False), '',
     {'state': 'exited', 'exit_code': 0, 'reason': 'the server (pid 101, nc) exited with code 0'}),
    ('client', CLIENT_INFO, {'state': 'connected'}, None, (False, False), '',
     {'state': 'died', 'signal': 'SIGKILL', 'reason': 'the supervisor (pid 100) of the client (pid 101, curl) was killed by '
                                                      'SIGKILL (it records every other end), and curl ended with it'}),
    ('client', CLIENT_INFO, {'state': 'connected'}, None, (False, True), '',
     {'state': 'died', 'reason': 'the supervisor (pid 100) of the client (pid 101, curl) was killed by SIGKILL (it records '
                                 'every other end), and curl still runs orphaned: state=stopped or purged ends it'}),
    ('client', CLIENT_INFO, {'state': 'connected'}, None, (True, True), '', {'state': 'connected'}),
    ('client', CLIENT_INFO, {'state': 'connected'}, None, (True, False), '', {'state': 'died'}),
    ('client', CLIENT_INFO, {'state': 'failed', 'errno': 'ETIMEDOUT', 'exit_code': 56, 'seconds': 9.12345,
                             'error': 'curl: (56) Recv failure: Connection timed out'}, {'exit_code': 56}, (False, False), '',
     {'state': 'failed', 'errno': 'ETIMEDOUT', 'exit_code': 56, 'seconds': 9.123,
      'reason': 'the client (pid 101, curl) failed with ETIMEDOUT after 9.1 s: curl: (56) Recv failure: Connection timed out'}),
    ('client', dict(CLIENT_INFO, kind='python'), {'state': 'closed', 'error': 'the server closed the connection'}, None,
     (False, False), '', {'state': 'closed', 'reason': 'the client (pid 101, python): the server closed the connection'}),
])
def test_derive(role, info, outcome, exit_rec, alive, last, want):
    got = derive(role, info, outcome, exit_rec, alive[0], alive[1], last)
    assert set(got) == set(_endpoint.OUTCOME_KEYS)
    assert {k: got[k] for k in want} == want


def test_stop_never_signals_a_foreign_process(tmp_path):
    sleeper = subprocess.Popen(['sleep', '30'])  # pylint: disable=consider-using-with
    try:
        eps = Endpoints(str(tmp_path))
        os.makedirs(eps.dir)
        record = {'pid': sleeper.pid, 'start': _proc.starttime(sleeper.pid), 'netns': eps.netns, 'name': 'client-12345',
                  'tag': 'tcplab-keepalive-endpoint:client-12345', 'role': 'client', 'kind': 'python',
                  'program': {'pid': sleeper.pid, 'start': _proc.starttime(sleeper.pid), 'argv0': 'curl'}}
        with open(eps._paths('client-12345')['state'], 'w') as handle:
            json.dump(record, handle)
        result = eps.stopped(cfg())
        assert not result['changed']
        time.sleep(0.2)
        assert sleeper.poll() is None, 'a process that is not ours was signalled'
    finally:
        sleeper.kill()
        sleeper.wait()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='needs root for ip netns and iptables')


def netns_python(ns, code):
    return subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, '-c', code], check=True,
                          capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def netns():
    name = 'tken-%s' % secrets.token_hex(3)
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)
    subprocess.run(['ip', 'netns', 'exec', name, 'sysctl', '-q', '-w', 'net.ipv4.tcp_keepalive_time=1',
                    'net.ipv4.tcp_keepalive_intvl=1', 'net.ipv4.tcp_keepalive_probes=2'], check=True)
    yield name
    for pid in subprocess.run(['ip', 'netns', 'pids', name], capture_output=True, text=True, check=False).stdout.split():
        subprocess.run(['kill', '-9', pid], check=False)
    subprocess.run(['ip', 'netns', 'del', name], check=False)


RUN_IN_NS = r'''
import json, sys, time
sys.path[:0] = json.loads(sys.argv[1])
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder
_AnsibleCollectionFinder(paths=json.loads(sys.argv[2]), scan_sys_paths=False)._install()
from ansible_collections.tcplab.keepalive.plugins.module_utils._endpoint import Endpoints, validate
eps = Endpoints(sys.argv[3], sys.executable, json.loads(sys.argv[5]))
out = {}
for step in json.loads(sys.argv[4]):
    cfg = validate(step["cfg"])
    out[step["id"]] = getattr(eps, step["op"])(cfg)
print(json.dumps(out))
'''


def in_ns(ns, state_dir, steps):
    from ansible.utils.collection_loader import AnsibleCollectionConfig
    paths = list(AnsibleCollectionConfig.collection_paths)
    out = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, '-c', RUN_IN_NS, json.dumps(sys.path),
                          json.dumps(paths), state_dir, json.dumps(steps),
                          json.dumps({'nc': shutil.which('nc'), 'curl': shutil.which('curl')})],
                         check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


SERVER = {'role': 'server', 'kind': 'python', 'port': 41345}
CLIENT = {'role': 'client', 'kind': 'python', 'port': 41345, 'local_port': 41346}


@needs_root
@pytest.mark.parametrize('server_kind', ['python', 'nc'])
@pytest.mark.once
def test_client_times_out_when_the_server_goes_silent(netns, tmp_path, server_kind):
    state = str(tmp_path / 'ep')
    server = dict(SERVER, kind=server_kind)
    got = in_ns(netns, state, [{'id': 's', 'op': 'started', 'cfg': server}, {'id': 'c', 'op': 'started', 'cfg': CLIENT}])
    assert got['s']['running'] and got['c']['outcome']['state'] == 'connected'
    # the endpoints outlive the process that started them
    again = in_ns(netns, state, [{'id': 'c', 'op': 'status', 'cfg': CLIENT}, {'id': 's', 'op': 'started', 'cfg': server}])
    assert again['c']['running'] and not again['s']['changed']
    time.sleep(2.5)  # answered probes at +1 s, +2 s: still connected
    assert in_ns(netns, state, [{'id': 'c', 'op': 'status', 'cfg': CLIENT}])['c']['outcome']['state'] == 'connected'
    subprocess.run(['ip', 'netns', 'exec', netns, 'iptables', '-w', '5', '-I', 'INPUT', '-p', 'tcp', '--dport', '41345',
                    '-j', 'DROP'], check=True)
    deadline = time.time() + 15
    while time.time() < deadline:
        status = in_ns(netns, state, [{'id': 'c', 'op': 'status', 'cfg': CLIENT}])['c']
        if status['outcome']['state'] != 'connected':
            break
        time.sleep(0.5)
    assert status['outcome']['state'] == 'failed'
    assert status['outcome']['errno'] == 'ETIMEDOUT'
    assert 3 < status['outcome']['seconds'] < 12
    stop = in_ns(netns, state, [{'id': 's', 'op': 'stopped', 'cfg': server}, {'id': 's2', 'op': 'stopped', 'cfg': server}])
    assert stop['s']['changed'] and not stop['s2']['changed']
    assert subprocess.run(['ip', 'netns', 'pids', netns], capture_output=True, text=True, check=True).stdout.strip() == ''


@needs_root
def test_curl_client_reports_its_keepalive_override(netns, tmp_path):
    state = str(tmp_path / 'ep')
    curl = dict(CLIENT, kind='curl', keepalive_time=1)
    got = in_ns(netns, state, [{'id': 's', 'op': 'started', 'cfg': SERVER}, {'id': 'c', 'op': 'started', 'cfg': curl}])
    assert got['c']['keepalive_time'] == 1 and got['c']['keepalive_time_source'] == 'option'
    subprocess.run(['ip', 'netns', 'exec', netns, 'iptables', '-w', '5', '-I', 'INPUT', '-p', 'tcp', '--dport', '41345',
                    '-j', 'DROP'], check=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        status = in_ns(netns, state, [{'id': 'c', 'op': 'status', 'cfg': curl}])['c']
        if status['outcome']['state'] not in ('connected', 'starting'):
            break
        time.sleep(0.5)
    assert status['outcome']['exit_code'] == 56
    assert status['outcome']['errno'] == 'ETIMEDOUT'
    stock = in_ns(netns, state, [{'id': 'c', 'op': 'status', 'cfg': dict(CLIENT, kind='curl')}])['c']
    assert stock['keepalive_time'] == 1  # the running client's own value is reported


def test_a_client_start_awaits_the_client_s_own_record_of_its_connection(tmp_path):
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _endpoint  # pylint: disable=import-outside-toplevel
    path = tmp_path / 'outcome.json'
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds
        if now[0] >= 0.1:   # the program writes its record a moment after its socket is ESTABLISHED
            path.write_text('{"state": "connected", "connected_at": 1.0}')
    assert _endpoint.recorded(str(path), 5.0, lambda: now[0], sleep) and 0.1 <= now[0] < 0.2
    # a record that never comes: the start returns at its deadline all the same (the outcome then says running)
    path.unlink()
    now[0] = 0.0
    assert not _endpoint.recorded(str(path), 0.05, lambda: now[0], lambda s: now.__setitem__(0, now[0] + s))


def test_a_start_still_waiting_says_how_far_its_processes_got():
    """The "did not become ready" message tells a starved host (little CPU used, a high load) from a stuck program."""
    lone = subprocess.Popen(['sleep', '30'])
    parent = subprocess.Popen([sys.executable, '-c', 'import subprocess; subprocess.run(["sleep", "30"])'])
    child = None
    try:
        said = _endpoint.progress(lone.pid)
        assert re.fullmatch(r'its supervisor pid %d used \d+\.\d\d s of CPU, its program has not started; '
                            r'load average \d+\.\d\d' % lone.pid, said), said
        deadline = time.monotonic() + 30
        while not _proc.children(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = _proc.children(parent.pid)[0]
        said = _endpoint.progress(parent.pid)
        assert 'its supervisor pid %d used ' % parent.pid in said and 'its program pid %d used ' % child in said, said
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
        for proc in (lone, parent):
            proc.kill()
            proc.wait()
    assert _endpoint.progress(lone.pid).startswith('its supervisor pid %d used no CPU time we could read' % lone.pid)
