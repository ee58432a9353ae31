# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The analyser facing bad paths, corrupt files and connections that end early (issue 10, items 9, 10 and 18).

- Paths that are not regular files (a FIFO, a socket, a device, a directory, a symlink to a FIFO) are refused
  before they are opened. analyse() runs in a forked child with a time limit, so a reader blocked on a FIFO
  fails the test instead of hanging it.
- Crafted pcap and pcapng files: a record in the middle that cannot be valid is an error that says where (record
  or block number and byte offset); a truncated last record stays a warning.
- A connection closed by a FIN, or reset by a program, is described as such; segments after a RST (the
  teardown) answer no probe.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import socket
import struct
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _pcap
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, analyse

_spec = importlib.util.spec_from_file_location('tcplab_test__pcap_h', str(Path(__file__).with_name('test__pcap.py')))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

LIMIT = 10.0   # seconds a refused path may take; the old reader blocked on a FIFO until killed


def _child(queue, fn, args, kwargs):
    try:
        queue.put(('ok', fn(*args, **kwargs)))
    except Exception as exc:  # pylint: disable=broad-except
        queue.put(('error', '%s: %s' % (type(exc).__name__, exc)))


def bounded(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a forked child: ('ok', value) or ('error', 'Type: message'); fails after LIMIT s."""
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue, fn, args, kwargs))
    child.start()
    child.join(LIMIT)
    if child.is_alive():
        child.kill()   # only the child this test forked
        child.join()
        pytest.fail('%s(%r) still blocked after %s s' % (fn.__name__, args, LIMIT))
    return queue.get(timeout=5)


# ---------------------------------------------------------------- not regular files (item 9)

def _fifo(tmp_path):
    path = tmp_path / 'capture.pcap'
    os.mkfifo(str(path))
    return str(path)


def _socket(tmp_path):
    path = str(tmp_path / 'capture.sock')
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    return path


def _symlink_to_fifo(tmp_path):
    target = _fifo(tmp_path)
    link = tmp_path / 'link.pcap'
    link.symlink_to(target)
    return str(link)


@pytest.mark.parametrize('make, kind', [
    (_fifo, 'a FIFO (named pipe)'),
    (_symlink_to_fifo, 'a FIFO (named pipe)'),
    (_socket, 'a socket'),
    (lambda tmp_path: '/dev/null', 'a character device'),
    (str, 'a directory'),
], ids=['fifo', 'symlink-to-fifo', 'socket', 'char-device', 'directory'])
def test_not_a_regular_file_is_refused_before_opening(tmp_path, make, kind):
    path = make(tmp_path)
    status, value = bounded(analyse, path)
    assert (status, value) == ('error', 'PcapError: ' + _pcap.MSG_NOT_FILE % (path, kind))


def test_not_a_regular_file_is_not_transient(tmp_path):
    """The wait retries a missing file (the capture may not have created it yet), never a FIFO."""
    with pytest.raises(PcapError) as missing:
        _pcap.check_file(str(tmp_path / 'later.pcap'))
    assert missing.value.transient is True
    with pytest.raises(PcapError) as fifo:
        _pcap.check_file(_fifo(tmp_path))
    assert fifo.value.transient is False


# ---------------------------------------------------------------- corrupt files (item 18)

FRAMES = [(gen.T0 + i, b'\x02' * 60) for i in range(5)]


def pcap_file(frames=FRAMES, snaplen=65535, claim=None):
    """A pcap whose record `claim[0]` (0-based) claims `claim[1]` captured bytes (its data stays as it is)."""
    out = [struct.pack('<IHHiIII', 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)]
    for index, (ts, data) in enumerate(frames):
        caplen = claim[1] if claim and claim[0] == index else len(data)
        out.append(struct.pack('<IIII', int(ts), 0, caplen, len(data)) + data)
    return b''.join(out)


def _offset(index):
    return 24 + index * (16 + 60)


def pcapng_file(frames=FRAMES, snaplen=0, bad_trailer=None, claim=None, short_block=False, bad_option=False):
    """A little-endian pcapng (SHB, IDB, one EPB per frame) with one defect."""
    blocks = [gen._block('<', 0x0A0D0D0A, struct.pack('<IHHq', 0x1A2B3C4D, 1, 0, -1))]
    opts = gen._option('<', 9, b'\x06') + gen._option('<', 0, b'')
    if bad_option:
        opts = struct.pack('<HH', 14, 64) + b'\x00' * 8
    blocks.append(gen._block('<', 1, struct.pack('<HHI', 1, 0, snaplen) + opts))
    for index, (ts, data) in enumerate(frames):
        stamp = int(ts * 1000000)
        caplen = claim[1] if claim and claim[0] == index else len(data)
        block = gen._block('<', 6, struct.pack('<IIIII', 0, stamp >> 32, stamp & 0xFFFFFFFF, caplen, len(data)) + data)
        if bad_trailer is not None and bad_trailer == index:
            block = block[:-4] + struct.pack('<I', len(block) + 8)
        if short_block and index == 2:
            block = struct.pack('<II', 6, 16) + b'\x00' * 4 + struct.pack('<I', 16)
        blocks.append(block)
    return b''.join(blocks)


EPB = 12 + 20 + 60   # one enhanced packet block of a 60-byte frame
NG_FIRST = 28 + 32   # the section header and the interface description block before the packets


@pytest.mark.parametrize('content, message', [
    # a record in the middle claims more than the file's snapshot length: it cannot be valid
    (pcap_file(claim=(2, 100000)), _pcap.MSG_BAD_RECORD % ('{path}', 3, _offset(2), 100000, _pcap.MSG_LIMIT_SNAPLEN % 65535)),
    # more than any capture holds (snapshot length 0 in the header means "no limit")
    (pcap_file(snaplen=0, claim=(1, 300000)),
     _pcap.MSG_BAD_RECORD % ('{path}', 2, _offset(1), 300000, _pcap.MSG_LIMIT_MAX % 262144)),
    (pcap_file(snaplen=262144, claim=(3, 0x7FFFFFFF)),
     _pcap.MSG_BAD_RECORD % ('{path}', 4, _offset(3), 0x7FFFFFFF, _pcap.MSG_LIMIT_SNAPLEN % 262144)),
    # the last record too, when it claims more than the snapshot length (a short write leaves a valid length)
    (pcap_file(claim=(4, 70000)), _pcap.MSG_BAD_RECORD % ('{path}', 5, _offset(4), 70000, _pcap.MSG_LIMIT_SNAPLEN % 65535)),
    # pcapng: the two lengths of a block differ
    (pcapng_file(bad_trailer=1), _pcap.MSG_BAD_TRAILER % ('{path}', 4, NG_FIRST + EPB, 6, EPB, EPB + 8)),
    # pcapng: a packet claims more than its interface's snapshot length, or than its block holds
    (pcapng_file(snaplen=40, claim=(0, 60)), _pcap.MSG_BAD_PACKET % ('{path}', 3, NG_FIRST, 60, _pcap.MSG_LIMIT_IDB % 40)),
    (pcapng_file(claim=(3, 200)), _pcap.MSG_BAD_PACKET % ('{path}', 6, NG_FIRST + 3 * EPB, 200, _pcap.MSG_LIMIT_MAX % 262144)),
    # pcapng: a packet block too short for its own header, an interface option that overruns its block
    (pcapng_file(short_block=True), _pcap.MSG_BAD_BLOCK % ('{path}', 5, NG_FIRST + 2 * EPB, 6, 16)),
    (pcapng_file(bad_option=True), _pcap.MSG_BAD_BLOCK % ('{path}', 2, 28, 1, 32)),
], ids=['pcap-over-snaplen', 'pcap-over-max', 'pcap-huge', 'pcap-last-over-snaplen', 'pcapng-trailer',
        'pcapng-over-idb-snaplen', 'pcapng-over-block', 'pcapng-short-block', 'pcapng-option-overrun'])
def test_corrupt_record_says_where(tmp_path, content, message):
    path = tmp_path / 'corrupt.pcap'
    path.write_bytes(content)
    with pytest.raises(PcapError) as exc:
        analyse(str(path))
    assert str(exc.value) == message.replace('{path}', str(path))


@pytest.mark.parametrize('content, unit, number, offset, packets', [
    # the file ends inside the last record (a capture still being written, or killed): a warning, not an error
    (pcap_file()[:-20], 'record', 5, _offset(4), 4),
    (pcap_file()[:-70], 'record', 5, _offset(4), 4),        # inside its 16-byte header
    (pcapng_file()[:-8], 'block', 7, NG_FIRST + 4 * EPB, 4),
    (pcapng_file()[:-(EPB - 4)], 'block', 7, NG_FIRST + 4 * EPB, 4),   # inside its 12-byte block header
], ids=['pcap-in-data', 'pcap-in-header', 'pcapng-in-data', 'pcapng-in-header'])
def test_truncated_last_record_is_a_warning(tmp_path, content, unit, number, offset, packets):
    path = tmp_path / 'cut.pcap'
    path.write_bytes(content)
    result = analyse(str(path))
    assert result['truncated'] is True
    assert result['truncated_at'] == {'unit': unit, 'number': number, 'offset': offset}
    assert result['summary']['packets'] == packets
    assert result['summary']['notes'] == [_pcap.MSG_TRUNCATED % (unit, number, offset, packets)]


@pytest.mark.parametrize('content', [pcap_file(), pcap_file(snaplen=0), pcapng_file(), pcapng_file(snaplen=262144)],
                         ids=['pcap', 'pcap-snaplen-0', 'pcapng', 'pcapng-snaplen'])
def test_valid_files_still_read(tmp_path, content):
    path = tmp_path / 'ok.pcap'
    path.write_bytes(content)
    result = analyse(str(path))
    assert result['truncated'] is False and result['truncated_at'] is None
    assert result['summary']['packets'] == 5


# ---------------------------------------------------------------- connections that end early (item 10)

def sc_server_fin():
    """Two answered probes, then the server's program exits: FIN from the server, FIN from the client."""
    pkts = []
    c = gen.Conv(pkts)
    c.handshake(0.0)
    for t in (2.02, 4.04):
        c.probe(t)
        c.seg(t + 0.0001, 's')
    c.seg(5.3, 's', 'FA')
    c.seg(5.3002, 'c', 'FA')
    c.seg(5.3003, 's', 'A')
    return pkts


def sc_teardown_after_rst():
    """3 unanswered probes and the client's RST; then the server (which never saw the RST: a DROP) closes."""
    pkts = []
    c = gen.Conv(pkts)
    c.handshake(0.0)
    c.probe(2.0)
    c.seg(2.0001, 's')
    for t in (4.0, 5.0, 6.0):
        c.probe(t)
    c.seg(7.0, 'c', 'RA')
    c.seg(9.5, 's', 'FA')        # the teardown the old analysis took for an answer to probe 4
    c.seg(9.5001, 'c', 'R', seq=c.nxt['c'], ack=0)
    return pkts


def sc_client_abort():
    """An answered probe, then the client's program resets the connection (SO_LINGER 0 or unread data)."""
    pkts = []
    c = gen.Conv(pkts)
    c.handshake(0.0)
    c.probe(2.0)
    c.seg(2.0001, 's')
    c.seg(3.0, 'c', 'RA')
    return pkts


def _analyse(tmp_path, pkts, **kw):
    return analyse(gen.write_capture(tmp_path / 'x.pcap', pkts), connection={'port': 40000}, **kw)


def test_server_fin_is_described(tmp_path):
    conn = _analyse(tmp_path, sc_server_fin())['connections'][0]
    assert conn['rst'] is None
    assert conn['fin'] == {'from': '198.18.0.2:12345', 'to': '198.18.0.1:40000', 'frame': 8, 'time': 5.3,
                           'flags': 'FIN|ACK'}
    assert _pcap.MSG_CLOSED_BY_FIN % ('198.18.0.2:12345', '5.3') in conn['notes']
    assert conn['probers'][0]['answered'] == 2


def test_client_abort_is_described(tmp_path):
    conn = _analyse(tmp_path, sc_client_abort())['connections'][0]
    assert conn['rst']['from'] == '198.18.0.1:40000' and conn['rst']['after_probes'] == 0
    assert _pcap.MSG_ABORTED % ('198.18.0.1:40000', '3') in conn['notes']


def test_segments_after_the_rst_answer_no_probe(tmp_path):
    result = _analyse(tmp_path, sc_teardown_after_rst(), expect={'time': 2, 'intvl': 1, 'probes': 3}, return_frames=True)
    conn = result['connections'][0]
    prober = conn['probers'][0]
    assert [p['answered'] for p in prober['probes']] == [True, False, False, False]
    assert prober['answered'] == 1 and prober['final_unanswered'] == 3 and prober['unanswered'] == 3
    assert conn['rst']['after_probes'] == 3 and conn['fin']['from'] == '198.18.0.2:12345'
    assert result['verdict'] == 'pass', result['reasons']
    # the classification (tshark's) is unchanged: the frames after the RST are still classified as before
    assert result['keepalive_frames'] == [4, 6, 7, 8]
