# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The judge against the real kernel (issue 13, section 4): a sweep of keepalive settings, each a two-host
experiment in its own pair of network namespaces (tkjc-*/tkjs-*, a veth pair tkj*, 198.19.60.0/24), all run at
once (about 40 s in all).

Per run: the client's namespace has the keepalive sysctls time/intvl/probes; its client connects with SO_KEEPALIVE
to a server that holds the connection; after `answered` probes the server's namespace DROPs the connection, so the
next `probes` probes go unanswered and the client's kernel sends the RST. The kernel's own counters
(TcpExt TCPKeepAlive: probes sent, TCPAbortOnTimeout) decide when the DROP goes in and check the count afterwards,
independently of the analyser. The analyser (pcap_info's judge) must pass every run: with the default tolerance, and
with a tolerance of 50 ms and 0 percent, where only the kernel's timer rules and its timer wheel's lateness explain
the times. Before the judge knew the rules, `time 1, intvl 3, probes 4` with one answered probe failed with "probe 2
came 3.168 s after the last segment from the peer, expected time 1 s ± 0.35 s".

The sweep: intvl below, equal to and above time; 0-3 answered probes; 1-9 unanswered probes.
"""
from __future__ import annotations

import concurrent.futures
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import analyse
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.netns_lab import (
    HOLDING_SERVER, LIVE, Namespaces, counters, run as _run)

try:   # (so that this file runs, and fails, on the judge from before the rules too)
    from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive_rules import (
        ANSWERED_IDLE, ANSWERED_INTVL, IDLE, RETRY)
except ImportError:
    ANSWERED_IDLE = ANSWERED_INTVL = IDLE = RETRY = None
RULES_AFTER_ANSWER = {False: ANSWERED_IDLE, True: ANSWERED_INTVL}

# (time, intvl, answered, probes)
SWEEP = [
    (2, 1, 0, 1), (2, 1, 1, 3), (2, 1, 2, 9), (3, 1, 3, 2),        # intvl below time
    (1, 1, 0, 9), (1, 1, 1, 4), (1, 1, 3, 1), (2, 2, 2, 5),        # intvl equal to time
    (1, 3, 0, 2), (1, 3, 1, 4), (1, 3, 3, 1), (1, 3, 2, 9),        # intvl above time (1, 3, 1, 4: the case)
    (2, 3, 2, 3), (1, 2, 2, 2),
]
SERVER_PORT = 40100
CLIENT_PORT = 40101
TIGHT = {'seconds': 0.05, 'percent': 0}


CLIENT_CODE = r'''
import errno, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)   # before connect: the timer is armed at the handshake
s.bind((sys.argv[1], %d))
s.connect((sys.argv[2], %d))
print("connected", flush=True)
try:
    while s.recv(65536):
        pass
    print("closed", flush=True)
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno), flush=True)
''' % (CLIENT_PORT, SERVER_PORT)


def expected_seconds(t, i, answered, probes):
    """From the connect to the RST, by the kernel's rules (answers at once)."""
    total = 0 if not answered else t + (answered - 1) * max(t, i)
    total += (max(t, i) if answered else t) + (probes - 1) * i + i
    return total


class Pair(Namespaces):
    """A client and a server namespace joined by a veth pair (netns_lab.Namespaces: journalled, removed only while
    still ours)."""

    def __init__(self, tag, index, workdir):
        super().__init__()
        self.client = 'tkjc-%s-%d' % (tag, index)
        self.server = 'tkjs-%s-%d' % (tag, index)
        self.veth = ('tkj%s%da' % (tag, index), 'tkj%s%db' % (tag, index))
        self.caddr = '198.19.60.%d' % (4 * index + 1)
        self.saddr = '198.19.60.%d' % (4 * index + 2)
        self.pcap = os.path.join(workdir, 'run%d.pcap' % index)

    def up(self, values):
        for ns in (self.client, self.server):
            self.add(ns)
        _run(['ip', '-n', self.client, 'link', 'add', self.veth[0], 'type', 'veth', 'peer', 'name', self.veth[1],
              'netns', self.server])
        for ns, dev, addr in ((self.client, self.veth[0], self.caddr), (self.server, self.veth[1], self.saddr)):
            _run(['ip', '-n', ns, 'addr', 'add', addr + '/30', 'dev', dev])
            _run(['ip', '-n', ns, 'link', 'set', dev, 'up'])
        for key, value in zip(('time', 'intvl', 'probes'), values):
            _run(['ip', 'netns', 'exec', self.client, 'sysctl', '-qw', 'net.ipv4.tcp_keepalive_%s=%d' % (key, value)])


def experiment(tag, index, combo, workdir):
    """Run one combination; its observations (the pcap, the kernel's counters, the client's error)."""
    t, i, answered, probes = combo
    pair = Pair(tag, index, workdir)
    try:
        pair.up((t, i, probes))
        dump = pair.start(['tcpdump', '-i', pair.veth[0], '-n', '-U', '--immediate-mode', '-Z', 'root', '-w', pair.pcap,
                           'tcp port %d' % SERVER_PORT], pair.client, 'listening on', 'stderr')
        pair.start([sys.executable, '-c', HOLDING_SERVER, pair.saddr, str(SERVER_PORT)], pair.server, 'ready')
        before = counters(pair.client)
        client = pair.start([sys.executable, '-c', CLIENT_CODE, pair.caddr, pair.saddr], pair.client, 'connected')
        deadline = time.monotonic() + expected_seconds(t, i, answered, probes) + 10
        while counters(pair.client)[0] - before[0] < answered and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)   # the answer to probe `answered` is in (a round trip of microseconds)
        _run(['ip', 'netns', 'exec', pair.server, 'iptables', '-w', '-I', 'INPUT', '-p', 'tcp', '--dport',
              str(SERVER_PORT), '-j', 'DROP'])
        try:
            outcome = client.communicate(timeout=max(1.0, deadline - time.monotonic()))[0].strip()
        except subprocess.TimeoutExpired:
            outcome = 'still connected'
        after = counters(pair.client)
        time.sleep(0.1)
        dump.send_signal(signal.SIGTERM)
        dump.wait(timeout=10)
        return {'pcap': pair.pcap, 'outcome': outcome, 'keepalive': after[0] - before[0],
                'aborted': after[1] - before[1]}
    finally:
        pair.down()


