#!/usr/bin/env python
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the pcap_info analyser (plugins/module_utils/_pcap*.py) against tshark.

Writes two pcaps with struct (no scapy: a million packets take a few
seconds), each of tens of thousands of interleaved connections:

  * mixed (--packets, default 1 M): handshakes, data, retransmissions, some
    keepalive probes and their ACKs, unanswered probes ending in RST|ACK,
    zero-window probes and FINs;
  * keepalive (--keepalive-packets, default 1.35 M): keepalive-heavy, about a
    third of the frames are probes and Keep-Alive ACKs, and 40 % of the
    connections end in a RST|ACK after unanswered probes.

For each it runs

  * analyse() in a child process (wall time of the call, peak RSS of the child), and
  * tshark -r F -Y 'tcp.analysis.keep_alive || tcp.analysis.keep_alive_ack'
    -T fields -e frame.number -e tcp.analysis.keep_alive -e tcp.analysis.keep_alive_ack

and prints the counts of both, whether the frame sets are identical, both wall
times, the ratio and the peak memory. Goal: identical, >= 10x faster, <= 300 MB.
--root runs the analyser of another checkout (a worktree of an older commit,
for a before/after); TCPLAB_BENCH_PROFILE=1 prints a cProfile of analyse().

    benchmarks/analyse_vs_tshark.py [--case all|mixed|keepalive] [--packets N] [--keepalive-packets N]
                                    [--keep DIR] [--seed S] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ACK, PSH, RST, SYN, FIN = 0x10, 0x08, 0x04, 0x02, 0x01
M32 = 0xFFFFFFFF
TCP_S = struct.Struct('!HHIIBBHHH')
IP_S = struct.Struct('!BBHHHBBH4s4s')
REC_S = struct.Struct('<IIII')


class Side:
    __slots__ = ('addr', 'port', 'nxt', 'prefix')

    def __init__(self, addr, port, isn, prefix):
        self.addr = addr
        self.port = port
        self.nxt = isn
        self.prefix = prefix


def conversation(rng, index):
    """The packets of one connection as (from_client, flags, seq, ack, payload_len, window)."""
    client_isn = rng.getrandbits(32)
    server_isn = rng.getrandbits(32)
    c_nxt, s_nxt = client_isn, server_isn
    out = []

    def seg(from_client, flags, length=0, seq=None, win=502, advance=True):
        nonlocal c_nxt, s_nxt
        mine, theirs = (c_nxt, s_nxt) if from_client else (s_nxt, c_nxt)
        seq = mine if seq is None else seq
        out.append((from_client, flags, seq & M32, theirs & M32 if flags & ACK else 0, length, win))
        advance = (length + (1 if flags & (SYN | FIN) else 0)) if advance else 0
        if seq == mine and advance:
            if from_client:
                c_nxt = (c_nxt + advance) & M32
            else:
                s_nxt = (s_nxt + advance) & M32

    def probe(from_client, length=0):
        mine = c_nxt if from_client else s_nxt
        seg(from_client, ACK, length, seq=(mine - 1) & M32)

    seg(True, SYN)
    seg(False, SYN | ACK)
    seg(True, ACK)
    for _round in range(rng.randint(2, 6)):
        n = rng.choice((40, 100, 512, 1448))
        seg(True, PSH | ACK, n)
        if rng.random() < 0.1:   # retransmission of the same data
            seg(True, PSH | ACK, n, seq=(c_nxt - n) & M32)
        seg(False, ACK)
        m = rng.choice((0, 200, 1448))
        if m:
            seg(False, PSH | ACK, m)
            seg(True, ACK)
    kind = index % 10
    if kind in (0, 1, 2, 3):           # answered keepalives, sometimes from both ends, sometimes 1-byte
        for _round in range(rng.randint(1, 4)):
            probe(True, 1 if kind == 3 else 0)
            seg(False, ACK)
        if kind == 2:
            probe(False)
            seg(True, ACK)
    if kind in (4, 5):                 # a silent peer: unanswered probes, then RST|ACK from the prober
        probe(True)
        seg(False, ACK)
        for _round in range(rng.randint(2, 5)):
            probe(True)
        seg(True, RST | ACK)
        return out
    if kind == 6:                      # zero window: probes of one byte at the next seq, not keepalives
        seg(True, PSH | ACK, 1000)
        seg(False, ACK, win=0)
        for _round in range(rng.randint(1, 3)):
            seg(True, ACK, 1, advance=False)   # the byte at the next seq, sent again until the window opens
            seg(False, ACK, win=0)
        seg(False, ACK, win=502)
    if kind == 7:                      # data in flight: retransmissions, no probes, then RST
        seg(True, PSH | ACK, 300)
        for _round in range(3):
            seg(True, PSH | ACK, 300, seq=(c_nxt - 300) & M32)
        seg(True, RST | ACK)
        return out
    seg(True, FIN | ACK)
    seg(False, FIN | ACK)
    seg(True, ACK)
    return out


