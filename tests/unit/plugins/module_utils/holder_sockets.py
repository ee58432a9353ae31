# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A process that holds one loopback TCP connection, for the exact-reading tests of the audit.

  python holder_sockets.py JSON

JSON sets the client's socket options: {"keepalive": 1, "idle": 123, "intvl": 7, "cnt": 4, "user_timeout_ms": 0,
"server_keepalive": 0, "host": "127.0.0.1"}. It prints one JSON line (pid, client_fd, server_fd, the two
inodes, ports), then for every line read on stdin sends it over the connection and prints what arrived and
the client's options as read by the owner itself (so a test sees that the owner was not disturbed). EOF ends it.
"""
from __future__ import annotations

import json
import os
import socket
import sys

OPTIONS = (('idle', socket.TCP_KEEPIDLE), ('intvl', socket.TCP_KEEPINTVL), ('cnt', socket.TCP_KEEPCNT),
           ('user_timeout_ms', socket.TCP_USER_TIMEOUT))


def own_view(sock):
    view = {'keepalive': sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    view.update((name, sock.getsockopt(socket.IPPROTO_TCP, opt)) for name, opt in OPTIONS)
    return view


def main():
    want = json.loads(sys.argv[1])
    host = want.get('host', '127.0.0.1')
    server = socket.socket()
    server.bind((host, 0))
    server.listen(1)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, want.get('keepalive', 0))
    for name, opt in OPTIONS:
        if want.get(name):
            client.setsockopt(socket.IPPROTO_TCP, opt, want[name])
    client.connect(server.getsockname())
    accepted = server.accept()[0]
    if want.get('server_keepalive'):
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    print(json.dumps({'pid': os.getpid(), 'client_fd': client.fileno(), 'server_fd': accepted.fileno(),
                      'client_inode': os.fstat(client.fileno()).st_ino,
                      'server_inode': os.fstat(accepted.fileno()).st_ino,
                      'port': server.getsockname()[1], 'client_port': client.getsockname()[1],
                      'fds': sorted(os.listdir('/proc/self/fd'))}), flush=True)
    for line in sys.stdin:
        client.sendall(line.encode())
        got = accepted.recv(4096).decode()
        print(json.dumps({'got': got, 'own': own_view(client), 'fds': sorted(os.listdir('/proc/self/fd'))}),
              flush=True)


if __name__ == '__main__':
    main()
