# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The scan over a capture's records: link layer, IPv4/IPv6, TCP, Wireshark's
sequence analysis with its Keep-Alive / Keep-Alive ACK classification, and the
probe timeline of every connection.

The classification follows tcp_analyze_sequence_number() of Wireshark's
packet-tcp.c (read, not copied): per direction it keeps the next expected
sequence number, the last ack, the last raw (unscaled) window, the flags of
the last segment and the list of unacknowledged segments (whose size limit
decides whether a SYN/FIN adds one to the next expected sequence number),
and a pure SYN with a new initial sequence number starts a new conversation.

The common frame (Ethernet, IPv4 without options, TCP) is parsed with one
precompiled struct; every other link layer and IPv6 go through parse_frame().

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import socket
import struct

M32 = 0xFFFFFFFF
HALF = 0x80000000
NEG_HALF = -HALF   # (a constant: -HALF in a comparison would be computed each time)
# Wireshark's TCP_MAX_UNACKED_SEGMENTS: a SYN/FIN only advances the next
# expected sequence number when the segment could be put on the unacked list.
MAX_UNACKED = 10000
TH_FIN, TH_SYN, TH_RST, TH_PUSH, TH_ACK, TH_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
FLAG_NAMES = ((TH_SYN, 'SYN'), (TH_RST, 'RST'), (TH_FIN, 'FIN'), (TH_PUSH, 'PSH'), (TH_ACK, 'ACK'), (TH_URG, 'URG'))
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
NULL_IPV6 = frozenset((10, 24, 28, 30))

TCP_HDR = struct.Struct('!4xIIBBH')
# Ethernet type (two bytes), IPv4 version/IHL, total length, flags/fragment offset (two bytes), protocol, addresses
# and ports (the connection's key); TCP seq, ack, data offset, flags, window. Bytes, not words, where a byte is enough:
# an int below 256 is a cached object, and comparing it costs less than a shift or mask
ETH_FAST = struct.Struct('!12xBBBxH2xBBxB2x12sIIBBH')
IP4_HDR = struct.Struct('!BxHxxHxB')
# IPv4 (without options) and TCP header bytes by the TCP data offset byte
HEADERS = tuple(20 + (offb >> 4) * 4 for offb in range(256))
PORTS = struct.Struct('!HH')

# what a segment is, for the timeline (the last-flags of a direction hold KA or ZWP)
KA, KAACK, ZWP = 1, 2, 3
KINDS = {KA: 'keepalive', KAACK: 'keepalive_ack', ZWP: 'zero_window_probe'}
# what Scan.parse() returns for a frame without a TCP segment (its length -1), and what the walk reads as a record
# header where no complete one is left (a caplen no record can have)
NO_SEGMENT = (None, 0, 0, 0, 0, -1, False)
END = (0, 0, 1 << 62, 0)
# A Keep-Alive the same as its sender's last probe (seq, ack, flags, window, length) this close to it in time, with no
# other segment of that direction between, is the capture seeing that probe again, not a new probe: the kernel sends
# the next probe of a socket intvl (>= 1 s) later, a zero-window probe TCP_RTO_MIN (200 ms) later at the soonest. The
# copy is the packet forwarded back onto the captured link (a router on the same bridge, flooded there once the bridge
# forgot the peer's MAC address after its ageing time, 300 s by default: TTL one less, the same IP ID) or captured on
# two interfaces; microseconds after the original, milliseconds on a busy machine.
COPY_WINDOW = 0.01
NEG_COPY = -COPY_WINDOW   # (either side: the interfaces of a pcapng may be merged slightly out of order)


