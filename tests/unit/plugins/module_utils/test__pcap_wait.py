# Unit tests of pcap_info's wait_for: the condition logic over analysis
# results, and the timing loop with a fake clock (no real waiting).
from __future__ import annotations

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
    assert got['waited'] == {'met': True, 'ended': False, 'seconds': 1.0, 'answered': 2, 'unanswered': 0}


def test_wait_times_out_without_failing(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_pcap_wait, 'analyse', lambda path, **kw: result(1))
    got = wait_for('x.pcap', {'port': 22345, 'answered': 2, 'timeout': 2, 'interval': 0.5}, clock, clock.sleep)
    assert got['waited']['met'] is False and got['waited']['seconds'] == 2.0


def test_wait_stops_when_the_connection_ends(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_pcap_wait, 'analyse', lambda path, **kw: result(1, 2, rst=True))
    got = wait_for('x.pcap', {'port': 22345, 'unanswered': 3, 'timeout': 5}, clock, clock.sleep)
    assert got['waited']['ended'] and not got['waited']['met'] and clock.now == 0.0


def test_unreadable_file_is_retried_then_reported(monkeypatch):
    clock = Clock()

    def broken(path, **kw):
        raise PcapError('not a pcap file: x.pcap')
    monkeypatch.setattr(_pcap_wait, 'analyse', broken)
    with pytest.raises(PcapError):
        wait_for('x.pcap', {'port': 22345, 'answered': 1, 'timeout': 1, 'interval': 0.25}, clock, clock.sleep)
    assert clock.now >= 1
