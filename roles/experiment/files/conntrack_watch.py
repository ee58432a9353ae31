# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Watch one TCP flow in the middlebox's connection tracking table for a given time, read-only.

    conntrack_watch.py SECONDS CLIENT_ADDRESS SERVER_ADDRESS CLIENT_PORT SERVER_PORT

Reads /proc/net/nf_conntrack (or `conntrack -L` where the kernel has no proc file) every 0.25 s for SECONDS
and prints one JSON object: when the flow was first and last seen, how often its timeout was renewed (a packet
crossed), the largest remaining timeout seen, and forgotten_at - the first read (seconds since the epoch) at which
the flow, seen before, was no longer in the table: the moment the middlebox forgot it. The kernel drops an expired
entry when the table is read, so the moment is exact to one poll. Always waits the full SECONDS (it stands in for
the experiment's idle wait), also when the table cannot be read (then error says why).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

PROC = '/proc/net/nf_conntrack'
POLL = 0.25
MAX_RENEWALS = 200
# "ipv4 2 tcp 6 272 ESTABLISHED src=A dst=B sport=P dport=Q ..." (proc) or "tcp 6 272 ESTABLISHED src=..." (conntrack -L)
ENTRY = re.compile(r'\btcp\s+6\s+(\d+)\s+([A-Z_]+)\s+src=(\S+)\s+dst=(\S+)\s+sport=(\d+)\s+dport=(\d+)')


def read_table():
    """The table's text, or raise OSError."""
    try:
        with open(PROC) as handle:
            return handle.read()
    except (IOError, OSError):
        pass
    try:
        out = subprocess.run(['conntrack', '-L', '-p', 'tcp'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OSError('cannot read %s and no conntrack tool: %s' % (PROC, exc))
    if out.returncode != 0:
        raise OSError('cannot read %s, and conntrack -L failed: %s' % (PROC, out.stderr.strip()))
    return out.stdout


def find(text, flow):
    """(remaining timeout in s, state) of the flow (client, server, client port, server port), or None."""
    for match in ENTRY.finditer(text):
        timeout, state, src, dst, sport, dport = match.groups()
        if (src, dst, int(sport), int(dport)) == flow:
            return int(timeout), state
    return None


def watch(seconds, flow, clock=time.time, sleep=time.sleep, reader=read_table):
    """Poll until seconds have passed; the observations as a dict."""
    start = clock()
    out = {'started_at': start, 'seconds': seconds, 'polls': 0, 'first_seen_at': None, 'last_seen_at': None,
           'renewals': 0, 'renewed_at': [], 'max_timeout': None, 'forgotten_at': None, 'state': None, 'error': None}
    last_timeout = None
    while True:
        now = clock()
        if now - start >= seconds:
            break
        try:
            entry = find(reader(), flow)
        except OSError as exc:
            out['error'] = str(exc)
            sleep(max(0.0, seconds - (clock() - start)))
            break
        out['polls'] += 1
        if entry is None:
            if out['last_seen_at'] is not None and out['forgotten_at'] is None:
                out['forgotten_at'] = now
        else:
            timeout, out['state'] = entry
            if out['first_seen_at'] is None:
                out['first_seen_at'] = now
            out['last_seen_at'] = now
            if last_timeout is not None and timeout > last_timeout:
                out['renewals'] += 1
                if len(out['renewed_at']) < MAX_RENEWALS:
                    out['renewed_at'].append(now)
            if out['forgotten_at'] is not None:      # picked up again (loose tracking): not forgotten after all
                out['forgotten_at'] = None
            last_timeout = timeout
            out['max_timeout'] = max(out['max_timeout'] or 0, timeout)
        sleep(min(POLL, max(0.0, seconds - (clock() - start))))
    out['ended_at'] = clock()
    return out


def main(argv):
    if len(argv) != 5:
        sys.stderr.write(__doc__)
        return 2
    seconds = float(argv[0])
    flow = (argv[1], argv[2], int(argv[3]), int(argv[4]))
    print(json.dumps(watch(seconds, flow), sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
