# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kernel's own evidence of a keepalive experiment.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

On the target (the kernel_counters module), a sample of one network
namespace: its TcpExt counters from /proc/net/netstat - TCPKeepAlive
(keepalive probes sent: tcp_keepalive_timer -> tcp_write_wakeup ->
tcp_xmit_probe_skb counts every one), TCPAbortOnTimeout (connections the
kernel gave up on: tcp_write_err, after the last unanswered keepalive probe,
the last retransmission or TCP_USER_TIMEOUT) and TCPTimeouts (retransmission
timeouts) - and its TCP sockets from inet_diag (NETLINK_SOCK_DIAG, the source
of ``ss -tnoi``): per socket the pending timer (``keepalive``), its expiry,
the unanswered-probe count (idiag_retrans for a keepalive timer, which is
icsk_probes_out) and tcp_info's tcpi_probes and tcpi_backoff. Where
inet_diag cannot be used, /proc/net/tcp and tcp6 give the same timer and
probe count (without tcp_info), and the sample says so.

On the controller (the report module), the evidence: the counter deltas
between the sample before the client connected and the one after it failed,
the timer samples taken while waiting, and whether the capture and the
kernel agree. The counters belong to the whole namespace: other connections
with a keepalive timer (or with a retransmission timer that hides whether
keepalive is on) are listed in every sample, and with any of them the
agreement is not judged, with a note. In a loopback run the server's socket
is in the same namespace: its probes, which the capture shows, count too.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import client_connection

NETSTAT = '/proc/self/net/netstat'
PROC_TCP = ('/proc/self/net/tcp', '/proc/self/net/tcp6')
# TcpExt counter -> key in the sample and in evidence.kernel
COUNTERS = {'TCPKeepAlive': 'tcp_keepalive', 'TCPAbortOnTimeout': 'tcp_abort_on_timeout', 'TCPTimeouts': 'tcp_timeouts'}
STATES = {1: 'ESTABLISHED', 2: 'SYN_SENT', 3: 'SYN_RECV', 4: 'FIN_WAIT1', 5: 'FIN_WAIT2', 6: 'TIME_WAIT', 7: 'CLOSE',
          8: 'CLOSE_WAIT', 9: 'LAST_ACK', 10: 'LISTEN', 11: 'CLOSING'}
# inet_diag's idiag_timer, named as ss names it
TIMERS = {0: 'off', 1: 'on', 2: 'keepalive', 3: 'timewait', 4: 'persist'}
TIMER_KEEPALIVE = 2
# timers under which a socket may have keepalive on without showing it (a pending retransmission or zero-window
# probe takes the place of the keepalive timer in inet_diag)
TIMERS_HIDING = (1, 4)
# states whose sk_timer is not keepalive (FIN_WAIT2 uses it for its own timeout), or that have none
NO_KEEPALIVE_STATES = (5, 6, 7, 10)
OTHERS_LISTED = 20

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
NLMSG_HDR = struct.Struct('=IHHII')
DIAG_REQ = struct.Struct('=BBBBI48s')
DIAG_MSG = struct.Struct('=BBBBHH16s16sIQIIIII')
RTA_HDR = struct.Struct('=HH')
# the head of struct tcp_info: state, ca_state, retransmits, probes, backoff
TCP_INFO_HEAD = struct.Struct('=BBBBB')

MSG_NETSTAT = 'cannot read %s (%s): this kernel does not expose the TcpExt counters here'
MSG_NO_TCPEXT = '%s has no TcpExt counter %s: a kernel without it cannot give keepalive evidence'
MSG_PORT = '%s must be a TCP port 1..65535, got %r: give the port of the connection (the experiment client port)'
MSG_KERNEL = 'data.kernel must be %s, got %r'
KERNEL_WHAT = ('a dict with server_port (an integer 1..65535), start and end (kernel_counters results) and samples '
               '(a list of them)')
MSG_DISAGREE_PROBES = ("capture and kernel disagree on the keepalive probes: the capture shows %d sent in the client's "
                       "namespace (%s), TCPKeepAlive rose by %d")
MSG_DISAGREE_ABORT = ("capture and kernel disagree on the abort: %s, so TCPAbortOnTimeout should have risen by %d; "
                      "it rose by %d")