def keepalive_conversation(rng, index):
    """A connection of the keepalive-heavy mix: a short exchange, then keepalive probes, most of them answered for a
    while, and for about 40 % of the connections a silent peer: unanswered probes and the prober's RST|ACK."""
    client_isn = rng.getrandbits(32)
    server_isn = rng.getrandbits(32)
    nxt = [server_isn, client_isn]      # indexed by from_client
    out = []

    def seg(from_client, flags, length=0, seq=None):
        mine, theirs = nxt[from_client], nxt[not from_client]
        seq = mine if seq is None else seq
        out.append((from_client, flags, seq & M32, theirs & M32 if flags & ACK else 0, length, 502))
        if seq == mine:
            nxt[from_client] = (mine + length + (1 if flags & (SYN | FIN) else 0)) & M32

    seg(True, SYN)
    seg(False, SYN | ACK)
    seg(True, ACK)
    for _round in range(rng.randint(1, 4)):
        seg(True, PSH | ACK, rng.choice((40, 100, 512)))
        seg(False, PSH | ACK, rng.choice((60, 200, 1448)))
        seg(True, ACK)
    prober = index % 7 != 3             # a few connections probe from the server side
    for _round in range(rng.randint(1, 5)):
        seg(prober, ACK, 0, seq=(nxt[prober] - 1) & M32)
        if rng.random() < 0.6:
            seg(not prober, ACK)        # the Keep-Alive ACK
        else:
            seg(not prober, PSH | ACK, 20)   # answered with data instead
            seg(prober, ACK)
    if index % 5 in (0, 1):             # a silent peer: unanswered probes, then RST|ACK from the prober
        for _round in range(rng.randint(3, 9)):
            seg(prober, ACK, 0, seq=(nxt[prober] - 1) & M32)
        seg(prober, RST | ACK)
        return out
    seg(True, FIN | ACK)
    seg(False, FIN | ACK)
    seg(True, ACK)
    return out


