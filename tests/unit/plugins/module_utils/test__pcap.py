# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Golden-input tests of the keepalive analyser (plugins/module_utils/_pcap.py).

Every capture is generated here: the IP/TCP packets (and link-layer headers)
with scapy, the file containers (pcap in both byte orders with µs and ns
stamps, pcapng with EPB/SPB and several interfaces) with struct, so each
format detail is under the test's control. SCENARIOS and write_capture() are
also used by test__pcap_tshark.py, which checks every one of them against
tshark frame for frame.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.packet import Raw, raw

from ansible_collections.tcplab.keepalive.plugins.module_utils import _pcap
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, analyse
from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive_rules import ANSWERED_IDLE

T0 = 1700000000.0
DATA = Path(__file__).with_name('data')
C4, S4 = '198.18.0.1', '198.18.0.2'
C6, S6 = '2001:db8::1', '2001:db8::2'


class Conv:
    """Builds one TCP connection segment by segment; tracks both sides' sequence numbers."""

    def __init__(self, pkts, client=(C4, 40000), server=(S4, 12345), isn_c=1000, isn_s=5000, ipv6=False, ip_options=False):
        self.pkts = pkts
        self.ep = {'c': client, 's': server}
        self.nxt = {'c': isn_c, 's': isn_s}
        self.ipv6 = ipv6
        self.ip_options = ip_options

    def ip(self, frm):
        src, dst = self.ep[frm][0], self.ep['s' if frm == 'c' else 'c'][0]
        if self.ipv6:
            return IPv6(src=src, dst=dst)
        if self.ip_options:
            return IP(src=src, dst=dst, options=b'\x01\x01\x01\x00')  # NOP NOP NOP EOL
        return IP(src=src, dst=dst)

    def seg(self, t, frm, flags='A', data=b'', seq=None, ack=None, win=502, advance=True):
        to = 's' if frm == 'c' else 'c'
        seq = self.nxt[frm] if seq is None else seq
        ack = self.nxt[to] if ack is None else ack
        tcp = TCP(sport=self.ep[frm][1], dport=self.ep[to][1], flags=flags, seq=seq & 0xFFFFFFFF,
                  ack=ack & 0xFFFFFFFF if 'A' in flags else 0, window=win)
        pkt = self.ip(frm) / tcp
        if data:
            pkt = pkt / Raw(data)
        self.pkts.append((T0 + t, pkt))
        if advance:
            self.nxt[frm] = (max(self.nxt[frm], seq + len(data) + (1 if ('S' in flags or 'F' in flags) else 0))) & 0xFFFFFFFF
        return len(self.pkts)

    def handshake(self, t=0.0):
        self.seg(t, 'c', 'S')
        self.seg(t + 0.0001, 's', 'SA')
        self.seg(t + 0.0002, 'c', 'A')

    def probe(self, t, frm='c', length=0):
        return self.seg(t, frm, 'A', data=b'\x00' * length, seq=self.nxt[frm] - 1, advance=False)


# ---------------------------------------------------------------- scenarios
# Each returns (packets, facts): facts are the expectations of the unit tests.

def sc_basic(ipv6=False):
    pkts = []
    c = Conv(pkts, client=(C6, 40000) if ipv6 else (C4, 40000), server=(S6, 12345) if ipv6 else (S4, 12345), ipv6=ipv6)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'hello')
    c.seg(0.011, 's', 'A')
    c.probe(2.03)                # idle 2 s from the last segment received (frame 5)
    c.seg(2.0301, 's', 'A')      # Keep-Alive ACK
    c.probe(4.06)
    c.seg(4.0601, 's', 'A')
    c.probe(6.09)                # the peer goes silent
    c.probe(7.10)
    c.probe(8.11)
    c.seg(9.12, 'c', 'RA')
    return pkts, {'ka': [6, 8, 10, 11, 12], 'kaack': [7, 9], 'expect': {'time': 2, 'intvl': 1, 'probes': 3},
                  'verdict': 'pass', 'final_unanswered': 3, 'rst_from': 'c', 'spacing': [1.01, 1.01]}


def forwarded(item, delay):
    """(time, packet) of a packet again delay later, as a router on the captured link forwards it: the same IP ID,
    TTL one less."""
    pkt = item[1].copy()
    pkt[IP].ttl -= 1
    del pkt[IP].chksum
    return item[0] + delay, pkt


def sc_forwarded_copy():
    """sc_basic with some probes seen twice, 0.1 ms apart (issue: a real run at time 300): the one-armed router between
    the ends forwards them back onto the captured bridge, which floods them to every port once it has forgotten the
    peer's MAC address. Each copy is one probe, not a retry 0.1 ms after it."""
    pkts, facts = sc_basic()
    # after sc_basic's frame: the delays of its copies - the first probe (before its answer), two of the silent ones
    # (the second also seen on a second interface)
    copies = {6: [0.0001], 10: [0.0001], 11: [0.0003, 0.0004]}
    out = []
    for frame, item in enumerate(pkts, 1):
        out.append(item)
        out.extend(forwarded(item, delay) for delay in copies.get(frame, []))
    return out, {'ka': [6, 7, 9, 11, 12, 13, 14, 15, 16], 'kaack': [8, 10], 'expect': facts['expect'],
                 'probe_frames': [6, 9, 11, 13, 16], 'copies': [1, 0, 1, 2, 0], 'spacing': facts['spacing']}


def sc_both_directions():
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'x' * 10)
    c.seg(0.02, 's', 'PA', b'y' * 20)
    c.seg(0.03, 'c', 'A')
    c.probe(2.05, 'c')
    c.seg(2.0501, 's', 'A')
    c.probe(3.0, 's')            # the server probes too (its own idle clock: 3 s since frame 7)
    c.seg(3.0001, 'c', 'A')
    return pkts, {'ka': [7, 9], 'kaack': [8, 10], 'probers': 2}


