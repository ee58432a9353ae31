# Regression tests of the endpoints' lifecycle with real processes in network
# namespaces this file creates (tken-*): a failed start leaves nothing, the
# curl wrapper and curl are one unit, a death is reported as such (which
# process, how) and told apart from our own stop, numbers without sense are
# refused, stop/purge act only on this namespace's own endpoints, and a stop
# that cannot end its processes says so.
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _endpoint, _proc
from ansible_collections.tcplab.keepalive.plugins.module_utils._endpoint import EndpointError, Endpoints, validate
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.test__detached import SLEEPER

STATE_ROOT = '/run/tcplab-test-endpoint'
TAG = 'tcplab-keepalive-endpoint:'
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='needs root for ip netns')


def sleeper(tag):
    """test__detached's SLEEPER with tag on its command line, returned once it has said "ready": Popen can return
    while the kernel is still setting up the new program (its vfork parent runs on once exec has replaced the memory),
    and a /proc/<pid>/cmdline read at once lacked the new argv 209 of 300 times here, so that an ownership proof by
    command line failed."""
    proc = subprocess.Popen([sys.executable, '-c', SLEEPER, tag, 'default'],  # pylint: disable=consider-using-with
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    with proc.stdout:
        assert proc.stdout.readline() == 'ready\n'
    return proc


def _netns(name):
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)


def _drop_netns(name):
    for pid in ns_pids(name):
        subprocess.run(['kill', '-9', str(pid)], check=False)
    subprocess.run(['ip', 'netns', 'del', name], check=False)


@pytest.fixture
def lab():
    """Two namespaces tken-<hex>-a and -b and a state directory they share (as lab hosts share /run)."""
    token = secrets.token_hex(3)
    names = ['tken-%s-a' % token, 'tken-%s-b' % token]
    state = os.path.join(STATE_ROOT, token)
    try:
        for name in names:
            _netns(name)
        yield names[0], names[1], state
    finally:
        for name in names:
            _drop_netns(name)
        shutil.rmtree(state, ignore_errors=True)
        try:
            os.rmdir(STATE_ROOT)
        except OSError:
            pass


def ns_pids(ns):
    out = subprocess.run(['ip', 'netns', 'pids', ns], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def ppid(pid):
    with open('/proc/%d/stat' % pid) as handle:
        return int(handle.read().rsplit(')', 1)[1].split()[1])


def find(ns, test):
    """The one process in ns whose command line passes test."""
    found = [pid for pid in ns_pids(ns) if test(_proc.cmdline(pid))]
    assert len(found) == 1, (found, [_proc.cmdline(p)[:1] for p in ns_pids(ns)])
    return found[0]


def curl_of(ns):
    return find(ns, lambda argv: bool(argv) and argv[0].endswith('/curl'))


def python_program(ns, name, code_mark):
    """The python server or client program of endpoint name (not its supervisor)."""
    return find(ns, lambda argv: TAG + name in argv and len(argv) > 2 and code_mark in argv[2])


def gone(pid, start, wait=5.0):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if _proc.starttime(pid) != start:
            return True
        time.sleep(0.05)
    return False


RUN_IN_NS = r'''
import json, sys, time
sys.path[:0] = json.loads(sys.argv[1])
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder
_AnsibleCollectionFinder(paths=json.loads(sys.argv[2]), scan_sys_paths=False)._install()
from ansible_collections.tcplab.keepalive.plugins.module_utils._endpoint import Endpoints, validate
eps = Endpoints(sys.argv[3], sys.executable, json.loads(sys.argv[5]))
out = {}
for step in json.loads(sys.argv[4]):
    try:
        if step["op"] == "purged":
            out[step["id"]] = eps.purged()
        else:
            out[step["id"]] = getattr(eps, step["op"])(validate(step["cfg"]), **step.get("kw", {}))
    except Exception as exc:
        out[step["id"]] = {"error": "%s: %s" % (type(exc).__name__, exc)}
print(json.dumps(out))
'''


def in_ns(ns, state_dir, steps, binaries=None):
    """Run Endpoints operations inside ns (as the module does over the netns connection); results by step id."""
    from ansible.utils.collection_loader import AnsibleCollectionConfig
    paths = list(AnsibleCollectionConfig.collection_paths)
    binaries = binaries or {'nc': shutil.which('nc'), 'curl': shutil.which('curl')}
    out = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, '-c', RUN_IN_NS, json.dumps(sys.path),
                          json.dumps(paths), state_dir, json.dumps(steps), json.dumps(binaries)],
                         check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def one(ns, state_dir, op, cfg=None, binaries=None, **kw):
    return in_ns(ns, state_dir, [{'id': 'x', 'op': op, 'cfg': cfg, 'kw': kw}], binaries)['x']


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, dummy, fs in os.walk(path) for f in fs)