class Flow:
    """One direction of a connection: Wireshark's per-direction sequence state and the sender's probe timeline."""

    __slots__ = ('nxt', 'lack', 'win', 'lfl', 'maxs', 'base', 'fresh', 'unacked', 'scan_ack', 'scan_len', 'last',
                 'awaiting', 'run', 'probes', 'ka', 'kaack', 'zwp', 'retx', 'key', 'side', 'fin', 'name', 'copies')

    def __init__(self, key, side):
        self.nxt = self.lack = self.lfl = self.maxs = self.scan_len = self.run = 0
        self.ka = self.kaack = self.zwp = self.retx = self.copies = 0
        self.win = M32
        self.base = self.last = self.awaiting = self.probes = self.name = None
        self.fresh = True   # base (or the peer's) not known yet
        self.unacked = []
        self.scan_ack = -1
        self.key = key      # the key of the direction the connection was first seen in
        self.side = side    # 0: the source of that key, 1: its destination
        self.fin = False

    def copy(self, seq, flags, seglen):
        """Whether a Keep-Alive of this direction within COPY_WINDOW of its last segment, with the same ack and window
        (Scan.walk compares them), is a copy of its last probe: that probe was the last segment, and this is the same
        segment; counted on the probe and the direction."""
        p = self.probes[-1]
        if p.ts != self.last or p.seq != seq or p.flags != flags or p.length != seglen:
            return False
        p.copies += 1
        self.copies += 1
        return True

    def endpoint(self):
        """'address:port' ('[address]:port' for IPv6) of the sender."""
        if self.name is None:
            key = self.key
            n = len(key) - 4
            alen = n >> 1
            addr = key[alen * self.side:alen * (self.side + 1)]
            port = struct.unpack_from('!H', key, n + 2 * self.side)[0]
            if alen == 4:
                self.name = '%s:%d' % (socket.inet_ntop(socket.AF_INET, addr), port)
            else:
                self.name = '[%s]:%d' % (socket.inet_ntop(socket.AF_INET6, addr), port)
        return self.name


class Probe:
    """One keepalive probe: its frame and time, seq and length, whether (and by which frame) it was answered, its kind
    (idle: after a segment of the peer, retry: after an unanswered probe) and the seconds since that; its TCP flags,
    and how many copies of it the capture holds (see COPY_WINDOW; its ack and window are its flow's until the flow's
    next segment)."""

    __slots__ = ('frame', 'ts', 'seq', 'length', 'answered', 'answer_frame', 'kind', 'after', 'flags', 'copies')

    def __init__(self, frame, ts, seq, length, kind, after, flags):
        self.frame = frame
        self.ts = ts
        self.seq = seq
        self.length = length
        self.answered = False
        self.answer_frame = None
        self.kind = kind
        self.after = after
        self.flags = flags
        self.copies = 0


class Conn:
    """A connection (a conversation in Wireshark's sense): its two flows, its first RST and FIN.

    rst: (frame, time, flags, sender flow, its unanswered probes before it, time of its last probe or None);
    fin: (frame, time, flags, sender flow); packets: [(time, sender flow, kind)] when the scan keeps them."""

    __slots__ = ('a', 'b', 'syn_from', 'first_ts', 'first_frame', 'rst', 'fin', 'reused', 'packets')

    def __init__(self, a, b, ts, frame):
        self.a = a
        self.b = b
        self.syn_from = None
        self.first_ts = ts
        self.first_frame = frame
        self.rst = None
        self.fin = None
        self.reused = False
        self.packets = None


def segment(f, r, seq, ack, flags, win, seglen, nxt):
    """tcp_analyze_sequence_number for every segment but the common in-order one (see Scan.walk): what it is (KA,
    KAACK, ZWP or 0), a retransmission counted, one more unacked segment, the next expected seq and the highest seq
    to be acked moved on. Sequence numbers compared as GT_SEQ (see Scan)."""
    if seglen > 1:   # carries data: never a zero-window probe, Keep-Alive or Keep-Alive ACK
        kind, nseq = 0, (seq + seglen if seq + seglen <= M32 else seq + seglen - 0x100000000)
    elif seglen and seq == nxt and r.win == 0:
        kind, nseq = ZWP, (seq + 1 if seq != M32 else 0)
    elif not flags & 7 and (seq + 1 == nxt or (not nxt and seq == M32)):
        kind, nseq = KA, (seq + seglen if seq != M32 or not seglen else 0)
    elif r.lfl == KA and not seglen and win and win == f.win and seq == nxt and ack == f.lack and not flags & 7:
        kind, nseq = KAACK, seq
    else:
        kind, nseq = 0, (seq if not seglen else (seq + 1 if seq != M32 else 0))
    if seglen or flags & 3:   # sent before the next expected seq: a retransmission; one more unacked
        d = nxt - seq
        if nxt and not kind and (0 < d < HALF or d <= NEG_HALF):
            f.retx += 1
        if len(f.unacked) < MAX_UNACKED:
            nseq = (nseq + 1) & M32 if flags & 3 else nseq
            f.unacked.append(nseq)
    if kind != ZWP:
        d = nseq - nxt
        if d and (0 < d < HALF or d <= NEG_HALF or not nxt):   # GT_SEQ(nextseq of this segment, nextseq)
            f.nxt = nseq
        if seq == f.maxs or not f.maxs:
            f.maxs = f.nxt
    return kind


