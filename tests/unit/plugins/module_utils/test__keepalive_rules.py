# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kernel's keepalive timer rules (issue 13, section 4): the predictor (_keepalive_rules) as pure functions, the
judge (_pcap) over generated captures that follow or break the rules, and the expected timeline of the report and
the keepalive_eta filter. The sweep against the real kernel is test__keepalive_rules_kernel.py."""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.filter import keepalive as kf
from ansible_collections.tcplab.keepalive.plugins.module_utils import _keepalive_rules as kr
from ansible_collections.tcplab.keepalive.plugins.module_utils import _report
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import analyse

_spec = importlib.util.spec_from_file_location('tcplab_test__keepalive_rules', str(Path(__file__).with_name('test__pcap.py')))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

HZ = 250


# ---------------------------------------------------------------- the timer wheel

@pytest.mark.parametrize('seconds, hz, gran_ms', [
    # the kernel's own table (kernel/time/timer.c): granularity by the range of the delay
    (0.1, 250, 4), (1, 250, 32), (2, 250, 32), (3, 250, 256), (16, 250, 256), (17, 250, 2048), (30, 250, 2048),
    (131, 250, 16384), (7200, 250, 131072),
    (1, 1000, 64), (30, 1000, 512), (7200, 1000, 262144),
    (1, 300, 26.667), (3, 300, 213.333), (30, 300, 1706.667),
    (1, 100, 80), (30, 100, 640), (7200, 100, 327680),
])
def test_lateness_is_the_wheel_granularity_at_the_delay(seconds, hz, gran_ms):
    assert kr.lateness(seconds, hz) == pytest.approx(gran_ms / 1000.0 + kr.SOFTIRQ, abs=1e-3)


def test_a_30_s_keepalive_may_come_about_31_2_s_after_the_last_segment():
    pred = kr.next_probe({'time': 30, 'intvl': 3}, 100.0, hz=HZ)
    low, high = pred.window(0.25, 0.25)   # tolerance 0.25 s and 0 percent
    assert (pred.due, pred.rule) == (130.0, kr.IDLE)
    assert low == 129.75 and 131.2 < high == pytest.approx(132.3, abs=1e-3) and not 129.7 >= low
    # the default tolerance (0.25 s + 10 %) is wider than the wheel: it stays the bound
    assert pred.window(3.25, 0.25) == (126.75, 133.25)


def test_kernel_hz_reads_the_config(tmp_path, monkeypatch):
    boot = tmp_path / 'boot'
    boot.mkdir()
    proc = tmp_path / 'config.gz'
    assert kr.kernel_hz(str(boot), str(proc)) == kr.DEFAULT_HZ == 250       # neither there
    with gzip.open(str(proc), 'wt') as handle:
        handle.write('CONFIG_NO_HZ=y\nCONFIG_HZ_1000=y\nCONFIG_HZ=1000\n')
    assert kr.kernel_hz(str(boot), str(proc)) == 1000
    (boot / ('config-' + os.uname().release)).write_text('# CONFIG_HZ_300 is not set\n')
    assert kr.kernel_hz(str(boot), str(proc)) == 1000                        # no CONFIG_HZ line: the next source
    (boot / ('config-' + os.uname().release)).write_text('CONFIG_HZ_300=y\nCONFIG_HZ=300\n')
    assert kr.kernel_hz(str(boot), str(proc)) == 300


# ---------------------------------------------------------------- the rules

V = {'time': 1, 'intvl': 3, 'probes': 4}


@pytest.mark.parametrize('values, last_rx, previous, answered, due, rule', [
    ({'time': 1, 'intvl': 3}, 10.0, None, False, 11.0, kr.IDLE),
    ({'time': 1, 'intvl': 3}, 10.0, 11.0, False, 14.0, kr.RETRY),
    # the issue's case: the answer resets the count, not the timer re-armed with intvl when probe 1 left
    ({'time': 1, 'intvl': 3}, 11.0001, 11.0, True, 14.0, kr.ANSWERED_INTVL),
    # intvl below time: the timer fires at +intvl, idle too short, re-armed for the remainder
    ({'time': 3, 'intvl': 1}, 13.0001, 13.0, True, 16.0001, kr.ANSWERED_IDLE),
    ({'time': 2, 'intvl': 2}, 10.001, 10.0, True, 12.001, kr.ANSWERED_IDLE),
])
def test_next_probe_rules(values, last_rx, previous, answered, due, rule):
    pred = kr.next_probe(values, last_rx, previous, answered, hz=HZ)
    assert (pred.due, pred.rule) == (pytest.approx(due), rule)


def test_lateness_of_a_re_armed_timer():
    # 3/1: fired at +1 s, re-armed for 2 s: the wheel's 2 s granularity (32 ms), not the 3 s one (256 ms)
    pred = kr.next_probe({'time': 3, 'intvl': 1}, 13.0001, 13.0, True, hz=HZ)
    assert pred.late == pytest.approx(kr.lateness(2, HZ))
    # 2/2, answered 1 ms later: fired at +2 s (up to 34 ms late, maybe past the due time: then it sends at once)
    pred = kr.next_probe({'time': 2, 'intvl': 2}, 10.001, 10.0, True, hz=HZ)
    assert pred.late == pytest.approx(12.0 + kr.lateness(2, HZ) - 12.001)


def test_missing_values_predict_nothing():
    assert kr.next_probe({'intvl': 3}, 10.0) is None
    assert kr.next_probe({'time': 3}, 10.0, 11.0, False) is None
    assert kr.next_probe({'time': 3}, 11.5, 11.0, True) is None
    assert kr.next_probe({'time': 3, 'intvl': 1}, None) is None


@pytest.mark.parametrize('values, answered, dues, rules', [
    (V, 1, [1, 4, 7, 10, 13, 16], [kr.IDLE, kr.ANSWERED_INTVL, kr.RETRY, kr.RETRY, kr.RETRY, kr.RST]),
    ({'time': 3, 'intvl': 1, 'probes': 2}, 2, [3, 6, 9, 10, 11], [kr.IDLE, kr.ANSWERED_IDLE, kr.ANSWERED_IDLE, kr.RETRY, kr.RST]),
    ({'time': 2, 'intvl': 1, 'probes': 3}, 0, [2, 3, 4, 5], [kr.IDLE, kr.RETRY, kr.RETRY, kr.RST]),
])
def test_schedule(values, answered, dues, rules):
    events = kr.schedule(values, answered, hz=HZ)
    assert [p.due for _phase, _n, p in events] == dues
    assert [p.rule for _phase, _n, p in events] == rules
    assert [phase for phase, _n, _p in events] == ['answered'] * answered + ['unanswered'] * values['probes'] + ['rst']


# ---------------------------------------------------------------- the judge

def _capture(tmp_path, times, answered, rst_at=None):
    """A client's probes at `times` (seconds), the first `answered` of them answered 0.1 ms later."""
    pkts = []
    c = gen.Conv(pkts)
    c.handshake(0.0)
    for index, t in enumerate(times):
        c.probe(t)
        if index < answered:
            c.seg(t + 0.0001, 's', 'A')
    if rst_at is not None:
        c.seg(rst_at, 'c', 'RA')
    path = tmp_path / 'c.pcap'
    gen.write_capture(path, pkts)
    return str(path)


