# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Unit tests of the experiment verdict and report rendering, over an analysis
# shaped like tcplab.keepalive.capture's (pure functions, no kernel needed);
# the input checks (nothing written on bad input), pcaps that are FIFOs, and
# a report over a generated capture whose server closed the connection.
from __future__ import annotations

import base64
import importlib.util
import json
import os
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _pcap, _pcap_wait, _report, _report_input
from ansible_collections.tcplab.keepalive.plugins.module_utils._report import judge, observe, timeline, write_experiment

_spec = importlib.util.spec_from_file_location('tcplab_test__pcap_r', str(Path(__file__).with_name('test__pcap.py')))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)
_spec = importlib.util.spec_from_file_location('tcplab_test__pcap_hy', str(Path(__file__).with_name('test__pcap_hygiene.py')))
_hygiene = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_hygiene)
bounded = _hygiene.bounded

EXPECT = {'time': 2, 'intvl': 1, 'probes': 3}
TOL = {'seconds': 0.25, 'percent': 10}


def analysis(unanswered_times=(5.0, 6.01, 7.02), rst_time=8.03, rst_from='127.0.0.1:22345', answered=2):
    probes = [{'time': 2.0 + 2 * i, 'answered': True, 'after': 2.0} for i in range(answered)]
    probes += [{'time': t, 'answered': False, 'after': None} for t in unanswered_times]
    return {
        'start': 1000.0,
        'connections': [{
            'endpoints': ['127.0.0.1:22345', '127.0.0.1:12345'],
            'start': 0.0,
            'name': '127.0.0.1:22345 -> 127.0.0.1:12345',
            'rst': {'from': rst_from, 'time': rst_time, 'flags': 'RST|ACK', 'frame': 20,
                    'after_probes': len(unanswered_times) if rst_from.endswith(':22345') else 0,
                    'after_last_probe': round(rst_time - unanswered_times[-1], 3) if unanswered_times else None},
            'probers': [{'endpoint': '127.0.0.1:22345', 'probes': probes, 'answered': answered,
                         'final_unanswered': len(unanswered_times), 'idle_before_first_probe': 2.0,
                         'verdict': 'pass', 'reasons': []}],
            'notes': [],
        }],
    }


CLIENT_OK = {'state': 'failed', 'errno': 'ETIMEDOUT', 'seconds': 8.04, 'connected_at': 1000.0, 'failed_at': 1008.04}


def test_pass():
    observed = observe(analysis(), 22345)
    assert observed['unanswered_probes'] == 3
    assert observed['probe_interval_s'] == [1.01, 1.01]
    assert observed['rst']['from'] == 'client'
    verdict, reasons = judge(EXPECT, observed, CLIENT_OK, 2, TOL)
    assert (verdict, reasons) == ('pass', [])


@pytest.mark.parametrize('kw, client, reason', [
    ({'unanswered_times': (5.0, 6.0)}, CLIENT_OK, 'the client sent 2 unanswered probes, expected 3'),
    ({'unanswered_times': (5.0, 6.0, 8.9), 'rst_time': 9.9}, CLIENT_OK,
     'unanswered probe 3 came 2.900 s after the previous one, expected 1 s +- 0.35 s'),
    ({'rst_from': '127.0.0.1:12345'}, CLIENT_OK, 'the RST came from the server, expected the client'),
    ({'answered': 1}, CLIENT_OK, 'saw 1 answered probes before the DROP, expected at least 2'),
    ({}, {'state': 'closed', 'errno': None}, 'the client ended with closed, expected ETIMEDOUT'),
])
def test_fail_reasons(kw, client, reason):
    verdict, reasons = judge(EXPECT, observe(analysis(**kw), 22345), client, 2, TOL)
    assert verdict == 'fail' and reason in reasons


def test_no_connection():
    verdict, reasons = judge(EXPECT, observe({}, 22345), {}, 1, TOL, error='capture failed')
    assert verdict == 'fail'
    assert reasons[0] == 'the experiment did not complete: capture failed'
    assert 'no RST was seen' in reasons


def test_timeline_lines():
    lines = timeline(observe(analysis(), 22345), CLIENT_OK, 1004.5, 1000.0, EXPECT)
    text = [what for t, who, what in lines]
    assert text[0] == 'connection established'
    assert 'keepalive probe 2/3  unanswered' in text
    assert any(w.startswith('DROP') for w in text)
    assert any(w.startswith('RST|ACK after 3 unanswered probes') for w in text)
    assert [t for t, who, what in lines] == sorted(t for t, who, what in lines)