def generate(path, packets, seed, make=conversation, group=400):
    """Write about `packets` packets of connections `make` returns; returns (packets written, connections)."""
    rng = random.Random(seed)
    written = 0
    conns = 0
    sec = 1700000000
    usec = 0
    active = []
    with open(path, 'wb') as out:
        out.write(struct.pack('<IHHiIII', 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        while written < packets:
            while len(active) < group:
                conns += 1
                a = 0xC6120000 | (conns & 0xFFFF)                 # 198.18.x.y
                b = 0xC6130000 | ((conns * 7919) & 0xFFFF)         # 198.19.x.y
                client = struct.pack('!I', a)
                server = struct.pack('!I', b)
                eth_c = b'\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00'
                eth_s = b'\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00'
                cport = 1024 + (conns * 13) % 60000
                active.append([make(rng, conns), 0, (client, server, cport, 12345, eth_c, eth_s)])
            chunk = []
            still = []
            for item in active:
                segs, pos, (client, server, cport, sport, eth_c, eth_s) = item
                from_client, flags, seq, ack, length, win = segs[pos]
                if from_client:
                    src, dst, sp, dp, eth = client, server, cport, sport, eth_c
                else:
                    src, dst, sp, dp, eth = server, client, sport, cport, eth_s
                ip = IP_S.pack(0x45, 0, 40 + length, 0, 0x4000, 64, 6, 0, src, dst)
                tcp = TCP_S.pack(sp, dp, seq, ack, 0x50, flags, win, 0, 0)
                frame = eth + ip + tcp + b'\x00' * length
                usec += 37
                if usec >= 1000000:
                    sec += 1
                    usec -= 1000000
                chunk.append(REC_S.pack(sec, usec, len(frame), len(frame)))
                chunk.append(frame)
                written += 1
                item[1] = pos + 1
                if item[1] < len(segs):
                    still.append(item)
                if written >= packets:
                    break
            active = still if written < packets else []
            out.write(b''.join(chunk))
    return written, conns


CHILD = r'''
import json, os, resource, shutil, sys, tempfile, time
root, path = sys.argv[1], sys.argv[2]
link = tempfile.mkdtemp(prefix='tcplab-bench-import-')
os.makedirs(os.path.join(link, 'ansible_collections', 'tcplab'))
os.symlink(root, os.path.join(link, 'ansible_collections', 'tcplab', 'keepalive'))
sys.path.insert(0, link)
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import analyse
start, cpu = time.perf_counter(), time.process_time()
if os.environ.get('TCPLAB_BENCH_PROFILE'):
    import cProfile, pstats
    profile = cProfile.Profile()
    result = profile.runcall(analyse, path, return_frames=True)
    pstats.Stats(profile, stream=sys.stderr).sort_stats('tottime').print_stats(15)
else:
    result = analyse(path, return_frames=True)
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
os.unlink(os.path.join(link, 'ansible_collections', 'tcplab', 'keepalive'))
shutil.rmtree(link)   # (only empty directories are left)
json.dump({'seconds': elapsed, 'cpu': cpu, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           'summary': result['summary'], 'ka': result['keepalive_frames'], 'kaack': result['keepalive_ack_frames']},
          sys.stdout)
'''


def run_ours(root, path):
    """analyse() of the collection checked out at root, in a child process of its own (its peak RSS is ours)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, '-c', CHILD, root, path], capture_output=True, text=True, check=True)
    total = time.perf_counter() - start
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    data = json.loads(proc.stdout)
    data['process_seconds'] = total
    return data


def run_tshark(tshark, path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([tshark, '-r', path, '-Y', 'tcp.analysis.keep_alive || tcp.analysis.keep_alive_ack',
                           '-T', 'fields', '-e', 'frame.number', '-e', 'tcp.analysis.keep_alive',
                           '-e', 'tcp.analysis.keep_alive_ack'],
                          capture_output=True, text=True, check=True, env=dict(os.environ, LANG='C'))
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    ka, kaack = [], []
    for line in proc.stdout.splitlines():
        fields = line.split('\t')
        if fields[1]:
            ka.append(int(fields[0]))
        if len(fields) > 2 and fields[2]:
            kaack.append(int(fields[0]))
    return {'seconds': elapsed, 'cpu': cpu, 'ka': ka, 'kaack': kaack}


CASES = {
    # name: (generator of one connection, connections interleaved at a time, what it is)
    'mixed': (conversation, 400, 'handshakes, data, retransmissions, some keepalives, zero-window probes, FINs'),
    'keepalive': (keepalive_conversation, 400,
                  'keepalive-heavy: about a third of the frames are probes and their ACKs, '
                  '40 % of the connections end in a RST after unanswered probes'),
}


def run_case(name, path, packets, seed, root, tshark):
    """Generate the case's pcap, analyse it with both, print the comparison; True when the frame sets agree."""
    make, group, what = CASES[name]
    print('== %s: %s' % (name, what))
    start = time.perf_counter()
    written, conns = generate(path, packets, seed, make, group)
    print('generated   %d packets, %d connections, %.1f MB in %.1f s'
          % (written, conns, os.path.getsize(path) / 1e6, time.perf_counter() - start))
    ours = run_ours(root, path)
    theirs = run_tshark(tshark, path)
    same = ours['ka'] == theirs['ka'] and ours['kaack'] == theirs['kaack']
    summary = ours['summary']
    print('ours        packets %d, connections %d, keepalive %d, keepalive_ack %d, rst_after_probes %d, '
          'zero_window_probes %d' % (summary['packets'], summary['connections'], summary['keepalive'],
                                     summary['keepalive_ack'], summary['rst_after_probes'],
                                     summary['zero_window_probes']))
    print('tshark      keepalive %d, keepalive_ack %d' % (len(theirs['ka']), len(theirs['kaack'])))
    print('identical   %s' % ('yes (frame for frame)' if same else 'NO'))
    if not same:
        only_ours = sorted(set(ours['ka'] + ours['kaack']) ^ set(theirs['ka'] + theirs['kaack']))
        print('            first differing frames: %s' % only_ours[:20])
    print('time        ours %.2f s (analyse(); %.2f s with interpreter start), tshark %.2f s'
          % (ours['seconds'], ours['process_seconds'], theirs['seconds']))
    print('ratio       %.1fx faster (%.1fx counting interpreter start)'
          % (theirs['seconds'] / ours['seconds'], theirs['seconds'] / ours['process_seconds']))
    print('cpu time    ours %.2f s, tshark %.2f s: %.1fx (less sensitive to a busy machine than the wall times)'
          % (ours['cpu'], theirs['cpu'], theirs['cpu'] / ours['cpu']))
    print('peak memory %.1f MB (ru_maxrss of the analysing process)' % (ours['maxrss_kb'] / 1024.0))
    print('load        %.2f %.2f %.2f (1, 5 and 15 min averages: above the number of cores, the CPU times are '
          'inflated too, and unevenly)' % os.getloadavg())
    return same


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--packets', type=int, default=1000000, help='packets of the mixed case')
    parser.add_argument('--keepalive-packets', type=int, default=1350000, help='packets of the keepalive-heavy case')
    parser.add_argument('--case', choices=sorted(CASES) + ['all'], default='all')
    parser.add_argument('--keep', metavar='DIR', help='write the generated pcaps (CASE.pcap) here and keep them')
    parser.add_argument('--seed', type=int, default=5)
    parser.add_argument('--root', default=ROOT, help='the collection checkout whose analyser runs (default: this one)')
    args = parser.parse_args()
    tshark = shutil.which('tshark')
    if tshark is None:
        sys.exit('tshark not found: apt-get install tshark')
    workdir = args.keep or tempfile.mkdtemp(prefix='tcplab-bench-')
    os.makedirs(workdir, exist_ok=True)
    sizes = {'mixed': args.packets, 'keepalive': args.keepalive_packets}
    try:
        same = True
        for name in sorted(CASES) if args.case == 'all' else [args.case]:
            path = os.path.join(workdir, name + '.pcap')
            same = run_case(name, path, sizes[name], args.seed, os.path.abspath(args.root), tshark) and same
            if not args.keep:
                os.unlink(path)
        return 0 if same else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