def sc_one_byte():
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'abc')
    c.seg(0.02, 's', 'A')
    c.probe(2.02, length=1)      # BSD/Windows style: one garbage byte
    c.seg(2.0201, 's', 'A')
    c.probe(4.03, length=1)
    c.seg(4.0301, 's', 'A')
    return pkts, {'ka': [6, 8], 'kaack': [7, 9], 'lengths': [1, 1]}


def sc_wraparound():
    pkts = []
    c = Conv(pkts, isn_c=0xFFFFFFF0, isn_s=0x7FFFFFF0)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'z' * 40)  # crosses 2**32
    c.seg(0.02, 's', 'A')
    c.probe(2.03)
    c.seg(2.0301, 's', 'A')
    return pkts, {'ka': [6], 'kaack': [7], 'probe_seq': [(0xFFFFFFF1 + 40 - 1) & 0xFFFFFFFF]}


def sc_wrap_to_zero():
    """The next expected sequence number becomes exactly 0: Wireshark treats 0 as 'not seen yet'."""
    pkts = []
    c = Conv(pkts, isn_c=0xFFFFFFF0)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'q' * 15)   # next seq 0xFFFFFFF1 + 15 = 0 (mod 2**32)
    c.seg(0.02, 's', 'A')
    c.probe(2.03)                       # seq 0xFFFFFFFF: a Keep-Alive (0 - 1)
    c.seg(2.0301, 's', 'A')
    c.probe(4.04)                       # same seq, but the next expected is now 0xFFFFFFFF: not one
    c.seg(4.0401, 's', 'A')
    return pkts, {'ka': [6], 'kaack': [7]}


def sc_data_in_flight():
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'request')
    c.seg(0.02, 's', 'A')
    c.seg(1.0, 'c', 'PA', b'more data', advance=True)  # never acknowledged: the peer is gone
    start = c.nxt['c'] - 9
    for k, t in enumerate((1.2, 1.6, 2.4, 4.0, 7.2)):
        c.seg(t, 'c', 'PA', b'more data', seq=start)  # retransmissions, not keepalives
    c.seg(9.0, 'c', 'RA')
    return pkts, {'ka': [], 'kaack': [], 'retransmissions': 5, 'listed': True}


def sc_curl_override():
    """Stock curl: TCP_KEEPIDLE = TCP_KEEPINTVL = 60 whatever the sysctls say."""
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'GET / HTTP/1.1\r\n\r\n')
    c.seg(0.02, 's', 'A')
    c.probe(60.04)
    c.seg(60.0401, 's', 'A')
    c.probe(120.06)
    c.probe(180.07)
    c.probe(240.08)
    c.seg(300.09, 'c', 'RA')
    return pkts, {'ka': [6, 8, 9, 10], 'kaack': [7], 'expect': {'time': 30, 'intvl': 3, 'probes': 3},
                  'verdict': 'fail',
                  'reasons': ["idle time fits a per-socket TCP_KEEPIDLE of 60 s, not the sysctl's 30 s",
                              "spacing fits a per-socket TCP_KEEPINTVL of 60 s, not the sysctl's 3 s"]}


def sc_user_timeout():
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'data')
    c.seg(0.02, 's', 'A')
    c.probe(2.03)
    c.probe(3.04)
    c.seg(3.54, 'c', 'RA')      # TCP_USER_TIMEOUT of 3.5 s: fewer probes, early RST
    return pkts, {'ka': [6, 7], 'kaack': [], 'expect': {'time': 2, 'intvl': 1, 'probes': 3}, 'verdict': 'fail',
                  'reasons': ['RST after 2 unanswered probes, expected 3: a TCP_USER_TIMEOUT (or a per-socket '
                              'TCP_KEEPCNT of 2) ended the connection',
                              'RST came 0.5 s after probe 2, expected 1 s ± 0.35 s (RST: last probe + intvl, with probes '
                              'unanswered; due at 4.04 s): a TCP_USER_TIMEOUT-style ending']}


def sc_slow_spacing():
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'data')
    c.seg(0.02, 's', 'A')
    c.probe(2.03)
    c.probe(4.93)
    c.probe(5.95)
    c.seg(6.96, 'c', 'RA')
    return pkts, {'ka': [6, 7, 8], 'kaack': [], 'expect': {'time': 2, 'intvl': 1, 'probes': 3}, 'verdict': 'fail',
                  'tolerance': {'seconds': 0.25, 'percent': 0},
                  # the wheel may fire a 1 s timer up to 34 ms late (HZ 250), never early
                  'reasons': ['probe 2 came 2.9 s after probe 1, expected 1 s -0.25/+0.284 s (retry: previous probe + intvl; '
                              'due at 3.03 s)']}


def sc_zero_window():
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'a' * 100)
    c.seg(0.02, 's', 'A', win=0)             # the receiver is full
    c.seg(0.3, 'c', 'A', data=b'b', advance=False)  # zero-window probe: 1 byte at the next seq
    c.seg(0.3001, 's', 'A', win=0)           # zero-window probe ACK
    c.seg(0.9, 'c', 'A', data=b'b', advance=False)
    c.seg(0.9001, 's', 'A', win=0)
    c.seg(1.5, 's', 'A', win=502)            # window update
    c.seg(1.51, 'c', 'PA', b'b' * 50)
    c.seg(1.52, 's', 'A')
    return pkts, {'ka': [], 'kaack': [], 'zwp': 2, 'listed': True}


def sc_retransmitted_byte():
    """A retransmitted 1-byte data segment at next seq - 1 is, for Wireshark, a Keep-Alive; we agree."""
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'k')
    c.seg(0.25, 'c', 'PA', b'k', seq=c.nxt['c'] - 1)
    c.seg(0.26, 's', 'A')        # acknowledges the byte: a new ack, so not a Keep-Alive ACK
    return pkts, {'ka': [5], 'kaack': []}


