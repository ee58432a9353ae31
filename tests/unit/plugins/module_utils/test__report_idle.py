# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The report of an idle-timeout run: the prediction (keepalive time against the middlebox's idle timeout) judged
against the client's outcome, report.json's fault, prediction and observed.survived, and report.md's two
sentences. The drop fault stays the default and its report has none of these keys."""
from __future__ import annotations

import json

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _report
from ansible_collections.tcplab.keepalive.plugins.module_utils._report import ReportError, judge_idle, write_experiment

FAULT = {'kind': 'idle_timeout', 'seconds': 6, 'action': 'drop', 'middlebox': 'mb', 'preset': None}
ANSWERED = {'state': 'answered', 'errno': None, 'connected_at': 100.0, 'requested_at': 119.5, 'answered_at': 119.51,
            'seconds': 19.51}
TIMEDOUT = {'state': 'failed', 'errno': 'ETIMEDOUT', 'connected_at': 100.0, 'failed_at': 113.1, 'seconds': 13.1}
RESET = {'state': 'failed', 'errno': 'ECONNRESET', 'connected_at': 100.0, 'failed_at': 110.0, 'seconds': 10.0}


def ka(time):
    return {'time': time, 'intvl': 1, 'probes': 3}


@pytest.mark.parametrize('time, action, client, verdict', [
    (2, 'drop', ANSWERED, 'pass'),
    (10, 'drop', TIMEDOUT, 'pass'),
    (10, 'reset', RESET, 'pass'),
    (6, 'drop', TIMEDOUT, 'pass'),     # at the idle timeout: forgotten
    (2, 'drop', TIMEDOUT, 'fail'),     # predicted to survive, died
    (10, 'drop', ANSWERED, 'fail'),    # predicted to die, survived
    (10, 'reset', TIMEDOUT, 'fail'),   # died, but not as a reset makes it die
    (10, 'drop', RESET, 'fail'),
])
def test_the_verdict_is_the_prediction_against_the_outcome(time, action, client, verdict):
    got, reasons, prediction = judge_idle(ka(time), dict(FAULT, action=action), client)
    assert got == verdict and bool(reasons) == (verdict == 'fail')
    assert prediction['survives'] == (time < 6)


def test_a_failed_prediction_says_why():
    dummy, reasons, dummy2 = judge_idle(ka(2), FAULT, TIMEDOUT)
    assert reasons == [_report.MSG_IDLE_SURVIVED % (2, 6, 'failed with ETIMEDOUT')]
    dummy, reasons, dummy2 = judge_idle(ka(10), dict(FAULT, action='reset'), ANSWERED)
    assert reasons == [_report.MSG_IDLE_DIED % (10, 6, 'ECONNRESET', 'had its request answered')]


def data(**changes):
    out = {'run_id': 'r1', 'settings': ka(2), 'expected': ka(2), 'client_port': 22345, 'client': ANSWERED,
           'fault': FAULT, 'hosts': {'client': 'c', 'server': 's', 'loopback': False}, 'pcaps': []}
    out.update(changes)
    return out


def test_report_json_has_the_fault_the_prediction_and_survived(tmp_path):
    report, text = write_experiment(str(tmp_path), data())
    saved = json.loads((tmp_path / 'report.json').read_text())
    assert saved == report and saved['verdict'] == 'pass'
    assert saved['fault'] == FAULT and saved['observed']['survived'] is True
    assert saved['prediction'] == {'survives': True, 'client_errno': None}
    assert saved['client']['requested_at'] == 119.5
    assert 'every probe and its answer renewed the flow' in text
    assert 'After 20 s of idle time its request crossed the middlebox and was answered.' in text


@pytest.mark.parametrize('action, client, said', [
    ('drop', TIMEDOUT, 'while the server still held the connection (half-open)'),
    ('reset', RESET, 'The middlebox answered the probe with a TCP reset: the client failed with ECONNRESET after 10.0 s.'),
])
def test_report_md_says_why_it_died(tmp_path, action, client, said):
    fault = dict(FAULT, action=action, preset='aws-nlb')
    report, text = write_experiment(str(tmp_path), data(settings=ka(10), expected=ka(10), client=client, fault=fault))
    assert report['verdict'] == 'pass' and report['observed']['survived'] is False
    assert said in text and 'preset aws-nlb' in text
    assert '- answered probes while the middlebox kept the flow:' in text and 'before the DROP' not in text


def test_the_drop_fault_report_is_unchanged(tmp_path):
    report, text = write_experiment(str(tmp_path), data(fault=None, client=TIMEDOUT))
    assert 'fault' not in report and 'prediction' not in report and 'survived' not in report['observed']
    assert '- answered probes before the DROP:' in text


@pytest.mark.parametrize('fault', [
    {'kind': 'latency'},
    {'kind': 'idle_timeout', 'seconds': 0, 'action': 'drop', 'middlebox': 'mb'},
    {'kind': 'idle_timeout', 'seconds': 6, 'action': 'reject', 'middlebox': 'mb'},
    {'kind': 'idle_timeout', 'seconds': 6, 'action': 'drop'},
])
def test_a_bad_fault_is_named(tmp_path, fault):
    with pytest.raises(ReportError) as info:
        write_experiment(str(tmp_path / 'r'), data(fault=fault))
    assert str(info.value) == _report.MSG_BAD_VALUE % ('fault', _report.FAULT, fault)
    assert not (tmp_path / 'r').exists()


# keepalive time 7200 s behind a 240 s box (the docs' aws-nlb/azure-lb runs): no probe was due within the idle wait of
# three idle timeouts, so it was the request that met the middlebox, not a probe (before: "so the probe met ...")
REQUEST_RESET = {'state': 'failed', 'errno': 'ECONNRESET', 'connected_at': 100.0, 'requested_at': 821.0,
                 'failed_at': 821.01, 'seconds': 721.01}
REQUEST_TIMEDOUT = {'state': 'failed', 'errno': 'ETIMEDOUT', 'connected_at': 100.0, 'requested_at': 821.0,
                    'failed_at': 831.0, 'seconds': 731.0,
                    'error': 'no answer to the request within 10 s (sent 721.0 s after connect)'}


@pytest.mark.parametrize('action, client, said', [
    ('reset', REQUEST_RESET, ['so its request after 721 s of idle time, before any probe was due, met a middlebox',
                              'The middlebox answered the request with a TCP reset: the client failed with ECONNRESET']),
    ('drop', REQUEST_TIMEDOUT, ['so its request after 721 s of idle time, before any probe was due, met a middlebox',
                                'the request and its retransmissions went unanswered and the client failed with '
                                'ETIMEDOUT after 731.0 s']),
])
def test_the_request_not_a_probe_met_the_middlebox(tmp_path, action, client, said):
    fault = dict(FAULT, seconds=240, action=action)
    report, text = write_experiment(str(tmp_path), data(settings=ka(7200), expected=ka(7200), client=client, fault=fault))
    assert report['verdict'] == 'pass' and _report.what_met(report) == 'request'
    for words in said:
        assert words in text
    assert 'probe met' not in text and 'answered the probe' not in text and "the client's probes" not in text
