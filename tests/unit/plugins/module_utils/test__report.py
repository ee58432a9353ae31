# Unit tests of the experiment verdict and report rendering, over an analysis
# shaped like tcplab.keepalive.capture's (pure functions, no kernel needed).
from __future__ import annotations

import json

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils._report import judge, observe, timeline, write_experiment

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
            'rst': {'from': rst_from, 'time': rst_time, 'flags': 'RST|ACK',
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
    verdict, reasons = judge(EXPECT, EXPECT, observed, CLIENT_OK, 2, TOL)
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
    verdict, reasons = judge(EXPECT, EXPECT, observe(analysis(**kw), 22345), client, 2, TOL)
    assert verdict == 'fail' and reason in reasons


def test_no_connection():
    verdict, reasons = judge(EXPECT, EXPECT, observe({}, 22345), {}, 1, TOL, error='capture failed')
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