def sc_port_reuse():
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'first')
    c.seg(0.02, 's', 'A')
    c.seg(0.5, 'c', 'RA')
    d = Conv(pkts, isn_c=777777, isn_s=999999)   # same ports, new ISN: a new conversation
    d.handshake(1.0)
    d.seg(1.01, 'c', 'PA', b'second')
    d.seg(1.02, 's', 'A')
    d.probe(3.03)
    d.seg(3.0301, 's', 'A')
    return pkts, {'ka': [12], 'kaack': [13], 'connections': 2}


def sc_syn_retransmission():
    pkts = []
    c = Conv(pkts)
    c.seg(0.0, 'c', 'S')
    c.seg(1.0, 'c', 'S', seq=1000)     # the SYN again, same ISN
    c.seg(1.0001, 's', 'SA')
    c.seg(1.0002, 'c', 'A')
    c.probe(3.01)
    c.seg(3.0101, 's', 'A')
    return pkts, {'ka': [5], 'kaack': [6]}


def sc_midstream():
    """The capture starts during the idle period: the first probes cannot be recognised."""
    pkts = []
    c = Conv(pkts)
    c.probe(0.0)
    c.seg(0.0001, 's', 'A')
    c.probe(2.0)
    c.seg(2.0001, 's', 'A')
    c.seg(2.5, 'c', 'PA', b'x')
    c.seg(2.5001, 's', 'A')
    c.probe(4.5)
    c.seg(4.5001, 's', 'A')
    return pkts, {'ka': [7], 'kaack': [8]}


def sc_fin_then_ack():
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'bye')
    c.seg(0.02, 's', 'A')
    c.seg(0.03, 'c', 'FA')
    c.seg(0.04, 's', 'A')
    c.seg(0.05, 's', 'FA')
    c.seg(0.06, 'c', 'A')
    c.seg(1.0, 'c', 'A', seq=c.nxt['c'] - 1, advance=False)  # looks like a probe after FIN
    return pkts, {'ka': [10], 'kaack': []}


def sc_ip_options():
    pkts = []
    c = Conv(pkts, ip_options=True)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'opt')
    c.seg(0.02, 's', 'A')
    c.probe(2.03)
    c.seg(2.0301, 's', 'A')
    return pkts, {'ka': [6], 'kaack': [7]}


def sc_ipv6_ext():
    pkts = []
    c = Conv(pkts, client=(C6, 40000), server=(S6, 12345), ipv6=True)
    orig = c.ip

    def ip_with_ext(frm):
        return orig(frm) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    c.ip = ip_with_ext
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'six')
    c.seg(0.02, 's', 'A')
    c.probe(2.03)
    c.seg(2.0301, 's', 'A')
    return pkts, {'ka': [6], 'kaack': [7]}


def sc_fragments():
    """IP fragments are skipped (not reassembled); a lone fragment is not TCP for tshark either."""
    pkts, facts = sc_basic()
    frag = IP(src=C4, dst=S4, flags='MF', frag=0, proto=6) / raw(TCP(sport=1, dport=2, flags='A', seq=5) / Raw(b'x' * 16))
    later = IP(src=C4, dst=S4, flags=0, frag=100, proto=6) / Raw(b'y' * 24)
    pkts = pkts[:5] + [(pkts[4][0] + 0.001, frag), (pkts[4][0] + 0.002, later)] + pkts[5:]
    return pkts, {'ka': [f + 2 for f in facts['ka']], 'kaack': [f + 2 for f in facts['kaack']], 'fragments': 2}


def sc_unacked_limit(extra):
    """10000 unacked segments: then a FIN no longer advances the next expected seq (Wireshark's limit)."""
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    template = bytearray(raw(c.ip('c') / TCP(sport=40000, dport=12345, flags='A', ack=5001, window=502) / Raw(b'd')))
    for k in range(10000 + extra - 1):   # scapy builds one segment; the copies only differ in seq (no checksums)
        struct.pack_into('!I', template, 24, c.nxt['c'])
        pkts.append((T0 + 0.01 + k * 1e-5, bytes(template)))
        c.nxt['c'] += 1
    c.seg(0.2, 'c', 'FA')
    fin_seq = c.nxt['c'] - 1
    frame = c.seg(0.3, 'c', 'A', seq=fin_seq, advance=False)   # Keep-Alive only if the FIN counted
    return pkts, {'ka': [frame] if extra < 0 else [], 'kaack': []}


SCENARIOS = {
    'basic': sc_basic,
    'basic_ipv6': lambda: sc_basic(ipv6=True),
    'both_directions': sc_both_directions,
    'forwarded_copy': sc_forwarded_copy,
    'one_byte': sc_one_byte,
    'wraparound': sc_wraparound,
    'wrap_to_zero': sc_wrap_to_zero,
    'data_in_flight': sc_data_in_flight,
    'curl_override': sc_curl_override,
    'user_timeout': sc_user_timeout,
    'slow_spacing': sc_slow_spacing,
    'zero_window': sc_zero_window,
    'retransmitted_byte': sc_retransmitted_byte,
    'port_reuse': sc_port_reuse,
    'syn_retransmission': sc_syn_retransmission,
    'midstream': sc_midstream,
    'fin_then_ack': sc_fin_then_ack,
    'ip_options': sc_ip_options,
    'ipv6_ext': sc_ipv6_ext,
    'fragments': sc_fragments,
}
SLOW_SCENARIOS = {
    'unacked_below_limit': lambda: sc_unacked_limit(-1),
    'unacked_at_limit': lambda: sc_unacked_limit(1),
}


# ---------------------------------------------------------------- file writers

