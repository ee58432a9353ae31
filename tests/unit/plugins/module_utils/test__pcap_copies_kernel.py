# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Why a capture holds one keepalive probe twice, shown on the real kernel, and that the analyser counts it once.

The real run at time 300 (aws-nlb preset) had client, middlebox and server on one bridge, the middlebox routing
between the ends (host routes via it). Its capture on the client's interface showed one probe twice, 107 us apart:
the second copy was the middlebox's forwarded packet (the same IP ID, TTL one less, from the middlebox's MAC to the
server's). The bridge had forgotten the server's MAC address - its ageing time is 300 s, the connection had been
idle 311 s - so it flooded the forwarded frame to every port, the client's too. The kernel sent one probe.

Here the same three hosts are namespaces (tk5c-<tag>-c/-m/-s) on a bridge tk5cbr0 in a fourth (tk5c-<tag>-b),
198.19.83.0/24; keepalive 1/1/2 in the client's namespace only. With an ageing time of 0.1 s the probes come back
as flooded copies (nearly every one: the bridge's garbage collection is a delayed work item); with the default
300 s none does (the control). Either way the analyser must number exactly the
probes the client's kernel counted (TcpExt TCPKeepAlive, read independently of the analyser) and pass the judge.
Both runs go at once, about 4 s.
"""
from __future__ import annotations

import concurrent.futures
import os
import secrets
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import analyse
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.netns_lab import (
    HOLDING_SERVER, LIVE, Namespaces, counters, run as _run)

PORT = 40210
EXPECT = {'time': 1, 'intvl': 1, 'probes': 2}
PROBES = 3          # the client closes after the kernel has sent (and the server answered) this many
# bridge ageing time in centiseconds: 0.1 s (every probe finds the server's MAC forgotten), and the default 300 s
AGEING = {'flooded': 10, 'control': 30000}

CLIENT_CODE = r'''
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.connect((sys.argv[1], %d))
print("connected", flush=True)
sys.stdin.read()
''' % PORT


class Trio(Namespaces):
    """Client, middlebox and server namespaces on a bridge in a namespace of its own (netns_lab.Namespaces:
    journalled, removed only while still ours)."""

    def __init__(self, tag, index, workdir):
        super().__init__()
        self.ns = {role: 'tk5c-%s%d-%s' % (tag, index, role) for role in ('b', 'c', 'm', 's')}
        self.addr = {role: '198.19.83.%d' % (10 * (index + 1) + k) for k, role in enumerate(('c', 'm', 's'))}
        self.pcap = os.path.join(workdir, 'copies%d.pcap' % index)

    def up(self, ageing):
        for ns in self.ns.values():
            self.add(ns)
        bridge = self.ns['b']
        _run(['ip', '-n', bridge, 'link', 'add', 'tk5cbr0', 'type', 'bridge', 'ageing_time', str(ageing)])
        _run(['ip', '-n', bridge, 'link', 'set', 'tk5cbr0', 'up'])
        for role in ('c', 'm', 's'):
            port = 'tk5c' + role
            _run(['ip', '-n', bridge, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', self.ns[role]])
            _run(['ip', '-n', bridge, 'link', 'set', port, 'master', 'tk5cbr0', 'up'])
            _run(['ip', '-n', self.ns[role], 'addr', 'add', self.addr[role] + '/24', 'dev', 'eth0'])
            _run(['ip', '-n', self.ns[role], 'link', 'set', 'eth0', 'up'])
        # the ends reach each other through the middlebox (a router on the same bridge), as the middlebox module routes them
        _run(['ip', '-n', self.ns['c'], 'route', 'add', self.addr['s'] + '/32', 'via', self.addr['m']])
        _run(['ip', '-n', self.ns['s'], 'route', 'add', self.addr['c'] + '/32', 'via', self.addr['m']])
        _run(['ip', 'netns', 'exec', self.ns['m'], 'sysctl', '-qw', 'net.ipv4.ip_forward=1',
              'net.ipv4.conf.all.send_redirects=0', 'net.ipv4.conf.eth0.send_redirects=0'])
        keepalive = ['net.ipv4.tcp_keepalive_%s=%d' % item for item in EXPECT.items()]
        _run(['ip', 'netns', 'exec', self.ns['c'], 'sysctl', '-qw'] + keepalive)


def run(tag, index, ageing, workdir):
    """A keepalive connection through the middlebox, captured on the client's interface: (pcap, probes counted by
    the client's kernel)."""
    trio = Trio(tag, index, workdir)
    try:
        trio.up(ageing)
        dump = trio.start(['tcpdump', '-i', 'eth0', '-n', '-U', '--immediate-mode', '-Z', 'root', '-w', trio.pcap,
                           'tcp port %d' % PORT], trio.ns['c'], 'listening on', 'stderr')
        trio.start([sys.executable, '-c', HOLDING_SERVER, trio.addr['s'], str(PORT)], trio.ns['s'], 'ready')
        before = counters(trio.ns['c'])[0]
        client = trio.start([sys.executable, '-c', CLIENT_CODE, trio.addr['s']], trio.ns['c'], 'connected')
        deadline = time.monotonic() + PROBES * 2 + 10
        while counters(trio.ns['c'])[0] - before < PROBES and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)   # the last answer is in
        sent = counters(trio.ns['c'])[0] - before
        client.kill()
        time.sleep(0.1)
        dump.terminate()
        dump.wait(timeout=10)
        return trio.pcap, sent
    finally:
        trio.down()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('tk5c'))
    tag = secrets.token_hex(2)
    with concurrent.futures.ThreadPoolExecutor(len(AGEING)) as pool:
        futures = {name: pool.submit(run, tag, index, ageing, workdir) for index, (name, ageing) in enumerate(AGEING.items())}
        results = {name: future.result() for name, future in futures.items()}
    assert not [ns for ns in _run(['ip', 'netns', 'list']).stdout.split() if ns.startswith('tk5c-' + tag)]
    return results


def _prober(result):
    conn = next(c for c in result['connections'] if any(e.endswith(':%d' % PORT) for e in c['endpoints']))
    return next(p for p in conn['probers'] if not p['endpoint'].endswith(':%d' % PORT))


@LIVE
@pytest.mark.parametrize('name', sorted(AGEING))
def test_a_flooded_copy_is_not_a_probe(runs, name):
    pcap, sent = runs[name]
    assert sent == PROBES, 'the client kernel sent %d probes, expected %d' % (sent, PROBES)
    result = analyse(pcap, expect=EXPECT, return_frames=True)
    prober = _prober(result)
    # the analyser: exactly the probes the kernel counted, each answered, on time
    assert prober['count'] == sent and prober['answered'] == sent
    assert [p['number'] for p in prober['probes']] == list(range(1, sent + 1))
    assert result['verdict'] == 'pass', result['reasons']
    # the capture: each probe once, and in the flooded run (almost always) once more, forwarded by the middlebox,
    # which tshark classifies as a Keep-Alive too; each copy is counted on its probe
    copies = len(result['keepalive_frames']) - sent
    assert copies >= 1 if name == 'flooded' else copies == 0
    assert all(p['copies'] <= 1 for p in prober['probes']) and prober['copies'] == copies
    assert result['summary']['probe_copies'] == copies
