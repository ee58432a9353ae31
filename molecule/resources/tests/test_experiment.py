"""Verify an experiment scenario: the verdict, the capture judged independently
by tshark, the client's ETIMEDOUT, and that every host was put back."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (pytest.ini's importlib mode adds no test directory)
from scenario_files import REPORTS, report as run_report, scenario_vars  # noqa: E402 pylint: disable=wrong-import-position

SCENARIO = os.environ['MOLECULE_SCENARIO_NAME']
VARS = scenario_vars('experiment.yml')
REPORT_DIR = os.path.join(REPORTS, SCENARIO)
CLIENT_PORT = VARS.get('experiment_client_port', 22345)
TOLERANCE = 0.25 + 0.1


@pytest.fixture(scope='module')
def report():
    return run_report(SCENARIO)


def test_verdict_pass(report):
    assert report['verdict'] == 'pass', report['reasons']
    assert report['settings'] == VARS['experiment_keepalive']
    if VARS.get('experiment_client_kind') == 'curl':
        assert 'curl' in report['governs'] and 'override the sysctls' in report['governs']


def tshark(pcap, display_filter, fields):
    out = subprocess.run(['tshark', '-r', pcap, '-Y', display_filter, '-T', 'fields'] + sum((['-e', f] for f in fields), []),
                         check=True, capture_output=True, text=True).stdout
    return [line.split('\t') for line in out.splitlines() if line]


def test_capture_judged_by_tshark(report):
    expect = report['expected']
    pcap = report['pcaps'][0]
    probe_filter = 'tcp.analysis.keep_alive && tcp.srcport == %d' % CLIENT_PORT
    probes = [float(t) for t, in tshark(pcap, probe_filter, ['frame.time_relative'])]
    # a probe is answered when the server sends anything before the next probe
    # (Wireshark calls the first answer a window update, later ones Keep-Alive ACKs)
    answers = [float(t) for t, in tshark(pcap, 'tcp.dstport == %d' % CLIENT_PORT, ['frame.time_relative'])]
    bounds = probes[1:] + [float('inf')]
    unanswered = [p for p, nxt in zip(probes, bounds) if not any(p < a < nxt for a in answers)]
    acks = answers
    assert len(unanswered) == expect['probes'], (probes, acks)
    gaps = [b - a for a, b in zip(unanswered, unanswered[1:])]
    assert all(abs(gap - expect['intvl']) <= TOLERANCE + 0.1 * expect['intvl'] for gap in gaps), gaps
    rsts = tshark(pcap, 'tcp.flags.reset == 1', ['frame.time_relative', 'tcp.srcport', 'tcp.flags'])
    assert len(rsts) == 1, rsts
    at, sport, flags = rsts[0]
    assert int(sport) == CLIENT_PORT, 'the RST must come from the client'
    assert int(flags, 16) & 0x14 == 0x14, 'the final segment is RST|ACK'
    assert abs(float(at) - unanswered[-1] - expect['intvl']) <= TOLERANCE + 0.1 * expect['intvl']


def test_client_timed_out(report):
    assert report['client']['errno'] == 'ETIMEDOUT'
    if VARS.get('experiment_client_kind') == 'curl':
        assert report['client']['exit_code'] == 56


def test_host_put_back(host):
    for key, value in (('time', 7200), ('intvl', 75), ('probes', 9)):
        assert int(host.file('/proc/sys/net/ipv4/tcp_keepalive_%s' % key).content_string) == value
    for tool in ('iptables', 'ip6tables'):
        assert 'tcplab-keepalive' not in host.run('%s -w 10 -S' % tool).stdout


def test_no_experiment_process_left():
    out = subprocess.run(['ps', '-eo', 'args'], check=True, capture_output=True, text=True).stdout
    left = [line for line in out.splitlines()
            if 'tcplab-keepalive-endpoint' in line or 'tcplab-keepalive-capture' in line or 'drop-rule-timer' in line]
    assert left == []