def link_frame(linktype, ip_pkt, pkttype=0):
    """Bytes of one frame of the link type around an IP packet (scapy for the headers)."""
    ip_bytes = raw(ip_pkt)
    v6 = ip_bytes[0] >> 4 == 6
    proto = 0x86DD if v6 else 0x0800
    if linktype == 1:
        return raw(Ether(src='02:00:00:00:00:01', dst='02:00:00:00:00:02', type=proto)) + ip_bytes
    if linktype == 'vlan':
        return raw(Ether(src='02:00:00:00:00:01', dst='02:00:00:00:00:02') / Dot1Q(vlan=7, type=proto)) + ip_bytes
    if linktype == 'qinq':
        return raw(Ether(src='02:00:00:00:00:01', dst='02:00:00:00:00:02', type=0x88A8) / Dot1Q(vlan=3)
                   / Dot1Q(vlan=7, type=proto)) + ip_bytes
    if linktype == 113:
        return raw(CookedLinux(pkttype=pkttype, lladdrtype=772, lladdrlen=6, src=b'\x00' * 8, proto=proto)) + ip_bytes
    if linktype == 276:
        return raw(CookedLinuxV2(proto=proto, ifindex=1, lladdrtype=772, pkttype=pkttype, lladdrlen=6,
                                 src=b'\x00' * 8)) + ip_bytes
    if linktype in (101, 228, 229):
        return ip_bytes
    if linktype == 0:   # host byte order of the capturing machine: little-endian here
        return struct.pack('<I', 30 if v6 else 2) + ip_bytes
    if linktype == 'null_be':
        return struct.pack('>I', 24 if v6 else 2) + ip_bytes
    if linktype == 108:
        return struct.pack('>I', 24 if v6 else 2) + ip_bytes
    raise ValueError(linktype)


LINKTYPE_CODE = {'vlan': 1, 'qinq': 1, 'null_be': 0}


def pcap_bytes(frames, linktype, endian='<', nsec=False, snaplen=262144):
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(endian + 'IHHiIII', magic, 2, 4, 0, 0, snaplen, LINKTYPE_CODE.get(linktype, linktype))]
    for ts, data in frames:
        sec = int(ts)
        frac = int(round((ts - sec) * (1e9 if nsec else 1e6)))
        cap = data[:snaplen]
        out.append(struct.pack(endian + 'IIII', sec, frac, len(cap), len(data)) + cap)
    return b''.join(out)


def _block(endian, btype, body):
    body += b'\x00' * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack(endian + 'II', btype, total) + body + struct.pack(endian + 'I', total)


def _option(endian, code, value):
    return struct.pack(endian + 'HH', code, len(value)) + value + b'\x00' * (-len(value) % 4)


def pcapng_bytes(frames, linktype, endian='<', tsresol=None, spb=False, interfaces=None):
    """frames: (ts, data) or (ts, data, interface index); interfaces: [(linktype, tsresol)]."""
    interfaces = interfaces or [(LINKTYPE_CODE.get(linktype, linktype), tsresol)]
    out = [_block(endian, 0x0A0D0D0A, struct.pack(endian + 'IHHq', 0x1A2B3C4D, 1, 0, -1)
                  + _option(endian, 4, b'tcplab test') + _option(endian, 0, b''))]
    units = []
    for lt, res in interfaces:
        opts = b''
        if res is not None:
            opts += _option(endian, 9, bytes([res]))
        opts += _option(endian, 2, b'lo') + _option(endian, 0, b'')
        out.append(_block(endian, 1, struct.pack(endian + 'HHI', lt, 0, 0) + opts))
        units.append(6 if res is None else res)
    # a name resolution block the reader skips, and a custom block: not a packet, but a frame for tshark
    out.append(_block(endian, 4, struct.pack(endian + 'HH', 0, 0)))
    out.append(_block(endian, 0x00000BAD, struct.pack(endian + 'I', 32473)))
    for item in frames:
        ts, data = item[0], item[1]
        ifid = item[2] if len(item) > 2 else 0
        res = units[ifid]
        per_sec = 2 ** (res & 0x7F) if res & 0x80 else 10 ** res
        stamp = int(round(ts * per_sec))
        if spb:
            out.append(_block(endian, 3, struct.pack(endian + 'I', len(data)) + data))
        else:
            out.append(_block(endian, 6, struct.pack(endian + 'IIIII', ifid, stamp >> 32, stamp & 0xFFFFFFFF, len(data),
                                                     len(data)) + data + b'\x00' * (-len(data) % 4)
                              + _option(endian, 1, b'comment') + _option(endian, 0, b'')))
    out.append(_block(endian, 5, struct.pack(endian + 'III', 0, 0, 0)))   # interface statistics
    return b''.join(out)


CONTAINERS = {
    'pcap_le_us': pcap_bytes,
    'pcap_be_us': lambda fr, lt: pcap_bytes(fr, lt, endian='>'),
    'pcap_le_ns': lambda fr, lt: pcap_bytes(fr, lt, nsec=True),
    'pcap_be_ns': lambda fr, lt: pcap_bytes(fr, lt, endian='>', nsec=True),
    'pcapng_le': pcapng_bytes,
    'pcapng_be_ns': lambda fr, lt: pcapng_bytes(fr, lt, endian='>', tsresol=9),
    'pcapng_pow2': lambda fr, lt: pcapng_bytes(fr, lt, tsresol=0x80 | 20),
    'pcapng_spb': lambda fr, lt: pcapng_bytes(fr, lt, spb=True),
}
LINKTYPES = [1, 'vlan', 'qinq', 113, 276, 101, 228, 229, 0, 'null_be', 108]


def write_capture(path, pkts, linktype=1, container='pcap_le_us'):
    frames = []
    for ts, pkt in pkts:
        v6 = raw(pkt)[0] >> 4 == 6
        if (linktype == 228 and v6) or (linktype == 229 and not v6):
            raise ValueError('link type %s cannot carry this packet' % linktype)
        frames.append((ts, link_frame(linktype, pkt)))
    path.write_bytes(CONTAINERS[container](frames, linktype))
    return str(path)