def test_timeline_of_a_probe_sent_twice_before_its_answer():
    """Seen at real numbers (time 300): the kernel sent the third probe twice, 107 us apart, and the peer answered
    after the second copy. The first copy is not one of a final run of unanswered probes: no 'probe -1/9'."""
    def probe(t, answered, after):
        return {'time': t, 'answered': answered, 'after': after, 'expected': None, 'rule': None}
    observed = {'connection_found': True, 'connection_start': 0.0, 'unanswered_probes': 0, 'rst': None,
                'probes': [probe(316.353, True, 316.353), probe(627.653, True, 311.3), probe(938.9449, False, 311.292),
                           probe(938.945, True, 0.0)]}
    text = [what for t, who, what in timeline(observed, CLIENT_OK, None, None, {'time': 300, 'intvl': 75, 'probes': 9})]
    assert 'keepalive probe (idle 311.292 s), no answer before the next probe' in text
    assert not any('/9' in what for what in text)


def test_write_experiment(tmp_path):
    data = {'run_id': 'r1', 'settings': EXPECT, 'expected': EXPECT, 'governs': 'the sysctls', 'client_kind': 'python',
            'server_kind': 'python', 'hosts': {'client': 'demo', 'server': 'demo', 'loopback': True},
            'client_port': 22345, 'idle_probes': 2, 'tolerance': TOL, 'analysis': analysis(), 'client': CLIENT_OK,
            'drop_at': 1004.5, 'pcaps': []}
    report, text = write_experiment(str(tmp_path), data)
    saved = json.loads((tmp_path / 'report.json').read_text())
    assert saved['verdict'] == 'pass' and saved == report
    for key in ('verdict', 'reasons', 'settings', 'observed', 'client'):
        assert key in saved
    assert set(saved['observed']) >= {'answered_probes', 'unanswered_probes', 'first_probe_idle_s', 'probe_interval_s', 'rst'}
    assert '**Verdict: PASS**' in text and 'keepalive probe 3/3  unanswered' in text
    assert (tmp_path / 'timeline.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ---------------------------------------------------------------- input checked before anything is written (item 17)

OMIT = object()   # a key left out of good_data()


def good_data(**changes):
    data = {'run_id': 'r1', 'settings': dict(EXPECT), 'expected': dict(EXPECT), 'governs': 'the sysctls',
            'client_kind': 'python', 'server_kind': 'python',
            'hosts': {'client': 'demo', 'server': 'demo', 'loopback': True}, 'client_port': 22345, 'idle_probes': 2,
            'tolerance': TOL, 'analysis': analysis(), 'client': CLIENT_OK, 'drop_at': 1004.5, 'pcaps': []}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not OMIT}


@pytest.mark.parametrize('key', ['run_id', 'settings', 'expected', 'client_port'])
def test_a_missing_key_is_named_and_nothing_is_created(tmp_path, key):
    dest = tmp_path / 'reports' / 'r1'
    with pytest.raises(_report.ReportError) as exc:
        write_experiment(str(dest), good_data(**{key: OMIT}))
    assert str(exc.value) == _report.MSG_MISSING_KEY % (key, _report.REQUIRED[key])
    assert not (tmp_path / 'reports').exists()


