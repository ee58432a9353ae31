# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Unit tests of pcap_info's wait_for: the condition logic over analysis
# results, and the timing loop with a fake clock (no real waiting); an early
# end (FIN, RST) over a generated capture, and over a real one: a server
# killed mid-run in a network namespace tkpc-<random> (root needed).
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _pcap_wait
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap_wait import met, prober_state, wait_for


def result(answered=0, unanswered=0, rst=False, port=22345):
    return {'connections': [{
        'endpoints': ['127.0.0.1:%d' % port, '127.0.0.1:12345'],
        'rst': {'from': '127.0.0.1:%d' % port} if rst else None,
        'probers': [{'endpoint': '127.0.0.1:%d' % port, 'answered': answered, 'final_unanswered': unanswered}],
    }]}


def test_prober_state():
    assert prober_state(result(2, 1), 22345) == (2, 1, False)
    assert prober_state(result(2, 3, rst=True), 22345) == (2, 3, True)
    assert prober_state(result(2, 3, rst=True), 9999) == (0, 0, False)


@pytest.mark.parametrize('cond, state, expected', [
    ({'answered': 2}, (1, 0, False), False),
    ({'answered': 2}, (2, 0, False), True),
    ({'unanswered': 3}, (2, 2, False), False),
    ({'unanswered': 3}, (2, 3, False), True),
    ({'rst': True}, (2, 3, False), False),
    ({'rst': True}, (2, 3, True), True),
])
def test_met(cond, state, expected):
    assert met(cond, *state) is expected


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_until_met(monkeypatch):
    clock = Clock()
    answers = iter([result(0), result(1), result(2)])
    monkeypatch.setattr(_pcap_wait, 'analyse', lambda path, **kw: next(answers))
    got = wait_for('x.pcap', {'port': 22345, 'answered': 2, 'timeout': 5, 'interval': 0.5}, clock, clock.sleep)
    assert got['waited'] == {'met': True, 'ended': False, 'seconds': 1.0, 'answered': 2, 'unanswered': 0, 'end': None,
                             'unexpected_end': False,
                             'reason': _pcap_wait.MSG_MET % ('1', 'answered keepalive probe 2', 2, 0)}
    assert got['msg'] == got['waited']['reason']


def test_wait_times_out_without_failing(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_pcap_wait, 'analyse', lambda path, **kw: result(1))
    got = wait_for('x.pcap', {'port': 22345, 'answered': 2, 'timeout': 2, 'interval': 0.5}, clock, clock.sleep)
    assert got['waited']['met'] is False and got['waited']['seconds'] == 2.0
    # a retried task that runs out of attempts shows this, not Ansible's "Unknown error"
    assert got['msg'] == _pcap_wait.MSG_OPEN % ('2', 'answered keepalive probe 2', 1, 0, None)


def test_wait_stops_when_the_connection_ends(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_pcap_wait, 'analyse', lambda path, **kw: result(1, 2, rst=True))
    got = wait_for('x.pcap', {'port': 22345, 'unanswered': 3, 'timeout': 5}, clock, clock.sleep)
    assert got['waited']['ended'] and not got['waited']['met'] and clock.now == 0.0


def test_missing_file_is_retried_then_reported(monkeypatch):
    clock = Clock()

    def not_yet(path, **kw):
        raise PcapError('pcap file x.pcap not found', transient=True)
    monkeypatch.setattr(_pcap_wait, 'analyse', not_yet)
    with pytest.raises(PcapError):
        wait_for('x.pcap', {'port': 22345, 'answered': 1, 'timeout': 1, 'interval': 0.25}, clock, clock.sleep)
    assert clock.now >= 1


def test_other_errors_fail_at_once(monkeypatch):
    clock = Clock()

    def broken(path, **kw):
        raise PcapError('x.pcap is a FIFO (named pipe), not a regular file')
    monkeypatch.setattr(_pcap_wait, 'analyse', broken)
    with pytest.raises(PcapError):
        wait_for('x.pcap', {'port': 22345, 'answered': 1, 'timeout': 5, 'interval': 0.25}, clock, clock.sleep)
    assert clock.now == 0.0