@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('tkj'))
    tag = secrets.token_hex(2)
    with concurrent.futures.ThreadPoolExecutor(len(SWEEP)) as pool:
        futures = [pool.submit(experiment, tag, index, combo, workdir) for index, combo in enumerate(SWEEP)]
        results = [f.result() for f in futures]
    leftovers = [ns for ns in _run(['ip', 'netns', 'list']).stdout.split() if ns.startswith(('tkjc-' + tag, 'tkjs-' + tag))]
    assert not leftovers
    return dict(zip(SWEEP, results))


def _prober(result):
    conn = next(c for c in result['connections'] if any(e.endswith(':%d' % CLIENT_PORT) for e in c['endpoints']))
    return conn, next(p for p in conn['probers'] if p['endpoint'].endswith(':%d' % CLIENT_PORT))


@LIVE
@pytest.mark.parametrize('combo', SWEEP, ids=['%d/%d/%d+%d' % (c[0], c[1], c[3], c[2]) for c in SWEEP])
def test_the_kernel_follows_the_judges_rules(sweep, combo):
    t, i, answered, probes = combo
    run = sweep[combo]
    # the kernel's own account, independent of the capture and the analyser
    assert run['outcome'] == 'ETIMEDOUT', run
    assert run['keepalive'] == answered + probes and run['aborted'] == 1, run
    expect = {'time': t, 'intvl': i, 'probes': probes}
    for tolerance in (None, TIGHT):
        result = analyse(run['pcap'], expect=expect, tolerance=tolerance, connection={'port': CLIENT_PORT})
        conn, prober = _prober(result)
        assert (prober['count'], prober['answered'], prober['final_unanswered']) == (answered + probes, answered, probes)
        assert conn['rst'] and conn['rst']['after_probes'] == probes
        assert result['verdict'] == 'pass', (tolerance, result['reasons'], prober['probes'])
    # every probe with the rule it was judged by: after an answered probe, the longer of time and intvl decides
    first = RULES_AFTER_ANSWER[i > t] if t != i else None
    rules = [p['rule'] for p in prober['probes']]
    assert rules[0] == IDLE and all(r == RETRY for r in rules[answered + 1:])
    assert all(r in (ANSWERED_INTVL, ANSWERED_IDLE) and (first is None or r == first) for r in rules[1:answered + 1])
    # and the judge is not blind: one second more of intvl fails the same run
    wrong = analyse(run['pcap'], expect=dict(expect, intvl=i + 1), tolerance=TIGHT, connection={'port': CLIENT_PORT})
    assert wrong['verdict'] == 'fail'
