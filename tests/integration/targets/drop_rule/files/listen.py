# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Accept TCP connections on the given ports (IPv4 and IPv6 loopback) until killed."""
import selectors
import socket
import sys

sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    for family, addr in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, int(port)))
        sock.listen(16)
        sel.register(sock, selectors.EVENT_READ)
held = []
while True:
    for key, _ in sel.select():
        held.append(key.fileobj.accept()[0])