# ---------------------------------------------------------------- a connection that ends early (issue 10, item 10)

CLIENT, SERVER = '198.18.0.1:40000', '198.18.0.2:12345'
NAME = '%s -> %s' % (CLIENT, SERVER)


def ended(by, frm, after_probes=0, answered=2, unanswered=0, time=5.3):
    end = {'from': frm, 'to': SERVER if frm == CLIENT else CLIENT, 'frame': 9, 'time': time,
           'flags': by + '|ACK'}
    conn = {'name': NAME, 'endpoints': [CLIENT, SERVER], 'start': 0.25, 'rst': None, 'fin': None,
            'probers': [{'endpoint': CLIENT, 'answered': answered, 'final_unanswered': unanswered}]}
    if by == 'RST':
        end['after_probes'] = after_probes
        conn['rst'] = end
    else:
        conn['fin'] = end
    return {'connections': [conn]}


@pytest.mark.parametrize('analysis, cond, met_, unexpected, hint', [
    (ended('FIN', SERVER), {'unanswered': 1}, False, True, _pcap_wait.HINTS[('FIN', 'server')]),
    (ended('FIN', CLIENT), {'answered': 3}, False, True, _pcap_wait.HINTS[('FIN', 'client')]),
    (ended('RST', SERVER), {'rst': True}, False, True, _pcap_wait.HINTS[('RST', 'server')]),
    (ended('RST', CLIENT), {'unanswered': 1}, False, True, _pcap_wait.HINTS[('RST', 'client')]),
    # the client gave up after 2 unanswered probes while 3 were awaited: keepalive's own ending (the verdict judges)
    (ended('RST', CLIENT, 2, unanswered=2), {'unanswered': 3}, False, False, _pcap_wait.HINT_GAVE_UP % (2, 's')),
    # ... but while answered probes were awaited (before the DROP) the server stopped answering: unexpected
    (ended('RST', CLIENT, 3, unanswered=3), {'answered': 3}, False, True, _pcap_wait.HINT_GAVE_UP % (3, 's')),
], ids=['server-fin', 'client-fin', 'server-rst', 'client-abort', 'client-gave-up', 'gave-up-before-drop'])
def test_an_early_end_says_how(analysis, cond, met_, unexpected, hint):
    cond = dict(cond, port=40000)
    waited = _pcap_wait.judge_wait(analysis, cond, 0.5)
    conn = analysis['connections'][0]
    end = conn['rst'] or conn['fin']
    assert waited['met'] is met_ and waited['ended'] is True and waited['unexpected_end'] is unexpected
    who = 'client' if end['from'] == CLIENT else 'server'
    assert waited['end']['from'] == who and waited['end']['after_start'] == 5.05
    assert waited['reason'] == _pcap_wait.MSG_ENDED % (
        NAME, end['flags'][:3], who, end['from'], '5.05', hint, _pcap_wait.awaited(cond),
        conn['probers'][0]['answered'], conn['probers'][0]['final_unanswered'])


def test_the_fin_message_reads_well():
    waited = _pcap_wait.judge_wait(ended('FIN', SERVER), {'port': 40000, 'unanswered': 2}, 0.5)
    assert waited['reason'] == (
        'the connection 198.18.0.1:40000 -> 198.18.0.2:12345 ended with a FIN from the server (198.18.0.2:12345) at '
        '+5.05 s (the server process stopped or closed the connection?) before unanswered keepalive probe 2 was seen '
        '(2 answered and 0 unanswered probes by then)')


def test_rst_is_met_by_the_clients_rst_only():
    """The old wait took any RST - the server's too - for the client's keepalive RST."""
    assert _pcap_wait.judge_wait(ended('RST', CLIENT, 3, unanswered=3), {'port': 40000, 'rst': True}, 1)['met'] is True
    assert _pcap_wait.judge_wait(ended('RST', SERVER), {'port': 40000, 'rst': True}, 1)['met'] is False