def _maxs_acked(r, ack):
    """An ack beyond r's highest sequence number to be acked: it is all acked (GT_SEQ(ack, maxseqtobeacked))."""
    d = ack - r.maxs
    if r.maxs and (0 < d < HALF or d <= NEG_HALF):
        r.maxs = r.nxt


def _acked(r, ru, ack):
    """Drop from r's unacked list the segments ack acknowledges: those whose end is not GT_SEQ(end, ack)."""
    if len(ru) == 1:
        d = ru[0] - ack
        if not (0 < d < HALF or d <= NEG_HALF):
            ru.clear()
    else:
        ru[:] = [x for x in ru if (ack - x) & M32 >= HALF]
    r.scan_ack = ack
    r.scan_len = len(ru)


def _link(buf, off, caplen, lt, state):
    """(ether type, network header offset) of a frame of link type lt, or None when it is too short.

    state: the scan, whose duplicates and prev_out follow Linux cooked captures of loopback."""
    end = off + caplen
    if lt == 1:
        if caplen < 14:
            return None
        et = buf[off + 12] << 8 | buf[off + 13]
        p = off + 14
        while et in VLAN_TPIDS and p + 4 <= end:
            et = buf[p + 2] << 8 | buf[p + 3]
            p += 4
        return et, p
    if lt == 113 or lt == 276:
        if caplen < (16 if lt == 113 else 20):
            return None
        if lt == 113:
            et, pkttype, p = buf[off + 14] << 8 | buf[off + 15], buf[off + 1], off + 16
        else:
            et, pkttype, p = buf[off] << 8 | buf[off + 1], buf[off + 10], off + 20
        state.loopback_copy(pkttype, buf[p:end])
        return et, p
    if lt == 0 or lt == 108:
        if caplen < 4:
            return None
        fam = buf[off] << 24 | buf[off + 1] << 16 | buf[off + 2] << 8 | buf[off + 3]
        if lt == 0:
            little = buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16 | buf[off + 3] << 24
            fam = fam if little > 0xFFFF else little
        return (0x0800 if fam == 2 else (0x86DD if fam in NULL_IPV6 else 0)), off + 4
    if caplen < 1:   # raw IP: 101, 228, 229
        return None
    version = buf[off] >> 4
    return (0x0800 if version == 4 else (0x86DD if version == 6 else 0)), off


def _ipv4(buf, p, end, rep):
    """(connection key, TCP header offset, TCP length) of an IPv4 packet; 'short', 'fragment' or None (not TCP)."""
    if p + 20 > end:
        return 'short'
    b0, total, fragword, proto = IP4_HDR.unpack_from(buf, p)
    if proto != 6:
        return None
    ihl = (b0 & 15) * 4
    if b0 >> 4 != 4 or ihl < 20:
        return None
    t = p + ihl
    key = buf[p + 12:p + 24] if ihl == 20 else buf[p + 12:p + 20] + buf[t:t + 4]
    if fragword & 0x3FFF:
        return 'fragment'
    if total == 0 or total > rep:
        total = rep
    if total < ihl:
        return None
    return key, t, total - ihl


def _ipv6(buf, p, end, rep):
    """(connection key, TCP header offset, TCP length) of an IPv6 packet; 'short', 'fragment' or None (not TCP)."""
    if p + 40 > end:
        return 'short'
    if buf[p] >> 4 != 6:
        return None
    nxt = buf[p + 6]
    plen = buf[p + 4] << 8 | buf[p + 5]
    total = plen + 40
    if plen == 0 or total > rep:
        total = rep
    t = p + 40
    while nxt != 6:
        if t + 8 > end:
            return None
        if nxt == 44:
            if (buf[t + 2] << 8 | buf[t + 3]) & 0xFFF9:
                return 'fragment'
            nxt, t = buf[t], t + 8
        elif nxt in IPV6_EXT:
            nxt, t = buf[t], t + (buf[t + 1] + 1) * 8
        elif nxt == 51:
            nxt, t = buf[t], t + (buf[t + 1] + 2) * 4
        else:
            return None
    key = buf[p + 8:p + 44] if t == p + 40 else buf[p + 8:p + 40] + buf[t:t + 4]
    return key, t, total - (t - p)


