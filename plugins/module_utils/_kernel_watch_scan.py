# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The keepalive probes, RSTs and retransmissions the other connections of a namespace sent, from the watch's pcap.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The watch (_kernel_watch.py) is a ``tcpdump -i any`` started while the other connections - the controller's SSH
connection above all - are established: it sees them mid-stream, and an idle one sends nothing but probes and their
answers. So the probe rule here does not need the connection's start: a segment this namespace sent (pcap link
types 276 and 113, Linux cooked: packet type OUTGOING, or a source address of the namespace, as on lo where a
packet is seen once) with no payload and only ACK (and PSH) set is a keepalive probe when its sequence number is one
below what this side sent up to then (its highest seq + length), or, before this side sent anything in the capture,
one below the peer's last acknowledgment - the kernel's probe is snd_una - 1 (tcp_xmit_probe_skb). Such a segment
seen before either is known is ``unsure``: it may be a probe (it raises the bound, not the count).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

MAGIC = {b'\xd4\xc3\xb2\xa1': ('<', 1e-6), b'\xa1\xb2\xc3\xd4': ('>', 1e-6), b'\x4d\x3c\xb2\xa1': ('<', 1e-9),
         b'\xa1\xb2\x3c\x4d': ('>', 1e-9)}
SLL2, SLL = 276, 113
OUTGOING = 4
M32 = 0xFFFFFFFF
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
# a keepalive probe carries ACK (and may carry PSH, ECE, CWR), never these
NOT_PROBE = FIN | SYN | RST | URG
LISTED = 100000
MSG_FORMAT = 'the watch pcap %s is not a Linux cooked capture (tcpdump -i any): %s'


class WatchScanError(ValueError):
    """The watch's pcap cannot be read as one."""


def _after(a, b):
    """Whether sequence number a lies after b (modulo 2**32)."""
    return 0 < ((a - b) & M32) < 0x80000000


def _later(a, b):
    if a is None or b is None:
        return b if a is None else a
    return a if _after(a, b) else b


def records(data):
    """(time, link type, packet bytes) of every record of a pcap file's bytes."""
    endian, unit = MAGIC.get(data[:4], (None, None))
    if endian is None or len(data) < 24:
        raise WatchScanError('no pcap header')
    linktype = struct.unpack(endian + 'I', data[20:24])[0] & 0xFFFF
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + 'IIII', data[offset:offset + 16])
        packet = data[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        if len(packet) == incl:
            yield sec + frac * unit, linktype, packet


def cooked(linktype, packet):
    """(packet type, ethertype, network-layer bytes) of a Linux cooked frame, or None."""
    if linktype == SLL2 and len(packet) >= 20:
        return packet[10], struct.unpack('>H', packet[0:2])[0], packet[20:]
    if linktype == SLL and len(packet) >= 16:
        return struct.unpack('>H', packet[0:2])[0], struct.unpack('>H', packet[14:16])[0], packet[16:]
    return None


def tcp_of(ethertype, ip):
    """(src, dst, sport, dport, seq, ack, flags, payload length) of an IPv4 or IPv6 TCP segment, or None."""
    if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == socket.IPPROTO_TCP:
        hlen, total = (ip[0] & 0x0F) * 4, struct.unpack('>H', ip[2:4])[0]
        src, dst, tcp = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20]), ip[hlen:]
        length = total - hlen
    elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == socket.IPPROTO_TCP:
        src, dst, tcp = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40]), ip[40:]
        length = struct.unpack('>H', ip[4:6])[0]
    else:
        return None
    if len(tcp) < 14:
        return None
    sport, dport, seq, ack = struct.unpack('>HHII', tcp[:12])
    return src, dst, sport, dport, seq, ack, tcp[13], length - (tcp[12] >> 4) * 4


class Flows:
    """Per direction of each connection: what it sent up to now (nxt) and the peer's last acknowledgment."""

    def __init__(self, local):
        self.local = local
        self.nxt, self.peer_ack, self.syns, self.pending = {}, {}, set(), {}
        self.found = {'probes': [], 'acks': [], 'rsts': [], 'retransmissions': 0, 'connections': 0, 'packets': 0}

    def sent_here(self, pkttype, src):
        return pkttype == OUTGOING or src in self.local

    def add(self, t, pkttype, seg):
        src, dst, sport, dport, seq, ack, flags, length = seg
        key, back = (src, sport, dst, dport), (dst, dport, src, sport)
        self.found['packets'] += 1
        if key not in self.nxt and back not in self.nxt and key not in self.peer_ack and back not in self.peer_ack:
            self.found['connections'] += 1
        if flags & ACK:
            self.peer_ack[back] = ack
        if self.sent_here(pkttype, src):
            self._classify(t, key, seq, flags, length)
        if length > 0 or flags & (SYN | FIN):   # a zero-length segment's seq says nothing sure (a probe's is una - 1)
            end = (seq + length + (1 if flags & (SYN | FIN) else 0)) & M32
            if key not in self.nxt or _after(end, self.nxt[key]):
                self.nxt[key] = end
        for one in (key, back):
            if one in self.pending and _later(self.nxt.get(one), self.peer_ack.get(one)) is not None:
                self._resolve(one)

    def _resolve(self, key):
        """Zero-length segments sent before anything told the sequence numbers: the first that does (the answer's
        acknowledgment, or the next data) says which were probes."""
        upto = _later(self.nxt.get(key), self.peer_ack.get(key))
        for t, seq in self.pending.pop(key):
            self.found['probes' if seq == (upto - 1) & M32 else 'acks'].append(t)

    def _classify(self, t, key, seq, flags, length):
        found = self.found
        if flags & RST:
            found['rsts'].append(t)
        elif flags & SYN:
            if key in self.syns:
                found['retransmissions'] += 1
            self.syns.add(key)
        elif length > 0:
            if key in self.nxt and not _after((seq + length) & M32, self.nxt[key]):
                found['retransmissions'] += 1
        elif flags & ACK and not flags & NOT_PROBE:
            upto = _later(self.nxt.get(key), self.peer_ack.get(key))
            if upto is None:
                self.pending.setdefault(key, []).append((t, seq))
            elif seq == (upto - 1) & M32:
                found['probes'].append(t)


def scan(path, addresses):
    """What the watch saw the namespace send: {probes, unsure, rsts (times), retransmissions, connections, packets,
    truncated}."""
    local = set()
    for text in addresses:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if net.num_addresses == 1:
            local.add(str(net.network_address))
    flows = Flows(local)
    loopback = [ipaddress.ip_network(a, strict=False) for a in addresses if '/' in a]
    with open(path, 'rb') as handle:
        data = handle.read()
    try:
        for t, linktype, packet in records(data):
            frame = cooked(linktype, packet)
            seg = tcp_of(frame[1], frame[2]) if frame else None
            if seg is None:
                continue
            pkttype = OUTGOING if any(ipaddress.ip_address(seg[0]) in net for net in loopback) else frame[0]
            flows.add(t, pkttype, seg)
    except WatchScanError as exc:
        raise WatchScanError(MSG_FORMAT % (path, exc))
    found = flows.found
    found['unsure'] = sorted(t for pending in flows.pending.values() for t, _seq in pending)
    del found['acks']
    found['truncated'] = any(len(found[k]) > LISTED for k in ('probes', 'unsure', 'rsts'))
    for key in ('probes', 'unsure', 'rsts'):
        found[key] = [round(t, 6) for t in found[key][:LISTED]]
    return found