@pytest.mark.parametrize('cond, message', [
    ({'port': 0, 'answered': 1}, _pcap_wait.MSG_WAIT_PORT % 0),
    ({'port': 70000, 'answered': 1}, _pcap_wait.MSG_WAIT_PORT % 70000),
    ({'port': None, 'answered': 1}, _pcap_wait.MSG_WAIT_PORT % None),
    ({'port': 1, 'answered': 0}, _pcap_wait.MSG_WAIT_COUNT % ('answered', 1000000, 0)),
    ({'port': 1, 'answered': -2}, _pcap_wait.MSG_WAIT_COUNT % ('answered', 1000000, -2)),
    ({'port': 1, 'unanswered': 128}, _pcap_wait.MSG_WAIT_COUNT % ('unanswered', 127, 128)),
    ({'port': 1, 'answered': 1, 'timeout': -1.0}, _pcap_wait.MSG_WAIT_SECONDS % ('timeout', 0, 3600, -1.0)),
    ({'port': 1, 'answered': 1, 'timeout': float('nan')},
     _pcap_wait.MSG_WAIT_SECONDS % ('timeout', 0, 3600, float('nan'))),
    ({'port': 1, 'answered': 1, 'timeout': 86400.0}, _pcap_wait.MSG_WAIT_SECONDS % ('timeout', 0, 3600, 86400.0)),
    ({'port': 1, 'answered': 1, 'interval': 0.0}, _pcap_wait.MSG_WAIT_SECONDS % ('interval', 0.01, 60, 0.0)),
    ({'port': 1, 'answered': 1, 'interval': -3.0}, _pcap_wait.MSG_WAIT_SECONDS % ('interval', 0.01, 60, -3.0)),
    ({'port': 1, 'rst': False}, _pcap_wait.MSG_WAIT_NOTHING),
    ({'port': 1, 'answered': 1, 'probes': 3}, _pcap_wait.MSG_WAIT_KEYS % 'probes'),
])
def test_bad_wait_options(cond, message):
    with pytest.raises(PcapError) as exc:
        wait_for('never-read.pcap', cond, Clock(), Clock().sleep)
    assert str(exc.value) == message


def _server_fin_capture(tmp_path):
    spec = importlib.util.spec_from_file_location('tcplab_test__pcap_w', str(Path(__file__).with_name('test__pcap.py')))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    pkts = []
    c = gen.Conv(pkts)
    c.handshake(0.0)       # no probe before the server's program exits: the old wait never listed the connection
    c.seg(1.0, 's', 'FA')
    c.seg(1.001, 'c', 'FA')
    c.seg(1.002, 's', 'A')
    return gen.write_capture(tmp_path / 'fin.pcap', pkts)


def test_wait_on_a_real_file_returns_at_once_with_the_reason(tmp_path):
    clock = Clock()
    got = wait_for(_server_fin_capture(tmp_path), {'port': 40000, 'answered': 1, 'timeout': 5}, clock, clock.sleep)
    assert clock.now == 0.0
    assert got['waited']['ended'] is True and got['waited']['unexpected_end'] is True
    assert got['waited']['end'] == {'by': 'FIN', 'from': 'server', 'endpoint': SERVER, 'time': 1.0, 'after_start': 1.0,
                                    'flags': 'FIN|ACK'}
    assert got['msg'] == _pcap_wait.MSG_ENDED % (NAME, 'FIN', 'server', SERVER, '1', _pcap_wait.HINTS[('FIN', 'server')],
                                                 'answered keepalive probe 1', 0, 0)


# ---------------------------------------------------------------- the kernel: a server killed mid-run

LIVE = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ('ip', 'tcpdump')),
                          reason='needs root, iproute2 and tcpdump (a network namespace and a real capture)')
SERVER_CODE = r'''
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.40.2", 40001))
s.listen()
print("ready", flush=True)
held = []
while True:
    held.append(s.accept()[0])
'''
# the experiment's Python client: SO_KEEPALIVE, blocks in recv() until the connection ends
CLIENT_CODE = r'''
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.bind(("198.19.40.1", 40002))
s.connect(("198.19.40.2", 40001))
print("connected", flush=True)
while s.recv(65536):
    pass
'''