@pytest.mark.parametrize('changes, message', [
    ({'run_id': ['r1']}, _report.MSG_BAD_VALUE % ('run_id', 'a string (or a number)', ['r1'])),
    ({'client_port': 'abc'}, _report.MSG_BAD_VALUE % ('client_port', 'an integer 1..65535', 'abc')),
    ({'client_port': 0}, _report.MSG_BAD_VALUE % ('client_port', 'an integer 1..65535', 0)),
    ({'client_port': True}, _report.MSG_BAD_VALUE % ('client_port', 'an integer 1..65535', True)),
    ({'settings': {'time': 2, 'intvl': 1}}, _report.MSG_BAD_VALUE % ('settings', _report.TRIPLE, {'time': 2, 'intvl': 1})),
    ({'expected': {'time': 0, 'intvl': 1, 'probes': 3}},
     _report.MSG_BAD_VALUE % ('expected', _report.TRIPLE, {'time': 0, 'intvl': 1, 'probes': 3})),
    ({'idle_probes': -1}, _report.MSG_BAD_VALUE % ('idle_probes', 'an integer >= 0', -1)),
    ({'tolerance': {'percent': 500}}, _report.MSG_BAD_VALUE % (
        'tolerance', 'a dict with seconds (0..32767) and percent (0..100)', {'percent': 500})),
    ({'drop_at': 'soon'}, _report.MSG_BAD_VALUE % ('drop_at', 'a time stamp (seconds since the epoch) or null', 'soon')),
    ({'pcaps': 'a.pcap'}, _report.MSG_BAD_VALUE % ('pcaps', 'a list', 'a.pcap')),
    ({'analysis': 'none'}, _report.MSG_BAD_VALUE % ('analysis', 'a dict', 'none')),
    ({'client_prot': 1}, _report.MSG_UNKNOWN_KEYS % (', '.join(list(_report.REQUIRED) + list(_report.OPTIONAL)),
                                                     'client_prot')),
], ids=['run_id-list', 'port-word', 'port-0', 'port-bool', 'settings-incomplete', 'expected-0', 'idle-negative', 'tolerance',
        'drop_at', 'pcaps', 'analysis', 'unknown-key'])
def test_bad_values_are_named(tmp_path, changes, message):
    dest = tmp_path / 'r1'
    with pytest.raises(_report.ReportError) as exc:
        write_experiment(str(dest), good_data(**changes))
    assert str(exc.value) == message
    assert not dest.exists()


def test_integer_strings_are_accepted(tmp_path):
    report, _text = write_experiment(str(tmp_path / 'r1'), good_data(
        client_port='22345', idle_probes='2', settings={'time': '2', 'intvl': '1', 'probes': '3'}, drop_at='1004.5'))
    assert report['verdict'] == 'pass' and report['settings'] == EXPECT


def test_dest_that_is_a_file(tmp_path):
    afile = tmp_path / 'notes.txt'
    afile.write_text('mine')
    with pytest.raises(_report.ReportError) as exc:
        write_experiment(str(afile), good_data())
    assert str(exc.value) == _report.MSG_DEST_NOT_DIR % afile
    with pytest.raises(_report.ReportError) as exc:
        write_experiment(str(afile / 'r1'), good_data())
    assert str(exc.value) == _report.MSG_DEST_PARENT % (afile / 'r1', afile)
    assert afile.read_text() == 'mine' and sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    real = _report.atomic_write
    calls = []

    def second_fails(path, content, mode):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, 'No space left on device')
        real(path, content, mode)
    monkeypatch.setattr(_report, 'atomic_write', second_fails)
    with pytest.raises(_report.ReportError) as exc:
        write_experiment(str(tmp_path / 'reports' / 'r1'), good_data())
    assert str(exc.value) == _report.MSG_WRITE % (tmp_path / 'reports' / 'r1', 'No space left on device')
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- pcaps that are not regular files (item 9)

def test_a_fifo_among_the_pcaps_is_refused_at_once(tmp_path):
    fifo = tmp_path / 'capture.pcap'
    os.mkfifo(str(fifo))
    dest = tmp_path / 'r1'
    status, value = bounded(write_experiment, str(dest), good_data(pcaps=[str(fifo)]))
    assert (status, value) == ('error', 'ReportError: ' + _report.MSG_PCAP % (
        _pcap.MSG_NOT_FILE % (fifo, 'a FIFO (named pipe)')))
    assert not dest.exists()


def test_a_missing_pcap_is_noted(tmp_path):
    missing = str(tmp_path / 'gone.pcap')
    report, _text = write_experiment(str(tmp_path / 'r1'), good_data(pcaps=[missing]))
    assert _report.MSG_PCAP_MISSING % missing in report['notes']


# ---------------------------------------------------------------- what the capture holds when a process died (item 10)

def fin_before_any_probe(tmp_path):
    """The server's program exits 1 s after the handshake: FIN from the server, then from the client."""
    pkts = []
    c = gen.Conv(pkts, client=(gen.C4, 22345), server=(gen.S4, 12345))
    c.handshake(0.0)
    c.seg(1.0, 's', 'FA')
    c.seg(1.001, 'c', 'FA')
    c.seg(1.002, 's', 'A')
    return gen.write_capture(tmp_path / 'h1.pcap', pkts)


