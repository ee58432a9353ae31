# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# The experiment's client: SO_KEEPALIVE and no per-socket options (TCP_KEEPIDLE,
# TCP_KEEPINTVL, TCP_KEEPCNT), so the namespace's sysctls govern it. It waits
# for data that never comes and records how the wait ended.
import errno
import json
import os
import socket
import sys
import time

port, out = int(sys.argv[1]), sys.argv[2]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
sock.connect(("127.0.0.1", port))
start = time.monotonic()
try:
    result = {"error": None, "data": sock.recv(1).decode()}
except OSError as exc:
    result = {"error": errno.errorcode.get(exc.errno, str(exc.errno))}
result["seconds"] = round(time.monotonic() - start, 3)
with open(out + ".tmp", "w") as handle:
    json.dump(result, handle)
os.rename(out + ".tmp", out)
