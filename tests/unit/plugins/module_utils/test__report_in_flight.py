# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The report of an in-flight run (data.in_flight): the client's write and its retransmissions found in the capture,
the retransmission model's prediction judged against them and the client's failure, observed.ended_by, the timeline
lines and report.md's section. The segment times are those the kernel produced in lab namespaces (tcp_retries2 2, RTO
204 ms: test__retransmit.py measures them). Without data.in_flight the report has none of these keys."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _in_flight, _report
from ansible_collections.tcplab.keepalive.plugins.module_utils._report import ReportError, write_experiment

_spec = importlib.util.spec_from_file_location('tcplab_test__pcap_if', str(Path(__file__).with_name('test__pcap.py')))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

SETTINGS = {'rto_ms': 204, 'retries2': 2, 'user_timeout_ms': 0}
SENT = (0.0, 0.206, 0.415, 0.841, 1.679)   # the write, the tail loss probe, three timeout retransmissions


def capture(tmp_path, sent=SENT, write_at=3.0):
    pkts = []
    c = gen.Conv(pkts, client=(gen.C4, 22345), server=(gen.S4, 12345))
    c.handshake(0.0)
    seq = c.nxt['c']
    for t in sent:
        c.seg(write_at + t, 'c', 'PA', data=b'tcplab-keepalive request\n', seq=seq)
    return gen.write_capture(tmp_path / 'client.pcap', pkts), gen.T0 + write_at


def data(pcap, write_at, end_s=3.337, **in_flight):
    return {'run_id': 'inflight', 'settings': {'time': 20, 'intvl': 1, 'probes': 3},
            'expected': {'time': 20, 'intvl': 1, 'probes': 3}, 'client_port': 22345, 'pcaps': [pcap],
            'drop_at': write_at - 0.5, 'in_flight': dict(SETTINGS, **in_flight),
            'client': {'state': 'failed', 'errno': 'ETIMEDOUT', 'connected_at': write_at - 3.0,
                       'requested_at': write_at, 'failed_at': write_at + end_s, 'seconds': end_s + 3.0}}


def test_the_kernels_timeline_passes_and_says_retransmissions(tmp_path):
    pcap, write_at = capture(tmp_path)
    report, text = write_experiment(str(tmp_path / 'r'), data(pcap, write_at))
    assert report['verdict'] == 'pass', report['reasons']
    assert report['observed']['ended_by'] == 'retransmissions' == report['prediction']['ended_by']
    assert [r['what'] for r in report['observed']['retransmissions']] == [
        'tail loss probe', 'retransmission 1', 'retransmission 2', 'retransmission 3']
    assert report['observed']['in_flight']['sent_ms'] == [0.0, 206.0, 415.0, 841.0, 1679.0]
    assert report['prediction']['timeout_ms'] == 1400 and report['prediction']['end_ms'] == 3264
    whats = [line['what'] for line in report['timeline']]
    assert 'request written: data in flight, unacknowledged' in whats
    assert 'retransmission 3, no answer' in whats
    assert '## Data in flight' in text and '| ended by | retransmissions | retransmissions |' in text
    assert "decide - a tail loss probe after one RTO (204 ms)" in text
    assert (tmp_path / 'r' / 'timeline.png').stat().st_size > 0


def test_a_user_timeout_that_ended_it_earlier_than_predicted_fails_naming_both(tmp_path):
    pcap, write_at = capture(tmp_path, SENT[:4])
    report, _text = write_experiment(str(tmp_path / 'r'), data(pcap, write_at, end_s=1.45, user_timeout_ms=5000))
    assert report['verdict'] == 'fail'
    assert report['observed']['ended_by'] == 'user_timeout'
    assert any(r.startswith('the connection ended 1450 ms after the write, expected 5408..') for r in report['reasons'])


def test_a_client_that_did_not_write_fails(tmp_path):
    pcap, write_at = capture(tmp_path, ())
    report, _text = write_experiment(str(tmp_path / 'r'), data(pcap, write_at))
    assert report['verdict'] == 'fail' and _in_flight.MSG_NO_WRITE in report['reasons']


def test_without_in_flight_there_are_no_such_keys(tmp_path):
    pcap, write_at = capture(tmp_path)
    plain = data(pcap, write_at)
    del plain['in_flight']
    report, text = write_experiment(str(tmp_path / 'r'), plain)
    assert 'prediction' not in report and 'ended_by' not in report['observed'] and '## Data in flight' not in text


@pytest.mark.parametrize('value', [
    {'rto_ms': 0, 'retries2': 3, 'user_timeout_ms': 0},
    {'rto_ms': 204, 'retries2': 256, 'user_timeout_ms': 0},
    {'rto_ms': 204, 'retries2': 3, 'user_timeout_ms': -1},
    {'rto_ms': 204, 'retries2': 3, 'user_timeout_ms': 0, 'tail_loss_probe': 'maybe'},
    {'rto_ms': 204, 'retries2': 3, 'typo': 1},
    [204, 3],
])
def test_bad_in_flight_is_named(tmp_path, value):
    pcap, write_at = capture(tmp_path)
    bad = dict(data(pcap, write_at), in_flight=value)
    with pytest.raises(ReportError) as exc:
        write_experiment(str(tmp_path / 'r'), bad)
    assert str(exc.value) == 'data.in_flight must be %s, got %r' % (_in_flight.WHAT, value)
    assert not (tmp_path / 'r').exists()


def test_text_values_from_templates_are_accepted():
    got = _in_flight.validate({'rto_ms': '204.0', 'retries2': '3', 'user_timeout_ms': '0', 'tail_loss_probe': 'True',
                               'hz': '250'})
    assert got == {'rto_ms': 204.0, 'retries2': 3, 'user_timeout_ms': 0, 'tail_loss_probe': True, 'hz': 250}
    assert _report.validate  # the report validates data.in_flight through _in_flight.validate