def test_the_report_says_how_the_connection_ended(tmp_path):
    """Before: 'the capture holds no connection from the client port' (the capture host's analysis lists only
    connections with keepalive activity) although the pcap holds the handshake and the FINs."""
    pcap = fin_before_any_probe(tmp_path)
    closed = {'state': 'closed', 'errno': None, 'error': 'the server closed the connection'}
    report, text = write_experiment(str(tmp_path / 'r1'), good_data(
        analysis=_pcap.analyse(pcap, expect=EXPECT), client=closed, pcaps=[pcap]))
    name = '198.18.0.1:22345 -> 198.18.0.2:12345'
    assert report['reasons'][0] == _report.MSG_ENDED % (name, 'FIN', 'server', '198.18.0.2:12345', 1.0,
                                                        _pcap_wait.HINTS[('FIN', 'server')], 0, 0)
    assert not any('holds no connection' in reason for reason in report['reasons'])
    assert report['observed']['connection_found'] is True
    assert report['observed']['end'] == {'by': 'FIN', 'from': 'server', 'endpoint': '198.18.0.2:12345', 'time': 1.0,
                                         'after_start': 1.0, 'flags': 'FIN|ACK', 'connection': name}
    assert _report.MSG_LOCAL_ANALYSIS % (22345, 'h1.pcap') in report['notes']
    assert '- connection: found, ended by a FIN from the server (198.18.0.2:12345) at +1.000 s' in text
    assert '   +1.000 s  server > client  FIN|ACK: the server closed the connection' in text


def test_no_analysis_is_not_called_an_empty_capture():
    observed = observe({}, 22345)
    verdict, reasons = judge(EXPECT, observed, {}, 1, TOL)
    assert _report.MSG_NO_ANALYSIS in reasons
    assert not any('holds no connection' in reason for reason in reasons)


# ---------------------------------------------------------------- pcaps handed over as content (experiment_host)

PCAP = Path(__file__).parent / 'data' / 'time300-probe-copy.pcap'


def test_pcap_files_are_written_where_data_pcaps_names_them(tmp_path):
    dest = tmp_path / 'reports' / 'r1'
    content = base64.b64encode(PCAP.read_bytes()).decode('ascii')
    report, _text = write_experiment(str(dest), good_data(pcaps=[str(dest / 'vm1.pcap')]),
                                     [{'name': 'vm1', 'content': content}])
    assert (dest / 'vm1.pcap').read_bytes() == PCAP.read_bytes()
    assert report['pcaps'] == [str(dest / 'vm1.pcap')] and not any('not found' in n for n in report['notes'])
    assert sorted(p.name for p in dest.iterdir()) == ['report.json', 'report.md', 'timeline.png', 'vm1.pcap']


@pytest.mark.parametrize('item, message', [
    ({'name': '../x', 'content': ''}, _report_input.MSG_PCAP_FILE_NAME % ('../x',)),
    ({'name': '..', 'content': ''}, _report_input.MSG_PCAP_FILE_NAME % ('..',)),
    ({'name': '', 'content': ''}, _report_input.MSG_PCAP_FILE_NAME % ('',)),
    ({'name': 'vm1', 'content': 'not base64!'}, None),
], ids=['slash', 'dotdot', 'empty', 'not-base64'])
def test_bad_pcap_files_are_refused_before_anything_is_written(tmp_path, item, message):
    dest = tmp_path / 'reports' / 'r1'
    good = {'name': 'vm0', 'content': base64.b64encode(b'\xd4\xc3\xb2\xa1').decode('ascii')}
    with pytest.raises(_report.ReportError) as exc:
        write_experiment(str(dest), good_data(), [good, item])
    if message:
        assert str(exc.value) == message
    else:
        assert str(exc.value).startswith(_report_input.MSG_PCAP_FILE_CONTENT.split('%s', 1)[0] + 'vm1 must be')
    assert not (tmp_path / 'reports').exists()


def test_pcap_files_stay_when_the_report_fails_later(tmp_path, monkeypatch):
    dest = tmp_path / 'r1'

    def broken(*_args, **_kwargs):
        raise _report.ReportError('rendering failed')
    monkeypatch.setattr(_report, 'markdown', broken)
    with pytest.raises(_report.ReportError):
        write_experiment(str(dest), good_data(pcaps=[str(dest / 'vm1.pcap')]),
                         [{'name': 'vm1', 'content': base64.b64encode(PCAP.read_bytes()).decode('ascii')}])
    # the run's evidence, no longer on its host, is kept; no report file was written
    assert sorted(p.name for p in dest.iterdir()) == ['vm1.pcap']
