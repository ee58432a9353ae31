# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Holds one loopback connection until SIGTERM: the client sets TCP_KEEPIDLE=IDLE, the accepted side has no
keepalive. Prints one JSON line (pid, ports, the client's inode) once connected."""
from __future__ import annotations

import json
import os
import signal
import socket
import sys


def main():
    idle = int(sys.argv[1])
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    client.connect(server.getsockname())
    accepted = server.accept()[0]
    print(json.dumps({'pid': os.getpid(), 'port': server.getsockname()[1], 'client_port': client.getsockname()[1],
                      'client_inode': os.fstat(client.fileno()).st_ino}), flush=True)
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
    while accepted.fileno() >= 0:
        signal.pause()


if __name__ == '__main__':
    main()