NOTE_OTHERS = ("kernel evidence not judged: %d other connection(s) in the client's namespace could send keepalive "
               "probes or time out (%s), and its counters count them too")
NOTE_NO_END = 'kernel evidence not judged: no sample after the client ended (the run stopped early); deltas up to %s'
NOTE_NETNS = 'kernel evidence not judged: the samples come from different network namespaces (inodes %s)'
NOTE_NO_CAPTURE = "kernel evidence not judged: the capture shows no client connection to compare the counters with"
NOTE_SOURCE = 'the socket samples come from /proc/net/tcp (inet_diag unavailable: %s), without tcp_info'


class KernelEvidenceError(ValueError):
    """The kernel's evidence cannot be read or is malformed; the message says why and what to give."""


# ---------------------------------------------------------------- counters (pure parsing, then reading)

def parse_netstat(text):
    """{section: {counter: int}} of /proc/net/netstat (or /proc/net/snmp): header and value lines in pairs."""
    out = {}
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for head, values in zip(lines[0::2], lines[1::2]):
        if not head or head[0] != values[0] or len(head) != len(values):
            continue
        out[head[0].rstrip(':')] = {name: int(value) for name, value in zip(head[1:], values[1:])
                                    if value.lstrip('-').isdigit()}
    return out


def counters(parsed, path=NETSTAT):
    """The experiment's counters ({key: int}) of a parsed netstat; KernelEvidenceError naming a missing one."""
    tcpext = parsed.get('TcpExt') or {}
    out = {}
    for name, key in COUNTERS.items():
        if name not in tcpext:
            raise KernelEvidenceError(MSG_NO_TCPEXT % (path, name))
        out[key] = tcpext[name]
    return out


def read_counters(path=NETSTAT):
    """counters() of the calling process's network namespace."""
    try:
        with open(path) as handle:
            text = handle.read()
    except (IOError, OSError) as exc:
        raise KernelEvidenceError(MSG_NETSTAT % (path, exc.strerror or exc))
    return counters(parse_netstat(text), path)


# ---------------------------------------------------------------- sockets: inet_diag

def diag_request(family, seq=1):
    """A NETLINK_SOCK_DIAG dump request for the TCP sockets of family in every state, with tcp_info."""
    body = DIAG_REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, 0xffffffff, b'\0' * 48)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def split_messages(data):
    """(type, payload) of each netlink message in data."""
    out, offset = [], 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind = NLMSG_HDR.unpack_from(data, offset)[:2]
        if length < NLMSG_HDR.size:
            break
        out.append((kind, data[offset + NLMSG_HDR.size:offset + length]))
        offset += (length + 3) & ~3
    return out


def _address(family, raw, port):
    if family == socket.AF_INET:
        return '%s:%d' % (socket.inet_ntop(family, raw[:4]), port)
    return '[%s]:%d' % (socket.inet_ntop(family, raw), port)


def _tcp_info(payload, offset):
    """(probes, backoff) from the INET_DIAG_INFO attribute after the message, or (None, None)."""
    while offset + RTA_HDR.size <= len(payload):
        length, kind = RTA_HDR.unpack_from(payload, offset)
        if length < RTA_HDR.size:
            break
        if kind == INET_DIAG_INFO and length >= RTA_HDR.size + TCP_INFO_HEAD.size:
            head = TCP_INFO_HEAD.unpack_from(payload, offset + RTA_HDR.size)
            return head[3], head[4]
        offset += (length + 3) & ~3
    return None, None


def parse_diag(payload):
    """One inet_diag_msg (with its tcp_info) as a socket row."""
    (family, state, timer, retrans, sport, dport, src, dst, _ifindex, _cookie, expires, _rq, _wq, _uid,
     inode) = DIAG_MSG.unpack_from(payload)
    probes, backoff = _tcp_info(payload, DIAG_MSG.size)
    sport, dport = socket.ntohs(sport), socket.ntohs(dport)
    return {'local': _address(family, src, sport), 'remote': _address(family, dst, dport), 'lport': sport,
            'rport': dport, 'state': STATES.get(state, str(state)), 'state_n': state, 'timer': TIMERS.get(timer, str(timer)),
            'timer_n': timer, 'expires_s': round(expires / 1000.0, 3), 'timer_count': retrans, 'probes': probes,
            'backoff': backoff, 'inode': inode}


