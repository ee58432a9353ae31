"""Verify the idle_timeout scenario: each run's report (verdict, observed.survived,
fault, the client's errno, the half-open server, the moment the middlebox forgot
the flow) and that the client, the middlebox and the server are exactly as in
the snapshot converge took before the runs."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'resources', 'tests'))
from scenario_files import EPHEMERAL, SCENARIO, load_json, report, scenario_vars  # noqa: E402 pylint: disable=wrong-import-position

VARS = scenario_vars('idle.yml')
RUNS = {run['id']: run for run in VARS['idle_runs']}
SECONDS = VARS['idle_seconds']
HOST_STATE = os.path.join(SCENARIO, 'files', 'host_state.py')


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
    before = load_json('state-before-%s.json' % name)
    now = json.loads(host.check_output('python3 %s' % HOST_STATE))
    assert now == before
    assert now['processes'] == [] and not any('tcplab-keepalive' in rule for rule in now['rules'])
    if name == 'middlebox':   # the snapshot is of a middlebox that forwarded nothing and kept flows for days
        assert now['sysctl']['net/ipv4/ip_forward'] == '0'
        assert now['sysctl']['net/netfilter/nf_conntrack_tcp_timeout_established'] != str(SECONDS)


@pytest.mark.parametrize('run_id', sorted(RUNS))
def test_the_kernel_counted_the_probes_the_capture_shows(run_id):
    """evidence.kernel (issue 13): the client namespace's TCPKeepAlive delta is the client's probes in the capture on
    the client (the middlebox drops or rejects them on the way, the client's kernel sends them all the same), and
    TCPAbortOnTimeout rose only where the kernel gave up (half-open: after the last unanswered probe)."""
    got = report(run_id)
    ev = got['evidence']['kernel']
    assert ev['agree'] is True, (got['reasons'], ev['notes'])
    probes = got['observed']['answered_probes'] + got['observed']['unanswered_probes']
    assert ev['tcp_keepalive'] == ev['capture']['client_probes'] == got['observed']['probes_total'] >= max(probes, 1)
    assert ev['tcp_abort_on_timeout'] == (1 if run_id == 'idle-halfopen' else 0)
    assert ev['others']['count'] == 0 and ev['others_watch'] is None      # lab namespaces: nothing else probes
    assert len(ev['timer_samples']) == 1                                 # after the idle wait
    with open(os.path.join(EPHEMERAL, 'reports', run_id, 'report.md')) as handle:
        assert "- kernel evidence (client's namespace, inet_diag): TCPKeepAlive +%d" % ev['tcp_keepalive'] in handle.read()