def build(tmp_path, name, linktype=1, container='pcap_le_us', scenarios=None):
    pkts, facts = (scenarios or SCENARIOS)[name]()
    path = write_capture(tmp_path / ('%s-%s-%s.pcap' % (name, linktype, container)), pkts, linktype, container)
    if container.startswith('pcapng'):
        # the custom block before the packets is frame 1 (tshark numbers it)
        facts = dict(facts, ka=[f + 1 for f in facts['ka']], kaack=[f + 1 for f in facts['kaack']])
    return path, facts


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize('name', sorted(SCENARIOS))
def test_scenario_classification(tmp_path, name):
    path, facts = build(tmp_path, name)
    result = analyse(path, return_frames=True)
    assert result['keepalive_frames'] == facts['ka']
    assert result['keepalive_ack_frames'] == facts['kaack']
    assert result['summary']['keepalive'] == len(facts['ka'])
    assert result['summary']['keepalive_ack'] == len(facts['kaack'])


@pytest.mark.parametrize('name', sorted(SLOW_SCENARIOS))
def test_unacked_segment_limit(tmp_path, name):
    path, facts = build(tmp_path, name, scenarios=SLOW_SCENARIOS)
    result = analyse(path, return_frames=True)
    assert result['keepalive_frames'] == facts['ka']


@pytest.mark.parametrize('linktype', LINKTYPES)
@pytest.mark.parametrize('container', sorted(CONTAINERS))
def test_every_link_type_and_container(tmp_path, linktype, container):
    name = 'basic_ipv6' if linktype == 229 else 'basic'
    path, facts = build(tmp_path, name, linktype, container)
    result = analyse(path, expect=facts['expect'], return_frames=True)
    assert result['keepalive_frames'] == facts['ka']
    assert result['keepalive_ack_frames'] == facts['kaack']
    assert result['format'] == ('pcapng' if container.startswith('pcapng') else 'pcap')
    assert result['link_types'] == [LINKTYPE_CODE.get(linktype, linktype)]
    if container == 'pcapng_spb':
        return  # simple packet blocks carry no timestamps
    assert result['verdict'] == 'pass', result['reasons']
    prober = result['connections'][0]['probers'][0]
    assert [round(s, 3) for s in prober['spacing']] == facts['spacing']
    assert round(prober['idle_before_first_probe'], 3) == 2.019


def test_basic_report(tmp_path):
    path, facts = build(tmp_path, 'basic')
    result = analyse(path, expect=facts['expect'])
    assert result['summary']['packets'] == 13
    assert result['summary']['connections'] == 1
    assert result['summary']['rst_after_probes'] == 1
    assert 'keepalive_frames' not in result
    conn = result['connections'][0]
    assert conn['endpoints'] == ['198.18.0.1:40000', '198.18.0.2:12345']
    assert conn['handshake_seen'] is True
    prober = conn['probers'][0]
    assert prober['endpoint'] == '198.18.0.1:40000'
    assert prober['count'] == 5 and prober['answered'] == 2 and prober['final_unanswered'] == 3
    assert [p['answered'] for p in prober['probes']] == [True, True, False, False, False]
    assert [p['kind'] for p in prober['probes']] == ['idle', 'idle', 'idle', 'retry', 'retry']
    assert prober['probes'][0]['answer_frame'] == 7
    assert prober['probes'][0]['seq'] == 1005 and prober['probes'][0]['length'] == 0
    assert prober['idle_times'] == [2.019, 2.0299, 2.0299]
    assert conn['rst'] == {'from': '198.18.0.1:40000', 'to': '198.18.0.2:12345', 'frame': 13, 'time': 9.12,
                           'flags': 'RST|ACK', 'after_probes': 3, 'after_last_probe': 1.01}
    assert conn['verdict'] == 'pass' and result['verdict'] == 'pass' and result['reasons'] == []


def test_ipv6_endpoints(tmp_path):
    path, facts = build(tmp_path, 'basic_ipv6', 229, 'pcap_le_us')
    result = analyse(path, expect=facts['expect'])
    assert result['connections'][0]['endpoints'] == ['[2001:db8::1]:40000', '[2001:db8::2]:12345']
    assert result['verdict'] == 'pass'


def test_both_directions_probe(tmp_path):
    path, facts = build(tmp_path, 'both_directions')
    conn = analyse(path)['connections'][0]
    assert [p['endpoint'] for p in conn['probers']] == ['198.18.0.1:40000', '198.18.0.2:12345']
    assert conn['probers'][1]['idle_before_first_probe'] == pytest.approx(0.95, abs=1e-6)


def test_one_byte_probes(tmp_path):
    path, facts = build(tmp_path, 'one_byte')
    prober = analyse(path)['connections'][0]['probers'][0]
    assert [p['length'] for p in prober['probes']] == facts['lengths']


def test_wraparound_probe_seq(tmp_path):
    path, facts = build(tmp_path, 'wraparound')
    prober = analyse(path)['connections'][0]['probers'][0]
    assert [p['seq'] for p in prober['probes']] == facts['probe_seq']


@pytest.mark.parametrize('name', ['curl_override', 'user_timeout', 'slow_spacing'])
def test_misleading_cases_verdicts(tmp_path, name):
    path, facts = build(tmp_path, name)
    result = analyse(path, expect=facts['expect'], tolerance=facts.get('tolerance'))
    assert result['verdict'] == facts['verdict']
    prober = result['connections'][0]['probers'][0]
    for reason in facts['reasons']:
        assert reason in prober['reasons']
    assert result['reasons'] and all(r.startswith('198.18.0.1:40000 -> 198.18.0.2:12345: ') for r in result['reasons'])