def server(name, port, **kw):
    return dict({'role': 'server', 'kind': 'python', 'port': port, 'name': name, 'timeout': 5}, **kw)


def client(name, port, **kw):
    return dict({'role': 'client', 'kind': 'python', 'port': port, 'name': name, 'timeout': 5}, **kw)


# -- item 19 (a): a failed start leaves nothing behind -----------------------------

@needs_root
@pytest.mark.parametrize('case', ['port in use', 'bad address', 'missing nc', 'missing curl', 'connection refused',
                                  'not ready in time'])
def test_a_failed_start_leaves_nothing(lab, case):
    ns, dummy, state = lab
    binaries = None
    if case == 'port in use':
        assert one(ns, state, 'started', server('first', 41001))['changed']
        cfg, expect = server('second', 41001), 'Address already in use'
    elif case == 'bad address':
        cfg, expect = server('second', 41002, address='198.19.60.77'), 'Cannot assign requested address'
    elif case == 'missing nc':
        cfg, expect = server('second', 41003, kind='nc'), '/nonexistent/nc'
        binaries = {'nc': '/nonexistent/nc'}
    elif case == 'missing curl':
        cfg, expect = client('second', 41004, kind='curl', local_port=41005), '/nonexistent/curl'
        binaries = {'curl': '/nonexistent/curl'}
    elif case == 'not ready in time':   # the message says how far the processes got, and the load
        cfg, expect = server('second', 41008, timeout=0.0001), 'still not listening; its supervisor pid '
    else:
        cfg, expect = client('second', 41006, local_port=41007), 'Connection refused'
    before = ns_pids(ns)
    got = one(ns, state, 'started', cfg, binaries)
    assert expect in got.get('error', ''), got
    assert [f for f in files_under(state) if os.path.basename(f).startswith('second.')] == []
    if case != 'port in use':
        assert files_under(state) == [], 'a failed start left files behind'
    assert ns_pids(ns) == before, 'a failed start left a process behind'


# -- item 19 (b): killing the curl wrapper orphans nothing ------------------------

LISTENER = r'''
import socket, sys, time
srv = socket.socket()
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(4)
print("listening", flush=True)
held = [srv.accept()]
time.sleep(120)
'''


