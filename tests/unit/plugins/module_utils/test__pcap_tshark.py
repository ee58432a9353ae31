# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Agreement of the keepalive analyser with tshark, frame for frame.

For every capture test__pcap.py generates (every scenario, every link type,
pcap and pcapng) and for a real capture of the kernel's keepalive, the frame
numbers analyse() classifies as Keep-Alive and Keep-Alive ACK must equal
those of tshark -Y tcp.analysis.keep_alive / tcp.analysis.keep_alive_ack.

The real capture runs in a network namespace tkpi-<random> (root needed):
keepalive sysctls 2/1/3 set inside it only, tcpdump -i lo, a Python server
and a Python client with SO_KEEPALIVE (no per-socket options) on 127.0.0.1;
after an answered probe an iptables DROP rule (inside the namespace) silences
the server, and the client gives up with RST|ACK after 3 unanswered probes.
Everything it starts is stopped and the namespace deleted in finally.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import analyse

TSHARK = shutil.which('tshark')
pytestmark = pytest.mark.skipif(TSHARK is None, reason='tshark is not installed (apt-get install tshark): '
                                                       'the agreement with Wireshark cannot be checked')

_spec = importlib.util.spec_from_file_location('tcplab_test__pcap', str(Path(__file__).with_name('test__pcap.py')))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def tshark_frames(path):
    """(Keep-Alive frames, Keep-Alive ACK frames) according to tshark."""
    proc = subprocess.run([TSHARK, '-r', str(path), '-Y', 'tcp.analysis.keep_alive || tcp.analysis.keep_alive_ack',
                           '-T', 'fields', '-e', 'frame.number', '-e', 'tcp.analysis.keep_alive',
                           '-e', 'tcp.analysis.keep_alive_ack'],
                          capture_output=True, text=True, check=True, env=dict(os.environ, LANG='C'))
    ka, kaack = [], []
    for line in proc.stdout.splitlines():
        fields = line.split('\t')
        if fields[1]:
            ka.append(int(fields[0]))
        if len(fields) > 2 and fields[2]:
            kaack.append(int(fields[0]))
    return ka, kaack


def assert_agrees(path):
    ours = analyse(str(path), return_frames=True)
    theirs = tshark_frames(path)
    assert (ours['keepalive_frames'], ours['keepalive_ack_frames']) == theirs
    return ours


CASES = [(name, 1, 'pcap_le_us') for name in sorted(gen.SCENARIOS)]
CASES += [('basic_ipv6' if lt == 229 else 'basic', lt, container)
          for lt in gen.LINKTYPES for container in ('pcap_be_ns', 'pcapng_le')]
CASES += [(name, 113, 'pcapng_be_ns') for name in ('port_reuse', 'zero_window', 'wrap_to_zero', 'both_directions')]


@pytest.mark.parametrize('name, linktype, container', CASES)
def test_generated_capture_agrees(tmp_path, name, linktype, container):
    path, facts = gen.build(tmp_path, name, linktype, container)
    ours = assert_agrees(path)
    assert ours['keepalive_frames'] == facts['ka']   # and both agree with the scenario's own expectation


@pytest.mark.parametrize('name', sorted(gen.SLOW_SCENARIOS))
def test_unacked_limit_agrees(tmp_path, name):
    path, facts = gen.build(tmp_path, name, scenarios=gen.SLOW_SCENARIOS)
    assert_agrees(path)


def test_loopback_duplicates_agree(tmp_path):
    pkts, facts = gen.sc_basic()
    frames = []
    for ts, pkt in pkts:
        frames.append((ts, gen.link_frame(276, pkt, pkttype=4)))
        frames.append((ts + 1e-6, gen.link_frame(276, pkt, pkttype=0)))
    path = tmp_path / 'dup.pcap'
    path.write_bytes(gen.pcap_bytes(frames, 276))
    ours = assert_agrees(path)
    assert ours['summary']['loopback_duplicates'] == 13


