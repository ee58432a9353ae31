# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Print connected, timeout or refused for a TCP connect to ADDRESS PORT within SECONDS."""
import socket
import sys

address, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    socket.create_connection((address, port), timeout=seconds).close()
    print('connected')
except socket.timeout:
    print('timeout')
except ConnectionRefusedError:
    print('refused')
