"""Verify the in_flight scenario: each run's report says what ended the connection (observed.ended_by), with the
prediction, the retransmissions in the timeline, and a pass; and every host's keepalive trio and tcp_retries2 are back
as converge found them (tcp_retries2 was set to 3 for the first run, journalled and restored)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'resources', 'tests'))
from scenario_files import EPHEMERAL, load_json, report, scenario_vars  # noqa: E402 pylint: disable=wrong-import-position

VARS = scenario_vars('in_flight.yml')
RUNS = {run['id']: run for run in VARS['in_flight_runs']}
SYSCTLS = ('tcp_keepalive_time', 'tcp_keepalive_intvl', 'tcp_keepalive_probes', 'tcp_retries2')


@pytest.mark.parametrize('run_id', sorted(RUNS))
def test_the_report_says_what_ended_the_connection(run_id):
    run, got = RUNS[run_id], report(run_id)
    assert got['verdict'] == 'pass', got['reasons']
    assert got['observed']['ended_by'] == run['ended_by'] == got['prediction']['ended_by']
    assert got['client']['errno'] == 'ETIMEDOUT'
    assert got['observed']['unanswered_probes'] == 0      # keepalive never probed: the data was in flight
    assert got['in_flight']['user_timeout_ms'] == run['user_timeout_ms']
    assert got['in_flight']['retries2'] == (run['retries2'] if run['retries2'] is not None else 15)
    retransmitted = got['observed']['retransmissions']
    assert len(retransmitted) >= 2 and retransmitted[0]['what'] == 'tail loss probe'
    written = [line for line in got['timeline'] if line['what'].startswith('request written')]
    again = [line for line in got['timeline'] if line['what'].startswith(('retransmission', 'tail loss probe'))]
    assert len(written) == 1 and len(again) == len(retransmitted)
    assert os.path.getsize(os.path.join(EPHEMERAL, 'reports', run_id, 'timeline.png')) > 0


def test_tcp_retries2_3_ends_after_the_modelled_3000_ms():
    got = report('inflight-retries2')
    assert got['prediction']['timeout_ms'] == 3000
    end = got['observed']['in_flight']['end_ms']
    assert got['prediction']['end_ms'] - 250 <= end <= got['prediction']['end_latest_ms'] + 250


def test_the_user_timeout_ends_it_that_long_after_the_first_timeout_retransmission():
    got = report('inflight-user-timeout')
    first = [r['at_ms'] for r in got['observed']['retransmissions'] if r['what'] == 'retransmission 1'][0]
    end = got['observed']['in_flight']['end_ms']
    assert 1500 <= end - first <= 1500 + 250
    assert end < 5000     # long before tcp_retries2 15 would have


def test_the_sysctls_are_back(host):
    name = host.backend.get_hostname()
    before = load_json('sysctls-before-%s.json' % name)
    now = [int(value) for value in host.check_output('cat %s' % ' '.join('/proc/sys/net/ipv4/%s' % key
                                                                         for key in SYSCTLS)).split()]
    assert now == before


@pytest.mark.parametrize('run_id', sorted(RUNS))
def test_the_kernel_counted_the_resends_the_capture_shows(run_id):
    """evidence.kernel (issue 13): Tcp RetransSegs rose by the client's resends in the capture (the tail loss probe and
    each timeout retransmission), TCPTimeouts + TCPLossProbes by one more (the expiry that ended the connection),
    TCPAbortOnTimeout by 1 and TCPKeepAlive by 0 (no probe while data is in flight)."""
    got = report(run_id)
    ev = got['evidence']['kernel']
    assert ev['agree'] is True, (got['reasons'], ev['notes'])
    resends = len(got['observed']['retransmissions'])
    assert ev['capture']['resends'] == resends == ev['tcp_retrans_segs']
    assert ev['tcp_loss_probes'] == 1 and ev['tcp_timeouts'] + ev['tcp_loss_probes'] == resends + 1
    assert (ev['tcp_abort_on_timeout'], ev['tcp_keepalive']) == (1, 0)
