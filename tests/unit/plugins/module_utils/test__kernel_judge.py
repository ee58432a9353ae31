# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""evidence.kernel in every report (issue 13 §2): the in-flight run's retransmission counters against the capture's
resends (the numbers the kernel gave in lab namespaces, tcplab_test retx runs: tcp_retries2 3 - six data segments,
RetransSegs +5, TCPLossProbes +1, TCPTimeouts +5, TCPAbortOnTimeout +1), the idle-timeout run's probes against a
capture on the client (not judged, with a note, from the server's side of the middlebox), the client's own request
timeout told from the kernel's ETIMEDOUT, the other connections' watch (their probes counted by the namespace's own
addresses between the samples), and the pcap read once per report (before: _in_flight re-analysed it)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_judge as kj
from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_others as ko
from ansible_collections.tcplab.keepalive.plugins.module_utils import _pcap
from ansible_collections.tcplab.keepalive.plugins.module_utils._report import ReportError, write_experiment

_here = Path(__file__).parent


def _load(name, alias):
    spec = importlib.util.spec_from_file_location(alias, str(_here / name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inflight = _load('test__report_in_flight.py', 'tcplab_test__kj_if')
idle = _load('test__report_idle.py', 'tcplab_test__kj_idle')
gen = inflight.gen

SENT6 = (0.0, 0.206, 0.415, 0.831, 1.663, 3.327)   # tcp_retries2 3: the write, the TLP, four timeout retransmissions


def counters(keepalive=0, abort=0, timeouts=0, probes=0, retrans=0):
    return {'tcp_keepalive': keepalive, 'tcp_abort_on_timeout': abort, 'tcp_timeouts': timeouts,
            'tcp_loss_probes': probes, 'tcp_retrans_segs': retrans}


def sample(t, values, others=(), addresses=('198.18.0.1',)):
    return {'time': t, 'netns_inode': 4026532001, 'source': 'inet_diag', 'source_error': None, 'socket': None,
            'counters': values, 'others': list(others), 'others_count': len(others), 'ours': [], 'sockets_count': 2,
            'addresses': list(addresses)}


def kernel(start_t, end_t, end_values, **extra):
    return dict({'server_port': 12345, 'start': sample(start_t, counters(100, 7, 40, 3, 50)),
                 'end': sample(end_t, end_values), 'samples': []}, **extra)


def plus(**delta):
    base = counters(100, 7, 40, 3, 50)
    return {k: base[k] + delta.get(k, 0) for k in base}


# ---------------------------------------------------------------- data in flight

def in_flight_data(tmp_path, end_values, sent=SENT6, end_s=6.9):
    pcap, write_at = inflight.capture(tmp_path, sent=sent)
    data = inflight.data(pcap, write_at, end_s=end_s, retries2=3)
    data['kernel'] = kernel(write_at - 3.5, write_at + end_s + 0.2, end_values, capture_host='client')
    return data


def test_in_flight_counters_agree_with_the_resends(tmp_path):
    ok = plus(tcp_abort_on_timeout=1, tcp_timeouts=5, tcp_loss_probes=1, tcp_retrans_segs=5)
    report, text = write_experiment(str(tmp_path / 'r'), in_flight_data(tmp_path, ok))
    ev = report['evidence']['kernel']
    assert report['verdict'] == 'pass', report['reasons']
    assert (ev['tcp_retrans_segs'], ev['tcp_loss_probes'], ev['tcp_timeouts'], ev['tcp_abort_on_timeout']) == (5, 1, 5, 1)
    assert ev['agree'] is True and ev['capture'] == {'client_probes': 0, 'server_probes': 0, 'abort': 1, 'resends': 5}
    assert 'TCPLossProbes +1, RetransSegs +5' in text and '5 resend(s) - agree' in text


@pytest.mark.parametrize('delta, said', [
    ({'tcp_retrans_segs': 4, 'tcp_timeouts': 5, 'tcp_loss_probes': 1, 'tcp_abort_on_timeout': 1},
     kj.MSG_DISAGREE_RETRANS % ('5', '', 4)),
    ({'tcp_retrans_segs': 5, 'tcp_timeouts': 3, 'tcp_loss_probes': 1, 'tcp_abort_on_timeout': 1},
     kj.MSG_DISAGREE_TIMEOUTS % (5, 1, '', '6', 4, 3, 1)),
    ({'tcp_retrans_segs': 5, 'tcp_timeouts': 5, 'tcp_loss_probes': 1},
     kj.MSG_DISAGREE_ABORT % ('the client failed with ETIMEDOUT', '1', 0)),
])
def test_in_flight_disagreement_fails_with_both_numbers(tmp_path, delta, said):
    report, _text = write_experiment(str(tmp_path / 'r'), in_flight_data(tmp_path, plus(**delta)))
    assert report['verdict'] == 'fail' and said in report['reasons']
    assert report['evidence']['kernel']['agree'] is False


def test_in_flight_without_the_retransmission_counters_says_so(tmp_path):
    data = in_flight_data(tmp_path, plus(tcp_abort_on_timeout=1))
    for one in (data['kernel']['start'], data['kernel']['end']):
        del one['counters']['tcp_retrans_segs']
    report, _text = write_experiment(str(tmp_path / 'r'), data)
    assert report['verdict'] == 'pass' and kj.NOTE_NO_RETRANS in report['notes']


def test_the_pcap_is_read_once_per_report(tmp_path, monkeypatch):
    """_in_flight used to analyse the pcap again for its data segments (as packets_of does for the picture)."""
    opened = []
    real = _pcap.open_capture
    monkeypatch.setattr(_pcap, 'open_capture', lambda path: opened.append(path) or real(path))
    ok = plus(tcp_abort_on_timeout=1, tcp_timeouts=5, tcp_loss_probes=1, tcp_retrans_segs=5)
    data = in_flight_data(tmp_path, ok)
    data['analysis'] = _pcap.analyse(data['pcaps'][0])
    opened.clear()
    report, _text = write_experiment(str(tmp_path / 'r'), data)
    assert report['verdict'] == 'pass' and len(opened) == 1


# ---------------------------------------------------------------- the idle-timeout fault

SURVIVED = {'state': 'answered', 'errno': None, 'connected_at': gen.T0, 'requested_at': gen.T0 + 19.0,
            'answered_at': gen.T0 + 19.001, 'seconds': 19.001}


def idle_capture(path, probes=9):
    """The client's side of a run that survived: a probe every 2 s, each answered, then the request, its echo and
    the client's FIN."""
    pkts = []
    c = gen.Conv(pkts, client=(gen.C4, 22345), server=(gen.S4, 12345))
    c.handshake(0.0)
    for k in range(1, probes + 1):
        c.probe(2.0 * k)
        c.seg(2.0 * k + 0.001, 's', 'A')
    c.seg(19.0, 'c', 'PA', data=b'request\n')
    c.seg(19.001, 's', 'PA', data=b'request\n')
    c.seg(19.01, 'c', 'FA')
    return gen.write_capture(path, pkts)


def idle_data(tmp_path, capture_host, end_values):
    data = idle.data(settings=idle.ka(2), expected=idle.ka(2), client=SURVIVED,
                     pcaps=[idle_capture(tmp_path / 'client.pcap')])
    data['kernel'] = kernel(gen.T0 - 0.5, gen.T0 + 20.0, end_values, capture_host=capture_host)
    return data


def test_idle_kernel_evidence_is_judged_from_the_clients_capture(tmp_path):
    report, text = write_experiment(str(tmp_path / 'ok'), idle_data(tmp_path, 'client', plus(tcp_keepalive=9)))
    ev = report['evidence']['kernel']
    assert report['verdict'] == 'pass' and ev['agree'] is True and ev['capture']['abort'] == 0
    assert ev['capture']['client_probes'] == 9 == report['observed']['answered_probes']
    assert '- kernel evidence (client\'s namespace, inet_diag): TCPKeepAlive +9, TCPAbortOnTimeout +0' in text
    report, _text = write_experiment(str(tmp_path / 'bad'), idle_data(tmp_path, 'client', plus(tcp_keepalive=11)))
    assert report['verdict'] == 'fail' and kj.MSG_DISAGREE_PROBES % ('9', '9 from the client', 11) in report['reasons']


def test_idle_capture_on_the_server_is_not_judged(tmp_path):
    report, _text = write_experiment(str(tmp_path / 'r'), idle_data(tmp_path, 'server', plus(tcp_keepalive=5)))
    assert report['verdict'] == 'pass' and report['evidence']['kernel']['agree'] is None
    assert kj.NOTE_IDLE_SERVER in report['notes']


def test_the_clients_own_request_timeout_is_no_kernel_abort(tmp_path):
    """ETIMEDOUT from the python client's request timeout (the request met a forgotten flow): no TCPAbortOnTimeout."""
    client = dict(idle.REQUEST_TIMEDOUT)
    assert kj.expected_abort({}, client) == (0, kj.expected_abort({}, {})[1])
    assert kj.expected_abort({}, dict(client, error='[Errno 110] Connection timed out'))[0] == 1


def test_bad_kernel_extras_are_refused(tmp_path):
    for extra in ({'capture_host': 'middlebox'}, {'others_watch': 'x'}, {'others_watch': {'seen': []}},
                  {'others_watch': {'seen': {'probes': 3}}}):
        data = idle_data(tmp_path, 'client', plus())
        data['kernel'].update(extra)
        with pytest.raises(ReportError) as err:
            write_experiment(str(tmp_path / 'r'), data)
        assert str(err.value).startswith(('data.kernel must be', 'data.kernel.others_watch must be'))


# ---------------------------------------------------------------- the other connections' watch

def watch(probes_at, unsure=(), rsts=(), retransmissions=0, truncated=False):
    """What kernel_counters watch: stopped returns (times since the epoch)."""
    return {'seen': {'probes': list(probes_at), 'unsure': list(unsure), 'rsts': list(rsts), 'connections': 1,
                     'retransmissions': retransmissions, 'packets': 10, 'truncated': truncated}}


def test_the_watch_counts_what_the_namespace_sent_between_the_samples():
    got = ko.count(watch([1000.5, 1002.0, 1003.0, 1009.5]), 1001.0, 1009.0)
    assert got == {'probes': 2, 'probes_max': 2, 'aborts_max': 0, 'retransmissions': 0, 'connections': 1,
                   'truncated': False}
    # zero-length segments sent before the connection's sequence numbers were known: maybe probes
    assert ko.count(watch([1002.0], unsure=[1001.5, 1010.0]), 1001.0, 1009.0)['probes_max'] == 2
    # an RST the namespace sent, or any retransmission: what the others could add to TCPAbortOnTimeout
    assert ko.count(watch([], rsts=[1004.0]), 1001.0, 1009.0)['aborts_max'] == 1
    assert ko.count(watch([], retransmissions=2), 1001.0, 1009.0)['aborts_max'] == 1


def test_watched_others_are_judged_and_unwatched_ones_are_not(tmp_path):
    other = {'local': '198.18.0.1:40000', 'remote': '198.18.0.9:22', 'state': 'ESTABLISHED', 'timer': 'keepalive',
             'expires_s': 0.5, 'timer_count': 0, 'probes': 0, 'backoff': 0}
    data = idle_data(tmp_path, 'client', plus(tcp_keepalive=11))
    data['kernel']['start']['others'], data['kernel']['start']['others_count'] = [other], 1
    report, _text = write_experiment(str(tmp_path / 'unwatched'), data)
    assert report['evidence']['kernel']['agree'] is None
    assert report['notes'][-1].startswith('kernel evidence not judged: 1 other connection(s)')
    assert report['notes'][-1].endswith(kj.NOTE_NOT_WATCHED)
    start = data['kernel']['start']['time']
    data['kernel']['others_watch'] = watch([start - 0.1, start + 1.0, start + 2.0])
    report, _text = write_experiment(str(tmp_path / 'watched'), data)
    ev = report['evidence']['kernel']
    assert report['verdict'] == 'pass' and ev['agree'] is True and ev['others_watch']['probes'] == 2
    data['kernel']['others_watch'] = watch([start + 1.0])
    report, _text = write_experiment(str(tmp_path / 'missed'), data)
    assert kj.MSG_DISAGREE_PROBES % ('10', '9 from the client and 1 from other connections, by their watch', 11) \
        in report['reasons']
    data['kernel']['others_watch'] = {'error': 'the capture could not start: no tcpdump'}
    report, _text = write_experiment(str(tmp_path / 'failed'), data)
    assert report['evidence']['kernel']['agree'] is None
    assert report['notes'][-1].endswith(kj.NOTE_WATCH_FAILED % 'the capture could not start: no tcpdump')
    data['kernel']['others_watch'] = watch([start + 1.0], truncated=True)
    report, _text = write_experiment(str(tmp_path / 'truncated'), data)
    assert report['evidence']['kernel']['agree'] is None and report['notes'][-1].endswith(kj.NOTE_WATCH_TRUNCATED)


@pytest.mark.parametrize('path, seconds, msg', [
    ('relative/others.pcap', 60, 'watch_path must be an absolute path'),
    ('/var/tmp/x/others.pcap', 0, 'watch_seconds must be 1..86400'),
    ('/var/tmp/x/others.pcap', 86401, 'watch_seconds must be 1..86400'),
])
def test_a_bad_watch_is_refused_before_anything_starts(tmp_path, path, seconds, msg):
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_watch as kw
    with pytest.raises(kw.WatchError) as err:
        kw.start(path, 22345, 12345, seconds, which=lambda name: pytest.fail('looked for %s' % name))
    assert str(err.value).startswith(msg)
    assert kw.watch_filter(22345, 12345) == 'tcp and not (port 22345 and port 12345)'


def test_the_watch_finds_probes_mid_stream(tmp_path):
    """The watch starts while the other connections are established: a probe before anything told the sequence
    numbers waits for the answer's acknowledgment; data sent again is a retransmission; the peer's probes and a
    plain ACK are not the namespace's probes; one zero-length segment never explained is unsure."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_watch_scan as scan
    pkts = []
    c = gen.Conv(pkts, client=(gen.C4, 40000), server=(gen.S4, 22))      # no handshake: seen mid-stream
    c.probe(1.0)                      # seq 999 = una - 1: known once the answer acknowledges 1000
    c.seg(1.001, 's', 'A')
    c.probe(2.0)
    c.seg(2.001, 's', 'A')
    c.seg(3.0, 'c', 'PA', data=b'0123456789')
    c.seg(3.5, 'c', 'PA', data=b'0123456789', seq=1000)                 # sent again
    c.probe(4.0, frm='s')              # the peer's probe: not this namespace's
    c.seg(4.001, 'c', 'A')             # its answer: a plain ACK
    c.seg(6.0, 'c', 'R')
    other = gen.Conv(pkts, client=(gen.C4, 40001), server=(gen.S4, 22))
    other.seg(5.0, 'c', 'A')           # never explained
    path = gen.write_capture(tmp_path / 'watch.pcap', sorted(pkts, key=lambda p: p[0]), linktype=276)
    seen = scan.scan(path, [gen.C4, '127.0.0.0/8'])
    assert [round(t - gen.T0, 3) for t in seen['probes']] == [1.0, 2.0]
    assert [round(t - gen.T0, 3) for t in seen['unsure']] == [5.0]
    assert [round(t - gen.T0, 3) for t in seen['rsts']] == [6.0]
    assert (seen['retransmissions'], seen['connections'], seen['truncated']) == (1, 2, False)
