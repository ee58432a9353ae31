# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kernel's own evidence of a keepalive experiment: the samples.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

On the target (the kernel_counters module, and the endpoint and pcap_info modules' kernel_sample), a sample of one
network namespace: its TcpExt counters from /proc/net/netstat - TCPKeepAlive (keepalive probes sent:
tcp_keepalive_timer -> tcp_write_wakeup -> tcp_xmit_probe_skb counts every one), TCPAbortOnTimeout (connections the
kernel gave up on: tcp_write_err, after the last unanswered keepalive probe, the last retransmission or
TCP_USER_TIMEOUT), TCPTimeouts (retransmission timer expiries, the one that ends a connection included) and
TCPLossProbes (tail loss probes) - and Tcp RetransSegs of /proc/net/snmp (every segment sent again); its TCP sockets
from inet_diag (NETLINK_SOCK_DIAG, the source of ``ss -tnoi``): per socket the pending timer (``keepalive``), its
expiry, the unanswered-probe count (idiag_retrans for a keepalive timer, which is icsk_probes_out) and tcp_info's
tcpi_probes and tcpi_backoff; and the namespace's own addresses (/proc/net/fib_trie, /proc/net/if_inet6). Where
inet_diag cannot be used, /proc/net/tcp and tcp6 give the same timer and probe count (without tcp_info), and the
sample says so.

The controller's side - the deltas compared with the capture, for every fault - is _kernel_judge.py.

What else moves the counters, and the guard against it. They belong to the whole namespace:

- the server's socket on loopback (same namespace): its probes are in the capture, and counted with the client's;
- other connections of the namespace. Each sample lists those that could probe or time out (a keepalive timer, or a
  retransmission or zero-window timer that hides whether keepalive is on). Where the controller reaches the client
  over a connection of its own - on a VM the controller's SSH connection; sshd has TCPKeepAlive yes, follows the
  shortened sysctls and probes during the run - the role watches them (kernel_counters watch, _kernel_watch.py:
  tcpdump -i any of every TCP segment but the experiment's connection, from before the start sample to after the
  end sample); the probes, RSTs and retransmissions the namespace sent are counted from the wire
  (_kernel_watch_scan.py) and added to what the capture shows (_kernel_others.py): TCPKeepAlive must equal the sum
  exactly (a range only for zero-length segments sent before anything told their connection's sequence numbers),
  TCPAbortOnTimeout may exceed the client's abort only by the namespace's RSTs (a keepalive abort sends one) or, when
  the watch saw retransmissions, by the connections it saw. Unwatched others (a lab namespace entered without a
  connection of the controller's, or a watch that failed) leave the evidence not judged, with a note saying why;
- the moment of a sample: its time stamp is taken just before the counters are read, so a probe in those
  microseconds counts in the counters but not in the window (not seen in practice).
"""

from __future__ import annotations

import os
import socket
import struct
import time

NETSTAT = '/proc/self/net/netstat'
SNMP = '/proc/self/net/snmp'
FIB_TRIE = '/proc/self/net/fib_trie'
IF_INET6 = '/proc/self/net/if_inet6'
PROC_TCP = ('/proc/self/net/tcp', '/proc/self/net/tcp6')
# TcpExt counter -> key in the sample and in evidence.kernel (every kernel the collection supports has them)
COUNTERS = {'TCPKeepAlive': 'tcp_keepalive', 'TCPAbortOnTimeout': 'tcp_abort_on_timeout', 'TCPTimeouts': 'tcp_timeouts'}
# the retransmission counters the in-flight experiment compares (None in a sample where the kernel lacks them):
# TcpExt TCPLossProbes (tail loss probes sent) and Tcp RetransSegs of /proc/net/snmp (every segment sent again,
# tail loss probes included)
EXTRA_COUNTERS = {'TCPLossProbes': 'tcp_loss_probes'}
SNMP_COUNTERS = {'RetransSegs': 'tcp_retrans_segs'}
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
# tcpi_last_data_sent and tcpi_last_data_recv (ms since the socket last sent and received data), at their offsets
TCP_INFO_LAST_DATA = ((struct.Struct('=I'), 44), (struct.Struct('=I'), 52))

MSG_NETSTAT = 'cannot read %s (%s): this kernel does not expose the TcpExt counters here'
MSG_NO_TCPEXT = '%s has no TcpExt counter %s: a kernel without it cannot give keepalive evidence'
MSG_PORT = '%s must be a TCP port 1..65535, got %r: give the port of the connection (the experiment client port)'


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


def extra_counters(parsed_netstat, parsed_snmp):
    """The optional counters ({key: int or None}): TcpExt TCPLossProbes and Tcp RetransSegs."""
    tcpext, tcp = parsed_netstat.get('TcpExt') or {}, parsed_snmp.get('Tcp') or {}
    out = {key: tcpext.get(name) for name, key in EXTRA_COUNTERS.items()}
    out.update({key: tcp.get(name) for name, key in SNMP_COUNTERS.items()})
    return out


def _read(path):
    with open(path) as handle:
        return handle.read()


def read_counters(path=NETSTAT, snmp=SNMP):
    """counters() and extra_counters() of the calling process's network namespace."""
    try:
        parsed = parse_netstat(_read(path))
    except (IOError, OSError) as exc:
        raise KernelEvidenceError(MSG_NETSTAT % (path, exc.strerror or exc))
    try:
        parsed_snmp = parse_netstat(_read(snmp))
    except (IOError, OSError):
        parsed_snmp = {}
    out = counters(parsed, path)
    out.update(extra_counters(parsed, parsed_snmp))
    return out


# ---------------------------------------------------------------- the namespace's own addresses

def parse_fib_trie(text):
    """The local IPv4 addresses of a namespace from /proc/net/fib_trie: each '|-- a.b.c.d' followed by '/32 host
    LOCAL', or a local network ('/8 host LOCAL' after 127.0.0.0: every 127.x.y.z) as 'a.b.c.d/N'."""
    out, last = set(), None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0].endswith('|--'):
            last = words[1]
        elif last and len(words) >= 3 and words[0].startswith('/') and words[1:3] == ['host', 'LOCAL']:
            out.add(last if words[0] == '/32' else last + words[0])
    return out


def parse_if_inet6(text):
    """The IPv6 addresses of a namespace from /proc/net/if_inet6 (32 hex digits first on each line)."""
    out = set()
    for line in text.splitlines():
        words = line.split()
        if words and len(words[0]) == 32:
            out.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(words[0])))
    return out