@LIVE
def test_a_killed_server_is_noticed_at_once(tmp_path):
    """Keepalive sysctls 1/1/3 in namespace tkpc-<random>; one answered probe; the server killed with SIGKILL. The
    wait for unanswered probe 1 (5 s budget) returns when the FINs are in the file, naming the server."""
    ns = 'tkpc-%s' % secrets.token_hex(4)
    pcap = str(tmp_path / 'live.pcap')
    procs = []
    subprocess.run(['ip', 'netns', 'add', ns], check=True)
    try:
        inside = ['ip', 'netns', 'exec', ns]
        subprocess.run(['ip', '-n', ns, 'link', 'set', 'lo', 'up'], check=True)
        for addr in ('198.19.40.1/32', '198.19.40.2/32'):
            subprocess.run(['ip', '-n', ns, 'addr', 'add', addr, 'dev', 'lo'], check=True)
        for key, value in (('time', 1), ('intvl', 1), ('probes', 3)):
            subprocess.run(inside + ['sysctl', '-qw', 'net.ipv4.tcp_keepalive_%s=%d' % (key, value)], check=True)
        dump = subprocess.Popen(inside + ['tcpdump', '-i', 'lo', '-n', '-U', '--immediate-mode', '-Z', 'root', '-w', pcap,
                                          'tcp port 40001'], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        procs.append(dump)
        assert b'listening on lo' in dump.stderr.readline()
        server = subprocess.Popen(inside + [sys.executable, '-c', SERVER_CODE], stdout=subprocess.PIPE)
        procs.append(server)
        assert server.stdout.readline() == b'ready\n'
        client = subprocess.Popen(inside + [sys.executable, '-c', CLIENT_CODE], stdout=subprocess.PIPE)
        procs.append(client)
        assert client.stdout.readline() == b'connected\n'
        first = wait_for(pcap, {'port': 40002, 'answered': 1, 'timeout': 10})
        assert first['waited']['met'], first['msg']
        server.kill()                       # the process this test started, by its pid
        server.wait()
        started = time.monotonic()
        got = wait_for(pcap, {'port': 40002, 'unanswered': 1, 'timeout': 5})
        took = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        subprocess.run(['ip', 'netns', 'del', ns], check=True)
    assert took < 4.5, got["msg"]   # the budget is 5 s: the old wait used it all
    waited = got['waited']
    assert waited['met'] is False and waited['unexpected_end'] is True
    assert waited['end']['by'] == 'FIN' and waited['end']['from'] == 'server'
    assert waited['end']['endpoint'] == '198.19.40.2:40001' and waited['answered'] >= 1
    assert got['msg'].startswith('the connection 198.19.40.1:40002 -> 198.19.40.2:40001 ended with a FIN from the '
                                 'server (198.19.40.2:40001) at +')
    assert 'the server process stopped or closed the connection?' in got['msg']
    assert got['msg'].endswith('before unanswered keepalive probe 1 was seen (%d answered and 0 unanswered probes by '
                               'then)' % waited['answered'])


def test_a_capture_that_ends_right_after_an_analysis_is_judged_on_its_final_file(monkeypatch):
    """The sniffer wrote its last segments and ended between the analysis and the look at it: the wait judges the
    final file once more instead of reporting the capture gone with the condition unmet."""
    clock = Clock()
    analyses = iter([result(1), result(2)])
    monkeypatch.setattr(_pcap_wait, 'analyse', lambda path, **kw: next(analyses))
    gone = {'running': False, 'pid': 4242, 'finished': {'reason': 'max_seconds'}, 'died': None}
    got = wait_for('x.pcap', {'port': 22345, 'answered': 2, 'timeout': 5, 'interval': 0.5}, clock, clock.sleep,
                   alive=lambda: gone)
    assert got['waited']['met'] is True and got['waited']['unexpected_end'] is False and clock.now == 0.0, got
    # and when the final file does not meet it either, the wait ends at once saying the capture has gone
    analyses = iter([result(1), result(1)])
    got = wait_for('x.pcap', {'port': 22345, 'answered': 2, 'timeout': 5, 'interval': 0.5}, clock, clock.sleep,
                   alive=lambda: gone)
    assert got['waited']['ended'] and got['waited']['unexpected_end'] and clock.now == 0.0, got
    assert 'the capture writing it stopped (max_seconds)' in got['msg']