def diag_sockets(family, opener=socket.socket):
    """Every TCP socket of family in the calling process's namespace, from inet_diag; OSError when unavailable."""
    sock = opener(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    rows = []
    try:
        sock.settimeout(5)
        sock.sendto(diag_request(family), (0, 0))
        while True:
            for kind, payload in split_messages(sock.recv(1 << 16)):
                if kind == NLMSG_DONE:
                    return rows
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from('=i', payload)[0]
                    raise OSError(code, os.strerror(code))
                if kind == SOCK_DIAG_BY_FAMILY and len(payload) >= DIAG_MSG.size:
                    rows.append(parse_diag(payload))
    finally:
        sock.close()


# ---------------------------------------------------------------- sockets: /proc/net/tcp (the fallback)

def _proc_address(text):
    raw_ip, port = text.split(':')
    raw = bytes.fromhex(raw_ip)
    # the kernel prints each 32-bit word in host order
    words = b''.join(struct.pack('=I', int.from_bytes(raw[i:i + 4], 'big')) for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return _address(family, words, int(port, 16)), int(port, 16)


def parse_proc_tcp(text, hz=100):
    """Socket rows of /proc/net/tcp or tcp6 (timer, its expiry in clock ticks, icsk_probes_out)."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 12:
            continue
        (local, lport), (remote, rport) = _proc_address(fields[1]), _proc_address(fields[2])
        timer, expires = fields[5].split(':')
        state, timer_n = int(fields[3], 16), int(timer, 16)
        rows.append({'local': local, 'remote': remote, 'lport': lport, 'rport': rport,
                     'state': STATES.get(state, str(state)), 'state_n': state, 'timer': TIMERS.get(timer_n, str(timer_n)),
                     'timer_n': timer_n, 'expires_s': round(int(expires, 16) / float(hz), 3),
                     'timer_count': int(fields[8]) if timer_n == TIMER_KEEPALIVE else int(fields[6], 16),
                     'probes': int(fields[8]), 'backoff': None, 'inode': int(fields[9])})
    return rows


def proc_sockets(paths=PROC_TCP):
    rows = []
    for path in paths:
        try:
            with open(path) as handle:
                rows += parse_proc_tcp(handle.read(), os.sysconf('SC_CLK_TCK'))
        except (IOError, OSError):
            continue
    return rows


def read_sockets():
    """(rows, source, why): inet_diag for both families, else /proc/net/tcp{,6} with the reason."""
    try:
        return diag_sockets(socket.AF_INET) + diag_sockets(socket.AF_INET6), 'inet_diag', None
    except OSError as exc:
        return proc_sockets(), 'proc', exc.strerror or str(exc)


# ---------------------------------------------------------------- one sample

def check_ports(port, peer_port):
    """KernelEvidenceError (MSG_PORT) for a port or peer_port outside 1..65535 (None is no port)."""
    for name, value in (('port', port), ('peer_port', peer_port)):
        if value is not None and not 1 <= value <= 65535:
            raise KernelEvidenceError(MSG_PORT % (name, value))


def is_ours(row, port, peer_port=None):
    """Whether a socket row is an end of the experiment's connection (client port to server port)."""
    ports = {row['lport'], row['rport']}
    return port in ports and (peer_port is None or peer_port in ports) and row['state_n'] != 10


def could_probe(row):
    """Whether a socket may send keepalive probes or time out: a keepalive timer, or a timer that would hide one."""
    if row['state_n'] in NO_KEEPALIVE_STATES:
        return False
    return row['timer_n'] == TIMER_KEEPALIVE or row['timer_n'] in TIMERS_HIDING


def _compact(row):
    return {k: row[k] for k in ('local', 'remote', 'state', 'timer', 'expires_s', 'timer_count', 'probes', 'backoff')}


def classify(rows, port=None, peer_port=None):
    """(the client's socket or None, ours, others that could move the counters) of a namespace's socket rows."""
    ours = [row for row in rows if port is not None and is_ours(row, port, peer_port)]
    client = next((row for row in ours if row['lport'] == port), None)
    others = [row for row in rows if could_probe(row) and row not in ours]
    return client, ours, others


def sample(port=None, peer_port=None, now=time.time):
    """A sample of the calling process's namespace: counters, the client's socket, the other keepalive sockets."""
    taken = now()
    values = read_counters()
    rows, source, why = read_sockets()
    client, ours, others = classify(rows, port, peer_port)
    try:
        inode = os.stat('/proc/self/ns/net').st_ino
    except OSError:
        inode = None
    return {'time': taken, 'netns_inode': inode, 'counters': values, 'source': source, 'source_error': why,
            'socket': _compact(client) if client else None, 'ours': [_compact(row) for row in ours],
            'others': [_compact(row) for row in others[:OTHERS_LISTED]], 'others_count': len(others),
            'sockets_count': len(rows)}


def progress(sample_result, probes):
    """'probe 2/3 unanswered (kernel)' from a sample's socket, or '' without one."""
    sock = (sample_result or {}).get('socket') or {}
    if sock.get('timer') != 'keepalive':
        return ''
    return 'probe %s/%s unanswered (kernel)' % (sock.get('timer_count'), probes)


# ---------------------------------------------------------------- the evidence (on the controller)

def _int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _number(value):
    try:
        return None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def check_sample(value):
    """A kernel_counters result as a sample, None for a skipped or empty one; KernelEvidenceError when malformed."""
    if value in (None, '', {}) or (isinstance(value, dict) and value.get('skipped')):
        return None
    if not isinstance(value, dict) or not isinstance(value.get('counters'), dict) or _number(value.get('time')) is None:
        raise KernelEvidenceError(MSG_KERNEL % (KERNEL_WHAT, value))
    values = {key: _int(value['counters'].get(key)) for key in COUNTERS.values()}
    if any(v is None for v in values.values()):
        raise KernelEvidenceError(MSG_KERNEL % (KERNEL_WHAT, value))
    out = dict(value)
    out['counters'], out['time'] = values, _number(value['time'])
    return out


def check_kernel(value):
    """The report's data.kernel checked ({} when none was given)."""
    if value in (None, '', {}):
        return {}
    if not isinstance(value, dict) or set(value) - {'server_port', 'start', 'end', 'samples'}:
        raise KernelEvidenceError(MSG_KERNEL % (KERNEL_WHAT, value))
    port = _int(value.get('server_port'))
    samples = value.get('samples') or []
    start = check_sample(value.get('start'))
    if port is None or not 1 <= port <= 65535 or start is None or not isinstance(samples, (list, tuple)):
        raise KernelEvidenceError(MSG_KERNEL % (KERNEL_WHAT, value))
    taken = [s for s in (check_sample(item) for item in samples) if s is not None]
    return {'server_port': port, 'start': start, 'end': check_sample(value.get('end')), 'samples': taken}


def capture_counts(analysis, client_port, loopback, until=None):
    """(probes the client sent, probes the server sent in the client's namespace) by the capture, or None without the
    connection. The server's count only on loopback (its socket shares the namespace), up to `until` (epoch)."""
    conn, prober, client_end = client_connection(analysis, client_port)
    if conn is None:
        return None
    start = (analysis or {}).get('start') or 0.0
    server = 0
    for other in conn.get('probers') or []:
        if loopback and other.get('endpoint') != client_end:
            server += len([p for p in other.get('probes') or [] if until is None or start + p['time'] <= until])
    return len((prober or {}).get('probes') or []), server


def expected_abort(observed, client):
    """(1 or 0, why): whether the kernel gave up on the client's connection, by the capture and the client."""
    end = observed.get('end') or {}
    if end.get('by') == 'RST' and end.get('from') == 'client' and end.get('after_probes'):
        return 1, "the capture shows the client's RST after %d unanswered probes" % end['after_probes']
    if client.get('errno') == 'ETIMEDOUT':
        return 1, 'the client failed with ETIMEDOUT'
    return 0, 'the capture shows no RST of the client after its probes and the client did not fail with ETIMEDOUT'


def _others(samples):
    seen, listed, most = set(), [], 0
    for one in samples:
        most = max(most, one.get('others_count') or 0)
        for row in one.get('others') or []:
            key = (row.get('local'), row.get('remote'))
            if key not in seen:
                seen.add(key)
                listed.append(row)
    return {'count': max(most, len(listed)), 'listed': listed[:OTHERS_LISTED]}


def _timer_samples(start, samples):
    out = []
    for one in samples:
        sock = one.get('socket') or {}
        out.append({'at_s': round(one['time'] - start['time'], 3), 'state': sock.get('state'), 'timer': sock.get('timer'),
                    'expires_s': sock.get('expires_s'), 'unanswered': sock.get('timer_count'),
                    'tcpi_probes': sock.get('probes'), 'tcpi_backoff': sock.get('backoff')})
    return out


def not_judged(end, sampled, inodes, others, counts):
    """The note saying why capture and kernel cannot be compared, or None when they can."""
    if end is None:
        return NOTE_NO_END % ('the last timer sample' if sampled else 'the start')
    if len(inodes) > 1:
        return NOTE_NETNS % ', '.join(str(i) for i in inodes)
    if others['count']:
        return NOTE_OTHERS % (others['count'], ', '.join(
            '%s > %s %s timer %s' % (r['local'], r['remote'], r['state'], r['timer']) for r in others['listed']))
    if counts is None:
        return NOTE_NO_CAPTURE
    return None


def evidence(kernel, analysis, observed, client, loopback, client_port):
    """(evidence.kernel, reasons): counter deltas over the run, timer samples, and whether capture and kernel agree."""
    if not kernel:
        return None, []
    start, end, samples = kernel['start'], kernel['end'], kernel['samples']
    last = end or (samples[-1] if samples else start)
    out = {key: last['counters'][key] - start['counters'][key] for key in COUNTERS.values()}
    out.update({'namespace': 'client', 'seconds': round(last['time'] - start['time'], 3),
                'counters_start': start['counters'], 'counters_end': last['counters'],
                'source': (end or start).get('source'), 'timer_samples': _timer_samples(start, samples),
                'others': _others([start] + samples + ([end] if end else [])), 'capture': None, 'agree': None, 'notes': []})
    notes = out['notes']
    if out['source'] == 'proc':
        notes.append(NOTE_SOURCE % (end or start).get('source_error'))
    inodes = sorted({s.get('netns_inode') for s in [start] + samples + ([end] if end else [])} - {None})
    counts = capture_counts(analysis, client_port, loopback, until=last['time'])
    why_not = not_judged(end, bool(samples), inodes, out['others'], counts)
    if why_not:
        notes.append(why_not)
        return out, []
    abort, why = expected_abort(observed, client)
    out['capture'] = {'client_probes': counts[0], 'server_probes': counts[1], 'abort': abort}
    reasons = []
    if counts[0] + counts[1] != out['tcp_keepalive']:
        detail = '%d from the client' % counts[0] + (' and %d from the server, loopback' % counts[1] if loopback else '')
        reasons.append(MSG_DISAGREE_PROBES % (counts[0] + counts[1], detail, out['tcp_keepalive']))
    if abort != out['tcp_abort_on_timeout']:
        reasons.append(MSG_DISAGREE_ABORT % (why, abort, out['tcp_abort_on_timeout']))
    out['agree'] = not reasons
    return out, reasons


def markdown_line(kernel):
    """The report.md line of the kernel evidence ([] without it)."""
    if not kernel:
        return []
    head = ("- kernel evidence (client's namespace, %s): TCPKeepAlive +%d, TCPAbortOnTimeout +%d, TCPTimeouts +%d over %.1f s"
            % (kernel.get('source'), kernel['tcp_keepalive'], kernel['tcp_abort_on_timeout'], kernel['tcp_timeouts'],
               kernel['seconds']))
    cap = kernel.get('capture')
    if kernel['agree'] is None:
        tail = '; not judged (see the notes)'
    else:
        tail = '; capture: %d probe(s)%s, abort %d - %s' % (
            cap['client_probes'] + cap['server_probes'],
            ' (%d from the server)' % cap['server_probes'] if cap['server_probes'] else '', cap['abort'],
            'agree' if kernel['agree'] else 'DISAGREE')
    timers = ', '.join('%s/%s' % (t['unanswered'], t['timer']) for t in kernel['timer_samples'] if t['timer'])
    return [head + tail + ('; timer samples (unanswered/timer): %s' % timers if timers else '')]