def test_multiple_interfaces_agree(tmp_path):
    pkts, facts = gen.sc_both_directions()
    pkts6, facts6 = gen.sc_basic(ipv6=True)
    frames = [(ts, gen.link_frame(113, p), 0) for ts, p in pkts] + [(ts + 0.3, gen.link_frame(229, p), 1) for ts, p in pkts6]
    frames.sort(key=lambda f: f[0])
    path = tmp_path / 'multi.pcapng'
    path.write_bytes(gen.pcapng_bytes(frames, None, interfaces=[(113, 9), (229, None)]))
    assert_agrees(path)


# ---------------------------------------------------------------- a real capture

NEEDED = ('ip', 'iptables', 'tcpdump')

SERVER = r'''
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', int(sys.argv[1])))
srv.listen(1)
print('listening', flush=True)
conn, _ = srv.accept()
conn.recv(100)
conn.sendall(b'hello back')
time.sleep(60)
'''

CLIENT = r'''
import errno, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)   # the sysctls govern: no per-socket options
s.connect(('127.0.0.1', int(sys.argv[1])))
s.sendall(b'hello')
s.recv(100)
try:
    s.recv(100)
    print('EOF', flush=True)
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc.errno)), flush=True)
'''


def _run(argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=dict(os.environ, LANG='C'))


def _stop(proc):
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError('timed out after %s s waiting for %s' % (timeout, what))


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to create a network namespace (ip netns add)')
@pytest.mark.skipif(any(shutil.which(t) is None for t in NEEDED),
                    reason='needs %s (apt-get install iproute2 iptables tcpdump)' % ', '.join(NEEDED))
def test_real_keepalive_capture_agrees(tmp_path):
    ns = 'tkpi-%s' % secrets.token_hex(4)
    port = 12345
    pcap = tmp_path / 'real.pcap'
    inside = ['ip', 'netns', 'exec', ns]
    tcpdump = server = client = None
    _run(['ip', 'netns', 'add', ns])
    try:
        _run(inside + ['ip', 'link', 'set', 'lo', 'up'])
        _run(inside + ['sysctl', '-q', '-w', 'net.ipv4.tcp_keepalive_time=2', 'net.ipv4.tcp_keepalive_intvl=1',
                       'net.ipv4.tcp_keepalive_probes=3'])
        tcpdump = subprocess.Popen(inside + ['tcpdump', '-i', 'lo', '-n', '-U', '-w', str(pcap), 'tcp', 'port', str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: pcap.exists() and pcap.stat().st_size >= 24, 10, 'tcpdump to start writing')
        time.sleep(0.5)
        server = subprocess.Popen(inside + [sys.executable, '-c', SERVER, str(port)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == 'listening'
        client = subprocess.Popen(inside + [sys.executable, '-c', CLIENT, str(port)], stdout=subprocess.PIPE, text=True)

        def answered_probe():
            result = analyse(str(pcap), connection={'port': port})
            return any(p['answered'] for c in result['connections'] for pr in c['probers'] for p in pr['probes'])
        _wait_for(answered_probe, 15, 'an answered keepalive probe')
        _run(inside + ['iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', str(port), '-j', 'DROP'])
        # the kernel timeline: idle 2 s, then 3 unanswered probes 1 s apart, then RST 1 s later
        client.wait(20)
        assert client.stdout.read().strip() == 'ETIMEDOUT'
        time.sleep(0.5)
        _stop(tcpdump)
        tcpdump = None

        result = assert_agrees(pcap)
        assert result['truncated'] is False
        focused = analyse(str(pcap), connection={'port': port}, expect={'time': 2, 'intvl': 1, 'probes': 3})
        conn = focused['connections'][0]
        prober = conn['probers'][0]
        assert prober['endpoint'] == conn['endpoints'][0]          # the client probes
        assert prober['final_unanswered'] == 3
        assert prober['answered'] >= 1
        assert len(prober['spacing']) >= 2 and all(0.9 <= s <= 1.35 for s in prober['spacing'][-2:])
        assert conn['rst']['from'] == conn['endpoints'][0] and conn['rst']['flags'] == 'RST|ACK'
        assert conn['rst']['after_probes'] == 3
        assert focused['verdict'] == 'pass', focused['reasons']
    finally:
        for proc in (client, server, tcpdump):
            _stop(proc)
        subprocess.run(['ip', 'netns', 'del', ns], capture_output=True, check=False)
    assert ns not in _run(['ip', 'netns', 'list']).stdout