def test_data_in_flight_is_explained(tmp_path):
    path, facts = build(tmp_path, 'data_in_flight')
    result = analyse(path, expect={'time': 2, 'intvl': 1, 'probes': 3})
    assert result['summary']['keepalive'] == 0
    conn = result['connections'][0]
    assert conn['retransmissions'] == 5 and conn['in_flight_at_end'] == {'198.18.0.1:40000': 9}
    assert conn['notes'][0].startswith('198.18.0.1:40000 had 9 bytes unacknowledged and 5 retransmissions: '
                                       'the kernel sends no keepalive probes while data is in flight')
    assert result['verdict'] == 'fail'
    assert result['reasons'] == ['no keepalive probes found in the capture']
    focused = analyse(path, expect={'time': 2}, connection={'port': 12345})
    assert focused['connections'][0]['verdict'] == 'fail'
    assert focused['connections'][0]['reasons'][0].startswith('no keepalive probes; 198.18.0.1:40000 had 9 bytes')


def test_zero_window_probes_are_not_keepalives(tmp_path):
    path, facts = build(tmp_path, 'zero_window')
    result = analyse(path)
    assert result['summary']['zero_window_probes'] == facts['zwp']
    conn = result['connections'][0]
    assert conn['keepalive'] == 0 and conn['zero_window_probes'] == 2
    assert any('zero-window probes' in note for note in conn['notes'])


def test_port_reuse_makes_two_connections(tmp_path):
    path, facts = build(tmp_path, 'port_reuse')
    result = analyse(path, connection={'port': 12345})
    assert result['summary']['connections'] == 2
    assert [c['keepalive'] for c in result['connections']] == [0, 1]
    assert 'the ports were reused' in result['connections'][1]['notes'][-1]


def test_no_previous_segment_note(tmp_path):
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'x')
    c.probe(2.0)
    # the server never sent anything after the SYN/ACK: idle counts from frame 2
    path = write_capture(tmp_path / 'x.pcap', pkts)
    prober = analyse(path)['connections'][0]['probers'][0]
    assert prober['idle_before_first_probe'] == pytest.approx(1.9999, abs=1e-6)


@pytest.mark.parametrize('focus, count', [
    ({'port': 12345}, 1),
    ({'address': '198.18.0.1'}, 1),
    ({'address': '198.18.0.2', 'port': 12345}, 1),
    ({'address': '198.18.0.2', 'port': 40000}, 0),   # both must match the same endpoint
    ({'port': 9}, 0),
    ({'address': '2001:db8::1'}, 0),
    ({}, 1),
])
def test_connection_filter(tmp_path, focus, count):
    path, facts = build(tmp_path, 'basic')
    result = analyse(path, connection=focus, return_frames=True)
    assert result['summary']['connections'] == count
    assert len(result['keepalive_frames']) == (5 if count else 0)


def test_loopback_duplicates_are_reported(tmp_path):
    pkts, facts = sc_basic()
    frames = []
    for ts, pkt in pkts:
        frames.append((ts, link_frame(113, pkt, pkttype=4)))
        frames.append((ts + 1e-6, link_frame(113, pkt, pkttype=0)))
    path = tmp_path / 'dup.pcap'
    path.write_bytes(pcap_bytes(frames, 113))
    result = analyse(str(path), expect=facts['expect'], return_frames=True)
    assert result['summary']['loopback_duplicates'] == 13
    assert result['summary']['notes'] == [_pcap.MSG_DUPLICATES % 13]
    assert len(result['keepalive_frames']) == 10          # both copies, like tshark
    prober = result['connections'][0]['probers'][0]
    assert prober['count'] == 5 and result['verdict'] == 'pass'   # timing from one copy


def test_forwarded_copies_are_one_probe(tmp_path):
    """A copy of a probe (the same segment within COPY_WINDOW) is classified like tshark does, but numbered, timed
    and judged once, with its copies counted (before: 9 probes, the copies 'retry' probes 0.1 ms after the original,
    due 1 s later: the verdict failed)."""
    path, facts = build(tmp_path, 'forwarded_copy')
    result = analyse(path, expect=facts['expect'], return_frames=True)
    assert result['keepalive_frames'] == facts['ka'] and result['summary']['keepalive'] == 9
    conn = result['connections'][0]
    prober = conn['probers'][0]
    assert [p['frame'] for p in prober['probes']] == facts['probe_frames']
    assert [p['number'] for p in prober['probes']] == [1, 2, 3, 4, 5]
    assert conn['keepalive'] == 5
    assert [p['copies'] for p in prober['probes']] == facts['copies'] and prober['copies'] == 4
    assert result['summary']['probe_copies'] == 4
    assert result['summary']['notes'] == [_pcap.MSG_COPIES % (4, '10')]
    assert [p['answered'] for p in prober['probes']] == [True, True, False, False, False]
    assert prober['probes'][0]['answer_frame'] == 8
    assert [p['kind'] for p in prober['probes']] == ['idle', 'idle', 'idle', 'retry', 'retry']
    assert [round(s, 3) for s in prober['spacing']] == facts['spacing']
    assert prober['final_unanswered'] == 3 and conn['rst']['after_probes'] == 3
    assert result['verdict'] == 'pass', result['reasons']


def test_a_probe_after_the_copy_window_is_a_new_probe(tmp_path):
    """The same segment COPY_WINDOW or more after the probe is a probe of its own (here a retry far too early)."""
    pkts = []
    c = Conv(pkts)
    c.handshake(0.0)
    c.seg(0.01, 'c', 'PA', b'hello')
    c.seg(0.011, 's', 'A')
    c.probe(2.03)
    pkts.append(forwarded(pkts[-1], getattr(_pcap, 'COPY_WINDOW', 0.01) + 0.001))
    path = write_capture(tmp_path / 'late.pcap', pkts)
    result = analyse(path, expect={'time': 2, 'intvl': 1, 'probes': 3})
    prober = result['connections'][0]['probers'][0]
    assert prober['count'] == 2 and result['verdict'] == 'fail'
    assert prober['copies'] == 0 and result['summary']['probe_copies'] == 0


