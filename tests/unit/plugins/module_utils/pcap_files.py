# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Small pcap files for the tests of the capture module and of the reader (test__capture.py, test__pcap_shape.py):
pcap_bytes() and what count_packets() must say of each case (COUNT_CASES)."""

from __future__ import annotations

import struct


def pcap_bytes(frames, endian='<', magic=0xa1b2c3d4):
    """A classic pcap (Ethernet, snaplen 262144) of the frames' bytes, each stamped 1 s + 2 units."""
    out = struct.pack(endian + 'IHHiIII', magic, 2, 4, 0, 0, 262144, 1)
    for data in frames:
        out += struct.pack(endian + 'IIII', 1, 2, len(data), len(data)) + data
    return out


# (file content, count_packets' result)
COUNT_CASES = [
    (b'', {'packets': 0, 'bytes': 0, 'complete': False, 'readable': False, 'linktype': None}),
    (b'not a pcap file at all, no', {'packets': 0, 'bytes': 0, 'complete': True, 'readable': False, 'linktype': None}),
    (pcap_bytes([]), {'packets': 0, 'bytes': 24, 'complete': True, 'readable': True, 'linktype': 1}),
    (pcap_bytes([b'a' * 60, b'b' * 54]), {'packets': 2, 'bytes': 24 + 76 + 70, 'complete': True, 'readable': True,
                                          'linktype': 1}),
    (pcap_bytes([b'a' * 60, b'b' * 54], '>'), {'packets': 2, 'bytes': 170, 'complete': True, 'readable': True,
                                               'linktype': 1}),
    (pcap_bytes([b'a' * 60, b'b' * 54])[:-10], {'packets': 1, 'bytes': 100, 'complete': False, 'readable': True,
                                                'linktype': 1}),
    (pcap_bytes([b'a' * 60, b'b' * 54])[:108], {'packets': 1, 'bytes': 100, 'complete': False, 'readable': True,
                                                'linktype': 1}),
    (pcap_bytes([b'a' * 60], '<', 0xa1b23c4d), {'packets': 1, 'bytes': 100, 'complete': True, 'readable': True,
                                                'linktype': 1}),
]


def read_pcap(path):
    """(header, [(sec, usec, wirelen, data)]) of a microsecond pcap (little or big endian)."""
    with open(path, 'rb') as handle:
        blob = handle.read()
    endian = '<' if blob[:4] == b'\xd4\xc3\xb2\xa1' else '>'
    frames, offset = [], 24
    while offset + 16 <= len(blob):
        sec, usec, caplen, wirelen = struct.unpack(endian + 'IIII', blob[offset:offset + 16])
        frames.append((sec, usec, wirelen, blob[offset + 16:offset + 16 + caplen]))
        offset += 16 + caplen
    return blob[:24], frames
