# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The drop_rule dead-man timer (started detached by _iptables.Timers).

Run as ``[python, -c, <this file's source>, TIMER_MARKER, json-args]`` with
args {"expires_at", "check", "delete", "state"}: it sleeps until expires_at,
then deletes its one rule (the delete argv, ``iptables -w N -D ...``) for as
long as the check argv (``-C``) finds it, retrying while iptables is busy,
and removes its state record. Standard library only.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ATTEMPTS = 100
NO_SUCH_RULE = b'does a matching rule exist'


def remove_rule(check, delete, attempts=ATTEMPTS, pause=1.0):
    """Delete the rule while -C finds it; stop when iptables says it is gone. True when it is gone."""
    for _attempt in range(attempts):
        found = subprocess.run(check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if found.returncode == 1 and NO_SUCH_RULE in found.stderr:
            return True
        if found.returncode == 0:
            subprocess.run(delete, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        else:  # the lock is busy, or iptables failed otherwise: try again
            time.sleep(pause)
    return False


def main(argv=None):
    args = json.loads((sys.argv if argv is None else argv)[2])
    time.sleep(max(0.0, args['expires_at'] - time.time()))
    remove_rule(args['check'], args['delete'])
    try:
        os.unlink(args['state'])
    except OSError:
        pass


if __name__ == '__main__':
    main()
