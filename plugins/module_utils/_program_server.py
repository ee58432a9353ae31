# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The endpoint's python server (started by _endpoint.py under its supervisor).

Run as ``[python, -c, <this file's source>, TAG, json-args]`` with args
{"address", "port"}: it listens, accepts connections, holds them and never
sends (like ``nc -l``), and logs each accepted peer as a JSON line. Standard
library only.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time

BACKLOG = 16
# the one request a client sends (after its request file appears); answered with itself, anything else is read and
# never answered (curl's GET), so that the server stays silent for every other client
REQUEST = b'tcplab-keepalive request\n'


def log(text, stream=None):
    """One line to the program's log (its stdout, or stream), at once."""
    stream = sys.stdout if stream is None else stream
    stream.write(text + '\n')
    stream.flush()


def listen(address, port):
    """A listening socket on address:port, or exit 1 saying why not."""
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind((address, port))
        srv.listen(BACKLOG)
    except OSError as exc:
        log('cannot listen on %s port %d: %s' % (address, port, exc), sys.stderr)
        raise SystemExit(1)
    return srv


def serve(srv):
    """Accept and hold every connection, forever; answer REQUEST with itself."""
    selector = selectors.DefaultSelector()
    selector.register(srv, selectors.EVENT_READ)
    held = []
    while True:
        for key, dummy in selector.select():
            if key.fileobj is srv:
                conn, peer = srv.accept()
                held.append(conn)
                selector.register(conn, selectors.EVENT_READ, b'')
                log(json.dumps({'event': 'accepted', 'peer': list(peer[:2]), 'at': time.time()}))
            else:
                answer(selector, key)


def answer(selector, key):
    """Read what a connection sent; send REQUEST back for every REQUEST in it. At its end the connection stays
    held (closed only when the program ends), as before."""
    conn = key.fileobj
    try:
        data = conn.recv(4096)
    except OSError:
        data = b''
    if not data:
        selector.unregister(conn)
        return
    buffered = key.data + data
    while REQUEST in buffered:
        conn.sendall(REQUEST)
        buffered = buffered[buffered.index(REQUEST) + len(REQUEST):]
        log(json.dumps({'event': 'answered', 'peer': list(conn.getpeername()[:2]), 'at': time.time()}))
    selector.modify(conn, selectors.EVENT_READ, buffered[-len(REQUEST):])


def main(argv=None):
    cfg = json.loads((sys.argv if argv is None else argv)[2])
    serve(listen(cfg['address'], cfg['port']))


if __name__ == '__main__':
    main()