def parse_frame(buf, off, caplen, origlen, lt, state):
    """(key, seq, ack, data offset byte, flags, window, TCP length) of a frame's TCP segment, or None.

    Counts short frames and IP fragments in state (the scan), and sets its dup."""
    state.dup = False
    link = _link(buf, off, caplen, lt, state)
    if link is None:
        state.short += 1
        return None
    et, p = link
    if et == 0x0800:
        ip = _ipv4(buf, p, off + caplen, origlen - (p - off))
    elif et == 0x86DD:
        ip = _ipv6(buf, p, off + caplen, origlen - (p - off))
    else:
        return None
    if ip is None or ip == 'short' or ip == 'fragment':
        if ip == 'short':
            state.short += 1
        elif ip == 'fragment':
            state.fragments += 1
        return None
    key, t, tcplen = ip
    if t + 16 > off + caplen or tcplen < 16:
        state.short += 1
        return None
    seq, ack, offb, flags, win = TCP_HDR.unpack_from(buf, t)
    return key, seq, ack, offb, flags, win, tcplen


class Scan:
    """The scan of one capture: every connection (in order of its first frame), the counters, the classified frames.

    focus: (packed address or None, port or None) to follow only the matching connections; packets: keep (time,
    sender flow, kind) of every segment of the followed connections (Conn.packets).

    The per-packet work is one loop (walk()) on purpose: a call per packet would cost more than the rest of its work,
    so only what is rare (another link layer, a new connection, a SYN, a probe, a RST or FIN, an ack of several
    segments) is a call. Wireshark's tcp_analyze_sequence_number compares sequence numbers as GT_SEQ, a signed
    32-bit difference: here written as differences of Python ints, so that no mask is computed on the common path."""

    def __init__(self, focus=None, packets=False):
        self.focus = focus
        self.keep_packets = packets
        self.conns = {}
        self.all_conns = []   # every connection, in order of its first frame
        self.ka_frames = []
        self.kaack_frames = []
        self.keepalive = self.keepalive_ack = 0
        self.packets = self.tcp = self.not_tcp = self.fragments = self.short = self.duplicates = 0
        self.first_ts = None
        self.skip = Conn(None, None, 0.0, 0)   # shared marker of connections outside the focus
        self.prev_out = None
        self.dup = False

    def loopback_copy(self, pkttype, payload):
        """Linux cooked capture of loopback: an outgoing frame seen again as incoming is a duplicate."""
        if pkttype == 4:
            self.prev_out = payload
            self.dup = False
        else:
            self.dup = self.prev_out is not None and self.prev_out == payload
            self.duplicates += self.dup
            self.prev_out = None

    def connections(self):
        """Every connection, in order of its first frame."""
        self.conns = {}
        return self.all_conns

    def run(self, chunks):
        """Walk the chunks of a Reader (see walk())."""
        frame = 0
        chunk = next(chunks, None)
        while chunk is not None:
            buf, pos, n, rec, hlen, scale = chunk[:6]
            if frame == 0 and pos + hlen <= n:
                self.first_ts = rec(buf, pos)[0] + rec(buf, pos)[1] * scale
            pos, frame = self.walk(frame, *chunk)
            try:
                chunk = chunks.send((pos, frame))
            except StopIteration:
                chunk = None
        self.first_ts = self.first_ts if frame else None   # a time stamp only counts with its complete record
        self.packets, self.tcp, self.keepalive = frame, frame - self.not_tcp, len(self.ka_frames)

    def walk(self, frame, buf, pos, n, rec, hlen, scale, lt, limit):
        """The hot loop (see the class) over a chunk's records: (position of the first one not taken, frames)."""
        eth_fast, conns, skip, ka_frame, hdr = ETH_FAST.unpack_from, self.conns, self.skip, self.ka_frames.append, HEADERS
        keep, dup = self.keep_packets and self.focus is not None, False   # (a chunk has one link type: dup is SLL's)
        while True:   # not `while <condition>`: CPython 3.11 only specialises a loop that ends in a plain jump back
            sec, frac, caplen, origlen = rec(buf, pos) if pos + hlen <= n else END
            off = pos + hlen
            if caplen > limit or off + caplen > n:
                return pos, frame
            pos = off + caplen
            frame += 1
            total = -1
            if lt == 1 and caplen >= 54:   # Ethernet, IPv4 without options, not a fragment, TCP
                et0, et1, vihl, total, frag0, frag1, proto, key, seq, ack, offb, flags, win = eth_fast(buf, off)
                if et0 != 8 or et1 or vihl != 0x45 or proto != 6 or frag1 or frag0 != 0x40 and frag0:
                    total = -1   # (a fragment offset, the MF bit or the reserved bit: the general path)
                elif total == 0 or total > origlen - 14:
                    total = origlen - 14
                seglen = total - hdr[offb]
            if total < 36:
                key, seq, ack, flags, win, seglen, dup = self.parse(buf, off, caplen, origlen, lt, total)
            if seglen < 0:   # (or no TCP segment at all: see parse())
                continue
            try:
                conn, f, r = conns[key]
            except KeyError:
                conn, f, r = self.new_conn(key, sec + frac * scale, frame)
            if conn is skip:
                continue
            rare = flags & 7   # SYN, FIN or RST (one bit operation per segment: they cost more than compares)
            if rare and flags & 2 or f.fresh:
                conn, f, r = self.bases(conn, f, r, key, seq, ack, flags, sec + frac * scale, frame)
            nxt = f.nxt
            if r.maxs > r.nxt and flags & 16:
                _maxs_acked(r, ack)
            if seq == nxt and seglen != 1 and not rare:   # in order (or the ACK of a Keep-Alive): the common case
                kind = KAACK if not seglen and r.lfl == KA and win and win == f.win and ack == f.lack else 0
                if seglen:   # data: the next expected seq moves on, one more unacked segment
                    nseq = seq + seglen if seq + seglen <= M32 else seq + seglen - 0x100000000
                    if len(f.unacked) < MAX_UNACKED:
                        f.unacked.append(nseq)
                    f.nxt = nseq
                if seq == f.maxs or not f.maxs:
                    f.maxs = f.nxt
            elif seq + 1 == nxt and seglen < 2 and not rare:   # segment()'s Keep-Alive, inline (many in some captures)
                kind = KA
                if seglen and len(f.unacked) < MAX_UNACKED:   # its one byte: unacked, ends at nxt, which stays
                    f.unacked.append(nxt)
                if seq == f.maxs or not f.maxs:
                    f.maxs = nxt
            else:
                kind = segment(f, r, seq, ack, flags, win, seglen, nxt)
            ru = r.unacked
            if ru and (ack != r.scan_ack or len(ru) != r.scan_len):
                d = ru[0] - ack
                if len(ru) == 1 and not (0 < d < HALF or d <= NEG_HALF):   # it acknowledges the one unacked segment
                    ru.clear()
                    r.scan_len = 0
                else:
                    _acked(r, ru, ack)
            ts = scale * frac + sec   # (= sec + frac * scale, to the bit: the float operations first are cheaper)
            if kind == KA:
                ka_frame(frame)
                if f.probes is not None and not dup and NEG_COPY < ts - f.last < COPY_WINDOW and ack == f.lack and win == f.win and f.copy(seq, flags, seglen):
                    continue   # the sender's last probe seen again (Flow.copy counts it): no new probe, the same state
            elif kind:
                self.count(kind, frame, f)
            f.lfl, f.win, f.lack = kind, win, ack
            if dup:
                continue
            if keep or rare and flags & 5 or conn.rst is not None:   # the rare cases, and every segment of a followed connection
                timeline(conn, f, r, frame, ts, seq, seglen, flags, kind)
            else:   # the common cases of timeline(), here for speed
                if r.awaiting is not None:   # answers the peer's probe
                    r.awaiting.answered, r.awaiting.answer_frame, r.awaiting, r.run = True, frame, None, 0
                if kind == KA:
                    f.ka, f.run, previous = f.ka + 1, f.run + 1, f.awaiting
                    f.awaiting = Probe(frame, ts, seq, seglen, 'idle', None if r.last is None else ts - r.last, flags) \
                        if previous is None else Probe(frame, ts, seq, seglen, 'retry', ts - previous.ts, flags)
                    if f.probes is None:
                        f.probes = []
                    f.probes.append(f.awaiting)
            f.last = ts

    def parse(self, buf, off, caplen, origlen, lt, total):
        """(key, seq, ack, flags, window, segment length, loopback duplicate) of a frame that is not the common one
        (or too short for it: total >= 0), or NO_SEGMENT (length -1); counts the short frames and those without a TCP
        header."""
        seg = None
        if total >= 0:
            self.short += 1
        elif lt >= 0:   # (lt < 0: a pcapng block Wireshark numbers as a frame)
            seg = parse_frame(buf, off, caplen, origlen, lt, self)
        if seg is None:
            self.not_tcp += 1
            return NO_SEGMENT
        key, seq, ack, offb, flags, win, tcplen = seg
        return key, seq, ack, flags, win, tcplen - (offb >> 4) * 4, self.dup

    def new_conn(self, key, ts, frame):
        """Register a connection under both directional keys; its flows keep the key and their side (0: source)."""
        n = len(key) - 4
        alen = n >> 1
        rkey = key[alen:n] + key[:alen] + key[n + 2:] + key[n:n + 2]
        if self.focus is not None:
            sport, dport = PORTS.unpack_from(key, n)
            if not (_matches(self.focus, key[:alen], sport) or _matches(self.focus, key[alen:n], dport)):
                entry = (self.skip, None, None)
                self.conns[key] = self.conns[rkey] = entry
                return entry
        a, b = Flow(key, 0), Flow(key, 1)
        conn = Conn(a, b, ts, frame)
        self.all_conns.append(conn)
        if self.keep_packets and self.focus is not None:
            conn.packets = []
        entry = (conn, a, b)
        self.conns[key] = entry
        if rkey != key:
            self.conns[rkey] = (conn, b, a)
        else:  # a socket connected to itself: one flow, as in Wireshark
            conn.b = a
        return entry

    def bases(self, conn, f, r, key, seq, ack, flags, ts, frame):
        """A SYN, or a direction's first segment: a pure SYN with a new ISN starts a new conversation (Wireshark's
        "port numbers reused"); the base sequence numbers of both directions."""
        if flags & TH_SYN:
            if not flags & TH_ACK:
                if f.base is not None:
                    if seq != f.base:
                        del self.conns[key]
                        conn, f, r = self.new_conn(key, ts, frame)
                        conn.reused = True
                    else:
                        f.nxt = f.maxs
                if conn.syn_from is None:
                    conn.syn_from = f
            elif f.base is not None and seq != f.base:
                f.base = seq
        if f.base is None:
            f.base = seq if flags & TH_SYN else (seq - 1) & M32
        if r.base is None and flags & TH_ACK:
            r.base = (ack - 1) & M32
        f.fresh = r.fresh = f.base is None or r.base is None
        return conn, f, r

    def count(self, kind, frame, f):
        """Count a Keep-Alive ACK (keep its frame number) or a zero-window probe of direction f."""
        if kind == KAACK:
            self.keepalive_ack += 1
            f.kaack += 1
            self.kaack_frames.append(frame)
        else:
            f.zwp += 1


