# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The experiment_host module, run for real (`ansible localhost -m ...` inside a network namespace of this test,
tk5h-eh-*): one host's start (lease and sysctls, capture, server, client with the kernel sample before it connects)
and end (settle until the client's keepalive gave up, capture analysis, DROP rule, processes, sysctls back) in one
module run each, with the safety of the modules whose steps it runs - a busy lease changes nothing, a failed start
names its step and leaves the rest to the end, an end runs every step and reports every failure."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _experiment_host as eh
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import DEFAULT_STATE_DIR as CAPTURE_STATE_DIR

REPO_ROOT = Path(__file__).resolve().parents[4]
ANSIBLE = Path(sys.executable).parent / 'ansible'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'
SERVER, CLIENT = 5081, 22381
CAPTURES = '/var/tmp/tcplab-keepalive/test-experiment-host'

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip') or not shutil.which('iptables'),
                                reason='needs root, ip netns and iptables')


def sysctls(ns):
    out = subprocess.run(['ip', 'netns', 'exec', ns, 'cat', '/proc/sys/net/ipv4/tcp_keepalive_time',
                          '/proc/sys/net/ipv4/tcp_keepalive_intvl', '/proc/sys/net/ipv4/tcp_keepalive_probes'],
                         capture_output=True, text=True, check=True).stdout.split()
    return [int(v) for v in out]


def rules(ns):
    return subprocess.run(['ip', 'netns', 'exec', ns, 'iptables', '-w', '10', '-S', 'INPUT'],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def host(tmp_path):
    """A namespace (lo up), its endpoint state directory and a capture path of this test; afterwards its processes
    are killed, its sysctl lease cleared through the module (restore of this test's holder) and it is deleted."""
    name = 'tk5h-eh-%s' % secrets.token_hex(3)
    state = '/run/tcplab-test-experiment-host/%s' % name
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    os.makedirs(CAPTURES, mode=0o700, exist_ok=True)
    try:
        subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)
        yield {'ns': name, 'state': state, 'pcap': '%s/%s.pcap' % (CAPTURES, name), 'tmp': tmp_path,
               'holder': 'test-%s/%s' % (name, secrets.token_hex(2))}
    finally:
        pids = subprocess.run(['ip', 'netns', 'pids', name], capture_output=True, text=True, check=False).stdout.split()
        for pid in pids:
            subprocess.run(['kill', '-9', pid], check=False)
        subprocess.run(['ip', 'netns', 'del', name], check=False)
        shutil.rmtree(state, ignore_errors=True)
        for leftover in Path(CAPTURES).glob(name + '.pcap*'):
            leftover.unlink()
        forget_capture_records('%s/%s.pcap' % (CAPTURES, name))
        for directory in (CAPTURES, os.path.dirname(state)):
            try:
                os.rmdir(directory)
            except OSError:   # another test's files are still there
                pass


def forget_capture_records(pcap):
    """Remove the capture module's state records (and logs) of this test's pcap, which a test that failed before its
    end leaves in the capture's state directory: only records whose path is this test's pcap (a random name)."""
    for record in Path(CAPTURE_STATE_DIR).glob(os.path.basename(pcap) + '-*.json'):
        try:
            ours = json.loads(record.read_text()).get('path') == pcap
        except (OSError, ValueError):
            continue
        if ours:
            for one in (record, record.with_suffix('.log')):
                one.unlink(missing_ok=True)