def test_a_real_probe_seen_twice(tmp_path):
    """The capture of the real run at time 300 (aws-nlb preset, three hosts on one bridge, the middlebox routing
    between the ends): at +938.945 s the client's probe is there twice, 107 us apart - the second copy is the
    middlebox's forwarded packet (the same IP ID, TTL 63, from the middlebox's MAC to the server's), flooded back to
    the client's port by the bridge, which had forgotten the server's MAC (ageing time 300 s, 311 s idle). Before:
    probe 4 'retry', due +1013.945 s, and probe 3 unanswered."""
    path = str(DATA / 'time300-probe-copy.pcap')
    result = analyse(path, expect={'time': 300, 'intvl': 75, 'probes': 9}, return_frames=True)
    assert result['keepalive_frames'] == [4, 6, 8, 9]   # what tshark says too
    prober = result['connections'][0]['probers'][0]
    assert [(p['number'], p['frame'], p['answered']) for p in prober['probes']] == [(1, 4, True), (2, 6, True), (3, 8, True)]
    assert [p['copies'] for p in prober['probes']] == [0, 0, 1]
    assert prober['probes'][2]['answer_frame'] == 10 and prober['probes'][2]['expected'] == 927.65309
    assert prober['probes'][2]['rule'] == ANSWERED_IDLE
    assert prober['unanswered'] == 0 and prober['final_unanswered'] == 0 and prober['copies'] == 1
    assert result['summary']['probe_copies'] == 1 and result['verdict'] == 'pass'


def test_multiple_interfaces_pcapng(tmp_path):
    pkts, facts = sc_basic()
    pkts6, _facts6 = sc_basic(ipv6=True)
    frames = [(ts, link_frame(1, p), 0) for ts, p in pkts] + [(ts + 0.5, link_frame(229, p), 1) for ts, p in pkts6]
    frames.sort(key=lambda f: f[0])
    path = tmp_path / 'multi.pcapng'
    path.write_bytes(pcapng_bytes(frames, None, interfaces=[(1, None), (229, 9)]))
    result = analyse(str(path), expect=facts['expect'])
    assert result['link_types'] == [1, 229]
    assert result['summary']['connections'] == 2 and result['summary']['keepalive'] == 10
    assert result['verdict'] == 'pass'


def test_fragments_are_counted(tmp_path):
    path, facts = build(tmp_path, 'fragments')
    result = analyse(path)
    assert result['summary']['fragments_skipped'] == 2
    assert result['summary']['notes'] == [_pcap.MSG_FRAGMENTS % 2]


def test_snaplen_cut_frames_use_ip_length(tmp_path):
    pkts, facts = sc_one_byte()
    frames = [(ts, link_frame(1, p)) for ts, p in pkts]
    path = tmp_path / 'snap.pcap'
    path.write_bytes(pcap_bytes(frames, 1, snaplen=54))   # headers only: lengths come from the IP header
    result = analyse(str(path), return_frames=True)
    assert result['keepalive_frames'] == facts['ka']
    assert result['connections'][0]['probers'][0]['probes'][0]['length'] == 1


# ---------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(PcapError) as exc:
        analyse(str(tmp_path / 'nope.pcap'))
    assert str(exc.value) == _pcap.MSG_MISSING % (tmp_path / 'nope.pcap')


def test_directory(tmp_path):
    with pytest.raises(PcapError) as exc:
        analyse(str(tmp_path))
    assert str(exc.value) == _pcap.MSG_NOT_FILE % (tmp_path, 'a directory')


