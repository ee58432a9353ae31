# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading pcap and pcapng captures: a streaming reader over raw bytes that
yields every packet record with its time stamp and link type, and the checks
made before a file is opened (a FIFO would block the reader, a device may act).

Both byte orders, microsecond and nanosecond pcap, pcapng sections,
interfaces with their own time resolution and offset. A truncated last
record (a capture still being written) ends the records with ``truncated``
set; a record that cannot be valid in the middle of the file is an error that
says where.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import os
import stat
import struct

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import file_kind

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

LINKTYPE_NAMES = {
    0: 'BSD loopback', 1: 'Ethernet', 101: 'raw IP', 108: 'OpenBSD loopback', 113: 'Linux cooked SLL',
    228: 'raw IPv4', 229: 'raw IPv6', 276: 'Linux cooked SLL2',
    9: 'PPP', 105: 'IEEE 802.11', 127: 'IEEE 802.11 radiotap', 220: 'USB Linux mmapped', 12: 'raw IP (OpenBSD)',
}
SUPPORTED = frozenset((0, 1, 101, 108, 113, 228, 229, 276))

CHUNK = 1 << 20
# the largest pcapng block read (a block also holds options); a packet is at most MAX_SNAPLEN bytes (tcpdump's
# MAXIMUM_SNAPLEN, Wireshark's limit for these link types)
MAX_CAPLEN = 1 << 26
MAX_SNAPLEN = 262144
# smallest valid length of the pcapng blocks read: section header, interface description, packet blocks
MIN_BLOCK = {0x0A0D0D0A: 28, 1: 20, 2: 32, 3: 16, 6: 32}
# pcapng blocks that are not packets but that Wireshark shows as frames (and numbers): systemd journal export,
# custom blocks (copiable or not), Sysdig event blocks
FRAME_BLOCKS = frozenset((0x00000009, 0x00000BAD, 0x40000BAD, 0x00000204, 0x00000208, 0x00000216, 0x00000217,
                          0x00000221, 0x00000222, 0x00000223, 0x00000224))
PCAP_MAGIC = (b'\xd4\xc3\xb2\xa1', b'\x4d\x3c\xb2\xa1', b'\xa1\xb2\xc3\xd4', b'\xa1\xb2\x3c\x4d')
PCAPNG_MAGIC = b'\x0a\x0d\x0d\x0a'
PCAP_REC = {'<': struct.Struct('<IIII'), '>': struct.Struct('>IIII')}
# the record header of pcapng chunks: time stamp, 0, captured and original length (time + 0 * scale is the time)
NORM_REC = struct.Struct('=dIII')


class PcapError(Exception):
    """The capture cannot be analysed (missing, not a capture, unsupported, corrupt) or the options are wrong.

    transient: the file may still become readable (it does not exist yet, or its header is not written yet)."""

    def __init__(self, msg, transient=False):
        super().__init__(msg)
        self.transient = transient


