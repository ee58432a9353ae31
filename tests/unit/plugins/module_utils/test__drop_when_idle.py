# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""drop_rule's when_idle wait over socket rows as inet_diag gives them, with a fake clock: the options checked, the
moment found, and each way it fails (gone, never there, never idle, no data times) - nothing waits for real here;
tests/unit/plugins/modules/test_drop_rule.py runs it for real."""

from __future__ import annotations

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _drop_when_idle as dwi


class Clock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def row(idle_s, state='ESTABLISHED', lport=5000, rport=22345, times=True):
    ms = int(idle_s * 1000) if times else None
    return {'lport': lport, 'rport': rport, 'state': state, 'last_data_sent_ms': ms, 'last_data_recv_ms': ms}


def reader(clock, rows_at):
    """read() giving rows_at(now) as inet_diag rows."""
    return lambda: (rows_at(clock.now), 'inet_diag', None)


SPEC = {'port': 5000, 'peer_port': 22345, 'seconds': 5.0, 'timeout': 30.0}


def test_the_rule_goes_in_once_the_connection_has_been_idle_long_enough():
    clock = Clock()

    # the connection's last data at t=-1 (idle 1 s when the wait starts); the client's other socket and a foreign
    # connection of the same port are not it
    def rows(now):
        return [row(now + 1.0, lport=22345, rport=5000), row(99, rport=40000), row(now + 1.0)]
    got = dwi.await_idle(SPEC, reader(clock, rows), clock, clock.sleep)
    assert got == {'idle_s': 5.0, 'waited_s': 4.0}
    assert max(clock.slept) <= dwi.POLL   # looked at least every POLL seconds, to see data in between


def test_data_restarts_the_idle_time():
    clock = Clock()

    # data at t=0 and again at t=3: idle 5 s only at t=8
    def rows(now):
        return [row(now if now < 3 else now - 3)]
    assert dwi.await_idle(SPEC, reader(clock, rows), clock, clock.sleep)['waited_s'] == 8.0


def test_a_connection_that_ends_fails_at_once():
    clock = Clock()

    def rows(now):
        return [row(now)] if now < 2 else [row(now, state='CLOSE_WAIT')]
    with pytest.raises(dwi.IdleError) as err:
        dwi.await_idle(SPEC, reader(clock, rows), clock, clock.sleep)
    assert str(err.value).startswith('the connection of port 5000 with peer port 22345 ended before the DROP')
    assert 2.0 <= clock.now < 2.3


def test_an_established_connection_gone_at_the_first_look_fails_at_once():
    # the server died before the wait began: the connection the caller saw up is not there
    clock = Clock()
    with pytest.raises(dwi.IdleError) as err:
        dwi.await_idle(dict(SPEC, established=True), reader(clock, lambda now: [row(now, state='CLOSE_WAIT')]),
                       clock, clock.sleep)
    assert str(err.value) == dwi.MSG_GONE_FIRST % (5000, 22345)
    assert str(err.value).startswith('the connection of port 5000 with peer port 22345 ended before the DROP')
    assert clock.now == 0.0
    # there at the first look, it is waited for as without the option
    clock = Clock()
    got = dwi.await_idle(dict(SPEC, established=True), reader(clock, lambda now: [row(now + 1.0)]), clock, clock.sleep)
    assert got == {'idle_s': 5.0, 'waited_s': 4.0}


def test_no_connection_and_no_idle_moment_fail_after_the_timeout():
    clock = Clock()
    with pytest.raises(dwi.IdleError) as err:
        dwi.await_idle(dict(SPEC, timeout=3), reader(clock, lambda now: []), clock, clock.sleep)
    assert str(err.value) == dwi.MSG_NEVER % (5000, 22345, 3.0)
    clock = Clock()
    with pytest.raises(dwi.IdleError) as err:
        dwi.await_idle(dict(SPEC, timeout=3), reader(clock, lambda now: [row(now % 1)]), clock, clock.sleep)
    assert str(err.value).startswith('the connection of port 5000 with peer port 22345 was not idle for 5.0 s within 3.0 s')


def test_without_data_times_it_says_so():
    clock = Clock()
    with pytest.raises(dwi.IdleError) as err:
        dwi.await_idle(SPEC, lambda: ([row(1, times=False)], 'proc', 'Operation not permitted'), clock, clock.sleep)
    assert 'inet_diag unavailable: Operation not permitted' in str(err.value) and 'leave it out' in str(err.value)


@pytest.mark.parametrize('spec, port', [
    ({'seconds': 5}, 5000),
    ({'peer_port': 0, 'seconds': 5}, 5000),
    ({'peer_port': 22345, 'seconds': -1}, 5000),
    ({'peer_port': 22345, 'seconds': 5}, '5000:5010'),
    ({'peer_port': 22345, 'seconds': 5, 'timeout': -2}, 5000),
], ids=['no-peer', 'peer-0', 'negative', 'range', 'timeout'])
def test_bad_options_are_refused(spec, port):
    with pytest.raises(dwi.IdleError) as err:
        dwi.check(spec, port)
    assert str(err.value).startswith('when_idle needs peer_port')


def test_options_normalised():
    assert dwi.check({'peer_port': '22345', 'seconds': '2.5', 'timeout': None}, '5000') == {
        'port': 5000, 'peer_port': 22345, 'seconds': 2.5, 'timeout': 60.0, 'established': False}
    assert dwi.check({'peer_port': 1, 'seconds': 0, 'established': True}, 5)['established'] is True


def test_a_wait_whose_caller_is_gone_inserts_nothing():
    clock = Clock()
    calls = []

    def orphaned():
        calls.append(clock.now)
        return clock.now >= 1.0   # the controller was killed a second into the wait

    with pytest.raises(dwi.IdleError) as err:
        dwi.await_idle(SPEC, reader(clock, lambda now: [row(now)]), clock, clock.sleep, orphaned)
    assert str(err.value) == dwi.MSG_ORPHANED and 1.0 <= clock.now < 1.3
    assert dwi.parent_gone()() is False   # this test's own parent is still there