@needs_root
@pytest.mark.parametrize('op', ['stopped', 'purged'])
@pytest.mark.once
def test_killing_the_curl_wrapper_orphans_no_curl(lab, op):
    ns, dummy, state = lab
    # a server that is not an endpoint: purge leaves it alone, so curl's connection stays up unless curl is ended
    listener = subprocess.Popen(['ip', 'netns', 'exec', ns, sys.executable, '-c', LISTENER, '41010'],  # pylint: disable=consider-using-with
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == 'listening'
        curl = client('c', 41010, kind='curl', local_port=41011, keepalive_time=30)
        got = one(ns, state, 'started', curl)
        assert got['changed'], got
        pid = curl_of(ns)
        start = _proc.starttime(pid)
        os.kill(ppid(pid), signal.SIGKILL)  # the wrapper
        one(ns, state, op, curl)
        assert gone(pid, start), 'curl (pid %d) outlived its wrapper and the %s' % (pid, op)
        status = one(ns, state, 'status', curl)
        if op == 'stopped':   # its files still tell how it ended
            assert status['outcome']['state'] == 'died' and 'SIGKILL' in status['outcome']['reason'], status
        else:                 # the purge removed them with it
            assert status['msg'] == 'no client of this name was started in this network namespace', status
            assert files_under(state) == []
        assert listener.poll() is None, 'the server that is not ours was stopped'
    finally:
        listener.kill()
        listener.wait()


# -- item 19 (c): a client killed from outside died, it was not "stopped" ---------

@needs_root
@pytest.mark.parametrize('kind', ['python', 'curl'])
@pytest.mark.once
def test_a_killed_client_is_reported_killed_not_stopped(lab, kind):
    ns, dummy, state = lab
    cfg = client('c', 41020, kind=kind, local_port=41021)
    got = in_ns(ns, state, [{'id': 's', 'op': 'started', 'cfg': server('s', 41020)}, {'id': 'c', 'op': 'started', 'cfg': cfg}])
    assert got['c']['changed'], got
    pid = curl_of(ns) if kind == 'curl' else python_program(ns, 'c', 'SO_KEEPALIVE')
    os.kill(pid, signal.SIGKILL)
    status = one(ns, state, 'status', cfg)
    assert status['outcome']['state'] == 'died', status
    assert status['outcome']['signal'] == 'SIGKILL'
    assert status['outcome']['reason'] == 'the client (pid %d, %s) was killed by SIGKILL' % (pid, kind)
    assert not status['running']
    # a stop afterwards does not turn the death into a stop
    after = one(ns, state, 'stopped', cfg)
    assert not after['changed'] and after['outcome']['state'] == 'died', after
    # while our own stop is reported as such (another local port: the killed one's is in TIME_WAIT for curl)
    cfg['local_port'] = 41022
    again = in_ns(ns, state, [{'id': 'c', 'op': 'started', 'cfg': cfg}, {'id': 'stop', 'op': 'stopped', 'cfg': cfg}])
    assert again["c"].get("changed") and again["stop"].get("changed"), again
    assert again['stop']['outcome']['state'] == 'stopped', again['stop']


# -- item 10: a server that dies mid-run says at once which process and how -------

@needs_root
@pytest.mark.parametrize('kind, sig', [('python', signal.SIGKILL), ('nc', signal.SIGTERM)])
@pytest.mark.once
def test_a_dead_server_is_reported_at_once(lab, kind, sig):
    ns, dummy, state = lab
    # the server's timeout is 60 s, so a status that waited on it would take a minute, whatever the machine's load
    srv, cli = server('s', 41030, kind=kind, timeout=60), client('c', 41030, local_port=41031)
    got = in_ns(ns, state, [{'id': 's', 'op': 'started', 'cfg': srv}, {'id': 'c', 'op': 'started', 'cfg': cli}])
    assert got['s']['outcome']['state'] == 'running', got
    # the client's program records "connected" a moment after its start returned (on a loaded machine: later)
    deadline = time.monotonic() + 5
    while got['c']['outcome']['state'] == 'running' and time.monotonic() < deadline:
        time.sleep(0.1)
        got['c'] = one(ns, state, 'status', cli)
    assert got['c']['outcome']['state'] == 'connected', got
    pid = python_program(ns, 's', 'accept') if kind == 'python' else find(ns, lambda argv: argv[:1] == [shutil.which('nc')])
    assert got['s']['pid'] == pid
    os.kill(pid, sig)
    # once the kernel has ended it (on a loaded machine a signalled process takes a moment to go), the very next
    # status says so: no waiting on a timeout
    assert _proc.wait_gone(pid, 10, step=0.02)
    began = time.monotonic()
    status = one(ns, state, 'status', srv)
    assert time.monotonic() - began < 30  # well short of the server's timeout (a spawn can take seconds under load)
    assert status['outcome']['state'] == 'died', status
    assert status['outcome']['reason'] == 'the server (pid %d, %s) was killed by %s' % (pid, kind, sig.name)
    # and the client, whose server went away, is no longer "connected"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen = one(ns, state, 'status', cli)['outcome']
        if seen['state'] not in ('connected', 'starting', 'running'):
            break
        time.sleep(0.2)
    assert seen['state'] == 'closed', seen


# -- item 16: numbers without sense are refused with the valid range ----------------

@pytest.mark.parametrize('timeout', [-1, 0, float('nan'), float('inf'), 3601, True, 'soon'])
def test_timeout_without_sense_is_refused(timeout):
    with pytest.raises(EndpointError) as exc:
        validate({'role': 'server', 'port': 41040, 'timeout': timeout})
    assert str(exc.value) == _endpoint.MSG_TIMEOUT % (3600, timeout)


def test_timeout_in_range_is_taken():
    assert validate({'role': 'server', 'timeout': '2.5'})['timeout'] == 2.5
    assert validate({'role': 'server', 'timeout': 3600})['timeout'] == 3600


# -- item 6: a name means this namespace's endpoint; purge acts on this namespace only

@needs_root
@pytest.mark.once
def test_stop_and_purge_act_only_in_their_own_namespace(lab):
    ns_a, ns_b, state = lab
    srv = server('srv', 41050)
    assert one(ns_a, state, 'started', srv)['changed']
    a_pid = python_program(ns_a, 'srv', 'accept')
    a_start = _proc.starttime(a_pid)
    # the same name stopped on another host of the same machine is another endpoint
    other = one(ns_b, state, 'stopped', srv)
    assert not other['changed'], other
    assert not gone(a_pid, a_start, wait=0.5), 'stopping "srv" in %s killed the server of %s' % (ns_b, ns_a)
    started_b = one(ns_b, state, 'started', srv)
    assert started_b['changed'] and started_b['running'], started_b
    b_pid = python_program(ns_b, 'srv', 'accept')
    b_start = _proc.starttime(b_pid)
    purged = one(ns_a, state, 'purged')
    assert purged['stopped'] == ['srv'], purged
    assert gone(a_pid, a_start)
    assert not gone(b_pid, b_start, wait=0.5), 'purged in %s stopped the server of %s' % (ns_a, ns_b)
    assert one(ns_b, state, 'status', srv)['outcome']['state'] == 'running'
    # the purge removed the files of what it stopped (and its namespace's directory), not those of the other
    assert files_under(state) == sorted(os.path.join('netns-%d' % os.stat('/run/netns/' + ns_b).st_ino, 'srv' + ext)
                                        for ext in ('.json', '.log')), files_under(state)
    assert one(ns_b, state, 'purged')['stopped'] == ['srv'] and files_under(state) == []


@needs_root
@pytest.mark.once
def test_a_stop_keeps_the_endpoint_s_files_and_the_experiment_s_end_removes_them(lab):
    ns, dummy, state = lab
    srv = server('kept', 41051)
    assert one(ns, state, 'started', srv)['changed']
    stopped = one(ns, state, 'stopped', srv)
    assert stopped['changed'] and stopped['outcome']['state'] == 'stopped', stopped
    assert one(ns, state, 'status', srv)['outcome']['state'] == 'stopped'   # the files still tell how it ended
    assert any(f.endswith('kept.json') for f in files_under(state))
    assert one(ns, state, 'started', srv)['changed']
    ended = one(ns, state, 'stopped', srv, forget=True)
    assert ended['changed'] and ended['outcome']['state'] == 'stopped', ended   # the report, made before
    assert files_under(state) == [] and os.listdir(state) == [], 'the files and the namespace directory stay'


# -- issue 12: a stop that cannot end its processes says so -------------------------

def _state_path(eps, name):
    paths = eps._paths(name)
    return paths['state'] if isinstance(paths, dict) else paths[0]


def test_a_stop_that_leaves_the_process_running_fails(tmp_path, monkeypatch):
    tag = TAG + 'client-41060'
    proc = sleeper(tag)
    try:
        eps = Endpoints(str(tmp_path))
        path = _state_path(eps, 'client-41060')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        start = _proc.starttime(proc.pid)
        with open(path, 'w') as handle:
            json.dump({'pid': proc.pid, 'start': start, 'tag': tag, 'role': 'client', 'kind': 'python', 'name': 'client-41060',
                       'netns': _proc.netns_inode(), 'program': None}, handle)
        monkeypatch.setattr(_endpoint, 'TERM_WAIT', 0.2, raising=False)
        monkeypatch.setattr(os, 'kill', lambda pid, sig: None)
        monkeypatch.setattr(os, 'killpg', lambda pid, sig: None)
        with pytest.raises(EndpointError) as exc:
            eps.stopped(validate({'role': 'client', 'port': 41060}))
        monkeypatch.undo()
        assert 'could not stop client client-41060' in str(exc.value)
        assert proc.poll() is None
    finally:
        monkeypatch.undo()  # os.kill, which Popen.kill uses, back before the kill (else the wait lasts the sleep)
        proc.kill()
        proc.wait()


# -- item 19 (b), the other half: a program whose supervisor is gone is still stopped

def test_stop_ends_a_program_its_supervisor_left_running(tmp_path):
    """PR_SET_PDEATHSIG normally ends the program with its supervisor; should it not (the record is all that is
    left), stop finds the program by its own recorded pid and start time."""
    tag = TAG + 'client-41080'
    program = sleeper(tag)
    dead = subprocess.Popen(['true'])  # pylint: disable=consider-using-with
    dead.wait()
    try:
        eps = Endpoints(str(tmp_path))
        os.makedirs(eps.dir)
        start = _proc.starttime(program.pid)
        record = {'pid': dead.pid, 'start': 1, 'tag': tag, 'role': 'client', 'kind': 'python', 'name': 'client-41080',
                  'netns': eps.netns, 'program': {'pid': program.pid, 'start': start, 'argv0': sys.executable}}
        with open(eps._paths('client-41080')['state'], 'w') as handle:
            json.dump(record, handle)
        cfg = validate({'role': 'client', 'port': 41080})
        before = eps.status(cfg)
        assert before['outcome']['state'] == 'died' and 'still runs orphaned' in before['outcome']['reason'], before
        result = eps.stopped(cfg)
        assert result['changed']
        assert result['msg'] == ('stopped the client (pid %d, python), which its killed supervisor (pid %d) had left running'
                                 % (program.pid, dead.pid))
        assert program.wait(timeout=5) == -signal.SIGTERM
        assert eps.status(cfg)['outcome']['state'] == 'died'
    finally:
        program.kill()
        program.wait()


def test_a_state_dir_that_is_a_file_is_refused_before_anything(tmp_path):
    path = tmp_path / 'not-a-dir'
    path.write_text('mine')
    with pytest.raises(EndpointError) as exc:
        Endpoints(str(path)).started(validate({'role': 'server', 'port': 41090}))
    assert str(exc.value) == _endpoint.MSG_STATE_DIR % (str(path),)
    assert path.read_text() == 'mine' and os.listdir(str(tmp_path)) == ['not-a-dir']
