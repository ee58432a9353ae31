# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The endpoint's python keepalive client (started by _endpoint.py under its supervisor).

Run as ``[python, -c, <this file's source>, TAG, json-args]`` with args
{"address", "port", "local_port", "outcome"} and optionally "request" (a
path), "request_timeout" (seconds, default 10) and "user_timeout_ms". The socket
has SO_KEEPALIVE and no per-socket keepalive options: the namespace's sysctls
govern; with "user_timeout_ms" it also sets TCP_USER_TIMEOUT (the in-flight
experiment: unacknowledged data then ends the connection that much after the
first timeout retransmission, whatever tcp_retries2 says). It
waits in recv() until the connection ends and records its outcome (state,
errno, seconds from connect to failure) atomically in the outcome file.
With "request", once that file appears (the experiment creates it after the
connection has stayed idle long enough) the client sends one REQUEST and
records "answered" when the server sends it back, or how it failed.
Standard library only.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import sys
import time

REQUEST = b'tcplab-keepalive request\n'
TCP_USER_TIMEOUT = getattr(socket, 'TCP_USER_TIMEOUT', 18)   # linux/tcp.h
POLL = 0.5


def log(text, stream=None):
    """One line to the program's log (its stdout, or stream), at once."""
    stream = sys.stdout if stream is None else stream
    stream.write(text + '\n')
    stream.flush()


class Client:
    """One connection and its outcome file."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.connected = None
        self.asked = None

    def record(self, data):
        tmp = self.cfg['outcome'] + '.tmp'
        with open(tmp, 'w') as handle:
            json.dump(data, handle)
        os.rename(tmp, self.cfg['outcome'])

    def give_up(self, phase, exc):
        """A bind or connect that failed: record it and exit 1."""
        log('%s failed: %s' % (phase, exc), sys.stderr)
        self.record({'state': 'failed', 'phase': phase, 'errno': errno.errorcode.get(exc.errno, str(exc.errno)),
                     'error': str(exc), 'connected_at': None, 'failed_at': time.time(), 'seconds': 0.0})
        raise SystemExit(1)

    def connect(self):
        family = socket.AF_INET6 if ':' in self.cfg['address'] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.cfg.get('user_timeout_ms'):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(self.cfg['user_timeout_ms']))
        if self.cfg.get('local_port'):
            try:
                sock.bind(('::' if family == socket.AF_INET6 else '0.0.0.0', self.cfg['local_port']))
            except OSError as exc:
                self.give_up('bind', exc)
        try:
            sock.connect((self.cfg['address'], self.cfg['port']))
        except OSError as exc:
            self.give_up('connect', exc)
        self.connected = time.time()
        self.record({'state': 'connected', 'connected_at': self.connected})
        return sock

    def hold(self, sock):
        """Receive until the connection ends, or until the request file appears and the request is answered;
        record how. The socket stays blocking (select() waits): a timeout mode would let recv() see a dead
        connection as an end of file instead of its error."""
        request = self.cfg.get('request')
        try:
            while True:
                if request and not wait_readable(sock, POLL):
                    if os.path.exists(request):
                        self.ask(sock)
                        return
                    continue
                if not sock.recv(65536):
                    self.closed()
                    return
        except OSError as exc:
            self.failed(exc.errno, str(exc))

    def closed(self):
        self.record({'state': 'closed', 'errno': None, 'error': 'the server closed the connection',
                     'connected_at': self.connected, 'failed_at': time.time(), 'seconds': time.time() - self.connected})

    def failed(self, number, text):
        now = time.time()
        self.record({'state': 'failed', 'errno': errno.errorcode.get(number, str(number)), 'error': text,
                     'connected_at': self.connected, 'requested_at': self.asked, 'failed_at': now,
                     'seconds': now - self.connected})

    def ask(self, sock):
        """Send REQUEST and wait for it to come back (OSError goes to hold())."""
        timeout = self.cfg.get('request_timeout') or 10
        self.asked = asked = time.time()
        sock.sendall(REQUEST)
        got = b''
        while len(got) < len(REQUEST):
            if not wait_readable(sock, asked + timeout - time.time()):
                self.failed(errno.ETIMEDOUT, 'no answer to the request within %s s (sent %.1f s after connect)'
                            % (timeout, asked - self.connected))
                return
            data = sock.recv(len(REQUEST) - len(got))
            if not data:
                self.closed()
                return
            got += data
        if got != REQUEST:
            self.failed(errno.EPROTO, 'the answer to the request was %r, not the request' % got)
            return
        now = time.time()
        self.record({'state': 'answered', 'errno': None, 'error': None, 'connected_at': self.connected,
                     'requested_at': asked, 'answered_at': now, 'seconds': now - self.connected})


def wait_readable(sock, seconds):
    """Whether sock has data, an end or an error to read within seconds."""
    if seconds <= 0:
        return False
    return bool(select.select([sock], [], [], seconds)[0])


def main(argv=None):
    client = Client(json.loads((sys.argv if argv is None else argv)[2]))
    client.hold(client.connect())


if __name__ == '__main__':
    main()
