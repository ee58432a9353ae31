"""Verify the in_flight scenario: each run's report says what ended the connection (observed.ended_by), with the
prediction, the retransmissions in the timeline, and a pass; and every host's keepalive trio and tcp_retries2 are back
as converge found them (tcp_retries2 was set to 3 for the first run, journalled and restored)."""
from __future__ import annotations

import json
import os

import pytest
import yaml

EPHEMERAL = os.environ['MOLECULE_EPHEMERAL_DIRECTORY']
SCENARIO = os.environ['MOLECULE_SCENARIO_DIRECTORY']
with open(os.path.join(SCENARIO, 'vars', 'in_flight.yml')) as handle:
    VARS = yaml.safe_load(handle)
RUNS = {run['id']: run for run in VARS['in_flight_runs']}
SYSCTLS = ('tcp_keepalive_time', 'tcp_keepalive_intvl', 'tcp_keepalive_probes', 'tcp_retries2')


def report(run_id):
    with open(os.path.join(EPHEMERAL, 'reports', run_id, 'report.json')) as handle:
        return json.load(handle)


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
    with open(os.path.join(EPHEMERAL, 'sysctls-before-%s.json' % name)) as handle:
        before = json.load(handle)
    now = [int(value) for value in host.check_output('cat %s' % ' '.join('/proc/sys/net/ipv4/%s' % key
                                                                         for key in SYSCTLS)).split()]
    assert now == before
