# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One judge (issue 12, section 3): the analyser's result is the single source.

- client_connection() is the one reading of "the client's connection" that pcap_info's wait_for and the experiment
  report share (before: _report._prober_of took the first connection of the port, _pcap_wait.watch the last, so the
  report could judge another connection than the one the wait followed);
- the report's picture draws the analyser's own classification of every segment (before: a scapy re-read that
  called every small client segment a probe and matched them to the analyser's within 0.5 ms);
- count_packets() reads record headers with the analyser's reader, with the return shape of
  _capture.count_packets.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _capture_record, _pcap, _pcap_wait, _report
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.pcap_files import COUNT_CASES

_spec = importlib.util.spec_from_file_location('tcplab_test__pcap_shape', str(Path(__file__).with_name('test__pcap.py')))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

PORT = 40000


def two_connections_of_one_port(tmp_path):
    """The client's port used twice: a first connection that probes and is answered, then a second one whose
    probes go unanswered and end in the client's RST."""
    pkts = []
    first = gen.Conv(pkts, client=(gen.C4, PORT), server=(gen.S4, 12345), isn_c=1000, isn_s=5000)
    first.handshake(0.0)
    first.seg(0.01, 'c', 'PA', b'hello')
    first.seg(0.02, 's', 'A')
    first.probe(2.02)
    first.seg(2.021, 's', 'A')
    first.seg(2.5, 'c', 'FA')
    first.seg(2.501, 's', 'FA')
    first.seg(2.502, 'c', 'A')
    second = gen.Conv(pkts, client=(gen.C4, PORT), server=(gen.S4, 12345), isn_c=90000, isn_s=70000)
    second.handshake(3.0)
    second.seg(3.01, 'c', 'PA', b'again')
    second.seg(3.02, 's', 'A')
    for t in (5.02, 6.03, 7.04):
        second.probe(t)
    second.seg(8.05, 'c', 'RA')
    return gen.write_capture(tmp_path / 'reused.pcap', pkts)


def test_client_connection_is_the_last_of_the_port(tmp_path):
    result = _pcap.analyse(two_connections_of_one_port(tmp_path), connection={'port': PORT})
    assert len(result['connections']) == 2
    conn, prober, client = _pcap.client_connection(result, PORT)
    assert conn is result['connections'][1]
    assert client == '198.18.0.1:%d' % PORT
    assert prober['endpoint'] == client and prober['final_unanswered'] == 3 and prober['answered'] == 0
    assert _pcap.client_connection(result, 9999) == (None, None, None)
    assert _pcap.client_connection({}, PORT) == (None, None, None)


def test_the_wait_and_the_report_follow_the_same_connection(tmp_path):
    """Before: the report observed the first connection of the port (1 answered probe, closed by a FIN), the wait
    the last one (3 unanswered probes and the client's RST)."""
    result = _pcap.analyse(two_connections_of_one_port(tmp_path), connection={'port': PORT})
    seen = _pcap_wait.watch(result, PORT)
    observed = _report.observe(result, PORT)
    assert seen['conn'] is _pcap.client_connection(result, PORT)[0]
    assert (observed['answered_probes'], observed['unanswered_probes']) == (seen['answered'], seen['unanswered']) == (0, 3)
    assert observed['rst']['from'] == 'client' and seen['end']['by'] == 'RST'
    assert _pcap_wait.prober_state(result, PORT) == (0, 3, True)


def test_the_picture_draws_the_analysers_classification(tmp_path):
    """Small segments of the client that are no Keep-Alive (a pure ACK, a 1-byte data segment) are not drawn as
    probes, the server's answers are, and every Keep-Alive the analyser found is drawn at its time."""
    pkts = []
    c = gen.Conv(pkts, client=(gen.C4, PORT), server=(gen.S4, 12345))
    c.handshake(0.0)
    c.seg(0.01, 's', 'PA', b'x' * 10)
    c.seg(0.02, 'c', 'A')                # a pure ACK of the client: the old picture's rule called it a probe
    c.seg(0.03, 'c', 'PA', b'y')         # one byte of data: likewise
    c.seg(0.04, 's', 'A')
    c.probe(2.04)
    c.seg(2.041, 's', 'A')               # the Keep-Alive ACK
    c.probe(4.05)
    c.seg(4.051, 's', 'PA', b'z' * 5)    # answered with data
    for t in (6.06, 7.07, 8.08):
        c.probe(t)
    c.seg(9.09, 'c', 'RA')
    pcap = gen.write_capture(tmp_path / 'k.pcap', pkts)
    result = _pcap.analyse(pcap, connection={'port': PORT})
    start = result['start']
    probes = [start + p['time'] for p in result['connections'][0]['probers'][0]['probes']]
    points = _report.packets_of(pcap, PORT)
    assert len(points) == len(pkts)
    drawn = [t for t, direction, kind in points if _report.STYLE_OF.get(kind) == 'probe']
    assert drawn == pytest.approx(probes) and len(drawn) == 5
    assert all(direction == 1 for t, direction, kind in points if kind == 'keepalive')
    kinds = [kind for _t, _d, kind in points]
    assert kinds[3:6] == ['segment', 'segment', 'segment']
    assert kinds[7] == 'keepalive' and kinds[8] == 'keepalive_ack' and kinds[10] == 'answer' and kinds[-1] == 'rst'
    assert [_report.STYLE_OF.get(k, 'other') for k in kinds].count('ack') == 2


def test_packets_only_when_asked(tmp_path):
    pkts = []
    c = gen.Conv(pkts, client=(gen.C4, PORT), server=(gen.S4, 12345))
    c.handshake(0.0)
    c.probe(2.0)
    path = gen.write_capture(tmp_path / 'p.pcap', pkts)
    assert 'packets' not in _pcap.analyse(path, connection={'port': PORT})['connections'][0]
    assert 'packets' not in _pcap.analyse(path, packets=True)['connections'][0]   # only a focused analysis keeps them
    listed = _pcap.analyse(path, connection={'port': PORT}, packets=True)['connections'][0]['packets']
    assert [kind for _t, _who, kind in listed] == ['segment', 'segment', 'segment', 'keepalive']
    assert [who for _t, who, _kind in listed] == [0, 1, 0, 0]


def test_judge_uses_the_shared_tolerance_rule():
    assert _report._tolerance(None) == _pcap.DEFAULT_TOLERANCE
    observed = {'end': None, 'connection_found': True, 'answered_probes': 2, 'unanswered_probes': 3,
                'probe_interval_s': [1.3, 1.4], 'rst': {'from': 'client', 'after_last_probe_s': 1.0}}
    verdict, reasons = _report.judge({'time': 2, 'intvl': 1, 'probes': 3}, observed, {'errno': 'ETIMEDOUT'}, 2,
                                     {'seconds': 0.25, 'percent': 10.0})
    # 1 s +- (0.25 + 10 %) = 0.35 s: 1.3 fits, 1.4 does not
    assert verdict == 'fail'
    assert reasons == ['unanswered probe 3 came 1.400 s after the previous one, expected 1 s +- 0.35 s']


@pytest.mark.parametrize('count', [_pcap.count_packets, _capture_record.count_packets], ids=['reader', 'capture'])
@pytest.mark.parametrize('blob, expected', COUNT_CASES)
def test_count_packets_has_the_capture_modules_shape(tmp_path, count, blob, expected):
    """The reader's count_packets, and the capture module's name for it (the same function: one set of cases)."""
    path = tmp_path / 'x.pcap'
    path.write_bytes(blob)
    assert count(str(path)) == expected


@pytest.mark.parametrize('count', [_pcap.count_packets, _capture_record.count_packets], ids=['reader', 'capture'])
def test_count_packets_missing_file(tmp_path, count):
    assert count(str(tmp_path / 'none.pcap'))['readable'] is False


def test_count_packets_reads_pcapng_and_refuses_what_is_not_a_file(tmp_path):
    pkts = []
    c = gen.Conv(pkts)
    c.handshake(0.0)
    path = gen.write_capture(tmp_path / 'x.pcapng', pkts, container='pcapng_le')
    counted = _pcap.count_packets(str(path))
    assert counted['packets'] == 3 and counted['complete'] and counted['readable'] and counted['linktype'] == 1
    assert counted['bytes'] == Path(path).stat().st_size
    assert _pcap.count_packets(str(tmp_path)) == {'packets': 0, 'bytes': 0, 'complete': True, 'readable': False,
                                                  'linktype': None}
    link = tmp_path / 'link.pcap'
    link.symlink_to(path)
    assert _pcap.count_packets(str(link))['readable'] is False   # never through a symlink