@pytest.mark.parametrize('content, message', [
    (b'', _pcap.MSG_SHORT_HEADER % ('{path}', 0)),
    (b'\xd4\xc3\xb2\xa1\x02\x00', _pcap.MSG_SHORT_HEADER % ('{path}', 6)),
    (b'GET / HTTP/1.1\r\nHost: x\r\n\r\n', _pcap.MSG_NOT_PCAP % ('{path}', '47 45 54 20 2f 20 48 54')),
    (struct.pack('<IHHiIII', 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105), _pcap.MSG_LINKTYPE % ('{path}', 105, 'IEEE 802.11')),
    (struct.pack('<IHHiIII', 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147), _pcap.MSG_LINKTYPE % ('{path}', 147, 'unknown')),
    (struct.pack('<IHHiIII', 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack('<IIII', 1, 0, 1 << 30, 60),
     _pcap.MSG_BAD_RECORD % ('{path}', 1, 24, 1 << 30, _pcap.MSG_LIMIT_SNAPLEN % 65535)),
    (_block('<', 0x0A0D0D0A, struct.pack('<IHHq', 0x1A2B3C4D, 1, 0, -1))
     + _block('<', 1, struct.pack('<HHI', 127, 0, 0)), _pcap.MSG_LINKTYPE % ('{path}', 127, 'IEEE 802.11 radiotap')),
    (_block('<', 0x0A0D0D0A, struct.pack('<IHHq', 0x1A2B3C4D, 1, 0, -1)) + struct.pack('<II', 6, 13) + b'\x00' * 8,
     _pcap.MSG_BAD_BLOCK % ('{path}', 2, 28, 6, 13)),
    (_block('<', 0x0A0D0D0A, struct.pack('<IHHq', 0x11111111, 1, 0, -1)), _pcap.MSG_BAD_BOM % ('{path}', 0)),
    (_block('<', 0x0A0D0D0A, struct.pack('<IHHq', 0x1A2B3C4D, 1, 0, -1))
     + _block('<', 6, struct.pack('<IIIII', 2, 0, 0, 0, 0)), _pcap.MSG_NO_IDB % ('{path}', 28, 2)),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / 'bad.pcap'
    path.write_bytes(content)
    with pytest.raises(PcapError) as exc:
        analyse(str(path))
    assert str(exc.value) == message.replace('{path}', str(path))


@pytest.mark.parametrize('container', ['pcap_le_us', 'pcapng_le'])
def test_truncated_last_record(tmp_path, container):
    path, facts = build(tmp_path, 'basic', 1, container)
    data = open(path, 'rb').read()
    cut = tmp_path / 'cut.pcap'
    cut.write_bytes(data[:-30])
    result = analyse(str(cut), return_frames=True)
    frames = 12 if container == 'pcap_le_us' else 13   # pcapng: the custom block is a frame too
    assert result['truncated'] is True
    assert result['summary']['packets'] == frames
    # the file ends inside the last packet: record 13 of the pcap, block 17 of the pcapng (section header, interface,
    # name resolution, custom block, 13 packet blocks; the interface statistics block after them is cut off)
    starts = unit_offsets(data, container)
    where = {'unit': 'record', 'number': 13, 'offset': starts[12]} if container == 'pcap_le_us' \
        else {'unit': 'block', 'number': 17, 'offset': starts[16]}
    assert result['truncated_at'] == where
    assert result['summary']['notes'] == [_pcap.MSG_TRUNCATED % (where['unit'], where['number'], where['offset'], frames)]
    assert result['keepalive_frames'] == facts['ka']


def unit_offsets(data, container):
    """Byte offsets of the records (pcap) or blocks (pcapng, little-endian) of a capture."""
    pos, step, out = (24, 16, []) if container.startswith('pcap_') else (0, 0, [])
    while pos + 8 <= len(data):
        out.append(pos)
        if container.startswith('pcap_'):
            pos += step + struct.unpack_from('<I', data, pos + 8)[0]
        else:
            pos += struct.unpack_from('<I', data, pos + 4)[0]
    return out


def test_empty_capture(tmp_path):
    path = tmp_path / 'empty.pcap'
    path.write_bytes(pcap_bytes([], 1))
    result = analyse(str(path), expect={'time': 2})
    assert result['summary']['packets'] == 0 and result['connections'] == []
    assert result['verdict'] == 'fail' and result['reasons'] == ['no keepalive probes found in the capture']


@pytest.mark.parametrize('kwargs, message', [
    ({'expect': {'time': 0}}, _pcap.MSG_EXPECT % ('time', 32767, 'seconds of idle time', 0)),
    ({'expect': {'time': -5}}, _pcap.MSG_EXPECT % ('time', 32767, 'seconds of idle time', -5)),
    ({'expect': {'time': 40000}}, _pcap.MSG_EXPECT % ('time', 32767, 'seconds of idle time', 40000)),
    ({'expect': {'intvl': '3'}}, _pcap.MSG_EXPECT % ('intvl', 32767, 'seconds between probes', '3')),
    ({'expect': {'intvl': -1}}, _pcap.MSG_EXPECT % ('intvl', 32767, 'seconds between probes', -1)),
    ({'expect': {'probes': True}}, _pcap.MSG_EXPECT % ('probes', 127, 'unanswered probes before the RST', True)),
    ({'expect': {'probes': 128}}, _pcap.MSG_EXPECT % ('probes', 127, 'unanswered probes before the RST', 128)),
    ({'expect': {'idle': 3}}, _pcap.MSG_EXPECT_KEYS % 'idle'),
    ({'tolerance': {'seconds': -1}}, _pcap.MSG_TOLERANCE % ('seconds', 32767, 'seconds', -1)),
    ({'tolerance': {'seconds': float('nan')}}, _pcap.MSG_TOLERANCE % ('seconds', 32767, 'seconds', float('nan'))),
    ({'tolerance': {'seconds': float('inf')}}, _pcap.MSG_TOLERANCE % ('seconds', 32767, 'seconds', float('inf'))),
    ({'tolerance': {'percent': -0.5}}, _pcap.MSG_TOLERANCE % ('percent', 100, 'percent of the expected value', -0.5)),
    ({'tolerance': {'percent': 250}}, _pcap.MSG_TOLERANCE % ('percent', 100, 'percent of the expected value', 250)),
    ({'tolerance': {'percent': 'x'}}, _pcap.MSG_TOLERANCE % ('percent', 100, 'percent of the expected value', 'x')),
    ({'tolerance': {'ms': 1}}, _pcap.MSG_TOLERANCE_KEYS % 'ms'),
    ({'connection': {'address': 'localhost'}},
     _pcap.MSG_CONNECTION % ('address', "must be an IPv4 or IPv6 address, got 'localhost'")),
    ({'connection': {'port': 70000}}, _pcap.MSG_CONNECTION % ('port', 'must be a port number 0..65535, got 70000')),
    ({'connection': {'host': 'x'}}, _pcap.MSG_CONNECTION_KEYS % 'host'),
])
def test_bad_options(tmp_path, kwargs, message):
    path, facts = build(tmp_path, 'basic')
    with pytest.raises(PcapError) as exc:
        analyse(path, **kwargs)
    assert str(exc.value) == message


def test_tolerance_partial_and_message(tmp_path):
    path, facts = build(tmp_path, 'basic')
    result = analyse(path, expect={'intvl': 2}, tolerance={'percent': 0})
    assert result['tolerance'] == {'seconds': 0.25, 'percent': 0.0}
    reasons = result['connections'][0]['probers'][0]['reasons']
    assert 'probe 4 came 1.01 s after probe 3, expected 2 s -0.25/+0.284 s (retry: previous probe + intvl; due at 8.09 s)' \
        in reasons


def test_no_override_claimed_within_tolerance():
    from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import _override
    tol = {'seconds': 0.25, 'percent': 10.0}
    # the walk-through's 30 s idle time comes out as ~31.2 s (timer wheel granularity)
    assert _override([31.225, 30.719], 30, tol) is None
    assert _override([60.1, 60.0], 30, tol) == 60