def timeline(conn, f, r, frame, ts, seq, seglen, flags, kind):
    """The keepalive timeline (loopback duplicates and copies of a probe left out): a segment answers the peer's
    awaited probe, a Keep-Alive is a probe, the first RST and FIN are kept. After a RST the rest is teardown: the
    peer's FIN or RST then answers no probe."""
    answers = False
    if kind == KA:
        f.ka += 1
    if conn.rst is not None:
        kind = kind if kind != KA else -KA
    elif r.awaiting is not None:
        answers = True
        probe = r.awaiting
        probe.answered = True
        probe.answer_frame = frame
        r.awaiting = None
        r.run = 0
    if kind == KA:
        previous = f.awaiting
        if previous is not None:
            probe = Probe(frame, ts, seq, seglen, 'retry', ts - previous.ts, flags)
        else:
            probe = Probe(frame, ts, seq, seglen, 'idle', None if r.last is None else ts - r.last, flags)
        if f.probes is None:
            f.probes = []
        f.probes.append(probe)
        f.awaiting = probe
        f.run += 1
    if flags & TH_RST and conn.rst is None:
        conn.rst = (frame, ts, flags, f, f.run, f.probes[-1].ts if f.run else None)
    if flags & TH_FIN:
        if conn.fin is None:
            conn.fin = (frame, ts, flags, f)
        f.fin = True
    if conn.packets is not None:
        conn.packets.append((ts, f, _packet_kind(kind, flags, answers)))


def _packet_kind(kind, flags, answers):
    if flags & TH_RST:
        return 'rst'
    if kind == KA or kind == -KA:
        return 'keepalive'
    if kind:
        return KINDS[kind]
    if flags & TH_FIN:
        return 'fin'
    return 'answer' if answers else 'segment'


def _matches(focus, addr, port):
    packed, want_port = focus
    return (packed is None or packed == addr) and (want_port is None or want_port == port)


def flag_names(flags):
    """'RST|ACK' and the like."""
    return '|'.join(name for bit, name in FLAG_NAMES if flags & bit)
