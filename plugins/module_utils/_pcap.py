# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keepalive analysis of pcap and pcapng files: a streaming reader over raw
bytes, Wireshark's Keep-Alive / Keep-Alive ACK classification (frame for frame
the same as tshark's tcp.analysis.keep_alive and tcp.analysis.keep_alive_ack),
and a per-connection account of the probes compared with expected settings.

The classification follows tcp_analyze_sequence_number() of Wireshark's
packet-tcp.c (read, not copied): per direction it keeps the next expected
sequence number, the last ack, the last raw (unscaled) window, the flags of
the last segment and the list of unacknowledged segments (whose size limit
decides whether a SYN/FIN adds one to the next expected sequence number),
and a pure SYN with a new initial sequence number starts a new conversation.

Deliberate differences, documented in docs/pcap_info.md: IP fragments are
not reassembled (they are counted and skipped), tunnels (IP in IP, GRE) are
not decapsulated, and a truncated last record ends the analysis with
``truncated: true`` instead of an error (a record that cannot be valid in the
middle of the file - longer than the snapshot length, a pcapng block whose
two lengths differ - is an error that says where).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import gc
import ipaddress
import math
import os
import socket
import stat
import struct

MSG_MISSING = 'pcap file %s not found: give the path of a capture (tcpdump -w, tshark -w or the capture module)'
MSG_NOT_FILE = '%s is %s, not a regular file: give the path of a pcap or pcapng capture file'
MSG_UNREADABLE = 'cannot read %s: %s'
MSG_SHORT_HEADER = '%s is truncated: %d bytes, shorter than a pcap file header (24 bytes) or a pcapng section header'
MSG_NOT_PCAP = ('%s is not a pcap or pcapng file (it starts with %s): give a capture written by tcpdump -w, '
                'tshark -w or the capture module')
MSG_LINKTYPE = ('%s: link type %d (%s) is not supported; supported: 0 (BSD loopback), 1 (Ethernet, 802.1Q), '
                '101/228/229 (raw IP), 108 (OpenBSD loopback), 113 (Linux cooked SLL), 276 (Linux cooked SLL2); '
                'capture on another interface or with tcpdump -y EN10MB')
MSG_BAD_RECORD = ('%s is corrupt at record %d (byte %d): it claims %d captured bytes, more than %s (or the length '
                  'of the record before it is wrong)')
MSG_LIMIT_SNAPLEN = 'the snapshot length in the file header (%d)'
MSG_LIMIT_IDB = 'the snapshot length of its interface (%d)'
MSG_LIMIT_MAX = 'the largest snapshot length (%d)'
MSG_BAD_BLOCK = '%s is corrupt at pcapng block %d (byte %d): type 0x%08x, length %d'
MSG_BAD_TRAILER = ('%s is corrupt at pcapng block %d (byte %d): type 0x%08x, its length is %d at the start and %d at '
                   'the end')
MSG_BAD_PACKET = ('%s is corrupt at pcapng block %d (byte %d): the packet claims %d captured bytes, more than %s or '
                  'than its block holds')
MSG_BAD_BOM = '%s: pcapng section header at byte %d has no valid byte-order magic'
MSG_NO_IDB = '%s: packet block at byte %d names interface %d, which has no interface description block'
MSG_TRUNCATED = ('the last record of the capture (%s %d at byte %d) is truncated (the capture was probably still being '
                 'written): analysed the %d complete packets')
MSG_EXPECT = 'expect.%s must be an integer 1..%d (%s), got %r'
MSG_EXPECT_KEYS = 'expect takes time, intvl and probes, got unknown key(s): %s'
MSG_TOLERANCE = 'tolerance.%s must be a number 0..%d (%s), got %r'
MSG_TOLERANCE_KEYS = 'tolerance takes seconds and percent, got unknown key(s): %s'
MSG_CONNECTION = 'connection.%s %s'
MSG_CONNECTION_KEYS = 'connection takes address and port, got unknown key(s): %s'
MSG_DUPLICATES = ('%d frames are loopback duplicates (an outgoing frame seen again as incoming, Linux cooked capture): '
                  'they are classified like tshark does but left out of the probe timing')
MSG_FRAGMENTS = '%d IP fragments were skipped (not reassembled)'
MSG_NOT_LISTED = ('%d more connections with keepalive activity are counted and judged but not listed (only the first %d '
                  'are): select one with the connection option')
MSG_MORE_FAILED = '%d connections failed in all; select one with the connection option to see its report'
MSG_CLOSED_BY_FIN = ('%s closed the connection with a FIN at %s s (its program closed the socket or exited): keepalive '
                     'did not end it')
MSG_ABORTED = ('%s reset the connection at %s s without unanswered probes before it (its program aborted the connection '
               'or exited with unread data): keepalive did not end it')
# a module result is not the place for tens of thousands of connection reports
MAX_LISTED = 100
MAX_REASONS = 20

DEFAULT_TOLERANCE = {'seconds': 0.25, 'percent': 10.0}
# the kernel's ranges (TCP_MAX_KEEPIDLE, TCP_MAX_KEEPINTVL, TCP_MAX_KEEPCNT)
EXPECT_RANGE = {'time': (32767, 'seconds of idle time'), 'intvl': (32767, 'seconds between probes'),
                'probes': (127, 'unanswered probes before the RST')}