def _prober(result):
    return result['connections'][0]['probers'][0]


def test_the_issue_case_passes_with_rules_and_expected_times(tmp_path):
    """1/3/4 with one answered probe: probe 2 leaves 3 s after probe 1 (before: 'probe 2 came 3.168 s after the last
    segment from the peer, expected time 1 s ± 0.35 s')."""
    path = _capture(tmp_path, [1.0203, 4.1883, 7.2603, 10.3323, 13.4043], 1, rst_at=16.4763)
    result = analyse(path, expect=V)
    prober = _prober(result)
    assert result['verdict'] == 'pass', result['reasons']
    assert [p['rule'] for p in prober['probes']] == [kr.IDLE, kr.ANSWERED_INTVL, kr.RETRY, kr.RETRY, kr.RETRY]
    start = result['start']
    assert prober['probes'][1]['expected'] == pytest.approx(gen.T0 + 1.0203 + 3 - start, abs=1e-6)
    assert prober['probes'][0]['expected'] == pytest.approx(gen.T0 + 0.0001 + 1 - start, abs=1e-6)


def test_a_probe_too_early_for_the_kernel_fails_naming_the_rule(tmp_path):
    # 1/3/4: probe 2 one second after the answer: the kernel's timer was re-armed with 3 s when probe 1 left
    path = _capture(tmp_path, [1.02, 2.03, 5.1, 8.1, 11.1], 1, rst_at=14.1)
    reasons = _prober(analyse(path, expect=V))['reasons']
    assert reasons[0] == ('probe 2 came 1.01 s after probe 1, expected 3 s ± 0.55 s (%s; due at 4.02 s)'
                          % kr.ANSWERED_INTVL)
    assert len(reasons) == 1