def check_file(path):
    """Refuse, without opening it, what is not a regular file: a FIFO would block the reader, a device may act."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise PcapError(MSG_MISSING % path, transient=True)
    except OSError as exc:
        raise PcapError(MSG_UNREADABLE % (path, exc.strerror or exc))
    if not stat.S_ISREG(mode):
        raise PcapError(MSG_NOT_FILE % (path, file_kind(mode)))


def open_capture(path, follow=True):
    """The file opened for reading, refused unless it is a regular file (follow=False: a symlink is refused too)."""
    check_file(path)
    flags = os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_NOCTTY', 0) | getattr(os, 'O_CLOEXEC', 0)
    if not follow:
        flags |= getattr(os, 'O_NOFOLLOW', 0)
    try:
        # O_NONBLOCK: should the path have become a FIFO since the check, opening it does not wait for a writer
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PcapError(MSG_MISSING % path, transient=True)
    except OSError as exc:
        raise PcapError(MSG_UNREADABLE % (path, exc.strerror or exc))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PcapError(MSG_NOT_FILE % (path, file_kind(mode)))
    return os.fdopen(fd, 'rb')


class Reader:
    """Reads a capture in chunks of records, for a reader that walks the records of a chunk itself (the scan's hot
    loop does: no call and no tuple per record).

    start() returns a generator of chunks (buffer, position, length, header unpack, header length, scale, link type,
    largest valid caplen). A record at pos is a header of `header length` bytes that unpacks to (seconds, fraction,
    caplen, origlen) - its time is seconds + fraction * scale - followed by caplen bytes. The walker sends back
    (position of the first record it did not take, records taken so far) and gets the next chunk: the rest of the
    file read on, or an error that says where the file is corrupt. A pcap file's chunks are its own bytes; pcapng
    blocks are turned into records of one layout (NORM_REC), a chunk per run of one link type (-1 for blocks that
    are no packet but that Wireshark numbers as frames). records() is the simple walk.

    After the walk: format, linktypes, truncated, truncated_at and end (the byte offset after the last complete
    record)."""

    def __init__(self, path, handle, check_linktypes=True):
        self.path = path
        self.handle = handle
        self.check_linktypes = check_linktypes
        self.truncated = False
        self.truncated_at = None
        self.format = None
        self.linktypes = []
        self.end = 0

    def start(self):
        """The chunks of records (see chunks()); raises PcapError when the file is not a capture or its header is cut
        short."""
        head = self.handle.read(24)
        if head[:4] == PCAPNG_MAGIC:
            if len(head) < 12:
                raise PcapError(MSG_SHORT_HEADER % (self.path, len(head)), transient=True)
            self.format = 'pcapng'
            return self._normalised(self._pcapng_blocks(head))
        if head[:4] in PCAP_MAGIC:
            if len(head) < 24:
                raise PcapError(MSG_SHORT_HEADER % (self.path, len(head)), transient=True)
            self.format = 'pcap'
            return self._pcap(head)
        if not head:
            raise PcapError(MSG_SHORT_HEADER % (self.path, len(head)), transient=True)
        raise PcapError(MSG_NOT_PCAP % (self.path, head[:8].hex(' ')))

    def _linktype(self, linktype):
        if self.check_linktypes and linktype not in SUPPORTED:
            raise PcapError(MSG_LINKTYPE % (self.path, linktype, LINKTYPE_NAMES.get(linktype, 'unknown')))
        if linktype not in self.linktypes:
            self.linktypes.append(linktype)

    def _pcap(self, head):
        endian = '<' if head[:2] in (b'\xd4\xc3', b'\x4d\x3c') else '>'
        nsec = head[:4] in (b'\x4d\x3c\xb2\xa1', b'\xa1\xb2\x3c\x4d')
        snaplen, linktype = struct.unpack_from(endian + 'II', head, 16)
        linktype &= 0xFFFF
        self._linktype(linktype)
        return self._pcap_records(endian, 1e-9 if nsec else 1e-6, linktype, snaplen)

    def _pcap_records(self, endian, scale, linktype, snaplen):
        """The chunks of a pcap file: its own bytes, read CHUNK at a time.

        A record longer than the snapshot length cannot be valid: the file is corrupt there."""
        if 0 < snaplen <= MAX_SNAPLEN:
            limit, limit_text = snaplen, MSG_LIMIT_SNAPLEN % snaplen
        else:
            limit, limit_text = MAX_SNAPLEN, MSG_LIMIT_MAX % MAX_SNAPLEN
        rec = PCAP_REC[endian].unpack_from
        read = self.handle.read
        buf = read(CHUNK)
        consumed = 24
        pos = 0
        while True:
            n = len(buf)
            pos, number = yield buf, pos, n, rec, 16, scale, linktype, limit
            if pos + 16 <= n and rec(buf, pos)[2] > limit:
                self.end = consumed + pos
                raise PcapError(MSG_BAD_RECORD % (self.path, number + 1, consumed + pos, rec(buf, pos)[2], limit_text))
            more = read(CHUNK)
            if not more:
                self.end = consumed + pos
                if pos < n:
                    self._cut('record', number + 1, consumed + pos)
                return
            consumed += pos
            buf = buf[pos:] + more
            pos = 0

    def _normalised(self, records):
        """Chunks of pcapng records in one layout (NORM_REC: time, 0, caplen, origlen, then the bytes), a chunk per
        run of records of one link type (-1: blocks Wireshark numbers as frames, without bytes)."""
        pack = NORM_REC.pack
        chunk = bytearray()
        current = None
        for buf, off, caplen, origlen, ts, lt in records:
            if lt != current or len(chunk) >= CHUNK:
                if chunk:
                    yield bytes(chunk), 0, len(chunk), NORM_REC.unpack_from, NORM_REC.size, 0.0, current, MAX_CAPLEN
                    chunk = bytearray()
                current = lt
            chunk += pack(ts, 0, caplen, origlen)
            chunk += buf[off:off + caplen]
        if chunk:
            yield bytes(chunk), 0, len(chunk), NORM_REC.unpack_from, NORM_REC.size, 0.0, current, MAX_CAPLEN

    def records(self, chunks):
        """(buffer, offset, caplen, origlen, time, linktype) of every record of the chunks (the slow, simple walk)."""
        number = 0
        chunk = next(chunks, None)
        while chunk is not None:
            buf, pos, n, rec, hlen, scale, linktype, limit = chunk
            while pos + hlen <= n:
                sec, frac, caplen, origlen = rec(buf, pos)
                if caplen > limit or pos + hlen + caplen > n:
                    break
                number += 1
                yield buf, pos + hlen, caplen, origlen, sec + frac * scale, linktype
                pos += hlen + caplen
            try:
                chunk = chunks.send((pos, number))
            except StopIteration:
                return

    def _cut(self, unit, number, offset):
        """The file ends inside its last record: a capture still being written, or killed while writing."""
        self.truncated = True
        self.truncated_at = {'unit': unit, 'number': number, 'offset': offset}

    def _pcapng_blocks(self, head):
        read = self.handle.read
        buf = head + read(CHUNK)
        n = len(buf)
        pos = consumed = number = 0
        section = None   # (endian, unpack of a block's type and length, interfaces)
        while True:
            self.end = consumed + pos
            if pos + 12 <= n:
                if buf[pos:pos + 4] == PCAPNG_MAGIC:
                    section = self._section(buf, pos, consumed)
                btype, blen = section[1](buf, pos)
                if blen < MIN_BLOCK.get(btype, 12) or blen % 4 or blen > MAX_CAPLEN:
                    raise PcapError(MSG_BAD_BLOCK % (self.path, number + 1, consumed + pos, btype, blen))
                if pos + blen <= n:
                    number += 1
                    record = self._block(buf, pos, btype, blen, number, consumed + pos, section)
                    if record is not None:
                        yield record
                    pos += blen
                    continue
            more = read(max(CHUNK, blen if pos + 12 <= n else 0))
            if more:
                consumed += pos
                buf = buf[pos:] + more
                n = len(buf)
                pos = 0
                continue
            if pos < n:
                self._cut('block', number + 1, consumed + pos)
            return

    def _section(self, buf, pos, offset):
        """A section header block starts a section: its byte order, and no interfaces yet."""
        bom = buf[pos + 8:pos + 12]
        if bom == b'\x4d\x3c\x2b\x1a':
            endian = '<'
        elif bom == b'\x1a\x2b\x3c\x4d':
            endian = '>'
        else:
            raise PcapError(MSG_BAD_BOM % (self.path, offset))
        return endian, struct.Struct(endian + 'II').unpack_from, []

    def _block(self, buf, pos, btype, blen, number, offset, section):
        """The record of a complete block (None for a block that is no frame); an interface block is registered."""
        endian, _u32, ifaces = section
        trailer = struct.unpack_from(endian + 'I', buf, pos + blen - 4)[0]
        if trailer != blen:
            raise PcapError(MSG_BAD_TRAILER % (self.path, number, offset, btype, blen, trailer))
        if btype == 6 or btype == 3 or btype == 2:
            return self._packet(buf, pos, btype, blen, number, offset, section)
        if btype in FRAME_BLOCKS:
            # not a packet, but Wireshark gives it a frame number: count it so the numbers stay the same
            return buf, pos, 0, 0, 0.0, -1
        if btype == 1:
            linktype, _res, snaplen = struct.unpack_from(endian + 'HHI', buf, pos + 8)
            self._linktype(linktype)
            units, ts_offset = _idb_options(buf, pos + 16, pos + blen - 4, endian)
            if units is None:
                raise PcapError(MSG_BAD_BLOCK % (self.path, number, offset, btype, blen))
            ifaces.append((linktype, snaplen, units, ts_offset))
        return None

    def _packet(self, buf, pos, btype, blen, number, offset, section):
        """The record of an enhanced (6), simple (3) or obsolete (2) packet block."""
        endian, _unpack, ifaces = section
        if btype == 6:
            ifid, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(endian + 'IIIII', buf, pos + 8)
        elif btype == 3:
            ifid = ts_hi = ts_lo = 0
            origlen = struct.unpack_from(endian + 'I', buf, pos + 8)[0]
            caplen = min(origlen, blen - 16)
        else:
            ifid, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(endian + 'HHIIII', buf, pos + 8)
        data = pos + (12 if btype == 3 else 28)
        if ifid >= len(ifaces):
            raise PcapError(MSG_NO_IDB % (self.path, offset, ifid))
        linktype, snaplen, units, ts_offset = ifaces[ifid]
        if btype == 3 and snaplen:
            caplen = min(caplen, snaplen)
        if data + caplen > pos + blen - 4 or caplen > MAX_SNAPLEN or (snaplen and caplen > snaplen):
            limit = MSG_LIMIT_IDB % snaplen if 0 < snaplen <= MAX_SNAPLEN else MSG_LIMIT_MAX % MAX_SNAPLEN
            raise PcapError(MSG_BAD_PACKET % (self.path, number, offset, caplen, limit))
        sec, frac = divmod((ts_hi << 32) | ts_lo, units)
        return buf, data, caplen, origlen, ts_offset + sec + frac / units, linktype


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


def truncation_note(truncated_at, packets):
    """The note (and the module's warning) of a capture whose last record is cut short."""
    where = truncated_at or {'unit': 'record', 'number': packets + 1, 'offset': 0}
    return MSG_TRUNCATED % (where['unit'], where['number'], where['offset'], packets)


def count_packets(path):
    """Packets of a capture (pcap or pcapng), reading record headers only; a torn last record is not counted.

    Returns {'packets', 'bytes', 'complete', 'readable', 'linktype'} (bytes: up to the end of the last complete
    record; linktype: of the first interface). Only a regular file is read, never through a symlink; any link type
    is counted."""
    result = {'packets': 0, 'bytes': 0, 'complete': True, 'readable': False, 'linktype': None}
    try:
        handle = open_capture(path, follow=False)
    except PcapError:
        return result
    with handle:
        reader = Reader(path, handle, check_linktypes=False)
        try:
            records = reader.start()
        except PcapError as exc:
            result['complete'] = not exc.transient
            return result
        except OSError:
            return result
        result['readable'] = True
        try:
            for record in reader.records(records):
                if record[5] >= 0:
                    result['packets'] += 1
        except (PcapError, OSError):
            result['complete'] = False
        result['complete'] = result['complete'] and not reader.truncated
        result['bytes'] = reader.end
        result['linktype'] = reader.linktypes[0] if reader.linktypes else None
    return result