TOLERANCE_RANGE = {'seconds': (32767, 'seconds'), 'percent': (100, 'percent of the expected value')}
FILE_KINDS = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISSOCK, 'a socket'),
              (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'))

LINKTYPE_NAMES = {
    0: 'BSD loopback', 1: 'Ethernet', 101: 'raw IP', 108: 'OpenBSD loopback', 113: 'Linux cooked SLL',
    228: 'raw IPv4', 229: 'raw IPv6', 276: 'Linux cooked SLL2',
    9: 'PPP', 105: 'IEEE 802.11', 127: 'IEEE 802.11 radiotap', 220: 'USB Linux mmapped', 12: 'raw IP (OpenBSD)',
}
SUPPORTED = frozenset((0, 1, 101, 108, 113, 228, 229, 276))

M32 = 0xFFFFFFFF
HALF = 0x80000000
# Wireshark's TCP_MAX_UNACKED_SEGMENTS: a SYN/FIN only advances the next
# expected sequence number when the segment could be put on the unacked list.
MAX_UNACKED = 10000
CHUNK = 1 << 20
# the largest pcapng block read (a block also holds options); a packet is at most MAX_SNAPLEN bytes (tcpdump's
# MAXIMUM_SNAPLEN, Wireshark's limit for these link types)
MAX_CAPLEN = 1 << 26
MAX_SNAPLEN = 262144
# smallest valid length of the pcapng blocks read: section header, interface description, packet blocks
MIN_BLOCK = {0x0A0D0D0A: 28, 1: 20, 2: 32, 3: 16, 6: 32}
TH_FIN, TH_SYN, TH_RST, TH_PUSH, TH_ACK, TH_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
FLAG_NAMES = ((TH_SYN, 'SYN'), (TH_RST, 'RST'), (TH_FIN, 'FIN'), (TH_PUSH, 'PSH'), (TH_ACK, 'ACK'), (TH_URG, 'URG'))
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
NULL_IPV6 = frozenset((10, 24, 28, 30))
# pcapng blocks that are not packets but that Wireshark shows as frames (and numbers): systemd journal export,
# custom blocks (copiable or not), Sysdig event blocks
FRAME_BLOCKS = frozenset((0x00000009, 0x00000BAD, 0x40000BAD, 0x00000204, 0x00000208, 0x00000216, 0x00000217,
                          0x00000221, 0x00000222, 0x00000223, 0x00000224))

TCP_HDR = struct.Struct('!4xIIBBH')
# Ethernet type, IPv4 version/IHL, total length, flags/fragment offset, protocol; TCP seq, ack, offset, flags, window
ETH_FAST = struct.Struct('!12xHBxH2xHxB10x4xIIBBH')
IP4_HDR = struct.Struct('!BxHxxHxB')
PCAP_REC = {'<': struct.Struct('<IIII'), '>': struct.Struct('>IIII')}

# per-direction state (lists are the fastest mutable records in CPython)
(F_NXT, F_LACK, F_WIN, F_LFL, F_MAXS, F_BASE, F_UNACK, F_SCANACK, F_SCANLEN, F_LAST, F_AWAIT, F_RUN, F_PROBES,
 F_KA, F_KAACK, F_ZWP, F_RETX, F_KEY, F_SIDE, F_FIN, F_PKTS, F_NAME) = range(22)
LFL_KA, LFL_ZWP = 1, 2
# one probe: [frame, time, seq, length, answered, answer frame, kind, after]
P_FRAME, P_TS, P_SEQ, P_LEN, P_ANS, P_ANSFRAME, P_KIND, P_AFTER = range(8)


class PcapError(Exception):
    """The capture cannot be analysed (missing, not a capture, unsupported, corrupt) or the options are wrong.

    transient: the file may still become readable (it does not exist yet, or its header is not written yet)."""

    def __init__(self, msg, transient=False):
        super().__init__(msg)
        self.transient = transient


class _Conn:
    __slots__ = ('a', 'b', 'syn_from', 'first_ts', 'first_frame', 'rst', 'fin', 'reused', 'seq_no')

    def __init__(self, a, b, ts, frame, seq_no):
        self.a = a
        self.b = b
        self.syn_from = None
        self.first_ts = ts
        self.first_frame = frame
        self.rst = None
        self.fin = None
        self.reused = False
        self.seq_no = seq_no


# ---------------------------------------------------------------- readers

def _kind(mode):
    for test, name in FILE_KINDS:
        if test(mode):
            return name
    return 'an unknown kind of file'


def check_file(path):
    """Refuse, without opening it, what is not a regular file: a FIFO would block the reader, a device may act."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise PcapError(MSG_MISSING % path, transient=True)
    except OSError as exc:
        raise PcapError(MSG_UNREADABLE % (path, exc.strerror or exc))
    if not stat.S_ISREG(mode):
        raise PcapError(MSG_NOT_FILE % (path, _kind(mode)))


def _open(path):
    check_file(path)
    try:
        # O_NONBLOCK: should the path have become a FIFO since the check, opening it does not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_NOCTTY', 0))
    except FileNotFoundError:
        raise PcapError(MSG_MISSING % path, transient=True)
    except OSError as exc:
        raise PcapError(MSG_UNREADABLE % (path, exc.strerror or exc))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PcapError(MSG_NOT_FILE % (path, _kind(mode)))
    return os.fdopen(fd, 'rb')


def _check_linktype(path, linktype):
    if linktype not in SUPPORTED:
        raise PcapError(MSG_LINKTYPE % (path, linktype, LINKTYPE_NAMES.get(linktype, 'unknown')))


class _Reader:
    """Iterates over (buffer, offset, caplen, origlen, time, linktype) of every packet record."""

    def __init__(self, path, handle):
        self.path = path
        self.handle = handle
        self.truncated = False
        self.truncated_at = None
        self.format = None
        self.linktypes = []
        self.head = b''

    def start(self):
        head = self.handle.read(24)
        self.head = head
        if len(head) >= 4 and head[:4] == b'\x0a\x0d\x0d\x0a':
            if len(head) < 12:
                raise PcapError(MSG_SHORT_HEADER % (self.path, len(head)), transient=True)
            self.format = 'pcapng'
            return self._pcapng(head)
        if len(head) >= 4 and head[:4] in (b'\xd4\xc3\xb2\xa1', b'\x4d\x3c\xb2\xa1', b'\xa1\xb2\xc3\xd4', b'\xa1\xb2\x3c\x4d'):
            if len(head) < 24:
                raise PcapError(MSG_SHORT_HEADER % (self.path, len(head)), transient=True)
            self.format = 'pcap'
            return self._pcap(head)
        if not head:
            raise PcapError(MSG_SHORT_HEADER % (self.path, 0), transient=True)
        raise PcapError(MSG_NOT_PCAP % (self.path, head[:8].hex(' ')))

    def _pcap(self, head):
        endian = '<' if head[:2] in (b'\xd4\xc3', b'\x4d\x3c') else '>'
        nsec = head[:4] in (b'\x4d\x3c\xb2\xa1', b'\xa1\xb2\x3c\x4d')
        snaplen = struct.unpack_from(endian + 'I', head, 16)[0]
        linktype = struct.unpack_from(endian + 'I', head, 20)[0] & 0xFFFF
        _check_linktype(self.path, linktype)
        self.linktypes = [linktype]
        return self._pcap_records(endian, 1e-9 if nsec else 1e-6, linktype, snaplen)

    def _pcap_records(self, endian, scale, linktype, snaplen):
        """The records; one longer than the snapshot length cannot be valid: the file is corrupt there."""
        if 0 < snaplen <= MAX_SNAPLEN:
            limit, limit_text = snaplen, MSG_LIMIT_SNAPLEN % snaplen
        else:
            limit, limit_text = MAX_SNAPLEN, MSG_LIMIT_MAX % MAX_SNAPLEN
        rec = PCAP_REC[endian].unpack_from
        read = self.handle.read
        buf = read(CHUNK)
        n = len(buf)
        pos = 0
        consumed = 24
        number = 0
        while True:
            if pos + 16 <= n:
                sec, frac, caplen, origlen = rec(buf, pos)
                if caplen > limit:
                    raise PcapError(MSG_BAD_RECORD % (self.path, number + 1, consumed + pos, caplen, limit_text))
                end = pos + 16 + caplen
                if end <= n:
                    number += 1
                    yield buf, pos + 16, caplen, origlen, sec + frac * scale, linktype
                    pos = end
                    continue
            more = read(CHUNK)
            if more:
                consumed += pos
                buf = buf[pos:] + more
                n = len(buf)
                pos = 0
                continue
            if pos < n:
                self._cut('record', number + 1, consumed + pos)
            return

    def _cut(self, unit, number, offset):
        """The file ends inside its last record: a capture still being written, or killed while writing."""
        self.truncated = True
        self.truncated_at = {'unit': unit, 'number': number, 'offset': offset}

    def _pcapng(self, head):
        return self._pcapng_blocks(head)

    def _pcapng_blocks(self, head):
        read = self.handle.read
        buf = head + read(CHUNK)
        n = len(buf)
        pos = 0
        consumed = 0
        endian = '<'
        u32 = struct.Struct('<I').unpack_from
        ifaces = []
        number = 0
        while True:
            if pos + 12 > n:
                more = read(CHUNK)
                if more:
                    consumed += pos
                    buf = buf[pos:] + more
                    n = len(buf)
                    pos = 0
                    continue
                if pos < n:
                    self._cut('block', number + 1, consumed + pos)
                return
            btype_raw = buf[pos:pos + 4]
            if btype_raw == b'\x0a\x0d\x0d\x0a':
                bom = buf[pos + 8:pos + 12]
                if bom == b'\x4d\x3c\x2b\x1a':
                    endian = '<'
                elif bom == b'\x1a\x2b\x3c\x4d':
                    endian = '>'
                else:
                    raise PcapError(MSG_BAD_BOM % (self.path, consumed + pos))
                u32 = struct.Struct(endian + 'I').unpack_from
                ifaces = []
            btype = u32(buf, pos)[0]
            blen = u32(buf, pos + 4)[0]
            if blen < MIN_BLOCK.get(btype, 12) or blen % 4 or blen > MAX_CAPLEN:
                raise PcapError(MSG_BAD_BLOCK % (self.path, number + 1, consumed + pos, btype, blen))
            if pos + blen > n:
                more = read(max(CHUNK, blen))
                if more:
                    consumed += pos
                    buf = buf[pos:] + more
                    n = len(buf)
                    pos = 0
                    continue
                self._cut('block', number + 1, consumed + pos)
                return
            number += 1
            trailer = u32(buf, pos + blen - 4)[0]
            if trailer != blen:
                raise PcapError(MSG_BAD_TRAILER % (self.path, number, consumed + pos, btype, blen, trailer))
            if btype == 6 or btype == 3 or btype == 2:
                if btype == 6:
                    ifid, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(endian + 'IIIII', buf, pos + 8)
                    data = pos + 28
                elif btype == 3:
                    ifid = 0
                    ts_hi = ts_lo = 0
                    origlen = u32(buf, pos + 8)[0]
                    caplen = min(origlen, blen - 16)
                    data = pos + 12
                else:
                    ifid, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(endian + 'HHIIII', buf, pos + 8)
                    data = pos + 28
                if ifid >= len(ifaces):
                    raise PcapError(MSG_NO_IDB % (self.path, consumed + pos, ifid))
                linktype, snaplen, units, offset = ifaces[ifid]
                if btype == 3 and snaplen:
                    caplen = min(caplen, snaplen)
                if data + caplen > pos + blen - 4 or caplen > MAX_SNAPLEN or (snaplen and caplen > snaplen):
                    limit = MSG_LIMIT_IDB % snaplen if 0 < snaplen <= MAX_SNAPLEN else MSG_LIMIT_MAX % MAX_SNAPLEN
                    raise PcapError(MSG_BAD_PACKET % (self.path, number, consumed + pos, caplen, limit))
                stamp = (ts_hi << 32) | ts_lo
                sec, frac = divmod(stamp, units)
                yield buf, data, caplen, origlen, offset + sec + frac / units, linktype
            elif btype in FRAME_BLOCKS:
                # not a packet, but Wireshark gives it a frame number: count it so the numbers stay the same
                yield buf, pos, 0, 0, 0.0, -1
            elif btype == 1:
                linktype, _res, snaplen = struct.unpack_from(endian + 'HHI', buf, pos + 8)
                _check_linktype(self.path, linktype)
                units, offset = _idb_options(buf, pos + 16, pos + blen - 4, endian)
                if units is None:
                    raise PcapError(MSG_BAD_BLOCK % (self.path, number, consumed + pos, btype, blen))
                ifaces.append((linktype, snaplen, units, offset))
                if linktype not in self.linktypes:
                    self.linktypes.append(linktype)
            pos += blen


def _idb_options(buf, pos, end, endian):
    """(units per second, offset) of an interface description block; (None, None) when an option overruns it."""
    units = 1000000
    offset = 0
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + 'HH', buf, pos)
        if code == 0:
            break
        value = pos + 4
        if value + length > end:
            return None, None
        if code == 9 and length >= 1:
            res = buf[value]
            units = 2 ** (res & 0x7F) if res & 0x80 else 10 ** res
        elif code == 14 and length == 8:
            offset = struct.unpack_from(endian + 'q', buf, value)[0]
        pos = value + ((length + 3) & ~3)
    return units, offset


# ---------------------------------------------------------------- options

def _int_in(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def normalise_expect(expect):
    if not expect:
        return None
    unknown = sorted(set(expect) - {'time', 'intvl', 'probes'})
    if unknown:
        raise PcapError(MSG_EXPECT_KEYS % ', '.join(unknown))
    result = {}
    for key in ('time', 'intvl', 'probes'):
        value = expect.get(key)
        if value is None:
            continue
        high, what = EXPECT_RANGE[key]
        if not _int_in(value, 1, high):
            raise PcapError(MSG_EXPECT % (key, high, what, value))
        result[key] = value
    return result or None


def normalise_tolerance(tolerance):
    result = dict(DEFAULT_TOLERANCE)
    if tolerance:
        unknown = sorted(set(tolerance) - set(DEFAULT_TOLERANCE))
        if unknown:
            raise PcapError(MSG_TOLERANCE_KEYS % ', '.join(unknown))
        for key in DEFAULT_TOLERANCE:
            value = tolerance.get(key)
            if value is None:
                continue
            high, what = TOLERANCE_RANGE[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 <= value <= high:
                raise PcapError(MSG_TOLERANCE % (key, high, what, value))
            result[key] = float(value)
    return result


def normalise_connection(connection):
    """(packed address or None, port or None), or None for no filter."""
    if not connection:
        return None
    unknown = sorted(set(connection) - {'address', 'port'})
    if unknown:
        raise PcapError(MSG_CONNECTION_KEYS % ', '.join(unknown))
    address = connection.get('address')
    port = connection.get('port')
    packed = None
    if address is not None:
        try:
            packed = ipaddress.ip_address(str(address)).packed
        except ValueError:
            raise PcapError(MSG_CONNECTION % ('address', 'must be an IPv4 or IPv6 address, got %r' % (address,)))
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise PcapError(MSG_CONNECTION % ('port', 'must be a port number 0..65535, got %r' % (port,)))
    if packed is None and port is None:
        return None
    return packed, port


# ---------------------------------------------------------------- the analysis

def analyse(path, expect=None, connection=None, tolerance=None, return_frames=False):
    """Analyse the capture at path; the dict pcap_info returns (without changed). Raises PcapError."""
    expect = normalise_expect(expect)
    tol = normalise_tolerance(tolerance)
    focus = normalise_connection(connection)
    handle = _open(path)
    # The scan allocates a few containers per connection and none of them form reference cycles: the cyclic garbage
    # collector would only rescan them again and again (a fifth of the run time with tens of thousands of connections).
    collecting = gc.isenabled()
    gc.disable()
    try:
        reader = _Reader(path, handle)
        records = reader.start()
        state = _scan(records, focus, return_frames)
    except OSError as exc:   # an I/O error while reading (EIO, a file system gone)
        raise PcapError(MSG_UNREADABLE % (path, exc.strerror or exc))
    finally:
        if collecting:
            gc.enable()
        handle.close()
    state['format'] = reader.format
    state['linktypes'] = reader.linktypes
    state['truncated'] = reader.truncated
    state['truncated_at'] = reader.truncated_at
    return _report(path, state, expect, tol, focus, return_frames)


def _scan(records, focus, return_frames):
    """The hot loop: parse every frame and classify its TCP segment. Returns the raw state."""
    tcp_hdr = TCP_HDR.unpack_from
    ip4_hdr = IP4_HDR.unpack_from
    eth_fast = ETH_FAST.unpack_from
    conns = {}
    finished = []
    ka_frames = []
    kaack_frames = []
    counters = {'packets': 0, 'tcp': 0, 'fragments': 0, 'short': 0, 'duplicates': 0}
    n_ka = n_kaack = 0
    frame = 0
    tcp = 0
    first_ts = None
    skip = _Conn(None, None, 0.0, 0, -1)  # shared marker of connections outside the focus
    conn_no = 0
    prev_out = None
    fragments = short = duplicates = 0
    for buf, off, caplen, origlen, ts, lt in records:
        frame += 1
        if first_ts is None:
            first_ts = ts
        dup = False
        if lt == 1 and caplen >= 54:
            # fast path: Ethernet, IPv4 without options, not a fragment, TCP
            et, b0, total, fragword, proto, seq, ack, offb, flags, win = eth_fast(buf, off)
            if et != 0x0800 or b0 != 0x45 or proto != 6 or fragword & 0x3FFF:
                et = -1
        else:
            et = -1
        if et != -1:
            if total == 0 or total > origlen - 14:
                total = origlen - 14
            tcplen = total - 20
            if tcplen < 16:
                short += 1
                continue
            key = buf[off + 26:off + 38]
        else:
            end = off + caplen
            # ---- link layer
            if lt == 1:
                if caplen < 14:
                    short += 1
                    continue
                et = buf[off + 12] << 8 | buf[off + 13]
                p = off + 14
                while et in VLAN_TPIDS and p + 4 <= end:
                    et = buf[p + 2] << 8 | buf[p + 3]
                    p += 4
            elif lt == 113 or lt == 276:
                if lt == 113:
                    if caplen < 16:
                        short += 1
                        continue
                    et = buf[off + 14] << 8 | buf[off + 15]
                    pkttype = buf[off + 1]
                    p = off + 16
                else:
                    if caplen < 20:
                        short += 1
                        continue
                    et = buf[off] << 8 | buf[off + 1]
                    pkttype = buf[off + 10]
                    p = off + 20
                if pkttype == 4:
                    prev_out = buf[p:end]
                elif prev_out is not None:
                    if prev_out == buf[p:end]:
                        dup = True
                        duplicates += 1
                    prev_out = None
            elif lt == 0 or lt == 108:
                if caplen < 4:
                    short += 1
                    continue
                if lt == 108:
                    fam = buf[off] << 24 | buf[off + 1] << 16 | buf[off + 2] << 8 | buf[off + 3]
                else:
                    fam = buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16 | buf[off + 3] << 24
                    if fam > 0xFFFF:
                        fam = buf[off] << 24 | buf[off + 1] << 16 | buf[off + 2] << 8 | buf[off + 3]
                p = off + 4
                et = 0x0800 if fam == 2 else (0x86DD if fam in NULL_IPV6 else 0)
            elif lt < 0:   # a pcapng block Wireshark numbers as a frame
                continue
            else:  # raw IP: 101, 228, 229
                p = off
                if caplen < 1:
                    short += 1
                    continue
                version = buf[off] >> 4
                et = 0x0800 if version == 4 else (0x86DD if version == 6 else 0)
            # ---- network layer
            rep = origlen - (p - off)
            if et == 0x0800:
                if p + 20 > end:
                    short += 1
                    continue
                b0, total, fragword, proto = ip4_hdr(buf, p)
                if proto != 6:
                    continue
                if b0 == 0x45:
                    t = p + 20
                    key = buf[p + 12:p + 24]
                    ihl = 20
                else:
                    ihl = (b0 & 15) * 4
                    if b0 >> 4 != 4 or ihl < 20:
                        continue
                    t = p + ihl
                    key = buf[p + 12:p + 20] + buf[t:t + 4]
                if fragword & 0x3FFF:
                    fragments += 1
                    continue
                if total == 0 or total > rep:
                    total = rep
                if total < ihl:
                    continue
                tcplen = total - ihl
            elif et == 0x86DD:
                if p + 40 > end:
                    short += 1
                    continue
                if buf[p] >> 4 != 6:
                    continue
                nxt = buf[p + 6]
                plen = buf[p + 4] << 8 | buf[p + 5]
                total = plen + 40
                if plen == 0 or total > rep:
                    total = rep
                t = p + 40
                frag = False
                while nxt != 6:
                    if t + 8 > end:
                        nxt = -1
                        break
                    if nxt == 44:
                        if (buf[t + 2] << 8 | buf[t + 3]) & 0xFFF9:
                            frag = True
                            break
                        nxt = buf[t]
                        t += 8
                    elif nxt in IPV6_EXT:
                        nxt, t = buf[t], t + (buf[t + 1] + 1) * 8
                    elif nxt == 51:
                        nxt, t = buf[t], t + (buf[t + 1] + 2) * 4
                    else:
                        break
                if frag:
                    fragments += 1
                    continue
                if nxt != 6:
                    continue
                tcplen = total - (t - p)
                key = buf[p + 8:p + 44] if t == p + 40 else buf[p + 8:p + 40] + buf[t:t + 4]
            else:
                continue
            # ---- TCP
            if t + 16 > end or tcplen < 16:
                short += 1
                continue
            seq, ack, offb, flags, win = tcp_hdr(buf, t)
        tcp += 1
        seglen = tcplen - (offb >> 4) * 4
        if seglen < 0:
            continue
        try:
            conn, f, r = conns[key]
        except KeyError:
            conn_no += 1
            conn, f, r = _new_conn(conns, key, ts, frame, focus, skip, conn_no)
        if conn is skip:
            continue
        # ---- conversation: a pure SYN with a new ISN starts a new one (Wireshark's "port numbers reused")
        if flags & TH_SYN:
            if not flags & TH_ACK:
                if f[F_BASE] is not None:
                    if seq != f[F_BASE]:
                        finished.append(conn)
                        conn_no += 1
                        del conns[key]
                        conn, f, r = _new_conn(conns, key, ts, frame, focus, skip, conn_no)
                        conn.reused = True
                    else:
                        f[F_NXT] = f[F_MAXS]
                if conn.syn_from is None:
                    conn.syn_from = f
            elif f[F_BASE] is not None and seq != f[F_BASE]:
                f[F_BASE] = seq
        if f[F_BASE] is None:
            f[F_BASE] = seq if flags & TH_SYN else (seq - 1) & M32
        if r[F_BASE] is None and flags & TH_ACK:
            r[F_BASE] = (ack - 1) & M32
        # ---- tcp_analyze_sequence_number. Sequence numbers are compared as in Wireshark's GT_SEQ (signed 32-bit
        # difference), written as differences of Python ints so that no mask has to be computed on the common path.
        nxt = f[F_NXT]
        rm = r[F_MAXS]
        if rm and rm > r[F_NXT] and flags & TH_ACK:
            d = ack - rm
            if 0 < d < HALF or d <= -HALF:   # GT_SEQ(ack, maxseqtobeacked)
                r[F_MAXS] = r[F_NXT]
        if seglen > 1:
            # carries data: never a zero-window probe, Keep-Alive or Keep-Alive ACK
            ka = False
            nseq = seq + seglen
            if nseq > M32:
                nseq -= 0x100000000
            unacked = f[F_UNACK]
            if len(unacked) < MAX_UNACKED:
                if flags & 3:
                    nseq = (nseq + 1) & M32
                unacked.append(nseq)
            if seq == nxt:   # in order (the usual case): the next expected seq moves on
                f[F_NXT] = nseq
            elif nxt:
                d = nxt - seq
                if 0 < d < HALF or d <= -HALF:   # LT_SEQ(seq, nextseq): sent before
                    f[F_RETX] += 1
                d = nseq - nxt
                if 0 < d < HALF or d <= -HALF:   # GT_SEQ(nextseq of this segment, nextseq)
                    f[F_NXT] = nseq
            else:
                f[F_NXT] = nseq
            ms = f[F_MAXS]
            if seq == ms or not ms:
                f[F_MAXS] = f[F_NXT]
            f[F_LFL] = 0
        else:
            ka = zwp = False
            if seglen and seq == nxt and r[F_WIN] == 0:
                zwp = True
                f[F_ZWP] += 1
            elif (seq + 1 == nxt or (not nxt and seq == M32)) and not flags & 7:
                ka = True
                n_ka += 1
                if return_frames:
                    ka_frames.append(frame)
            elif (r[F_LFL] == LFL_KA and not seglen and win and win == f[F_WIN] and seq == nxt and ack == f[F_LACK]
                  and not flags & 7):
                n_kaack += 1
                f[F_KAACK] += 1
                if return_frames:
                    kaack_frames.append(frame)
            if seglen:
                nseq = seq + 1
                if nseq > M32:
                    nseq = 0
            else:
                nseq = seq
            if seglen or flags & 3:
                if nxt and not ka and not zwp:
                    d = nxt - seq
                    if 0 < d < HALF or d <= -HALF:
                        f[F_RETX] += 1
                unacked = f[F_UNACK]
                if len(unacked) < MAX_UNACKED:
                    if flags & 3:
                        nseq = (nseq + 1) & M32
                    unacked.append(nseq)
            if zwp:
                f[F_LFL] = LFL_ZWP
            else:
                if nseq != nxt:
                    if nxt:
                        d = nseq - nxt
                        if 0 < d < HALF or d <= -HALF:
                            f[F_NXT] = nseq
                    else:
                        f[F_NXT] = nseq
                ms = f[F_MAXS]
                if seq == ms or not ms:
                    f[F_MAXS] = f[F_NXT]
                f[F_LFL] = LFL_KA if ka else 0
        f[F_WIN] = win
        f[F_LACK] = ack
        ru = r[F_UNACK]
        if ru and (ack != r[F_SCANACK] or len(ru) != r[F_SCANLEN]):
            # drop the segments this acknowledges: those whose end is not GT_SEQ(end, ack)
            if len(ru) == 1:
                d = ru[0] - ack
                if not (0 < d < HALF or d <= -HALF):
                    ru.clear()
            else:
                ru[:] = [x for x in ru if (ack - x) & M32 >= HALF]
            r[F_SCANACK] = ack
            r[F_SCANLEN] = len(ru)
        # ---- keepalive timeline (loopback duplicates left out; after a RST the rest is teardown: the peer's FIN
        # or RST then answers no probe)
        if dup:
            continue
        if ka:
            f[F_KA] += 1
        if conn.rst is not None:
            ka = False
        elif r[F_AWAIT] is not None:
            probe = r[F_AWAIT]
            probe[P_ANS] = True
            probe[P_ANSFRAME] = frame
            r[F_AWAIT] = None
            r[F_RUN] = 0
        if ka:
            previous = f[F_AWAIT]
            if previous is not None:
                probe = [frame, ts, seq, seglen, False, None, 'retry', ts - previous[P_TS]]
            else:
                last = r[F_LAST]
                probe = [frame, ts, seq, seglen, False, None, 'idle', None if last is None else ts - last]
            if f[F_PROBES] is None:
                f[F_PROBES] = []
            f[F_PROBES].append(probe)
            f[F_AWAIT] = probe
            f[F_RUN] += 1
        if flags & 5:
            if flags & TH_RST and conn.rst is None:
                probes = f[F_PROBES]
                conn.rst = (frame, ts, flags, f, f[F_RUN], probes[-1][P_TS] if f[F_RUN] else None)
            if flags & TH_FIN:
                if conn.fin is None:
                    conn.fin = (frame, ts, flags, f)
                f[F_FIN] = True
        f[F_LAST] = ts
    counters['packets'] = frame
    counters['tcp'] = tcp
    counters['fragments'] = fragments
    counters['short'] = short
    counters['duplicates'] = duplicates
    seen = set()
    for conn, _f, _r in conns.values():
        if conn is not skip and id(conn) not in seen:
            seen.add(id(conn))
            finished.append(conn)
    finished.sort(key=lambda c: c.seq_no)
    return {'conns': finished, 'counters': counters, 'keepalive': n_ka, 'keepalive_ack': n_kaack,
            'ka_frames': ka_frames, 'kaack_frames': kaack_frames, 'first_ts': first_ts}


def _new_conn(conns, key, ts, frame, focus, skip, seq_no):
    """Register a connection under both directional keys; its flows keep the key and their side (0: source)."""
    n = len(key) - 4
    alen = n >> 1
    rkey = key[alen:n] + key[:alen] + key[n + 2:] + key[n:n + 2]
    if focus is not None:
        sport, dport = struct.unpack_from('!HH', key, n)
        if not (_matches(focus, key[:alen], sport) or _matches(focus, key[alen:n], dport)):
            entry = (skip, None, None)
            conns[key] = entry
            conns[rkey] = entry
            return entry
    a = [0, 0, M32, 0, 0, None, [], -1, 0, None, None, 0, None, 0, 0, 0, 0, key, 0, False, 0, None]
    b = [0, 0, M32, 0, 0, None, [], -1, 0, None, None, 0, None, 0, 0, 0, 0, key, 1, False, 0, None]
    conn = _Conn(a, b, ts, frame, seq_no)
    entry = (conn, a, b)
    conns[key] = entry
    if rkey != key:
        conns[rkey] = (conn, b, a)
    else:  # a socket connected to itself: one flow, as in Wireshark
        conn.b = a
    return entry


def _matches(focus, addr, port):
    packed, want_port = focus
    return (packed is None or packed == addr) and (want_port is None or want_port == port)


# ---------------------------------------------------------------- the report

def _num(value):
    text = '%.3f' % value
    return text.rstrip('0').rstrip('.') if '.' in text else text


def _endpoint(flow):
    name = flow[F_NAME]
    if name is None:
        key = flow[F_KEY]
        n = len(key) - 4
        alen = n >> 1
        side = flow[F_SIDE]
        addr = key[alen * side:alen * (side + 1)]
        port = struct.unpack_from('!H', key, n + 2 * side)[0]
        if alen == 4:
            name = '%s:%d' % (socket.inet_ntop(socket.AF_INET, addr), port)
        else:
            name = '[%s]:%d' % (socket.inet_ntop(socket.AF_INET6, addr), port)
        flow[F_NAME] = name
    return name


def flag_names(flags):
    return '|'.join(name for bit, name in FLAG_NAMES if flags & bit)


def _allowed(expected, tol):
    return tol['seconds'] + expected * tol['percent'] / 100.0


def _fits(value, expected, tol):
    return abs(value - expected) <= _allowed(expected, tol)


def _override(values, expected, tol):
    """The whole number of seconds all values fit when it is not the expected one, else None."""
    if not values or all(_fits(v, expected, tol) for v in values):
        # values within tolerance of the expected one are the expected one
        # (long timers come late by the timer wheel's granularity: 30 s -> ~31.2 s)
        return None
    guess = int(round(sorted(values)[len(values) // 2]))
    if guess < 1 or guess == expected:
        return None
    if all(_fits(v, guess, tol) for v in values):
        return guess
    return None


def _report(path, state, expect, tol, focus, return_frames):
    counters = state['counters']
    t0 = state['first_ts'] or 0.0
    listed = []
    n_conns = 0
    not_listed = 0
    rst_after_probes = 0
    zwp_total = retx_total = 0
    judged = failed = reported = 0
    reasons = []
    for conn in state['conns']:
        n_conns += 1
        a, b = conn.a, conn.b
        if b is a:
            flows = (a,)
            zwp, retx, probing = a[F_ZWP], a[F_RETX], a[F_PROBES] is not None
        else:
            flows = (a, b)
            zwp = a[F_ZWP] + b[F_ZWP]
            retx = a[F_RETX] + b[F_RETX]
            probing = a[F_PROBES] is not None or b[F_PROBES] is not None
        zwp_total += zwp
        retx_total += retx
        if conn.rst is not None and conn.rst[4]:
            rst_after_probes += 1
        in_flight = _in_flight(conn) if retx else {}
        if focus is None and not (probing or zwp or in_flight):
            continue
        if len(listed) < MAX_LISTED:
            entry = _conn_report(conn, flows, t0, expect, tol, zwp, retx, in_flight, focus is not None)
            listed.append(entry)
            verdict, why = entry['verdict'], entry['reasons']
            name = entry['name']
        else:
            not_listed += 1
            if not expect:
                continue
            verdict, why = _conn_verdict(conn, flows, expect, tol, focus is not None)
            name = None
        if verdict is not None:
            judged += 1
        if verdict == 'fail':
            failed += 1
            if len(reasons) < MAX_REASONS:
                reported += 1
                if name is None:
                    name = _conn_name(conn)
                reasons.extend('%s: %s' % (name, reason) for reason in why)
    summary = {
        'packets': counters['packets'],
        'tcp_packets': counters['tcp'],
        'connections': n_conns,
        'keepalive': state['keepalive'],
        'keepalive_ack': state['keepalive_ack'],
        'rst_after_probes': rst_after_probes,
        'zero_window_probes': zwp_total,
        'retransmissions': retx_total,
        'fragments_skipped': counters['fragments'],
        'loopback_duplicates': counters['duplicates'],
        'listed': len(listed),
        'not_listed': not_listed,
        'notes': [],
    }
    if not_listed:
        summary['notes'].append(MSG_NOT_LISTED % (not_listed, MAX_LISTED))
    if counters['duplicates']:
        summary['notes'].append(MSG_DUPLICATES % counters['duplicates'])
    if counters['fragments']:
        summary['notes'].append(MSG_FRAGMENTS % counters['fragments'])
    if state['truncated']:
        summary['notes'].append(truncation_note(state['truncated_at'], counters['packets']))
    result = {
        'path': path,
        'format': state['format'],
        'link_types': state['linktypes'],
        'truncated': state['truncated'],
        'truncated_at': state['truncated_at'],
        'start': t0,
        'summary': summary,
        'connections': listed,
        'expect': expect,
        'tolerance': tol,
        'verdict': None,
        'reasons': [],
    }
    if expect:
        if not judged:
            result['verdict'] = 'fail'
            result['reasons'].append('no keepalive probes found in %s' % ('the focused connection(s)' if focus else 'the capture'))
        else:
            result['verdict'] = 'fail' if failed else 'pass'
            result['reasons'] = reasons
            if failed > reported:
                result['reasons'].append(MSG_MORE_FAILED % failed)
    if return_frames:
        result['keepalive_frames'] = state['ka_frames']
        result['keepalive_ack_frames'] = state['kaack_frames']
    return result


def truncation_note(truncated_at, packets):
    """The note (and the module's warning) of a capture whose last record is cut short."""
    where = truncated_at or {'unit': 'record', 'number': packets + 1, 'offset': 0}
    return MSG_TRUNCATED % (where['unit'], where['number'], where['offset'], packets)


def _in_flight(conn):
    """{endpoint flow index: bytes sent but not acknowledged at the end} (data only, not SYN/FIN)."""
    result = {}
    for f, r in ((conn.a, conn.b), (conn.b, conn.a)):
        if f is r or r[F_BASE] is None or not f[F_NXT]:
            continue
        gap = (f[F_NXT] - r[F_LACK]) & M32
        if f[F_FIN]:
            gap = (gap - 1) & M32
        if 0 < gap < HALF:
            result[id(f)] = gap
    return result


def _order(conn):
    first = conn.syn_from if conn.syn_from is not None else conn.a
    second = conn.b if first is conn.a else conn.a
    return first, second


def _conn_name(conn):
    first, second = _order(conn)
    return '%s -> %s' % (_endpoint(first), _endpoint(second))


def _idle_spacing(probes):
    idle = [p[P_AFTER] for p in probes if p[P_KIND] == 'idle' and p[P_AFTER] is not None]
    spacing = [p[P_AFTER] for p in probes if p[P_KIND] == 'retry']
    return idle, spacing


def _conn_verdict(conn, flows, expect, tol, focused):
    """(verdict, reasons) of a connection that is not listed: the same judgement without the report."""
    first, second = _order(conn)
    verdict = None
    reasons = []
    for f in (first, second) if second is not first else (first,):
        if f[F_PROBES]:
            verdict = verdict or 'pass'
            idle, spacing = _idle_spacing(f[F_PROBES])
            why = _judge(conn, f, f[F_PROBES], idle, spacing, expect, tol, {'notes': []})
            if why:
                verdict = 'fail'
                reasons.extend('%s: %s' % (_endpoint(f), reason) for reason in why)
    if verdict is None and focused:
        return 'fail', ['no keepalive probes']
    return verdict, reasons


def _conn_report(conn, flows, t0, expect, tol, zwp, retx, in_flight, focused):
    first, second = _order(conn)
    name = '%s -> %s' % (_endpoint(first), _endpoint(second))
    probers = []
    for f in (first, second):
        if f[F_PROBES]:
            r = second if f is first else first
            probers.append(_prober_report(conn, f, r, t0, expect, tol))
        if f is second and second is first:
            break
    notes = []
    reasons = []
    rst = None
    if conn.rst is not None:
        frame, ts, flags, f, run, last_probe_ts = conn.rst
        r = second if f is first else first
        rst = {'from': _endpoint(f), 'to': _endpoint(r), 'frame': frame, 'time': round(ts - t0, 6),
               'flags': flag_names(flags), 'after_probes': run,
               'after_last_probe': None if last_probe_ts is None else round(ts - last_probe_ts, 6)}
        if run == 0 and any(p['endpoint'] == _endpoint(r) for p in probers):
            notes.append('the RST came from %s, the peer of the prober, not after unanswered probes' % _endpoint(f))
        elif run == 0 and probers and (conn.fin is None or frame < conn.fin[0]):
            notes.append(MSG_ABORTED % (_endpoint(f), _num(ts - t0)))
    fin = None
    if conn.fin is not None:
        frame, ts, flags, f = conn.fin
        r = second if f is first else first
        fin = {'from': _endpoint(f), 'to': _endpoint(r), 'frame': frame, 'time': round(ts - t0, 6),
               'flags': flag_names(flags)}
        if probers and (conn.rst is None or frame < conn.rst[0]):
            notes.append(MSG_CLOSED_BY_FIN % (_endpoint(f), _num(ts - t0)))
    flight = {}
    for f in (first, second):
        if id(f) in in_flight:
            flight[_endpoint(f)] = in_flight[id(f)]
    if flight and retx:
        for endpoint, nbytes in flight.items():
            notes.append('%s had %d bytes unacknowledged and %d retransmissions: the kernel sends no keepalive probes '
                         'while data is in flight; retransmission timeouts (tcp_retries2) or TCP_USER_TIMEOUT end such '
                         'a connection, not keepalive' % (endpoint, nbytes, retx))
    elif retx:
        notes.append('%d retransmitted segments are not keepalives' % retx)
    if zwp:
        notes.append('%d zero-window probes (1 byte at the next sequence number while the peer advertises window 0) '
                     'are not keepalives' % zwp)
    if conn.reused:
        notes.append('the ports were reused: this is a new connection after an earlier one on the same ports')
    verdict = None
    if expect:
        if probers:
            verdict = 'pass'
            for p in probers:
                if p['verdict'] == 'fail':
                    verdict = 'fail'
                    reasons.extend('%s: %s' % (p['endpoint'], reason) for reason in p['reasons'])
        elif focused:
            verdict = 'fail'
            reasons.append('no keepalive probes' + ('; ' + notes[0] if notes else ''))
    kinds = sum(f[F_KA] for f in flows)
    return {
        'name': name,
        'endpoints': [_endpoint(first), _endpoint(second)],
        'handshake_seen': conn.syn_from is not None,
        'first_frame': conn.first_frame,
        'start': round(conn.first_ts - t0, 6),
        'end': round(max(f[F_LAST] or conn.first_ts for f in flows) - t0, 6),
        'keepalive': kinds,
        'keepalive_ack': sum(f[F_KAACK] for f in flows),
        'zero_window_probes': zwp,
        'retransmissions': retx,
        'in_flight_at_end': flight,
        'probers': probers,
        'rst': rst,
        'fin': fin,
        'notes': notes,
        'verdict': verdict,
        'reasons': reasons,
    }


def _prober_report(conn, f, r, t0, expect, tol):
    probes = f[F_PROBES]
    out = []
    idle = []
    spacing = []
    for index, p in enumerate(probes, 1):
        out.append({'number': index, 'frame': p[P_FRAME], 'time': round(p[P_TS] - t0, 6), 'seq': p[P_SEQ],
                    'length': p[P_LEN], 'answered': p[P_ANS], 'answer_frame': p[P_ANSFRAME], 'kind': p[P_KIND],
                    'after': None if p[P_AFTER] is None else round(p[P_AFTER], 6)})
        if p[P_AFTER] is not None:
            (spacing if p[P_KIND] == 'retry' else idle).append(p[P_AFTER])
    final_run = f[F_RUN]
    report = {
        'endpoint': _endpoint(f),
        'peer': _endpoint(r),
        'probes': out,
        'count': len(probes),
        'answered': sum(1 for p in probes if p[P_ANS]),
        'unanswered': sum(1 for p in probes if not p[P_ANS]),
        'final_unanswered': final_run,
        'idle_before_first_probe': None if probes[0][P_AFTER] is None or probes[0][P_KIND] != 'idle'
        else round(probes[0][P_AFTER], 6),
        'idle_times': [round(v, 6) for v in idle],
        'spacing': [round(v, 6) for v in spacing],
        'rst_sent': conn.rst is not None and conn.rst[3] is f,
        'verdict': None,
        'reasons': [],
        'notes': [],
    }
    if probes[0][P_KIND] == 'idle' and probes[0][P_AFTER] is None:
        report['notes'].append('no segment from %s before probe 1 in the capture: the idle time before it is unknown'
                               % report['peer'])
    if expect:
        report['reasons'] = _judge(conn, f, probes, idle, spacing, expect, tol, report)
        report['verdict'] = 'fail' if report['reasons'] else 'pass'
    return report


def _judge(conn, f, probes, idle, spacing, expect, tol, report):
    reasons = []
    want_time = expect.get('time')
    want_intvl = expect.get('intvl')
    want_probes = expect.get('probes')
    if want_time is not None and idle:
        override = _override(idle, want_time, tol)
        if override is not None:
            reasons.append("idle time fits a per-socket TCP_KEEPIDLE of %d s, not the sysctl's %d s" % (override, want_time))
        for index, p in enumerate(probes, 1):
            if p[P_KIND] == 'idle' and p[P_AFTER] is not None and not _fits(p[P_AFTER], want_time, tol):
                reasons.append('probe %d came %s s after the last segment from the peer, expected time %d s ± %s s'
                               % (index, _num(p[P_AFTER]), want_time, _num(_allowed(want_time, tol))))
    if want_intvl is not None and spacing:
        override = _override(spacing, want_intvl, tol)
        if override is not None:
            reasons.append("spacing fits a per-socket TCP_KEEPINTVL of %d s, not the sysctl's %d s" % (override, want_intvl))
        for index, p in enumerate(probes, 1):
            if p[P_KIND] == 'retry' and not _fits(p[P_AFTER], want_intvl, tol):
                reasons.append('probe %d came %s s after probe %d, expected %d s ± %s s'
                               % (index, _num(p[P_AFTER]), index - 1, want_intvl, _num(_allowed(want_intvl, tol))))
    rst = conn.rst
    if rst is not None and rst[3] is f and rst[4]:
        run = rst[4]
        after = rst[1] - rst[5]
        if want_probes is not None and run < want_probes:
            reasons.append('RST after %d unanswered probe%s, expected %d: a TCP_USER_TIMEOUT (or a per-socket '
                           'TCP_KEEPCNT of %d) ended the connection' % (run, '' if run == 1 else 's', want_probes, run))
        elif want_probes is not None and run > want_probes:
            reasons.append('RST after %d unanswered probes, expected %d: fits a per-socket TCP_KEEPCNT of %d'
                           % (run, want_probes, run))
        if want_intvl is not None and not _fits(after, want_intvl, tol):
            reasons.append('RST came %s s after probe %d, expected %d s ± %s s (a TCP_USER_TIMEOUT-style ending)'
                           % (_num(after), len(probes), want_intvl, _num(_allowed(want_intvl, tol))))
    elif want_probes is not None:
        run = f[F_RUN]
        if run > want_probes:
            reasons.append('%d unanswered probes and no RST, expected a RST after %d' % (run, want_probes))
        elif run:
            report['notes'].append('the capture ends after %d unanswered probe%s without a RST (expected after %d)'
                                   % (run, '' if run == 1 else 's', want_probes))
    return reasons