def run_module(host, module, args):
    tmp = host['tmp']
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp / 'tmp'),
               ANSIBLE_HOME=str(tmp / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    proc = subprocess.run(['ip', 'netns', 'exec', host['ns'], str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,',
                           '-m', 'tcplab.keepalive.' + module, '-a', json.dumps(args),
                           '-e', 'ansible_python_interpreter=%s' % sys.executable],
                          capture_output=True, text=True, env=env, timeout=180, check=False)
    match = re.search(r'^localhost \| (SUCCESS|CHANGED|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    result = json.JSONDecoder().raw_decode(proc.stdout[match.end():])[0]
    result['_status'] = match.group(1)
    return result


def endpoints(host, sample=True):
    client = {'role': 'client', 'port': SERVER, 'local_port': CLIENT, 'name': 'eh-client', 'state_dir': host['state']}
    if sample:
        client['kernel_sample'] = {'port': CLIENT, 'peer_port': SERVER}
    return [{'role': 'server', 'port': SERVER, 'name': 'eh-server', 'state_dir': host['state']}, client]


def lease(host, **values):
    return dict(values, lease=host['holder'], lease_ttl=300, lease_owner='test_experiment_host')


def start(host, **extra):
    args = {'state': 'started', 'sysctl': lease(host, time=1, intvl=1, probes=2),
            'captures': [{'path': host['pcap'], 'iface': 'lo', 'filter': 'tcp port %d' % SERVER, 'max_seconds': 120}],
            'endpoints': endpoints(host)}
    args.update(extra)
    return run_module(host, 'experiment_host', args)


def end(host, settle=0, remove=True, **extra):
    # the client first (as the role stops them): stopped by the end, not by its server going
    ends = [dict(e, settle=settle) if e['role'] == 'client' else e for e in reversed(endpoints(host, sample=settle > 0))]
    args = {'state': 'stopped', 'sysctl': {'lease': host['holder']},
            'captures': [{'path': host['pcap'], 'expect': {'time': 1, 'intvl': 1, 'probes': 2}, 'remove': remove}],
            'endpoints': [{k: v for k, v in e.items() if k not in ('local_port',)} for e in ends]}
    args.update(extra)
    return run_module(host, 'experiment_host', args)


def test_a_start_and_an_end_in_one_module_run_each(host):
    before = sysctls(host['ns'])
    started = start(host)
    assert started['_status'] == 'CHANGED', started
    assert sysctls(host['ns']) == [1, 1, 2]
    assert started['sysctl']['lease']['holder'] == host['holder']
    assert started['captures'][0]['running'] and started['captures'][0]['path'] == host['pcap']
    server, client = started['endpoints']
    assert server['running'] and client['outcome']['state'] == 'connected', started
    # the sample was taken before the client connected: no socket of the client port yet
    assert client['kernel']['socket'] is None and 'tcp_keepalive' in client['kernel']['counters']
    assert set(started['seconds']) == {'sysctl', 'captures', 'endpoints'}
    # the capture writes the handshake a moment after the client connected (on a loaded machine, later):
    # the end is asked once the pcap holds more than its file header
    deadline = time.monotonic() + 10
    while os.path.getsize(host['pcap']) <= 24 and time.monotonic() < deadline:
        time.sleep(0.1)

    ended = end(host)
    assert ended['_status'] == 'CHANGED', ended
    assert sysctls(host['ns']) == before
    # the analysis of what the capture held (connections are listed once they show keepalive activity: a probe may
    # or may not have come before the end on a loaded machine, so the packets are what is sure)
    assert ended['captures'][0]['analysis']['summary']['packets'] >= 1, ended['captures'][0]
    # remove: the pcap, its record and log went after the analysis
    assert host['pcap'] in ended['captures'][0]['removed'] and not os.path.exists(host['pcap'])
    assert len(ended['captures'][0]['removed']) == 3, ended['captures'][0]
    assert [e['running'] for e in ended['endpoints']] == [False, False]
    assert ended['endpoints'][0]['outcome']['state'] == 'stopped'
    # the endpoints' state files went once they had ended (their report is in the result)
    assert [files for _dir, _dirs, files in os.walk(host['state']) if files] == []
    assert set(ended['seconds']) == {'settle', 'captures', 'endpoints', 'sysctl'}
    # again: nothing left to do, nothing fails
    again = end(host, remove=False)
    assert again['_status'] == 'SUCCESS', again
    assert [e['changed'] for e in again['endpoints']] == [False, False] and not again['sysctl']['changed']


@pytest.mark.once
def test_the_end_awaits_the_client_s_keepalive_failure_and_samples_the_kernel_after_it(host):
    assert start(host)['_status'] == 'CHANGED'
    drop = {'port': SERVER, 'destination': '127.0.0.1', 'tag': 'eh-test'}
    added = run_module(host, 'drop_rule', dict(drop, expire_after=120))
    assert added['_status'] == 'CHANGED', added
    ended = end(host, settle=30, drop_rule=drop)
    assert ended['_status'] == 'CHANGED', ended
    client = ended['endpoints'][0]
    assert client['settled'] and client['outcome']['errno'] == 'ETIMEDOUT', client
    assert client['kernel']['counters']['tcp_abort_on_timeout'] >= 1
    assert ended['drop_rule']['expiry'] is None and 'eh-test' not in rules(host['ns'])
    analysis = ended['captures'][0]['analysis']
    assert analysis['connections'][0]['rst'] is not None, analysis


@pytest.mark.once
def test_a_busy_lease_changes_nothing(host):
    other = run_module(host, 'sysctl', {'time': 50, 'lease': 'other-run/1', 'lease_ttl': 300, 'lease_owner': 'someone'})
    assert other['_status'] == 'CHANGED', other
    try:
        busy = start(host)
        assert busy['_status'] == 'FAILED!' and busy['lease_busy'] is True, busy
        assert busy['msg'].startswith('sysctl: ') and 'other-run/1' in busy['msg']
        assert sysctls(host['ns'])[0] == 50
        assert not os.path.exists(host['pcap']) and not os.path.isdir(host['state'])
    finally:
        run_module(host, 'sysctl', {'state': 'restored', 'lease': 'other-run/1'})


@pytest.mark.once
def test_a_failed_start_names_its_step_and_the_end_undoes_the_rest(host):
    # no server: the client cannot connect
    failed = start(host, endpoints=endpoints(host)[1:])
    assert failed['_status'] == 'FAILED!' and failed['msg'].startswith('endpoint eh-client: '), failed
    assert sysctls(host['ns']) == [1, 1, 2]   # the lease and the capture stay for the end
    ended = end(host)
    assert ended['_status'] == 'CHANGED', ended
    assert sysctls(host['ns']) == [7200, 75, 9]


@pytest.mark.once
def test_an_end_runs_every_step_and_reports_every_failure(host):
    assert start(host)['_status'] == 'CHANGED'
    ended = end(host, drop_rule={'port': SERVER, 'tag': 'not a tag!'})
    assert not os.path.exists(host['pcap'])
    assert ended['_status'] == 'FAILED!', ended
    assert ended['msg'].startswith(eh.MSG_STEPS_FAILED % 'drop_rule: ')
    # the steps after the failed one ran
    assert [e['running'] for e in ended['endpoints']] == [False, False]
    assert sysctls(host['ns']) == [7200, 75, 9]


@pytest.mark.parametrize('args, msg', [
    ({'state': 'stopped'}, eh.MSG_NOTHING),
    ({'state': 'started', 'drop_rule': {'port': SERVER, 'tag': 'x'}}, eh.MSG_DROP_STARTED),
    ({'state': 'stopped', 'look': {'tools': ['ip']}, 'endpoints': [{'role': 'server', 'name': 'x'}]}, eh.MSG_LOOK_STOPPED),
    ({'state': 'started', 'look': {'tools': ['ssh']}, 'endpoints': [{'role': 'server', 'name': 'x'}]},
     "look: unknown tool 'ssh': the experiment knows curl, ip, iptables, nc, capture"),
])
def test_bad_input_is_refused_with_the_fix(host, args, msg):
    result = run_module(host, 'experiment_host', args)
    assert result['_status'] == 'FAILED!' and result['msg'] == msg


@pytest.mark.once
def test_the_end_follows_the_unanswered_probes_to_the_failure_and_returns_the_pcap(host):
    # keepalive 1/5/2: the RST comes 10 s or more after the DROP, so that the end (a module run of its own through the
    # ansible command, which took over 6 s to start in the loaded matrix) starts before it
    assert start(host, sysctl=lease(host, time=1, intvl=5, probes=2))['_status'] == 'CHANGED'
    answered = run_module(host, 'pcap_info', {'path': host['pcap'],
                                              'wait_for': {'port': CLIENT, 'answered': 1, 'timeout': 60}})
    assert answered['waited']['met'], answered
    drop = {'port': SERVER, 'destination': '127.0.0.1', 'tag': 'eh-test'}
    assert run_module(host, 'drop_rule', dict(drop, expire_after=120))['_status'] == 'CHANGED'
    # no wait of its own: the end awaits the client's failure and samples the kernel at each unanswered probe
    ends = [dict(e, settle=60, sample_probes=True) if e['role'] == 'client' else e
            for e in reversed(endpoints(host, sample=True))]
    ended = run_module(host, 'experiment_host', {
        'state': 'stopped', 'sysctl': {'lease': host['holder']}, 'drop_rule': drop,
        'captures': [{'path': host['pcap'], 'expect': {'time': 1, 'intvl': 5, 'probes': 2}, 'remove': True,
                      'return_content': True}],
        'endpoints': [{k: v for k, v in e.items() if k != 'local_port'} for e in ends]})
    assert ended['_status'] == 'CHANGED', ended
    client = ended['endpoints'][0]
    assert client['settled'] and client['outcome']['errno'] == 'ETIMEDOUT', client
    samples = client['kernel_samples']
    counts = [s['socket']['timer_count'] for s in samples]
    # each unanswered probe the end saw by its own sample (an end that started late on a busy machine sees only the
    # second)
    assert counts in ([1, 2], [2]) and all(s['socket']['timer'] == 'keepalive' for s in samples), samples
    assert samples[-1]['time'] < client['kernel']['time'] and client['kernel']['socket'] is None
    capture = ended['captures'][0]
    pcap = base64.b64decode(capture['content'])
    # the whole capture, to the client's RST, came back; then the pcap, its record and log went
    assert pcap[:4] in (b'\xd4\xc3\xb2\xa1', b'\xa1\xb2\xc3\xd4') and len(pcap) > 24 * 8, capture
    assert capture['analysis']['connections'][0]['rst'] is not None
    assert not os.path.exists(host['pcap']) and len(capture['removed']) == 3


@pytest.mark.once
def test_sample_probes_needs_settle_and_kernel_sample(host):
    assert start(host)['_status'] == 'CHANGED'
    client = dict(endpoints(host, sample=False)[1], sample_probes=True, settle=1)
    client.pop('local_port')
    ended = run_module(host, 'experiment_host', {'state': 'stopped', 'endpoints': [client]})
    assert ended['_status'] == 'FAILED!' and eh.MSG_SAMPLE_PROBES in ended['msg'], ended
    # the end went on: the client stopped all the same
    assert ended['endpoints'][0]['running'] is False
    assert end(host)['_status'] != 'FAILED!'


def test_a_pcap_is_returned_only_when_it_is_a_regular_file_within_the_limit(tmp_path):
    small = tmp_path / 'small.pcap'
    small.write_bytes(b'\xd4\xc3\xb2\xa1' + b'\0' * 20)
    assert base64.b64decode(eh.pcap_content(str(small))['content']) == small.read_bytes()
    # over the limit: not returned, and the caller is told to fetch it (the end then leaves it on the host)
    assert eh.pcap_content(str(small), limit=10) == {'content_skipped': eh.MSG_CONTENT_LARGE % (small, 24, 10)}
    fifo = tmp_path / 'fifo.pcap'
    os.mkfifo(fifo)
    assert eh.pcap_content(str(fifo)) == {'content_skipped': eh.MSG_CONTENT_UNREAD % (fifo, 'not a regular file')}
    link = tmp_path / 'link.pcap'
    link.symlink_to(small)
    assert 'content' not in eh.pcap_content(str(link))
    assert 'content' not in eh.pcap_content(str(tmp_path / 'none.pcap'))


def test_a_start_that_looks_first_refuses_a_host_that_cannot_run_its_part_and_changes_nothing(host):
    before = sysctls(host['ns'])
    # a kernel newer than any there is: the look refuses the host before any step
    refused = start(host, look={'tools': ['ip', 'capture'], 'min_kernel': '999.0'})
    assert refused['_status'] == 'SUCCESS' and refused['refused'] is True, refused
    assert refused['look']['shortfalls'] == ['kernel'] and refused['look']['missing'] == []
    assert refused['look']['capture']['backend'] in ('tcpdump', 'scapy')
    assert sysctls(host['ns']) == before
    assert not os.path.exists(host['pcap']) and not os.path.isdir(host['state'])
    assert 'sysctl' not in refused and refused['endpoints'] == [] and set(refused['seconds']) == {'look'}
    # the same host passes with the role's minimums, and the start goes on in the same run
    started = start(host, look={'tools': ['ip', 'capture']})
    assert started['_status'] == 'CHANGED' and 'refused' not in started, started
    assert started['look']['shortfalls'] == [] and started['endpoints'][1]['outcome']['state'] == 'connected'
    assert set(started['seconds']) == {'look', 'sysctl', 'captures', 'endpoints'}
    assert end(host)['_status'] == 'CHANGED'
    assert sysctls(host['ns']) == before


def loaded_after_preload(params):
    """The collection's module_utils a fresh Python has imported after _experiment_host._preload(params)."""
    code = ('import json, sys\n'
            'from ansible_collections.tcplab.keepalive.plugins.module_utils import _experiment_host as eh\n'
            'before = set(sys.modules)\n'
            'eh._preload(json.loads(sys.argv[1]))\n'
            'print(json.dumps(sorted(m[len(eh.PACKAGE):] for m in set(sys.modules) - before if m.startswith(eh.PACKAGE))))\n')
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    out = subprocess.run([sys.executable, '-c', code, json.dumps(params)], capture_output=True, text=True, env=env,
                         check=True).stdout
    return set(json.loads(out))


def test_an_end_that_settles_imports_its_steps_code_before_the_settle():
    # the client's end: it awaits the client's failure, then stops the watch and the capture and restores the sysctls
    settling = {'endpoints': [{'role': 'client', 'settle': 10}], 'watch': {'path': '/x'}, 'captures': [{'path': '/y'}],
                'sysctl': {'lease': 'x'}}
    loaded = loaded_after_preload(settling)
    assert {'_kernel_watch_scan', '_capture_stop', '_pcap', '_pcap_scan', '_endpoint', '_sysctl'} <= loaded, loaded
    assert '_iptables' not in loaded   # no drop_rule step: not its code
    # an end that does not wait imports each step's code when the step runs, as before
    assert loaded_after_preload(dict(settling, endpoints=[{'role': 'client'}])) == set()