def local_addresses():
    """Sorted addresses of the calling process's namespace (to tell the probes it sent from those it received)."""
    out = set()
    for path, parse in ((FIB_TRIE, parse_fib_trie), (IF_INET6, parse_if_inet6)):
        try:
            out |= parse(_read(path))
        except (IOError, OSError, ValueError):
            continue
    return sorted(out)


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
    """(probes, backoff, last_data_sent_ms, last_data_recv_ms) from the INET_DIAG_INFO attribute after the message;
    None for what it does not hold."""
    while offset + RTA_HDR.size <= len(payload):
        length, kind = RTA_HDR.unpack_from(payload, offset)
        if length < RTA_HDR.size:
            break
        start = offset + RTA_HDR.size
        if kind == INET_DIAG_INFO and length >= RTA_HDR.size + TCP_INFO_HEAD.size:
            head = TCP_INFO_HEAD.unpack_from(payload, start)
            last = [field.unpack_from(payload, start + at)[0] if length >= RTA_HDR.size + at + field.size else None
                    for field, at in TCP_INFO_LAST_DATA]
            return (head[3], head[4]) + tuple(last)
        offset += (length + 3) & ~3
    return None, None, None, None


def parse_diag(payload):
    """One inet_diag_msg (with its tcp_info) as a socket row."""
    (family, state, timer, retrans, sport, dport, src, dst, _ifindex, _cookie, expires, _rq, _wq, _uid,
     inode) = DIAG_MSG.unpack_from(payload)
    probes, backoff, data_sent, data_recv = _tcp_info(payload, DIAG_MSG.size)
    sport, dport = socket.ntohs(sport), socket.ntohs(dport)
    return {'local': _address(family, src, sport), 'remote': _address(family, dst, dport), 'lport': sport,
            'rport': dport, 'state': STATES.get(state, str(state)), 'state_n': state, 'timer': TIMERS.get(timer, str(timer)),
            'timer_n': timer, 'expires_s': round(expires / 1000.0, 3), 'timer_count': retrans, 'probes': probes,
            'backoff': backoff, 'inode': inode, 'last_data_sent_ms': data_sent, 'last_data_recv_ms': data_recv}


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
            'sockets_count': len(rows), 'addresses': local_addresses()}