def test_the_wheel_is_not_a_per_socket_override(tmp_path):
    """A 30 s keepalive 31.2 s after the last segment, tolerance 0.25 s and 0 %: the wheel's lateness, not a
    TCP_KEEPIDLE of 31 s; 32.5 s is too late even for the wheel."""
    expect = {'time': 30, 'intvl': 3, 'probes': 1}
    tight = {'seconds': 0.25, 'percent': 0}
    result = analyse(_capture(tmp_path, [31.2], 0, rst_at=34.25), expect=expect, tolerance=tight)
    assert result['verdict'] == 'pass', result['reasons']
    reasons = _prober(analyse(_capture(tmp_path, [32.5], 0, rst_at=35.55), expect=expect, tolerance=tight))['reasons']
    assert reasons == ["idle time fits a per-socket TCP_KEEPIDLE of 32 s, not the sysctl's 30 s",
                       'probe 1 came 32.5 s after the last segment from the peer, expected 30 s -0.25/+2.3 s (%s; '
                       'due at 30 s)' % kr.IDLE]


# ---------------------------------------------------------------- the expected timeline: report and filter

@pytest.mark.parametrize('values, phase, number, answered, eta', [
    (V, 'answered', 2, 0, 4),             # 1 + 3: the second answered probe waits for intvl
    ({'time': 2, 'intvl': 1, 'probes': 3}, 'answered', 2, 0, 4),
    (V, 'unanswered', 1, 1, 3),           # after an answered probe: max(time, intvl) from the last answered segment
    (V, 'unanswered', 1, 0, 1),
    (V, 'unanswered', 4, 1, 12),
    (V, 'rst', 5, 1, 15),
    ({'time': 3, 'intvl': 1, 'probes': 2}, 'unanswered', 1, 2, 3),
])
def test_keepalive_eta_follows_the_rules(values, phase, number, answered, eta):
    assert kf.keepalive_eta(values, phase, number, answered) == eta


def test_the_report_timeline_says_when_each_probe_was_due():
    probes = [{'time': 1.02, 'answered': True, 'after': 1.02, 'expected': 1.0, 'rule': kr.IDLE},
              {'time': 4.19, 'answered': False, 'after': 3.17, 'expected': 4.02, 'rule': kr.ANSWERED_INTVL}]
    observed = {'connection_found': True, 'connection_start': 0.0, 'unanswered_probes': 1, 'probes': probes,
                'rst': None, 'fin': None}
    lines = _report.timeline(observed, {}, None, None, V)
    texts = [what for _t, _who, what in lines]
    assert texts[1] == 'keepalive probe (idle 1.020 s), answered; due +1.000 s (%s)' % kr.IDLE
    assert texts[2] == 'keepalive probe 1/4  unanswered; due +4.020 s (%s)' % kr.ANSWERED_INTVL
