"""Verify the idle_timeout scenario: each run's report (verdict, observed.survived,
fault, the client's errno, the half-open server, the moment the middlebox forgot
the flow) and that the client, the middlebox and the server are exactly as in
the snapshot converge took before the runs."""
from __future__ import annotations

import json
import os

import pytest
import yaml

EPHEMERAL = os.environ['MOLECULE_EPHEMERAL_DIRECTORY']
SCENARIO = os.environ['MOLECULE_SCENARIO_DIRECTORY']
with open(os.path.join(SCENARIO, 'vars', 'idle.yml')) as handle:
    VARS = yaml.safe_load(handle)
RUNS = {run['id']: run for run in VARS['idle_runs']}
SECONDS = VARS['idle_seconds']
HOST_STATE = os.path.join(SCENARIO, 'files', 'host_state.py')


def report(run_id):
    with open(os.path.join(EPHEMERAL, 'reports', run_id, 'report.json')) as handle:
        return json.load(handle)


@pytest.mark.parametrize('run_id', sorted(RUNS))
def test_the_verdict_is_the_prediction_and_it_came_true(run_id):
    run, got = RUNS[run_id], report(run_id)
    assert got['verdict'] == 'pass', got['reasons']
    assert got['fault'] == {'kind': 'idle_timeout', 'seconds': SECONDS, 'action': run['action'],
                            'middlebox': 'middlebox', 'preset': None}
    assert got['observed']['survived'] is run['survived']
    assert got['prediction'] == {'survives': run['survived'], 'client_errno': run['errno']}
    assert got['client']['errno'] == run['errno']
    assert got['client']['state'] == ('answered' if run['survived'] else 'failed')
    assert os.path.getsize(os.path.join(EPHEMERAL, 'reports', run_id, 'timeline.png')) > 0


def test_the_survivor_was_idle_three_timeouts_and_never_forgotten():
    got = report('idle-survive')
    assert got['client']['requested_at'] - got['client']['connected_at'] >= 3 * SECONDS
    assert got['observed']['answered_probes'] >= 3 * SECONDS // RUNS['idle-survive']['time'] - 1
    assert got['observed']['forgotten_at'] is None
    assert 'the middlebox dropped 0 packet(s) of flows it had forgotten' in got['notes']


@pytest.mark.parametrize('run_id', ['idle-halfopen', 'idle-reset'])
def test_the_middlebox_forgot_the_flow_one_idle_timeout_after_the_handshake(run_id):
    got = report(run_id)
    forgotten = got['observed']['forgotten_s']
    assert forgotten is not None and SECONDS - 0.5 <= forgotten <= SECONDS + 1.5, forgotten
    assert forgotten < RUNS[run_id]['time']      # before the client's first probe
    assert {'t': forgotten, 'who': 'middlebox',
            'what': 'forgot the flow: its conntrack entry expired (idle timeout %d s)' % SECONDS} in got['timeline']


def test_the_drop_left_the_connection_half_open():
    got = report('idle-halfopen')
    assert got['observed']['answered_probes'] == 0 and got['observed']['unanswered_probes'] == VARS['idle_probes']
    assert any(note.startswith("the server's socket at the end: ESTABLISHED (") for note in got['notes']), got['notes']
    assert not any(note.startswith('the middlebox dropped 0 ') for note in got['notes'])
    with open(os.path.join(EPHEMERAL, 'reports', 'idle-halfopen', 'report.md')) as handle:
        assert 'half-open' in handle.read()


def test_the_reset_came_from_the_middlebox_at_the_first_probe():
    got = report('idle-reset')
    assert got['client']['seconds'] < RUNS['idle-reset']['time'] + 2
    assert got['observed']['rst'] is not None
    assert any(note.startswith('the middlebox rejected with a TCP reset ') and 'reset 0 ' not in note
               for note in got['notes'])


def test_the_host_is_exactly_as_before(host):
    name = host.backend.get_hostname()
    with open(os.path.join(EPHEMERAL, 'state-before-%s.json' % name)) as handle:
        before = json.load(handle)
    now = json.loads(host.check_output('python3 %s' % HOST_STATE))
    assert now == before
    assert now['processes'] == [] and not any('tcplab-keepalive' in rule for rule in now['rules'])
    if name == 'middlebox':   # the snapshot is of a middlebox that forwarded nothing and kept flows for days
        assert now['sysctl']['net/ipv4/ip_forward'] == '0'
        assert now['sysctl']['net/netfilter/nf_conntrack_tcp_timeout_established'] != str(SECONDS)
