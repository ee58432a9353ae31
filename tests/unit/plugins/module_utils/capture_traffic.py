# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the capture tests (test__capture, test__capture_tcpdump, test_capture, test_capture_tcpdump) run inside a
network namespace to have something to capture, and how they see a process end."""

from __future__ import annotations

import textwrap
import time

# A Python server and client inside the namespace: connect, exchange messages (one larger than the loopback MTU), close
# from both ends.
TRAFFIC = textwrap.dedent('''
    import socket, sys
    port, rounds = int(sys.argv[1]), int(sys.argv[2])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    cli = socket.create_connection(("127.0.0.1", port))
    peer, _ = srv.accept()
    for i in range(rounds):
        cli.sendall(b"ping %d" % i)
        peer.recv(100)
        peer.sendall(b"pong %d" % i)
        cli.recv(100)
    cli.sendall(b"x" * 200000)
    got = 0
    while got < 200000:
        got += len(peer.recv(1 << 20))
    cli.close()
    peer.close()
    srv.close()
''')

# keepalive 1/1/3 on the client; the server answers the probes; both close after 3.5 s
KEEPALIVE = textwrap.dedent('''
    import socket, sys, time
    port = int(sys.argv[1])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    cli = socket.socket()
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    cli.connect(("127.0.0.1", port))
    peer, _ = srv.accept()
    time.sleep(3.5)
    cli.close()
    peer.close()
''')


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except OSError:
        return False


def wait_dead(pid, seconds=5.0):
    end = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.02)
    assert not alive(pid)
